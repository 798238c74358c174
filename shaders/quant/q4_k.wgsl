// Q4_K: super-blocks of 256 weights in 144 bytes: d, dmin (f16), 12 bytes of 6-bit scales and mins
// (quant/k_scales.wgsl), then 128 bytes of nibbles in four groups of 32 bytes; group g holds weights
// 64g + l (low nibble of byte l) and 64g + 32 + l (high nibble). w = d*scale*q - dmin*min per sub-block of 32.
// A matvec unit is two consecutive quant words (8 bytes) of one group: 16 weights in 4 runs that share one
// decode of the two sub-blocks' scales. 144 = 9 * 16, so every block and quant word is aligned.
// See quant/f32.wgsl for the interface.
const QK: u32 = 256u;
const BLOCK_BYTES: u32 = 144u;
const UPB: u32 = 16u;
const UNIT_RUNS: u32 = 4u;

// Unit u: group g = u / 4, bytes l = 8 (u % 4) .. l + 7. Runs: low nibbles (64g + l, +4), high (+32, +36).
fn unit_run(u: u32, k: u32) -> u32 {
  return 16u * (u >> 2u) + 2u * (u & 3u) + (k & 1u) + 8u * (k >> 1u);
}

fn unit_dot(b: u32, u: u32, x0: vec4<f32>, x1: vec4<f32>, x2: vec4<f32>, x3: vec4<f32>, xs: vec4<f32>) -> f32 {
  let g = u >> 2u;
  let i = (b >> 2u) + 4u + 8u * g + 2u * (u & 3u);
  let q0 = W[i];
  let q1 = W[i + 1u];
  let m = k_scale_min2(b, g);
  // sum (a q - m) x = a sum q x - m sum x: the mins cost one multiply-add per sub-block, not per weight.
  return m.x * (dot(u8x4(q0 & NIB), x0) + dot(u8x4(q1 & NIB), x1)) - m.z * (xs.x + xs.y)
       + m.y * (dot(u8x4((q0 >> 4u) & NIB), x2) + dot(u8x4((q1 >> 4u) & NIB), x3)) - m.w * (xs.z + xs.w);
}

// Run r: sub-block j = r / 8 (group j / 2, nibble j % 2), bytes 4 (r % 8) .. +3 of the group.
fn run_deq(b: u32, r: u32) -> vec4<f32> {
  let j = r >> 3u;
  let q = (W[(b >> 2u) + 4u + 8u * (j >> 1u) + (r & 7u)] >> (4u * (j & 1u))) & NIB;
  let m = k_scale_min(b, j);
  return m.x * u8x4(q) - m.y;
}
