// Causal (optionally sliding-window) or bidirectional GQA attention over an f16 or q8_0 KV cache, for prefill
// and decode alike:
//   out[t, h] = softmax_k(SCALE * q[t, h] . K[k] + mask) . V[k],   queries at positions step.pos + t
// mask (CAUSAL): key k is allowed iff k <= p and (WINDOW == 0 or p - k < WINDOW), p the query's position.
// Without CAUSAL (a vision tower's patches see each other): every key 0 .. step.pos + n_tokens - 1 is allowed
// for every query; the cache must then hold all of them (CAP >= keys). With a WINDOW too (DiffusionGemma's
// canvas on a sliding layer), the keys before the run start at step.pos - (WINDOW - 1).
//   q, out: f32 [n_tokens, NH, HD];   cache: [NKV][CAP] rows of HD dims, key k at slot k % CAP, read 8 dims at a
//   time through key8 / value8 of the cache format's library (kv_read_f16.wgsl or kv_read_q8_0.wgsl).
//
// Work split. A "row" is one (token, q head); the G = NH / NKV q heads that share a kv head are laid out
// token-major (row = t * G + head-in-group), and a workgroup takes R consecutive rows of one kv head, so every
// key and value it streams from memory serves R rows (decode: all G heads of the token; prefill: several tokens
// too). Grid = (row tiles, NKV, NSPLIT). The keys a tile can see are cut into NSPLIT chunks (flash-decoding):
// with one token the only parallelism is over keys. Chunk sizes are computed from step at run time, so one
// recorded dispatch serves every context length; splits past the context exit at once.
//   entry `main`:    NSPLIT == 1, writes the normalised output (prefill: enough row tiles for parallelism).
//   entry `split`:   writes each split's unnormalised accumulator and (max, sum) to dst / ml; it runs only
//                    when the run's key count is in [NKV_MIN, NKV_MAX], so that a decode graph can hold two
//                    split kernels tiled for short and long contexts (ops/attention.py),
//   entry `combine`: one workgroup per row merges the splits (log-sum-exp weights) into out.
//
// Inside a workgroup, per tile of KT keys: thread j scores key j against all R rows (q tile in workgroup
// memory, pre-scaled; the key row read straight from the cache, 8 dims per key8 call; for tiles of fewer
// keys than threads (decode) WG / KT threads share a key, each taking a part of its row); the row maxima
// are reduced through workgroup memory; the probabilities replace the scores there; then each thread
// accumulates 8 output dims x R rows over every NKG-th value of the tile (one value8 piece feeds 8R FMAs),
// and the NKG partial sums are added once at the end. Online softmax in f32: running max per row in workgroup
// memory, the running sum kept per thread and reduced once at the end.
//
// Per-thread state is vectors whose 4 lanes are 4 rows (R = 4 or 8: one or two "row quads"), never private
// arrays: SPIR-V has no register-indexed arrays, and NVIDIA's compiler keeps a loop-indexed private array in
// local (device) memory even when every bound is a constant; a first version of this kernel that used them was
// ~6x slower on an H100. Row loops are therefore written out, and the online-softmax rescale is a vector multiply.
//
// Constants: HD (8 times a power of two, HD / 8 <= WG), G, NH, NKV, R (4 or 8), WG (power of two, >= HD / 8),
// KT (keys per tile: a power of two dividing WG, with WG / KT dividing HD / 8), NSPLIT, ALIGN (chunks are
// rounded up to a multiple of it: KT, so no chunk ends in a part-filled tile), CAP, WINDOW, CAUSAL, SCALE, MAXT
// (token capacity of q/out), NKV_MIN, NKV_MAX (split only).
// Bindings 0-2 (the queries' source and the K and V caches) and the query tile's load, `load_tile`, come from
// one of two libraries: attention_q.wgsl (queries from a q buffer, caches read only) or attention_decode_inputs.wgsl
// (decode: queries normed and turned from the q/k/v projection, this token's key and value stored first).
@group(0) @binding(3) var<uniform> step: Step;
@group(0) @binding(4) var<storage, read_write> dst: array<vec4<f32>>;  // out (main) or split accumulators
@group(0) @binding(5) var<storage, read_write> ml: array<vec2<f32>>;   // split: (running max, sum) per row

const HD4: u32 = HD / 4u;
const HD8: u32 = HD / 8u;                 // pieces of a cache row (8 dims: one key8 / value8 call)
const TWO: bool = R == 8u;                // a second row quad
const NPG: u32 = WG / KT;                 // threads per key in the scoring step (piece groups)
const PPT: u32 = HD8 / NPG;               // pieces of a key row per thread in the scoring step
const NSEG: u32 = min(WG / R, KT);        // threads per row in the row reductions
const EPS: u32 = KT / NSEG;               // entries per thread in the row reductions
const NKG: u32 = WG / HD8;                // key groups in the P.V step; thread = (column lid % HD8, group)
// Loads issued 4 at a time before their use: a loop that loads and immediately consumes stalls for the full
// memory latency every iteration, which is all there is to see when a decode step runs few workgroups.
const UK: u32 = select(1u, 4u, PPT % 4u == 0u);
const UV: u32 = select(1u, 4u, (KT / NKG) % 4u == 0u && KT >= NKG);
const MAXROWS: u32 = MAXT * NH;
// "No key yet / masked". Finite on purpose: exp(MASKED - MASKED) = 1 keeps empty rows NaN-free, where -inf
// would give exp(nan).
const MASKED: f32 = -1e30;

var<workgroup> qs: array<vec4<f32>, R * HD4>;  // q tile (times SCALE); after the keys, the output tile
// [row][key of the tile]: scores, then probabilities; first [piece group][row][key] partial scores (R * WG).
var<workgroup> ps: array<f32, R * WG>;
var<workgroup> red: array<f32, WG>;
var<workgroup> m_run: array<f32, R>;           // running max per row
var<workgroup> alpha: array<f32, R>;           // exp(old max - new max) of the current tile

// Two row quads of something: lanes of `a` are rows 0-3, of `b` rows 4-7 (unused when R == 4).
struct Quads {
  a: vec4<f32>,
  b: vec4<f32>,
}

// acc.aD / acc.bD: output dim D (of this thread's 8) for rows 0-3 / 4-7.
struct Acc {
  a0: vec4<f32>, a1: vec4<f32>, a2: vec4<f32>, a3: vec4<f32>, a4: vec4<f32>, a5: vec4<f32>, a6: vec4<f32>, a7: vec4<f32>,
  b0: vec4<f32>, b1: vec4<f32>, b2: vec4<f32>, b3: vec4<f32>, b4: vec4<f32>, b5: vec4<f32>, b6: vec4<f32>, b7: vec4<f32>,
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
  // The oldest key in use: causal with a window, the first row's; bidirectional with a window (a diffusion
  // canvas over a sliding layer), the WINDOW - 1 keys before the run, all that a sliding cache keeps of them.
  let edge = step.pos + select(0u, t0, CAUSAL) + 1u;
  var lo = 0u;
  if (WINDOW > 0u && edge > WINDOW) {
    lo = edge - WINDOW;
  }
  // Bidirectional: every row sees the whole run, up to the last key this run stored.
  let hi = select(step.pos + min(step.n_tokens, MAXT), step.pos + t1 + 1u, CAUSAL);
  let per = (hi - lo + NSPLIT - 1u) / NSPLIT;
  let chunk = ((per + ALIGN - 1u) / ALIGN) * ALIGN;
  let kb = min(hi, lo + z * chunk);
  return vec2<u32>(kb, min(hi, kb + chunk));
}

// Sum (or max) of ps[r][0..KT) for every row r, left in red[r]. Thread (r = lid % R, seg = lid / R) folds EPS
// entries, then a tree over the NSEG segments of each row.
fn reduce_rows(lid: u32, take_max: bool) {
  let r = lid % R;
  let seg = lid / R;
  if (seg < NSEG) {
    var a = ps[r * KT + seg * EPS];
    for (var j = 1u; j < EPS; j++) {
      let b = ps[r * KT + seg * EPS + j];
      a = select(a + b, max(a, b), take_max);
    }
    red[lid] = a;
  }
  workgroupBarrier();
  for (var s = NSEG / 2u; s > 0u; s /= 2u) {
    if (seg < s) {
      let b = red[lid + s * R];
      red[lid] = select(red[lid] + b, max(red[lid], b), take_max);
    }
    workgroupBarrier();
  }
}

// q row r (of the tile) . the 8 key dims of piece d.
fn qk(r: u32, d: u32, k0: vec4<f32>, k1: vec4<f32>) -> f32 {
  return dot(qs[r * HD4 + 2u * d], k0) + dot(qs[r * HD4 + 2u * d + 1u], k1);
}

// Scores of the R rows against piece d (8 dims) of one key.
fn score8(d: u32, key: Piece8) -> Quads {
  let k0 = key.lo;
  let k1 = key.hi;
  var o = Quads(vec4<f32>(0.0), vec4<f32>(0.0));
  o.a = vec4<f32>(qk(0u, d, k0, k1), qk(1u, d, k0, k1), qk(2u, d, k0, k1), qk(3u, d, k0, k1));
  if (TWO) {
    o.b = vec4<f32>(qk(4u, d, k0, k1), qk(5u, d, k0, k1), qk(6u, d, k0, k1), qk(7u, d, k0, k1));
  }
  return o;
}

// acc += p (per row) x the 8 value dims of `value`.
fn pv8(acc: ptr<function, Acc>, j: u32, value: Piece8) {
  let v0 = value.lo;
  let v1 = value.hi;
  let pa = vec4<f32>(ps[j], ps[KT + j], ps[2u * KT + j], ps[3u * KT + j]);
  (*acc).a0 += pa * v0.x;
  (*acc).a1 += pa * v0.y;
  (*acc).a2 += pa * v0.z;
  (*acc).a3 += pa * v0.w;
  (*acc).a4 += pa * v1.x;
  (*acc).a5 += pa * v1.y;
  (*acc).a6 += pa * v1.z;
  (*acc).a7 += pa * v1.w;
  if (TWO) {
    let pb = vec4<f32>(ps[4u * KT + j], ps[5u * KT + j], ps[6u * KT + j], ps[7u * KT + j]);
    (*acc).b0 += pb * v0.x;
    (*acc).b1 += pb * v0.y;
    (*acc).b2 += pb * v0.z;
    (*acc).b3 += pb * v0.w;
    (*acc).b4 += pb * v1.x;
    (*acc).b5 += pb * v1.y;
    (*acc).b6 += pb * v1.z;
    (*acc).b7 += pb * v1.w;
  }
}

fn scale_acc(acc: ptr<function, Acc>, fa: vec4<f32>, fb: vec4<f32>) {
  (*acc).a0 *= fa; (*acc).a1 *= fa; (*acc).a2 *= fa; (*acc).a3 *= fa;
  (*acc).a4 *= fa; (*acc).a5 *= fa; (*acc).a6 *= fa; (*acc).a7 *= fa;
  if (TWO) {
    (*acc).b0 *= fb; (*acc).b1 *= fb; (*acc).b2 *= fb; (*acc).b3 *= fb;
    (*acc).b4 *= fb; (*acc).b5 *= fb; (*acc).b6 *= fb; (*acc).b7 *= fb;
  }
}

// Visibility of key k to the rows of quad `base` (rows base..base+3 of the tile).
fn visible(x: u32, quad: u32, k: u32, ke: u32) -> vec4<bool> {
  let rr = vec4<u32>(x * R + quad * 4u) + vec4<u32>(0u, 1u, 2u, 3u);
  let p = vec4<u32>(step.pos) + rr / G;
  let kk = vec4<u32>(k);
  var ok = (rr < vec4<u32>(n_rows())) & vec4<bool>(k < ke);
  if (CAUSAL) {
    ok = ok & (kk <= p);
    if (WINDOW > 0u) {
      ok = ok & (p - kk < vec4<u32>(WINDOW));  // p - k wraps when k > p, but then ok is false already
    }
  }
  return ok;
}

// ps[row0 + i][j] = v[i]; `base` selects a piece group's partial-score block.
fn put4(base: u32, row0: u32, j: u32, v: vec4<f32>) {
  ps[base + row0 * KT + j] = v.x;
  ps[base + (row0 + 1u) * KT + j] = v.y;
  ps[base + (row0 + 2u) * KT + j] = v.z;
  ps[base + (row0 + 3u) * KT + j] = v.w;
}

fn get4(base: u32, row0: u32, j: u32) -> vec4<f32> {
  return vec4<f32>(ps[base + row0 * KT + j], ps[base + (row0 + 1u) * KT + j], ps[base + (row0 + 2u) * KT + j],
                   ps[base + (row0 + 3u) * KT + j]);
}

// Attends rows [x*R, x*R + R) of kv head kvh over keys [kb, ke). Leaves the unnormalised output tile in qs
// ([row][HD4]), the row maxima in m_run and the row sums in red[0..R).
fn attend(x: u32, kvh: u32, kb: u32, ke: u32, lid: u32) {
  load_tile(x, kvh, kb, ke, lid);
  if (lid < R) {
    m_run[lid] = MASKED;
  }
  // Explicit initial values throughout: naga hoists a loop body's `var x: T;` to the function entry and zeroes it
  // once, not on every iteration as WGSL specifies (scores then leaked from one key tile into the next).
  let z = vec4<f32>(0.0);
  var acc = Acc(z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z);
  var l = Quads(z, z);  // this thread's share of the row sums
  let c = lid % HD8;
  let kg = lid / HD8;
  // Trip counts the shader compiler cannot see through (step.n_tokens >= 1 whenever this runs): with constant
  // bounds the loops below get unrolled completely, and at HD = 512 a decode step over 1K keys took 104 us
  // instead of 39 us on an H100 (the cost was the kernel's size, not its data). Rolled loops with 4 loads per
  // iteration keep both the code small and the loads in flight.
  let one = min(step.n_tokens, 1u);
  let n_pieces = PPT * one;
  let n_keys = KT * one;
  // Scoring: thread = (key j of the tile, piece group pg); with several groups per key (decode tiles of few
  // keys) each adds up PPT of the key's HD8 pieces and the partial scores meet in ps.
  let j = lid % KT;
  let pg = lid / KT;
  workgroupBarrier();

  for (var kt = kb; kt < ke; kt += KT) {
    // Scores of key k = kt + j against every row of the tile.
    let k = kt + j;
    var s = Quads(z, z);
    if (k < ke) {
      let row = kvh * CAP + k % CAP;
      let p0 = pg * PPT;
      for (var d = 0u; d < n_pieces; d += UK) {
        if (UK == 4u) {
          let w0 = key8(row, p0 + d);
          let w1 = key8(row, p0 + d + 1u);
          let w2 = key8(row, p0 + d + 2u);
          let w3 = key8(row, p0 + d + 3u);
          let s0 = score8(p0 + d, w0);
          let s1 = score8(p0 + d + 1u, w1);
          let s2 = score8(p0 + d + 2u, w2);
          let s3 = score8(p0 + d + 3u, w3);
          s.a += (s0.a + s1.a) + (s2.a + s3.a);
          s.b += (s0.b + s1.b) + (s2.b + s3.b);
        } else {
          let s0 = score8(p0 + d, key8(row, p0 + d));
          s.a += s0.a;
          s.b += s0.b;
        }
      }
    }
    if (NPG > 1u) {  // sum the piece groups' partial scores (each thread of group 0 for its own key)
      put4(pg * R * KT, 0u, j, s.a);
      if (TWO) {
        put4(pg * R * KT, 4u, j, s.b);
      }
      workgroupBarrier();
      if (pg == 0u) {
        for (var g = 1u; g < NPG; g++) {
          s.a += get4(g * R * KT, 0u, j);
          if (TWO) {
            s.b += get4(g * R * KT, 4u, j);
          }
        }
      }
    }
    // Only piece group 0 (lid < KT) goes on with the key's scores; the others keep zero sums and no key.
    let oka = visible(x, 0u, k, ke) & vec4<bool>(pg == 0u);
    let okb = visible(x, 1u, k, ke) & vec4<bool>(pg == 0u);
    if (pg == 0u) {
      put4(0u, 0u, j, select(vec4<f32>(MASKED), s.a, oka));
      if (TWO) {
        put4(0u, 4u, j, select(vec4<f32>(MASKED), s.b, okb));
      }
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

    let ma = vec4<f32>(m_run[0], m_run[1], m_run[2], m_run[3]);
    let fa = vec4<f32>(alpha[0], alpha[1], alpha[2], alpha[3]);
    let pa = select(vec4<f32>(0.0), exp(s.a - ma), oka);
    l.a = l.a * fa + pa;
    if (pg == 0u) {
      put4(0u, 0u, j, pa);
    }
    var fb = vec4<f32>(0.0);
    if (TWO) {
      let mb = vec4<f32>(m_run[4 % R], m_run[5 % R], m_run[6 % R], m_run[7 % R]);
      fb = vec4<f32>(alpha[4 % R], alpha[5 % R], alpha[6 % R], alpha[7 % R]);
      let pb = select(vec4<f32>(0.0), exp(s.b - mb), okb);
      l.b = l.b * fb + pb;
      if (pg == 0u) {
        put4(0u, 4u, j, pb);
      }
    }
    workgroupBarrier();

    // acc = acc * alpha + sum_i p[row][i] * V[i] over keys i = kg, kg + NKG, ... of the tile: the threads of
    // a warp read consecutive pieces of one V row (coalesced) and each load serves all R rows. Keys
    // past ke have p = 0; their slots hold finite values (zero-filled, or clamped by kv_store), so they are
    // read rather than branched around.
    scale_acc(&acc, fa, fb);
    if (kg < NKG) {
      let vbase = kvh * CAP;
      for (var i = kg; i < n_keys; i += UV * NKG) {
        if (UV == 4u) {
          let i1 = i + NKG;
          let i2 = i + 2u * NKG;
          let i3 = i + 3u * NKG;
          let w0 = value8(vbase + (kt + i) % CAP, c);
          let w1 = value8(vbase + (kt + i1) % CAP, c);
          let w2 = value8(vbase + (kt + i2) % CAP, c);
          let w3 = value8(vbase + (kt + i3) % CAP, c);
          pv8(&acc, i, w0);
          pv8(&acc, i1, w1);
          pv8(&acc, i2, w2);
          pv8(&acc, i3, w3);
        } else {
          pv8(&acc, i, value8(vbase + (kt + i) % CAP, c));
        }
      }
    }
    workgroupBarrier();
  }

  // Row sums: the shares of the KT threads of piece group 0, reduced into red[0..R).
  if (pg == 0u) {
    put4(0u, 0u, j, l.a);
    if (TWO) {
      put4(0u, 4u, j, l.b);
    }
  }
  workgroupBarrier();
  reduce_rows(lid, false);

  // Add the key groups' accumulators into group 0, one group at a time through qs (free now; the transposed
  // layout [column][8 dims x quads] of 8R floats per column fills exactly R * HD floats).
  let t0 = c * (8u * (R / 4u));
  for (var g = 1u; g < NKG; g++) {
    workgroupBarrier();
    if (kg == g) {
      qs[t0] = acc.a0; qs[t0 + 1u] = acc.a1; qs[t0 + 2u] = acc.a2; qs[t0 + 3u] = acc.a3;
      qs[t0 + 4u] = acc.a4; qs[t0 + 5u] = acc.a5; qs[t0 + 6u] = acc.a6; qs[t0 + 7u] = acc.a7;
      if (TWO) {
        qs[t0 + 8u] = acc.b0; qs[t0 + 9u] = acc.b1; qs[t0 + 10u] = acc.b2; qs[t0 + 11u] = acc.b3;
        qs[t0 + 12u] = acc.b4; qs[t0 + 13u] = acc.b5; qs[t0 + 14u] = acc.b6; qs[t0 + 15u] = acc.b7;
      }
    }
    workgroupBarrier();
    if (kg == 0u) {
      acc.a0 += qs[t0]; acc.a1 += qs[t0 + 1u]; acc.a2 += qs[t0 + 2u]; acc.a3 += qs[t0 + 3u];
      acc.a4 += qs[t0 + 4u]; acc.a5 += qs[t0 + 5u]; acc.a6 += qs[t0 + 6u]; acc.a7 += qs[t0 + 7u];
      if (TWO) {
        acc.b0 += qs[t0 + 8u]; acc.b1 += qs[t0 + 9u]; acc.b2 += qs[t0 + 10u]; acc.b3 += qs[t0 + 11u];
        acc.b4 += qs[t0 + 12u]; acc.b5 += qs[t0 + 13u]; acc.b6 += qs[t0 + 14u]; acc.b7 += qs[t0 + 15u];
      }
    }
  }
  workgroupBarrier();
  // Group 0 writes the output tile row-major: row r, dims 8c..8c+7 (transposing lanes = rows back).
  if (kg == 0u) {
    let lo = transpose(mat4x4<f32>(acc.a0, acc.a1, acc.a2, acc.a3));
    let hi = transpose(mat4x4<f32>(acc.a4, acc.a5, acc.a6, acc.a7));
    qs[2u * c] = lo[0]; qs[2u * c + 1u] = hi[0];
    qs[HD4 + 2u * c] = lo[1]; qs[HD4 + 2u * c + 1u] = hi[1];
    qs[2u * HD4 + 2u * c] = lo[2]; qs[2u * HD4 + 2u * c + 1u] = hi[2];
    qs[3u * HD4 + 2u * c] = lo[3]; qs[3u * HD4 + 2u * c + 1u] = hi[3];
    if (TWO) {
      let lo2 = transpose(mat4x4<f32>(acc.b0, acc.b1, acc.b2, acc.b3));
      let hi2 = transpose(mat4x4<f32>(acc.b4, acc.b5, acc.b6, acc.b7));
      let o = 4u * HD4 + 2u * c;
      qs[o] = lo2[0]; qs[o + 1u] = hi2[0];
      qs[o + HD4] = lo2[1]; qs[o + HD4 + 1u] = hi2[1];
      qs[o + 2u * HD4] = lo2[2]; qs[o + 2u * HD4 + 1u] = hi2[2];
      qs[o + 3u * HD4] = lo2[3]; qs[o + 3u * HD4 + 1u] = hi2[3];
    }
  }
  workgroupBarrier();
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let rows = n_rows();
  if (wid.x * R >= rows) {
    return;
  }
  let kr = key_range(wid.x, 0u);
  attend(wid.x, wid.y, kr.x, kr.y, lid);
  for (var i = lid; i < R * HD4; i += WG) {
    let r = i / HD4;
    let rr = wid.x * R + r;
    if (rr < rows) {
      dst[q_row(rr, wid.y) * HD4 + i % HD4] = qs[i] / red[r];  // red[r] >= 1: the row sees its own key
    }
  }
}

@compute @workgroup_size(WG)
fn split(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let rows = n_rows();
  let n_kv = step.pos + min(step.n_tokens, MAXT);  // keys after this run
  if (wid.x * R >= rows || n_kv < NKV_MIN || n_kv > NKV_MAX) {
    return;
  }
  let kr = key_range(wid.x, wid.z);
  attend(wid.x, wid.y, kr.x, kr.y, lid);
  let base = wid.z * MAXROWS;
  if (kr.x < kr.y) {  // an empty split leaves its accumulator unwritten: combine gives it weight 0
    for (var i = lid; i < R * HD4; i += WG) {
      let rr = wid.x * R + i / HD4;
      if (rr < rows) {
        dst[(base + q_row(rr, wid.y)) * HD4 + i % HD4] = qs[i];
      }
    }
  }
  let rr = wid.x * R + lid;
  if (lid < R && rr < rows) {
    ml[base + q_row(rr, wid.y)] = vec2<f32>(m_run[lid], red[lid]);
  }
}

// ---- combine: merges the splits of one (token, head) row, CC 4-dim columns per workgroup:
// grid (rows, HD4 / CC); thread = (column lid % CC, split group lid / CC). Bindings of its own (they may reuse
// numbers: WGSL only forbids that within one entry point).
const CWG: u32 = 64u;
const CC: u32 = min(HD4, 16u);
const SG: u32 = CWG / CC;
@group(0) @binding(0) var<storage, read> c_part: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> c_ml: array<vec2<f32>>;
@group(0) @binding(2) var<uniform> c_step: Step;
@group(0) @binding(3) var<storage, read_write> c_out: array<vec4<f32>>;

var<workgroup> wts: array<f32, NSPLIT>;
var<workgroup> cred: array<vec4<f32>, CWG>;

fn reduce_c(lid: u32, take_max: bool) -> f32 {
  workgroupBarrier();
  for (var s = CWG / 2u; s > 0u; s /= 2u) {
    if (lid < s) {
      let a = cred[lid].x;
      let b = cred[lid + s].x;
      cred[lid].x = select(a + b, max(a, b), take_max);
    }
    workgroupBarrier();
  }
  let r = cred[0].x;
  workgroupBarrier();
  return r;
}

@compute @workgroup_size(CWG)
fn combine(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let row = wid.x;
  if (row >= min(c_step.n_tokens, MAXT) * NH) {
    return;
  }
  var mx = MASKED;
  for (var s = lid; s < NSPLIT; s += CWG) {
    mx = max(mx, c_ml[s * MAXROWS + row].x);
  }
  cred[lid].x = mx;
  mx = reduce_c(lid, true);
  // Splits with no visible key (sum 0) get weight 0, and their (stale) accumulators are not read.
  var l = 0.0;
  for (var s = lid; s < NSPLIT; s += CWG) {
    let e = c_ml[s * MAXROWS + row];
    let w = select(0.0, exp(e.x - mx), e.y > 0.0);
    wts[s] = w;
    l += w * e.y;
  }
  cred[lid].x = l;
  l = reduce_c(lid, false);

  let d = wid.y * CC + lid % CC;
  var o = vec4<f32>(0.0);
  for (var s = lid / CC; s < NSPLIT; s += SG) {
    let w = wts[s];
    if (w > 0.0) {
      o += w * c_part[(s * MAXROWS + row) * HD4 + d];
    }
  }
  cred[lid] = o;
  workgroupBarrier();
  if (lid < CC) {
    for (var g = 1u; g < SG; g++) {
      o += cred[g * CC + lid];
    }
    c_out[row * HD4 + d] = o / l;
  }
}
