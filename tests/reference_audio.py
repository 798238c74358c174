"""numpy references of Gemma 4's audio-tower ops, in float64. Written from transformers' Gemma4AudioAttention,
Gemma4AudioRelPositionalEncoding and Gemma4AudioModel.forward (models/gemma4/modeling_gemma4.py), never from
our kernels. The attention keeps transformers' block structure (blocks of queries, unfolded key contexts,
rel-shift, blocked mask) rather than the per-query window the kernel uses, so the kernel's derivation of that
window (shaders/local_attention.wgsl) is checked, not assumed."""

import math

import numpy as np


def rel_position_table(*, chunk, past, future, hidden):
    """Gemma4AudioRelPositionalEncoding: [context_size // 2 + 1, hidden], rows for relative positions
    context_size // 2 down to 0 (context_size = chunk + past + future), each [sin(p * inv) | cos(p * inv)] with
    hidden // 2 timescales inv_i = exp(-i * ln(1e4) / max(hidden // 2 - 1, 1))."""
    n = hidden // 2
    inv = np.exp(np.arange(n, dtype=np.float64) * -(math.log(1.0e4) / max(n - 1, 1)))
    pos = np.arange((chunk + past + future) // 2, -1, -1, dtype=np.float64)[:, None]
    return np.concatenate([np.sin(pos * inv), np.cos(pos * inv)], axis=1)


def audio_q_scale(per_dim_scale, head_dim, *, softplus_applied=False):
    """q_scale = (1 / sqrt(head_dim)) / ln 2 * softplus(per_dim_scale). GGUF files (Ollama, llama.cpp) store
    per_dim_scale with the softplus already applied: pass softplus_applied=True for those."""
    s = np.asarray(per_dim_scale, np.float64)
    sp = s if softplus_applied else np.logaddexp(0.0, s)
    return head_dim**-0.5 / math.log(2.0) * sp


AUDIO_K_SCALE = math.log(1.0 + math.e) / math.log(2.0)


def local_attention(q, k, v, rel_k, q_scale, *, n_heads, head_dim, chunk, past, future, k_scale, softcap,
                    invalid=-1.0e9):
    """Gemma4AudioAttention.forward up to (not including) `post`, for one sequence of T tokens with no padding
    frames, under the mask Gemma4AudioModel.forward builds (sliding window (past, future) = (context_left - 1,
    context_right), keys past T masked), in float64.

    q, k, v: [T, n_heads * head_dim], the projections' outputs; rel_k: [P, n_heads * head_dim] with
    P = (chunk + past + future) // 2 + 1 (relative_k_proj of rel_position_table); q_scale: [head_dim].
    Returns [T, n_heads * head_dim]."""
    H, D, C = n_heads, head_dim, chunk
    q, k, v, rel_k = (np.asarray(a, np.float64) for a in (q, k, v, rel_k))
    T = q.shape[0]
    cs = C + past + future
    P = cs // 2 + 1
    assert rel_k.shape == (P, H * D), (rel_k.shape, P)
    qs = q.reshape(T, H, D) * np.asarray(q_scale, np.float64)
    ks = k.reshape(T, H, D) * k_scale
    vs = v.reshape(T, H, D)
    nb = -(-T // C)

    # _convert_to_block: queries zero-padded to nb * C, [nb, C, H, D].
    qb = np.zeros((nb * C, H, D))
    qb[:T] = qs
    qb = qb.reshape(nb, C, H, D)

    # _extract_block_context: pad past before and future + C - 1 after, windows of cs every C: [nb, cs, H, D].
    def context(x):
        xp = np.concatenate([np.zeros((past, H, D)), x, np.zeros((future + C - 1, H, D))])
        return np.stack([xp[b * C : b * C + cs] for b in range(nb)])

    kb, vb = context(ks), context(vs)

    # Content term [H, nb, C, cs] and the position term [H, nb, C, P], rel-shifted to [H, nb, C, cs].
    ac = np.einsum("bihd,bjhd->hbij", qb, kb)
    bd = np.einsum("bihd,phd->hbip", qb, rel_k.reshape(P, H, D))
    bd = np.concatenate([bd, np.zeros((H, nb, C, cs + 1 - P))], axis=-1)
    bd = bd.reshape(H, nb, C * (cs + 1))[..., : C * cs].reshape(H, nb, C, cs)

    s = ac + bd
    s = np.tanh(s / softcap) * softcap

    # The mask: query t = b * C + i, key b * C - past + j; dist = t - key. Visible iff the sliding window keeps
    # it (0 <= dist < past, or dist < 0 and -dist < future) and the key is a real token (0 <= key < T); padding
    # query rows (t >= T) see nothing (their outputs are dropped).
    t = (np.arange(nb)[:, None, None] * C + np.arange(C)[None, :, None])
    key = np.arange(nb)[:, None, None] * C - past + np.arange(cs)[None, None, :]
    dist = t - key
    window = ((dist >= 0) & (dist < past)) | ((dist < 0) & (-dist < future))
    valid = window & (key >= 0) & (key < T) & (t < T)
    s = np.where(valid[None], s, invalid)

    w = np.exp(s - s.max(axis=-1, keepdims=True))
    w = w / w.sum(axis=-1, keepdims=True)
    out = np.einsum("hbij,bjhd->bihd", w, vb).reshape(nb * C, H * D)
    return out[:T]
