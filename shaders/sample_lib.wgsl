// Helpers shared by the sampler kernels (sample_select.wgsl, sample_draw.wgsl, sample_argmax.wgsl), passed with
// libs=("sample_lib",). The algorithm is described in src/rullama_py/sampling.py; tests/reference_sampling.py
// mirrors it in numpy, including the random number generator below.
//
// Constants used here: WG (workgroup size, must be 256: one radix bin per invocation).

// The sampler's parameters (rewritten by Sampler.set_params; 48 bytes).
struct SampleParams {
  inv_temp: f32,      // 1 / temperature for the final draw (unused when greedy)
  filter_scale: f32,  // scale of the logits that top-p and min-p see: 1 (llama.cpp order) or inv_temp
  top_p: f32,
  log_min_p: f32,     // log(min_p), as f32 on the host
  inv_penalty: f32,   // 1 / repetition_penalty
  penalty: f32,       // repetition_penalty
  top_k: u32,         // 0: all candidates
  last_n: u32,        // penalised window of the history (0: none)
  flags: u32,         // F_* below
  softcap: f32,       // final logit soft-cap c (F_SOFTCAP): c * tanh(x / c)
  inv_softcap: f32,   // 1 / c
  pad0: u32,
}

const F_GREEDY: u32 = 1u;
const F_TOP_P: u32 = 2u;
const F_MIN_P: u32 = 4u;
const F_PENALTY: u32 = 8u;
const F_SOFTCAP: u32 = 16u;

// Candidates are "composite keys" vec2(order_key(value), ~id): comparing them as 64-bit unsigned numbers
// orders by value descending, then by id ascending, and no two tokens compare equal. (0, 0) is no token
// (a real token has ~id != 0), and compares below every real one.
const NO_TOKEN: vec2<u32> = vec2<u32>(0u, 0u);

// f32 -> u32 with the same order (-0.0 counted as +0.0, so that ties match numpy's argmax).
fn order_key(v: f32) -> u32 {
  var b = bitcast<u32>(v);
  if (b == 0x80000000u) {
    b = 0u;
  }
  return select(b ^ 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}

// Gemma's final logit soft-cap c * tanh(x / c), written once for every kernel that applies it (sample_select,
// sample_argmax), so that the full sampler and the greedy fast path round the same values the same way.
// tanh(15) is 1.0 in f32, so the clamp changes nothing but keeps tanh away from overflow.
fn soft_capped(v: f32, cap: f32, inv_cap: f32) -> f32 {
  return cap * tanh(clamp(v * inv_cap, -15.0, 15.0));
}

fn key_value(k: u32) -> f32 {
  return bitcast<f32>(select(~k, k ^ 0x80000000u, (k & 0x80000000u) != 0u));
}

fn c_gt(a: vec2<u32>, b: vec2<u32>) -> bool {
  return a.x > b.x || (a.x == b.x && a.y > b.y);
}

fn c_ge(a: vec2<u32>, b: vec2<u32>) -> bool {
  return a.x > b.x || (a.x == b.x && a.y >= b.y);
}

// ---- radix select: the k-th largest composite key, 8 bits at a time from the top ----------------------
// Digit d (0..7) of a composite key: d 0..3 are the bytes of .x from the top, 4..7 those of .y.
fn rs_digit(c: vec2<u32>, d: u32) -> u32 {
  let w = select(c.y, c.x, d < 4u);
  return (w >> (24u - 8u * (d & 3u))) & 255u;
}

// Do the top d digits of c equal those of p?
fn rs_match(c: vec2<u32>, p: vec2<u32>, d: u32) -> bool {
  if (d == 0u) {
    return true;
  }
  if (d <= 4u) {
    let sh = 32u - 8u * d;
    return (c.x >> sh) == (p.x >> sh);
  }
  let sh = 32u - 8u * (d - 4u);
  return c.x == p.x && (c.y >> sh) == (p.y >> sh);
}

fn rs_with(p: vec2<u32>, d: u32, b: u32) -> vec2<u32> {
  if (d < 4u) {
    return vec2<u32>(p.x | (b << (24u - 8u * d)), p.y);
  }
  return vec2<u32>(p.x, p.y | (b << (24u - 8u * (d - 4u))));
}

// Two histograms, used alternately, so that clearing one overlaps with filling the other.
var<workgroup> rs_hist: array<array<atomic<u32>, 256>, 2>;
var<workgroup> rs_grp: array<u32, 16>;
var<workgroup> rs_pick: vec4<u32>;

// A prefix `thr` such that exactly `need` of the keys rs_elem(src, 0 .. count-1) are >= thr (as composite
// keys; 1 <= need <= count). Each kernel defines rs_elem(src, j). Three barriers per 8-bit digit; stops at
// the first digit whose bin holds exactly the keys still needed (keys are distinct, so by the last digit at
// the latest). Call from uniform control flow; the result is uniform.
fn rs_select(lid: u32, src: u32, count: u32, need0: u32) -> vec2<u32> {
  var thr = NO_TOKEN;
  var need = need0;
  atomicStore(&rs_hist[0][lid], 0u);
  workgroupBarrier();
  for (var d = 0u; d < 8u; d++) {
    let cur = d & 1u;
    for (var j = lid; j < count; j += WG) {
      let c = rs_elem(src, j);
      if (rs_match(c, thr, d)) {
        atomicAdd(&rs_hist[cur][rs_digit(c, d)], 1u);
      }
    }
    atomicStore(&rs_hist[cur ^ 1u][lid], 0u);
    workgroupBarrier();
    // The bin holding the need-th largest key: 16 group sums, then each invocation adds up what lies above
    // its own bin.
    if (lid < 16u) {
      var s = 0u;
      for (var q = 0u; q < 16u; q++) {
        s += atomicLoad(&rs_hist[cur][lid * 16u + q]);
      }
      rs_grp[lid] = s;
    }
    workgroupBarrier();
    let g = lid / 16u;
    var above = 0u;
    for (var q = g + 1u; q < 16u; q++) {
      above += rs_grp[q];
    }
    for (var b = lid + 1u; b < g * 16u + 16u; b++) {
      above += atomicLoad(&rs_hist[cur][b]);
    }
    let h = atomicLoad(&rs_hist[cur][lid]);
    if (above < need && above + h >= need) {
      rs_pick = vec4<u32>(lid, above, h, 0u);
    }
    let r = workgroupUniformLoad(&rs_pick);
    thr = rs_with(thr, d, r.x);
    need = need - r.y;
    if (r.z == need) {
      break;
    }
  }
  return thr;
}

// ---- random numbers: a pure function of (seed, counter) ----------------------------------------------
// PCG-style integer hash (Jarzynski & Olano, "Hash Functions for GPU Rendering", 2020), three rounds.
fn pcg_hash(v: u32) -> u32 {
  let state = v * 747796405u + 2891336453u;
  let word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
  return (word >> 22u) ^ word;
}

// Uniform in [0, 1) with 24 random bits (exactly representable in f32, so numpy reproduces it bit for bit).
fn rand01(seed: u32, counter: u32) -> f32 {
  let h = pcg_hash(pcg_hash(counter ^ pcg_hash(seed)) + seed);
  return f32(h >> 8u) * (1.0 / 16777216.0);
}
