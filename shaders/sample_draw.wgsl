// Sampler stage 2 (see src/rullama_py/sampling.py): one workgroup. Selects the global top KTOT tokens from
// stage 1's NSLICE candidate lists, sorts them, applies top-k / top-p / min-p and the temperature, draws with
// rand01(stp.seed, stp.counter), writes the token id to out[0] and appends it to the history.
// Constants: NSLICE, CAND (== WG), WG (256), KTOT (= min(CAND, V)), HEADS (entries at the front of each list
//            that are its largest), NHEAD (= NSLICE * HEADS, at most 1024).
@group(0) @binding(0) var<storage, read> cand: array<vec2<u32>>;
@group(0) @binding(1) var<uniform> prm: SampleParams;
@group(0) @binding(2) var<uniform> stp: Step;
@group(0) @binding(3) var<storage, read_write> hist: array<u32>;  // [count, next, ring of arrayLength - 2]
@group(0) @binding(4) var<storage, read_write> out: array<u32>;

var<workgroup> pool: array<vec2<u32>, NHEAD>;
var<workgroup> top: array<vec2<u32>, CAND>;
var<workgroup> fbuf: array<f32, WG>;
var<workgroup> gsum: array<f32, 16>;
var<workgroup> n_top: atomic<u32>;
var<workgroup> cnt_a: atomic<u32>;
var<workgroup> cnt_u: u32;

// Radix-select sources: 0 = the heads pool, 1 = every candidate (fallback).
fn rs_elem(src: u32, j: u32) -> vec2<u32> {
  if (src == 1u) {
    return cand[j];
  }
  return pool[j];
}

// Number of invocations with pred true (uniform result; call from uniform control flow).
fn wg_count(lid: u32, pred: bool) -> u32 {
  if (lid == 0u) {
    atomicStore(&cnt_a, 0u);
  }
  workgroupBarrier();
  if (pred) {
    atomicAdd(&cnt_a, 1u);
  }
  workgroupBarrier();
  if (lid == 0u) {
    cnt_u = atomicLoad(&cnt_a);
  }
  return workgroupUniformLoad(&cnt_u);
}

// Inclusive prefix sums of v over the workgroup, left in fbuf/gsum for scan_at. The order of f32 additions
// (tests/reference_sampling.py mirrors it): 16 sequential group sums; element i is then
// (sum of the groups before its own, sequentially) + (its group's elements up to i, sequentially).
fn wg_scan(lid: u32, v: f32) {
  workgroupBarrier();  // earlier readers of fbuf are done
  fbuf[lid] = v;
  workgroupBarrier();
  if (lid < 16u) {
    var s = 0.0;
    for (var q = 0u; q < 16u; q++) {
      s += fbuf[lid * 16u + q];
    }
    gsum[lid] = s;
  }
  workgroupBarrier();
}

fn scan_at(i: u32) -> f32 {
  let g = i / 16u;
  var p = 0.0;
  for (var q = 0u; q < g; q++) {
    p += gsum[q];
  }
  var l = 0.0;
  for (var j = g * 16u; j <= i; j++) {
    l += fbuf[j];
  }
  return p + l;
}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32) {
  // 1. The HEADS largest of every list; thr: exactly KTOT of them are >= thr.
  for (var j = lid; j < NHEAD; j += WG) {
    pool[j] = cand[(j / HEADS) * CAND + j % HEADS];
  }
  if (lid == 0u) {
    atomicStore(&n_top, 0u);
  }
  top[lid] = NO_TOKEN;  // CAND == WG
  workgroupBarrier();
  var thr = rs_select(lid, 0u, NHEAD, KTOT);

  // 2. If no list has a further entry >= thr (entry HEADS is the largest of the rest), those KTOT heads are
  //    the global top KTOT. Otherwise (one slice holds more than HEADS of them: many equal or clustered
  //    values) select exactly over all NSLICE * CAND candidates.
  var more = false;
  if (HEADS < CAND) {
    for (var s = lid; s < NSLICE; s += WG) {
      let c = cand[s * CAND + HEADS];
      more = more || (c.y != 0u && c_ge(c, thr));
    }
  }
  var src = 0u;
  var total = NHEAD;
  if (wg_count(lid, more) != 0u) {
    src = 1u;
    total = NSLICE * CAND;
    thr = rs_select(lid, 1u, total, KTOT);
  }
  for (var j = lid; j < total; j += WG) {
    let c = rs_elem(src, j);
    if (c.y != 0u && c_ge(c, thr)) {
      let slot = atomicAdd(&n_top, 1u);
      if (slot < CAND) {
        top[slot] = c;
      }
    }
  }
  workgroupBarrier();

  // 3. Bitonic sort, largest value first, then lowest id (NO_TOKEN pads sort last).
  for (var size = 2u; size <= CAND; size = size << 1u) {
    for (var stride = size >> 1u; stride > 0u; stride = stride >> 1u) {
      let j = lid ^ stride;
      if (j > lid) {
        let a = top[lid];
        let b = top[j];
        if (c_gt(b, a) == ((lid & size) == 0u)) {
          top[lid] = b;
          top[j] = a;
        }
      }
      workgroupBarrier();
    }
  }

  // 4. top-k, top-p, min-p, temperature, draw. Invocation i holds the i-th largest candidate.
  let i = lid;
  let v0 = key_value(top[0].x);
  let vi = key_value(top[min(i, KTOT - 1u)].x);
  let n = select(KTOT, min(prm.top_k, KTOT), prm.top_k > 0u);
  let x = max((vi - v0) * prm.filter_scale, -100.0);
  var m = n;
  if ((prm.flags & F_TOP_P) != 0u) {
    wg_scan(lid, select(0.0, exp(x), i < n));
    let limit = prm.top_p * scan_at(n - 1u);
    m = min(n, wg_count(lid, i < n && scan_at(i) < limit) + 1u);
  }
  if ((prm.flags & F_MIN_P) != 0u) {
    m = max(1u, wg_count(lid, i < m && x >= prm.log_min_p));
  }
  wg_scan(lid, select(0.0, exp(max((vi - v0) * prm.inv_temp, -100.0)), i < m));
  let goal = rand01(stp.seed, stp.counter) * scan_at(m - 1u);
  var pick = min(m - 1u, wg_count(lid, i < m && scan_at(i) < goal));
  // Greedy, or every candidate -inf (nothing to normalise): the largest value, lowest id.
  if ((prm.flags & F_GREEDY) != 0u || !(v0 > -3.0e38)) {
    pick = 0u;
  }

  if (lid == 0u) {
    let tok = ~top[pick].y;
    out[0] = tok;
    history_append(tok);  // sample_history.wgsl
  }
}
