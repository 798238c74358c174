// Helpers shared by moe_matvec.wgsl and moe_matvec.subgroups.wgsl (which differ only in their final
// reduction). They use the kernel's bindings W, X and Y and its constants; see moe_matvec.wgsl.

const UPR: u32 = (COLS / QK) * UPB;  // units per row
const G: u32 = WG / LPR;  // row groups per workgroup

// The partial dot products of unit u with the rows at byte offsets b0..b3 (only the first R are used), the
// activation starting at vec4 xo: matvec_lib.wgsl's unit_rows for an activation that is one of many.
fn slot_unit_rows(xo: u32, u: u32, b0: u32, b1: u32, b2: u32, b3: u32) -> vec4<f32> {
  let blk = u / UPB;
  let k = u % UPB;
  let xb = xo + blk * (QK / 4u);
  let x0 = X[xb + unit_run(k, 0u)];
  let x1 = X[xb + unit_run(k, 1u)];
  var x2 = vec4<f32>(0.0);
  var x3 = vec4<f32>(0.0);
  if (UNIT_RUNS > 2u) {
    x2 = X[xb + unit_run(k, 2u)];
    x3 = X[xb + unit_run(k, 3u)];
  }
  let one = vec4<f32>(1.0);
  let xs = vec4<f32>(dot(x0, one), dot(x1, one), dot(x2, one), dot(x3, one));
  let off = blk * BLOCK_BYTES;
  var s = vec4<f32>(0.0);
  s.x = unit_dot(b0 + off, k, x0, x1, x2, x3, xs);
  if (R > 1u) {
    s.y = unit_dot(b1 + off, k, x0, x1, x2, x3, xs);
  }
  if (R > 2u) {
    s.z = unit_dot(b2 + off, k, x0, x1, x2, x3, xs);
    s.w = unit_dot(b3 + off, k, x0, x1, x2, x3, xs);
  }
  return s;
}

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
    acc += slot_unit_rows(xo, u, b0, b1, b2, b3);
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
