// The input transform of the 1-D convolutions (conv1d_tiled, conv1d_direct, conv_transpose1d), a library the
// loader prepends (libs=("conv1d_input",)): an instance norm + AdaIN folded into a per-channel scale and shift,
// then LeakyReLU or Kokoro's Snake1d, applied to every real input value before the convolution sees it.
//   u = x;  if AFFINE: u = u * in_affine[c] + in_affine[C_IN + c];
//   if LEAKY: u = u if u >= 0 else SLOPE * u;  if SNAKE: u = u + sin(alpha[c] * u)^2 / alpha[c]
// The kernel including it declares the bindings `in_affine` (f32 [2 C_IN]) and `alpha` (f32 [C_IN]) and the
// constants C_IN, AFFINE, LEAKY, SLOPE, SNAKE.

fn conv_input(v: f32, c: u32) -> f32 {
  var u = v;
  if (AFFINE) {
    u = u * in_affine[c] + in_affine[C_IN + c];
  }
  if (LEAKY) {
    u = select(SLOPE * u, u, u >= 0.0);
  }
  if (SNAKE) {
    let a = alpha[c];
    u = u + conv_sin_squared(a * u) / a;
  }
  return u;
}

// sin(v)^2 for finite v with an error that does not depend on the device: WGSL only promises sin an absolute
// error of 2^-11 on [-pi, pi] and nothing outside, and GPUs' fast sines lose accuracy as |v| grows. sin^2 has
// period pi: r = v - n pi with n = round(v / pi), the Cody-Waite way (PI_HI has 8 significant bits, so n PI_HI
// is exact for |n| < 2^16 and v - n PI_HI is exact by Sterbenz), then the Taylor series of sin to r^13, whose
// truncation error is below 1e-9 for |r| <= 1.6 (n may round to a neighbour when v / pi is near a half integer,
// so |r| can pass pi / 2 by a little; the clamp only keeps absurd |v| >= 2e5 bounded). Simulated in numpy f32
// over |v| <= 3e4: |error| <= (4.4 + 5.1e-4 |v|) 2^-24.
const PI_HI: f32 = 3.140625;
const PI_LO: f32 = 0.0009676535846665502;  // f32(pi - PI_HI); pi - PI_HI - PI_LO = 5.1e-12

fn conv_sin_squared(v: f32) -> f32 {
  let n = round(v * 0.3183098861837907);
  let r = clamp((v - n * PI_HI) - n * PI_LO, -1.6, 1.6);
  let r2 = r * r;
  let p = -1.6666667e-1 + r2 * (8.3333338e-3 + r2 * (-1.9841270e-4 + r2 * (2.7557319e-6 + r2 * (-2.5052108e-8
          + r2 * 1.6059044e-10))));
  let s = r + r * r2 * p;
  return s * s;
}
