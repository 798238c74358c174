"""ops.standardize against tests/reference_nn.standardize (float64).

Tolerance: the kernel makes two f32 operations on f32 inputs, x - bias and a multiply, each correctly rounded
in WGSL (within 2^-24 relative), so |got - want| <= 2^-23 * |want| (to first order; the inputs are the same f32
values in both). Values are kept away from the subnormal range, which a GPU may flush."""

import numpy as np
import pytest

import reference_nn as ref
from rullama_py import ops

pytestmark = pytest.mark.pyodide


async def check(device, rows, n, seed):
    rng = np.random.default_rng(seed)
    # Like the pooled features: large (sqrt(d) times activations of O(1)), with a per-column offset that the bias
    # mostly cancels and a per-column scale of about 1/std.
    bias = (rng.standard_normal(n) * 40).astype(np.float32)
    scale = rng.uniform(0.02, 2.0, n).astype(np.float32)
    x = (bias + rng.standard_normal((rows, n)) * 30).astype(np.float32)
    xt = device.upload(x)
    g = device.graph()
    await ops.standardize(g, xt, device.upload(bias), device.upload(scale), n=n)
    assert len(g) == 1
    await device.run(g)
    got = await device.read(xt)
    want = ref.standardize(x, bias, scale)
    err = np.abs(got - want)
    assert np.all(err <= 2.0**-23 * np.abs(want)), float((err / np.abs(want)).max())


@pytest.mark.parametrize("rows,n", [(1, 5), (7, 33), (3, 768)])
async def test_standardize(device, rows, n):
    await check(device, rows, n, seed=rows * n)


async def test_standardize_fallback(device_fallback):
    await check(device_fallback, 5, 17, seed=1)


async def test_standardize_tower_output(device):
    """The largest image's soft tokens: 10080 patches pooled 3 x 3 -> 1120 rows of 768."""
    await check(device, 1120, 768, seed=2)
