// The subgroup width of a 256-lane workgroup, for Device.open: Y[0] = the width, Y[1] = 1 when every lane saw
// the same width and the workgroup is whole subgroups of it (0 otherwise). Run only where the device has
// subgroups (the cooperative-matrix kernels need them), so there is no plain fallback to write.
enable subgroups;

@group(0) @binding(0) var<storage, read_write> Y: array<u32>;

var<workgroup> widths: atomic<u32>;  // OR of every lane's width: one bit when they agree (powers of two)
var<workgroup> ragged: atomic<u32>;

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(subgroup_size) width: u32,
        @builtin(num_subgroups) count: u32) {
  if (lid == 0u) {  // start from 0: lavapipe through wgpu-native left garbage in workgroup memory
    atomicStore(&widths, 0u);
    atomicStore(&ragged, 0u);
  }
  workgroupBarrier();
  atomicOr(&widths, width);
  atomicOr(&ragged, u32(width * count != 256u));
  workgroupBarrier();
  if (lid == 0u) {
    let w = atomicLoad(&widths);
    Y[0] = w;
    Y[1] = u32(countOneBits(w) == 1u && atomicLoad(&ragged) == 0u);
  }
}
