"""ops.StreamNorm: a matrix-vector product whose input is formed in its prologue from the residual stream
(shaders/matvec_stream_norm.wgsl), for each epilogue (plain, GeGLU, the per-layer input gate), against
reference.stream_norm and the dequantised product, with and without subgroups; the new stream written once
into the second buffer while the first keeps the old.

Tolerance of the product: reference_quant.matmul_tolerance for the product of the exact input, plus the input's
own f32 error: two chained norms whose sums of squares over n values carry at most n * 2^-24 relative error
each, so |x~ - x| <= 2 n 2^-24 |x| (a worst case; the kernels are far inside it)."""

import sys

import numpy as np
import pytest

import reference
import reference_quant as ref
from rullama_py import ops

pytestmark = pytest.mark.pyodide

mm = sys.modules["rullama_py.ops.matmul"]


def _gelu(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def _inputs(rng, cols, norm_x, scale):
    s = rng.standard_normal(cols).astype(np.float32)
    d = (rng.standard_normal(cols) * 4).astype(np.float32)
    wd = rng.standard_normal(cols).astype(np.float32)
    wx = rng.standard_normal(cols).astype(np.float32) if norm_x else None
    sc = np.array([0.7], np.float32) if scale else None
    return s, d, wd, wx, sc


def _prologue(dev, s, d, wd, wx, sc, out_fill=5.0):
    """A StreamNorm over uploaded copies; stream_out starts as out_fill everywhere."""
    return ops.StreamNorm(stream=dev.upload(s), delta=dev.upload(d), delta_norm=dev.upload(wd),
                          stream_out=dev.upload(np.full_like(s, out_fill)),
                          input_norm=dev.upload(wx) if wx is not None else None,
                          scale=dev.upload(sc) if sc is not None else None, eps=1e-6)


async def _check_stream(dev, pro, s, want_s):
    np.testing.assert_array_equal(await dev.read(pro.stream), s)  # the old stream is left as it was
    np.testing.assert_allclose(await dev.read(pro.stream_out), want_s, rtol=1e-5, atol=1e-5)


def _bounds(wmat, x, cols):
    y = ref.matmul(wmat, x[None])[0]
    tol = ref.matmul_tolerance(wmat, x[None])[0] + 2 * cols * 2.0**-24 * (np.abs(wmat) @ np.abs(x))
    return y, tol


async def _one_dispatch(dev, qt, raw, rows, cols, inputs, out_rows, record):
    """Upload the weight (rows x cols of type qt) and the prologue's inputs to dev, record
    `await record(g, w, prologue, out)` (one dispatch) and run it: (the output row, the prologue)."""
    w = dev.upload_rows(raw.tobytes(), rows, ref.row_bytes(qt, cols), (rows, cols), qt, "w")
    pro = _prologue(dev, *inputs)
    out = dev.tensor((1, out_rows))
    g = dev.graph()
    await record(g, w, pro, out)
    assert len(g) == 1
    await dev.run(g)
    return (await dev.read(out))[0], pro


@pytest.mark.parametrize("qt,rows,cols,norm_x,scale", [
    ("q4_k", 67, 768, True, True),      # Gemma 4's q/k/v after a layer: both norms and layer_output_scale
    ("q8_0", 40, 640, True, False),     # Gemma 3 270M's width, several vec4s a lane
    ("q6_k", 33, 2560, True, True),     # E4B's width: 4 vec4s a lane of 256
    ("f32", 21, 200, False, False),     # the new stream itself as the input
])
async def test_matvec_stream_norm(device, device_fallback, qt, rows, cols, norm_x, scale):
    rng = np.random.default_rng(rows + cols)
    raw = ref.random_weight(qt, rows, cols, rng)
    wmat = ref.dequantize(raw, qt, cols)
    s, d, wd, wx, sc = _inputs(rng, cols, norm_x, scale)
    want_s, x = reference.stream_norm(s, d, wd, wx, sc[0] if scale else None)
    want, tol = _bounds(wmat, x, cols)
    for dev in (device, device_fallback):
        got, pro = await _one_dispatch(dev, qt, raw, rows, cols, (s, d, wd, wx, sc), rows,
                                       lambda g, w, pro, out: ops.matmul(g, w, None, out, n_tokens=1, prologue=pro))
        assert np.all(np.abs(got - want) <= tol), (qt, np.abs(got - want).max())
        await _check_stream(dev, pro, s, want_s)


@pytest.mark.parametrize("shape", [(128, 4, 32), (64, 1, 64), (256, 2, 16)])
async def test_matvec_stream_norm_shapes(device, device_fallback, shape):
    """Other workgroup shapes than the default (tools sweep them): 4 rows a row group, one row group a
    workgroup, 16 lanes a row group; 45 rows leave the last workgroup part-empty; accumulate and scale."""
    qt, rows, cols = "q4_k", 45, 1536
    rng = np.random.default_rng(7)
    raw = ref.random_weight(qt, rows, cols, rng)
    wmat = ref.dequantize(raw, qt, cols)
    s, d, wd, wx, sc = _inputs(rng, cols, True, False)
    want_s, x = reference.stream_norm(s, d, wd, wx)
    y0 = rng.standard_normal(rows).astype(np.float32)
    y, tol = _bounds(wmat, x, cols)
    want = y0 + 0.5 * y
    saved = dict(mm.MATVEC_PROLOGUE_SHAPE)
    mm.MATVEC_PROLOGUE_SHAPE[0] = shape
    try:
        for dev in (device, device_fallback):
            w = dev.upload_rows(raw.tobytes(), rows, ref.row_bytes(qt, cols), (rows, cols), qt, "w")
            pro = _prologue(dev, s, d, wd, wx, None)
            out = dev.upload(y0[None])
            g = dev.graph()
            await ops.matmul(g, w, None, out, n_tokens=1, accumulate=True, scale=0.5, prologue=pro)
            await dev.run(g)
            got = (await dev.read(out))[0]
            assert np.all(np.abs(got - want) <= 0.5 * tol + 1e-6), (shape, np.abs(got - want).max())
            await _check_stream(dev, pro, s, want_s)
    finally:
        mm.MATVEC_PROLOGUE_SHAPE.clear()
        mm.MATVEC_PROLOGUE_SHAPE.update(saved)


async def test_matmul_geglu_stream_norm(device, device_fallback):
    """The GeGLU epilogue over the prologue's input (Gemma's feed-forward after attention's post-norm)."""
    qt, F, cols = "q4_k", 37, 1536
    rng = np.random.default_rng(3)
    raw = ref.random_weight(qt, 2 * F, cols, rng)
    wmat = ref.dequantize(raw, qt, cols)
    s, d, wd, wx, _ = _inputs(rng, cols, True, False)
    want_s, x = reference.stream_norm(s, d, wd, wx)
    y, tol = _bounds(wmat, x, cols)
    want = _gelu(y[:F]) * y[F:]
    bound = 1.13 * tol[:F] * (np.abs(y[F:]) + tol[F:]) + np.abs(_gelu(y[:F])) * tol[F:] + 1e-5 * np.abs(want) + 1e-6
    for dev in (device, device_fallback):
        got, pro = await _one_dispatch(dev, qt, raw, 2 * F, cols, (s, d, wd, wx, None), F,
                                       lambda g, w, pro, out: ops.matmul_geglu(g, w, None, out, n_tokens=1,
                                                                               prologue=pro))
        assert np.all(np.abs(got - want) <= bound), np.abs(got - want).max()
        await _check_stream(dev, pro, s, want_s)


async def test_ple_input_stream_norm(device, device_fallback):
    """Gemma 4's per-layer input gate over the new stream (the post-feed-forward norm added in its prologue,
    no input norm): out = gelu(W s') * ple[layer]."""
    qt, rows, cols, layer, n_layers = "q4_k", 24, 768, 2, 3
    rng = np.random.default_rng(9)
    raw = ref.random_weight(qt, rows, cols, rng)
    wmat = ref.dequantize(raw, qt, cols)
    s, d, wd, _, _ = _inputs(rng, cols, False, False)
    ple = rng.standard_normal((1, n_layers * rows)).astype(np.float32)
    want_s, x = reference.stream_norm(s, d, wd)
    y, tol = _bounds(wmat, x, cols)
    p = ple[0, layer * rows:(layer + 1) * rows].astype(np.float64)
    want = _gelu(y) * p
    bound = 1.13 * tol * np.abs(p) + 1e-5 * np.abs(want) + 1e-6
    for dev in (device, device_fallback):
        gate = dev.upload(ple)
        got, pro = await _one_dispatch(dev, qt, raw, rows, cols, (s, d, wd, None, None), rows,
                                       lambda g, w, pro, out: ops.ple_input(g, w, None, gate, out, n_tokens=1,
                                                                            layer=layer, n_layers=n_layers,
                                                                            dim=rows, scratch=None, prologue=pro))
        assert np.all(np.abs(got - want) <= bound), np.abs(got - want).max()
        await _check_stream(dev, pro, s, want_s)


async def test_matvec_stream_norm_weight_in_parts(device):
    """A weight split into buffer parts: every part's dispatch forms the same input, and each writes the same
    new stream."""
    qt, rows, cols = "q8_0", 50, 352
    rng = np.random.default_rng(5)
    raw = ref.random_weight(qt, rows, cols, rng)
    wmat = ref.dequantize(raw, qt, cols)
    s, d, wd, wx, sc = _inputs(rng, cols, True, True)
    want_s, x = reference.stream_norm(s, d, wd, wx, sc[0])
    want, tol = _bounds(wmat, x, cols)
    rb = ref.row_bytes(qt, cols)
    saved = device.limits["max-storage-buffer-binding-size"]
    device.limits["max-storage-buffer-binding-size"] = rb * 16
    try:
        w = device.upload_rows(raw.tobytes(), rows, rb, (rows, cols), qt, "w")
    finally:
        device.limits["max-storage-buffer-binding-size"] = saved
    assert len(w.parts) > 1
    pro = _prologue(device, s, d, wd, wx, sc)
    out = device.tensor((1, rows))
    g = device.graph()
    await ops.matmul(g, w, None, out, n_tokens=1, prologue=pro)
    assert len(g) == len(w.parts)
    await device.run(g)
    got = (await device.read(out))[0]
    assert np.all(np.abs(got - want) <= tol), np.abs(got - want).max()
    await _check_stream(device, pro, s, want_s)


async def test_stream_norm_refuses_misuse(device):
    """Clear sentences, nothing recorded: the new stream into the old one's buffer, an input given as well, more
    than one token, rows wider than the prologue holds, a scale with the gate epilogue."""
    rng = np.random.default_rng(1)
    cols = 256
    raw = ref.random_weight("q8_0", 8, cols, rng)
    w = device.upload_rows(raw.tobytes(), 8, ref.row_bytes("q8_0", cols), (8, cols), "q8_0", "w")
    s, d, wd, wx, sc = _inputs(rng, cols, True, True)
    pro = _prologue(device, s, d, wd, wx, sc)
    out = device.tensor((1, 8))
    g = device.graph()
    same = ops.StreamNorm(pro.stream, pro.delta, pro.delta_norm, stream_out=pro.stream)
    with pytest.raises(ValueError, match="another buffer"):
        await ops.matmul(g, w, None, out, n_tokens=1, prologue=same)
    with pytest.raises(ValueError, match="x=None"):
        await ops.matmul(g, w, pro.stream, out, n_tokens=1, prologue=pro)
    with pytest.raises(ValueError, match="n_tokens=1"):
        await ops.matmul(g, w, None, device.tensor((2, 8)), n_tokens=2, prologue=pro)
    with pytest.raises(ValueError, match="a scale"):
        await ops.matvec_gelu_gate(g, w, None, device.upload(np.ones(8, np.float32)), out, gate_offset=0,
                                   prologue=pro)
    assert not ops.stream_norm_fits(device, 5376)  # Gemma 4 31B's width: norm the stream with a dispatch
    wide = ref.random_weight("q8_0", 2, 5376, rng)
    ww = device.upload_rows(wide.tobytes(), 2, ref.row_bytes("q8_0", 5376), (2, 5376), "q8_0", "ww")
    v = device.tensor((5376,))
    with pytest.raises(ValueError, match="does not fit"):
        await ops.matmul(g, ww, None, device.tensor((1, 2)), n_tokens=1,
                         prologue=ops.StreamNorm(v, v, v, stream_out=device.tensor((5376,))))
    assert len(g) == 0
