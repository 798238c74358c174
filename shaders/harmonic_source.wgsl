// Kokoro's harmonic-plus-noise source (kokoro's SourceModuleHnNSF with its SineGen, as Generator.forward feeds
// it): from the F0 curve f0 [L] (2F frames), the excitation har[n], n < U L (U = 300 samples per frame at 24 kHz).
// torch's steps, for harmonics k = 1..H (f0_up = f0 repeated U times, nearest):
//   rad_k = (f0_up k / SR) mod 1 per sample, downsampled linearly by 1/U (align_corners=False): the mean of samples
//     U i + U/2 - 1 and U i + U/2, both in frame i, so exactly frame i's value, and the random initial phase torch
//     adds at sample 0 is never read (checked in torch);
//   phase = 2 pi cumsum over frames, times U, upsampled linearly by U (align_corners=False, clamped at both ends);
//   sine = sin(phase) SINE_AMP; uv = f0_up > VOICED_THRESHOLD; noise = (uv NOISE_STD + (1 - uv) SINE_AMP / 3) z;
//   har = tanh(b + sum_k w[k - 1] (sine_k uv + noise_k)).
// Sample n reads the frames i0 = floor(src) and i0 + 1, src = (n + 1/2) / U - 1/2 (clamped to 0), with weight
// lambda = src - i0; with c = U lambda = (2n + 1 - U) / 2 - U i0, an exact half-integer, the phase in turns is
//   U C[i0] + c rad[i0 + 1] = phase[i0] + (c / U) (D_int + D_frac)     (D = U rad[i0 + 1], see phase_advance)
//   = phase[i0] + ((2c D_int) mod 2U) / 2U + 2c D_frac / 2U            (mod 1)
// phase[i0] being the accumulated turns the first dispatch (harmonic_source_phase.wgsl) left, as 32-bit fixed
// point. So every sample's phase is reduced modulo one turn without ever forming torch's 1e5..1e6 radians (whose
// f32 ULP is up to 0.06 rad): the error is ~1e-7 turns per frame of the sum plus a few 1e-7 for the in-frame
// part. Samples before U/2 and after the last frame's middle take c = 0 (torch's edge clamp).
// The noise z is a standard normal drawn from (seed, n H + k - 1) (source_normal below; ops/signal.source_noise
// is the same in numpy), scaled by params.noise: 1 as trained, 0 for a deterministic source.
// f0: f32 [FRAMES]; w: f32 [H] (l_linear.weight [1, H]); b: f32 [1]; step: Step, n_tokens = L <= FRAMES;
// params: SourceParams; phase: u32 [FRAMES, H]; out: f32 [OUT], samples from U L on written as 0.
// One thread per output sample. Needs libs=("signal_lib",).
// Constants: FRAMES, H, HI_MASK, R, INV_R, U, OUT, SINE_AMP, NOISE_STD, VOICED_THRESHOLD, WG.
@group(0) @binding(0) var<storage, read> f0: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<uniform> step: Step;
@group(0) @binding(4) var<storage, read> params: SourceParams;
@group(0) @binding(5) var<storage, read> phase: array<u32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;

// Written by the model before each run (ops/signal.source_params_bytes).
struct SourceParams {
  seed: u32,
  noise: f32,  // scale of the noise: 1 as the model was trained, 0 for none
  pad0: u32,
  pad1: u32,
}

fn pcg_hash(v: u32) -> u32 {
  let state = v * 747796405u + 2891336453u;
  let word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
  return (word >> 22u) ^ word;
}

// A standard normal from (seed, index): two uniforms from a counter-based hash, then Box-Muller's cosine branch.
// u1 = (h1 >> 8 + 1) / 2^24 is in (0, 1] and u2 = (h2 >> 8) / 2^24 in [0, 1), both exact in f32.
fn source_normal(seed: u32, index: u32) -> f32 {
  let h1 = pcg_hash(pcg_hash(index ^ pcg_hash(seed)) + seed);
  let h2 = pcg_hash(h1);
  let u1 = f32((h1 >> 8u) + 1u) * (1.0 / 16777216.0);
  let u2 = f32(h2 >> 8u) * (1.0 / 16777216.0);
  return sqrt(-2.0 * ln_pos(u1)) * cos_turns(u2);
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let n = (wid.y * nwg.x + wid.x) * WG + lid;
  if (n >= OUT) {
    return;
  }
  let frames = min(step.n_tokens, FRAMES);
  if (n >= frames * U) {
    out[n] = 0.0;
    return;
  }
  let voiced = f0[n / U] > VOICED_THRESHOLD;
  // the frames this sample interpolates between, and 2c (twice U lambda)
  var i0 = 0u;
  var two_c = 0u;
  if (2u * n + 1u > U) {
    let s = 2u * n + 1u - U;
    i0 = s / (2u * U);
    two_c = s - 2u * U * i0;
  }
  if (i0 + 1u >= frames) {
    two_c = 0u;
  }
  let f_next = f0[min(i0 + 1u, frames - 1u)];  // only real frames are read
  let seed = params.seed;
  let noise_scale = params.noise * select(SINE_AMP / 3.0, NOISE_STD, voiced);
  var acc = b[0];
  for (var k = 1u; k <= H; k++) {
    // the in-frame phase, in turns: ((2c D_int) mod 2U + 2c D_frac) / 2U, in [0, 2)
    var in_frame = 0u;
    if (two_c > 0u) {
      let d = phase_advance(f_next, f32(k), HI_MASK, R, INV_R, i32(U));
      let x = (f32((two_c * u32(d.x)) % (2u * U)) + f32(two_c) * d.y) * (1.0 / f32(2u * U));
      in_frame = u32(fract(x) * 4294967296.0);
    }
    let turns = phase[i0 * H + k - 1u] + in_frame;  // wraps: mod 1 turn
    var v = 0.0;
    if (voiced) {
      v = sin_turns(f32(turns) * (1.0 / 4294967296.0)) * SINE_AMP;
    }
    if (noise_scale != 0.0) {
      v += noise_scale * source_normal(seed, n * H + k - 1u);
    }
    acc += w[k - 1u] * v;
  }
  // tanh(acc), written with exp so that no |acc| can overflow (as gelu_tanh in common.wgsl)
  out[n] = 1.0 - 2.0 / (exp(2.0 * clamp(acc, -15.0, 15.0)) + 1.0);
}
