"""ops.self_attention (f32 bidirectional attention over one short sequence: Kokoro's PL-BERT) against a float64
numpy reference written here (softmax over all keys j < n, no mask).

Tolerance: each score is a 64-term f32 dot product (relative error <= 64 u of sum |q_d k_d|, u = 2^-24), exp
adds a few ulp, and the output is an f32 sum of n products p_j v_j normalised once: |err| <= (n + 2 D + 8) u
times the scale of the terms, bounded here by (n + 2 D + 8) u * (1 + score spread) * max|v|."""

import numpy as np
import pytest

from rullama_py import gpu, ops

pytestmark = pytest.mark.pyodide

U = 2.0**-24


def reference(q, k, v, n, scale):
    q, k, v = (a.astype(np.float64) for a in (q, k, v))
    out = np.zeros_like(q)
    s = np.einsum("thd,jhd->htj", q[:n], k[:n]) * scale
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    out[:n] = np.einsum("htj,jhd->thd", p, v[:n])
    return out, s


async def run(device, rows, n, heads, dim, scale, seed):
    rng = np.random.default_rng(seed)
    q, k, v = (rng.standard_normal((rows, heads, dim)).astype(np.float32) for _ in range(3))
    k[n:] = 1e4  # past the length: must not be read
    v[n:] = np.nan
    step = device.tensor((8,), "uint32", "step", usage=gpu.UNIFORM)
    device.write(step.buffer, np.array([0, n, n, 0, 0, 0, 0, 0], np.uint32))
    out = device.upload(np.full((rows, heads, dim), 7.0, np.float32))
    g = device.graph()
    await ops.self_attention(g, device.upload(q), device.upload(k), device.upload(v), out, step, n_heads=heads,
                             head_dim=dim, scale=scale)
    assert len(g) == 1
    await device.run(g)
    got = await device.read(out)
    want, s = reference(q, k, v, n, scale)
    spread = float(s.max() - s.min()) if n else 0.0
    bound = (n + 2 * dim + 8) * U * (1 + spread) * np.abs(v[:n]).max() * 4
    err = np.abs(got[:n] - want[:n])
    assert err.max() <= bound, f"max error {err.max():.3g} > bound {bound:.3g}"
    assert np.all(got[n:] == 0.0)
    return err.max()


@pytest.mark.parametrize("rows,n,heads,dim", [(7, 7, 3, 5), (40, 29, 12, 64),
                                              pytest.param(512, 512, 12, 64, marks=pytest.mark.native_only),
                                              (96, 1, 2, 64),
                                              (33, 20, 1, 130)])
async def test_self_attention(device, rows, n, heads, dim):
    await run(device, rows, n, heads, dim, 1.0 / np.sqrt(dim), rows + n)


async def test_self_attention_fallback(device_fallback):
    await run(device_fallback, 50, 44, 12, 64, 0.125, 3)


async def test_self_attention_rows_limit(device):
    t = device.tensor((513, 1, 8))
    with pytest.raises(ValueError, match="at most 512"):
        await ops.self_attention(device.graph(), t, t, t, t, t, n_heads=1, head_dim=8, scale=1.0)
