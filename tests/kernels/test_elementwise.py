"""gelu_mul, add, scale_inplace and softcap against tests/reference_nn.py (float64).

Tolerances: each output is a handful of f32 operations on O(1..10) values, so a few f32 ulps relative; the
tanh in gelu_tanh and softcap is computed as 1 - 2 / (exp(2u) + 1), which cancels near u = 0 and leaves an
absolute error of a few 1e-7 (times the prefactor: |x| / 2 for gelu, cap for softcap)."""

import math

import numpy as np
import pytest

import reference_nn as ref
from rullama_py import ops

pytestmark = pytest.mark.pyodide


def test_gelu_reference_is_torchs():
    """Our reference is torch's gelu(approximate="tanh"): check against torch when it is installed, and
    against the closed form at a few points always (gelu(0) = 0, odd part, large-x limits)."""
    x = np.linspace(-12, 12, 97)
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        want = torch.nn.functional.gelu(torch.tensor(x, dtype=torch.float64), approximate="tanh").numpy()
        np.testing.assert_allclose(ref.gelu_tanh(x), want, rtol=1e-12, atol=1e-12)
    assert ref.gelu_tanh(0.0) == 0.0
    np.testing.assert_allclose(ref.gelu_tanh(x) - ref.gelu_tanh(-x), x, atol=1e-12)  # gelu(x) - gelu(-x) = x
    u = math.sqrt(2 / math.pi) * (1 + 0.044715)
    assert abs(ref.gelu_tanh(1.0) - 0.5 * (1 + math.tanh(u))) < 1e-15


@pytest.mark.parametrize("rows,n,fused", [(3, 200, False), (2, 136, True), (1, 6144, False)])
async def test_gelu_mul(device, rows, n, fused):
    rng = np.random.default_rng(n)
    gate = (rng.standard_normal((rows, n)) * 4).astype(np.float32)
    gate[0, :8] = [0.0, -30, 30, 1e-3, -1e-3, 6, -6, 100]  # zero, saturated tails, tiny values
    up = rng.standard_normal((rows, n)).astype(np.float32)
    out = device.tensor((rows, n))
    g = device.graph()
    if fused:
        await ops.gelu_mul(g, device.upload(np.concatenate([gate, up], axis=1)), None, out, n=n, fused=True)
    else:
        await ops.gelu_mul(g, device.upload(gate), device.upload(up), out, n=n)
    assert len(g) == 1
    await device.run(g)
    want = ref.gelu_mul(gate, up)
    err = np.abs(await device.read(out) - want)
    assert np.all(err <= 1e-5 * np.abs(want) + 1e-6 * (1 + np.abs(gate * up))), err.max()


async def test_add_and_inplace(device):
    rng = np.random.default_rng(2)
    a, b = (rng.standard_normal((5, 100)).astype(np.float32) for _ in range(2))
    ta, tb, out = device.upload(a), device.upload(b), device.tensor((5, 100))
    g = device.graph()
    await ops.add(g, ta, tb, out, n=100)
    await ops.add(g, ta, tb, ta, n=100)  # a += b: the residual update, in place
    await ops.add(g, ta, tb, tb, n=100)  # b = (a + b) + b, in place on the second operand
    await device.run(g)
    np.testing.assert_array_equal(await device.read(out), a + b)
    np.testing.assert_array_equal(await device.read(ta), a + b)
    np.testing.assert_array_equal(await device.read(tb), (a + b) + b)


async def test_scale_inplace(device):
    x = np.random.default_rng(3).standard_normal((4, 33)).astype(np.float32)
    s = np.array([0.37], np.float32)
    t1, t2 = device.upload(x), device.upload(x)
    g = device.graph()
    await ops.scale_inplace(g, t1, device.upload(s))
    await ops.scale_inplace(g, t2, 2.5)
    await device.run(g)
    np.testing.assert_array_equal(await device.read(t1), x * s[0])
    np.testing.assert_array_equal(await device.read(t2), x * np.float32(2.5))


async def test_softcap(device):
    x = (np.random.default_rng(4).standard_normal((2, 1000)) * 40).astype(np.float32)
    x[0, :5] = [0.0, 1e-4, -1e-4, 1e4, -1e30]
    t = device.upload(x)
    g = device.graph()
    await ops.softcap(g, t, cap=30.0, n=1000)
    await device.run(g)
    got = await device.read(t)
    np.testing.assert_allclose(got, ref.softcap(x, 30.0), rtol=1e-6, atol=30 * 4e-7)
    assert np.all(np.abs(got) <= 30.0)
