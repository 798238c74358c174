"""float64 numpy reference of the DiffusionGemma sampler's ops (rullama_py.ops.denoise), written from the sampler's
description (transformers' DiffusionGemma `generate`: entropy-bound acceptance, inverse-CDF draws, renoising),
not from the kernels.

One denoising step over a canvas of C positions and a vocabulary of V:
  proc = raw / t;  p = softmax(proc);  H = -sum p log p;  argmax;  draw = first i with cumsum(p)[i] > u
  accept the positions whose strictly lower-entropy positions (sorted by H, then position) sum to <= bound
  canvas = accepted ? draw : renoise token;  stable = argmax equals the previous step's argmax everywhere.
Self-conditioning input: soft = scale * P @ E (mix_rows).

The error bounds the tests compare against are derived here too (u = 2^-24, one f32 rounding).
"""

import numpy as np

from reference_sampling import pcg_hash, rand01

U = 2.0**-24
M32 = 0xFFFFFFFF


# -- the noise generator ----------------------------------------------------------------------------------------

def noise(seed: int, counter: int, n_pos: int, vocab: int):
    """(u f32 [n_pos], n u32 [n_pos]): the uniforms and renoise tokens of (seed, counter). Draw k = counter * 2 *
    n_pos + i is hashed as sample_lib's rand01 hashes its counter: u[i] from draw k, n[i] = hash(draw k + n_pos)
    mod vocab."""
    base = (counter * 2 * n_pos) & M32
    u = np.array([rand01(seed, (base + i) & M32) for i in range(n_pos)], np.float32)
    n = np.array([pcg_hash((pcg_hash(((base + n_pos + i) & M32) ^ pcg_hash(seed)) + seed) & M32) % vocab
                  for i in range(n_pos)], np.uint32)
    return u, n


# -- step 1: probabilities, entropy, argmax, the draw -------------------------------------------------------------

def proc_f32(raw, t: float) -> np.ndarray:
    """The processed logits exactly as the kernel rounds them: f32(raw) * f32(1 / t) (one correctly rounded f32
    multiply), for comparisons of the argmax, which must be exact."""
    return np.asarray(raw, np.float32) * np.float32(1.0 / t)


def softmax(raw, t: float) -> np.ndarray:
    x = np.asarray(raw, np.float64) / t
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def entropy(raw, t: float) -> np.ndarray:
    x = np.asarray(raw, np.float64) / t
    x = x - x.max(-1, keepdims=True)
    z = np.exp(x).sum(-1)
    return np.log(z) - (np.exp(x) * x).sum(-1) / z


def draw(p: np.ndarray, u) -> np.ndarray:
    """Inverse CDF per row: the first index whose cumulative probability exceeds u; the last index with p > 0 if
    none does."""
    p = np.atleast_2d(np.asarray(p, np.float64))
    cdf = np.cumsum(p, -1)
    out = []
    for row, c, uu in zip(p, cdf, np.atleast_1d(np.asarray(u, np.float64))):
        hit = np.nonzero(c > uu)[0]
        out.append(hit[0] if hit.size else np.nonzero(row > 0)[0][-1])
    return np.array(out, np.int64)


def draw_margin(raw, t: float, chunk: int) -> np.ndarray:
    """Per row, a bound on how far the kernel's cumulative probabilities can be from float64's (so a draw whose u
    lies farther than this from every bucket boundary must equal the reference's).

    The kernel compares running sums of e_j = exp(x_j), x_j = f32(raw_j * f32(1/t)) - max, with u * Z:
    - x_j: the product rounds by 2u |proc_j| (with 1/t's rounding), the subtraction by u |x_j|; the shared error of
      the max cancels between numerator and denominator, so each e_j is off by 4u M relative (M = max |proc|);
    - exp: WGSL allows 3 + 2|x| ULP, an ULP being at most 2u relative: (6 + 8M) u since |x| <= 2M;
    - the sums: a lane's chunk of `chunk` terms in sequence, then 16 + 16 more additions in the lanes' scan;
      inside the crossing's chunk, its sub-chunks of ceil(chunk / 256) terms and their scan (32 more): at most
      chunk + ceil(chunk / 256) + 64 additions deep, relative to the sum, for every partial sum and for Z; u * Z
      rounds once more.
    A running sum over Z is then off by twice each relative error (numerator and denominator)."""
    m = np.abs(np.asarray(raw, np.float64) / t).max(-1)
    per_term = (6 + 12 * m) * U
    depth = chunk + -(-chunk // 256) + 64
    return 2 * per_term + 2 * depth * U + 2 * U


def prob_tolerance(raw, t: float, chunk: int) -> np.ndarray:
    """A bound on |p_kernel - p| per element: p = e / Z carries e's relative error and Z's (draw_margin's terms),
    the division 2.5 ULP (5u); values below f32's normal range may be flushed to zero (2^-126 absolute)."""
    m = np.abs(np.asarray(raw, np.float64) / t).max(-1, keepdims=True)
    rel = 2 * (6 + 12 * m) * U + (chunk + 32) * U + 5 * U
    return rel * softmax(raw, t) + 2.0**-126


def draw_candidates(p: np.ndarray, u: float, margin: float) -> set:
    """Every index a kernel within `margin` of the float64 cumulative sums may draw for u."""
    c = np.cumsum(np.asarray(p, np.float64))
    before = np.concatenate([[0.0], c[:-1]])
    return set(np.nonzero((before <= u + margin) & (c > u - margin))[0].tolist())


def entropy_tolerance(raw, t: float, chunk: int) -> np.ndarray:
    """A bound on |H_kernel - H| per row. H = log Z - T / Z with T = sum e x (x <= 0): Z and T carry the relative
    errors of draw_margin (per_term + (chunk + 32) u each), T also the absolute error of each x (4u M per term,
    times the weights: 4u M), log adds 2^-21 absolute (WGSL's bound near 1) or 3 ULP, the division 2.5 ULP."""
    x = np.asarray(raw, np.float64) / t
    m = np.abs(x).max(-1)
    x = x - x.max(-1, keepdims=True)
    p = softmax(raw, t)
    mean_abs_x = (p * np.abs(x)).sum(-1)
    rel = (6 + 12 * m) * U + (chunk + 32) * U
    h = entropy(raw, t)
    return 2 * rel * (1 + mean_abs_x) + 4 * U * m + 2.0**-21 + 8 * U * (np.abs(h) + mean_abs_x) + 1e-30


# -- step 2: acceptance ------------------------------------------------------------------------------------------

def accept(h, bound: float) -> tuple[np.ndarray, np.ndarray]:
    """(accepted bool [C], the sum of strictly lower entropies per position [C]) for entropies h: positions sorted
    by entropy ascending, ties by position; sorted position k is accepted iff the entropies before it sum to
    <= bound (so the lowest one always is)."""
    h = np.asarray(h, np.float64)
    order = np.lexsort((np.arange(h.size), h))
    before = np.concatenate([[0.0], np.cumsum(h[order])[:-1]])
    acc = np.zeros(h.size, bool)
    acc[order] = before <= bound
    lower = np.zeros(h.size)
    lower[order] = before
    return acc, lower


def step(raw, t: float, u, n, bound: float, prev_argmax=None) -> dict:
    """One denoising step in float64 (the argmax over proc_f32, as the kernel rounds proc)."""
    raw = np.asarray(raw)
    p = softmax(raw, t)
    h = entropy(raw, t)
    a = proc_f32(raw, t).argmax(-1)
    d = draw(p, u)
    acc, lower = accept(h, np.float32(bound))
    canvas = np.where(acc, d, np.asarray(n)).astype(np.uint32)
    stable = prev_argmax is not None and bool(np.all(a == np.asarray(prev_argmax)))
    return dict(p=p, entropy=h, argmax=a, draw=d, accepted=acc, lower=lower, canvas=canvas,
                n_accepted=int(acc.sum()), mean_entropy=float(h.mean()), stable=stable)


# -- mix_rows -----------------------------------------------------------------------------------------------------

def mix_rows(probs, table, scale: float = 1.0) -> np.ndarray:
    """soft[c, :] = scale * sum_v probs[c, v] table[v, :], float64."""
    return scale * (np.asarray(probs, np.float64) @ np.asarray(table, np.float64))


def mix_rows_tolerance(probs, table, scale: float = 1.0) -> np.ndarray:
    """The rigorous worst case of reference_quant.matmul_tolerance over V terms: (V + 4) u scale sum |p e| (each
    dequantised weight at most 2 roundings, each product 1, any order of V additions V - 1, the split partials'
    sum and the scale inside those), plus u of the result for the final scale."""
    v = np.asarray(probs).shape[-1]
    mag = np.abs(np.asarray(probs, np.float64)) @ np.abs(np.asarray(table, np.float64))
    return (v + 6) * U * abs(scale) * mag + 1e-30
