// The sampler's greedy fast path (see src/rullama_py/sampling.py, "Greedy fast path"): with temperature 0 and
// no repetition penalty the token is the argmax of the logits (soft-capped when the sampler has a cap), lowest
// id on ties: what sample_select + sample_draw pick then, without their selections and sort.
//
// Values are compared as sample_lib.wgsl's composite keys (order_key(value), ~id): the larger key is the larger
// value, then the lower id, and no two tokens compare equal, so the result does not depend on the order in
// which keys are combined. The soft-cap is applied with the same function as sample_select.wgsl (distinct
// logits can round to one capped value: then, as there, the lower id wins). NaN is ranked by its bits as
// order_key ranks it there too: a NaN with the sign bit clear above +inf, one with it set below -inf.
//
// Two entry points, one dispatch each:
// `partials`: NPART workgroups; workgroup w reduces the logits [w * PART, (w + 1) * PART) to its best key,
//   part_out[w]. Invocation lid reads lid, lid + WG, ... of them (neighbours read neighbouring words), all
//   ITEMS loads issued before the first comparison; then workgroup_best (sample_best.wgsl).
// `finish`: one workgroup reduces the NPART keys, writes the token id to out[0] and appends it to the history
//   ring, exactly as sample_draw.wgsl does (a later switch to penalised sampling sees it).
// Constants: V (vocabulary), ROW_OFFSET (index of the first logit), WG (256), ITEMS, PART (= WG * ITEMS),
//            NPART (= ceil(V / PART)).
@group(0) @binding(0) var<storage, read> logits: array<f32>;         // `partials`
@group(0) @binding(1) var<uniform> prm: SampleParams;                // `partials`: the soft-cap
@group(0) @binding(2) var<storage, read_write> part_out: array<vec2<u32>>;  // `partials`: [NPART]

@group(0) @binding(0) var<storage, read> part: array<vec2<u32>>;     // `finish`: [NPART]
@group(0) @binding(1) var<storage, read_write> hist: array<u32>;     // `finish`: [count, next, ring of arrayLength - 2]
@group(0) @binding(2) var<storage, read_write> out: array<u32>;      // `finish`: out[0] = the token id

// sample_lib's radix select calls rs_elem, which each kernel that selects defines; this one only compares keys.
fn rs_elem(src: u32, j: u32) -> vec2<u32> {
  return NO_TOKEN;
}

@compute @workgroup_size(WG)
fn partials(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let first = wid.x * PART + lid;
  var v: array<f32, ITEMS>;
  for (var k = 0u; k < ITEMS; k++) {
    v[k] = logits[ROW_OFFSET + min(first + k * WG, V - 1u)];  // in bounds; ids >= V are skipped below
  }
  let cap = (prm.flags & F_SOFTCAP) != 0u;
  var best = NO_TOKEN;
  for (var k = 0u; k < ITEMS; k++) {
    let id = first + k * WG;
    var x = v[k];
    if (cap) {
      x = soft_capped(x, prm.softcap, prm.inv_softcap);
    }
    let c = vec2<u32>(order_key(x), ~id);
    if (id < V && c_gt(c, best)) {
      best = c;
    }
  }
  best = workgroup_best(best, lid);
  if (lid == 0u) {
    part_out[wid.x] = best;
  }
}

@compute @workgroup_size(WG)
fn finish(@builtin(local_invocation_index) lid: u32) {
  var best = NO_TOKEN;
  for (var j = lid; j < NPART; j += WG) {
    let c = part[j];
    if (c_gt(c, best)) {
      best = c;
    }
  }
  best = workgroup_best(best, lid);
  if (lid == 0u) {
    let tok = ~best.y;
    out[0] = tok;
    history_append(tok);  // sample_history.wgsl
  }
}
