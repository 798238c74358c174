// What the DiffusionGemma sampler's kernels share (denoise_noise, denoise_probs, denoise_accept; the step is
// described in src/rullama_py/ops/denoise.py): the uniform the host rewrites before every step, and the layouts
// of the buffers that pass between them. Constants used here: CAP (canvas positions the buffers hold).
//
// noise: u32 [2 * CAP]: the uniforms u (f32 bits) at [0, CAP), the renoise tokens n at [CAP, 2 * CAP).
// stats: vec4<u32> [CAP]: per position (entropy as f32 bits, argmax, the drawn token, 0).

struct DenoiseParams {
  inv_temp: f32,       // 1 / t of this step: proc = raw * inv_temp
  entropy_bound: f32,  // a position is accepted while the entropies below it sum to at most this
  n_pos: u32,          // canvas positions this step (<= CAP)
  vocab: u32,          // V, the length of a logits row
  seed: u32,           // the noise stream ...
  counter: u32,        // ... and the draw in it
  flags: u32,          // F_* below
  pad0: u32,
}

const F_NEW_CANVAS: u32 = 1u;   // first step of a canvas: no previous argmax, so not stable
const F_HOST_NOISE: u32 = 2u;   // the host wrote the noise buffer: denoise_noise leaves it alone
const F_INIT_CANVAS: u32 = 4u;  // denoise_noise also writes its renoise tokens into the canvas (a new canvas)
