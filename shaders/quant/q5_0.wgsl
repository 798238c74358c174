// Q5_0: blocks of 32 weights in 22 bytes: d (f16), qh (u32: bit i is the 5th bit of weight i), then 16 bytes
// of low nibbles laid out as in Q4_0 (byte j: weight j low, weight j + 16 high); w = d * (q - 16).
// A matvec unit is one quant word, as in Q4_0. See quant/f32.wgsl for the interface.
const QK: u32 = 32u;
const BLOCK_BYTES: u32 = 22u;
const UPB: u32 = 4u;
const UNIT_RUNS: u32 = 2u;

fn unit_run(u: u32, k: u32) -> u32 {
  return u + 4u * k;
}

// Bits 0..3 of `h` moved to bit 4 of bytes 0..3: the 5th bits of four consecutive weights.
fn q5_spread(h: u32) -> u32 {
  return ((h & 1u) << 4u) | ((h & 2u) << 11u) | ((h & 4u) << 18u) | ((h & 8u) << 25u);
}

fn unit_dot(b: u32, u: u32, x0: vec4<f32>, x1: vec4<f32>, x2: vec4<f32>, x3: vec4<f32>, xs: vec4<f32>) -> f32 {
  let qh = ldw(b + 2u);
  let q = ldw(b + 6u + 4u * u);
  let lo = (q & NIB) | q5_spread(qh >> (4u * u));
  let hi = ((q >> 4u) & NIB) | q5_spread(qh >> (16u + 4u * u));
  return f16_at(b) * (dot(u8x4(lo), x0) + dot(u8x4(hi), x1) - 16.0 * (xs.x + xs.y));
}

fn run_deq(b: u32, r: u32) -> vec4<f32> {
  // Run r covers weights 4r..4r+3, whose 5th bits are qh bits 4r..4r+3 for every r in 0..7.
  let q = ((ldw(b + 6u + 4u * (r & 3u)) >> (4u * (r >> 2u))) & NIB) | q5_spread(ldw(b + 2u) >> (4u * r));
  return f16_at(b) * (u8x4(q) - 16.0);
}
