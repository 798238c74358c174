// y[ROW0 + r] (+)= SCALE * sum_c W[r, c] * x[c]: one token against a weight kept as raw GGUF bytes (decode,
// memory-bound: the hot kernel). The type's dequantiser comes from quant/<type>.wgsl (see quant/f32.wgsl for
// its interface); this file only decides who reads what.
//
// A workgroup of WG lanes is WG / LPR row groups of LPR lanes; each group owns R (1, 2 or 4) consecutive rows
// of this part of the weight. A group's lanes walk its rows together, lane i taking units i, i + LPR, ...
// (a unit is 8 or 16 weights that share their loads): short rows (1536 columns of Q4_K are 96 units) give
// each lane several units rather than leaving most lanes of a large workgroup idle. Lanes
// next to each other read neighbouring words of the same blocks, so every load instruction of a subgroup
// covers whole cache lines. Each lane handles the same unit of all R rows, so the activation runs it loads
// (vec4 reads) and their sums are reused R times. The R partial sums live in one vec4 and the rows are
// written out without arrays or loops over R: private arrays indexed in loops end up in local memory.
// Partial sums are reduced across the workgroup at the end: here through workgroup memory;
// matvec.subgroups.wgsl does it with subgroupAdd. Both share unit_rows and store (matvec_lib.wgsl, over matvec_units.wgsl).
//
// Constants: ROWS (rows of this part), ROW0 (where its first row is stored in Y: the part's first row in the
// whole weight, plus the caller's output offset; parts are separate buffers, so the part's data starts at
// byte 0 and only the output index moves), COLS (a multiple of QK, and of 8 for
// float types: the host uses the tiled kernel otherwise), ROW_BYTES, R, WG and LPR (powers of two, LPR <= WG),
// GRID_X (workgroups along x; more than 65535 workgroups wrap into y), ACC (add into y), SCALE, EPI and P_OFF
// (the epilogue, matvec_lib.wgsl).
@group(0) @binding(0) var<storage, read> W: array<u32>;
@group(0) @binding(2) var<storage, read_write> Y: array<f32>;
@group(0) @binding(3) var<storage, read> P: array<f32>;  // EPI 2 only; any read-only buffer otherwise

const UPR: u32 = (COLS / QK) * UPB;  // units per row
const G: u32 = WG / LPR;  // row groups per workgroup

var<workgroup> red: array<vec4<f32>, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let wi = wid.x + wid.y * GRID_X;
  prologue(wi, lid);  // the activation X (matvec_x.wgsl or matvec_stream_norm.wgsl)
  let wrow = wi * (G * RPG);
  if (wrow >= OUT_ROWS) {
    return;  // padding workgroup of a wrapped grid (uniform: depends on the workgroup id only)
  }
  let li = lid % LPR;
  let row0 = wrow + (lid / LPR) * RPG;
  let b = row_offsets(row0);
  var acc = vec4<f32>(0.0);
  for (var u = li; u < UPR; u += LPR) {
    acc += unit_rows(u, b);
  }
  red[lid] = acc;
  workgroupBarrier();
  for (var stride = LPR / 2u; stride > 0u; stride >>= 1u) {
    if (li < stride) {
      red[lid] += red[lid + stride];
    }
    workgroupBarrier();
  }
  if (li == 0u && row0 < OUT_ROWS) {
    store(row0, red[lid]);
  }
}
