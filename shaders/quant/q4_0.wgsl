// Q4_0: blocks of 32 weights in 18 bytes: d (f16), then 16 bytes; byte j holds weight j in its low nibble
// and weight j + 16 in its high nibble; w = d * (q - 8).
// A matvec unit is one quant word: weights 4u..4u+3 (low nibbles) and 16+4u..16+4u+3 (high nibbles).
// See quant/f32.wgsl for the interface.
const QK: u32 = 32u;
const BLOCK_BYTES: u32 = 18u;
const UPB: u32 = 4u;
const UNIT_RUNS: u32 = 2u;

fn unit_run(u: u32, k: u32) -> u32 {
  return u + 4u * k;
}

fn unit_dot(b: u32, u: u32, x0: vec4<f32>, x1: vec4<f32>, x2: vec4<f32>, x3: vec4<f32>, xs: vec4<f32>) -> f32 {
  let q = ldw(b + 2u + 4u * u);
  // d * sum (q - 8) x = d * (sum q x - 8 sum x): the offset costs one multiply-add per unit, not per weight.
  return f16_at(b) * (dot(u8x4(q & NIB), x0) + dot(u8x4((q >> 4u) & NIB), x1) - 8.0 * (xs.x + xs.y));
}

fn run_deq(b: u32, r: u32) -> vec4<f32> {
  let q = ldw(b + 2u + 4u * (r & 3u)) >> (4u * (r >> 2u));
  return f16_at(b) * (u8x4(q & NIB) - 8.0);
}
