"""NeoX RoPE (ops.rope) against tests/reference_nn.rope (float64).

Tolerance: the kernel forms theta = pos * inv_freq in f32 (as llama.cpp and HF do), so the angle carries a
relative error of a few f32 ulps: |d theta| <= pos * 2.4e-7 (4 ulps of 6e-8, inv_freq <= 1), plus the sin/cos
error after range reduction (~1e-6 here; WGSL allows 2^-11 on [-pi, pi]). A rotated value moves by at most
|x| * |d theta|, hence atol = max|x| * (pos_max * 2.4e-7 + 2e-6) * 2 (a factor 2 for the two terms of each
output)."""

import numpy as np
import pytest

import reference_nn as ref
from rullama_py import gpu, ops

pytestmark = pytest.mark.pyodide


def step_buffer(device, pos, n_tokens):
    s = device.tensor((8,), "uint32", "step", usage=gpu.UNIFORM)
    device.write(s.buffer, np.array([pos, n_tokens, pos + n_tokens, 0, 0, 0, 0, 0], np.uint32))
    return s


def tol(x, pos_max):
    # f32 rounding of the angle (grows with the position), plus WGSL's accuracy bound for sin and cos: an
    # absolute 2^-11 (WGSL spec, "Floating Point Accuracy"). SwiftShader (the browser tests) uses that room,
    # with errors near 3.6e-4; lavapipe is near exact. A rotated value mixes two inputs through one cos and
    # one sin, hence 2 * 2^-11 of the largest input. A wrong angle or pairing errs by O(|x|).
    return float(np.abs(x).max()) * ((pos_max * 2.4e-7 + 2e-6) * 2 + 2 * 2.0**-11)


@pytest.mark.parametrize(
    "cap,n_tok,heads,hd,n_rot,base,pos0,ff",
    [
        (5, 5, 4, 64, 64, 1e4, 0, None),          # prefill from position 0
        (6, 4, 3, 16, 8, 1e4, 11, None),          # partial rotation; fewer tokens than the capacity
        (1, 1, 8, 256, 256, 1e4, 3000, None),     # decode far into the context (Gemma 4 sliding)
        (3, 3, 2, 512, 512, 1e6, 100, "gemma4"),  # Gemma 4 global: proportional rope via 1e30 factors
    ],
)
async def test_rope(device, cap, n_tok, heads, hd, n_rot, base, pos0, ff):
    rng = np.random.default_rng(hd + pos0)
    x = (rng.standard_normal((cap, heads, hd)) * 2).astype(np.float32)
    factors = None
    if ff == "gemma4":  # rope_freqs.weight: 64 x 1.0, then 1e30 (no rotation) for the remaining pairs
        factors = np.concatenate([np.ones(n_rot // 8), np.full(n_rot // 2 - n_rot // 8, 1e30)]).astype(np.float32)
    g = device.graph()
    xt = device.upload(x)
    await ops.rope(g, xt, step_buffer(device, pos0, n_tok), n_heads=heads, head_dim=hd, base=base, n_rot=n_rot,
                   freq_factors=device.upload(factors) if factors is not None else None)
    await device.run(g)
    got = await device.read(xt)
    want = x.astype(np.float64).copy()
    want[:n_tok] = ref.rope(x[:n_tok], pos0, base=base, n_rot=n_rot, freq_factors=factors)
    np.testing.assert_allclose(got, want, rtol=0, atol=tol(x, pos0 + n_tok))
    np.testing.assert_array_equal(got[n_tok:], x[n_tok:])  # tokens past step.n_tokens are untouched
    if factors is not None:  # pairs with factor 1e30 do not turn at all
        np.testing.assert_array_equal(got[:, :, n_rot // 8 : n_rot // 2], x[:, :, n_rot // 8 : n_rot // 2])


async def test_rope_freq_scale_and_token_stride(device):
    """Linear position scaling (Gemma 3 4B+ global layers), and rotating the q and k heads of fused
    [tokens, q | k | v] rows in one dispatch while v stays as it is."""
    n_tok, nq, nkv, hd = 3, 4, 2, 32
    rng = np.random.default_rng(7)
    qkv = rng.standard_normal((n_tok, nq + 2 * nkv, hd)).astype(np.float32)
    g = device.graph()
    t = device.upload(qkv)
    await ops.rope(g, t, step_buffer(device, 40, n_tok), n_heads=nq + nkv, head_dim=hd, base=1e6,
                   freq_scale=0.125, token_stride=nq + 2 * nkv)
    assert len(g) == 1
    await device.run(g)
    got = await device.read(t)
    want = qkv.astype(np.float64).copy()
    want[:, : nq + nkv] = ref.rope(qkv[:, : nq + nkv], 40, base=1e6, freq_scale=0.125)
    np.testing.assert_allclose(got, want, rtol=0, atol=tol(qkv, 43))
    np.testing.assert_array_equal(got[:, nq + nkv :], qkv[:, nq + nkv :])


async def test_rope_large_position_matches_f64(device):
    """Range reduction keeps sin/cos sane at 100K positions (the raw angle is ~1e5 rad there)."""
    x = np.random.default_rng(3).standard_normal((1, 1, 128)).astype(np.float32)
    g = device.graph()
    t = device.upload(x)
    await ops.rope(g, t, step_buffer(device, 100_000, 1), n_heads=1, head_dim=128, base=1e4)
    await device.run(g)
    np.testing.assert_allclose(await device.read(t), ref.rope(x, 100_000, base=1e4), rtol=0, atol=tol(x, 100_001))
