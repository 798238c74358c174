// Elementwise sum of two f32 arrays of TOTAL elements (residual connections).
//   entry `main`:    out = a + b (three distinct buffers).
//   entry `inplace`: acc += b. WebGPU forbids binding one buffer both read-only and writable in a dispatch, so
//                    the common residual update h = h + x needs its own entry point.
// Constants: TOTAL, WG.
@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@group(0) @binding(0) var<storage, read_write> acc: array<f32>;

fn thread_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
  return (wid.y * nwg.x + wid.x) * WG + lid;
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let i = thread_index(wid, nwg, lid);
  if (i < TOTAL) {
    out[i] = a[i] + b[i];
  }
}

@compute @workgroup_size(WG)
fn inplace(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
  let i = thread_index(wid, nwg, lid);
  if (i < TOTAL) {
    acc[i] += b[i];
  }
}
