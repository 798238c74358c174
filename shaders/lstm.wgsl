// Bidirectional LSTM recurrence (torch.nn.LSTM(bidirectional=True), one layer, h0 = c0 = 0), both directions in
// one dispatch of two workgroups: workgroup d = 0 runs forward over t = 0 .. L - 1, d = 1 backward over
// t = L - 1 .. 0, each looping over time inside the kernel. For hidden unit j of direction d at row t:
//   a_q = xw[t, d 4H + q H + j] + sum_k W_hh_d[q H + j, k] h_prev[k]      (gate q = i, f, g, o: 0, 1, 2, 3)
//   c = sigmoid(a_f) c + sigmoid(a_i) tanh(a_g);   h = sigmoid(a_o) tanh(c);   out[t, OFF + d H + j] = h
// h_prev is the direction's h of the row it ran before (zero at its first row).
// xw: f32 [IN_ROWS, 8H], the input projection with both biases (a matmul before this kernel).
// w: f32 [2, H (k), H (j), 4 (q)], w[d, k, j, q] = W_hh_d[q H + j, k] (ops.lstm.lstm_weights), read as vec4: a
//   unit's four gate weights for one k are one load, and at each k neighbouring threads (units) read
//   neighbouring vec4s.
// out: f32 [OUT_ROWS, STRIDE]; only columns OFF .. OFF + 2H - 1 are written.
// L = min(step.n_tokens, IN_ROWS): rows of xw at or past L are never read; rows L .. OUT_ROWS - 1 of out are
// written as zeros.
//
// Thread lid owns units j = lid + u WG (u < UPT, j < H) and keeps their cells in registers. The previous h lies
// in workgroup memory, in two halves so that one barrier a step suffices: step s reads half s % 2 and writes half
// (s + 1) % 2; the barrier ending step s orders its writes before step s + 1's reads, and its reads before step
// s + 1's writes (which go to the half step s read).
// Constants: H, WG, UPT, IN_ROWS, OUT_ROWS, STRIDE, OFF.
@group(0) @binding(0) var<storage, read> xw: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<vec4<f32>>;
@group(0) @binding(2) var<uniform> step: Step;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

var<workgroup> hb: array<f32, 2u * H>;

// tanh(x) = (1 - e) / (1 + e) with e = exp(-2 |x|) <= 1, the sign put back: no infinity for any finite x (the
// built-in tanh is NaN for large |x| on some backends).
fn tanh_finite(x: f32) -> f32 {
  let e = exp(-2.0 * abs(x));
  let t = (1.0 - e) / (1.0 + e);
  return select(-t, t, x >= 0.0);
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let d = wid.x;
  let n = min(step.n_tokens, IN_ROWS);
  let col = OFF + d * H;
  var c: array<f32, UPT>;
  for (var u = 0u; u < UPT; u++) {
    let j = lid + u * WG;
    if (j < H) {
      c[u] = 0.0;
      hb[j] = 0.0;
      for (var t = n; t < OUT_ROWS; t++) {
        out[t * STRIDE + col + j] = 0.0;
      }
    }
  }
  workgroupBarrier();
  for (var s = 0u; s < n; s++) {
    let t = select(n - 1u - s, s, d == 0u);
    let hp = (s & 1u) * H;  // the half holding h_prev
    let hn = H - hp;        // the half this step writes
    for (var u = 0u; u < UPT; u++) {
      let j = lid + u * WG;
      if (j < H) {
        let xb = t * 8u * H + d * 4u * H + j;
        let x4 = vec4(xw[xb], xw[xb + H], xw[xb + 2u * H], xw[xb + 3u * H]);
        // Two accumulators and four independent loads an iteration: more loads in flight, shorter fma chains.
        let wb = d * H * H + j;
        var acc0 = vec4(0.0);
        var acc1 = vec4(0.0);
        var k = 0u;
        for (; k + 4u <= H; k += 4u) {
          acc0 = fma(w[wb + k * H], vec4(hb[hp + k]), acc0);
          acc1 = fma(w[wb + (k + 1u) * H], vec4(hb[hp + k + 1u]), acc1);
          acc0 = fma(w[wb + (k + 2u) * H], vec4(hb[hp + k + 2u]), acc0);
          acc1 = fma(w[wb + (k + 3u) * H], vec4(hb[hp + k + 3u]), acc1);
        }
        for (; k < H; k++) {
          acc0 = fma(w[wb + k * H], vec4(hb[hp + k]), acc0);
        }
        let a = x4 + (acc0 + acc1);
        c[u] = fma(sigmoid(a.y), c[u], sigmoid(a.x) * tanh_finite(a.z));
        let h = sigmoid(a.w) * tanh_finite(c[u]);
        hb[hn + j] = h;
        out[t * STRIDE + col + j] = h;
      }
    }
    workgroupBarrier();
  }
}
