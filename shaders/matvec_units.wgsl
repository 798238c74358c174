// The unit dot products shared by the matrix-vector kernels (matvec.wgsl, moe_matvec.wgsl and their subgroup
// variants): a unit is 8 or 16 weights of one block whose activation runs are loaded once for up to 4 rows.
// Uses the kernel's activation binding X (vec4s) and its type's unit_run / unit_dot (quant/<type>.wgsl).

// The partial dot products of unit u with the rows at byte offsets b0..b3 (only the first R are used), the
// activation starting at vec4 xo (0 for a single activation; a slot's row for the expert kernels).
fn unit_rows_at(xo: u32, u: u32, b0: u32, b1: u32, b2: u32, b3: u32) -> vec4<f32> {
  let blk = u / UPB;  // UPB is a power of two: these are shifts
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
