// Magnitude and phase of the short-time Fourier transform (kokoro's TorchSTFT.transform, as the generator stacks
// it): torch.stft(x, N, HOP, win_length N, window = hann_window(N, periodic=True), center=True,
// pad_mode='reflect'), then [abs(X) | angle(X)] over the NB = N / 2 + 1 bins. Time-major:
//   X[f, b]          = sum_{j < N} w[j] x[reflect(HOP f + j - N / 2)] e^(-2 pi i b j / N),  w[j] = sin^2(pi j / N)
//   out[f, b]        = |X[f, b]|,   out[f, NB + b] = atan2(Im X[f, b], Re X[f, b])
// for the L / HOP + 1 frames of the L real samples; reflect mirrors about the first and last real sample without
// repeating them (torch's reflect padding, which needs L > N / 2; shorter inputs fold again, periodically), so
// samples from L on are never read. Im X of bin 0 and bin N / 2 is exactly +0.0, as torch's real FFT leaves it,
// and so is every Im X of frame 0, which is real in exact arithmetic (its samples are even about the frame's
// centre: reflect padding, symmetric window): a negative real part then has angle +pi, never -pi (atan2 of -0.0
// or of a rounding error's -1e-9 would give -pi; torch's own sign there depends on its FFT's rounding).
// x: f32 [IN]; step: Step, n_tokens = L (at most IN); out: f32 [ROWS, 2 NB], rows from L / HOP + 1 on written as 0.
// One thread per frame, the windowed frame and the N twiddles in registers, the bins as direct sums (N = 20: 220
// complex products a frame; an FFT would not pay). Needs libs=("signal_lib",). Constants: N, HOP, NB, IN, ROWS, WG.
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

// Index of padded position p (may be negative or >= n) in a signal of n samples, reflected about its ends.
fn reflect(p: i32, n: i32) -> i32 {
  if (n <= 1) {
    return 0;
  }
  let period = 2 * (n - 1);
  var q = p % period;
  if (q < 0) {
    q += period;
  }
  return select(q, period - q, q >= n);
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let f = (wid.y * nwg.x + wid.x) * WG + lid;
  if (f >= ROWS) {
    return;
  }
  let n = min(step.n_tokens, IN);
  let row = f * 2u * NB;
  if (f > n / HOP) {
    for (var b = 0u; b < 2u * NB; b++) {
      out[row + b] = 0.0;
    }
    return;
  }
  var frame: array<f32, N>;  // windowed samples
  var cos_m: array<f32, N>;  // cos(2 pi m / N)
  var sin_m: array<f32, N>;
  for (var j = 0u; j < N; j++) {
    let sine = sin_turns(f32(j) * (0.5 / f32(N)));  // sin(pi j / N)
    var v = 0.0;
    if (n > 0u) {
      v = x[reflect(i32(HOP * f + j) - i32(N / 2u), i32(n))];
    }
    frame[j] = (sine * sine) * v;
    let t = f32(j) * (1.0 / f32(N));
    cos_m[j] = cos_turns(t);
    sin_m[j] = sin_turns(t);
  }
  for (var b = 0u; b < NB; b++) {
    var re = 0.0;
    var im = 0.0;
    var m = 0u;  // b j mod N
    for (var j = 0u; j < N; j++) {
      re += frame[j] * cos_m[m];
      im -= frame[j] * sin_m[m];
      m += b;
      if (m >= N) {
        m -= N;
      }
    }
    if (b == 0u || 2u * b == N || f == 0u) {
      im = 0.0;
    }
    out[row + b] = sqrt(re * re + im * im);
    out[row + NB + b] = atan2_ieee(im, re);
  }
}
