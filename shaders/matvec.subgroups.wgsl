// matvec.wgsl with the final reduction done by subgroupAdd: one subgroup operation per row instead of
// log2(WG) workgroup barriers, which matters for short rows (1536 columns: 2 to 3 units per lane).
// See matvec.wgsl for the layout and the constants.
//
// Subgroup partials are combined through workgroup memory in slot lid / subgroup_size, which assumes that
// each subgroup is a contiguous range of local_invocation_index. WGSL does not promise that, but every
// implementation lays out one-dimensional workgroups that way (Vulkan, Metal, D3D12, lavapipe, SwiftShader);
// it keeps the sum order fixed, so results are deterministic run to run.
@group(0) @binding(0) var<storage, read> W: array<u32>;
@group(0) @binding(1) var<storage, read> X: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> Y: array<f32>;

const UPR: u32 = (COLS / QK) * UPB;
const MAX_SG: u32 = (WG + 3u) / 4u;  // WebGPU subgroups have at least 4 invocations

var<workgroup> red: array<array<f32, R>, MAX_SG>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32,
        @builtin(subgroup_invocation_id) sg_lane: u32, @builtin(subgroup_size) sg_size: u32) {
  let row0 = (wid.x + wid.y * GRID_X) * R;
  if (row0 >= ROWS) {
    return;
  }
  var base: array<u32, R>;
  for (var r = 0u; r < R; r++) {
    base[r] = min(row0 + r, ROWS - 1u) * ROW_BYTES;
  }
  var acc: array<f32, R>;
  for (var u = lid; u < UPR; u += WG) {
    let blk = u / UPB;
    let k = u % UPB;
    var xs: array<vec4<f32>, UNIT_RUNS>;
    for (var j = 0u; j < UNIT_RUNS; j++) {
      xs[j] = X[blk * (QK / 4u) + unit_run(k, j)];
    }
    for (var r = 0u; r < R; r++) {
      let v = unit_deq(base[r] + blk * BLOCK_BYTES, k);
      var s = 0.0;
      for (var j = 0u; j < UNIT_RUNS; j++) {
        s += dot(v[j], xs[j]);
      }
      acc[r] += s;
    }
  }
  let n_sg = (WG + sg_size - 1u) / sg_size;
  for (var r = 0u; r < R; r++) {
    let s = subgroupAdd(acc[r]);
    if (sg_lane == 0u) {
      red[lid / sg_size][r] = s;
    }
  }
  workgroupBarrier();
  if (lid < R && row0 + lid < ROWS) {
    var t = 0.0;
    for (var i = 0u; i < n_sg; i++) {
      t += red[i][lid];
    }
    let o = ROW0 + row0 + lid;
    var y = SCALE * t;
    if (ACC) {
      y += Y[o];
    }
    Y[o] = y;
  }
}
