// Step 1 of a denoising step (src/rullama_py/ops/denoise.py), one workgroup per canvas position c, over its
// row of raw logits (softcapped f32, V long):
//   proc = raw * inv_temp;  x = proc - max;  e = exp(x);  Z = sum e;  p = e / Z   (written over raw, in place:
//   the next step's self-conditioning reads softmax(proc));  H = log Z - sum(e x) / Z (= -sum p log p, without
//   logs of tiny p);  argmax = the first index of the max;  draw = the first i with cumsum(p)[i] > u[c], or the
//   last i with p > 0 when rounding leaves none.
// The row is read in four passes:
//   A. strided (lane l takes l, l + WG, ...: coalesced): the max and its first index.
//   B. chunks: lane l owns [l L, (l + 1) L), L = ceil(V / WG), and sums e and e x over it in index order. A scan
//      of the WG chunk sums (16 groups of 16, summed in order) gives Z, sum(e x), and P_l, the sum before chunk l.
//   D. the crossing: comparing sums of e with u Z (no division), it lies in the first chunk l with
//      S_l > u Z - P_l. That lane walks its chunk again with pass B's arithmetic, so its running sum ends at
//      exactly S_l and the crossing is found inside the chunk (its last index otherwise, as a guard).
//   C. strided: p = e / Z written over raw, and the last index with p > 0 (the fallback when no chunk crosses).
// D comes before C because C overwrites the raw logits D reads.
// Out: stats[c] = (H as f32 bits, argmax, draw, 0). Needs libs=("denoise_lib",). Constants: CAP, WG (256).
@group(0) @binding(0) var<uniform> prm: DenoiseParams;
@group(0) @binding(1) var<storage, read_write> logits: array<f32>;
@group(0) @binding(2) var<storage, read> noise: array<u32>;
@group(0) @binding(3) var<storage, read_write> stats: array<vec4<u32>>;

var<workgroup> red_v: array<f32, WG>;
var<workgroup> red_i: array<u32, WG>;
var<workgroup> chunk_e: array<f32, WG>;  // per lane: the sum of e over its chunk
var<workgroup> chunk_t: array<f32, WG>;  // per lane: the sum of e x over its chunk
var<workgroup> group_e: array<f32, 16>;
var<workgroup> group_t: array<f32, 16>;
var<workgroup> cross_lane: atomic<u32>;  // the chunk holding the crossing (0xFFFFFFFF: none)
var<workgroup> last_pos: atomic<u32>;    // 1 + the last index with p > 0 (0: none)
var<workgroup> drawn: u32;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let c = wid.x;
  if (c >= min(prm.n_pos, CAP)) {
    return;
  }
  let V = prm.vocab;
  let base = c * V;
  if (lid == 0u) {
    atomicStore(&cross_lane, 0xFFFFFFFFu);
    atomicStore(&last_pos, 0u);
    drawn = 0xFFFFFFFFu;
  }

  // A. The max of proc and its first index: each lane's first (strict >, rising indices), then a tree that keeps
  // the larger value, or the lower index of equal ones.
  var m = bitcast<f32>(0xFF7FFFFFu);  // the lowest finite f32
  var mi = 0xFFFFFFFFu;
  for (var v = lid; v < V; v += WG) {
    let x = logits[base + v] * prm.inv_temp;
    if (x > m) {
      m = x;
      mi = v;
    }
  }
  red_v[lid] = m;
  red_i[lid] = mi;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s = s >> 1u) {
    if (lid < s) {
      let v2 = red_v[lid + s];
      let i2 = red_i[lid + s];
      if (v2 > red_v[lid] || (v2 == red_v[lid] && i2 < red_i[lid])) {
        red_v[lid] = v2;
        red_i[lid] = i2;
      }
    }
    workgroupBarrier();
  }
  let mx = red_v[0];
  let amax = red_i[0];

  // B. Chunk sums of e and e x, then their scan.
  let L = (V + WG - 1u) / WG;
  let lo = min(lid * L, V);
  let hi = min(lo + L, V);
  var se = 0.0;
  var st = 0.0;
  for (var v = lo; v < hi; v++) {
    let x = logits[base + v] * prm.inv_temp - mx;
    let e = exp(x);
    se += e;
    st += e * x;
  }
  chunk_e[lid] = se;
  chunk_t[lid] = st;
  workgroupBarrier();
  if (lid < 16u) {
    var ge = 0.0;
    var gt = 0.0;
    for (var q = 0u; q < 16u; q++) {
      ge += chunk_e[lid * 16u + q];
      gt += chunk_t[lid * 16u + q];
    }
    group_e[lid] = ge;
    group_t[lid] = gt;
  }
  workgroupBarrier();
  let g = lid / 16u;
  var z = 0.0;
  var t = 0.0;
  var before = 0.0;  // P_lid: the groups before this lane's, then the chunks before it in its group
  for (var q = 0u; q < 16u; q++) {
    if (q == g) {
      before = z;
    }
    z += group_e[q];
    t += group_t[q];
  }
  for (var j = g * 16u; j < lid; j++) {
    before += chunk_e[j];
  }

  // D. The crossing: cumsum(e) > u Z, found in chunk space as (running sum of the chunk) > u Z - P_l.
  let rest = bitcast<f32>(noise[c]) * z - before;
  if (se > rest) {
    atomicMin(&cross_lane, lid);
  }
  workgroupBarrier();
  if (lid == atomicLoad(&cross_lane)) {
    var r = 0.0;
    var pick = hi - 1u;
    for (var v = lo; v < hi; v++) {
      let x = logits[base + v] * prm.inv_temp - mx;
      let e = exp(x);
      r += e;
      if (r > rest) {
        pick = v;
        break;
      }
    }
    drawn = pick;
  }
  storageBarrier();  // every read of the raw logits is done before C overwrites them

  // C. p over raw, and the last index with p > 0.
  var last = 0u;
  for (var v = lid; v < V; v += WG) {
    let x = logits[base + v] * prm.inv_temp - mx;
    let p = exp(x) / z;
    logits[base + v] = p;
    if (p > 0.0) {
      last = v + 1u;
    }
  }
  if (last > 0u) {
    atomicMax(&last_pos, last);
  }
  workgroupBarrier();
  if (lid == 0u) {
    var d = drawn;
    if (d == 0xFFFFFFFFu) {
      d = max(atomicLoad(&last_pos), 1u) - 1u;
    }
    let h = max(log(z) - t / z, 0.0);  // >= 0 in exact arithmetic; the clamp keeps the sort's bit order
    stats[c] = vec4<u32>(bitcast<u32>(h), amax, d, 0u);
  }
}
