"""ops.avg_pool_2d against tests/reference_nn.avg_pool_by_positions (transformers' Gemma4VisionPooler
._avg_pool_by_positions, which pools by the patches' (px, py) positions rather than by their order).

Tolerance: the kernel adds the k^2 values of a block in f32 (k^2 - 1 roundings) and multiplies once by
f32(scale / k^2) (two more), each within 2^-24 of its result: |got - want| <= (k^2 + 1) * 2^-24 * scale / k^2
* sum|x over the block|, computed per output value from the same reference applied to |x|."""

import numpy as np
import pytest

import reference_nn as ref
from rullama_py import ops

pytestmark = pytest.mark.pyodide

SENTINEL = 7.0


def grid_positions(pw, ph):
    """(px, py) of the patches of a pw x ph image in row-major order (patch = py * pw + px)."""
    py, px = np.divmod(np.arange(pw * ph), pw)
    return np.stack([px, py], axis=-1)


async def record(device, *, d, k, in_rows, out_rows, scale):
    bufs = dict(x=device.tensor((in_rows, d)), out=device.tensor((out_rows, d)), grid=device.tensor((2,), "uint32"))
    g = device.graph()
    await ops.avg_pool_2d(g, bufs["x"], bufs["out"], bufs["grid"], d=d, k=k, scale=scale)
    assert len(g) == 1
    return g, bufs


async def run_image(device, g, bufs, *, pw, ph, d, k, scale, seed):
    """Writes a pw x ph image (and a sentinel over the whole output), runs the graph, checks every output row
    of the image and that the rows past it are untouched. Returns the largest error."""
    in_rows, out_rows = bufs["x"].shape[0], bufs["out"].shape[0]
    n, cells = pw * ph, (pw // k) * (ph // k)
    rng = np.random.default_rng(seed)
    x = np.zeros((in_rows, d), np.float32)
    x[:n] = rng.standard_normal((n, d)) * 3 + rng.standard_normal(d)
    device.write(bufs["x"].buffer, x)
    device.write(bufs["grid"].buffer, np.array([pw, ph], np.uint32))
    device.write(bufs["out"].buffer, np.full((out_rows, d), SENTINEL, np.float32))
    await device.run(g)
    got = await device.read(bufs["out"])
    pos = grid_positions(pw, ph)
    want = ref.avg_pool_by_positions(x[:n], pos, k, cells) * scale
    bound = (k * k + 1) * 2.0**-24 * scale * ref.avg_pool_by_positions(np.abs(x[:n]), pos, k, cells) * (1 + 1e-6)
    err = np.abs(got[:cells] - want)
    assert np.all(err <= bound), f"{pw}x{ph}: max error {err.max():.3g}, worst error / bound {(err / bound).max():.3g}"
    np.testing.assert_array_equal(got[cells:], SENTINEL, err_msg="rows past the image were written")
    return float(err.max())


@pytest.mark.parametrize(
    "d,k,cap,out_rows,images",
    [
        # k = 3 (Gemma 4) on odd widths and row widths; one graph, three images of different shapes (wide, tall,
        # a single cell), each leaving some output rows and some input rows unused
        (5, 3, 60, 8, ((9, 6), (6, 9), (3, 3))),
        # k = 2, a block row of odd length; the image fills the capacity exactly
        (3, 2, 24, 6, ((6, 4), (2, 12))),
        # the tower's width
        (768, 3, 81, 9, ((9, 9), (3, 12))),
    ],
)
async def test_avg_pool_2d(device, d, k, cap, out_rows, images):
    g, bufs = await record(device, d=d, k=k, in_rows=cap, out_rows=out_rows, scale=float(np.sqrt(d)))
    for i, (pw, ph) in enumerate(images):
        await run_image(device, g, bufs, pw=pw, ph=ph, d=d, k=k, scale=float(np.sqrt(d)), seed=i)


async def test_avg_pool_2d_fallback(device_fallback):
    g, bufs = await record(device_fallback, d=7, k=3, in_rows=54, out_rows=6, scale=1.0)
    await run_image(device_fallback, g, bufs, pw=6, ph=9, d=7, k=3, scale=1.0, seed=3)


async def test_avg_pool_2d_10080_patches(device):
    """A graph for the largest image (10080 patches, 1120 soft tokens of 768), run over a 120 x 84 image that
    fills it and then over a 48 x 36 one (192 soft tokens; the other 928 output rows stay as they were)."""
    g, bufs = await record(device, d=768, k=3, in_rows=10080, out_rows=1120, scale=float(np.sqrt(768)))
    for pw, ph in ((120, 84), (48, 36)):
        await run_image(device, g, bufs, pw=pw, ph=ph, d=768, k=3, scale=float(np.sqrt(768)), seed=pw)
