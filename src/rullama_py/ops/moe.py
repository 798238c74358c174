"""Mixture-of-experts ops (Gemma 4 26B-A4B: 128 experts of 704 rows, top 8): the router's choice and the
expert products, with expert selection kept on the GPU (shaders/moe_route.wgsl, moe_matvec.wgsl,
moe_group.wgsl, moe_matmul.wgsl, moe_combine.wgsl).

Expert weights are GGUF's 3-D tensors seen as 2-D: `ffn_gate_up_exps` [E, 2 ff, D] (each expert's gate rows,
then its up rows) is a weight of E * 2 ff rows of D columns, expert e's row r being row e * 2 ff + r; likewise
`ffn_down_exps` [E, D, ff]. Any of matmul.QUANT_TYPES, uploaded with
`Device.upload_rows(..., align_rows=rows_per_expert)` so that a weight split in parts never splits an expert;
each part is one dispatch over the experts it holds.

A layer, T tokens, K = top_k of E experts, r the residual stream and x = pre_ffw_norm_2(r):

    rms_norm + matmul (router)        logits [T, E]
    moe_route                         ids u32 [T, K], weights f32 [T, K]
    expert_matmul (gate_up)           gu [T, K, 2 ff]
    gelu_mul(fused=True, n=ff)        act [T, K, ff]
    expert_matmul_sum (down)          out [T, D] (+)= sum_k weights[t, k] * W_down[ids[t, k]] @ act[t, k]

Decode (one token) is memory-bound: the expert kernels are matrix-vector kernels whose workgroups read their
expert from `ids` (moe_matvec.wgsl), and the down projection sums the K experts in registers. Dispatches per
MoE layer for decode: 4 (moe_route, gate_up, gelu_mul, down) with single-part expert weights, plus one per
extra part of each expert weight, plus the router's rms_norm and matmul. On an H200 (tools/bench_moe.py,
26B-A4B dimensions, Q4_K gate_up, Q5_0 down): 54 us per decode layer (route 9, gate_up 20, gelu 2, down 18,
router matmul 4: the 28.7 MB of 8 experts' weights at about 750 GB/s).

Many tokens (prefill, a diffusion canvas) pass `groups` (from `moe_group`, one dispatch per layer shared by
both products): the expert kernels then run tiled over each expert's tokens, reading each expert's weights
once per tile of up to 16-64 of its tokens rather than once per token (moe_matmul.wgsl); the down projection writes one row per slot
into `partial` and one more dispatch combines them. Dispatches per layer: 6 with single-part weights.
On the H200: 4.3-4.4 ms per layer for 64 or 256 tokens (gate_up 2.5-2.6, down 1.2-1.3, the router's f32
matmul 0.42), 6.4 ms for 512.
Without `groups` the matrix-vector kernels serve any number of tokens, reading an expert once per slot.
"""

from __future__ import annotations

import importlib

from ..gpu import Graph, Tensor
from ._util import WG
from .matmul import QUANT_TYPES, _grid, _libs, _matvec_shape, qtype, row_bytes

_matmul_module = importlib.import_module(".matmul", __package__)  # the package's `matmul` is the function


def _count(t: Tensor) -> int:
    n = 1
    for d in t.shape:
        n *= d
    return n


def _need(t: Tensor, n: int, dtype: str, what: str) -> None:
    if str(t.dtype) != dtype:
        raise ValueError(f"{what} {t.label!r} has dtype {t.dtype}; expected {dtype}")
    if _count(t) < n:
        raise ValueError(f"{what} {t.label!r} of shape {t.shape} holds {_count(t)} values; needs {n}")


def _check_counts(n_tokens: int, n_experts: int, top_k: int) -> None:
    if n_tokens < 1:
        raise ValueError(f"n_tokens must be at least 1, not {n_tokens}")
    if n_experts < 1:
        raise ValueError(f"n_experts must be at least 1, not {n_experts}")
    if not 1 <= top_k <= n_experts:
        raise ValueError(f"top_k must be between 1 and n_experts ({n_experts}), not {top_k}")


def _wg_storage(device, nbytes: int, what: str) -> None:
    limit = device.limits.get("max-compute-workgroup-storage-size", 16384)
    if nbytes > limit:
        raise ValueError(f"{what} needs {nbytes} bytes of workgroup memory; this device has {limit}")


def moe_groups_size(n_tokens: int, n_experts: int) -> int:
    """u32 words of the `groups` buffer of `moe_group`: a count per expert, then a list of n_tokens slots per
    expert."""
    return n_experts * (n_tokens + 1)


async def moe_route(g: Graph, logits: Tensor, per_expert_scale: Tensor, ids: Tensor, weights: Tensor, *,
                    n_tokens: int, n_experts: int, top_k: int) -> None:
    """The router's choice for each token t < n_tokens: p = softmax(logits[t]); the top_k experts of largest
    p (ties: the lower expert index first) in ids[t, :] (u32, by rank), and weights[t, k] = p[ids[t, k]] /
    sum_j p[ids[t, j]] * per_expert_scale[ids[t, k]] (f32). One dispatch, one workgroup per token.

    logits: f32 [n_tokens, n_experts] (finite); per_expert_scale: f32 [n_experts] (`ffn_down_exps.scale`);
    ids: u32 [n_tokens, top_k]; weights: f32 [n_tokens, top_k]."""
    _check_counts(n_tokens, n_experts, top_k)
    _need(logits, n_tokens * n_experts, "float32", "router logits")
    _need(per_expert_scale, n_experts, "float32", "per-expert scale")
    _need(ids, n_tokens * top_k, "uint32", "expert ids")
    _need(weights, n_tokens * top_k, "float32", "expert weights")
    _wg_storage(g.device, 4 * (n_experts + 2 * top_k), f"routing over {n_experts} experts")
    wg = 64 if n_experts <= 64 else 128 if n_experts <= 512 else 256
    grid = _grid(n_tokens)
    k = await g.device.kernel("moe_route", N_EXP=n_experts, TOP_K=top_k, N_TOK=n_tokens, WG=wg, GRID_X=grid[0])
    g.add(k, [logits, per_expert_scale, ids, weights], grid)


async def moe_group(g: Graph, ids: Tensor, groups: Tensor, *, n_tokens: int, n_experts: int, top_k: int) -> None:
    """Group the slots s = t * top_k + k by the expert ids[s] chose: groups (u32, `moe_groups_size` words) gets
    each expert's count, then each expert's list of slots (in no particular order; results never depend on
    it). One dispatch of one workgroup; the expert ops read it when given `groups=`."""
    _check_counts(n_tokens, n_experts, top_k)
    _need(ids, n_tokens * top_k, "uint32", "expert ids")
    _need(groups, moe_groups_size(n_tokens, n_experts), "uint32", "expert groups")
    _wg_storage(g.device, 4 * n_experts, f"grouping over {n_experts} experts")
    k = await g.device.kernel("moe_group", N_EXP=n_experts, N_TOK=n_tokens, TOP_K=top_k, WG=WG)
    g.add(k, [ids, groups], 1)


def _expert_parts(w: Tensor, n_experts: int) -> tuple[int, list]:
    """(rows per expert, [(buffer, first expert, experts)] for each part of w)."""
    rows = w.shape[0]
    if rows % n_experts:
        raise ValueError(f"expert weight {w.label!r} has {rows} rows, not a whole number for {n_experts} experts")
    rpe = rows // n_experts
    parts = []
    for buf, first, n in w.parts:
        if first % rpe or n % rpe:
            raise ValueError(f"expert weight {w.label!r}: a part boundary falls inside an expert (rows {first} to "
                             f"{first + n}, {rpe} rows per expert); upload it with align_rows={rpe}")
        parts.append((buf, first // rpe, n // rpe))
    return rpe, parts


# (TN, TK, RPT) forced for every grouped expert product, or None: for the tests and tools/bench_moe.py only.
GROUPED_TILE_OVERRIDE: tuple | None = None


def _grouped_tile(device, n_tokens: int, n_experts: int, top_k: int) -> tuple[int, int, int]:
    """(TN, TK, RPT): list entries per tile, the k-step and rows per lane of moe_matmul.wgsl. TN follows the
    expected tokens per expert, n_tokens * top_k / n_experts; TK is 16, or less where the tiles would not fit
    the workgroup memory; RPT 4.
    Measured on an H200 (tools/bench_moe.py, 256 tokens of Gemma 4 26B-A4B: 16 per expert on average, random
    routing): the gate_up product took 2.52-2.54 ms with TN 32, TK 16, RPT 4; 2.62 ms with RPT 8; 2.94-2.97 ms
    with TN 16 (about half of the experts get more than 16 tokens and a second, nearly empty tile); 3.06 ms
    with TK 32; 4.6 ms with TN 64. 64 tokens take as long as 256: the time goes to the weight tiles, not to the
    multiply-adds."""
    if GROUPED_TILE_OVERRIDE is not None:
        return GROUPED_TILE_OVERRIDE
    per_expert = n_tokens * top_k / n_experts
    tn = 16 if per_expert <= 8 else 32 if per_expert <= 32 else 64
    limit = device.limits.get("max-compute-workgroup-storage-size", 16384)
    for tk in (16, 8):
        if _grouped_storage(tn, tk, 4) <= limit:
            return tn, tk, 4
    return tn, 4, 4


def _grouped_storage(tn: int, tk: int, rpt: int) -> int:
    tm = rpt * (256 // (tn // 4))
    return (tm + tn) * tk * 4 + 2 * tn * 4


async def _grouped(g: Graph, w: Tensor, x: Tensor, groups: Tensor, out: Tensor, *, n_tokens, n_experts, top_k,
                   x_per_slot) -> None:
    """out[s, :] = W[expert of s] @ x_s for every slot, through the lists in groups (moe_matmul.wgsl)."""
    rpe, parts = _expert_parts(w, n_experts)
    cols = w.shape[1]
    qt = qtype(w)
    rb = row_bytes(qt, cols)
    _need(groups, moe_groups_size(n_tokens, n_experts), "uint32", "expert groups")
    tn, tk, rpt = _grouped_tile(g.device, n_tokens, n_experts, top_k)
    assert tn in (16, 32, 64) and tk % 4 == 0 and rpt in (4, 8), (tn, tk, rpt)
    _wg_storage(g.device, _grouped_storage(tn, tk, rpt), f"the grouped expert kernel (TN {tn}, TK {tk}, RPT {rpt})")
    tm = rpt * (256 // (tn // 4))
    tiles = -(-n_tokens // tn)
    for buf, e0, ne in parts:
        k = await g.device.kernel("moe_matmul", libs=_libs(qt), RPE=rpe, COLS=cols, ROW_BYTES=rb,
                                  N_EXP=n_experts, N_TOK=n_tokens, TOP_K=top_k, E0=e0, NE=ne,
                                  X_PER_SLOT=bool(x_per_slot), TN=tn, TK=tk, RPT=rpt)
        g.add(k, [buf, x, groups, out], (-(-rpe // tm), ne * tiles))


def _sum_shape(cols: int, qt: str, top_k: int) -> tuple[int, int, int]:
    """(WG, R, LPR) of the `sum` entry: R rows per workgroup, and WG / LPR row groups of LPR lanes that take a
    token's experts in parallel (group g: experts g, g + WG / LPR, ...). LPR gives each lane a few units of a
    row (the down projection's 704 columns of Q5_0 are 88 units: 32 lanes); up to 8 groups, one per expert
    of Gemma 4's top 8, within 256 lanes."""
    if _matmul_module.MATVEC_SHAPE_OVERRIDE is not None:  # the tests' and tools/bench_moe.py's
        return _matvec_shape(cols, 1, qt)
    blk = QUANT_TYPES[qt][0]
    per_block = {"f32": 1, "f16": 1, "bf16": 1, "q8_0": 4, "q4_0": 4, "q5_0": 4}.get(qt, 16)
    units = cols // max(blk, 8) * per_block
    lpr = 16 if units <= 48 else 32 if units <= 192 else 64
    groups = 1
    while groups * 2 <= top_k and groups * 2 * lpr <= 256:
        groups *= 2
    return groups * lpr, 1, lpr


async def _matvec(g: Graph, w: Tensor, x: Tensor, ids: Tensor, weights: Tensor | None, out: Tensor, *, n_tokens,
                  n_experts, top_k, x_per_slot, accumulate) -> None:
    """moe_matvec.wgsl: entry `slots` (weights None: one output row per slot) or `sum` (weighted sum per token)."""
    rpe, parts = _expert_parts(w, n_experts)
    cols = w.shape[1]
    qt = qtype(w)
    rb = row_bytes(qt, cols)
    if cols % 8:
        raise ValueError(f"expert weight {w.label!r}: the matrix-vector kernel needs a multiple of 8 columns, not "
                         f"{cols}; pass groups= (moe_group) to use the tiled kernel")
    if weights is None:
        wg, r, lpr = _matvec_shape(cols, rpe * n_tokens * top_k, qt)
        grid = (-(-rpe // (r * wg // lpr)), n_tokens * top_k)  # row groups of one expert x slots
    else:
        wg, r, lpr = _sum_shape(cols, qt, top_k)
        grid = (-(-rpe // r), n_tokens)  # each workgroup: R rows of one token, its experts over the groups
    assert r in (1, 2, 4) and wg & (wg - 1) == 0 and lpr & (lpr - 1) == 0 and 4 <= lpr <= wg, (wg, r, lpr)
    for i, (buf, e0, ne) in enumerate(parts):
        acc = weights is not None and (accumulate or i > 0)  # later parts add to the first's sums
        k = await g.device.kernel("moe_matvec", libs=_libs(qt) + ("matvec_units", "moe_matvec_lib"),
                                  entry="slots" if weights is None else "sum", RPE=rpe, COLS=cols, ROW_BYTES=rb,
                                  R=r, WG=wg, LPR=lpr, E0=e0, NE=ne, TOP_K=top_k, X_PER_SLOT=bool(x_per_slot),
                                  ACC=acc)
        g.add(k, [buf, x, ids, out] + ([] if weights is None else [weights]), grid)


async def expert_matmul(g: Graph, w: Tensor, x: Tensor, ids: Tensor, out: Tensor, *, n_tokens: int, n_experts: int,
                        top_k: int, x_per_slot: bool = False, groups: Tensor | None = None) -> None:
    """out[t, k, :] = W[ids[t, k]] @ x_tk for t < n_tokens, k < top_k, with x_tk = x[t] (the gate_up
    projection), or x[t, k] when x_per_slot.

    w: the experts' weight (n_experts * rows, cols), any of matmul.QUANT_TYPES, parts aligned to experts;
    x: f32 [n_tokens, cols] (or [n_tokens, top_k, cols]); ids: u32 [n_tokens, top_k], each < n_experts;
    out: f32 [n_tokens, top_k, rows]. groups: `moe_group`'s output for these ids, for the tiled kernel over each
    expert's tokens (many tokens); None runs the matrix-vector kernel (decode), which needs cols % 8 == 0."""
    _check_counts(n_tokens, n_experts, top_k)
    rows, cols = w.shape
    slots = n_tokens * top_k
    _need(x, (slots if x_per_slot else n_tokens) * cols, "float32", "activation")
    _need(ids, slots, "uint32", "expert ids")
    _need(out, slots * (rows // max(1, n_experts)), "float32", "output")
    if groups is not None:
        await _grouped(g, w, x, groups, out, n_tokens=n_tokens, n_experts=n_experts, top_k=top_k,
                       x_per_slot=x_per_slot)
    else:
        await _matvec(g, w, x, ids, None, out, n_tokens=n_tokens, n_experts=n_experts, top_k=top_k,
                      x_per_slot=x_per_slot, accumulate=False)


async def expert_matmul_sum(g: Graph, w: Tensor, x: Tensor, ids: Tensor, weights: Tensor, out: Tensor, *,
                            n_tokens: int, n_experts: int, top_k: int, accumulate: bool = False,
                            groups: Tensor | None = None, partial: Tensor | None = None) -> None:
    """out[t, :] (+)= sum_k weights[t, k] * W[ids[t, k]] @ x[t, k] for t < n_tokens: the down projection with
    the weighted combine of the experts fused in (accumulate=True adds into out: a fused residual).

    w: (n_experts * rows, cols) as for expert_matmul; x: f32 [n_tokens, top_k, cols]; ids: u32 and weights:
    f32 [n_tokens, top_k]; out: f32 [n_tokens, rows]. Without groups, the matrix-vector kernel sums the
    experts in registers (decode: one dispatch per part). With groups (many tokens), the tiled kernel writes
    one row per slot into partial (f32, n_tokens * top_k * rows) and one more dispatch combines them."""
    _check_counts(n_tokens, n_experts, top_k)
    rows, cols = w.shape
    rpe = rows // max(1, n_experts)
    slots = n_tokens * top_k
    _need(x, slots * cols, "float32", "activation")
    _need(ids, slots, "uint32", "expert ids")
    _need(weights, slots, "float32", "expert weights")
    _need(out, n_tokens * rpe, "float32", "output")
    if groups is None:
        await _matvec(g, w, x, ids, weights, out, n_tokens=n_tokens, n_experts=n_experts, top_k=top_k,
                      x_per_slot=True, accumulate=accumulate)
        return
    if partial is None:
        raise ValueError("expert_matmul_sum with groups needs partial= (f32, n_tokens * top_k * rows) for the "
                         "rows of each slot")
    _need(partial, slots * rpe, "float32", "partial rows")
    await _grouped(g, w, x, groups, partial, n_tokens=n_tokens, n_experts=n_experts, top_k=top_k, x_per_slot=True)
    total = n_tokens * rpe
    n = -(-total // WG)
    grid = (n, 1) if n <= 32768 else (32768, -(-n // 32768))
    k = await g.device.kernel("moe_combine", RPE=rpe, N_TOK=n_tokens, TOP_K=top_k, ACC=bool(accumulate), WG=WG)
    g.add(k, [partial, weights, out], grid)
