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
//
// One thread per output position (t, f), all C_OUT channels, and no workgroup barriers (tree reductions over
// lanes cost far more than the conv on CPU drivers: lavapipe, SwiftShader): the LayerNorm statistics are serial
// sums over the channels, two passes (mean, then (v - mean)^2: no cancellation). Neighbouring threads read the
// same weights. Three ways to the channels' sums, picked by constants:
// - STORE (C_OUT <= 128: both Gemma 4 stages): one pass over the window accumulates all C_OUT sums in a private
//   array, each input value loaded once;
// - PATCH (more channels, C_IN <= 4): the 9 C_IN window values, zero where padding, sit in registers in w's own
//   order (i, kt, kf), and each channel's sum is recomputed from them in each of the three passes;
// - neither: each pass re-reads the window from x (conv_direct).
// Constants: F_IN, C_IN, C_OUT, F_OUT, IN_ROWS, OUT_ROWS, HALVINGS, EPS, STORE, PATCH, NV (C_OUT when STORE,
// else 1), NP (9 C_IN when PATCH, else 1), WG.
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read> ln_w: array<f32>;
@group(0) @binding(3) var<uniform> step: Step;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

const KW: u32 = 9u * C_IN;  // weights per output channel

// The conv sum of channel o at output (t, f) from x directly; rows at or past t_in are padding.
fn conv_direct(o: u32, t: u32, f: u32, t_in: u32) -> f32 {
  var s = 0.0;
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
      let wb = o * KW + kt * 3u + kf;
      for (var i = 0u; i < C_IN; i++) {
        s = fma(w[wb + i * 9u], x[xb + i], s);
      }
    }
  }
  return s;
}

// The conv sum of channel o, from the stored sums (STORE), the window in registers (PATCH) or x (neither).
fn channel(o: u32, t: u32, f: u32, t_in: u32, v: ptr<function, array<f32, NV>>,
           p: ptr<function, array<f32, NP>>) -> f32 {
  if (STORE) {
    return (*v)[min(o, NV - 1u)];
  }
  if (PATCH) {
    var s = 0.0;
    for (var m = 0u; m < NP; m++) {
      s = fma(w[o * KW + m], (*p)[m], s);
    }
    return s;
  }
  return conv_direct(o, t, f, t_in);
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let pos = (wid.y * nwg.x + wid.x) * WG + lid;  // (t, f) flattened
  let t = pos / F_OUT;
  let f = pos % F_OUT;
  if (t >= OUT_ROWS) {
    return;
  }
  let base = pos * C_OUT;

  var t_in = step.n_tokens;
  for (var h = 0u; h < HALVINGS; h++) {
    t_in = (t_in + 1u) / 2u;
  }
  t_in = min(t_in, IN_ROWS);
  if (t >= (t_in + 1u) / 2u) {  // past T_out
    for (var o = 0u; o < C_OUT; o++) {
      out[base + o] = 0.0;
    }
    return;
  }

  var v: array<f32, NV>;  // STORE: every channel's sum
  var p: array<f32, NP>;  // PATCH: the window, p[i * 9 + kt * 3 + kf], zero where padding
  if (STORE) {
    for (var kt = 0u; kt < 3u; kt++) {
      let ti = 2u * t + kt;
      if (ti == 0u || ti > t_in) {
        continue;
      }
      for (var kf = 0u; kf < 3u; kf++) {
        let fi = 2u * f + kf;
        if (fi == 0u || fi > F_IN) {
          continue;
        }
        let xb = ((ti - 1u) * F_IN + fi - 1u) * C_IN;
        for (var i = 0u; i < C_IN; i++) {
          let xv = x[xb + i];
          let wb = i * 9u + kt * 3u + kf;
          for (var o = 0u; o < NV; o++) {
            v[o] = fma(w[o * KW + wb], xv, v[o]);
          }
        }
      }
    }
  } else if (PATCH) {
    for (var kt = 0u; kt < 3u; kt++) {
      let ti = 2u * t + kt;
      for (var kf = 0u; kf < 3u; kf++) {
        let fi = 2u * f + kf;
        let inside = ti > 0u && ti <= t_in && fi > 0u && fi <= F_IN;
        let xb = (select(0u, ti - 1u, inside) * F_IN + select(0u, fi - 1u, inside)) * C_IN;
        for (var i = 0u; i < C_IN; i++) {
          p[i * 9u + kt * 3u + kf] = select(0.0, x[xb + i], inside);
        }
      }
    }
  }

  // Three passes over the channels: mean, variance about it, output.
  var sum = 0.0;
  for (var o = 0u; o < C_OUT; o++) {
    sum += channel(o, t, f, t_in, &v, &p);
  }
  let mean = sum * (1.0 / f32(C_OUT));
  var sq = 0.0;
  for (var o = 0u; o < C_OUT; o++) {
    let d = channel(o, t, f, t_in, &v, &p) - mean;
    sq += d * d;
  }
  let inv = inverseSqrt(sq * (1.0 / f32(C_OUT)) + EPS);
  for (var o = 0u; o < C_OUT; o++) {
    let s = channel(o, t, f, t_in, &v, &p);
    out[base + o] = max((s - mean) * inv * ln_w[o], 0.0);
  }
}
