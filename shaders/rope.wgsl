// NeoX rotary position embedding (rotate_half layout), in place on x [n_tokens, heads, HD] f32.
// Pairs are (i, i + NROT/2) for i < NROT/2; dims NROT.. are left as they are. Token t sits at position
// step.pos + t, and its pair i turns by
//   theta = pos * FREQ_SCALE * BASE^(-2i/NROT) / ff[i]
// (llama.cpp's convention: the freq factor divides the angle; Gemma 4's proportional RoPE puts 1e30 in the
// factors of the dims that must not turn). One thread per (token, pair) computes cos/sin once and applies it to
// every head, so the transcendentals cost n_tokens * NROT/2, not n_tokens * heads * NROT/2.
// Entry points: `main` (no freq factors), `main_ff` (binding 2 = ff[NROT/2]) and `axial` (2-D positions of
// a vision tower, below).
// Constants: NH (heads rotated per token), HD, NROT, TSTRIDE (floats between tokens: lets a caller rotate the
// first NH heads of a wider row, e.g. q and k heads of a fused QKV buffer), LOG2_BASE, FREQ_SCALE, MAXT (token
// capacity of x; the dispatch covers it, threads of tokens >= step.n_tokens do nothing), WG.
@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> ff: array<f32>;

const HALF: u32 = NROT / 2u;

// Turns the pair (a, a + gap) of every head of token t by cs = (cos, sin): (x0, x1) -> (x0 c - x1 s, x1 c + x0 s).
fn turn_heads(t: u32, a: u32, gap: u32, cs: vec2<f32>) {
  for (var h = 0u; h < NH; h++) {
    let i0 = t * TSTRIDE + h * HD + a;
    let x0 = x[i0];
    let x1 = x[i0 + gap];
    x[i0] = x0 * cs.x - x1 * cs.y;
    x[i0 + gap] = x0 * cs.y + x1 * cs.x;
  }
}

fn rotate(t: u32, i: u32, factor: f32) {
  let inv = inv_freq(i, NROT) * FREQ_SCALE / factor;
  turn_heads(t, i, HALF, cos_sin(step.pos + t, inv));
}

fn thread_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
  return (wid.y * nwg.x + wid.x) * WG + lid;
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let idx = thread_index(wid, nwg, lid);
  let t = idx / HALF;
  if (t >= min(step.n_tokens, MAXT)) {
    return;
  }
  rotate(t, idx % HALF, 1.0);
}

@compute @workgroup_size(WG)
fn main_ff(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
  let idx = thread_index(wid, nwg, lid);
  let t = idx / HALF;
  if (t >= min(step.n_tokens, MAXT)) {
    return;
  }
  let i = idx % HALF;
  rotate(t, i, ff[i]);
}

// ---- axial: the 2-D RoPE of Gemma 4's vision tower, in place on x [MAXT, NH, HD] (TSTRIDE between tokens).
// Token t is the patch at column px, row py: pxy[t] = (px, py), written by the host. The first half of each head
// turns by px and the second by py, each half NeoX-style on its own: with Q = HD / 4, pair (i, i + Q) of the
// first half and (HD/2 + i, HD/2 + i + Q) of the second turn by p * BASE^(-2i / (HD/2)), i < Q (the same
// frequencies for both axes). Every token of the capacity is turned (no Step: the host's positions of tokens
// past the image are stale but finite, so their rows, which nothing reads, stay finite). NROT must be HD.
// A thread per (token, axis, i): HD / 2 threads per token, like a 1-D rope over the whole head.
@group(0) @binding(1) var<storage, read> pxy: array<vec2<u32>>;

const QTR: u32 = HD / 4u;

@compute @workgroup_size(WG)
fn axial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
  let idx = thread_index(wid, nwg, lid);
  let t = idx / HALF;
  if (t >= MAXT) {
    return;
  }
  let axis = (idx % HALF) / QTR;
  let i = idx % QTR;
  turn_heads(t, axis * HALF + i, QTR, cos_sin(pxy[t][axis], inv_freq(i, HALF)));
}
