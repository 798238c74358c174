// SiLU over TOTAL f32 values: y = x * sigmoid(x) (the Gemma 4 audio tower's activation), finite for every
// finite x (see sigmoid_lib.wgsl, which it needs in libs).
//   entry `main`:    out = silu(x) (distinct buffers).
//   entry `inplace`: x = silu(x) (WebGPU forbids one buffer bound both read-only and writable).
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
    let v = x[i];
    out[i] = v * sigmoid(v);
  }
}

@compute @workgroup_size(WG)
fn inplace(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
  let i = thread_index(wid, nwg, lid);
  if (i < TOTAL) {
    let v = xio[i];
    xio[i] = v * sigmoid(v);
  }
}
