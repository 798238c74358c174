// 1-D convolution over time, one thread per output value: ops.conv1d's path for what the tiled kernel
// (conv1d_tiled.wgsl, whose header has the full semantics) does not take: strided convs (Kokoro's noise conv
// 22 -> 256, kernel 12, stride 6 and F0 / N convs 1 -> 1, kernel 3, stride 2), and those with few output
// channels (a 256 -> 1 projection). Same semantics and layouts, any stride S:
//   out[t, o] = OUT_SCALE * ((out[t, o] if ACC) + bias[o] + sum_{k, i} w[o, i, k] * seen[t S + k D - PAD, i])
// for t < out_len = (n UP + 2 PAD - D (K - 1) - 1) / S + 1, n = step.n_tokens; rows out_len .. OUT_ROWS are 0.
// Neighbouring threads take neighbouring output channels of a row, so they read the same input values.
// Constants: C_IN, C_OUT, K, S, D, PAD, UP, IN_ROWS, IN_STRIDE, IN_OFFSET, OUT_ROWS, OUT_STRIDE, OUT_OFFSET,
// HAS_BIAS, ACC, OUT_SCALE, WG, and conv1d_input's AFFINE, LEAKY, SLOPE, SNAKE.
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read> in_affine: array<f32>;
@group(0) @binding(4) var<storage, read> alpha: array<f32>;
@group(0) @binding(5) var<uniform> step: Step;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let e = (wid.y * nwg.x + wid.x) * WG + lid;
  if (e >= OUT_ROWS * C_OUT) {
    return;
  }
  let t = e / C_OUT;
  let o = e % C_OUT;
  let n_seen = min(step.n_tokens, IN_ROWS) * UP;
  let span = D * (K - 1u) + 1u;
  var n_out = 0u;
  if (n_seen + 2u * PAD >= span) {
    n_out = (n_seen + 2u * PAD - span) / S + 1u;
  }
  let idx = t * OUT_STRIDE + OUT_OFFSET + o;
  if (t >= n_out) {
    out[idx] = 0.0;
    return;
  }
  var acc = 0.0;
  for (var k = 0u; k < K; k++) {
    let s = i32(t * S + k * D) - i32(PAD);  // seen input row of this tap
    if (s < 0i || u32(s) >= n_seen) {
      continue;
    }
    let xrow = (u32(s) / UP) * IN_STRIDE + IN_OFFSET;
    for (var i = 0u; i < C_IN; i++) {
      acc = fma(w[(o * C_IN + i) * K + k], conv_input(x[xrow + i], i), acc);
    }
  }
  var y = acc;
  if (HAS_BIAS) { y += bias[o]; }
  if (ACC) { y += out[idx]; }
  out[idx] = OUT_SCALE * y;
}
