// Causal (optionally sliding-window) GQA attention over an f16 KV cache, for prefill and decode alike:
//   out[t, h] = softmax_k(SCALE * q[t, h] . K[k] + mask) . V[k],   queries at positions step.pos + t
// mask: key k is allowed iff k <= p and (WINDOW == 0 or p - k < WINDOW), p the query's position.
//   q, out: f32 [n_tokens, NH, HD];   cache: f16 [NKV][CAP][HD] packed in u32 (kv_store.wgsl), key k at k % CAP.
//
// Work split. A "row" is one (token, q head); the G = NH / NKV q heads that share a kv head are laid out
// token-major (row = t * G + head-in-group), and a workgroup takes R consecutive rows of one kv head, so every
// key and value it streams from memory serves R rows (decode: all G heads of the token; prefill: several tokens
// too). Grid = (row tiles, NKV, NSPLIT). The keys a tile can see are cut into NSPLIT chunks (flash-decoding):
// with one token the only parallelism is over keys. Chunk sizes are computed from step at run time, so one
// recorded dispatch serves every context length; splits past the context exit at once.
//   entry `main`:    NSPLIT == 1, writes the normalised output (prefill: enough row tiles for parallelism).
//   entry `split`:   writes each split's unnormalised accumulator and (max, sum) to dst / ml,
//   entry `combine`: one workgroup per row merges the splits (log-sum-exp weights) into out.
//
// Inside a workgroup, per tile of WG keys: thread j scores key j against all R rows (q tile in workgroup
// memory, pre-scaled; the key row read straight from the cache, 8 halves per 16-byte load); the row maxima
// are reduced through workgroup memory; the probabilities replace the scores there; then each thread
// accumulates 8 output dims x its rows over the tile's values, reading V rows coalesced. Online softmax in f32:
// running max per row in workgroup memory, the running sum kept per thread and reduced once at the end.
//
// Constants: HD (multiple of 8), G, NH, NKV, R (power of two, <= 32, divides WG), WG (power of two), NSPLIT,
// ALIGN (chunks are rounded up to a multiple of it: WG, so no chunk ends in a part-filled tile), CAP, WINDOW,
// SCALE, MAXT (token capacity of q/out).
@group(0) @binding(0) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> kc: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> vc: array<vec4<u32>>;
@group(0) @binding(3) var<uniform> step: Step;
@group(0) @binding(4) var<storage, read_write> dst: array<vec4<f32>>;  // out (main) or split accumulators
@group(0) @binding(5) var<storage, read_write> ml: array<vec2<f32>>;   // split: (running max, sum) per row

const HD4: u32 = HD / 4u;
const HD8: u32 = HD / 8u;
const NSEG: u32 = WG / R;                       // threads per row in the row reductions
const ITEMS: u32 = (R * HD8 + WG - 1u) / WG;    // (row, 8-dim column) accumulators per thread
const MAXROWS: u32 = MAXT * NH;
// "No key yet / masked". Finite on purpose: exp(MASKED - MASKED) = 1 keeps empty rows NaN-free, where -inf
// would give exp(nan).
const MASKED: f32 = -1e30;

var<workgroup> qs: array<vec4<f32>, R * HD4>;   // q tile, times SCALE
var<workgroup> ps: array<f32, R * WG>;          // [row][key of the tile]: scores, then probabilities
var<workgroup> red: array<f32, WG>;
var<workgroup> m_run: array<f32, R>;            // running max per row
var<workgroup> alpha: array<f32, R>;            // exp(old max - new max) of the current tile
var<private> acc: array<vec4<f32>, 2u * ITEMS>;

fn lo4(w: vec4<u32>) -> vec4<f32> {
  return vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y));
}

fn hi4(w: vec4<u32>) -> vec4<f32> {
  return vec4<f32>(unpack2x16float(w.z), unpack2x16float(w.w));
}

fn n_rows() -> u32 {
  return min(step.n_tokens, MAXT) * G;  // rows of one kv head in this run
}

// Row rr of kv head kvh -> index of its row in q / out ([token][head]).
fn q_row(rr: u32, kvh: u32) -> u32 {
  return (rr / G) * NH + kvh * G + rr % G;
}

// Keys [begin, end) that split z of row tile x covers: the keys any of its rows may see, cut in NSPLIT chunks.
fn key_range(x: u32, z: u32) -> vec2<u32> {
  let t0 = (x * R) / G;
  let t1 = (min(x * R + R, n_rows()) - 1u) / G;
  var lo = 0u;
  if (WINDOW > 0u && step.pos + t0 + 1u > WINDOW) {
    lo = step.pos + t0 + 1u - WINDOW;
  }
  let hi = step.pos + t1 + 1u;
  let per = (hi - lo + NSPLIT - 1u) / NSPLIT;
  let chunk = ((per + ALIGN - 1u) / ALIGN) * ALIGN;
  let kb = min(hi, lo + z * chunk);
  return vec2<u32>(kb, min(hi, kb + chunk));
}

// Sum (or max) of ps[r][0..WG) for every row r, left in red[r]. Thread (r = lid % R, seg = lid / R) folds R
// entries, then a tree over the NSEG segments of each row.
fn reduce_rows(lid: u32, take_max: bool) {
  let r = lid % R;
  let seg = lid / R;
  var a = ps[r * WG + seg * R];
  for (var j = 1u; j < R; j++) {
    let b = ps[r * WG + seg * R + j];
    a = select(a + b, max(a, b), take_max);
  }
  red[lid] = a;
  workgroupBarrier();
  for (var s = NSEG / 2u; s > 0u; s /= 2u) {
    if (seg < s) {
      let b = red[lid + s * R];
      red[lid] = select(red[lid] + b, max(red[lid], b), take_max);
    }
    workgroupBarrier();
  }
}

// Attends rows [x*R, x*R + R) of kv head kvh over keys [kb, ke). Leaves the unnormalised output in acc, the
// row maxima in m_run and the row sums in red[0..R).
fn attend(x: u32, kvh: u32, kb: u32, ke: u32, lid: u32) {
  let rows = n_rows();
  for (var i = lid; i < R * HD4; i += WG) {
    let rr = x * R + i / HD4;
    var val = vec4<f32>(0.0);
    if (rr < rows) {
      val = q[q_row(rr, kvh) * HD4 + i % HD4] * SCALE;
    }
    qs[i] = val;
  }
  if (lid < R) {
    m_run[lid] = MASKED;
  }
  for (var i = 0u; i < 2u * ITEMS; i++) {
    acc[i] = vec4<f32>(0.0);
  }
  var lsum: array<f32, R>;
  workgroupBarrier();

  for (var kt = kb; kt < ke; kt += WG) {
    // Scores of key k = kt + lid against every row of the tile.
    let k = kt + lid;
    var s: array<f32, R>;
    var ok = 0u;  // bit r: key k is visible to row r
    if (k < ke) {
      let base = (kvh * CAP + k % CAP) * HD8;
      for (var d = 0u; d < HD8; d++) {
        let w = kc[base + d];
        let k0 = lo4(w);
        let k1 = hi4(w);
        for (var r = 0u; r < R; r++) {
          s[r] += dot(qs[r * HD4 + 2u * d], k0) + dot(qs[r * HD4 + 2u * d + 1u], k1);
        }
      }
      for (var r = 0u; r < R; r++) {
        let rr = x * R + r;
        let p = step.pos + rr / G;
        if (rr < rows && k <= p && (WINDOW == 0u || p - k < WINDOW)) {
          ok |= 1u << r;
        }
      }
    }
    for (var r = 0u; r < R; r++) {
      ps[r * WG + lid] = select(MASKED, s[r], ((ok >> r) & 1u) != 0u);
    }
    workgroupBarrier();

    reduce_rows(lid, true);
    if (lid < R) {
      let m_old = m_run[lid];
      let m_new = max(m_old, red[lid]);
      alpha[lid] = exp(m_old - m_new);
      m_run[lid] = m_new;
    }
    workgroupBarrier();

    for (var r = 0u; r < R; r++) {
      let p = select(0.0, exp(s[r] - m_run[r]), ((ok >> r) & 1u) != 0u);
      lsum[r] = lsum[r] * alpha[r] + p;
      ps[r * WG + lid] = p;
    }
    workgroupBarrier();

    // acc[row][8 dims] = acc * alpha + sum_j p[row][j] * V[j]; consecutive threads take consecutive 16-byte
    // pieces of the same V row, so the loads coalesce.
    let nk = min(WG, ke - kt);
    let slot0 = kt % CAP;
    for (var it = 0u; it < ITEMS; it++) {
      let idx = lid + it * WG;
      if (idx < R * HD8) {
        let r = idx / HD8;
        let c = idx % HD8;
        let a = alpha[r];
        var a0 = acc[2u * it] * a;
        var a1 = acc[2u * it + 1u] * a;
        var slot = slot0;
        for (var j = 0u; j < nk; j++) {
          let pj = ps[r * WG + j];
          let w = vc[(kvh * CAP + slot) * HD8 + c];
          a0 += pj * lo4(w);
          a1 += pj * hi4(w);
          slot += 1u;
          if (slot == CAP) {
            slot = 0u;
          }
        }
        acc[2u * it] = a0;
        acc[2u * it + 1u] = a1;
      }
    }
    workgroupBarrier();
  }

  for (var r = 0u; r < R; r++) {
    ps[r * WG + lid] = lsum[r];
  }
  workgroupBarrier();
  reduce_rows(lid, false);
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let rows = n_rows();
  if (wid.x * R >= rows) {
    return;
  }
  let kr = key_range(wid.x, 0u);
  attend(wid.x, wid.y, kr.x, kr.y, lid);
  for (var it = 0u; it < ITEMS; it++) {
    let idx = lid + it * WG;
    let r = idx / HD8;
    let rr = wid.x * R + r;
    if (idx < R * HD8 && rr < rows) {
      let o = q_row(rr, wid.y) * HD4 + 2u * (idx % HD8);
      let inv = 1.0 / red[r];  // >= 1: the row's own position is always visible
      dst[o] = acc[2u * it] * inv;
      dst[o + 1u] = acc[2u * it + 1u] * inv;
    }
  }
}

@compute @workgroup_size(WG)
fn split(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let rows = n_rows();
  if (wid.x * R >= rows) {
    return;
  }
  let kr = key_range(wid.x, wid.z);
  attend(wid.x, wid.y, kr.x, kr.y, lid);
  let base = wid.z * MAXROWS;
  if (kr.x < kr.y) {  // an empty split leaves its accumulator unwritten: combine gives it weight 0
    for (var it = 0u; it < ITEMS; it++) {
      let idx = lid + it * WG;
      let rr = wid.x * R + idx / HD8;
      if (idx < R * HD8 && rr < rows) {
        let o = (base + q_row(rr, wid.y)) * HD4 + 2u * (idx % HD8);
        dst[o] = acc[2u * it];
        dst[o + 1u] = acc[2u * it + 1u];
      }
    }
  }
  let rr = wid.x * R + lid;
  if (lid < R && rr < rows) {
    ml[base + q_row(rr, wid.y)] = vec2<f32>(m_run[lid], red[lid]);
  }
}

// ---- combine: one workgroup per (token, head) row. Bindings of its own (they may reuse numbers: WGSL only
// forbids that within one entry point).
const CWG: u32 = 64u;
@group(0) @binding(0) var<storage, read> c_part: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> c_ml: array<vec2<f32>>;
@group(0) @binding(2) var<uniform> c_step: Step;
@group(0) @binding(3) var<storage, read_write> c_out: array<vec4<f32>>;

var<workgroup> wts: array<f32, NSPLIT>;

@compute @workgroup_size(CWG)
fn combine(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
  let row = wid.y * nwg.x + wid.x;
  if (row >= min(c_step.n_tokens, MAXT) * NH) {
    return;
  }
  var mx = MASKED;
  for (var s = 0u; s < NSPLIT; s++) {
    mx = max(mx, c_ml[s * MAXROWS + row].x);
  }
  // Splits with no visible key (sum 0) get weight 0 and their (stale) accumulators are never read.
  for (var s = lid; s < NSPLIT; s += CWG) {
    let e = c_ml[s * MAXROWS + row];
    wts[s] = select(0.0, exp(e.x - mx), e.y > 0.0);
  }
  workgroupBarrier();
  var l = 0.0;
  for (var s = 0u; s < NSPLIT; s++) {
    l += wts[s] * c_ml[s * MAXROWS + row].y;
  }
  let inv = 1.0 / l;
  for (var d = lid; d < HD4; d += CWG) {
    var o = vec4<f32>(0.0);
    for (var s = 0u; s < NSPLIT; s++) {
      let w = wts[s];
      if (w > 0.0) {
        o += w * c_part[(s * MAXROWS + row) * HD4 + d];
      }
    }
    c_out[row * HD4 + d] = o * inv;
  }
}
