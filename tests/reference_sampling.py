"""numpy reference of rullama_py.sampling: the same algorithm step by step in float32, with the same random
number generator bit for bit. Written from llama.cpp's sampler chain (src/llama-sampling.cpp) and the
description in rullama_py/sampling.py, not from the kernels' output.

Known, tiny differences from the GPU: exp and tanh may differ in the last bits, so a draw or a top-p cut that
lands within a rounding error of a boundary can differ (probability ~1e-6 per draw with random logits).
"""

import math

import numpy as np

CAND = 256
M32 = 0xFFFFFFFF
f32 = np.float32


def pcg_hash(v: int) -> int:
    state = (v * 747796405 + 2891336453) & M32
    word = (((state >> ((state >> 28) + 4)) ^ state) * 277803737) & M32
    return ((word >> 22) ^ word) & M32


def rand01(seed: int, counter: int) -> np.float32:
    h = pcg_hash((pcg_hash(counter ^ pcg_hash(seed)) + seed) & M32)
    return f32((h >> 8) * (1.0 / 16777216.0))


def order_key(v: np.ndarray) -> np.ndarray:
    b = np.ascontiguousarray(v, f32).view(np.uint32).copy()
    b[b == 0x80000000] = 0
    return np.where(b & 0x80000000, ~b, b ^ 0x80000000).astype(np.uint32)


def soft_capped(logits, softcap) -> np.ndarray:
    """c * tanh(x / c) in float32, as shaders/sample_lib.wgsl's soft_capped computes it (tanh may differ from
    the GPU's in the last bit)."""
    v = np.array(logits, f32).reshape(-1)
    c = f32(softcap)
    return (c * np.tanh(np.clip(v * f32(1.0 / softcap), f32(-15), f32(15)))).astype(f32)


def argmax(logits, softcap=None) -> int:
    """The greedy token (the fast path, shaders/sample_argmax.wgsl): the largest (soft-capped) value, the
    lowest id among equal ones. Values are ranked by order_key, as the full sampler ranks them: -0.0 equals
    +0.0, and a NaN ranks by its bits (sign clear: above +inf, sign set: below -inf; payloads in bit order)."""
    v = soft_capped(logits, softcap) if softcap else np.array(logits, f32).reshape(-1)
    keys = order_key(v)
    return int(np.flatnonzero(keys == keys.max())[0])


def process(logits, params, history=(), softcap=None, max_history=None):
    """Soft-cap, then the repetition penalty on the distinct tokens of the last N history entries."""
    v = soft_capped(logits, softcap) if softcap else np.array(logits, f32).reshape(-1)
    n = params.repetition_last_n
    if n == -1:
        n = max_history if max_history is not None else len(history)
    pen = params.repetition_penalty
    recent = np.asarray(history, np.int64).reshape(-1)
    if max_history is not None:
        recent = recent[len(recent) - min(len(recent), max_history) :]
    if pen != 1.0 and n > 0 and recent.size:
        recent = recent[recent.size - min(recent.size, n) :]
        idx = np.unique(recent)
        x = v[idx]
        v[idx] = np.where(x > 0, x * f32(1.0 / pen), x * f32(pen)).astype(f32)
    return v


def top_candidates(v: np.ndarray, cand: int = CAND):
    """The min(cand, V) largest values, ordered by value descending then id ascending (-0.0 == +0.0)."""
    ids = np.arange(v.size, dtype=np.int64)
    order = np.lexsort((ids, ~order_key(v)))  # last key is primary
    top = order[:cand]
    return v[top], top


def scan(x: np.ndarray) -> np.ndarray:
    """Inclusive prefix sums with the kernel's order of float32 additions (shaders/sample_draw.wgsl wg_scan):
    16 groups of 16 lanes; lane i = (groups before its own, summed in order) + (its group up to i, in order)."""
    c = np.zeros(CAND, f32)
    c[: x.size] = x
    g = c.reshape(16, 16)
    local = np.cumsum(g, axis=1, dtype=f32)  # sequential within each group
    before = np.concatenate([[f32(0)], np.cumsum(local[:, -1], dtype=f32)[:-1]]).astype(f32)
    return (before[:, None] + local).astype(f32).reshape(-1)


def filtered(vals: np.ndarray, params):
    """(number of candidates kept m, unnormalised float32 weights of the draw) after top-k/top-p/min-p."""
    k = vals.size
    n = min(params.top_k, k) if params.top_k > 0 else k
    v0 = vals[0]
    inv_temp = f32(min(1.0 / params.temperature, 1e30)) if params.temperature > 0 else f32(0)
    scale = inv_temp if params.temperature_first else f32(1.0)
    x = np.maximum((vals - v0) * scale, f32(-100)).astype(f32)
    m = n
    if params.top_p < 1.0:
        e = np.exp(x[:n]).astype(f32)
        c = scan(e)
        z = c[n - 1]
        m = min(n, int(np.count_nonzero(c[:n] < f32(params.top_p) * z)) + 1)
    if params.min_p > 0.0:
        m = max(1, int(np.count_nonzero(x[:m] >= f32(math.log(params.min_p)))))
    w = np.exp(np.maximum((vals[:m] - v0) * inv_temp, f32(-100))).astype(f32)
    return m, w


def sample(logits, params, history=(), seed=0, counter=0, softcap=None, max_history=None, cand=CAND) -> int:
    """The token the GPU sampler draws for these logits, history and (seed, counter)."""
    v = process(logits, params, history, softcap, max_history)
    vals, ids = top_candidates(v, cand)
    if params.temperature == 0 or not vals[0] > -3.0e38:
        return int(ids[0])
    m, w = filtered(vals, params)
    c2 = scan(w)
    goal = rand01(seed, counter) * c2[m - 1]
    pick = min(m - 1, int(np.count_nonzero(c2[:m] < goal)))
    return int(ids[pick])


def distribution(logits, params, history=(), softcap=None, max_history=None, cand=CAND):
    """(token ids, probabilities) of the filtered distribution the draw samples from (float64)."""
    v = process(logits, params, history, softcap, max_history)
    vals, ids = top_candidates(v, cand)
    if params.temperature == 0:
        return ids[:1], np.ones(1)
    m, w = filtered(vals, params)
    w = w.astype(np.float64)
    return ids[:m], w / w.sum()
