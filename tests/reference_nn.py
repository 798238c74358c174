"""numpy references of the transformer-block ops (rullama_py.ops.attention and .nn), in float64. Written from
the models' definitions (HF transformers' Gemma modelling code, llama.cpp's ggml rope), never from our kernels.
"""

import numpy as np


def rope(x, pos0, *, base, n_rot=None, freq_factors=None, freq_scale=1.0):
    """NeoX rotary embedding of x [n_tokens, n_heads, head_dim] at positions pos0 + t: x*cos + rotate_half(x)*sin
    over the first n_rot dims, pairs (i, i + n_rot/2); theta_i = pos * freq_scale * base^(-2i/n_rot) / ff_i."""
    x = np.asarray(x, np.float64)
    n_tok, _, hd = x.shape
    n_rot = hd if n_rot is None else n_rot
    half = n_rot // 2
    inv = base ** (-np.arange(half, dtype=np.float64) * 2.0 / n_rot) * freq_scale
    if freq_factors is not None:
        inv = inv / np.asarray(freq_factors, np.float64)
    theta = (pos0 + np.arange(n_tok, dtype=np.float64))[:, None] * inv[None, :]  # [t, half]
    c, s = np.cos(theta)[:, None, :], np.sin(theta)[:, None, :]
    out = x.copy()
    x0, x1 = x[..., :half], x[..., half:n_rot]
    out[..., :half] = x0 * c - x1 * s
    out[..., half:n_rot] = x1 * c + x0 * s
    return out


def rope_2d(x, positions, *, base):
    """Axial 2-D rotary embedding of Gemma 4's vision tower (HF Gemma4VisionRotaryEmbedding with
    apply_multidimensional_rope): x [T, H, D], positions [T, 2] = (px, py). The head splits into halves, the
    first turned by px and the second by py, each a NeoX rotation of its own over pairs (i, i + D/4) with
    theta_i = p * base^(-2i / (D/2)), i < D/4."""
    x = np.asarray(x, np.float64)
    d = x.shape[-1]
    half, q = d // 2, d // 4
    inv = base ** (-np.arange(q, dtype=np.float64) * 2.0 / half)
    out = x.copy()
    for axis in (0, 1):
        theta = np.asarray(positions, np.float64)[:, axis, None] * inv[None, :]  # [T, q]
        c, s = np.cos(theta)[:, None, :], np.sin(theta)[:, None, :]
        a, b = x[..., axis * half : axis * half + q], x[..., axis * half + q : (axis + 1) * half]
        out[..., axis * half : axis * half + q] = a * c - b * s
        out[..., axis * half + q : (axis + 1) * half] = b * c + a * s
    return out


def attention(q, k, v, pos0, *, scale, window=0, causal=True):
    """softmax(scale * q k^T + mask) v. q [T, H, D] at positions pos0 + t; k, v [n_kv, KVH, D] at positions
    0..n_kv-1. GQA: head h uses kv head h // (H / KVH). Causal; window > 0: key j visible iff p - j < window.
    causal=False: no mask, every query sees all n_kv keys (HF's bidirectional mask of the vision tower)."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    n_tok, n_heads, _ = q.shape
    n_kv, n_kv_heads, _ = k.shape
    group = n_heads // n_kv_heads
    p = pos0 + np.arange(n_tok)[:, None]
    keys = np.arange(n_kv)[None, :]
    visible = np.ones((n_tok, n_kv), bool)
    if causal:
        visible &= keys <= p
        if window:
            visible &= p - keys < window
    out = np.zeros_like(q)
    for h in range(n_heads):
        kh = h // group
        s = scale * (q[:, h] @ k[:, kh].T)  # [T, n_kv]
        s = np.where(visible, s, -np.inf)
        w = np.exp(s - s.max(axis=1, keepdims=True))
        out[:, h] = (w / w.sum(axis=1, keepdims=True)) @ v[:, kh]
    return out


def gelu_tanh(x):
    """torch.nn.functional.gelu(x, approximate="tanh")."""
    x = np.asarray(x, np.float64)
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def gelu_mul(gate, up):
    return gelu_tanh(gate) * np.asarray(up, np.float64)


def softcap(x, cap):
    return cap * np.tanh(np.asarray(x, np.float64) / cap)


def clamp(x, lo, hi):
    """torch.clamp(x, lo, hi) as transformers' Gemma4ClippableLinear applies it (+-inf: no limit)."""
    return np.minimum(np.maximum(np.asarray(x, np.float64), lo), hi)


def standardize(x, bias, scale):
    """Gemma4VisionModel's (h - std_bias) * std_scale over the last axis."""
    return (np.asarray(x, np.float64) - np.asarray(bias, np.float64)) * np.asarray(scale, np.float64)


def avg_pool_by_positions(x, positions, k, length):
    """transformers' Gemma4VisionPooler._avg_pool_by_positions for one image: x [N, d], positions [N, 2] =
    (px, py) with -1 for padding (clamped to 0; a padding patch is zero, so it adds nothing). Patch (px, py)
    goes to cell px // k + (max_x // k) * (py // k), max_x = max px + 1, with weight 1 / k^2; [length, d].
    transformers multiplies by a one-hot [N, length] matrix; a scatter-add is the same sum without its
    N * length * d multiplies (minutes in Pyodide's numpy at 10080 patches)."""
    x = np.asarray(x, np.float64)
    pos = np.maximum(np.asarray(positions), 0)
    max_x = pos[:, 0].max() + 1
    cell = pos[:, 0] // k + (max_x // k) * (pos[:, 1] // k)
    out = np.zeros((length, x.shape[1]))
    np.add.at(out, cell, x)
    return out / (k * k)
