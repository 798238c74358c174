"""KV cache (ops.kv_store) and attention (ops.attention) against tests/reference_nn.attention (float64).

Each case records ONE prefill graph (token capacity T) and ONE decode graph (capacity 1), then replays them with
new Step values: prefill chunks (the last one shorter than T), then decode steps continuing from the cached
prefix, comparing every run's output.

Tolerances. The cache stores K and V in f16, so the reference is fed K and V rounded to f16 the same way
(round-to-nearest-even); what remains is f32 arithmetic (dot products, exp, online-softmax rescaling), well under
1e-4 of max|v| for these sizes: atol = 2e-4 * max|v| allows a one-ulp f16 rounding difference on some devices.
Against unrounded f32 K/V the f16 cache alone costs ~1e-3 relative on scores of O(1) (scale 1/sqrt(d)) and
proportionally more when scores are larger (Gemma 4: scale 1.0 on normalised q, k); that is checked once with
its own bound below.

Bidirectional attention (causal=False, the vision tower) keeps the same bound over up to 2500 keys: the f32
accumulations a thread makes run over at most N / 8 + 64 terms (P.V: every 8th key of the run; scores: 64
products), a worst-case relative error of (N / 8 + 64) * 2^-24 < 3e-5 of sum |p v| <= max|v|; exp costs
WGSL's 3 + 2|x| ulp per weight, under 1e-5 of max|v| for score spreads below 80 (here about 8 * 6)."""

import numpy as np
import pytest

import reference_nn as ref
from rullama_py import gpu, ops
from rullama_py.ops.attention import attention_plan

pytestmark = pytest.mark.pyodide


def new_step(device):
    return device.tensor((8,), "uint32", "step", usage=gpu.UNIFORM)


def set_step(device, step, pos, n_tokens):
    device.write(step.buffer, np.array([pos, n_tokens, pos + n_tokens, 0, 0, 0, 0, 0], np.uint32))


def f16(a):
    return a.astype(np.float16).astype(np.float64)


async def run_case(device, *, heads, kv_heads, hd, window, chunks, T, decode, slots, scale=None, splits=None, seed=0,
                   short=None):
    """Prefill `chunks` (token counts, each <= T) then `decode` single-token steps. Returns the max error and
    the tolerance of every run (asserted inside)."""
    rng = np.random.default_rng(seed)
    n_total = sum(chunks) + decode
    q = rng.standard_normal((n_total, heads, hd)).astype(np.float32)
    k = rng.standard_normal((n_total, kv_heads, hd)).astype(np.float32)
    v = rng.standard_normal((n_total, kv_heads, hd)).astype(np.float32)
    scale = 1.0 / np.sqrt(hd) if scale is None else scale
    cache_k, cache_v = ops.kv_cache(device, n_kv_heads=kv_heads, head_dim=hd, slots=slots)
    step = new_step(device)
    graphs = {}
    for cap in (T, 1):
        g = device.graph()
        bufs = dict(q=device.tensor((cap, heads, hd)), k=device.tensor((cap, kv_heads, hd)),
                    v=device.tensor((cap, kv_heads, hd)), out=device.tensor((cap, heads, hd)))
        await ops.kv_store(g, bufs["k"], bufs["v"], cache_k, cache_v, step, n_kv_heads=kv_heads, head_dim=hd,
                           max_ctx=slots)
        await ops.attention(g, bufs["q"], cache_k, cache_v, bufs["out"], step, n_heads=heads, n_kv_heads=kv_heads,
                            head_dim=hd, scale=scale, window=window, max_ctx=slots, splits=splits if cap == 1 else None,
                            **({} if short is None else {"short": short}))
        graphs[cap] = (g, bufs)
    pos = 0
    for n in list(chunks) + [1] * decode:
        g, bufs = graphs[T if n > 1 or pos < sum(chunks) else 1]
        cap = bufs["q"].shape[0]
        for name, src in (("q", q), ("k", k), ("v", v)):
            chunk = np.zeros((cap,) + src.shape[1:], np.float32)
            chunk[:n] = src[pos : pos + n]
            device.write(bufs[name].buffer, chunk)
        set_step(device, step, pos, n)
        await device.run(g)
        got = (await device.read(bufs["out"]))[:n]
        want = ref.attention(q[pos : pos + n], f16(k[: pos + n]), f16(v[: pos + n]), pos, scale=scale, window=window)
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-4 * np.abs(v).max(),
                                   err_msg=f"run at pos {pos}, {n} tokens")
        pos += n
    return q, k, v, got, pos


@pytest.mark.parametrize(
    "heads,kv_heads,hd,window,chunks,T,decode,slots,splits,scale",
    [
        # GQA ratio 1, small head; 158 keys: several key tiles (in prefill, and in decode forced to one split of
        # 32-key tiles), a window crossing tile edges.
        (2, 2, 16, 100, (64, 64), 64, 30, 200, 1, None),
        # ratio 4, window 8: 40 tokens in a ring of kv_slots = 8 + 16 - 1 = 23 slots, wrapping mid key tile.
        (4, 1, 64, 8, (13, 16), 16, 11, "ring", None, None),
        # ratio 8, Gemma 4 sliding layer (head_dim 256, scale 1.0 on unit-RMS q and k); a cache of 1000 slots
        # makes the automatic plan cut decode into several splits, all but the first empty at this length.
        (8, 1, 256, 0, (9,), 12, 4, 1000, None, 1.0),
        # ratio 4, Gemma 4 global head size, two kv heads; decode in 2 splits.
        (8, 2, 512, 0, (6,), 6, 3, 16, 2, None),
        # ratio 2 and ratio 1 at head_dim 256, several kv heads.
        (4, 2, 256, 0, (21,), 24, 6, 40, None, None),
        (2, 2, 256, 0, (13,), 16, 4, 24, None, None),
        # one decode split over ~100 keys: several key tiles in a row (online softmax across tiles).
        (8, 1, 256, 0, (100,), 100, 5, 128, 1, None),
        # a window over a ring of 40 + 32 - 1 = 71 slots: decode tiles wrap around the ring mid-tile.
        (8, 1, 256, 40, (32, 32, 20), 32, 40, "ring", None, None),
    ],
)
async def test_prefill_then_decode(device, heads, kv_heads, hd, window, chunks, T, decode, slots, splits, scale):
    n_total = sum(chunks) + decode
    if slots == "ring":
        slots = ops.kv_slots(n_total, window=window, max_tokens=T)
        assert slots < n_total  # the ring really wraps
    q, k, v, got, pos = await run_case(device, heads=heads, kv_heads=kv_heads, hd=hd, window=window, chunks=chunks,
                                       T=T, decode=decode, slots=slots, splits=splits, scale=scale, seed=hd + heads)
    if scale == 1.0:
        # Against unrounded f32 K/V as well. Scores have std ~sqrt(256) = 16 here, and f16 rounding (relative
        # 2^-11) moves each by ~16 * 2^-11 / sqrt(2) ~ 0.005, which shifts the softmax weights by ~0.5%: bound
        # 2e-2 * max|v|.
        want = ref.attention(q[pos - 1 : pos], k[:pos], v[:pos], pos - 1, scale=1.0)
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-2 * np.abs(v).max())


async def test_decode_short_and_long_split_kernels(device):
    """A decode graph over a cache that can outgrow `short` keys holds two split kernels (32-key tiles for
    short contexts, full tiles beyond); decoding from 11 to 22 keys with short = 16 runs each in turn."""
    plan = attention_plan(device, n_tokens=1, n_heads=4, n_kv_heads=1, head_dim=32, window=0, max_ctx=64, short=16)
    assert plan["short_split"] == 16 and plan["dispatches"] == 3
    await run_case(device, heads=4, kv_heads=1, hd=32, window=0, chunks=(10,), T=16, decode=12, slots=64,
                   short=16, seed=3)


async def test_kv_store_layout(device):
    """Cache layout [kv_head][slot][dim] in f16, slot = position % slots (ring), only this run's tokens written."""
    kvh, hd, slots, cap = 2, 8, 5, 4
    k = np.random.default_rng(1).standard_normal((cap, kvh, hd)).astype(np.float32)
    v = -k
    ck, cv = ops.kv_cache(device, n_kv_heads=kvh, head_dim=hd, slots=slots)
    assert ck.nbytes == ops.kv_cache_bytes(kvh, hd, slots) == kvh * slots * hd * 2
    step = new_step(device)
    g = device.graph()
    await ops.kv_store(g, device.upload(k), device.upload(v), ck, cv, step, n_kv_heads=kvh, head_dim=hd,
                       max_ctx=slots)
    assert len(g) == 1
    set_step(device, step, 3, 3)  # positions 3, 4, 5 -> slots 3, 4, 0; token 3 (past n_tokens) not written
    await device.run(g)
    got_k, got_v = await device.read(ck), await device.read(cv)
    want = np.zeros((kvh, slots, hd), np.float16)
    for t, p in enumerate((3, 4, 5)):
        want[:, p % slots] = k[t].astype(np.float16)
    np.testing.assert_array_equal(got_k, want)
    np.testing.assert_array_equal(got_v, -want)


async def test_dispatch_counts(device):
    decode = attention_plan(device, n_tokens=1, n_heads=8, n_kv_heads=1, head_dim=512, window=0, max_ctx=131072)
    assert decode["dispatches"] == 3 and decode["splits"] > 32 and decode["short_split"]
    sliding = attention_plan(device, n_tokens=1, n_heads=8, n_kv_heads=1, head_dim=256, window=512, max_ctx=512)
    assert sliding["kt"] == 32 and sliding["splits"] == 512 // 32  # short context: small tiles, one split each
    prefill = attention_plan(device, n_tokens=512, n_heads=8, n_kv_heads=1, head_dim=256, window=512, max_ctx=1023)
    assert prefill["dispatches"] == 1


async def run_bidirectional(device, *, heads, kv_heads, hd, maxt, runs, scale, splits=None, seed=0, window=0):
    """One graph recorded for a capacity of `maxt` tokens (kv_store into a cache of maxt slots, then attention
    with causal=False), replayed for each (pos, n_tokens) of `runs`; every run's output is compared with
    softmax attention over all keys 0..pos + n_tokens - 1, and rows past n_tokens must stay as they were."""
    rng = np.random.default_rng(seed)
    n_total = max(p + n for p, n in runs)
    q = rng.standard_normal((n_total, heads, hd)).astype(np.float32)
    k = rng.standard_normal((n_total, kv_heads, hd)).astype(np.float32)
    v = rng.standard_normal((n_total, kv_heads, hd)).astype(np.float32)
    cache_k, cache_v = ops.kv_cache(device, n_kv_heads=kv_heads, head_dim=hd, slots=maxt)
    step = new_step(device)
    bufs = dict(q=device.tensor((maxt, heads, hd)), k=device.tensor((maxt, kv_heads, hd)),
                v=device.tensor((maxt, kv_heads, hd)), out=device.tensor((maxt, heads, hd)))
    g = device.graph()
    await ops.kv_store(g, bufs["k"], bufs["v"], cache_k, cache_v, step, n_kv_heads=kv_heads, head_dim=hd,
                       max_ctx=maxt)
    await ops.attention(g, bufs["q"], cache_k, cache_v, bufs["out"], step, n_heads=heads, n_kv_heads=kv_heads,
                        head_dim=hd, scale=scale, max_ctx=maxt, causal=False, splits=splits, window=window)
    sentinel = np.full((maxt, heads, hd), 7.0, np.float32)
    for pos, n in runs:
        for name, src in (("q", q), ("k", k), ("v", v)):
            chunk = np.zeros((maxt,) + src.shape[1:], np.float32)
            chunk[:n] = src[pos : pos + n]
            device.write(bufs[name].buffer, chunk)
        device.write(bufs["out"].buffer, sentinel)
        set_step(device, step, pos, n)
        await device.run(g)
        got = await device.read(bufs["out"])
        want = ref.attention(q[pos : pos + n], f16(k[: pos + n]), f16(v[: pos + n]), pos, scale=scale, causal=False,
                             window=window)
        err = float(np.abs(got[:n] - want).max())
        np.testing.assert_allclose(got[:n], want, rtol=0, atol=2e-4 * np.abs(v).max(),
                                   err_msg=f"run at pos {pos}, {n} tokens")
        np.testing.assert_array_equal(got[n:], sentinel[n:], err_msg="rows past n_tokens were written")
    return g, err


@pytest.mark.parametrize(
    "heads,kv_heads,hd,maxt,runs,splits",
    [
        # odd sizes: 11 of 13 tokens (one row tile part-filled, two capacity rows unused), 3 heads of 16
        (3, 3, 16, 13, ((0, 11),), None),
        # GQA ratio 4; a second run at pos 5 sees the 5 keys before it and all of its own, none of the first
        # run's later rows (a smaller run after a larger one: stale K/V past the run are ignored)
        (8, 2, 32, 9, ((0, 9), (5, 4)), None),
        # the split (flash-decoding) path: 3 key splits and the combine, every row seeing every key
        (4, 1, 64, 7, ((0, 7), (0, 3)), 3),
        # the vision tower's heads (12 x 64, scale 1.0 below) over 37 of 40 patches
        (12, 12, 64, 40, ((0, 37),), None),
    ],
)
async def test_bidirectional(device, heads, kv_heads, hd, maxt, runs, splits):
    scale = 1.0 if hd == 64 else 0.5
    g, _ = await run_bidirectional(device, heads=heads, kv_heads=kv_heads, hd=hd, maxt=maxt, runs=runs, scale=scale,
                                   splits=splits, seed=heads + hd)
    assert len(g) == (2 if splits is None else 3)  # kv_store + attention (+ combine)


async def test_bidirectional_fallback(device_fallback):
    await run_bidirectional(device_fallback, heads=2, kv_heads=2, hd=64, maxt=20, runs=((0, 17),), scale=1.0, seed=5)


async def test_bidirectional_2520_patches(device):
    """A graph recorded for the vision tower's 2520 patches, run over 2501 of them (head_dim 64, scale 1.0 on
    unit-RMS q and k): one dispatch of 315 row tiles per head. One head only: all 12 would take minutes on a
    CPU rasteriser, and the 12-head layout is covered by a small case above."""
    plan = attention_plan(device, n_tokens=2520, n_heads=12, n_kv_heads=12, head_dim=64, window=0, max_ctx=2520)
    assert plan["dispatches"] == 1 and plan["row_tiles"] == 315
    g, _ = await run_bidirectional(device, heads=1, kv_heads=1, hd=64, maxt=2520, runs=((0, 2501),), scale=1.0,
                                   seed=9)
    assert len(g) == 2


def test_bidirectional_plan_10080(device):
    """The largest image (10080 patches): still one dispatch of 1260 row tiles x 12 heads, within the grid
    limit, with workgroup memory within WebGPU's 16 KiB minimum."""
    plan = attention_plan(device, n_tokens=10080, n_heads=12, n_kv_heads=12, head_dim=64, window=0, max_ctx=10080)
    assert plan["dispatches"] == 1 and plan["splits"] == 1
    assert plan["row_tiles"] == 1260 <= device.limits["max-compute-workgroups-per-dimension"]
    r, wg = plan["rows"], plan["wg"]
    assert r * 64 * 4 + r * wg * 4 + wg * 4 + 64 <= 16384


@pytest.mark.parametrize("splits", [None, 3])
async def test_bidirectional_window(device, splits):
    """DiffusionGemma's canvas on a sliding layer: a 6-token run at pos 13 with window 8 sees keys 6..18 (the 7
    before the run and its own), none of keys 0..5; a run at pos 4 (fewer keys before it than the window) sees
    them all."""
    await run_bidirectional(device, heads=4, kv_heads=2, hd=32, maxt=24, runs=((0, 13), (13, 6), (4, 5)),
                            scale=0.5, splits=splits, seed=3, window=8)
