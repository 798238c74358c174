"""NeoX RoPE (ops.rope) against tests/reference_nn.rope (float64).

Tolerance: the kernel forms theta = pos * inv_freq in f32 (as llama.cpp and HF do), so the angle carries a
relative error of a few f32 ulps: |d theta| <= pos * 2.4e-7 (4 ulps of 6e-8, inv_freq <= 1), plus the sin/cos
error after range reduction (~1e-6 here; WGSL allows 2^-11 on [-pi, pi]). A rotated value moves by at most
|x| * |d theta|, hence atol = max|x| * (pos_max * 2.4e-7 + 2e-6) * 2 (a factor 2 for the two terms of each
output).

ops.rope_2d (the vision tower's axial RoPE) against tests/reference_nn.rope_2d, which equals transformers'
Gemma4VisionRotaryEmbedding + apply_multidimensional_rope to 2e-14 (checked once with float64 angles; the
tests do not import torch). Its angles p * base^(-2i / (hd/2)) take exp2 for the frequency, which WGSL allows
3 + 2|x| ulp for |x| <= log2(base) (~16 ulp at base 100), and two f32 products: a relative angle error of at
most ~20 ulp = 1.2e-6, so |d theta| <= p_max * 1.2e-6 (inv_freq <= 1); then the same sin/cos bound as above:
atol = 2 * max|x| * (p_max * 1.2e-6 + 2e-6 + 2^-11)."""

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


def tol_2d(x, p_max):
    return 2 * float(np.abs(x).max()) * (p_max * 1.2e-6 + 2e-6 + 2.0**-11)


async def check_rope_2d(device, x, positions, *, heads, hd, base, token_stride=None):
    g = device.graph()
    xt = device.upload(x)
    await ops.rope_2d(g, xt, device.upload(positions.astype(np.uint32)), n_heads=heads, head_dim=hd, base=base,
                      token_stride=token_stride)
    assert len(g) == 1
    await device.run(g)
    got = await device.read(xt)
    want = x.astype(np.float64).copy()
    want[:, :heads] = ref.rope_2d(x[:, :heads], positions, base=base)
    err = float(np.abs(got - want).max())
    np.testing.assert_allclose(got, want, rtol=0, atol=tol_2d(x, positions.max()))
    np.testing.assert_array_equal(got[:, heads:], x[:, heads:])  # heads past n_heads (token_stride) untouched
    return err


@pytest.mark.parametrize("n_tok,heads,hd,stride", [(7, 3, 8, None), (5, 2, 16, 5), (13, 12, 64, None)])
async def test_rope_2d(device, n_tok, heads, hd, stride):
    """Odd token and head counts, a small head (hd 8: two pairs per axis), the
    q and k heads of fused [tokens, q | k | v] rows (stride 5 heads: v left as it is), the tower's 12 x 64."""
    rng = np.random.default_rng(n_tok * hd)
    x = (rng.standard_normal((n_tok, stride or heads, hd)) * 2).astype(np.float32)
    pos = np.stack([rng.integers(0, 48, n_tok), rng.integers(0, 30, n_tok)], axis=-1)
    await check_rope_2d(device, x, pos, heads=heads, hd=hd, base=100.0, token_stride=stride)


async def test_rope_2d_fallback(device_fallback):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 2, 64)).astype(np.float32)
    pos = np.array([[0, 0], [1, 0], [0, 1], [5, 3], [47, 29], [2, 40]])
    await check_rope_2d(device_fallback, x, pos, heads=2, hd=64, base=100.0)


async def test_rope_2d_10080_patches(device):
    """The largest image: 10080 patches in a 120 x 84 grid, row-major (patch t = py * 120 + px), 12 heads x 64."""
    pw, ph = 120, 84
    py, px = np.divmod(np.arange(pw * ph), pw)
    x = np.random.default_rng(2).standard_normal((pw * ph, 12, 64)).astype(np.float32)
    await check_rope_2d(device, x, np.stack([px, py], axis=-1), heads=12, hd=64, base=100.0)
