// The 6-bit scales and mins shared by Q4_K and Q5_K. A block starts with d, dmin (two f16) and 12 bytes that
// pack eight (scale, min) pairs, one per sub-block of 32 weights:
//   sub-block j < 4:  scale = byte j & 63,                 min = byte j+4 & 63
//   sub-block j >= 4: scale = byte j+4 & 15 | (byte j-4 >> 6) << 4,
//                     min   = byte j+4 >> 4 | (byte j   >> 6) << 4
// Returns (d * scale, dmin * min) for sub-block j of the block at byte offset b: weight = x * q - y.
// Both K-quant blocks (144 B, 176 B) are multiples of 16 bytes, so these words are always aligned.
fn k_scale_min(b: u32, j: u32) -> vec2<f32> {
  let i = b >> 2u;
  let dm = unpack2x16float(W[i]);
  let sh = 8u * (j & 3u);
  let s0 = W[i + 1u] >> sh;
  let s1 = W[i + 2u] >> sh;
  let s2 = W[i + 3u] >> sh;
  let hi = j >= 4u;
  let sc = select(s0 & 63u, (s2 & 15u) | ((s0 >> 2u) & 48u), hi);
  let mn = select(s1 & 63u, ((s2 >> 4u) & 15u) | ((s1 >> 2u) & 48u), hi);
  return vec2<f32>(dm.x * f32(sc), dm.y * f32(mn));
}
