// Expert matrix-vector products for decode (memory-bound, like matvec.wgsl, whose layout this follows: row
// groups of LPR lanes, R rows each, the type's dequantiser from quant/<type>.wgsl). The weight holds the
// experts one after another, RPE rows each; this dispatch sees one part of it, experts E0 .. E0 + NE - 1.
// Each workgroup reads its expert from IDS, so expert selection stays on the GPU.
//   entry `slots`: Y[s, r] = W[IDS[s]][r, :] . x, one workgroup row per slot s = t * TOP_K + k (grid y), x the
//                  slot's token's row of X (X_PER_SLOT: the slot's own row). Slots whose expert is in another
//                  part are left to that part's dispatch.
//   entry `sum`:   Y[t, r] (+)= sum_k WTS[t, k] * W[IDS[t, k]][r, :] . X[t * TOP_K + k, :], one workgroup row
//                  per token (grid y) and R rows per workgroup (grid x). The G = WG / LPR row groups take
//                  the experts k = g, g + G, ... of the token, so the experts' weights are read in parallel
//                  rather than one after another (a chain of TOP_K memory latencies per lane); each lane sums
//                  its units over its experts, each group reduces, and the first lane adds the groups in
//                  order. The weighted combine of the experts is this sum.
// The reduction here goes through workgroup memory; moe_matvec.subgroups.wgsl uses subgroup shuffles. Both
// share moe_matvec_lib.wgsl.
//
// Constants: RPE (rows per expert), COLS (a multiple of QK and of 8), ROW_BYTES, R, WG, LPR (see matvec.wgsl),
// E0, NE, TOP_K, X_PER_SLOT, ACC (`sum` only: add into Y; a later part always adds).
@group(0) @binding(0) var<storage, read> W: array<u32>;
@group(0) @binding(1) var<storage, read> X: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> IDS: array<u32>;
@group(0) @binding(3) var<storage, read_write> Y: array<f32>;
@group(0) @binding(4) var<storage, read> WTS: array<f32>;

var<workgroup> red: array<vec4<f32>, WG>;

// Sum of each row group's lanes; valid in the group's first lane (li == 0).
fn reduce_group(acc: vec4<f32>, lid: u32, li: u32) -> vec4<f32> {
  red[lid] = acc;
  workgroupBarrier();
  for (var stride = LPR / 2u; stride > 0u; stride >>= 1u) {
    if (li < stride) {
      red[lid] += red[lid + stride];
    }
    workgroupBarrier();
  }
  return red[lid];
}

@compute @workgroup_size(WG)
fn slots(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let s = wid.y;
  let wrow = wid.x * (G * R);
  let e = IDS[s];
  if (wrow >= RPE || e < E0 || e >= E0 + NE) {
    return;  // uniform: the workgroup id and a read-only value at a uniform index
  }
  let li = lid % LPR;
  let row0 = wrow + (lid / LPR) * R;
  let t = reduce_group(lane_rows(s, e - E0, row0, li), lid, li);
  if (li == 0u && row0 < RPE) {
    store_rows(s * RPE + row0, row0, t);
  }
}

@compute @workgroup_size(WG)
fn sum(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let tok = wid.y;
  let row0 = wid.x * R;
  if (row0 >= RPE) {
    return;
  }
  let li = lid % LPR;
  let gi = lid / LPR;
  var acc = vec4<f32>(0.0);
  for (var k = gi; k < TOP_K; k += G) {
    let s = tok * TOP_K + k;
    let e = IDS[s];
    if (e >= E0 && e < E0 + NE) {
      acc += WTS[s] * lane_rows(s, e - E0, row0, li);
    }
  }
  _ = reduce_group(acc, lid, li);  // group gi's total in red[gi * LPR]
  if (lid == 0u) {
    var t = red[0];
    for (var g = 1u; g < G; g++) {
      t += red[g * LPR];  // the groups in a fixed order: deterministic
    }
    store_rows(tok * RPE + row0, row0, t);
  }
}
