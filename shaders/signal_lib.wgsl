// Helpers of the signal kernels (src/rullama_py/ops/signal.py: harmonic_source_phase.wgsl, harmonic_source.wgsl,
// stft.wgsl, istft.wgsl), passed with libs=("signal_lib",). No constants: everything comes in as arguments.
//
// The elementary functions are our own polynomials rather than WGSL's sin, cos, log and atan2, whose accuracy
// WGSL leaves loose (sin and cos to 2^-11 absolute, atan2 to 4096 ULP) and which differ between drivers: with
// these, a voice comes out the same on every device to f32 rounding, and the tests' error bounds hold anywhere.
// The bounds below were measured over dense grids in float32 and are what tests/kernels/test_signal.py assumes.

// sin(2 pi t) for t in turns, |t| < 2^22. t - round(t) and the fold onto [-1/4, 1/4] are exact (Sterbenz), so
// the only errors are the odd polynomial's (least squares on Chebyshev nodes, 3e-11 truncation) and its f32
// evaluation: at most 4 ULP of the result.
fn sin_turns(t: f32) -> f32 {
  var r = t - round(t);  // [-1/2, 1/2]
  if (r > 0.25) {
    r = 0.5 - r;  // sin(pi - x) = sin(x)
  } else if (r < -0.25) {
    r = -0.5 - r;
  }
  let r2 = r * r;
  return r * (6.2831854820251465 + r2 * (-41.34170150756836 + r2 * (81.60523223876953 + r2 * (-76.70439910888672
         + r2 * (42.01179885864258 + r2 * -14.40623664855957)))));
}

// cos(2 pi t) = sin(2 pi (1/4 - t)); 1/4 - t is exact for the multiples of 2^-24 below 1 that the noise
// draws, and otherwise off by at most half an ULP of |t| + 1/4.
fn cos_turns(t: f32) -> f32 {
  return sin_turns(0.25 - t);
}

// (sin x, cos x) for x in radians, |x| < 2^16 pi. Cody-Waite: x - k 2 pi with 2 pi split as 6.28125 (8 bits, so
// k * 6.28125 is exact) + 0.0019353071795864769, leaving an error of a few ULP of the reduced value.
fn sincos_rad(x: f32) -> vec2<f32> {
  let k = round(x * 0.15915493667125702);
  let r = (x - k * 6.28125) - k * 0.0019353071795864769;
  let t = r * 0.15915493667125702;
  return vec2<f32>(sin_turns(t), cos_turns(t));
}

// Natural log of a positive normal x: x = m 2^e with m in [sqrt(1/2), sqrt(2)), ln m = 2 atanh(s),
// s = (m - 1) / (m + 1), |s| <= 0.1716 (series to s^9: 2e-9 relative truncation), and ln 2 split so that e ln 2
// adds no rounding of its own. m - 1 is exact, so the relative error stays a few ULP even for x near 1.
fn ln_pos(x: f32) -> f32 {
  let bits = bitcast<u32>(x);
  var e = i32((bits >> 23u) & 0xffu) - 127;
  var m = bitcast<f32>((bits & 0x007fffffu) | 0x3f800000u);  // [1, 2)
  if (m > 1.4142135) {
    m = m * 0.5;
    e = e + 1;
  }
  let s = (m - 1.0) / (m + 1.0);
  let s2 = s * s;
  let p = 2.0 + s2 * (0.6666666865348816 + s2 * (0.4000000059604645 + s2 * (0.2857142984867096
          + s2 * 0.2222222238779068)));  // 2 atanh(s) / s
  let fe = f32(e);
  return fe * 0.693145751953125 + (fe * 1.4286068203094172e-06 + s * p);
}

// atan2(y, x) with IEEE 754's signed zeros: atan2(+0, x < 0) = +pi, atan2(-0, x < 0) = -pi, atan2(+-0, -0) = +-pi,
// atan2(+-0, +0) = +-0. The ratio is reduced to [0, 1], then to |z| <= tan(pi / 8) by atan z = pi/4 +
// atan((z - 1) / (z + 1)); the odd polynomial there is within 3e-10 of atan, so the result is within a few ULP
// of pi plus what the divisions round (a relative 2.5 ULP each, as WGSL allows).
fn atan2_ieee(y: f32, x: f32) -> f32 {
  let ax = abs(x);
  let ay = abs(y);
  let big = max(ax, ay);
  var a = 0.0;
  if (big > 0.0) {
    var z = min(ax, ay) / big;
    var base = 0.0;
    if (z > 0.41421356) {
      z = (z - 1.0) / (z + 1.0);
      base = 0.7853981633974483;
    }
    let z2 = z * z;
    a = base + z * (1.0 + z2 * (-0.3333331346511841 + z2 * (0.19998431205749512 + z2 * (-0.14243187010288239
        + z2 * (0.10592615604400635 + z2 * -0.060769855976104736)))));
    if (ay > ax) {
      a = 1.5707963267948966 - a;
    }
  }
  // Signs from the bits, so that -0.0 counts as negative (comparisons cannot see it).
  if ((bitcast<u32>(x) >> 31u) != 0u) {
    a = 3.141592653589793 - a;
  }
  return select(a, -a, (bitcast<u32>(y) >> 31u) != 0u);
}

// The per-frame advance of harmonic k of the hn-NSF source (see harmonic_source.wgsl), in turns:
//   D = U * rad = U * ((f0 k / SR) mod 1) = f0 k / R - U floor(f0 k / SR),   R = SR / U (24000 / 300 = 80)
// returned as (floor(D), D - floor(D)) = ((floor(f0 k / R) mod U), frac(f0 k / R)), both f32 (floor(D) < U is
// exact). Computed without ever rounding f0 k / R itself (up to ~56 turns for F0 500 Hz, k = 9, whose f32 ULP
// is 4e-6 turns): f0 = hi + lo, hi keeping the top 24 - KBITS mantissa bits (hi_mask clears the rest), so hi k
// is exact for k < 2^KBITS; then hi k = q R + rem exactly (q an integer, rem in about [0, R)), and only
// rem / R + lo k / R rounds, in [0, 1): frac is within 3 ULP(1) = 1.8e-7 turns of the exact value (1.25 ULP
// unless the sum lands within an ULP of an integer), for |f0 k| < 2^28 (about 3e7 Hz). inv_r = 1 / R; u = U.
fn phase_advance(f0: f32, k: f32, hi_mask: u32, r: f32, inv_r: f32, u: i32) -> vec2<f32> {
  let hi = bitcast<f32>(bitcast<u32>(f0) & hi_mask);
  let lo = f0 - hi;  // exact: the bits hi dropped
  let a = hi * k;  // exact
  let q = floor(a * inv_r);  // a * inv_r rounds, so q can be one off where a / R is near an integer
  let rem = a - q * r;  // exact: q R and a are multiples of a's ULP (<= 16), and |rem| < 2 R
  let s = rem * inv_r + (lo * k) * inv_r;  // in (-tiny, 1 + tiny)
  let carry = floor(s);
  let frac = min(s - carry, 0.99999994);  // s just below 0 rounds s + 1 up to 1
  let whole = i32(q + carry) % u;
  return vec2<f32>(f32(select(whole, whole + u, whole < 0)), frac);
}
