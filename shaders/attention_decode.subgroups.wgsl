// Decode attention (one query token) over an f16 KV cache, for devices with subgroups: the split half of
// flash-decoding, writing the same per-split accumulators and (max, sum) pairs as attention.wgsl's `split`, so
// that attention.wgsl's `combine` merges them. A device without subgroups runs attention.wgsl's `split`.
//   out[h] = softmax_k(SCALE * q[h] . K[k]) . V[k] over the keys k the query at step.pos may see
//   (k <= pos and, with a WINDOW, pos - k < WINDOW), for the G = NH / NKV q heads of one kv head.
//   q: f32 [NH, HD];   cache: f16 [NKV][CAP][HD] packed in u32 (kv_store.wgsl), key k at slot k % CAP.
//
// Why a kernel of its own: attention.wgsl serves prefill too, so its decode path keeps per-thread state for R
// rows x 8 dims and merges key groups and row sums through workgroup memory: about 25 barriers and three
// dependent memory round trips per split, ~15 us on an H200 for a few hundred keys where the data takes well
// under one. Here a split runs one barrier per tile of KT keys and no merge at all:
//   scoring:  4 adjacent lanes share a key, each taking every 4th 16-byte piece (8 halves) of its row, and add
//             their partial dot products with two subgroup shuffles (WebGPU subgroups have at least 4 lanes,
//             aligned to local_invocation_index: see matvec.subgroups.wgsl). q lives in workgroup memory,
//             pre-scaled; the scores of the tile go to `sc` (two buffers, so the next tile's scores never
//             overwrite ones still being read).
//   P.V:      a thread owns one 16-byte column piece c of RPT rows and walks every key of the tile itself:
//             the tile's max and the exp of each score (the threads of one row compute the same values, in
//             the same order, so their running max and sum agree without being shared), 8 FMAs per row per
//             16-byte V load. For HD = 256 a warp is one row, so the score reads are broadcasts.
// Keys past the chunk's end score MASKED (p = 0) and read the V row of the chunk's last key (finite).
//
// Constants: HD (8 times a power of two, >= 32), G (1, 2, 4 or 8), NH, NKV, NSPLIT, ALIGN (chunks are rounded
// up to a multiple of it), CAP, WINDOW, SCALE. Grid (1, NKV, NSPLIT); workgroup size WG below.
@group(0) @binding(0) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> kc: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> vc: array<vec4<u32>>;
@group(0) @binding(3) var<uniform> step: Step;
@group(0) @binding(4) var<storage, read_write> dst: array<vec4<f32>>;  // [split][NH][HD4] accumulators
@group(0) @binding(5) var<storage, read_write> ml: array<vec2<f32>>;   // [split][NH] (max, sum)

const HD4: u32 = HD / 4u;
const HD8: u32 = HD / 8u;
const QR: u32 = max(G, 4u);               // q rows kept: whole quads, rows G.. zero
const TWO: bool = G == 8u;                // a second row quad
const WG: u32 = min(256u, HD8 * G);       // P.V: a thread per (column piece, RPT rows)
const RPT: u32 = HD8 * G / WG;            // 1, or 2 (HD 512 with G 8)
const NPG: u32 = 4u;                      // lanes per key while scoring
const KT: u32 = WG / NPG;                 // keys per tile
const PPT: u32 = HD8 / NPG;               // pieces of a key row per lane
const UK: u32 = select(1u, 4u, PPT % 4u == 0u);
const MASKED: f32 = -1e30;                // finite: exp(MASKED - MASKED) = 1 keeps empty rows NaN-free

var<workgroup> qs: array<vec4<f32>, QR * HD4>;
var<workgroup> sc: array<f32, 2u * G * KT>;  // [buffer][row][key of the tile]

struct Quads {
  a: vec4<f32>,  // rows 0-3
  b: vec4<f32>,  // rows 4-7 (G == 8)
}

fn lo4(w: vec4<u32>) -> vec4<f32> {
  return vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y));
}

fn hi4(w: vec4<u32>) -> vec4<f32> {
  return vec4<f32>(unpack2x16float(w.z), unpack2x16float(w.w));
}

fn qk(r: u32, d: u32, k0: vec4<f32>, k1: vec4<f32>) -> f32 {
  return dot(qs[r * HD4 + 2u * d], k0) + dot(qs[r * HD4 + 2u * d + 1u], k1);
}

// Partial scores of every row against piece d (8 dims) of one key.
fn score8(d: u32, w: vec4<u32>) -> Quads {
  let k0 = lo4(w);
  let k1 = hi4(w);
  var o = Quads(vec4<f32>(0.0), vec4<f32>(0.0));
  o.a = vec4<f32>(qk(0u, d, k0, k1), qk(1u, d, k0, k1), qk(2u, d, k0, k1), qk(3u, d, k0, k1));
  if (TWO) {
    o.b = vec4<f32>(qk(4u, d, k0, k1), qk(5u, d, k0, k1), qk(6u, d, k0, k1), qk(7u, d, k0, k1));
  }
  return o;
}

// One row's running softmax state for this thread's 8 columns.
struct Row {
  m: f32,
  l: f32,
  lo: vec4<f32>,
  hi: vec4<f32>,
}

// Folds the n scored keys of a tile (scores at sc[base..], keys kt.. of the cache of kv head row vrow0 = kvh *
// CAP) into one row's state `s`, for column piece c.
fn attend_row_tile(s: ptr<function, Row>, base: u32, n: u32, kt: u32, vrow0: u32, c: u32) {
  var tmax = MASKED;
  for (var i = 0u; i < n; i++) {
    tmax = max(tmax, sc[base + i]);
  }
  let m_new = max((*s).m, tmax);
  let alpha = exp((*s).m - m_new);
  (*s).m = m_new;
  (*s).l *= alpha;
  (*s).lo *= alpha;
  (*s).hi *= alpha;
  let last = kt + n - 1u;
  for (var i = 0u; i < n; i += 4u) {
    // Four V loads in flight; keys past n read the tile's last key and weigh 0 (their scores are MASKED).
    // Each key's slot is taken on its own: a ring cache may wrap mid-tile.
    let w0 = vc[(vrow0 + min(kt + i, last) % CAP) * HD8 + c];
    let w1 = vc[(vrow0 + min(kt + i + 1u, last) % CAP) * HD8 + c];
    let w2 = vc[(vrow0 + min(kt + i + 2u, last) % CAP) * HD8 + c];
    let w3 = vc[(vrow0 + min(kt + i + 3u, last) % CAP) * HD8 + c];
    let p = exp(vec4<f32>(sc[base + i], sc[base + i + 1u], sc[base + i + 2u], sc[base + i + 3u]) - m_new);
    (*s).l += (p.x + p.y) + (p.z + p.w);
    (*s).lo += p.x * lo4(w0) + p.y * lo4(w1) + p.z * lo4(w2) + p.w * lo4(w3);
    (*s).hi += p.x * hi4(w0) + p.y * hi4(w1) + p.z * hi4(w2) + p.w * hi4(w3);
  }
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let kvh = wid.y;
  let z = wid.z;
  // This split's keys: the query's visible keys [lo, hi) cut into NSPLIT chunks, as attention.wgsl's key_range.
  let hi = step.pos + 1u;
  var lo = 0u;
  if (WINDOW > 0u && hi > WINDOW) {
    lo = hi - WINDOW;
  }
  let per = (hi - lo + NSPLIT - 1u) / NSPLIT;
  let chunk = ((per + ALIGN - 1u) / ALIGN) * ALIGN;
  let kb = min(hi, lo + z * chunk);
  let ke = min(hi, kb + chunk);
  let out_row = z * NH + kvh * G;  // this kv head's first row in dst / ml
  if (kb >= ke) {  // past the context: combine gives a split of sum 0 weight 0 and never reads its accumulator
    if (lid < G) {
      ml[out_row + lid] = vec2<f32>(MASKED, 0.0);
    }
    return;
  }

  for (var i = lid; i < QR * HD4; i += WG) {
    let r = i / HD4;
    var val = vec4<f32>(0.0);
    if (r < G) {
      val = q[(kvh * G + r) * HD4 + i % HD4] * SCALE;
    }
    qs[i] = val;
  }
  workgroupBarrier();

  let j = lid / NPG;    // scoring: key of the tile
  let pg = lid % NPG;   // scoring: first piece (then every NPG-th)
  let c = lid % HD8;    // P.V: column piece
  let r0 = (lid / HD8) * RPT;
  let z4 = vec4<f32>(0.0);
  var s0 = Row(MASKED, 0.0, z4, z4);
  var s1 = Row(MASKED, 0.0, z4, z4);
  var buf = 0u;
  for (var kt = kb; kt < ke; kt += KT) {
    let k = kt + j;
    let slot = (kvh * CAP + min(k, ke - 1u) % CAP) * HD8;
    var s = Quads(z4, z4);
    for (var d = pg; d < HD8; d += NPG * UK) {
      if (UK == 4u) {
        let w0 = kc[slot + d];
        let w1 = kc[slot + d + NPG];
        let w2 = kc[slot + d + 2u * NPG];
        let w3 = kc[slot + d + 3u * NPG];
        let t0 = score8(d, w0);
        let t1 = score8(d + NPG, w1);
        let t2 = score8(d + 2u * NPG, w2);
        let t3 = score8(d + 3u * NPG, w3);
        s.a += (t0.a + t1.a) + (t2.a + t3.a);
        s.b += (t0.b + t1.b) + (t2.b + t3.b);
      } else {
        let t0 = score8(d, kc[slot + d]);
        s.a += t0.a;
        s.b += t0.b;
      }
    }
    // The 4 lanes of the key add their parts (uniform control flow: every lane shuffles, keys past ke too).
    s.a += subgroupShuffleXor(s.a, 1u);
    s.a += subgroupShuffleXor(s.a, 2u);
    if (TWO) {
      s.b += subgroupShuffleXor(s.b, 1u);
      s.b += subgroupShuffleXor(s.b, 2u);
    }
    let ok = k < ke;
    let at = buf * G * KT + j;
    if (pg == 0u) {
      sc[at] = select(MASKED, s.a.x, ok);
      if (G > 1u) {
        sc[at + KT] = select(MASKED, s.a.y, ok);
      }
      if (G > 2u) {
        sc[at + 2u * KT] = select(MASKED, s.a.z, ok);
        sc[at + 3u * KT] = select(MASKED, s.a.w, ok);
      }
    }
    if (TWO && pg == 1u) {
      sc[at + 4u * KT] = select(MASKED, s.b.x, ok);
      sc[at + 5u * KT] = select(MASKED, s.b.y, ok);
      sc[at + 6u * KT] = select(MASKED, s.b.z, ok);
      sc[at + 7u * KT] = select(MASKED, s.b.w, ok);
    }
    workgroupBarrier();

    let n = min(KT, ke - kt);
    let vrow0 = kvh * CAP;
    let base = buf * G * KT;
    attend_row_tile(&s0, base + r0 * KT, n, kt, vrow0, c);
    if (RPT == 2u) {
      attend_row_tile(&s1, base + (r0 + 1u) * KT, n, kt, vrow0, c);
    }
    buf ^= 1u;
  }

  let row = out_row + r0;
  dst[row * HD4 + 2u * c] = s0.lo;
  dst[row * HD4 + 2u * c + 1u] = s0.hi;
  if (c == 0u) {
    ml[row] = vec2<f32>(s0.m, s0.l);
  }
  if (RPT == 2u) {
    dst[(row + 1u) * HD4 + 2u * c] = s1.lo;
    dst[(row + 1u) * HD4 + 2u * c + 1u] = s1.hi;
    if (c == 0u) {
      ml[row + 1u] = vec2<f32>(s1.m, s1.l);
    }
  }
}
