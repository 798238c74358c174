// Helpers shared by moe_matvec.wgsl and moe_matvec.subgroups.wgsl (which differ only in their final
// reduction). They use the kernel's bindings W, X and Y and its constants; see moe_matvec.wgsl.

const UPR: u32 = (COLS / QK) * UPB;  // units per row
const G: u32 = WG / LPR;  // row groups per workgroup

// This lane's share (units li, li + LPR, ...) of rows row0 .. row0 + R - 1 of expert e of this part (its
// rows start at e * RPE) against slot s's activation. Rows past the expert's end recompute its last row.
fn lane_rows(s: u32, e: u32, row0: u32, li: u32) -> vec4<f32> {
  var xrow = s / TOP_K;  // the slot's token
  if (X_PER_SLOT) {
    xrow = s;
  }
  let xo = xrow * (COLS / 4u);
  let base = e * RPE;
  let b0 = (base + min(row0, RPE - 1u)) * ROW_BYTES;
  let b1 = (base + min(row0 + 1u, RPE - 1u)) * ROW_BYTES;
  let b2 = (base + min(row0 + 2u, RPE - 1u)) * ROW_BYTES;
  let b3 = (base + min(row0 + 3u, RPE - 1u)) * ROW_BYTES;
  var acc = vec4<f32>(0.0);
  for (var u = li; u < UPR; u += LPR) {
    acc += unit_rows_at(xo, u, b0, b1, b2, b3);
  }
  return acc;
}

// Y[o + i] (+)= v[i] for the first R rows from row0 that the expert has.
fn store_rows(o: u32, row0: u32, v: vec4<f32>) {
  var y = v;
  if (ACC) {
    y += vec4<f32>(Y[o], Y[o + min(1u, RPE - 1u - row0)], Y[o + min(2u, RPE - 1u - row0)],
                   Y[o + min(3u, RPE - 1u - row0)]);
  }
  Y[o] = y.x;
  if (R > 1u && row0 + 1u < RPE) {
    Y[o + 1u] = y.y;
  }
  if (R > 2u && row0 + 2u < RPE) {
    Y[o + 2u] = y.z;
  }
  if (R > 2u && row0 + 3u < RPE) {
    Y[o + 3u] = y.w;
  }
}
