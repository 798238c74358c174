// The log-mel spectrum of one frame per workgroup, and the frame's mean over bands (its "energy"), for the voice
// trainer's timbre signature (src/rullama_py/ops/mel.py):
//   X[f, b]   = sum_{j < N} w[j] x[HOP f + j - N / 2] e^(-2 pi i b j / N)     (centred: zeros outside 0 .. L - 1)
//   L[f, m]   = ln(sum_b fb[m, b] |X[f, b]|^2 + 1e-8),   energy[f] = mean_m L[f, m]
// for the L / HOP + 1 frames of the L real samples; rows from there to FRAMES are written as 0.
// x: f32 [IN]; step: Step, n_tokens = L (at most IN); tables: f32 [2 N]: the window w[0 .. N) then the twiddles
// (cos, sin)(2 pi k / N) for k < N / 2, interleaved (both computed in float64 on the host, so no device's sin or
// cos enters); fb: f32 [MELS, NB] (dense, NB = N / 2 + 1); bands: u32 [MELS, 2], the first and one-past-last
// bin where fb's row m is nonzero; out: f32 [FRAMES, MELS]; energy: f32 [FRAMES].
// A radix-2 FFT of the real frame as a complex one, in workgroup memory (8 KiB: N = 1024), WG threads a frame.
// Needs libs=("signal_lib",) (ln_pos). Constants: N, LOG2N, HOP, NB, MELS, IN, FRAMES, WG.
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> tables: array<f32>;
@group(0) @binding(3) var<storage, read> fb: array<f32>;
@group(0) @binding(4) var<storage, read> bands: array<u32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
@group(0) @binding(6) var<storage, read_write> energy: array<f32>;

var<workgroup> re: array<f32, N>;
var<workgroup> im: array<f32, N>;
var<workgroup> band_log: array<f32, MELS>;

fn bit_reverse(i: u32) -> u32 {
  return reverseBits(i) >> (32u - LOG2N);
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let f = wid.y * nwg.x + wid.x;
  if (f >= FRAMES) {
    return;
  }
  let n = min(step.n_tokens, IN);
  if (f > n / HOP) {
    for (var m = lid; m < MELS; m += WG) {
      out[f * MELS + m] = 0.0;
    }
    if (lid == 0u) {
      energy[f] = 0.0;
    }
    return;
  }
  // the windowed frame, stored in bit-reversed order for the in-place decimation-in-time FFT
  for (var j = lid; j < N; j += WG) {
    let p = i32(HOP * f + j) - i32(N / 2u);
    var v = 0.0;
    if (p >= 0 && p < i32(n)) {
      v = x[p];
    }
    let r = bit_reverse(j);
    re[r] = tables[j] * v;
    im[r] = 0.0;
  }
  workgroupBarrier();
  for (var s = 0u; s < LOG2N; s++) {
    let span = 1u << s;  // butterflies of width 2 span: (a, b) = (a + w b, a - w b), w = e^(-2 pi i k / (2 span))
    for (var t = lid; t < N / 2u; t += WG) {
      let k = t & (span - 1u);
      let a = ((t >> s) << (s + 1u)) + k;
      let b = a + span;
      let tw = (k << (LOG2N - 1u - s)) * 2u;  // twiddle index k N / (2 span), interleaved (cos, sin)
      let c = tables[N + tw];
      let sn = -tables[N + tw + 1u];
      let br = re[b] * c - im[b] * sn;
      let bi = re[b] * sn + im[b] * c;
      let ar = re[a];
      let ai = im[a];
      re[a] = ar + br;
      im[a] = ai + bi;
      re[b] = ar - br;
      im[b] = ai - bi;
    }
    workgroupBarrier();
  }
  for (var b = lid; b < NB; b += WG) {
    re[b] = re[b] * re[b] + im[b] * im[b];  // power; bins above N / 2 are the mirror image and not needed
  }
  workgroupBarrier();
  for (var m = lid; m < MELS; m += WG) {
    var acc = 0.0;
    for (var b = bands[2u * m]; b < bands[2u * m + 1u]; b++) {
      acc += fb[m * NB + b] * re[b];
    }
    let l = ln_pos(acc + 1e-8);
    out[f * MELS + m] = l;
    band_log[m] = l;
  }
  workgroupBarrier();
  if (lid == 0u) {
    var e = 0.0;
    for (var m = 0u; m < MELS; m++) {
      e += band_log[m];
    }
    energy[f] = e / f32(MELS);
  }
}
