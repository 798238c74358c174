// Snake1d of Kokoro's generator (istftnet AdaINResBlock1): snake(u, a) = u + sin(a u)^2 / a, per channel a.
// sin is our own, not WGSL's: WGSL promises only an absolute 2^-11 for sin, and only on [-pi, pi] (SwiftShader,
// the browser tests' WebGPU, uses that room), while a u reaches tens of radians. Here: z = k pi/2 + r with
// k = round(z 2/pi) and r reduced with pi/2 in three parts (Cody and Waite; the first two have 12 significant
// bits, so k P1 and k P2 are exact for |k| < 2^12, |z| < 6400), then Taylor polynomials on |r| <= pi/4 (truncation
// under 2e-9). sin(z)^2 is sin(r)^2 for even k and cos(r)^2 for odd k. Error: a few f32 ulps of 1.
fn sin_squared(z: f32) -> f32 {
  let k = round(z * 0.6366197723675814);
  let r = ((z - k * 1.5703125) - k * 0.0004837512969970703) - k * 7.549790126404332e-8;
  let r2 = r * r;
  let s = r + r * r2 * (-0.16666666666666666 + r2 * (0.008333333333333333 + r2 * (-0.0001984126984126984
          + r2 * 2.7557319223985893e-6)));
  let c = 1.0 + r2 * (-0.5 + r2 * (0.041666666666666664 + r2 * (-0.001388888888888889 + r2 * (2.48015873015873e-5
          + r2 * -2.755731922398589e-7))));
  let odd = (i32(k) & 1) != 0;
  let v = select(s, c, odd);
  return v * v;
}

fn snake(u: f32, a: f32) -> f32 {
  return u + sin_squared(a * u) / a;
}
