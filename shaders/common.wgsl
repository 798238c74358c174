// Prepended to every kernel (see rullama_py/gpu.py, "Specialisation"). Keep it to tiny helpers that many
// kernels share; anything bigger belongs in its own file passed through `libs=`.

// Per-run values of a recorded graph that change between runs (decode step, prefill chunk). The model
// rewrites this 32-byte uniform before each submit; kernels that need it bind it explicitly.
struct Step {
  pos: u32,       // absolute position of the first token of this run
  n_tokens: u32,  // tokens in this run (1 when decoding)
  n_kv: u32,      // keys in the cache after this run (pos + n_tokens)
  seed: u32,      // sampler seed
  counter: u32,   // sampler step counter (with seed, picks the random number)
  pad0: u32,
  pad1: u32,
  pad2: u32,
}

fn gelu_tanh(x: f32) -> f32 {
  // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), written with exp so large |x| cannot overflow tanh.
  let u = 0.7978845608028654 * (x + 0.044715 * x * x * x);
  let t = 1.0 - 2.0 / (exp(2.0 * clamp(u, -15.0, 15.0)) + 1.0);
  return 0.5 * x * (1.0 + t);
}
