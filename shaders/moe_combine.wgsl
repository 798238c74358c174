// The weighted combine of a token's experts after the grouped expert kernel (moe_matmul.wgsl) wrote one row per
// slot: Y[t, r] (+)= sum_k WTS[t, k] * P[t * TOP_K + k, r], the slots added in order k = 0, 1, ... so that the
// result does not depend on how the slots were grouped. Constants: RPE (row length), N_TOK, TOP_K, ACC, WG.
@group(0) @binding(0) var<storage, read> P: array<f32>;
@group(0) @binding(1) var<storage, read> WTS: array<f32>;
@group(0) @binding(2) var<storage, read_write> Y: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let i = (wid.y * nwg.x + wid.x) * WG + lid;
  if (i >= N_TOK * RPE) {
    return;
  }
  let t = i / RPE;
  let r = i % RPE;
  var y = 0.0;
  for (var k = 0u; k < TOP_K; k++) {
    let s = t * TOP_K + k;
    y += WTS[s] * P[s * RPE + r];
  }
  if (ACC) {
    y += Y[i];
  }
  Y[i] = y;
}
