"""ops.attention_decode (attention_inputs' norms, RoPE and cache store done inside attention's kernels, for one
token) against the float64 references: reference.rms_norm, reference_nn.rope and reference_nn.attention.

Each case prefills a prompt through the separate ops (attention_inputs, then attention, as prefill runs them),
then decodes token by token through the fused graph, and beside it through the separate ops on caches of their
own. Every step checks:
- the key and value the fused kernel stored, against the references rounded to f16, with
  tests/kernels/test_attention_inputs.py's bounds (its norm, RoPE and one-f16-ulp terms);
- the output, against reference attention of the reference queries over the keys and values the GPU holds
  (read back, so the cache's own rounding is not counted twice). What remains is the query's error: the norm in
  f32 (1e-5 relative), the angle (2.4e-7 relative per unit of position, test_rope.py) and sin/cos, taken as
  accurate to 1e-6 here (every implementation these tests run on: lavapipe, SwiftShader, NVIDIA; WGSL
  guarantees only 2^-11, which test_attention_inputs.py bounds for the separate kernel). A score moves by at most
  scale * sum_d |dq_d| |k_d|, the softmax output by twice the largest score error times max|v|; plus
  test_attention.py's 2e-4 * max|v| for the f32 arithmetic;
- the output against the separate ops' output, which computes the same thing in another order (the norm's sum,
  SCALE before or after RoPE): within 1e-4 of max|v| (scores reach tens at scale 1.0) plus what the two
  caches' differences explain (an f16 ulp where a value sits near a rounding edge; the caches are compared
  within one ulp)."""

import numpy as np
import pytest

import kv_layout
import reference
import reference_nn as ref
from rullama_py import gpu, ops
from rullama_py.ops.attention import attention_plan

pytestmark = pytest.mark.pyodide

EPS = 1e-6


def set_step(device, step, pos, n_tokens):
    device.write(step.buffer, np.array([pos, n_tokens, pos + n_tokens, 0, 0, 0, 0, 0], np.uint32))


def q_tol(q, pos):
    """Element bound of a query's error after its norm and RoPE (see the module docstring)."""
    return float(np.abs(q).max()) * (1e-5 + (pos * 2.4e-7 + 2e-6) * 2 + 2e-6)


async def run_decode(device, *, nh, nkv, hd, n_rot=None, base=1e4, ff=False, v_norm=False, shared_v=False,
                     window=0, slots, prompt, decode, T, scale, own_kv=True, splits=None, short=None, seed=0,
                     cache_type="f16"):
    """Prefill `prompt` tokens (chunks of T), then decode `decode` tokens fused and separately, over caches of
    `cache_type`. The prompt's outputs are checked against reference attention over the caches as well."""
    rng = np.random.default_rng(seed)
    n_rot = hd if n_rot is None else n_rot
    n_total = prompt + decode
    qw, kw = nh * hd, nkv * hd
    stride = qw + kw + (0 if shared_v else kw) + 4  # a row wider than its heads
    k_off, v_off = qw, qw if shared_v else qw + kw
    qkv = (rng.standard_normal((n_total, stride)) * 2).astype(np.float32)
    qn, kn = (rng.standard_normal(hd).astype(np.float32) for _ in range(2))
    factors = None
    if ff:
        factors = np.concatenate([np.ones(n_rot // 8), np.full(n_rot // 2 - n_rot // 8, 1e30)]).astype(np.float32)

    x = qkv.astype(np.float64)
    want_q = np.concatenate([ref.rope(reference.rms_norm(x[t: t + 1, :qw].reshape(1, nh, hd), qn, EPS), t,
                                      base=base, n_rot=n_rot, freq_factors=factors) for t in range(n_total)])
    want_k = np.concatenate([ref.rope(reference.rms_norm(x[t: t + 1, k_off: k_off + kw].reshape(1, nkv, hd), kn,
                                                         EPS), t, base=base, n_rot=n_rot, freq_factors=factors)
                             for t in range(n_total)])
    v_lin = x[:, v_off: v_off + kw].reshape(n_total, nkv, hd)
    want_v = reference.rms_norm(v_lin, None, EPS) if v_norm else v_lin

    up = device.upload
    w = dict(qn=up(qn), kn=up(kn), ff=up(factors) if ff else None)
    step = device.tensor((8,), "uint32", "step", usage=gpu.UNIFORM)
    caches = {name: ops.kv_cache(device, n_kv_heads=nkv, head_dim=hd, slots=slots, cache_type=cache_type)
              for name in ("fused", "apart")}
    rope = dict(base=base, n_rot=n_rot, freq_factors=w["ff"])
    attn = dict(n_heads=nh, n_kv_heads=nkv, head_dim=hd, scale=scale, window=window, max_ctx=slots, splits=splits,
                **({} if short is None else {"short": short}))

    def kv_of(name):
        ck, cv = caches[name]
        return (w["kn"], ck, cv, dict(n_kv_heads=nkv, k_offset=k_off, v_offset=v_off, slots=slots, v_norm=v_norm))

    async def separate(g, cap, name, bufs):
        await ops.attention_inputs(g, bufs["qkv"], w["qn"], bufs["q"], step, n_heads=nh, head_dim=hd, eps=EPS,
                                   qkv_stride=stride, kv=kv_of(name), **rope)
        await ops.attention(g, bufs["q"], *caches[name], bufs["out"], step, **attn)

    graphs = {}
    for name in ("fused", "apart"):
        for cap in (T, 1):
            bufs = dict(qkv=device.tensor((cap, stride)), q=device.tensor((cap, nh, hd)),
                        out=device.tensor((cap, nh, hd)))
            g = device.graph()
            if cap == 1 and name == "fused":
                await ops.attention_decode(g, bufs["qkv"], w["qn"], bufs["q"], *caches[name], bufs["out"], step,
                                           eps=EPS, qkv_stride=stride, kv=kv_of(name) if own_kv else None,
                                           **rope, **attn)
            elif cap == 1 and not own_kv:  # queries only, over the cache the prompt filled
                await ops.attention_inputs(g, bufs["qkv"], w["qn"], bufs["q"], step, n_heads=nh, head_dim=hd,
                                           eps=EPS, qkv_stride=stride, **rope)
                await ops.attention(g, bufs["q"], *caches[name], bufs["out"], step, **attn)
            else:
                await separate(g, cap, name, bufs)
            graphs[name, cap] = (g, bufs)

    plan = attention_plan(device, n_tokens=1, n_heads=nh, n_kv_heads=nkv, head_dim=hd, window=window,
                          max_ctx=slots, splits=splits, **({} if short is None else {"short": short}))
    fused_ok = plan["row_tiles"] == 1 and plan["rows"] * plan["wg"] >= hd
    assert len(graphs["fused", 1][0]) == plan["dispatches"] + (0 if fused_ok else 1)
    assert len(graphs["apart", 1][0]) == plan["dispatches"] + 1

    pos = 0
    runs = [min(T, prompt - p) for p in range(0, prompt, T)] + [1] * decode
    for n in runs:
        outs = {}
        for name in ("fused", "apart"):
            g, bufs = graphs[name, T if pos < prompt else 1]
            rows = np.zeros((bufs["qkv"].shape[0], stride), np.float32)
            rows[:n] = qkv[pos: pos + n]
            device.write(bufs["qkv"].buffer, rows)
            set_step(device, step, pos, n)
            await device.run(g)
            outs[name] = (await device.read(bufs["out"]))[:n]
        raws = [await device.read(c) for c in (*caches["fused"], *caches["apart"])]
        ck, cv, ak, av = [kv_layout.values(r, cache_type, nkv, slots, hd) for r in raws]
        steps = [kv_layout.rounding_step(r, cache_type, nkv, slots, hd) for r in raws]
        if pos < prompt:  # the prompt's run (the separate ops in both graphs): reference attention over the caches
            keys = np.stack([ak[:, p % slots] for p in range(pos + n)])
            vals = np.stack([av[:, p % slots] for p in range(pos + n)])
            want = ref.attention(want_q[pos: pos + n], keys, vals, pos, scale=scale, window=window)
            vmax = float(np.abs(vals).max())
            ds = scale * max(q_tol(want_q[t], t) for t in range(pos, pos + n)) * float(np.abs(keys).sum(axis=-1).max())
            for name in ("fused", "apart"):
                np.testing.assert_allclose(outs[name], want, rtol=0, atol=2e-4 * vmax + 2 * ds * vmax,
                                           err_msg=f"prompt run at pos {pos}")
        else:
            slot = pos % slots
            if own_kv:  # the token's key and value, as attention_inputs' test bounds them
                if cache_type == "f16":
                    k_want, v_want = (a[pos].astype(np.float16).astype(np.float64) for a in (want_k, want_v))
                    k_round, v_round = np.abs(k_want) * 2.0**-10, np.abs(v_want) * 2.0**-10
                else:  # within half the block's step of the exact value
                    k_want, v_want = want_k[pos], want_v[pos]
                    k_round, v_round = steps[0][:, slot] / 2 * (1 + 1e-5), steps[1][:, slot] / 2 * (1 + 1e-5)
                k_tol = float(np.abs(want_k[pos]).max()) * ((pos * 2.4e-7 + 2e-6) * 2 + 2 * 2.0**-11 + 1e-5) + k_round
                np.testing.assert_array_less(np.abs(ck[:, slot] - k_want), k_tol + 1e-12)
                np.testing.assert_array_less(np.abs(cv[:, slot] - v_want),
                                             1e-5 * np.abs(want_v[pos]).max() + v_round + 1e-12)
            # the two paths store the same values up to f32 rounding: one step apart at most, where a value sits
            # at a rounding edge
            np.testing.assert_array_less(np.abs(ck - ak), np.maximum(steps[0], steps[2]) * (1 + 1e-5) + 1e-7)
            np.testing.assert_array_less(np.abs(cv - av), np.maximum(steps[1], steps[3]) * (1 + 1e-5) + 1e-7)
            # reference attention over what the GPU holds: key p at slot p % slots (older keys are masked)
            keys = np.stack([ck[:, p % slots] for p in range(pos + 1)])
            vals = np.stack([cv[:, p % slots] for p in range(pos + 1)])
            want = ref.attention(want_q[pos: pos + 1], keys, vals, pos, scale=scale, window=window)
            vmax = float(np.abs(vals).max())
            ds = scale * q_tol(want_q[pos], pos) * float(np.abs(keys).sum(axis=-1).max())
            np.testing.assert_allclose(outs["fused"], want, rtol=0, atol=2e-4 * vmax + 2 * ds * vmax,
                                       err_msg=f"decode at pos {pos}")
            # the two paths' caches may differ by a step where a value sits near a rounding edge: a score
            # moves by at most scale * sum_d |q_d| |dk_d|, an output by twice that times max|v| plus max|dv|
            dk = np.abs(keys - np.stack([ak[:, p % slots] for p in range(pos + 1)]))
            dv = float(np.abs(vals - np.stack([av[:, p % slots] for p in range(pos + 1)])).max())
            q_abs = np.abs(want_q[pos])  # [heads, hd]
            ds_cache = scale * max(float((q_abs[h] * dk[:, h // (nh // nkv)]).sum(axis=-1).max()) for h in range(nh))
            np.testing.assert_allclose(outs["fused"], outs["apart"], rtol=0,
                                       atol=1e-4 * vmax + 2 * ds_cache * vmax + dv,
                                       err_msg=f"decode at pos {pos}, fused against separate")
        pos += n
    return plan


@pytest.mark.parametrize(
    "case",
    [
        # Gemma 3 270M: 4 heads on 1 kv head (4 rows a tile), v as projected, a sliding ring that wraps.
        dict(nh=4, nkv=1, hd=256, window=8, slots=ops.kv_slots(40, window=8, max_tokens=4), prompt=10, decode=14, T=4,
             scale=256**-0.5),
        # Gemma 4 sliding: 8 heads on 1 (8 rows), v normed, scale 1.0 on normed q and k, several splits.
        dict(nh=8, nkv=1, hd=256, window=12, slots=ops.kv_slots(40, window=12, max_tokens=6), prompt=9, decode=12,
             T=6, scale=1.0, v_norm=True),
        # Gemma 4 global: head 512, two kv heads (grid y), proportional RoPE, 2 splits.
        dict(nh=8, nkv=2, hd=512, slots=24, prompt=5, decode=6, T=5, scale=1.0, base=1e6, ff=True, v_norm=True,
             splits=2),
        # partial rotation, the value taken from the key projection, small heads; one split (the main entry).
        dict(nh=4, nkv=2, hd=64, n_rot=32, slots=16, prompt=3, decode=8, T=3, scale=0.125, v_norm=True,
             shared_v=True, splits=1),
        # a layer reading another layer's cache: queries only.
        dict(nh=8, nkv=1, hd=256, slots=32, prompt=7, decode=5, T=7, scale=1.0, own_kv=False),
    ],
    ids=["gemma3", "gemma4-sliding", "gemma4-global", "partial-rope-one-split", "queries-only"],
)
async def test_attention_decode(device, case):
    await run_decode(device, seed=case["hd"] + case["nh"], **case)


async def test_attention_decode_fallback_device(device_fallback):
    """The device without shader-f16 and subgroups (the kernels use neither; their libraries must still build)."""
    await run_decode(device_fallback, nh=8, nkv=1, hd=256, window=12, slots=ops.kv_slots(30, window=12, max_tokens=4),
                     prompt=6, decode=8, T=4, scale=1.0, v_norm=True, seed=5)


async def test_attention_decode_short_and_long_split_kernels(device):
    """A cache that can outgrow `short` keys: two split kernels, each storing the token's key while it is the one
    that runs (decoding from 11 to 22 keys with short = 16)."""
    plan = await run_decode(device, nh=4, nkv=1, hd=32, slots=64, prompt=10, decode=12, T=16, scale=32**-0.5,
                            short=16, seed=3)
    assert plan["short_split"] == 16 and plan["dispatches"] == 3


@pytest.mark.parametrize(
    "case",
    [
        dict(nh=4, nkv=1, hd=256, window=8, slots=ops.kv_slots(40, window=8, max_tokens=4), prompt=10, decode=10, T=4,
             scale=256**-0.5),
        dict(nh=8, nkv=2, hd=512, slots=24, prompt=5, decode=5, T=5, scale=1.0, base=1e6, ff=True, v_norm=True,
             splits=2),
        dict(nh=4, nkv=2, hd=64, n_rot=32, slots=16, prompt=3, decode=6, T=3, scale=0.125, v_norm=True,
             shared_v=True, splits=1),
    ],
    ids=["gemma3", "gemma4-global", "partial-rope-one-split"],
)
async def test_attention_decode_q8_0_cache(device, case):
    """The same steps over q8_0 caches: the prompt through attention_inputs and attention's prefill kernel, the
    decode through the fused kernel storing q8_0 blocks, each against reference attention over the values the
    caches hold."""
    await run_decode(device, seed=case["hd"] + 7, cache_type="q8_0", **case)


async def test_attention_decode_q8_0_fallback_device(device_fallback):
    await run_decode(device_fallback, nh=8, nkv=1, hd=256, window=12, slots=ops.kv_slots(30, window=12, max_tokens=4),
                     prompt=6, decode=6, T=4, scale=1.0, v_norm=True, seed=6, cache_type="q8_0")


async def test_attention_decode_falls_back_past_one_row_tile(device):
    """16 query heads on one kv head need two row tiles: the op records attention_inputs and attention."""
    plan = await run_decode(device, nh=16, nkv=1, hd=64, slots=16, prompt=4, decode=3, T=4, scale=0.125, seed=4)
    assert plan["row_tiles"] == 2


async def test_attention_decode_checks_the_cache(device):
    ck, cv = ops.kv_cache(device, n_kv_heads=1, head_dim=8, slots=4)
    other = ops.kv_cache(device, n_kv_heads=1, head_dim=8, slots=4)
    step = device.tensor((8,), "uint32", "step", usage=gpu.UNIFORM)
    layout = dict(n_kv_heads=1, k_offset=16, v_offset=24, slots=4, v_norm=False)
    args = dict(n_heads=2, n_kv_heads=1, head_dim=8, scale=1.0, max_ctx=4, eps=EPS, base=1e4, qkv_stride=32)
    qkv, qn, q, out = device.tensor((1, 32)), device.tensor((8,)), device.tensor((1, 2, 8)), device.tensor((1, 2, 8))
    with pytest.raises(ValueError, match="caches attention reads"):
        await ops.attention_decode(device.graph(), qkv, qn, q, ck, cv, out, step, kv=(qn, *other, layout), **args)
    with pytest.raises(ValueError, match="not the one attention reads"):
        await ops.attention_decode(device.graph(), qkv, qn, q, ck, cv, out, step, kv=(qn, ck, cv, dict(layout, slots=8)),
                                   **args)
