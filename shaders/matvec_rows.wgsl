// The body of the matrix-vector kernels matvec.wgsl and matvec_residual.wgsl (see matvec.wgsl for the layout
// and the constants): row groups walk their rows' units and reduce their partial sums through workgroup memory;
// matvec_rows.subgroups.wgsl does the reduction with subgroup shuffles. It reads the activation X, which the
// entry file declares: a storage buffer (matvec.wgsl) or workgroup memory filled by a prologue
// (matvec_residual.wgsl). Call it in uniform control flow.

const UPR: u32 = (COLS / QK) * UPB;  // units per row
const G: u32 = WG / LPR;  // row groups per workgroup

var<workgroup> red: array<vec4<f32>, WG>;

fn matvec_rows(wid: vec3<u32>, lid: u32) {
  let wrow = (wid.x + wid.y * GRID_X) * (G * RPG);
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
