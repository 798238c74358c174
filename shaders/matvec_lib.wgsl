// Helpers shared by matvec.wgsl and matvec.subgroups.wgsl (which differ only in their final reduction).
// They use the kernel's bindings X, Y and P and its constants; see matvec.wgsl.
//
// EPI picks what is stored (the epilogue), so that an elementwise op after a matrix-vector product costs no
// dispatch of its own:
//   0: y[ROW0 + r] (+)= SCALE * W[r] . x
//   1: GeGLU. The weight is [gate; up], 2 * OUT_ROWS rows; a row group (R = 2) takes gate row r and up row r
//      together, sharing their activation loads, and stores y[ROW0 + r] = gelu_tanh(SCALE g) * (SCALE u).
//   2: a gated input. y[ROW0 + r] = gelu_tanh(SCALE * W[r] . x) * P[P_OFF + r] (R = 1): Gemma 4's
//      per-layer-embedding gate, P being the token's per-layer inputs.

const OUT_ROWS: u32 = select(ROWS, ROWS / 2u, EPI == 1u);  // rows stored
const RPG: u32 = select(R, 1u, EPI == 1u);  // rows stored per row group

// The partial dot products of unit u with the rows at byte offsets b0..b3 (only the first R are used).
fn unit_rows(u: u32, b: vec4<u32>) -> vec4<f32> {
  return unit_rows_at(0u, u, b.x, b.y, b.z, b.w);
}

// Byte offsets of the R weight rows of the row group whose first stored row is row0. Rows past the end
// recompute the last row; their sums are not stored.
fn row_offsets(row0: u32) -> vec4<u32> {
  if (EPI == 1u) {
    let g = min(row0, OUT_ROWS - 1u) * ROW_BYTES;
    return vec4<u32>(g, g + OUT_ROWS * ROW_BYTES, g, g);
  }
  return vec4<u32>(min(row0, ROWS - 1u), min(row0 + 1u, ROWS - 1u), min(row0 + 2u, ROWS - 1u),
                   min(row0 + 3u, ROWS - 1u)) * ROW_BYTES;
}

// Stores the row group's sums s (see EPI) for the first R rows that exist.
fn store(row0: u32, s: vec4<f32>) {
  let o = ROW0 + row0;
  var y = SCALE * s;
  if (EPI == 1u) {
    Y[o] = gelu_tanh(y.x) * y.y;
    return;
  }
  if (EPI == 2u) {
    Y[o] = gelu_tanh(y.x) * P[P_OFF + row0];
    return;
  }
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
