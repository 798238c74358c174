// Q5_K: super-blocks of 256 weights in 176 bytes: d, dmin (f16), 12 bytes of scales and mins
// (quant/k_scales.wgsl), 32 bytes qh, then 128 bytes of low nibbles laid out as in Q4_K. The 5th bit of
// weight 32j + l (sub-block j) is bit j of qh byte l. w = d*scale*q - dmin*min.
// A matvec unit is two quant words of one group plus the two matching qh words: 16 weights in 4 runs, as in
// Q4_K. 176 = 11 * 16, so every word is aligned. See quant/f32.wgsl for the interface.
const QK: u32 = 256u;
const BLOCK_BYTES: u32 = 176u;
const UPB: u32 = 16u;
const UNIT_RUNS: u32 = 4u;

const BIT0: u32 = 0x01010101u;

fn unit_run(u: u32, k: u32) -> u32 {
  return 16u * (u >> 2u) + 2u * (u & 3u) + (k & 1u) + 8u * (k >> 1u);
}

fn unit_dot(b: u32, u: u32, x0: vec4<f32>, x1: vec4<f32>, x2: vec4<f32>, x3: vec4<f32>, xs: vec4<f32>) -> f32 {
  let g = u >> 2u;
  let i = b >> 2u;
  let iq = i + 12u + 8u * g + 2u * (u & 3u);
  let ih = i + 4u + 2u * (u & 3u);
  let q0 = W[iq];
  let q1 = W[iq + 1u];
  let h0 = W[ih] >> (2u * g);
  let h1 = W[ih + 1u] >> (2u * g);
  let m = k_scale_min2(b, g);
  return m.x * (dot(u8x4((q0 & NIB) | ((h0 & BIT0) << 4u)), x0) + dot(u8x4((q1 & NIB) | ((h1 & BIT0) << 4u)), x1))
       - m.z * (xs.x + xs.y)
       + m.y * (dot(u8x4(((q0 >> 4u) & NIB) | ((h0 & (BIT0 << 1u)) << 3u)), x2)
              + dot(u8x4(((q1 >> 4u) & NIB) | ((h1 & (BIT0 << 1u)) << 3u)), x3))
       - m.w * (xs.z + xs.w);
}

fn run_deq(b: u32, r: u32) -> vec4<f32> {
  let j = r >> 3u;
  let i = b >> 2u;
  let ql = (W[i + 12u + 8u * (j >> 1u) + (r & 7u)] >> (4u * (j & 1u))) & NIB;
  let qh = ((W[i + 4u + (r & 7u)] >> j) & BIT0) << 4u;
  let m = k_scale_min(b, j);
  return m.x * u8x4(ql | qh) - m.y;
}
