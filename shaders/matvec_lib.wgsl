// Helpers shared by matvec.wgsl and matvec.subgroups.wgsl (which differ only in their final reduction).
// They use the kernel's bindings X and Y and its constants; see matvec.wgsl.

// The partial dot products of unit u with the rows at byte offsets b0..b3 (only the first R are used).
fn unit_rows(u: u32, b0: u32, b1: u32, b2: u32, b3: u32) -> vec4<f32> {
  let blk = u / UPB;  // UPB is a power of two: these are shifts
  let k = u % UPB;
  let xo = blk * (QK / 4u);
  let x0 = X[xo + unit_run(k, 0u)];
  let x1 = X[xo + unit_run(k, 1u)];
  var x2 = vec4<f32>(0.0);
  var x3 = vec4<f32>(0.0);
  if (UNIT_RUNS > 2u) {
    x2 = X[xo + unit_run(k, 2u)];
    x3 = X[xo + unit_run(k, 3u)];
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

// y[ROW0 + row0 ..] (+)= SCALE * s for the first R rows that exist.
fn store(row0: u32, s: vec4<f32>) {
  let o = ROW0 + row0;
  var y = SCALE * s;
  if (ACC) {
    // Rows past the part's end read a neighbour's output (or are clamped to the buffer); never stored.
    y += vec4<f32>(Y[o], Y[min(o + 1u, o + R - 1u)], Y[min(o + 2u, o + R - 1u)], Y[min(o + 3u, o + R - 1u)]);
  }
  Y[o] = y.x;
  if (R > 1u && row0 + 1u < ROWS) {
    Y[o + 1u] = y.y;
  }
  if (R > 2u && row0 + 2u < ROWS) {
    Y[o + 2u] = y.z;
  }
  if (R > 2u && row0 + 3u < ROWS) {
    Y[o + 3u] = y.w;
  }
}
