// Bidirectional multi-head self-attention over one short sequence, all in f32 (Kokoro's PL-BERT):
//   out[t, h, :] = sum_j softmax_j(SCALE * q[t, h, :] . k[j, h, :]) v[j, h, :]   for j < n = step.n_tokens
// q, k, v, out: f32 [rows, H, D] (time-major, heads contiguous per row). Rows t >= n are written as 0.
// Why not ops.attention: its cache holds K and V in f16, whose rounding (~5e-4 relative) moves PL-BERT's
// outputs enough to flip Kokoro's rounded durations now and then; the sequences here are short (n <= 512)
// so keeping every score of a query in workgroup memory is cheap.
// One workgroup (WG threads, WG >= D) per (row, head): scores in workgroup memory, max and sum by tree
// reduction, then thread d < D sums p_j v[j, h, d]. Constants: H, D, ROWS, MAXN (score slots), SCALE, WG.
@group(0) @binding(0) var<storage, read> q: array<f32>;
@group(0) @binding(1) var<storage, read> k: array<f32>;
@group(0) @binding(2) var<storage, read> v: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<uniform> step: Step;

var<workgroup> scores: array<f32, MAXN>;
var<workgroup> red: array<f32, WG>;
var<workgroup> qrow: array<f32, D>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let t = wid.x;
  let h = wid.y;
  let n = min(step.n_tokens, min(ROWS, MAXN));
  let base = (t * H + h) * D;
  if (t >= n) {
    for (var d = lid; d < D; d += WG) {
      out[base + d] = 0.0;
    }
    return;
  }
  for (var d = lid; d < D; d += WG) {
    qrow[d] = q[base + d];
  }
  workgroupBarrier();
  // scores and their running max
  var m = -3.0e38;
  for (var j = lid; j < n; j += WG) {
    let kb = (j * H + h) * D;
    var s = 0.0;
    for (var d = 0u; d < D; d++) {
      s = fma(qrow[d], k[kb + d], s);
    }
    s *= SCALE;
    scores[j] = s;
    m = max(m, s);
  }
  red[lid] = m;
  workgroupBarrier();
  for (var w = WG / 2u; w > 0u; w >>= 1u) {
    if (lid < w) {
      red[lid] = max(red[lid], red[lid + w]);
    }
    workgroupBarrier();
  }
  m = red[0];
  workgroupBarrier();
  var l = 0.0;
  for (var j = lid; j < n; j += WG) {
    let p = exp(scores[j] - m);
    scores[j] = p;
    l += p;
  }
  red[lid] = l;
  workgroupBarrier();
  for (var w = WG / 2u; w > 0u; w >>= 1u) {
    if (lid < w) {
      red[lid] += red[lid + w];
    }
    workgroupBarrier();
  }
  let inv = 1.0 / red[0];
  for (var d = lid; d < D; d += WG) {
    var acc = 0.0;
    for (var j = 0u; j < n; j++) {
      acc = fma(scores[j], v[(j * H + h) * D + d], acc);
    }
    out[base + d] = acc * inv;
  }
}
