// matvec.wgsl with the final reduction done by subgroupAdd: one subgroup operation instead of log2(WG)
// workgroup barriers, which matters for short rows (1536 columns: a few units per lane).
// See matvec.wgsl for the layout, the helpers' purpose and the constants.
//
// Subgroup partials are combined through workgroup memory in slot lid / subgroup_size, which assumes that
// each subgroup is a contiguous range of local_invocation_index. WGSL does not promise that, but every
// implementation lays out one-dimensional workgroups that way (Vulkan, Metal, D3D12, lavapipe, SwiftShader);
// it keeps the sum order fixed, so results are deterministic run to run.
@group(0) @binding(0) var<storage, read> W: array<u32>;
@group(0) @binding(1) var<storage, read> X: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> Y: array<f32>;

const UPR: u32 = (COLS / QK) * UPB;
const MAX_SG: u32 = (WG + 3u) / 4u;  // WebGPU subgroups have at least 4 invocations

var<workgroup> red: array<vec4<f32>, MAX_SG>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32,
        @builtin(subgroup_invocation_id) sg_lane: u32, @builtin(subgroup_size) sg_size: u32) {
  let row0 = (wid.x + wid.y * GRID_X) * R;
  if (row0 >= ROWS) {
    return;
  }
  let b0 = row0 * ROW_BYTES;
  let b1 = min(row0 + 1u, ROWS - 1u) * ROW_BYTES;
  let b2 = min(row0 + 2u, ROWS - 1u) * ROW_BYTES;
  let b3 = min(row0 + 3u, ROWS - 1u) * ROW_BYTES;
  var acc = vec4<f32>(0.0);
  for (var u = lid; u < UPR; u += WG) {
    acc += unit_rows(u, b0, b1, b2, b3);
  }
  let s = subgroupAdd(acc);
  if (sg_lane == 0u) {
    red[lid / sg_size] = s;
  }
  workgroupBarrier();
  if (lid == 0u) {
    var t = red[0];
    for (var i = 1u; i < (WG + sg_size - 1u) / sg_size; i++) {
      t += red[i];
    }
    store(row0, t);
  }
}
