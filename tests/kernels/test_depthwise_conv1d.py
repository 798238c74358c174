"""ops.depthwise_conv1d (the causal depthwise conv of Gemma 4's audio light-conv blocks) against
tests/reference_nn.depthwise_conv1d (float64; transformers' Gemma4AudioCausalConv1d, checked against it in torch
while writing; test_reference_by_hand pins its conventions without torch).

Tolerance: each output is a sum of at most K products, each step one fma or a multiply and an add, so
|got - want| <= 2 K u sum_j |w[c, j]| |x[t - K + 1 + j, c]| (u = 2^-24), the reference applied to |x|, |w|."""

import numpy as np
import pytest

import reference_nn as ref
from rullama_py import ops

pytestmark = pytest.mark.pyodide

U = 2.0**-24


def test_reference_by_hand():
    """w[c, j] multiplies x[t - (K - 1) + j, c]: the last tap is the current row, rows before 0 are zero."""
    x = np.zeros((6, 2))
    x[2, 1] = 1.0
    w = np.zeros((2, 3))
    w[1] = [5.0, 3.0, 2.0]  # taps on rows t - 2, t - 1, t
    want = np.zeros((6, 2))
    want[2:5, 1] = [2.0, 3.0, 5.0]
    np.testing.assert_array_equal(ref.depthwise_conv1d(x, w), want)
    np.testing.assert_array_equal(ref.depthwise_conv1d(np.ones((2, 1)), np.ones((1, 5))), [[1.0], [2.0]])


async def run_dw(device, x, w, *, check_input=True):
    rows, channels = x.shape
    kernel = w.shape[1]
    xt, wt, out = device.upload(x), device.upload(w), device.tensor((rows, channels))
    g = device.graph()
    await ops.depthwise_conv1d(g, xt, wt, out, channels=channels, kernel=kernel)
    assert len(g) == 1
    await device.run(g)
    got = await device.read(out)
    if check_input:
        np.testing.assert_array_equal(await device.read(xt), x)
    want = ref.depthwise_conv1d(x, w)
    bound = 2 * kernel * U * ref.depthwise_conv1d(np.abs(x), np.abs(w))
    err = np.abs(got - want)
    assert np.all(err <= bound), f"max error {err.max():.3g}, worst error / bound {(err / np.maximum(bound, 1e-300)).max():.3g}"
    print(f"depthwise_conv1d {x.shape} k {kernel}: max error {err.max():.3g}")
    return got


@pytest.mark.parametrize(
    "rows,channels,kernel",
    [
        (13, 7, 5),  # odd sizes, Gemma 4's kernel
        (3, 16, 5),  # fewer rows than the kernel: every row reaches into the zero padding
        (9, 33, 1),  # kernel 1: a per-channel scale
        (1, 5, 4),
    ],
)
async def test_depthwise_conv1d(device, rows, channels, kernel):
    rng = np.random.default_rng(rows * channels + kernel)
    x = (rng.standard_normal((rows, channels)) * 3).astype(np.float32)
    w = rng.standard_normal((channels, kernel)).astype(np.float32)
    await run_dw(device, x, w)


async def test_depthwise_conv1d_fallback(device_fallback):
    rng = np.random.default_rng(1)
    await run_dw(device_fallback, rng.standard_normal((11, 9)).astype(np.float32),
                 rng.standard_normal((9, 5)).astype(np.float32))


async def test_depthwise_conv1d_real_and_causal(device):
    """The tower's size (30 s: 750 tokens x 1024, kernel 5), recorded for that capacity. Causal: the rows of a
    shorter real length (517) do not change when the rows past it hold other values."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((750, 1024)).astype(np.float32)
    w = (rng.standard_normal((1024, 5)) * 0.5).astype(np.float32)
    a = await run_dw(device, x, w)
    x[517:] = rng.standard_normal((233, 1024)).astype(np.float32) * 1e3
    b = await run_dw(device, x, w)
    np.testing.assert_array_equal(a[:517], b[:517])
