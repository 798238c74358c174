"""ops.clamp (the vision tower's clippable linears) against tests/reference_nn.clamp (torch.clamp semantics).

Tolerance: none. min and max of f32 values are exact, so the kernel must return exactly the reference (which
is float64 on f32 inputs and limits, hence f32-representable). With no limits (+-inf, as transformers'
buffers default to, or +-FLT_MAX, as some GGUF files store) every value, down to the largest finite ones,
must come back bit for bit."""

import numpy as np
import pytest

import reference_nn as ref
from rullama_py import ops

pytestmark = pytest.mark.pyodide

FLT_MAX = float(np.finfo(np.float32).max)


def values(rng, shape):
    x = (rng.standard_normal(shape) * 50).astype(np.float32)
    flat = x.reshape(-1)
    flat[:8] = [0.0, -0.0, FLT_MAX, -FLT_MAX, 1e-30, -1e-30, 3e38, -3e38]  # extremes pass unclipped
    return x


async def run_clamp(device, x, limits, pair, in_place):
    xt = device.upload(x)
    lt = device.upload(np.asarray(limits, np.float32))
    g = device.graph()
    if in_place:
        await ops.clamp(g, xt, lt, pair=pair)
        out = xt
    else:
        out = device.tensor(x.shape)
        await ops.clamp(g, xt, lt, out, pair=pair)
    assert len(g) == 1
    await device.run(g)
    got = await device.read(out)
    if not in_place:
        np.testing.assert_array_equal(await device.read(xt), x)  # the input is left alone
    return got


@pytest.mark.parametrize(
    "shape,limits,pair,in_place",
    [
        ((3, 7), (-1.5, 2.25, -np.inf, np.inf), 0, False),        # odd size, input pair, output pair unbounded
        ((5, 33), (-np.inf, np.inf, -0.75, 10.0), 1, True),       # output pair, in place
        ((2, 9), (-np.inf, 4.0, -FLT_MAX, FLT_MAX), 0, True),     # one side limited only
        ((4, 768), (-17.0, 17.0, -30.0, 31.0), 1, False),         # a tower row width
    ],
)
async def test_clamp(device, shape, limits, pair, in_place):
    x = values(np.random.default_rng(sum(shape)), shape)
    got = await run_clamp(device, x, limits, pair, in_place)
    want = ref.clamp(x, limits[2 * pair], limits[2 * pair + 1])
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("limits", [(-np.inf, np.inf, -np.inf, np.inf), (-FLT_MAX, FLT_MAX, -FLT_MAX, FLT_MAX)])
@pytest.mark.parametrize("pair", [0, 1])
async def test_clamp_unbounded_passes_through(device, limits, pair):
    """An unclipped linear: +-inf (uploaded from numpy as real infinities) or +-FLT_MAX limits change nothing,
    not even the largest finite values; with +-inf limits, infinities in x pass too."""
    x = values(np.random.default_rng(3), (6, 100))
    if np.isinf(limits[0]):
        x[1, :2] = [np.inf, -np.inf]
    for in_place in (False, True):
        got = await run_clamp(device, x, limits, pair, in_place)
        np.testing.assert_array_equal(got.view(np.uint32), x.view(np.uint32))


async def test_clamp_one_pipeline_many_limits(device):
    """The limits are read at run time: one recorded graph, new limits written between runs."""
    x = values(np.random.default_rng(4), (3, 50))
    xt, lt, out = device.upload(x), device.upload(np.zeros(4, np.float32)), device.tensor(x.shape)
    g = device.graph()
    await ops.clamp(g, xt, lt, out, pair=1)
    for limits in ((0, 0, -2.0, 3.0), (0, 0, -np.inf, 0.5), (0, 0, -100.0, np.inf)):
        device.write(lt.buffer, np.asarray(limits, np.float32))
        await device.run(g)
        np.testing.assert_array_equal(await device.read(out), ref.clamp(x, limits[2], limits[3]))


async def test_clamp_fallback(device_fallback):
    x = values(np.random.default_rng(5), (7, 11))
    got = await run_clamp(device_fallback, x, (-np.inf, np.inf, -1.0, 1.0), 1, False)
    np.testing.assert_array_equal(got, ref.clamp(x, -1.0, 1.0))
    got = await run_clamp(device_fallback, x, (-np.inf, np.inf, -1.0, 1.0), 0, True)
    np.testing.assert_array_equal(got.view(np.uint32), x.view(np.uint32))


async def test_clamp_large(device):
    """The tower's widest activation, 2520 patches x 3072 (gate/up of the MLP): 7.7M values, a 2-D grid."""
    x = (np.random.default_rng(6).standard_normal((2520, 3072)) * 20).astype(np.float32)
    got = await run_clamp(device, x, (-np.inf, np.inf, -25.5, 24.0), 1, True)
    np.testing.assert_array_equal(got, ref.clamp(x, -25.5, 24.0))
