// Helpers shared by matvec.wgsl and matvec.subgroups.wgsl (which differ only in their final reduction).
// They use the kernel's bindings X and Y and its constants; see matvec.wgsl.

// The partial dot products of unit u with the rows at byte offsets b0..b3 (only the first R are used).
fn unit_rows(u: u32, b0: u32, b1: u32, b2: u32, b3: u32) -> vec4<f32> {
  return unit_rows_at(0u, u, b0, b1, b2, b3);
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
