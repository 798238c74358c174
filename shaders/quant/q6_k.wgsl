// Q6_K: super-blocks of 256 weights in 210 bytes: ql (128 B of low nibbles), qh (64 B of 2-bit high parts),
// 16 signed 8-bit scales (one per 16 weights), d (f16); w = d * scale * (q - 32). Each half n of 128 weights
// uses ql bytes 64n.., qh bytes 32n.., scales 8n..; within a half, weight 32k + l (k 0..3, l 0..31) takes
// the low nibble of ql[l] (k=0), ql[l+32] (k=1), the high nibble of ql[l] (k=2), ql[l+32] (k=3), and bits
// 2k..2k+1 of qh[l]. The 210-byte stride leaves every other block on a 2-byte boundary (ldw reads).
// A matvec unit is one word of ql at l, the word at l+32 and the qh word at l: 16 weights (4 runs, one per
// k) that share the qh and scale reads. See quant/f32.wgsl for the interface.
const QK: u32 = 256u;
const BLOCK_BYTES: u32 = 210u;
const UPB: u32 = 16u;
const UNIT_RUNS: u32 = 4u;

const BITS2: u32 = 0x03030303u;

// Unit u: half n = u / 8, bytes l = 4 (u % 8) .. l + 3; run k covers weights 128n + 32k + l ..
fn unit_run(u: u32, k: u32) -> u32 {
  return 32u * (u >> 3u) + 8u * k + (u & 7u);
}

fn unit_dot(b: u32, u: u32, x0: vec4<f32>, x1: vec4<f32>, x2: vec4<f32>, x3: vec4<f32>, xs: vec4<f32>) -> f32 {
  let n = u >> 3u;
  let l = 4u * (u & 7u);
  let qa = ldw(b + 64u * n + l);
  let qb = ldw(b + 64u * n + 32u + l);
  let qh = ldw(b + 128u + 32u * n + l);
  // The 8 scales of this half; run k uses scale 2k + l / 16. Gather the four into one word (bytes: runs 0, 2,
  // 1, 3) so that a single conversion serves them.
  let s = ldw2(b + 192u + 8u * n) >> vec2<u32>(8u * (l >> 4u));
  let sc = i8x4((s.x & 0x00FF00FFu) | ((s.y & 0x00FF00FFu) << 8u)) * f16_at(b + 208u);
  // sum s (q - 32) x = s (sum q x - 32 sum x) for each run.
  let d0 = dot(u8x4((qa & NIB) | ((qh & BITS2) << 4u)), x0) - 32.0 * xs.x;
  let d1 = dot(u8x4((qb & NIB) | (((qh >> 2u) & BITS2) << 4u)), x1) - 32.0 * xs.y;
  let d2 = dot(u8x4(((qa >> 4u) & NIB) | (((qh >> 4u) & BITS2) << 4u)), x2) - 32.0 * xs.z;
  let d3 = dot(u8x4(((qb >> 4u) & NIB) | (((qh >> 6u) & BITS2) << 4u)), x3) - 32.0 * xs.w;
  return sc.x * d0 + sc.z * d1 + sc.y * d2 + sc.w * d3;
}

fn run_deq(b: u32, r: u32) -> vec4<f32> {
  let n = r >> 5u;
  let k = (r >> 3u) & 3u;
  let l = 4u * (r & 7u);
  let ql = (ldw(b + 64u * n + 32u * (k & 1u) + l) >> (4u * (k >> 1u))) & NIB;
  let qh = ((ldw(b + 128u + 32u * n + l) >> (2u * k)) & BITS2) << 4u;
  // extractBits on an i32 sign-extends the 8-bit scale.
  let sc = f32(extractBits(bitcast<i32>(u8_at(b + 192u + 8u * n + 2u * k + (l >> 4u))), 0u, 8u));
  return (f16_at(b + 208u) * sc) * (u8x4(ql | qh) - 32.0);
}
