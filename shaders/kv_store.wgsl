// Appends this run's K and V rows to a layer's KV cache, converting to f16.
//   k, v:   f32 [n_tokens, NKV, HD] (row-major activations)
//   ck, cv: f16 [NKV][CAP][HD], packed two per u32 (pack2x16float works on every device; the bytes are the
//           same as array<f16>, so readers may use either)
// Token t (position step.pos + t) goes to slot (step.pos + t) % CAP. A full-length cache (CAP >= context)
// therefore stores position p at slot p; a sliding-window layer may use a ring of CAP >= window + n_tokens - 1
// slots (see ops/attention.py, kv_slots). [head][slot][dim] keeps each head's keys contiguous, which is what
// decode attention streams through.
// One thread per pair of dims of one (token, head), K and V both: one dispatch per layer and run.
// Constants: NKV, HD (even), CAP, MAXT (token capacity of k/v), WG.
@group(0) @binding(0) var<storage, read> k: array<vec2<f32>>;
@group(0) @binding(1) var<storage, read> v: array<vec2<f32>>;
@group(0) @binding(2) var<storage, read_write> ck: array<u32>;
@group(0) @binding(3) var<storage, read_write> cv: array<u32>;
@group(0) @binding(4) var<uniform> step: Step;

const HD2: u32 = HD / 2u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let idx = (wid.y * nwg.x + wid.x) * WG + lid;
  let t = idx / (NKV * HD2);
  if (t >= min(step.n_tokens, MAXT)) {
    return;
  }
  let h = (idx / HD2) % NKV;
  let c = idx % HD2;
  let slot = (step.pos + t) % CAP;
  let dst = (h * CAP + slot) * HD2 + c;
  ck[dst] = to_f16x2(k[idx]);  // idx == (t * NKV + h) * HD2 + c: the source pair
  cv[dst] = to_f16x2(v[idx]);
}
