// One stage of Gemma 4's audio subsampler (SSCP): Conv2d 3x3, stride 2, padding 1, no bias, then LayerNorm over
// the output channels (weight, no bias, EPS) and ReLU, channels-last:
//   v[t, f, o]   = sum_{kt, kf < 3, i < C_IN} w[o, i, kt, kf] * x[2t - 1 + kt, 2f - 1 + kf, i]
//   out[t, f, o] = relu((v[t, f, o] - mean_o v[t, f, :]) * inverseSqrt(var_o v[t, f, :] + EPS) * ln_w[o])
// x: f32 [IN_ROWS, F_IN, C_IN] (time, frequency, channel); w: f32 [C_OUT, C_IN, 3 (time), 3 (frequency)], the
// GGUF tensor a.conv1d.N.weight (ne [3, 3, C_IN, C_OUT]) = torch's Conv2d weight over input [B, C, T, F];
// ln_w: f32 [C_OUT]; out: f32 [OUT_ROWS, F_OUT, C_OUT], F_OUT = (F_IN - 1) / 2 + 1.
// The real time length is read at run time: T_in = step.n_tokens, rounded up to half HALVINGS times (0 for the
// first stage, whose rows are mel frames; 1 for the second, whose input is the first stage's output), at most
// IN_ROWS. Rows at or past T_in are zero padding (transformers multiplies them by its mask before the conv);
// output rows t in [T_out, OUT_ROWS), T_out = (T_in + 1) / 2, are written as zeros.
// Layout of the work: L lanes (a power of two >= min(C_OUT, WG)) per output position (t, f), P = WG / L
// positions per workgroup; lane l computes channels l, l + L, ... (CPL of them) and the mean and variance are
// two tree reductions over the L lanes of the position in workgroup memory (two passes: (v - mean)^2, no
// cancellation). Workgroups wrap into y when there are more than a grid dimension holds.
// Constants: F_IN, C_IN, C_OUT, F_OUT, IN_ROWS, OUT_ROWS, HALVINGS, EPS, L, P, CPL, WG (= L * P).
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read> ln_w: array<f32>;
@group(0) @binding(3) var<uniform> step: Step;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

var<workgroup> partial: array<f32, WG>;

// Sum of partial[] over the L lanes of this thread's position, left in partial[first lane of the position].
fn reduce_lanes(lid: u32, lane: u32) {
  for (var stride = L / 2u; stride > 0u; stride /= 2u) {
    if (lane < stride) {
      partial[lid] += partial[lid + stride];
    }
    workgroupBarrier();
  }
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let lane = lid % L;
  let first = lid - lane;
  let pos = (wid.y * nwg.x + wid.x) * P + lid / L;  // (t, f) flattened
  let t = pos / F_OUT;
  let f = pos % F_OUT;

  var t_in = step.n_tokens;
  for (var h = 0u; h < HALVINGS; h++) {
    t_in = (t_in + 1u) / 2u;
  }
  t_in = min(t_in, IN_ROWS);
  let t_out = (t_in + 1u) / 2u;
  let real = t < t_out;  // past it: zeros, and nothing read

  // The 3 x 3 window: time rows 2t - 1 .. 2t + 1 (only those < t_in), frequency columns 2f - 1 .. 2f + 1.
  var v: array<f32, CPL>;
  for (var k = 0u; k < CPL; k++) {
    let o = lane + k * L;
    var s = 0.0;
    if (real && o < C_OUT) {
      for (var kt = 0u; kt < 3u; kt++) {
        let ti = 2u * t + kt;  // input row + 1
        if (ti == 0u || ti > t_in) {
          continue;
        }
        for (var kf = 0u; kf < 3u; kf++) {
          let fi = 2u * f + kf;  // input column + 1
          if (fi == 0u || fi > F_IN) {
            continue;
          }
          let xb = ((ti - 1u) * F_IN + fi - 1u) * C_IN;
          let wb = o * C_IN * 9u + kt * 3u + kf;
          for (var i = 0u; i < C_IN; i++) {
            s = fma(w[wb + i * 9u], x[xb + i], s);
          }
        }
      }
    }
    v[k] = s;
  }

  // mean over the C_OUT channels (lanes past C_OUT hold zeros)
  var acc = 0.0;
  for (var k = 0u; k < CPL; k++) {
    acc += v[k];
  }
  partial[lid] = acc;
  workgroupBarrier();
  reduce_lanes(lid, lane);
  let mean = partial[first] * (1.0 / f32(C_OUT));
  workgroupBarrier();  // everyone has read the sum before partial[] is reused

  acc = 0.0;
  for (var k = 0u; k < CPL; k++) {
    if (lane + k * L < C_OUT) {
      let d = v[k] - mean;
      acc += d * d;
    }
  }
  partial[lid] = acc;
  workgroupBarrier();
  reduce_lanes(lid, lane);
  let inv = inverseSqrt(partial[first] * (1.0 / f32(C_OUT)) + EPS);

  if (t < OUT_ROWS) {
    for (var k = 0u; k < CPL; k++) {
      let o = lane + k * L;
      if (o < C_OUT) {
        var y = 0.0;
        if (real) {
          y = max((v[k] - mean) * inv * ln_w[o], 0.0);
        }
        out[pos * C_OUT + o] = y;
      }
    }
  }
}
