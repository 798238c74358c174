// BF16 weights: the top half of an f32, so widening is a shift. See quant/f32.wgsl for the interface.
const QK: u32 = 8u;
const BLOCK_BYTES: u32 = 16u;
const UPB: u32 = 1u;
const UNIT_RUNS: u32 = 2u;

fn unit_run(u: u32, k: u32) -> u32 {
  return k;
}

fn bf16x2(w: u32) -> vec2<f32> {
  return bitcast<vec2<f32>>(vec2<u32>(w << 16u, w & 0xFFFF0000u));
}

fn run_deq(b: u32, r: u32) -> vec4<f32> {
  let w = ldw2(b + 8u * r);
  return vec4<f32>(bf16x2(w.x), bf16x2(w.y));
}

fn unit_dot(b: u32, u: u32, x0: vec4<f32>, x1: vec4<f32>, x2: vec4<f32>, x3: vec4<f32>, xs: vec4<f32>) -> f32 {
  let i = b >> 2u;
  return dot(vec4<f32>(bf16x2(W[i]), bf16x2(W[i + 1u])), x0) + dot(vec4<f32>(bf16x2(W[i + 2u]), bf16x2(W[i + 3u])), x1);
}
