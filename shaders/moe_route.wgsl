// The router of a mixture-of-experts layer, one workgroup per token: from the router's logits [N_TOK, N_EXP]
// pick the TOP_K experts of largest softmax probability (ties: the lower expert index first) and their weights
// p[e] / sum(p[top]) * SCALE_E[e], written as IDS[t, k] (u32, by rank) and WTS[t, k] (f32).
//
// Softmax is strictly increasing, so the order of the probabilities is the order of the logits: comparing the
// f32 logits exactly keeps rounding in exp from reordering or tying experts. In the renormalised weights the
// softmax's own normaliser cancels, p[e] / sum(p[top]) = exp(l[e] - m) / sum_top exp(l[j] - m), so only the
// chosen experts' exponentials are computed (m = the largest logit, the rank-0 expert's).
//
// Each lane ranks its experts by counting those that come before: the ranks are a permutation of 0..N_EXP-1
// without any sort or barrier loop, and the TOP_K of rank < TOP_K write their slot directly.
// Logits must be finite (a NaN has no place in the order). Constants: N_EXP, TOP_K, N_TOK, WG, GRID_X
// (workgroups along x; more tokens than 65535 wrap into y).
@group(0) @binding(0) var<storage, read> L: array<f32>;
@group(0) @binding(1) var<storage, read> SCALE_E: array<f32>;
@group(0) @binding(2) var<storage, read_write> IDS: array<u32>;
@group(0) @binding(3) var<storage, read_write> WTS: array<f32>;

var<workgroup> lg: array<f32, N_EXP>;  // this token's logits
var<workgroup> chosen: array<u32, TOP_K>;  // expert of each rank
var<workgroup> ex: array<f32, TOP_K>;  // exp(l - m) of each rank

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let t = wid.x + wid.y * GRID_X;
  if (t >= N_TOK) {
    return;  // padding workgroup of a wrapped grid (uniform)
  }
  for (var e = lid; e < N_EXP; e += WG) {
    lg[e] = L[t * N_EXP + e];
  }
  workgroupBarrier();
  for (var e = lid; e < N_EXP; e += WG) {
    let v = lg[e];
    var rank = 0u;
    for (var j = 0u; j < N_EXP; j++) {
      let o = lg[j];
      rank += select(0u, 1u, o > v || (o == v && j < e));
    }
    if (rank < TOP_K) {
      chosen[rank] = e;
    }
  }
  workgroupBarrier();
  let m = lg[chosen[0]];
  for (var r = lid; r < TOP_K; r += WG) {
    ex[r] = exp(lg[chosen[r]] - m);
  }
  workgroupBarrier();
  for (var r = lid; r < TOP_K; r += WG) {
    var total = 0.0;
    for (var j = 0u; j < TOP_K; j++) {
      total += ex[j];  // every lane sums in the same order
    }
    let e = chosen[r];
    IDS[t * TOP_K + r] = e;
    WTS[t * TOP_K + r] = ex[r] / total * SCALE_E[e];
  }
}
