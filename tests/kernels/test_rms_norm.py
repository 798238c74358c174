import numpy as np
import pytest

import reference
from rullama_py import ops

pytestmark = pytest.mark.pyodide


@pytest.mark.parametrize(
    "rows,n,weight,add_one",
    [(1, 640, True, False), (7, 256, True, True), (3, 1536, False, False), (4, 100, True, False),
     (2, 5376, True, False), (1, 8192, False, False)],
)
async def test_rms_norm(device, device_fallback, rows, n, weight, add_one):
    """On both devices: the workgroup sums with subgroups (workgroup_sum.subgroups.wgsl) and without."""
    rng = np.random.default_rng(rows * 1000 + n)
    x = (rng.standard_normal((rows, n)) * 3).astype(np.float32)
    w = rng.standard_normal(n).astype(np.float32) if weight else None
    for dev in (device, device_fallback):
        g = dev.graph()
        out = dev.tensor((rows, n))
        await ops.rms_norm(g, dev.upload(x), dev.upload(w) if weight else None, out, n=n, eps=1e-6, add_one=add_one)
        await dev.run(g)
        got = await dev.read(out)
        np.testing.assert_allclose(got, reference.rms_norm(x, w, 1e-6, add_one), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("weight,scale", [(True, False), (True, True), (False, True)])
async def test_rms_norm_accumulate(device, weight, scale):
    """Post-norm fused with the residual add: h = (h + rms_norm(x) * w) [* s] (Gemma 4's layer_output_scale)."""
    rows, n = 3, 320
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((rows, n)) * 3).astype(np.float32)
    h = rng.standard_normal((rows, n)).astype(np.float32)
    w = rng.standard_normal(n).astype(np.float32) if weight else None
    s = np.array([0.6], np.float32)
    out = device.upload(h)
    g = device.graph()
    await ops.rms_norm(g, device.upload(x), device.upload(w) if weight else None, out, n=n, eps=1e-6,
                       accumulate=True, scale=device.upload(s) if scale else None)
    await device.run(g)
    want = (h.astype(np.float64) + reference.rms_norm(x, w, 1e-6)) * (s[0] if scale else 1.0)
    np.testing.assert_allclose(await device.read(out), want, rtol=1e-5, atol=1e-5)


async def test_rms_norm_rows_past_the_grid_limit(device):
    """The vision tower's per-head norms: 10080 patches x 12 heads = 120960 rows of 64, more workgroups than one
    grid dimension allows (65535): the grid wraps into y and the padding workgroups write nothing (the rows of
    the buffer past the tensor keep their values)."""
    rows, n = 120960, 64
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((rows, n)) * 2).astype(np.float32)
    w = rng.standard_normal(n).astype(np.float32)
    out = device.upload(np.full((rows + 70, n), 7.0, np.float32))
    g = device.graph()
    await ops.rms_norm(g, device.upload(x), device.upload(w), out.view((rows, n)), n=n, eps=1e-6)
    await device.run(g)
    got = await device.read(out)
    np.testing.assert_allclose(got[:rows], reference.rms_norm(x, w, 1e-6), rtol=1e-5, atol=1e-5)
    assert (got[rows:] == 7.0).all()


@pytest.mark.parametrize("n,scale", [(640, False), (1536, True), (48, False)])
async def test_rms_norm_then_norm(device, device_fallback, n, scale):
    """then=(w2, out2): h = (h + rms_norm(x) * w) [* s], then x2 = rms_norm(h) * w2 in the same dispatch (a
    layer's post-norm into the residual stream, then the next block's input norm); one- and many-lane rows.
    The second norm sees the f32 h it wrote (within 1e-6 relative of the float64 one), so the same 1e-5 holds."""
    rows = 3
    rng = np.random.default_rng(n)
    x = (rng.standard_normal((rows, n)) * 3).astype(np.float32)
    h = rng.standard_normal((rows, n)).astype(np.float32)
    w, w2 = (rng.standard_normal(n).astype(np.float32) for _ in range(2))
    s = np.array([0.6], np.float32)
    want = (h.astype(np.float64) + reference.rms_norm(x, w, 1e-6)) * (s[0] if scale else 1.0)
    for dev in (device, device_fallback):  # with and without subgroup sums
        out, out2 = dev.upload(h), dev.tensor((rows, n))
        g = dev.graph()
        await ops.rms_norm(g, dev.upload(x), dev.upload(w), out, n=n, eps=1e-6, accumulate=True,
                           scale=dev.upload(s) if scale else None, then=(dev.upload(w2), out2))
        assert len(g) == 1
        await dev.run(g)
        np.testing.assert_allclose(await dev.read(out), want, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(await dev.read(out2), reference.rms_norm(want, w2, 1e-6), rtol=1e-5, atol=1e-5)


async def test_rms_norm_rows_of_whole_vec4s(device):
    """The kernel reads rows as vec4s: a row length that is not a multiple of 4 is refused with a sentence
    that says so, before anything is recorded."""
    g = device.graph()
    x = device.tensor((2, 6))
    with pytest.raises(ValueError, match="multiple of 4"):
        await ops.rms_norm(g, x, None, device.tensor((2, 6)), n=6, eps=1e-6)
    assert len(g) == 0
