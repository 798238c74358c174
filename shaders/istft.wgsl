// Inverse short-time Fourier transform (kokoro's TorchSTFT.inverse as Generator.forward ends with it):
// torch.istft(mag e^(i phase), N, HOP, win_length N, window = hann_window(N, periodic=True), center=True) over
// the M real frames of spec, time-major:
//   CONV_POST (the generator): mag = exp(spec[f, b]), phase = sin(spec[f, NB + b]) (the sine of the raw channel,
//                              used as the angle, as kokoro does); else mag = spec[f, b], phase = spec[f, NB + b]
//                              (what stft.wgsl writes: an exact inverse of it);
//   y_f[j] = irfft(X[f])[j] = (Re X[f, 0] + (-1)^j Re X[f, N/2] + 2 sum_{0 < b < N/2} Re(X[f, b] e^(2 pi i b j / N))) / N
//            (irfft ignores the imaginary parts of bins 0 and N / 2);
//   out[t] = sum_f w[j] y_f[j] / sum_f w[j]^2,   j = t + N / 2 - HOP f,  over the frames f < M with 0 <= j < N,
// w[j] = sin^2(pi j / N): overlap-add divided by the summed squared window, the first and last N / 2 samples
// dropped, HOP (M - 1) samples in all.
// spec: f32 [FRAMES, 2 NB]; step: Step, n_tokens = M (at most FRAMES); out: f32 [OUT], samples from HOP (M - 1)
// on written as 0.
// One thread per output sample, summing its N / HOP overlapping frames (no atomics). Neighbouring samples share
// frames, so each workgroup first turns the frames it spans (CACHE) into complex bins in workgroup memory, once.
// Even N only. Needs libs=("signal_lib",). Constants: N, HOP, NB, FRAMES, OUT, CACHE, CONV_POST, WG.
@group(0) @binding(0) var<storage, read> spec: array<f32>;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

var<workgroup> bins: array<vec2<f32>, CACHE * NB>;  // (Re, Im) X of frames first .. first + CACHE - 1
var<workgroup> twiddle: array<vec2<f32>, N>;  // (cos, sin)(2 pi m / N)

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let t0 = (wid.y * nwg.x + wid.x) * WG;  // this workgroup's first sample
  let frames = min(step.n_tokens, FRAMES);
  let total = select(0u, HOP * (frames - 1u), frames > 0u);
  // frames that reach sample t0 (padded position t0 + N / 2) start after (t0 + N / 2 - N) / HOP
  let q0 = t0 + N / 2u;
  let first = select(0u, (q0 - N) / HOP + 1u, q0 >= N);
  for (var e = lid; e < CACHE * NB; e += WG) {
    let f = first + e / NB;
    let b = e % NB;
    var v = vec2<f32>(0.0, 0.0);
    if (f < frames && t0 < total) {
      let a = spec[f * 2u * NB + b];
      let p = spec[f * 2u * NB + NB + b];
      if (CONV_POST) {
        let sc = sincos_rad(sincos_rad(p).x);
        v = exp(a) * vec2<f32>(sc.y, sc.x);
      } else {
        let sc = sincos_rad(p);
        v = a * vec2<f32>(sc.y, sc.x);
      }
    }
    bins[e] = v;
  }
  for (var m = lid; m < N; m += WG) {
    let t = f32(m) * (1.0 / f32(N));
    twiddle[m] = vec2<f32>(cos_turns(t), sin_turns(t));
  }
  workgroupBarrier();
  let t = t0 + lid;
  if (t >= OUT) {
    return;
  }
  if (t >= total) {
    out[t] = 0.0;
    return;
  }
  let q = t + N / 2u;
  let f_lo = select(0u, (q - N) / HOP + 1u, q >= N);
  let f_hi = min(q / HOP, frames - 1u);
  var y = 0.0;
  var env = 0.0;
  for (var f = f_lo; f <= f_hi; f++) {
    let j = q - HOP * f;
    let c = (f - first) * NB;
    var s = bins[c].x + select(bins[c + N / 2u].x, -bins[c + N / 2u].x, (j & 1u) == 1u);
    var m = j;  // b j mod N
    for (var b = 1u; b < N / 2u; b++) {
      let tw = twiddle[m];
      s += 2.0 * (bins[c + b].x * tw.x - bins[c + b].y * tw.y);
      m += j;
      if (m >= N) {
        m -= N;
      }
    }
    let sine = sin_turns(f32(j) * (0.5 / f32(N)));  // sin(pi j / N)
    let window = sine * sine;
    y += window * s;
    env += window * window;
  }
  out[t] = y * (1.0 / f32(N)) / env;
}
