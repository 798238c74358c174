// x[r, c] += b[B_OFFSET + c] in place over rows of N (TOTAL values): the bias of a linear (the Gemma 4 audio
// tower's output projection; Kokoro's style-dependent LSTM biases, read from one stacked vector at B_OFFSET).
// Constants: N, TOTAL, B_OFFSET, WG.
@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let i = (wid.y * nwg.x + wid.x) * WG + lid;
  if (i < TOTAL) {
    x[i] += b[B_OFFSET + i % N];
  }
}
