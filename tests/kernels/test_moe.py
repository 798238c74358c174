"""ops.moe against tests/reference_moe.py (float64): the router (moe_route: ties, top_k = 1 and = n_experts),
the grouping of slots by expert (moe_group), the expert products (expert_matmul, expert_matmul_sum) for one
token and several, through the matrix-vector kernel (with and without subgroups, every workgroup shape) and the
grouped tiled kernel (every tile shape), on f32, f16, q8_0 and q4_k experts (and one case of every other type),
expert weights split in parts, and a whole layer chained as a model does it.

Tolerances are the rigorous worst-case bounds of reference_moe (route_tolerance: exp's WGSL accuracy and the
renormalisation's roundings; expert_matmul_tolerance / expert_matmul_sum_tolerance: f32 dequantisation and
summation, as reference_quant.matmul_tolerance). Expert ids must match exactly: the kernel compares the f32
logits exactly, as the reference's order does."""

import sys

import numpy as np
import pytest

import reference_moe as ref
import reference_quant as rq
from rullama_py import ops
from rullama_py.ops import moe

pytestmark = pytest.mark.pyodide

# Columns per type: whole blocks (Q4_K: 256), a multiple of 8 for the matrix-vector kernel, and not a whole
# number of the tiled kernel's k-steps (except 256).
COLS = {"f32": 200, "f16": 200, "bf16": 200, "q8_0": 352, "q4_0": 352, "q5_0": 352, "q4_k": 256, "q5_k": 256,
        "q6_k": 256}
MAIN_TYPES = ("f32", "f16", "q8_0", "q4_k")
N_EXP, TOP_K = 8, 3
RPE = 37  # rows per expert: fills neither a row group of 4 nor a tile


def _mm_module():
    return sys.modules["rullama_py.ops.matmul"]  # the module (`ops.matmul` is the function)


def _upload_experts(device, qt, raw, rpe, cols, max_binding=None, align=True):
    """Upload raw GGUF bytes of N_EXP experts of rpe rows as one weight; with max_binding, pretend the device
    binds at most that many bytes so that upload_rows splits it into parts (at expert boundaries)."""
    rows = raw.shape[0]
    saved = device.limits["max-storage-buffer-binding-size"]
    if max_binding is not None:
        device.limits["max-storage-buffer-binding-size"] = max_binding
    try:
        return device.upload_rows(raw.tobytes(), rows, rq.row_bytes(qt, cols), (rows, cols), qt, f"experts_{qt}",
                                  align_rows=rpe if align else 1)
    finally:
        device.limits["max-storage-buffer-binding-size"] = saved


def _random_ids(rng, n_tokens, n_experts=N_EXP, top_k=TOP_K):
    """Distinct experts per token, skewed so that some experts get many tokens and the last none."""
    p = np.linspace(1.0, 0.0, n_experts)
    p /= p.sum()
    return np.stack([rng.choice(n_experts, top_k, replace=False, p=p) for _ in range(n_tokens)]).astype(np.uint32)


async def _groups(device, g, ids_t, n_tokens, n_experts=N_EXP, top_k=TOP_K):
    groups = device.tensor((moe.moe_groups_size(n_tokens, n_experts),), "uint32", "groups")
    await ops.moe_group(g, ids_t, groups, n_tokens=n_tokens, n_experts=n_experts, top_k=top_k)
    return groups


async def _check_matmul(device, qt, n_tokens, *, grouped, seed, x_per_slot=False, max_binding=None, rpe=RPE):
    """expert_matmul against the reference; returns the weight (to inspect its parts)."""
    rng = np.random.default_rng(seed)
    cols = COLS[qt]
    raw = rq.random_weight(qt, N_EXP * rpe, cols, rng)
    w = _upload_experts(device, qt, raw, rpe, cols, max_binding)
    ids = _random_ids(rng, n_tokens)
    x = rng.standard_normal((n_tokens, TOP_K, cols) if x_per_slot else (n_tokens, cols)).astype(np.float32)
    out0 = np.full((n_tokens, TOP_K, rpe), 7.0, np.float32)  # every slot's row must be overwritten
    out = device.upload(out0)
    ids_t = device.upload(ids)
    g = device.graph()
    groups = await _groups(device, g, ids_t, n_tokens) if grouped else None
    await ops.expert_matmul(g, w, device.upload(x), ids_t, out, n_tokens=n_tokens, n_experts=N_EXP, top_k=TOP_K,
                            x_per_slot=x_per_slot, groups=groups)
    await device.run(g)
    got = (await device.read(out)).reshape(n_tokens, TOP_K, rpe)
    wd = rq.dequantize(raw, qt, cols).reshape(N_EXP, rpe, cols)
    want = ref.expert_matmul(wd, x, ids, x_per_slot)
    err = np.abs(got - want)
    tol = ref.expert_matmul_tolerance(wd, x, ids, x_per_slot)
    assert np.all(err <= tol), f"{qt}: max error {err.max():.3g}, worst error/bound {(err / tol).max():.3g}"
    return w


async def _check_sum(device, qt, n_tokens, *, grouped, seed, accumulate=False, max_binding=None, rpe=RPE):
    """expert_matmul_sum against the reference; returns the weight."""
    rng = np.random.default_rng(seed)
    cols = COLS[qt]
    raw = rq.random_weight(qt, N_EXP * rpe, cols, rng)
    w = _upload_experts(device, qt, raw, rpe, cols, max_binding)
    ids = _random_ids(rng, n_tokens)
    weights = (rng.uniform(0.1, 1.0, (n_tokens, TOP_K)) * rng.choice([-1, 1], (n_tokens, TOP_K))).astype(np.float32)
    x = rng.standard_normal((n_tokens, TOP_K, cols)).astype(np.float32)
    out0 = rng.standard_normal((n_tokens, rpe)).astype(np.float32) if accumulate else None
    out = device.upload(out0) if accumulate else device.upload(np.full((n_tokens, rpe), 7.0, np.float32))
    ids_t = device.upload(ids)
    g = device.graph()
    groups = partial = None
    if grouped:
        groups = await _groups(device, g, ids_t, n_tokens)
        partial = device.tensor((n_tokens * TOP_K, rpe), "float32", "partial")
    await ops.expert_matmul_sum(g, w, device.upload(x), ids_t, device.upload(weights), out, n_tokens=n_tokens,
                                n_experts=N_EXP, top_k=TOP_K, accumulate=accumulate, groups=groups, partial=partial)
    await device.run(g)
    got = (await device.read(out)).reshape(n_tokens, rpe)
    wd = rq.dequantize(raw, qt, cols).reshape(N_EXP, rpe, cols)
    want = ref.expert_matmul_sum(wd, x, ids, weights, out0)
    err = np.abs(got - want)
    tol = ref.expert_matmul_sum_tolerance(wd, x, ids, weights, out0, fused=not grouped)
    assert np.all(err <= tol), f"{qt}: max error {err.max():.3g}, worst error/bound {(err / tol).max():.3g}"
    return w


# ---- the router ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["gemma", "ties", "all", "one", "wide"])
async def test_route(device, case):
    """Top-k ids by rank and renormalised, per-expert-scaled weights. gemma: 128 experts, top 8 (Gemma 4
    26B-A4B); ties: small integer logits, so most tokens have tied experts at the cut and inside the top k
    (the lower index first); all: top_k = n_experts (every expert, sorted); one: top_k = 1 (weight = its scale);
    wide: 600 experts, more than the workgroup's lanes."""
    n_tokens, n_experts, top_k = {"gemma": (5, 128, 8), "ties": (9, 16, 4), "all": (3, 16, 16), "one": (4, 32, 1),
                                  "wide": (2, 600, 8)}[case]
    rng = np.random.default_rng(["gemma", "ties", "all", "one", "wide"].index(case))
    if case == "ties":
        logits = rng.integers(-2, 3, (n_tokens, n_experts)).astype(np.float32)
    else:
        logits = (3 * rng.standard_normal((n_tokens, n_experts))).astype(np.float32)
    scale = rng.uniform(0.5, 2.0, n_experts).astype(np.float32)
    ids = device.tensor((n_tokens, top_k), "uint32", "ids")
    weights = device.tensor((n_tokens, top_k), "float32", "weights")
    g = device.graph()
    await ops.moe_route(g, device.upload(logits), device.upload(scale), ids, weights, n_tokens=n_tokens,
                        n_experts=n_experts, top_k=top_k)
    await device.run(g)
    got_ids = (await device.read(ids)).reshape(n_tokens, top_k)
    got_w = (await device.read(weights)).reshape(n_tokens, top_k)
    want_ids, want_w = ref.route(logits, scale, top_k)
    np.testing.assert_array_equal(got_ids, want_ids)
    if case == "ties":  # the case tests what it says: ties inside the top k and across its cut
        srt = np.sort(logits, 1)[:, ::-1]
        assert (srt[:, top_k - 1] == srt[:, top_k]).any() and (srt[:, 0] == srt[:, 1]).any()
    err = np.abs(got_w - want_w)
    tol = ref.route_tolerance(logits, want_ids, scale)
    assert np.all(err <= tol), f"max error {err.max():.3g}, worst error/bound {(err / tol).max():.3g}"


# ---- grouping --------------------------------------------------------------------------------------------------


async def test_group(device):
    """Each expert's count and its list of slots (as a set: the order is free), experts without tokens at 0."""
    rng = np.random.default_rng(3)
    n_tokens, n_experts, top_k = 70, 16, 4
    ids = _random_ids(rng, n_tokens, n_experts, top_k)
    g = device.graph()
    groups = await _groups(device, g, device.upload(ids), n_tokens, n_experts, top_k)
    await device.run(g)
    got = await device.read(groups)
    flat = ids.reshape(-1).astype(np.intp)  # bincount wants the platform int (32-bit in Pyodide)
    assert (np.bincount(flat, minlength=n_experts) == 0).any()  # the skew leaves some experts without tokens
    for e in range(n_experts):
        want = np.flatnonzero(flat == e)
        assert got[e] == want.size
        lst = got[n_experts + e * n_tokens : n_experts + e * n_tokens + got[e]]
        np.testing.assert_array_equal(np.sort(lst), want)


# ---- expert products: one token and several ------------------------------------------------------------------


@pytest.mark.parametrize("n_tokens", [1, pytest.param(3, marks=pytest.mark.native_only), 17, 64])
@pytest.mark.parametrize("qt", MAIN_TYPES)
async def test_expert_matmul(device, qt, n_tokens):
    """gate_up-like: x per token. The matrix-vector kernel for one token, the grouped kernel for several (and
    the matrix-vector kernel for 3 tokens too, which serves any count)."""
    await _check_matmul(device, qt, n_tokens, grouped=n_tokens > 1, seed=n_tokens)
    if n_tokens == 3:
        await _check_matmul(device, qt, n_tokens, grouped=False, seed=30)


@pytest.mark.parametrize("n_tokens", [1, pytest.param(3, marks=pytest.mark.native_only), 17, 64])
@pytest.mark.parametrize("qt", MAIN_TYPES)
async def test_expert_matmul_sum(device, qt, n_tokens):
    """The down projection with the weighted combine: fused matrix-vector sums for one token, grouped kernel +
    combine for several (and fused for 3 tokens too), adding into the output for odd token counts."""
    await _check_sum(device, qt, n_tokens, grouped=n_tokens > 1, seed=100 + n_tokens, accumulate=n_tokens % 2 == 1)
    if n_tokens == 3:
        await _check_sum(device, qt, n_tokens, grouped=False, seed=130)


@pytest.mark.parametrize("qt", [t for t in rq.TYPES if t not in MAIN_TYPES])
async def test_expert_other_types(device, qt):
    """The remaining GGUF types, through both kernels of both ops."""
    await _check_matmul(device, qt, 1, grouped=False, seed=40)
    await _check_matmul(device, qt, 5, grouped=True, seed=41, x_per_slot=True)
    await _check_sum(device, qt, 1, grouped=False, seed=42)
    await _check_sum(device, qt, 5, grouped=True, seed=43)


@pytest.mark.parametrize("qt", MAIN_TYPES)
async def test_expert_fallback(device_fallback, qt):
    """The plain matrix-vector kernels (no subgroups) for one and 3 tokens, and x per slot."""
    await _check_matmul(device_fallback, qt, 1, grouped=False, seed=50)
    await _check_matmul(device_fallback, qt, 3, grouped=False, seed=51, x_per_slot=True)
    await _check_sum(device_fallback, qt, 1, grouped=False, seed=52, accumulate=True)
    await _check_sum(device_fallback, qt, 3, grouped=False, seed=53)


@pytest.mark.parametrize("wg,r,lpr", [(64, 2, 64), (256, 1, 256), (128, 4, 32), (64, 4, 16), (32, 1, 4)])
async def test_matvec_workgroup_shapes(device, device_fallback, wg, r, lpr):
    """Every matrix-vector layout the shape heuristics may pick (rows per group, lanes per workgroup and per
    row group, groups smaller and larger than a subgroup; for the sums, 1 to 8 groups sharing a token's 3
    experts, some groups idle), on both kernel sets; 37 rows per expert leave the last row group of each
    expert partly empty."""
    mm = _mm_module()
    mm.MATVEC_SHAPE_OVERRIDE = (wg, r, lpr)
    try:
        for dev in (device, device_fallback):
            await _check_matmul(dev, "q4_k", 2, grouped=False, seed=60)
            await _check_sum(dev, "q8_0", 2, grouped=False, seed=61, accumulate=r == 2)
    finally:
        mm.MATVEC_SHAPE_OVERRIDE = None
    # The sums' own pick: 8 groups of 32 lanes for the 26B-A4B down projection (704 columns of Q5_0).
    assert moe._sum_shape(704, "q5_0", 8) == (256, 1, 32)


@pytest.mark.parametrize("tn,tk,rpt", [(16, 8, 4), (16, 32, 4), (32, 16, 4), (64, 4, 4), (64, 32, 4), (16, 8, 8),
                                       (32, 16, 8), (64, 16, 8)])
async def test_grouped_tiles(device, tn, tk, rpt):
    """Every tile shape of the grouped kernel (16, 32, 64 list entries per tile, k-steps of 4 to 32, 4 or 8
    rows per lane; 20 tokens x 3 slots over 8 skewed experts fill some tiles, part-fill others and need two
    tiles for some experts; 300 rows per expert end inside a row tile);
    and the picks: 16 entries for 64 tokens of 26B-A4B, 32 for 256, 64 for 512 tokens of a top-8-of-16 router."""
    if moe._grouped_storage(tn, tk, rpt) > device.limits["max-compute-workgroup-storage-size"]:
        pytest.skip(f"TN {tn}, TK {tk}, RPT {rpt} needs more workgroup memory than this device has (never picked)")
    moe.GROUPED_TILE_OVERRIDE = (tn, tk, rpt)
    try:
        await _check_matmul(device, "q4_k", 20, grouped=True, seed=70, rpe=300)
        await _check_sum(device, "f16", 20, grouped=True, seed=71)
    finally:
        moe.GROUPED_TILE_OVERRIDE = None
    assert moe._grouped_tile(device, 64, 128, 8)[0] == 16
    assert moe._grouped_tile(device, 256, 128, 8)[0] == 32
    assert moe._grouped_tile(device, 512, 16, 8)[0] == 64


async def test_grouped_order_free(device):
    """The grouped kernel's results do not depend on the order of an expert's list (moe_group's atomics give
    any order): lists reversed by the host give the same bits as moe_group's."""
    rng = np.random.default_rng(80)
    n_tokens, qt, cols = 40, "q8_0", COLS["q8_0"]
    raw = rq.random_weight(qt, N_EXP * RPE, cols, rng)
    w = _upload_experts(device, qt, raw, RPE, cols)
    ids = _random_ids(rng, n_tokens)
    x = device.upload(rng.standard_normal((n_tokens, cols)).astype(np.float32))
    ids_t = device.upload(ids)
    g = device.graph()
    groups = await _groups(device, g, ids_t, n_tokens)
    out1 = device.tensor((n_tokens, TOP_K, RPE), "float32", "out1")
    await ops.expert_matmul(g, w, x, ids_t, out1, n_tokens=n_tokens, n_experts=N_EXP, top_k=TOP_K, groups=groups)
    await device.run(g)
    lists = (await device.read(groups)).copy()
    for e in range(N_EXP):
        a = N_EXP + e * n_tokens
        lists[a : a + lists[e]] = lists[a : a + lists[e]][::-1]
    assert not np.array_equal(lists, await device.read(groups))
    out2 = device.tensor((n_tokens, TOP_K, RPE), "float32", "out2")
    g2 = device.graph()
    await ops.expert_matmul(g2, w, x, ids_t, out2, n_tokens=n_tokens, n_experts=N_EXP, top_k=TOP_K,
                            groups=device.upload(lists))
    await device.run(g2)
    np.testing.assert_array_equal(await device.read(out1), await device.read(out2))


# ---- expert weights in parts ------------------------------------------------------------------------------------


@pytest.mark.parametrize("qt", [pytest.param("q8_0", marks=pytest.mark.native_only), "q4_k"])
async def test_split_experts(device, device_fallback, qt):
    """Expert weights split in 3 or 4 parts by a small binding limit: one dispatch per part, each over the
    experts it holds; the sums of later parts add to the first's. Both kernels, both ops."""
    rb = rq.row_bytes(qt, COLS[qt])
    limit = rb * RPE * 3 + rb * 5  # 3 experts and a few rows: the boundary falls back to an expert's
    for n_tokens, grouped in ((1, False), (6, True)):
        w = await _check_matmul(device, qt, n_tokens, grouped=grouped, seed=90, max_binding=limit)
        assert len(w.parts) >= 3 and all(p[1] % RPE == 0 and p[2] % RPE == 0 for p in w.parts)
        await _check_sum(device, qt, n_tokens, grouped=grouped, seed=91, max_binding=limit, accumulate=grouped)
    await _check_sum(device_fallback, qt, 2, grouped=False, seed=92, max_binding=limit, accumulate=True)


async def test_upload_rows_align(device):
    """upload_rows(align_rows=n) puts part boundaries on multiples of n; a group over the limit is refused in a
    sentence; expert ops refuse a weight whose parts split an expert."""
    from rullama_py import gpu

    rng = np.random.default_rng(95)
    raw = rq.random_weight("q8_0", N_EXP * RPE, 64, rng)
    rb = rq.row_bytes("q8_0", 64)
    w = _upload_experts(device, "q8_0", raw, RPE, 64, max_binding=rb * (2 * RPE + 10))
    assert [p[2] for p in w.parts] == [2 * RPE] * 4
    np.testing.assert_array_equal(await device.read(w), raw.reshape(-1))
    with pytest.raises(gpu.DeviceLimitError, match="group of 37 rows"):
        _upload_experts(device, "q8_0", raw, RPE, 64, max_binding=rb * (RPE - 1))
    w = _upload_experts(device, "q8_0", raw, RPE, 64, max_binding=rb * (2 * RPE + 10), align=False)
    out = device.tensor((1, TOP_K, RPE))
    with pytest.raises(ValueError, match="align_rows=37"):
        await ops.expert_matmul(device.graph(), w, device.tensor((1, 64)), device.upload(np.zeros(3, np.uint32)),
                                out, n_tokens=1, n_experts=N_EXP, top_k=TOP_K)


async def test_errors(device):
    """Bad arguments are refused with a sentence naming the problem."""
    g = device.graph()
    logits, scale = device.tensor((2, 8)), device.tensor((8,))
    ids, weights = device.tensor((2, 3), "uint32"), device.tensor((2, 3))
    with pytest.raises(ValueError, match="top_k must be between 1 and n_experts"):
        await ops.moe_route(g, logits, scale, ids, weights, n_tokens=2, n_experts=8, top_k=9)
    with pytest.raises(ValueError, match="dtype float32; expected uint32"):
        await ops.moe_route(g, logits, scale, weights, weights, n_tokens=2, n_experts=8, top_k=3)
    with pytest.raises(ValueError, match="router logits .* needs 24"):
        await ops.moe_route(g, logits, scale, ids, weights, n_tokens=3, n_experts=8, top_k=1)
    raw = rq.random_weight("f32", 8 * 5, 12, np.random.default_rng(0))
    w = device.upload_rows(raw.tobytes(), 40, 48, (40, 12), "f32", "w", align_rows=5)
    with pytest.raises(ValueError, match="not a whole number for 7 experts"):
        await ops.expert_matmul(g, w, device.tensor((1, 12)), ids, device.tensor((40,)), n_tokens=1, n_experts=7,
                                top_k=3)
    with pytest.raises(ValueError, match="multiple of 8 columns"):
        await ops.expert_matmul(g, w, device.tensor((2, 12)), ids, device.tensor((30,)), n_tokens=2, n_experts=8,
                                top_k=3)
    with pytest.raises(ValueError, match="needs partial="):
        await ops.expert_matmul_sum(g, w, device.tensor((6, 12)), ids, weights, device.tensor((10,)), n_tokens=2,
                                    n_experts=8, top_k=3, groups=device.tensor((72,), "uint32"))
    assert len(g) == 0


# ---- a whole layer --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_tokens", [1, 17])
async def test_layer_chain(device, n_tokens):
    """The chain a model records (route, gate_up, gelu_mul fused, down with the combine) on Q4_K gate_up and
    Q8_0 down experts of the real layout (gate rows then up rows per expert): every stage against its reference
    on the previous stage's GPU output, so the buffers' layouts agree end to end."""
    rng = np.random.default_rng(n_tokens)
    n_exp, top_k, d, ff = 16, 4, 256, 64
    x = rng.standard_normal((n_tokens, d)).astype(np.float32)
    logits = (2 * rng.standard_normal((n_tokens, n_exp))).astype(np.float32)
    scale = rng.uniform(0.5, 2.0, n_exp).astype(np.float32)
    gu_raw = rq.random_weight("q4_k", n_exp * 2 * ff, d, rng)
    down_raw = rq.random_weight("q8_0", n_exp * d, ff, rng)
    gu_w = device.upload_rows(gu_raw.tobytes(), n_exp * 2 * ff, rq.row_bytes("q4_k", d), (n_exp * 2 * ff, d), "q4_k",
                              "gate_up", align_rows=2 * ff)
    down_w = device.upload_rows(down_raw.tobytes(), n_exp * d, rq.row_bytes("q8_0", ff), (n_exp * d, ff), "q8_0",
                                "down", align_rows=d)
    ids = device.tensor((n_tokens, top_k), "uint32", "ids")
    weights = device.tensor((n_tokens, top_k), "float32", "weights")
    gu = device.tensor((n_tokens, top_k, 2 * ff), "float32", "gu")
    act = device.tensor((n_tokens, top_k, ff), "float32", "act")
    residual = rng.standard_normal((n_tokens, d)).astype(np.float32)
    out = device.upload(residual)
    kw = dict(n_tokens=n_tokens, n_experts=n_exp, top_k=top_k)
    g = device.graph()
    await ops.moe_route(g, device.upload(logits), device.upload(scale), ids, weights, **kw)
    groups = partial = None
    if n_tokens > 1:
        groups = await _groups(device, g, ids, n_tokens, n_exp, top_k)
        partial = device.tensor((n_tokens * top_k, d), "float32", "partial")
    await ops.expert_matmul(g, gu_w, device.upload(x), ids, gu, groups=groups, **kw)
    await ops.gelu_mul(g, gu, None, act, n=ff, fused=True)
    await ops.expert_matmul_sum(g, down_w, act, ids, weights, out, accumulate=True, groups=groups, partial=partial,
                                **kw)
    await device.run(g)
    assert len(g) == (4 if n_tokens == 1 else 6)

    got_ids = (await device.read(ids)).reshape(n_tokens, top_k)
    got_w = (await device.read(weights)).reshape(n_tokens, top_k)
    want_ids, _ = ref.route(logits, scale, top_k)
    np.testing.assert_array_equal(got_ids, want_ids)
    gu_d = rq.dequantize(gu_raw, "q4_k", d).reshape(n_exp, 2 * ff, d)
    got_gu = (await device.read(gu)).reshape(n_tokens, top_k, 2 * ff)
    err = np.abs(got_gu - ref.expert_matmul(gu_d, x, want_ids))
    assert np.all(err <= ref.expert_matmul_tolerance(gu_d, x, want_ids))
    got_act = (await device.read(act)).reshape(n_tokens, top_k, ff)
    down_d = rq.dequantize(down_raw, "q8_0", ff).reshape(n_exp, d, ff)
    want = ref.expert_matmul_sum(down_d, got_act, want_ids, got_w, residual)
    err = np.abs((await device.read(out)).reshape(n_tokens, d) - want)
    tol = ref.expert_matmul_sum_tolerance(down_d, got_act, want_ids, got_w, residual, fused=n_tokens == 1)
    assert np.all(err <= tol), f"max error {err.max():.3g}, worst error/bound {(err / tol).max():.3g}"
