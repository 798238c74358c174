// Causal depthwise 1-D convolution over time (the light conv of Gemma 4's audio Conformer blocks, kernel 5):
//   out[t, c] = sum_{j < K} w[c, j] * x[t - (K - 1) + j, c],   rows of x before 0 are zero
// x, out: f32 [ROWS, C] (time-major); w: f32 [C, K], the GGUF tensor conv_dw (ne [K, C]) = torch's Conv1d weight
// [C, 1, K] of groups = C, whose input is left-padded by K - 1. Causal, so rows past the real length (a graph
// recorded for a capacity) never feed the real rows; every row of the capacity is written.
// One thread per output value; neighbouring threads read neighbouring channels. Constants: C, K, TOTAL, WG.
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let i = (wid.y * nwg.x + wid.x) * WG + lid;
  if (i >= TOTAL) {
    return;
  }
  let t = i / C;
  let c = i % C;
  var s = 0.0;
  for (var j = 0u; j < K; j++) {
    let ti = t + j;  // input row + K - 1
    if (ti >= K - 1u) {
      s = fma(w[c * K + j], x[(ti - (K - 1u)) * C + c], s);
    }
  }
  out[i] = s;
}
