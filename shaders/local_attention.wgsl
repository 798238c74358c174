// Gemma 4's audio attention (transformers' Gemma4AudioAttention under the mask of Gemma4AudioModel.forward):
// chunked local attention with a Transformer-XL relative-position term and a logit soft cap. For each token
// t < step.n_tokens (= T) and head h, with qs = q[t, h] * QS (QS = q_scale, per dim) and keys k' = KSCALE * k:
//   s(key) = CAP * tanh((qs . k'[key, h] + qs . rel[c, h]) / CAP),   c = PAST - (t - key)   (no rel term if c >= P)
//   out[t, h] = softmax over the visible keys of s, applied to v[key, h]
// visible keys: t - (PAST - 1) <= key <= t + max(FUTURE - 1, 0), and 0 <= key < T.
//
// Why (transformers' block form, C = chunk, PAST = max_past_horizon = context_left - 1, FUTURE = context_right,
// CS = C + PAST + FUTURE, P = CS / 2 + 1 rows of rel, row r = relative position CS / 2 - r):
// - Queries are cut into blocks of C; query t = b * C + i. Block b's keys are context slots j = 0 .. CS - 1
//   holding key b * C - PAST + j (zero padding outside [0, T)).
// - The mask (sliding_window_mask_function((PAST, FUTURE)) and the padding, blocked by
//   _convert_4d_mask_to_blocked_5d) keeps slot j iff, with dist = t - key = i - j + PAST,
//   0 <= dist < PAST, or dist < 0 and -dist < FUTURE, and 0 <= key < T. So the query sees itself, PAST - 1
//   keys before it and max(FUTURE - 1, 0) after it (FUTURE = 0 and 1 alike: none). Gemma 4 (12, 12, 0): 12 keys,
//   t - 11 .. t. Masked logits are -1e9, whose exp underflows to exactly 0 in f32: they drop out of the softmax.
//   Every visible key is in its block's context (slots 1 .. CS - 2), so the blocks change nothing else.
// - Rel-shift: the [C, P] products qs . rel[p] are padded with zeros to [C, CS + 1], flattened, cut to C * CS
//   and read as [C, CS]. Slot (i, j) lands on flat index i * CS + j = i * (CS + 1) + (j - i): for j >= i that is
//   row i, column c = j - i = PAST - dist (rel row c when c < P, a padding zero when c >= P); for j < i it is row
//   i - 1 (another query's products), but j < i means dist > PAST: always masked. Visible keys have
//   1 <= c <= PAST + FUTURE - 1; row 0 is never used. Gemma 4: c = 12 - dist in 1 .. 12 (all < P = 13), and
//   row c holds relative position 12 - c = dist.
// - The soft cap applies to the sum of both terms before masking; softmax in f32.
//
// Layout: q, k, v, dst f32 [MAXT, NH, HD] (HD = 4 * LANES), rel f32 [P, NH, HD], QS f32 [HD]; all read as vec4.
// Rows at or past T are neither read nor written.
// Work: a (t, h) row per LANES threads, each holding one vec4 of the head; RW rows per workgroup of WG = RW *
// LANES threads; row index = t * NH + h, workgroup (wid.y * GRID_X + wid.x). Each thread forms its vec4's share
// of the NK window scores, the shares meet in workgroup memory, and every thread of the row then takes the
// softmax of the row's NK scores (few) and writes its vec4 of the output.
// Constants: NH, LANES, RW, WG, GRID_X, PAST, NK (window slots = PAST + max(FUTURE - 1, 0)), P, KSCALE, CAP, MAXT.
// Window slot n (0 <= n < NK) is key t + n + 1 - PAST, with c = n + 1.
@group(0) @binding(0) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> k: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> v: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> rel: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> qsc: array<vec4<f32>>;
@group(0) @binding(5) var<uniform> step: Step;
@group(0) @binding(6) var<storage, read_write> dst: array<vec4<f32>>;

// [thread][slot]: each thread's share of a score; an odd row stride keeps both the writes (a thread's slots)
// and the sums (a row's shares of one slot per thread) free of bank conflicts.
const NKP: u32 = NK | 1u;
var<workgroup> part: array<f32, NKP * WG>;
var<workgroup> scores: array<f32, NK * RW>;  // [row][slot]

// CAP * tanh(x / CAP), with tanh written through exp on a clamped argument (as in softcap.wgsl: some backends
// return NaN for tanh of large |x|; at |u| = 15 tanh is 1 to f32 precision).
fn soft_cap(x: f32) -> f32 {
  let u = clamp(x / CAP, -15.0, 15.0);
  return CAP * (1.0 - 2.0 / (exp(2.0 * u) + 1.0));
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let n = min(step.n_tokens, MAXT);
  let first = (wid.y * GRID_X + wid.x) * RW;
  if (first >= n * NH) {
    return;  // the whole workgroup (uniform control flow)
  }
  let r = lid / LANES;
  let lane = lid % LANES;
  let row = first + r;
  let live = row < n * NH;
  let t = row / NH;
  let h = row % NH;
  // Visible slots [lo, hi): key = t + s + 1 - PAST must lie in [0, n).
  let lo = select(0u, PAST - 1u - t, t + 1u < PAST);
  let hi = min(NK, n + PAST - 1u - t);

  var qv = vec4<f32>(0.0);
  if (live) {
    qv = q[row * LANES + lane] * qsc[lane];
  }
  for (var s = 0u; s < NK; s++) {
    var share = 0.0;
    if (live && s >= lo && s < hi) {
      let key = t + s + 1u - PAST;
      var kv = KSCALE * k[(key * NH + h) * LANES + lane];
      if (s + 1u < P) {
        kv += rel[((s + 1u) * NH + h) * LANES + lane];
      }
      share = dot(qv, kv);
    }
    part[lid * NKP + s] = share;
  }
  workgroupBarrier();
  for (var s = lane; s < NK; s += LANES) {
    var total = 0.0;
    for (var l = 0u; l < LANES; l++) {
      total += part[(r * LANES + l) * NKP + s];
    }
    scores[r * NK + s] = soft_cap(total);
  }
  workgroupBarrier();
  if (!live) {
    return;
  }
  var m = scores[r * NK + PAST - 1u];  // the query's own key: always visible
  for (var s = lo; s < hi; s++) {
    m = max(m, scores[r * NK + s]);
  }
  var l = 0.0;
  var acc = vec4<f32>(0.0);
  for (var s = lo; s < hi; s++) {
    let p = exp(scores[r * NK + s] - m);
    l += p;
    acc += p * v[((t + s + 1u - PAST) * NH + h) * LANES + lane];
  }
  dst[row * LANES + lane] = acc / l;
}
