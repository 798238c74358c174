// Step 1 of a denoising step (src/rullama_py/ops/denoise.py), one workgroup per canvas position c, over its
// row of raw logits (softcapped f32, V long):
//   proc = raw * inv_temp;  x = proc - max;  e = exp(x);  Z = sum e;  p = e / Z   (written over raw, in place:
//   the next step's self-conditioning reads softmax(proc));  H = log Z - sum(e x) / Z (= -sum p log p, without
//   logs of tiny p);  argmax = the first index of the max;  draw = the first i with cumsum(p)[i] > u[c], or the
//   last i with p > 0 when rounding leaves none.
// The cumulative sums compare sums of e with u Z (no division). Passes over the row:
//   A. strided (lane l takes l, l + WG, ...: coalesced): the max and its first index.
//   B. chunks: lane l owns [l L, (l + 1) L), L = ceil(V / WG), and sums e and e x over it in index order. A scan
//      of the WG chunk sums (16 groups of 16, each summed in order) gives Z, sum(e x), and P_l, the sum of the
//      chunks before chunk l.
//   D. the crossing lies in the first chunk with S_l > u Z - P_l (and S_l > 0). The whole workgroup walks that
//      chunk again in sub-chunks of ceil(L / WG) (scanned the same way) to find the sub-chunk, and its lane walks
//      that one with the arithmetic of its sub-chunk sum, so the crossing is found there; a token with e = 0 is
//      never drawn. If rounding leaves the chunk without a crossing, its last token with e > 0 is drawn.
//   C. strided: p = e / Z written over raw, and the last index with p > 0 (the draw when no chunk crosses).
// D comes before C because C overwrites the raw logits D reads. Loads come four at a time, so that each lane has
// several in flight: one workgroup per row leaves few lanes per multiprocessor to hide memory latency.
// Out: stats[c] = (H as f32 bits, argmax, draw, 0). Needs libs=("denoise_lib",). Constants: CAP, WG (256).
@group(0) @binding(0) var<uniform> prm: DenoiseParams;
@group(0) @binding(1) var<storage, read_write> logits: array<f32>;
@group(0) @binding(2) var<storage, read> noise: array<u32>;
@group(0) @binding(3) var<storage, read_write> stats: array<vec4<u32>>;

const NONE: u32 = 0xFFFFFFFFu;

var<workgroup> red_v: array<f32, WG>;
var<workgroup> red_i: array<u32, WG>;
var<workgroup> part_e: array<f32, WG>;  // per lane: the sum of e over its chunk (B), then its sub-chunk (D)
var<workgroup> part_t: array<f32, WG>;  // per lane: the sum of e x over its chunk
var<workgroup> group_e: array<f32, 16>;
var<workgroup> group_t: array<f32, 16>;
var<workgroup> chunk_pick: atomic<u32>;  // the chunk holding the crossing
var<workgroup> sub_pick: atomic<u32>;    // the sub-chunk holding it
var<workgroup> chunk_last: atomic<u32>;  // 1 + the last index of that chunk with e > 0
var<workgroup> last_pos: atomic<u32>;    // 1 + the last index with p > 0
var<workgroup> picked: u32;
var<workgroup> picked_rest: f32;
var<workgroup> drawn: u32;

// x = proc - max of the logit at row index v, reading index min(v, V - 1) (valid) when v is past the end.
fn x_at(base: u32, v: u32, mx: f32) -> f32 {
  return logits[base + min(v, prm.vocab - 1u)] * prm.inv_temp - mx;
}

// Sums of part_e before this lane and in all (16 groups of 16, each in order). Uniform control flow only.
fn scan_parts(lid: u32) -> vec2<f32> {
  workgroupBarrier();
  if (lid < 16u) {
    var s = 0.0;
    for (var q = 0u; q < 16u; q++) {
      s += part_e[lid * 16u + q];
    }
    group_e[lid] = s;
  }
  workgroupBarrier();
  let g = lid / 16u;
  var total = 0.0;
  var before = 0.0;
  for (var q = 0u; q < 16u; q++) {
    if (q == g) {
      before = total;
    }
    total += group_e[q];
  }
  for (var j = g * 16u; j < lid; j++) {
    before += part_e[j];
  }
  return vec2<f32>(before, total);
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let c = wid.x;
  if (c >= min(prm.n_pos, CAP)) {
    return;
  }
  let V = prm.vocab;
  let base = c * V;
  if (lid == 0u) {
    atomicStore(&chunk_pick, NONE);
    atomicStore(&sub_pick, NONE);
    atomicStore(&chunk_last, 0u);
    atomicStore(&last_pos, 0u);
    drawn = NONE;
  }

  // A. The max of proc and its first index: each lane's first (strict >, rising indices), then a tree that keeps
  // the larger value, or the lower index of equal ones.
  let lowest = bitcast<f32>(0xFF7FFFFFu);
  var m = lowest;
  var mi = NONE;
  for (var v = lid; v < V; v += 4u * WG) {
    let x0 = x_at(base, v, 0.0);
    let x1 = select(lowest, x_at(base, v + WG, 0.0), v + WG < V);
    let x2 = select(lowest, x_at(base, v + 2u * WG, 0.0), v + 2u * WG < V);
    let x3 = select(lowest, x_at(base, v + 3u * WG, 0.0), v + 3u * WG < V);
    if (x0 > m) { m = x0; mi = v; }
    if (x1 > m) { m = x1; mi = v + WG; }
    if (x2 > m) { m = x2; mi = v + 2u * WG; }
    if (x3 > m) { m = x3; mi = v + 3u * WG; }
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

  // B. Chunk sums of e and e x, four loads at a time, summed in index order; then their scan.
  let L = (V + WG - 1u) / WG;
  let lo = min(lid * L, V);
  let hi = min(lo + L, V);
  var se = 0.0;
  var st = 0.0;
  for (var v = lo; v < hi; v += 4u) {
    let x0 = x_at(base, v, mx);
    let x1 = x_at(base, v + 1u, mx);
    let x2 = x_at(base, v + 2u, mx);
    let x3 = x_at(base, v + 3u, mx);
    let e0 = exp(x0);
    se += e0;
    st += e0 * x0;
    if (v + 1u < hi) {
      let e1 = exp(x1);
      se += e1;
      st += e1 * x1;
    }
    if (v + 2u < hi) {
      let e2 = exp(x2);
      se += e2;
      st += e2 * x2;
    }
    if (v + 3u < hi) {
      let e3 = exp(x3);
      se += e3;
      st += e3 * x3;
    }
  }
  part_e[lid] = se;
  part_t[lid] = st;
  workgroupBarrier();
  if (lid < 16u) {
    var gt = 0.0;
    for (var q = 0u; q < 16u; q++) {
      gt += part_t[lid * 16u + q];
    }
    group_t[lid] = gt;
  }
  let ez = scan_parts(lid);  // (P_lid, Z)
  let z = ez.y;
  var t = 0.0;
  for (var q = 0u; q < 16u; q++) {
    t += group_t[q];
  }

  // D. The chunk with the crossing, then the sub-chunk in it, then the token.
  let rest = bitcast<f32>(noise[c]) * z - ez.x;
  if (se > rest && se > 0.0) {
    atomicMin(&chunk_pick, lid);
  }
  workgroupBarrier();
  if (lid == atomicLoad(&chunk_pick)) {
    picked_rest = rest;
  }
  if (lid == 0u) {
    picked = atomicLoad(&chunk_pick);
  }
  let pc = workgroupUniformLoad(&picked);
  if (pc != NONE) {
    let clo = pc * L;
    let chi = min(clo + L, V);
    let Q = (L + WG - 1u) / WG;
    let slo = min(clo + lid * Q, chi);
    let shi = min(slo + Q, chi);
    var q = 0.0;
    var last = 0u;
    for (var v = slo; v < shi; v++) {
      let e = exp(x_at(base, v, mx));
      q += e;
      if (e > 0.0) {
        last = v + 1u;
      }
    }
    part_e[lid] = q;
    atomicMax(&chunk_last, last);
    let sub_rest = picked_rest - scan_parts(lid).x;
    if (q > sub_rest && q > 0.0) {
      atomicMin(&sub_pick, lid);
    }
    workgroupBarrier();
    if (lid == atomicLoad(&sub_pick)) {
      var r = 0.0;
      for (var v = slo; v < shi; v++) {
        let e = exp(x_at(base, v, mx));
        r += e;
        if (r > sub_rest && e > 0.0) {
          drawn = v;
          break;
        }
      }
    }
  }
  storageBarrier();  // every read of the raw logits is done before C overwrites them

  // C. p over raw, and the last index with p > 0.
  var lastp = 0u;
  for (var v = lid; v < V; v += 4u * WG) {
    let p0 = exp(x_at(base, v, mx)) / z;
    let p1 = exp(x_at(base, v + WG, mx)) / z;
    let p2 = exp(x_at(base, v + 2u * WG, mx)) / z;
    let p3 = exp(x_at(base, v + 3u * WG, mx)) / z;
    logits[base + v] = p0;
    if (p0 > 0.0) { lastp = v + 1u; }
    if (v + WG < V) {
      logits[base + v + WG] = p1;
      if (p1 > 0.0) { lastp = v + WG + 1u; }
    }
    if (v + 2u * WG < V) {
      logits[base + v + 2u * WG] = p2;
      if (p2 > 0.0) { lastp = v + 2u * WG + 1u; }
    }
    if (v + 3u * WG < V) {
      logits[base + v + 3u * WG] = p3;
      if (p3 > 0.0) { lastp = v + 3u * WG + 1u; }
    }
  }
  atomicMax(&last_pos, lastp);
  workgroupBarrier();
  if (lid == 0u) {
    var d = drawn;
    if (d == NONE) {
      d = max(select(atomicLoad(&last_pos), atomicLoad(&chunk_last), pc != NONE), 1u) - 1u;
    }
    let h = max(log(z) - t / z, 0.0);  // >= 0 in exact arithmetic; the clamp keeps the sort's bit order
    stats[c] = vec4<u32>(bitcast<u32>(h), amax, d, 0u);
  }
}
