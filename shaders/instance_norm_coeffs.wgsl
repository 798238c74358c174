// Kokoro's AdaIN1d (InstanceNorm1d over time, eps, biased variance, no affine; then (1 + gamma) xn + beta with
// the style's gamma and beta) folded into a per-channel scale and shift, so that
//   AdaIN1d(x)[t, c] = x[t, c] * out[c] + out[C + c]
//   out[c]     = rstd_c * (1 + gamma_c),  rstd_c = 1 / sqrt(var_c + EPS)
//   out[C + c] = beta_c - mean_c * out[c]
// mean_c, var_c over the real rows t < n = min(step.n_tokens, ROWS_CAP) of x: f32 [ROWS_CAP, C] (time-major);
// gamma_c = style[STYLE_OFFSET + c], beta_c = style[STYLE_OFFSET + C + c] (HAS_STYLE; else 0 and 0).
//
// Two dispatches, for long sequences (30 s of speech: 150,000 rows of 128 channels) with a mean far from 0:
// `partials`: one thread per (block of R rows, channel), neighbouring threads on neighbouring channels of the
//   same rows (coalesced reads, no barriers: they cost more than the arithmetic on CPU drivers). The values are
//   shifted by K_c, the median of x[0, c], x[n / 2, c] and x[n - 1, c]: a typical value of the channel, so the
//   sums below carry its spread rather than its offset from zero (a mean of 100 with a spread of 1), and not an
//   outlier's either (convolutions can leave the first or the last row far off: the median skips one of them).
//   They are kept in registers and reduced in two passes: the block's sum S_b = sum (x - K) and, around the
//   block's mean, Q_b = sum (x - K - S_b / n_b)^2. part[c * NB + b] = S_b, part[(C + c) * NB + b] = Q_b.
// `finish`: one workgroup of WG_F threads per channel combines the blocks (Chan et al.'s pairwise formula, in
//   two passes again): m = sum_b S_b / n, M2 = sum_b (Q_b + n_b (S_b / n_b - m)^2); var = M2 / n,
//   mean = K + m. Both sums are trees over the workgroup.
// A length of 0 gives mean 0 and var 0. Constants: C, ROWS_CAP, R (rows per block), NB (blocks: ceil(ROWS_CAP /
// R)), WG (threads per workgroup of `partials`), WG_F (a power of two), EPS, HAS_STYLE, STYLE_OFFSET.
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read_write> part_out: array<f32>;  // `partials`: [2, C, NB]

@group(0) @binding(2) var<storage, read> part: array<f32>;            // `finish`
@group(0) @binding(3) var<storage, read> style: array<f32>;           // HAS_STYLE; else any read-only buffer
@group(0) @binding(4) var<storage, read_write> out: array<f32>;       // [2C]

fn real_rows() -> u32 {
  return min(step.n_tokens, ROWS_CAP);
}

// The shift K_c of channel c over n >= 1 real rows (the same in both entry points).
fn shift_of(c: u32, n: u32) -> f32 {
  let a = x[c];
  let b = x[(n / 2u) * C + c];
  let d = x[(n - 1u) * C + c];
  return max(min(a, b), min(max(a, b), d));
}

@compute @workgroup_size(WG)
fn partials(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
  let i = (wid.y * nwg.x + wid.x) * WG + lid;
  let blk = i / C;
  let c = i % C;
  let n = real_rows();
  if (blk >= NB || blk * R >= n) {
    return;  // no barriers below: threads may leave on their own
  }
  let row0 = blk * R;
  let nb = min(R, n - row0);
  let k_shift = shift_of(c, n);
  var v: array<f32, R>;
  var s = 0.0;
  for (var j = 0u; j < R; j++) {
    if (j < nb) {
      let d = x[(row0 + j) * C + c] - k_shift;
      v[j] = d;
      s += d;
    }
  }
  let m = s / f32(nb);
  var q = 0.0;
  for (var j = 0u; j < R; j++) {
    if (j < nb) {
      let e = v[j] - m;
      q += e * e;
    }
  }
  part_out[c * NB + blk] = s;
  part_out[(C + c) * NB + blk] = q;
}

var<workgroup> red: array<f32, WG_F>;

fn workgroup_sum(lid: u32, v: f32) -> f32 {
  red[lid] = v;
  workgroupBarrier();
  for (var stride = WG_F / 2u; stride > 0u; stride /= 2u) {
    if (lid < stride) {
      red[lid] += red[lid + stride];
    }
    workgroupBarrier();
  }
  let total = red[0];
  workgroupBarrier();
  return total;
}

@compute @workgroup_size(WG_F)
fn finish(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let c = wid.x;
  let n = real_rows();
  let blocks = (n + R - 1u) / R;
  var s = 0.0;
  for (var blk = lid; blk < blocks; blk += WG_F) {
    s += part[c * NB + blk];
  }
  let m = workgroup_sum(lid, s) / f32(max(n, 1u));
  var q = 0.0;
  for (var blk = lid; blk < blocks; blk += WG_F) {
    let nb = f32(min(R, n - blk * R));
    let d = part[c * NB + blk] / nb - m;
    q += part[(C + c) * NB + blk] + nb * d * d;
  }
  let m2 = workgroup_sum(lid, q);
  if (lid == 0u) {
    let rstd = inverseSqrt(m2 / f32(max(n, 1u)) + EPS);
    var gamma = 0.0;
    var beta = 0.0;
    if (HAS_STYLE) {
      gamma = style[STYLE_OFFSET + c];
      beta = style[STYLE_OFFSET + C + c];
    }
    let scale = rstd * (1.0 + gamma);
    let mean = select(0.0, shift_of(c, max(n, 1u)) + m, n > 0u);
    out[c] = scale;
    out[C + c] = beta - mean * scale;
  }
}
