// Q8_0: blocks of 32 weights in 34 bytes: d (f16), then 32 signed bytes q; w = d * q.
// The 34-byte stride puts every other block on a 2-byte boundary, so quants are read with ldw/ldw2.
// A matvec unit is 8 consecutive weights (one 8-byte read), 4 units per block.
// See quant/f32.wgsl for the interface.
const QK: u32 = 32u;
const BLOCK_BYTES: u32 = 34u;
const UPB: u32 = 4u;
const UNIT_RUNS: u32 = 2u;

fn unit_run(u: u32, k: u32) -> u32 {
  return 2u * u + k;
}

fn unit_dot(b: u32, u: u32, x0: vec4<f32>, x1: vec4<f32>, x2: vec4<f32>, x3: vec4<f32>, xs: vec4<f32>) -> f32 {
  let q = ldw2(b + 2u + 8u * u);
  return f16_at(b) * (dot(i8x4(q.x), x0) + dot(i8x4(q.y), x1));
}

fn run_deq(b: u32, r: u32) -> vec4<f32> {
  return f16_at(b) * i8x4(ldw(b + 2u + 4u * r));
}
