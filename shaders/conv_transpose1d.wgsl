// Transposed 1-D convolution over time, one thread per output value: ops.conv_transpose1d's path for the
// depthwise case (DEPTHWISE: groups = C_IN = C_OUT, Kokoro's AdainResBlk1d upsampling "pool", kernel 3, stride
// 2, padding 1, output padding 1) and for groups 1 when the tiled kernel does not fit (few output channels).
// torch's ConvTranspose1d, time-major f32: x [IN_ROWS, C_IN], real length n = step.n_tokens; out [OUT_ROWS,
// OUT_STRIDE] written at columns OUT_OFFSET .. + C_OUT. The unpadded output row q < L = (n - 1) S - 2 PAD + K +
// OUT_PAD is
//   y[q, o] = bias[o] + sum_{m S + k = q + PAD} sum_i u[m, i] w[i, o, k]    (w (C_IN, C_OUT, K), groups 1)
//   y[q, c] = bias[c] + sum_{m S + k = q + PAD} u[m, c] w[c, 0, k]          (w (C, 1, K), DEPTHWISE)
// u the transformed input (conv1d_input.wgsl); rows q >= L are 0. REFLECT: out row 0 = y row 1, row r = y row
// r - 1 (ReflectionPad1d((1, 0))). Neighbouring threads take neighbouring output channels of a row.
// Constants: C_IN, C_OUT, K, S, PAD, OUT_PAD, DEPTHWISE, REFLECT, IN_ROWS, OUT_ROWS, OUT_STRIDE, OUT_OFFSET,
// HAS_BIAS, WG, and conv1d_input's AFFINE, LEAKY, SLOPE, SNAKE.
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
  let row = e / C_OUT;
  let o = e % C_OUT;
  let n_in = min(step.n_tokens, IN_ROWS);
  var n_out = 0u;  // L
  if (n_in > 0u) {
    n_out = u32(max(i32((n_in - 1u) * S + K + OUT_PAD) - 2i * i32(PAD), 0i));
  }
  var q = row;
  if (REFLECT) {
    q = select(row - 1u, 1u, row == 0u);
  }
  let idx = row * OUT_STRIDE + OUT_OFFSET + o;
  if (q >= n_out) {
    out[idx] = 0.0;
    return;
  }
  var acc = 0.0;
  let qp = q + PAD;
  for (var k = qp % S; k < K && k <= qp; k += S) {
    let m = (qp - k) / S;
    if (m >= n_in) {
      continue;
    }
    if (DEPTHWISE) {
      acc = fma(conv_input(x[m * C_IN + o], o), w[o * K + k], acc);
    } else {
      for (var i = 0u; i < C_IN; i++) {
        acc = fma(conv_input(x[m * C_IN + i], i), w[(i * C_OUT + o) * K + k], acc);
      }
    }
  }
  if (HAS_BIAS) { acc += bias[o]; }
  out[idx] = acc;
}
