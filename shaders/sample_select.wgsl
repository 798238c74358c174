// Sampler stage 1 (see src/rullama_py/sampling.py): NSLICE workgroups; workgroup w owns the tokens
// w, w + NSLICE, w + 2 NSLICE, ... (interleaved, so that runs of related ids, which LM vocabularies have,
// spread over all workgroups). Loads its tokens' logits into workgroup memory, applies the soft-cap and the
// repetition penalty, and writes its top k = min(CAND, its token count) as composite keys (value desc,
// id asc) to cand[w * CAND ..], in this order: its top HEADS (any order), then the largest of the others,
// then the rest (any order), then NO_TOKEN padding up to CAND. Stage 2 relies on exactly that.
// Constants: V (vocabulary), NSLICE, SLICE (>= ceil(V / NSLICE), a multiple of 32), CAND (== WG), WG (256),
//            HEADS, ROW_OFFSET (index of the first logit).
@group(0) @binding(0) var<storage, read> logits: array<f32>;
@group(0) @binding(1) var<uniform> prm: SampleParams;
@group(0) @binding(2) var<storage, read> hist: array<u32>;  // [count, next, ring of arrayLength - 2]
@group(0) @binding(3) var<storage, read_write> cand: array<vec2<u32>>;

var<workgroup> vals: array<f32, SLICE>;
var<workgroup> pen: array<atomic<u32>, SLICE / 32u>;  // bit set: token is in the penalised window
var<workgroup> sel: array<vec2<u32>, CAND>;
var<workgroup> n_sel: atomic<u32>;
var<workgroup> n_head: atomic<u32>;
var<workgroup> n_rest: atomic<u32>;
var<workgroup> mx_hi: atomic<u32>;
var<workgroup> mx_lo: atomic<u32>;
var<private> p_w: u32;

// Radix-select sources: 0 = the slice, 1 = the selected candidates.
fn rs_elem(src: u32, j: u32) -> vec2<u32> {
  if (src == 0u) {
    return vec2<u32>(order_key(vals[j]), ~(j * NSLICE + p_w));
  }
  return sel[j];
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let w = wid.x;
  p_w = w;
  let n = (V - w + NSLICE - 1u) / NSLICE;  // tokens w + j * NSLICE < V
  let k = min(CAND, n);

  for (var i = lid; i < SLICE / 32u; i += WG) {
    atomicStore(&pen[i], 0u);
  }
  if (lid == 0u) {
    atomicStore(&n_sel, 0u);
    atomicStore(&n_head, 0u);
    atomicStore(&n_rest, 0u);
    atomicStore(&mx_hi, 0u);
    atomicStore(&mx_lo, 0u);
  }
  sel[lid] = NO_TOKEN;  // CAND == WG
  workgroupBarrier();
  if ((prm.flags & F_PENALTY) != 0u) {
    // Mark each distinct token of the last `last_n` history entries once (llama.cpp penalises a token once
    // however often it occurs).
    let hcap = arrayLength(&hist) - 2u;
    let count = min(hist[0], hcap);
    let next = hist[1] % hcap;
    let nn = min(prm.last_n, count);
    for (var j = lid; j < nn; j += WG) {
      let t = hist[2u + (next + hcap - 1u - j) % hcap];
      if (t < V && t % NSLICE == w) {
        let o = t / NSLICE;
        atomicOr(&pen[o / 32u], 1u << (o % 32u));
      }
    }
    workgroupBarrier();
  }
  for (var i = lid; i < n; i += WG) {
    var v = logits[ROW_OFFSET + i * NSLICE + w];
    if ((prm.flags & F_SOFTCAP) != 0u) {
      v = soft_capped(v, prm.softcap, prm.inv_softcap);
    }
    if (((atomicLoad(&pen[i / 32u]) >> (i % 32u)) & 1u) != 0u) {
      v = select(v * prm.penalty, v * prm.inv_penalty, v > 0.0);
    }
    vals[i] = v;
  }
  workgroupBarrier();

  // The slice's top k, unordered, into sel[0 .. k).
  let thr = rs_select(lid, 0u, n, k);
  for (var i = lid; i < n; i += WG) {
    let c = rs_elem(0u, i);
    if (c.y != 0u && c_ge(c, thr)) {
      let slot = atomicAdd(&n_sel, 1u);
      if (slot < CAND) {
        sel[slot] = c;
      }
    }
  }
  workgroupBarrier();

  let out = w * CAND;
  if (k <= HEADS) {
    cand[out + lid] = sel[lid];  // all heads (NO_TOKEN beyond k)
    return;
  }
  // Heads first; then the largest non-head at HEADS; then the others.
  let thr_h = rs_select(lid, 1u, k, HEADS);
  let c = sel[lid];
  let real = lid < k;
  let head = real && c_ge(c, thr_h);
  if (real && !head) {
    atomicMax(&mx_hi, c.x);
  }
  workgroupBarrier();
  let hi = atomicLoad(&mx_hi);
  if (real && !head && c.x == hi) {
    atomicMax(&mx_lo, c.y);
  }
  workgroupBarrier();
  let lo = atomicLoad(&mx_lo);
  if (head) {
    cand[out + atomicAdd(&n_head, 1u)] = c;
  } else if (!real) {
    cand[out + lid] = NO_TOKEN;
  } else if (c.x == hi && c.y == lo) {
    cand[out + HEADS] = c;
  } else {
    cand[out + HEADS + 1u + atomicAdd(&n_rest, 1u)] = c;
  }
}
