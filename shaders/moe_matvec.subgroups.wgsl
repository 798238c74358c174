// moe_matvec.wgsl with each row group's reduction done by subgroup shuffles, as matvec.subgroups.wgsl does
// (see there for the butterfly and its assumption on subgroup layout). Same entries, bindings and constants.
@group(0) @binding(0) var<storage, read> W: array<u32>;
@group(0) @binding(1) var<storage, read> X: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> IDS: array<u32>;
@group(0) @binding(3) var<storage, read_write> Y: array<f32>;
@group(0) @binding(4) var<storage, read> WTS: array<f32>;

const MAX_CHUNKS: u32 = (WG + 3u) / 4u;  // chunks of m >= 4 lanes: WebGPU subgroups have at least 4

var<workgroup> red: array<vec4<f32>, MAX_CHUNKS>;
var<workgroup> groups: array<vec4<f32>, G>;  // `sum`: each row group's total

// Sum of each row group's lanes; valid in the group's first lane (li == 0).
fn reduce_group(acc_in: vec4<f32>, lid: u32, li: u32, sg_size: u32) -> vec4<f32> {
  var acc = acc_in;
  let m = min(LPR, sg_size);
  for (var o = m / 2u; o > 0u; o >>= 1u) {
    acc += subgroupShuffleXor(acc, o);
  }
  if (lid % m == 0u) {
    red[lid / m] = acc;
  }
  workgroupBarrier();
  var t = red[lid / m];
  if (li == 0u) {
    for (var i = 1u; i < LPR / m; i++) {
      t += red[lid / m + i];
    }
  }
  return t;
}

@compute @workgroup_size(WG)
fn slots(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32,
         @builtin(subgroup_size) sg_size: u32) {
  let s = wid.y;
  let wrow = wid.x * (G * R);
  let e = IDS[s];
  if (wrow >= RPE || e < E0 || e >= E0 + NE) {
    return;  // uniform: the workgroup id and a read-only value at a uniform index
  }
  let li = lid % LPR;
  let row0 = wrow + (lid / LPR) * R;
  let t = reduce_group(lane_rows(s, e - E0, row0, li), lid, li, sg_size);
  if (li == 0u && row0 < RPE) {
    store_rows(s * RPE + row0, row0, t);
  }
}

@compute @workgroup_size(WG)
fn sum(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32,
       @builtin(subgroup_size) sg_size: u32) {
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
  let t = reduce_group(acc, lid, li, sg_size);
  if (li == 0u) {
    groups[gi] = t;
  }
  workgroupBarrier();
  if (lid == 0u) {
    var y = groups[0];
    for (var g = 1u; g < G; g++) {
      y += groups[g];  // the groups in a fixed order: deterministic
    }
    store_rows(tok * RPE + row0, row0, y);
  }
}
