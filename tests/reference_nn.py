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
    causal=False: no mask, every query sees all n_kv keys (HF's bidirectional mask of the vision tower); with a
    window too, only keys from pos0 - (window - 1) on (DiffusionGemma's canvas over a sliding layer's cache,
    which transformers trims to its last window - 1 keys)."""
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
    elif window:
        visible &= keys >= pos0 - (window - 1)
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


def conv2d_3x3_s2(x, w, t_in=None):
    """torch's Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False) in channels-last layout: x [T, F, c_in],
    w [c_out, c_in, 3 (time), 3 (frequency)] -> [(T - 1) // 2 + 1, (F - 1) // 2 + 1, c_out]. Rows of x at or
    past t_in are zero (transformers' mask; the output keeps the length of all of x's rows)."""
    x = np.array(x, np.float64)
    w = np.asarray(w, np.float64)
    if t_in is not None:
        x[t_in:] = 0.0
    t, f, _ = x.shape
    to, fo = (t - 1) // 2 + 1, (f - 1) // 2 + 1
    xp = np.zeros((2 * to + 1, 2 * fo + 1, x.shape[2]))  # padding 1 before, and after as far as a window reaches
    xp[1 : t + 1, 1 : f + 1] = x
    out = np.zeros((to, fo, w.shape[0]))
    for kt in range(3):
        for kf in range(3):
            out += xp[kt : kt + 2 * to : 2, kf : kf + 2 * fo : 2] @ w[:, :, kt, kf].T
    return out


def layer_norm(x, w, eps):
    """torch.nn.LayerNorm(n, eps, bias=False) over the last axis: (x - mean) / sqrt(biased var + eps) * w."""
    x = np.asarray(x, np.float64)
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * np.asarray(w, np.float64)


def conv2d_ln_relu(x, w, ln_w, eps, t_in=None):
    """transformers' Gemma4AudioSubSampleConvProjectionLayer, channels-last: relu(LayerNorm(conv(mask * x)))."""
    return np.maximum(layer_norm(conv2d_3x3_s2(x, w, t_in), ln_w, eps), 0.0)


def depthwise_conv1d(x, w):
    """transformers' Gemma4AudioCausalConv1d (groups = channels, no bias) on x [T, C], w [C, K]: left-pad K - 1
    zero rows, then out[t, c] = sum_j w[c, j] * x_padded[t + j, c]."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    k = w.shape[1]
    xp = np.concatenate([np.zeros((k - 1, x.shape[1])), x])
    return sum(xp[j : j + x.shape[0]] * w[:, j] for j in range(k))


def sigmoid(z):
    """1 / (1 + exp(-z)), evaluated without overflow (exp of -|z| only)."""
    z = np.asarray(z, np.float64)
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def silu(x):
    """torch.nn.functional.silu: x * sigmoid(x)."""
    x = np.asarray(x, np.float64)
    return x * sigmoid(x)


def glu(x):
    """torch.nn.functional.glu(x, dim=-1): the first half of the last axis times the sigmoid of the second."""
    x = np.asarray(x, np.float64)
    n = x.shape[-1] // 2
    return x[..., :n] * sigmoid(x[..., n:])


def bias_add(x, b):
    return np.asarray(x, np.float64) + np.asarray(b, np.float64)
