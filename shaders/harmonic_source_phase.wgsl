// The hn-NSF source's accumulated phases (the first of harmonic_source's two dispatches; see harmonic_source.wgsl
// for the maths): for each real frame i < L and harmonic k = 1..H,
//   phase[i, k - 1] = sum_{j <= i} frac(f0[j] k / R)   in turns, as 32-bit fixed point (2^32 = one turn)
// = (U * torch's cumsum of the downsampled rad) mod 1. Unsigned 32-bit addition wraps, which is exactly the
// reduction modulo one turn, and is associative: the parallel scan below gives bit for bit the sum a serial loop
// would, and no rounding accumulates over a sentence (each term carries only its own ~1e-7 turns, see
// phase_advance in signal_lib.wgsl).
// f0: f32 [FRAMES] (the F0 curve at 2F rows); step: the Step uniform, n_tokens = L, the real frames (at most
// FRAMES); phase: u32 [FRAMES, H], rows from L on written as 0.
// One workgroup: each thread sums a run of consecutive frames, the H runs' totals are scanned in workgroup memory
// (one thread per harmonic, serial over the WG totals), and each thread walks its run again writing the prefix.
// Needs libs=("signal_lib",). Constants: FRAMES, H (<= 16), HI_MASK, R, INV_R, U, WG.
@group(0) @binding(0) var<storage, read> f0: array<f32>;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read_write> phase: array<u32>;

var<workgroup> totals: array<u32, H * WG>;  // [harmonic][thread]

// frac(f0 k / R) as 32-bit fixed-point turns.
fn advance_fixed(f: f32, k: u32) -> u32 {
  let d = phase_advance(f, f32(k), HI_MASK, R, INV_R, i32(U));
  return u32(d.y * 4294967296.0);
}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32) {
  let n = min(step.n_tokens, FRAMES);
  let per = (n + WG - 1u) / WG;
  let start = min(lid * per, n);
  let end = min(start + per, n);
  var acc: array<u32, H>;
  for (var k = 0u; k < H; k++) {
    acc[k] = 0u;
  }
  for (var i = start; i < end; i++) {
    let f = f0[i];
    for (var k = 0u; k < H; k++) {
      acc[k] += advance_fixed(f, k + 1u);
    }
  }
  for (var k = 0u; k < H; k++) {
    totals[k * WG + lid] = acc[k];
  }
  workgroupBarrier();
  if (lid < H) {  // exclusive prefix over the threads' runs, one harmonic per thread
    var s = 0u;
    for (var t = 0u; t < WG; t++) {
      let v = totals[lid * WG + t];
      totals[lid * WG + t] = s;
      s += v;
    }
  }
  workgroupBarrier();
  for (var k = 0u; k < H; k++) {
    acc[k] = totals[k * WG + lid];
  }
  for (var i = start; i < end; i++) {
    let f = f0[i];
    for (var k = 0u; k < H; k++) {
      acc[k] += advance_fixed(f, k + 1u);
      phase[i * H + k] = acc[k];
    }
  }
  for (var i = n + lid; i < FRAMES; i += WG) {
    for (var k = 0u; k < H; k++) {
      phase[i * H + k] = 0u;
    }
  }
}
