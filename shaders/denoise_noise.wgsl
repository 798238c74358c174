// The sampler's random numbers for one step (src/rullama_py/ops/denoise.py): per canvas position a uniform u in
// [0, 1) for the draw and a renoise token n in [0, V), pure functions of (seed, counter), so that a seed gives the
// same canvases on every device and the host can compute them too (denoise_noise_host).
//   draw k = counter * 2 * n_pos + i;  u[i] = rand01(seed, k);  n[i] = hash(seed, k + n_pos) % V
// where hash is the 32-bit value rand01 takes its top 24 bits from (sample_lib.wgsl). The modulo is unbiased for a
// power-of-two V (Gemma's 262144) and biased by at most V / 2^32 otherwise.
// With F_HOST_NOISE the buffer is left as the host wrote it; with F_INIT_CANVAS the tokens also become the canvas
// (a new canvas is uniform random tokens: the same generator at a counter of its own).
// Needs libs=("sample_lib", "denoise_lib"). Constants: CAP, WG (256, as sample_lib needs).
@group(0) @binding(0) var<uniform> prm: DenoiseParams;
@group(0) @binding(1) var<storage, read_write> noise: array<u32>;
@group(0) @binding(2) var<storage, read_write> canvas: array<u32>;

// sample_lib's radix select calls rs_elem, which each kernel that selects defines; this one only draws numbers.
fn rs_elem(src: u32, j: u32) -> vec2<u32> {
  return NO_TOKEN;
}

fn noise_bits(seed: u32, k: u32) -> u32 {
  return pcg_hash(pcg_hash(k ^ pcg_hash(seed)) + seed);
}

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.x;
  let n = min(prm.n_pos, CAP);
  if (i >= n) {
    return;
  }
  if ((prm.flags & F_HOST_NOISE) == 0u) {
    let k = prm.counter * (2u * n) + i;
    noise[i] = bitcast<u32>(rand01(prm.seed, k));
    noise[CAP + i] = noise_bits(prm.seed, k + n) % prm.vocab;
  }
  if ((prm.flags & F_INIT_CANVAS) != 0u) {
    canvas[i] = noise[CAP + i];
  }
}
