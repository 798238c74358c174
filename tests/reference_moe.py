"""numpy (float64) references of the mixture-of-experts ops (rullama_py.ops.moe), written from the models'
definition (transformers' and llama.cpp's Gemma 4 router and experts), never from our kernels. Quantised expert
weights are dequantised by reference_quant (gguf-py) first."""

import numpy as np

U = 2.0**-24  # f32 unit roundoff


def route(logits, per_expert_scale, top_k):
    """(ids [T, top_k] int64, weights [T, top_k] float64): p = softmax(logits) per token, the top_k largest p
    (ties: the lower index first), weights p[top] / sum p[top] * per_expert_scale[top]."""
    lg = np.asarray(logits, np.float64)
    p = np.exp(lg - lg.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    ids = np.argsort(-p, axis=-1, kind="stable")[:, :top_k]  # stable: equal p keep index order
    top = np.take_along_axis(p, ids, -1)
    w = top / top.sum(-1, keepdims=True) * np.asarray(per_expert_scale, np.float64)[ids]
    return ids, w


def route_tolerance(logits, ids, per_expert_scale):
    """A bound on |kernel - reference| for each routing weight.

    The kernel computes v_r = exp(l_r - m) (m the largest logit) for the chosen experts, their sum S in slot
    order, and w_r = v_r / S * scale_r. l_r - m rounds once (relative u of |l_r - m|, which moves exp by that
    much), WGSL's f32 exp errs by at most 3 + 2|x| ULP (2u per ULP, relative), so v_r errs by e_r = (6 + 5|x_r|) u
    relative. S errs by max_r e_r + (K - 1) u; the division and the scale add 2u. The logits' order is compared
    exactly, so the ids carry no error."""
    lg = np.asarray(logits, np.float64)
    x = np.abs(np.take_along_axis(lg, ids, -1) - lg.max(-1, keepdims=True))
    e = (6 + 5 * x) * U
    k = ids.shape[-1]
    rel = e + e.max(-1, keepdims=True) + (k + 2) * U
    return rel * np.abs(route(logits, per_expert_scale, k)[1]) + 1e-30


def expert_matmul(w, x, ids, x_per_slot=False):
    """out[t, k, :] = W[ids[t, k]] @ x_tk (x_tk = x[t], or x[t, k] when x_per_slot); w [E, rows, cols]."""
    w = np.asarray(w, np.float64)
    x = np.asarray(x, np.float64)
    t, k = ids.shape
    xs = x if x_per_slot else np.broadcast_to(x[:, None, :], (t, k, x.shape[-1]))
    return np.einsum("tkrc,tkc->tkr", w[ids], xs)


def expert_matmul_sum(w, x, ids, weights, out0=None):
    """out[t, :] = sum_k weights[t, k] * W[ids[t, k]] @ x[t, k] (+ out0)."""
    y = np.einsum("tk,tkr->tr", np.asarray(weights, np.float64), expert_matmul(w, x, ids, x_per_slot=True))
    return y if out0 is None else y + out0


def expert_matmul_tolerance(w, x, ids, x_per_slot=False):
    """A bound on |kernel - reference| for each output of expert_matmul: reference_quant.matmul_tolerance's
    (cols + 4) u sum_c |w x| (each weight decoded with at most 2 roundings, the product with one, any order of
    a sum of cols terms (cols - 1) u of the sum of their magnitudes)."""
    return (np.asarray(w).shape[-1] + 4) * U * expert_matmul(np.abs(w), np.abs(x), ids, x_per_slot) + 1e-30


def expert_matmul_sum_tolerance(w, x, ids, weights, out0=None, fused=True):
    """A bound on |kernel - reference| for each output of expert_matmul_sum.

    fused (the matrix-vector kernel): one sum of K * cols terms weights[t, k] * w * x in some order, each term
    off by 4u (two decode roundings, the product, the weight): (K cols + 3) u sum |terms|. Not fused (the
    grouped kernel, then the combine): each slot's row errs as in expert_matmul_tolerance, the combine's K
    products and sum add (K + 1) u. Accumulating into out0 adds u of both."""
    cols = np.asarray(w).shape[-1]
    k = ids.shape[-1]
    n = k * cols + 3 if fused else cols + k + 5
    bound = n * U * expert_matmul_sum(np.abs(w), np.abs(x), ids, np.abs(weights))
    if out0 is not None:
        bound = bound + 2 * U * (np.abs(out0) + expert_matmul_sum(np.abs(w), np.abs(x), ids, np.abs(weights)))
    return bound + 1e-30
