// y[ROW0 + r] (+)= SCALE * sum_c W[r, c] * x[c]: one token against a weight kept as raw GGUF bytes (decode,
// memory-bound: the hot kernel). The type's dequantiser comes from quant/<type>.wgsl (see quant/f32.wgsl for
// its interface); this file only decides who reads what.
//
// A workgroup owns R consecutive rows of this part of the weight. Its WG lanes walk the row together, lane i
// taking units i, i + WG, ... (a unit is 8 or 16 weights that share their loads; quant/<type>.wgsl). Lanes
// next to each other read neighbouring words of the same blocks, so every load instruction of a subgroup
// covers whole cache lines. Each lane handles the same unit of all R rows, so the activation runs it loads
// (vec4 reads) are reused R times. Partial sums are reduced across the workgroup at the end: here through
// workgroup memory; matvec.subgroups.wgsl does it with subgroupAdd.
//
// Constants: ROWS (rows of this part), ROW0 (its first row in the whole weight: parts are separate buffers,
// so the part's data starts at byte 0 and only the output index moves), COLS (a multiple of QK, and of 8 for
// float types: the host uses the tiled kernel otherwise), ROW_BYTES, R, WG (power of two), GRID_X
// (workgroups along x; more than 65535 workgroups wrap into y), ACC (add into y), SCALE.
@group(0) @binding(0) var<storage, read> W: array<u32>;
@group(0) @binding(1) var<storage, read> X: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> Y: array<f32>;

const UPR: u32 = (COLS / QK) * UPB;  // units per row

var<workgroup> red: array<array<f32, WG>, R>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let row0 = (wid.x + wid.y * GRID_X) * R;
  if (row0 >= ROWS) {
    return;  // padding workgroup of a wrapped grid (uniform: depends on the workgroup id only)
  }
  var base: array<u32, R>;
  for (var r = 0u; r < R; r++) {
    base[r] = min(row0 + r, ROWS - 1u) * ROW_BYTES;  // rows past the end recompute the last; not stored
  }
  var acc: array<f32, R>;
  for (var u = lid; u < UPR; u += WG) {
    let blk = u / UPB;  // UPB is a power of two: these are shifts
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
  for (var r = 0u; r < R; r++) {
    red[r][lid] = acc[r];
  }
  workgroupBarrier();
  for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
    if (lid < stride) {
      for (var r = 0u; r < R; r++) {
        red[r][lid] += red[r][lid + stride];
      }
    }
    workgroupBarrier();
  }
  if (lid < R && row0 + lid < ROWS) {
    let o = ROW0 + row0 + lid;
    var y = SCALE * red[lid][0];
    if (ACC) {
      y += Y[o];
    }
    Y[o] = y;
  }
}
