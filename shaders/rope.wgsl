// NeoX rotary position embedding (rotate_half layout), in place on x [n_tokens, heads, HD] f32.
// Pairs are (i, i + NROT/2) for i < NROT/2; dims NROT.. are left as they are. Token t sits at position
// step.pos + t, and its pair i turns by
//   theta = pos * FREQ_SCALE * BASE^(-2i/NROT) / ff[i]
// (llama.cpp's convention: the freq factor divides the angle; Gemma 4's proportional RoPE puts 1e30 in the
// factors of the dims that must not turn). One thread per (token, pair) computes cos/sin once and applies it to
// every head, so the transcendentals cost n_tokens * NROT/2, not n_tokens * heads * NROT/2.
// Entry points: `main` (no freq factors) and `main_ff` (binding 2 = ff[NROT/2]).
// Constants: NH (heads rotated per token), HD, NROT, TSTRIDE (floats between tokens: lets a caller rotate the
// first NH heads of a wider row, e.g. q and k heads of a fused QKV buffer), LOG2_BASE, FREQ_SCALE, MAXT (token
// capacity of x; the dispatch covers it, threads of tokens >= step.n_tokens do nothing), WG.
@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> ff: array<f32>;

const HALF: u32 = NROT / 2u;
const INV_TWO_PI: f32 = 0.15915494309189535;
const TWO_PI: f32 = 6.283185307179586;

fn rotate(t: u32, i: u32, factor: f32) {
  // Inverse frequency from exp2 of a host-computed log2(base) (f64 there), not pow(): pow's error grows with
  // the exponent. Then range-reduce in turns: GPU sin/cos are only accurate on [-pi, pi] (WGSL guarantees
  // 2^-11 absolute there and nothing outside), and theta reaches ~1e5 rad at 128K context.
  let inv = exp2(-f32(2u * i) / f32(NROT) * LOG2_BASE) * FREQ_SCALE / factor;
  let turns = f32(step.pos + t) * (inv * INV_TWO_PI);
  let ang = (turns - round(turns)) * TWO_PI;
  let c = cos(ang);
  let s = sin(ang);
  for (var h = 0u; h < NH; h++) {
    let a = t * TSTRIDE + h * HD + i;
    let x0 = x[a];
    let x1 = x[a + HALF];
    x[a] = x0 * c - x1 * s;
    x[a + HALF] = x0 * s + x1 * c;
  }
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
