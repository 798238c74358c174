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

// (d * scale, dmin * min) of sub-blocks 2g and 2g + 1 at once, as (scale0, scale1, min0, min1): their bytes
// sit side by side (bytes 2g % 4 and 2g % 4 + 1 of each scale word), so one pass of 16-bit masks decodes both
// and one conversion turns all four into floats.
fn k_scale_min2(b: u32, g: u32) -> vec4<f32> {
  let i = b >> 2u;
  let dm = unpack2x16float(W[i]);
  let sh = 16u * (g & 1u);
  let s0 = W[i + 1u] >> sh;
  let s1 = W[i + 2u] >> sh;
  let s2 = W[i + 3u] >> sh;
  let hi = g >= 2u;
  let sc = select(s0 & 0x3F3Fu, (s2 & 0x0F0Fu) | ((s0 >> 2u) & 0x3030u), hi);
  let mn = select(s1 & 0x3F3Fu, ((s2 >> 4u) & 0x0F0Fu) | ((s1 >> 2u) & 0x3030u), hi);
  return u8x4(sc | (mn << 16u)) * dm.xxyy;
}
