// One candidate of the voice trainer's hill climb (src/rullama_py/ops/search.py), written where Kokoro reads its
// voice:
//   cand[slot, i] = best[i] + params.step * scale[i] * z(seed, counter, i)        (the candidate's offset)
//   style[i]      = base[i] + cand[slot, i],   style_dec = style[0 .. 128), style_pros = style[128 .. 256)
// z: standard normals, counter-based (the same on every device; search_noise() in ops/search.py is the host's
// copy): for index k = counter * DIM + i, h1 = pcg(pcg(k ^ pcg(seed)) + seed), h2 = pcg(h1),
// u1 = ((h1 >> 8) + 1) / 2^24 in (0, 1], u2 = (h2 >> 8) / 2^24, z = sqrt(-2 ln u1) cos(2 pi u2).
// params.step = 0 writes the current best itself (the start loss, "play the current voice").
// base, best, scale: f32 [DIM]; cand: f32 [SLOTS, DIM]; style_dec, style_pros: f32 [DIM / 2].
// One workgroup of DIM threads. Needs libs=("signal_lib",) (ln_pos, cos_turns). Constants: DIM, SLOTS.
struct SearchParams {
  seed: u32,
  counter: u32,
  slot: u32,
  step: f32,
}

@group(0) @binding(0) var<uniform> params: SearchParams;
@group(0) @binding(1) var<storage, read> base: array<f32>;
@group(0) @binding(2) var<storage, read> best: array<f32>;
@group(0) @binding(3) var<storage, read> scale: array<f32>;
@group(0) @binding(4) var<storage, read_write> cand: array<f32>;
@group(0) @binding(5) var<storage, read_write> style_dec: array<f32>;
@group(0) @binding(6) var<storage, read_write> style_pros: array<f32>;

fn pcg(v: u32) -> u32 {
  let state = v * 747796405u + 2891336453u;
  let word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
  return (word >> 22u) ^ word;
}

@compute @workgroup_size(DIM)
fn main(@builtin(local_invocation_index) i: u32) {
  let k = params.counter * DIM + i;
  let h1 = pcg(pcg(k ^ pcg(params.seed)) + params.seed);
  let h2 = pcg(h1);
  let u1 = f32((h1 >> 8u) + 1u) * (1.0 / 16777216.0);
  let u2 = f32(h2 >> 8u) * (1.0 / 16777216.0);
  let z = sqrt(-2.0 * ln_pos(u1)) * cos_turns(u2);
  let d = best[i] + params.step * scale[i] * z;
  cand[min(params.slot, SLOTS - 1u) * DIM + i] = d;
  let s = base[i] + d;
  if (i < DIM / 2u) {
    style_dec[i] = s;
  } else {
    style_pros[i - DIM / 2u] = s;
  }
}
