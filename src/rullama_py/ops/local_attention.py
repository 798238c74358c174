"""Gemma 4's audio attention (shaders/local_attention.wgsl): chunked local self-attention with a Transformer-XL
relative-position term and a logit soft cap, as transformers' Gemma4AudioAttention computes it under the mask
Gemma4AudioModel builds. One dispatch for all (token, head) rows.

Which keys a query sees and which rel_k row each (query, key) pair uses are derived in the kernel's header
comment; in short, query t sees keys t - (past - 1) .. t + max(future - 1, 0) that lie in [0, n_tokens), and
the pair (t, key) adds q . rel_k[past - (t - key)] (nothing when that row is >= P). The chunk size only sets
P; the block structure has no other effect on the output.
"""

from __future__ import annotations

from ..gpu import Graph, Tensor

from .nn import _count

_GRID_LIMIT = 32768


def rel_rows(chunk: int, past: int, future: int) -> int:
    """P, the rows of rel_k: (chunk + past + future) // 2 + 1 (transformers' context_size // 2 + 1)."""
    return (chunk + past + future) // 2 + 1


def keys_per_query(past: int, future: int) -> int:
    """The most keys one query sees: itself, past - 1 earlier keys and max(future - 1, 0) later ones."""
    return past + max(future - 1, 0)


def local_attention_plan(*, n_heads: int, head_dim: int, max_tokens: int) -> dict:
    """Workgroup shape of the kernel: `lanes` = head_dim / 4 threads per (token, head) row (one vec4 of the
    head each), `rows` rows per workgroup, `wg` = rows * lanes threads, `grid` (x, y) workgroups."""
    lanes = head_dim // 4
    rows = max(1, 64 // lanes)
    n_wg = max(1, -(-max_tokens * n_heads // rows))
    grid = (n_wg, 1) if n_wg <= _GRID_LIMIT else (_GRID_LIMIT, -(-n_wg // _GRID_LIMIT))
    return dict(lanes=lanes, rows=rows, wg=rows * lanes, grid=grid)


async def local_attention(g: Graph, q: Tensor, k: Tensor, v: Tensor, rel_k: Tensor, q_scale: Tensor, out: Tensor,
                          step: Tensor, *, n_heads: int, head_dim: int, chunk: int, past: int, future: int,
                          k_scale: float, softcap: float):
    """out = Gemma4AudioAttention's attention output before its `post` projection, for tokens t < step.n_tokens.

    q, k, v, out: f32 [T, n_heads * head_dim], the q/k/v projections' outputs (unscaled); the graph is recorded
    for the tensors' first dimension (the token capacity) and runs for T = step.n_tokens <= capacity; rows at
    or past T are neither read (as keys or values) nor written.
    rel_k: f32 [P, n_heads * head_dim], P = (chunk + past + future) // 2 + 1: relative_k_proj applied to the
    sinusoidal table, in transformers' row order (relative positions P - 1 down to 0).
    q_scale: f32 [head_dim], (1 / sqrt(head_dim)) / ln 2 * softplus(per_dim_scale); k_scale: ln(1 + e) / ln 2.
    chunk, past, future: attention_chunk_size, attention_context_left - 1, attention_context_right (Gemma 4:
    12, 12, 0). softcap: attention_logit_cap (50).

    For each t < T and head h, with qs = q[t, h] * q_scale:
        s(key) = softcap * tanh((qs . (k_scale * k[key, h]) + qs . rel_k[past - (t - key), h]) / softcap)
    (the rel term is 0 when past - (t - key) >= P), over the keys t - (past - 1) .. t + max(future - 1, 0)
    inside [0, T), and out[t, h] = softmax(s) . v[keys, h] in f32. One dispatch."""
    if head_dim % 4:
        raise ValueError(f"head_dim {head_dim} must be a multiple of 4")
    if head_dim > 1024:
        raise ValueError(f"head_dim {head_dim}: at most 1024 (256 threads per row)")
    if past < 1:
        raise ValueError(f"past {past}: a query must see at least itself (attention_context_left >= 2)")
    if chunk < 1 or future < 0:
        raise ValueError(f"chunk {chunk}, future {future}: chunk must be >= 1 and future >= 0")
    if softcap <= 0:
        raise ValueError(f"softcap {softcap} must be positive")
    width = n_heads * head_dim
    n_rel = rel_rows(chunk, past, future)
    max_t = _count(q) // width
    if _count(q) != max_t * width or max_t < 1:
        raise ValueError(f"q of shape {q.shape} is not a whole number of tokens of {width} values")
    for name, t in (("k", k), ("v", v), ("out", out)):
        if _count(t) < max_t * width:
            raise ValueError(f"{name} of shape {t.shape} holds fewer than q's {max_t} tokens of {width} values")
    if _count(rel_k) != n_rel * width:
        raise ValueError(f"rel_k of shape {rel_k.shape}: expected [{n_rel}, {width}] "
                         f"(P = (chunk + past + future) // 2 + 1 = {n_rel})")
    if _count(q_scale) != head_dim:
        raise ValueError(f"q_scale of shape {q_scale.shape}: expected [{head_dim}]")
    plan = local_attention_plan(n_heads=n_heads, head_dim=head_dim, max_tokens=max_t)
    nk = keys_per_query(past, future)
    shared = ((nk | 1) * plan["wg"] + nk * plan["rows"]) * 4
    limit = g.device.limits.get("max-compute-workgroup-storage-size", 16384)
    if shared > limit:
        raise ValueError(f"{nk} keys per query x {plan['wg']} threads need {shared} bytes of workgroup memory; "
                         f"the device has {limit}")
    kern = await g.device.kernel(
        "local_attention", NH=n_heads, LANES=plan["lanes"], RW=plan["rows"], WG=plan["wg"], GRID_X=plan["grid"][0],
        PAST=past, NK=nk, P=n_rel, KSCALE=float(k_scale), CAP=float(softcap), MAXT=max_t)
    g.add(kern, [q, k, v, rel_k, q_scale, step, out], plan["grid"])
