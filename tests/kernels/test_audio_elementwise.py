"""glu, silu and bias_add (the Gemma 4 audio tower's elementwise ops) against tests/reference_nn.py (float64;
glu and silu are torch.nn.functional's, checked against torch while writing).

Tolerance of sigmoid(z) (shaders/sigmoid_lib.wgsl) from WGSL's accuracy rules, rho = 2^-23 (an ULP is at most
rho relative), a = |z|: e = exp(-a) is within (3 + 2a) ULP; 1 + e (half an ULP) and 1 / (1 + e) (2.5 ULP) make
r; for z >= 0, sigmoid = r is within e / (1 + e) (3 + 2a) + 3 <= 4.5 ULP (e / (1 + e) (3 + 2a) <= 1.5); for z < 0,
sigmoid = e r is within (3 + 2a) + 3 + 0.5 ULP. The product with x adds half an ULP: relative 5 rho (z >= 0) and
(7 + 2a) rho (z < 0), rounded up to (9 + 2a) rho. WGSL may flush subnormals to zero, which costs at most 2^-126
(times |x|) absolute: e underflows (a > 87) or a product lands below 2^-126. bias_add is one f32 addition,
correctly rounded, so it must equal numpy's float32 sum exactly."""

import numpy as np
import pytest

import reference_nn as ref
from rullama_py import ops

pytestmark = pytest.mark.pyodide

RHO = 2.0**-23
TINY = 2.0**-126
FLT_MAX = float(np.finfo(np.float32).max)
EXTREMES = [0.0, -0.0, 1e-30, -1e-30, 1e-3, -1e-3, 20.0, -20.0, 87.0, -87.0, 88.5, -88.5, 100.0, -100.0,
            1e30, -1e30, FLT_MAX, -FLT_MAX]


def gated_bound(x, z, want):
    """Bound on |got - want| for x * sigmoid(z) (module docstring)."""
    a = np.minimum(np.abs(np.asarray(z, np.float64)), 200.0)
    rel = np.where(np.asarray(z) >= 0, 5.0, 9.0 + 2.0 * a) * RHO
    return rel * np.abs(want) + TINY * (np.abs(np.asarray(x, np.float64)) + 1.0)


def check(got, want, bound, z, what):
    assert np.all(np.isfinite(got)), f"{what}: non-finite outputs"
    err = np.abs(got - want)
    assert np.all(err <= bound), f"{what}: max error {err.max():.3g}, worst error / bound {(err / bound).max():.3g}"
    normal = (np.abs(want) > 1e-30) & (np.abs(z) < 87)  # where no flush to zero can happen
    rel = err[normal] / np.abs(want[normal])
    print(f"{what}: max error {err.max():.3g}, max relative error where exp(-|z|) is normal {rel.max():.3g}, "
          f"worst error / bound {(err / bound).max():.3g}")


def activations(rng, shape, scale=6.0):
    x = (rng.standard_normal(shape) * scale).astype(np.float32)
    flat = x.reshape(-1)
    flat[: len(EXTREMES)] = EXTREMES
    return x


def test_sigmoid_reference():
    """The reference sigmoid is 1 / (1 + exp(-z)) without overflow: exact points and symmetry."""
    z = np.array([-1e30, -800.0, -3.0, 0.0, 3.0, 800.0, 1e30])
    s = ref.sigmoid(z)
    assert np.all(np.isfinite(s)) and s[3] == 0.5 and s[0] == 0.0 and s[-1] == 1.0
    np.testing.assert_allclose(s + ref.sigmoid(-z), 1.0, rtol=1e-15)
    np.testing.assert_allclose(ref.sigmoid(3.0), 1 / (1 + np.exp(-3.0)), rtol=1e-15)
    np.testing.assert_allclose(ref.glu(np.array([[2.0, -1.0, 0.0, 1.0]])), [[1.0, -1.0 / (1 + np.exp(-1.0))]],
                               rtol=1e-15)


@pytest.mark.parametrize("shape,in_place", [((3, 7), False), ((5, 257), True), ((1, 4096), False)])
async def test_silu(device, shape, in_place):
    x = activations(np.random.default_rng(sum(shape)), shape)
    xt = device.upload(x)
    g = device.graph()
    if in_place:
        await ops.silu(g, xt)
        out = xt
    else:
        out = device.tensor(shape)
        await ops.silu(g, xt, out)
    assert len(g) == 1
    await device.run(g)
    got = await device.read(out)
    if not in_place:
        np.testing.assert_array_equal(await device.read(xt), x)
    want = ref.silu(x)
    check(got, want, gated_bound(x, x, want), x, f"silu {shape}")
    flat = got.reshape(-1)
    assert flat[16] == FLT_MAX and flat[17] == 0.0  # silu(FLT_MAX) = FLT_MAX, silu(-FLT_MAX) = -0


async def test_silu_fallback(device_fallback):
    x = activations(np.random.default_rng(1), (4, 33))
    xt, out = device_fallback.upload(x), device_fallback.tensor((4, 33))
    g = device_fallback.graph()
    await ops.silu(g, xt, out)
    await device_fallback.run(g)
    want = ref.silu(x)
    check(await device_fallback.read(out), want, gated_bound(x, x, want), x, "silu fallback")


async def test_silu_large(device):
    """The FFN hidden of 30 s of audio and more (2100 tokens x 4096): more workgroups than one grid dimension."""
    x = (np.random.default_rng(2).standard_normal((2100, 4096)) * 4).astype(np.float32)
    t = device.upload(x)
    g = device.graph()
    await ops.silu(g, t)
    await device.run(g)
    want = ref.silu(x)
    check(await device.read(t), want, gated_bound(x, x, want), x, "silu 2100 x 4096")


@pytest.mark.parametrize("rows,n", [(3, 5), (2, 130), (750, 1024)])
async def test_glu(device, rows, n):
    rng = np.random.default_rng(rows + n)
    x = (rng.standard_normal((rows, 2 * n)) * 5).astype(np.float32)
    x[0, : min(n, 9)] = [3.0, -2.0, 1e30, -1e30, FLT_MAX, 0.0, 1.0, -1.0, 7.0][: min(n, 9)]
    gates = [-1e30, 1e30, 100.0, -100.0, -FLT_MAX, 50.0, -88.5, 88.5, 0.0]
    x[0, n : n + min(n, 9)] = gates[: min(n, 9)]
    xt, out = device.upload(x), device.tensor((rows, n))
    g = device.graph()
    await ops.glu(g, xt, out, n=n)
    assert len(g) == 1
    await device.run(g)
    want = ref.glu(x)
    check(await device.read(out), want, gated_bound(x[:, :n], x[:, n:], want), x[:, n:], f"glu {rows} x 2 * {n}")


async def test_glu_fallback(device_fallback):
    x = (np.random.default_rng(3).standard_normal((5, 22)) * 5).astype(np.float32)
    xt, out = device_fallback.upload(x), device_fallback.tensor((5, 11))
    g = device_fallback.graph()
    await ops.glu(g, xt, out, n=11)
    await device_fallback.run(g)
    want = ref.glu(x)
    check(await device_fallback.read(out), want, gated_bound(x[:, :11], x[:, 11:], want), x[:, 11:], "glu fallback")


@pytest.mark.parametrize("rows,n", [(3, 7), (4, 257), (750, 1536)])
async def test_bias_add(device, rows, n):
    rng = np.random.default_rng(rows * n)
    x = (rng.standard_normal((rows, n)) * 10).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    b[:3] = [1e-30, -1e20, 0.0]
    t = device.upload(x)
    g = device.graph()
    await ops.bias_add(g, t, device.upload(b), n=n)
    assert len(g) == 1
    await device.run(g)
    np.testing.assert_array_equal(await device.read(t), ref.bias_add(x, b).astype(np.float32))


async def test_bias_add_fallback(device_fallback):
    x = np.random.default_rng(4).standard_normal((6, 9)).astype(np.float32)
    b = np.arange(9, dtype=np.float32) - 4.5
    t = device_fallback.upload(x)
    g = device_fallback.graph()
    await ops.bias_add(g, t, device_fallback.upload(b), n=9)
    await device_fallback.run(g)
    np.testing.assert_array_equal(await device_fallback.read(t), x + b)


async def test_bias_add_offset(device):
    """b_offset picks a bias out of a stacked vector (Kokoro's style terms): the values before and after it are
    never read."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((5, 13)).astype(np.float32)
    stacked = rng.standard_normal(40).astype(np.float32)
    t = device.upload(x)
    g = device.graph()
    await ops.bias_add(g, t, device.upload(stacked), n=13, b_offset=21)
    await device.run(g)
    np.testing.assert_array_equal(await device.read(t), ref.bias_add(x, stacked[21:34]).astype(np.float32))
    with pytest.raises(ValueError, match="fewer than 30"):
        await ops.bias_add(device.graph(), t, device.upload(stacked), n=13, b_offset=30)
