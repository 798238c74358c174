// GeGLU activation: out = gelu_tanh(gate) * up, elementwise over [ROWS, N] (gelu_tanh: common.wgsl, the
// tanh approximation Gemma uses, = torch's gelu(approximate="tanh")).
//   entry `main`:  gate and up are separate [ROWS, N] arrays.
//   entry `fused`: one [ROWS, 2N] array whose rows are [gate | up], as a fused gate+up matmul writes them.
// Constants: N, TOTAL (= ROWS * N), WG.
@group(0) @binding(0) var<storage, read> gate: array<f32>;
@group(0) @binding(1) var<storage, read> up: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@group(0) @binding(0) var<storage, read> gu: array<f32>;
@group(0) @binding(1) var<storage, read_write> f_out: array<f32>;

fn thread_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
  return (wid.y * nwg.x + wid.x) * WG + lid;
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let i = thread_index(wid, nwg, lid);
  if (i < TOTAL) {
    out[i] = gelu_tanh(gate[i]) * up[i];
  }
}

@compute @workgroup_size(WG)
fn fused(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
  let i = thread_index(wid, nwg, lid);
  if (i < TOTAL) {
    let src = (i / N) * 2u * N + i % N;
    f_out[i] = gelu_tanh(gu[src]) * gu[src + N];
  }
}
