"""ops.attention_inputs (Gemma's q/k norms, RoPE, v norm and the KV cache store in one dispatch) against the
float64 references of each step: reference.rms_norm, reference_nn.rope, and the cache layout kv_store documents
(f16 [n_kv_heads][slots][head_dim], position p at slot p % slots).

Tolerances. The norm is f32 arithmetic (1e-5 relative, as tests/kernels/test_rms_norm.py); RoPE adds the angle
and sin/cos errors that tests/kernels/test_rope.py derives (tol there, reused here with the normed values'
magnitude). The caches hold f16: the reference is rounded to f16 too, and the kernel's f32 value may round to
the neighbouring f16, so one f16 ulp of the value (2^-10 relative) is added there."""

import numpy as np
import pytest

import kv_layout
import reference
import reference_nn as ref
from rullama_py import gpu, ops

pytestmark = pytest.mark.pyodide

EPS = 1e-6


def step_buffer(device, pos, n_tokens):
    s = device.tensor((8,), "uint32", "step", usage=gpu.UNIFORM)
    device.write(s.buffer, np.array([pos, n_tokens, pos + n_tokens, 0, 0, 0, 0, 0], np.uint32))
    return s


def rope_tol(x, pos_max):
    return float(np.abs(x).max()) * ((pos_max * 2.4e-7 + 2e-6) * 2 + 2 * 2.0**-11)


@pytest.mark.parametrize(
    "cap,n_tok,nh,nkv,hd,n_rot,base,pos0,slots,ff,v_norm,shared_v",
    [
        (1, 1, 4, 1, 256, 256, 1e4, 37, 64, False, False, False),   # Gemma 3 decode: v as projected
        (5, 3, 8, 1, 256, 256, 1e4, 510, 512, False, True, False),  # Gemma 4 sliding, a ring that wraps
        (2, 2, 8, 2, 512, 512, 1e6, 3000, 4096, True, True, False),  # Gemma 4 global: proportional rope
        (3, 3, 4, 2, 64, 32, 1e4, 0, 16, False, True, True),         # partial rotation; value = key projection
    ],
)
async def test_attention_inputs(device, device_fallback, cap, n_tok, nh, nkv, hd, n_rot, base, pos0, slots, ff,
                                v_norm, shared_v):
    rng = np.random.default_rng(hd + pos0)
    qw, kw = nh * hd, nkv * hd
    stride = qw + kw + (0 if shared_v else kw) + 3  # a row wider than its heads
    k_off, v_off = qw, qw if shared_v else qw + kw
    qkv = (rng.standard_normal((cap, stride)) * 2).astype(np.float32)
    qn, kn = (rng.standard_normal(hd).astype(np.float32) for _ in range(2))
    factors = None
    if ff:
        factors = np.concatenate([np.ones(n_rot // 8), np.full(n_rot // 2 - n_rot // 8, 1e30)]).astype(np.float32)
    for dev in (device, device_fallback):
        ck0 = rng.standard_normal((nkv, slots, hd)).astype(np.float16)
        cv0 = rng.standard_normal((nkv, slots, hd)).astype(np.float16)
        ck, cv = dev.upload(ck0), dev.upload(cv0)
        q = dev.upload(np.full((cap, nh, hd), 7.0, np.float32))
        g = dev.graph()
        await ops.attention_inputs(
            g, dev.upload(qkv), dev.upload(qn), q, step_buffer(dev, pos0, n_tok), n_heads=nh, head_dim=hd, eps=EPS,
            base=base, n_rot=n_rot, freq_factors=dev.upload(factors) if ff else None, qkv_stride=stride,
            kv=(dev.upload(kn), ck, cv, dict(n_kv_heads=nkv, k_offset=k_off, v_offset=v_off, slots=slots,
                                              v_norm=v_norm)))
        assert len(g) == 1
        await dev.run(g)
        got_q = await dev.read(q)
        got_k = kv_layout.values(await dev.read(ck), "f16", nkv, slots, hd)
        got_v = kv_layout.values(await dev.read(cv), "f16", nkv, slots, hd)

        x = qkv[:n_tok].astype(np.float64)
        want_q = ref.rope(reference.rms_norm(x[:, :qw].reshape(n_tok, nh, hd), qn, EPS), pos0, base=base,
                          n_rot=n_rot, freq_factors=factors)
        np.testing.assert_allclose(got_q[:n_tok], want_q, rtol=1e-5, atol=rope_tol(want_q, pos0 + n_tok))
        assert (got_q[n_tok:] == 7.0).all()  # tokens past step.n_tokens are left alone
        want_k = ref.rope(reference.rms_norm(x[:, k_off: k_off + kw].reshape(n_tok, nkv, hd), kn, EPS), pos0,
                          base=base, n_rot=n_rot, freq_factors=factors)
        v_lin = x[:, v_off: v_off + kw].reshape(n_tok, nkv, hd)
        want_v = reference.rms_norm(v_lin, None, EPS) if v_norm else v_lin
        want_k_cache, want_v_cache = ck0.astype(np.float64), cv0.astype(np.float64)
        for t in range(n_tok):
            slot = (pos0 + t) % slots
            want_k_cache[:, slot] = want_k[t].astype(np.float16)
            want_v_cache[:, slot] = want_v[t].astype(np.float16)
        k_tol = rope_tol(want_k, pos0 + n_tok) + 1e-5 * np.abs(want_k).max() + np.abs(want_k_cache) * 2.0**-10
        np.testing.assert_array_less(np.abs(got_k - want_k_cache), k_tol + 1e-12)
        np.testing.assert_array_less(np.abs(got_v - want_v_cache),
                                     1e-5 * np.abs(want_v).max() + np.abs(want_v_cache) * 2.0**-10 + 1e-12)


async def test_attention_inputs_queries_only(device, device_fallback):
    """A layer reading another layer's cache: only the queries are normed and turned (no cache bound)."""
    cap, n_tok, nh, hd, pos0 = 2, 2, 3, 128, 9
    rng = np.random.default_rng(3)
    qkv = (rng.standard_normal((cap, nh * hd)) * 2).astype(np.float32)
    qn = rng.standard_normal(hd).astype(np.float32)
    for dev in (device, device_fallback):
        q = dev.tensor((cap, nh, hd))
        g = dev.graph()
        await ops.attention_inputs(g, dev.upload(qkv), dev.upload(qn), q, step_buffer(dev, pos0, n_tok), n_heads=nh,
                                   head_dim=hd, eps=EPS, base=1e4, qkv_stride=nh * hd)
        await dev.run(g)
        want = ref.rope(reference.rms_norm(qkv.reshape(cap, nh, hd).astype(np.float64), qn, EPS), pos0, base=1e4)
        np.testing.assert_allclose(await dev.read(q), want, rtol=1e-5, atol=rope_tol(want, pos0 + n_tok))


async def test_attention_inputs_bad_layout(device):
    q = device.tensor((1, 2, 8))
    g = device.graph()
    with pytest.raises(ValueError, match="do not fit"):
        await ops.attention_inputs(g, device.tensor((1, 32)), device.tensor((8,)), q, step_buffer(device, 0, 1),
                                   n_heads=2, head_dim=8, eps=EPS, base=1e4, qkv_stride=32,
                                   kv=(device.tensor((8,)), device.tensor((1, 4, 8), "float16"),
                                       device.tensor((1, 4, 8), "float16"),
                                       dict(n_kv_heads=1, k_offset=16, v_offset=28, slots=4, v_norm=True)))


@pytest.mark.parametrize("v_norm", [False, True])
async def test_attention_inputs_q8_0_cache(device, device_fallback, v_norm):
    """Stores into a q8_0 cache against gguf-py's Q8_0 quantiser. Without the value norm the value row is stored as
    projected, so its quants must equal gguf-py's exactly, ties included, except where x / d sits within 1e-4
    of a rounding edge (the GPU's 1 / d may differ from numpy's in the last place); d must be gguf-py's before its rounding to
    f16. The normed and turned key (and value), whose inputs carry the kernels' f32 error, must dequantise to
    the reference within half a step plus that error. Slots the run does not write keep their bytes."""
    cap, n_tok, nh, nkv, hd, pos0, slots = 3, 3, 4, 2, 256, 14, 16  # positions 14, 15, 16: the ring wraps
    rng = np.random.default_rng(11)
    qw, kw = nh * hd, nkv * hd
    stride = qw + 2 * kw
    qkv = (rng.standard_normal((cap, stride)) * 2).astype(np.float32)
    v0 = qw + kw
    qkv[0, v0: v0 + 32] = 0.0                 # an all-zero block: d = 0, quants 0
    qkv[1, v0 + 32: v0 + 64] *= 1e3           # a block of large values
    qkv[2, v0 + 64] = 300.0                   # one outlier sets its block's scale
    # exact ties: max 15.875 gives d = 0.125, and x / d = k + 0.5 rounds away from zero (C's roundf, gguf-py's
    # np_roundf), not to even; every device the tests run on divides exactly, so these are ties there too
    qkv[1, v0 + hd: v0 + hd + 32] = np.resize([15.875, 0.3125, -0.3125, 0.0625, -0.0625, 0.1875, -0.4375], 32)
    qn, kn = (rng.standard_normal(hd).astype(np.float32) for _ in range(2))
    words = (hd // 4 + hd // 32) * nkv * slots
    for dev in (device, device_fallback):
        ck, cv = ops.kv_cache(dev, n_kv_heads=nkv, head_dim=hd, slots=slots, cache_type="q8_0")
        assert ops.kv_cache_type(ck, cv) == "q8_0" and ck.nbytes == ops.kv_cache_bytes(nkv, hd, slots, "q8_0")
        assert ck.nbytes == nkv * slots * hd // 32 * 36
        before = {}
        for name, c in (("k", ck), ("v", cv)):  # random quants, and scales that are finite floats
            init = rng.integers(0, 2**32, words, dtype=np.uint32).reshape(nkv, slots, -1)
            init[..., hd // 4:] = rng.uniform(0.1, 1.0, init[..., hd // 4:].shape).astype(np.float32).view(np.uint32)
            dev.write(c.buffer, init)
            before[name] = init
        q = dev.tensor((cap, nh, hd))
        g = dev.graph()
        await ops.attention_inputs(
            g, dev.upload(qkv), dev.upload(qn), q, step_buffer(dev, pos0, n_tok), n_heads=nh, head_dim=hd, eps=EPS,
            base=1e4, qkv_stride=stride,
            kv=(dev.upload(kn), ck, cv, dict(n_kv_heads=nkv, k_offset=qw, v_offset=v0, slots=slots, v_norm=v_norm)))
        await dev.run(g)
        raw = {"k": await dev.read(ck), "v": await dev.read(cv)}

        x = qkv[:n_tok].astype(np.float64)
        want = {"k": ref.rope(reference.rms_norm(x[:, qw: qw + kw].reshape(n_tok, nkv, hd), kn, EPS), pos0,
                              base=1e4)}
        v_lin = x[:, v0: v0 + kw].reshape(n_tok, nkv, hd)
        want["v"] = reference.rms_norm(v_lin, None, EPS) if v_norm else v_lin
        written = [(pos0 + t) % slots for t in range(n_tok)]
        for name in ("k", "v"):
            got_q, got_d = kv_layout.q8_0_parts(raw[name], nkv, slots, hd)
            got = kv_layout.values(raw[name], "q8_0", nkv, slots, hd)
            words_now = np.frombuffer(raw[name].tobytes(), np.uint32).reshape(nkv, slots, -1)
            kept = [s for s in range(slots) if s not in written]
            np.testing.assert_array_equal(words_now[:, kept], before[name][:, kept])
            for t, slot in enumerate(written):
                w = want[name][t]  # [nkv, hd]
                err = (rope_tol(w, pos0 + n_tok) if name == "k" else 0.0) + 1e-5 * np.abs(w).max()
                if name == "v" and not v_norm:  # stored as projected: gguf-py's quants exactly
                    oq, od = kv_layout.gguf_q8_0(w)
                    exact = np.float32(np.abs(w.reshape(nkv, -1, 32)).max(axis=-1) / np.float32(127))
                    np.testing.assert_allclose(got_d[:, slot], exact, rtol=1e-6)
                    np.testing.assert_array_equal(got_d[:, slot].astype(np.float16), od.astype(np.float16))
                    with np.errstate(divide="ignore", invalid="ignore"):
                        scaled = np.abs(w) / np.repeat(exact, 32, axis=-1)
                    frac = scaled - np.floor(scaled)
                    edge = (np.abs(frac - 0.5) < 1e-4) & (frac != 0.5)
                    assert (got_q[:, slot] != oq)[~edge].sum() == 0, f"quants differ from gguf-py at slot {slot}"
                    if t == 0:  # the all-zero block of kv head 0
                        assert got_d[0, slot, 0] == 0 and (got_q[0, slot, :32] == 0).all()
                step = np.repeat(got_d[:, slot], 32, axis=-1)
                np.testing.assert_array_less(np.abs(got[:, slot] - w), step / 2 * (1 + 1e-5) + err + 1e-12,
                                             err_msg=f"{name} at slot {slot}")
                assert np.abs(got_q[:, slot]).max() <= 127
