// RoPE angles shared by rope.wgsl and attention_inputs.wgsl. Uses the kernel's LOG2_BASE.

const INV_TWO_PI: f32 = 0.15915494309189535;
const TWO_PI: f32 = 6.283185307179586;

// BASE^(-2i / n) from exp2 of a host-computed log2(base) (f64 there), not pow(): pow's error grows with the
// exponent.
fn inv_freq(i: u32, n: u32) -> f32 {
  return exp2(-f32(2u * i) / f32(n) * LOG2_BASE);
}

// (cos, sin) of theta = pos * inv, range-reduced in turns: GPU sin/cos are only accurate on [-pi, pi] (WGSL
// guarantees 2^-11 absolute there and nothing outside), and theta reaches ~1e5 rad at 128K context.
fn cos_sin(pos: u32, inv: f32) -> vec2<f32> {
  let turns = f32(pos) * (inv * INV_TWO_PI);
  let ang = (turns - round(turns)) * TWO_PI;
  return vec2<f32>(cos(ang), sin(ang));
}
