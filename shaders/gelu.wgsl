// GELU, tanh approximation, over TOTAL f32 values: y = gelu_tanh(x) (common.wgsl; = transformers' gelu_new,
// ALBERT's activation, = torch's gelu(approximate="tanh")).
//   entry `main`:    out = gelu(x) (distinct buffers).
//   entry `inplace`: x = gelu(x) (WebGPU forbids one buffer bound both read-only and writable).
// Constants: TOTAL, WG.
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;

@group(0) @binding(0) var<storage, read_write> xio: array<f32>;

fn thread_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
  return (wid.y * nwg.x + wid.x) * WG + lid;
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let i = thread_index(wid, nwg, lid);
  if (i < TOTAL) {
    out[i] = gelu_tanh(x[i]);
  }
}

@compute @workgroup_size(WG)
fn inplace(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
  let i = thread_index(wid, nwg, lid);
  if (i < TOTAL) {
    xio[i] = gelu_tanh(xio[i]);
  }
}
