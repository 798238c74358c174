"""ops.matmul on weights kept as raw GGUF bytes: every type, the matrix-vector (one token) and the tiled
(many tokens) kernels, ragged shapes, weights split into parts, accumulate/scale, with and without subgroups.

Tolerances: reference_quant.matmul_tolerance, a rigorous worst-case bound of f32 dequantisation and
summation error ((K + 4) * 2^-24 * sum|w x|); the kernels are typically ~sqrt(K) times better."""

import sys

import numpy as np
import pytest

import reference_quant as ref
from rullama_py import ops

pytestmark = pytest.mark.pyodide

# Columns per type: whole blocks, and a number of matvec units that does not fill the workgroup (768 Q4_K
# columns are 48 units for 64 lanes) nor a whole number of tiles of the tiled kernel (TK = 32 for floats).
COLS = {"f32": 200, "f16": 200, "bf16": 200, "q8_0": 352, "q4_0": 352, "q5_0": 352,
        "q4_k": 768, "q5_k": 768, "q6_k": 768}


def _upload_weight(device, qt, raw, rows, cols, max_binding=None):
    """Upload raw GGUF bytes; with max_binding, pretend the device binds at most that many bytes so that
    upload_rows splits the weight into parts as it does for the big tables of a real model."""
    rb = ref.row_bytes(qt, cols)
    saved = device.limits["max-storage-buffer-binding-size"]
    if max_binding is not None:
        device.limits["max-storage-buffer-binding-size"] = max_binding
    try:
        return device.upload_rows(raw.tobytes(), rows, rb, (rows, cols), qt, f"w_{qt}")
    finally:
        device.limits["max-storage-buffer-binding-size"] = saved


async def _check(device, qt, rows, cols, n_tokens, seed, accumulate=False, scale=1.0, max_binding=None):
    rng = np.random.default_rng(seed)
    raw = ref.random_weight(qt, rows, cols, rng)
    w = _upload_weight(device, qt, raw, rows, cols, max_binding)
    x = rng.standard_normal((n_tokens, cols)).astype(np.float32)
    out0 = rng.standard_normal((n_tokens, rows)).astype(np.float32) if accumulate else None
    out = device.upload(out0) if accumulate else device.tensor((n_tokens, rows))
    g = device.graph()
    await ops.matmul(g, w, device.upload(x), out, n_tokens=n_tokens, accumulate=accumulate, scale=scale)
    await device.run(g)
    got = await device.read(out)
    wd = ref.dequantize(raw, qt, cols)
    want = ref.matmul(wd, x, out0, scale)
    err = np.abs(got - want)
    tol = ref.matmul_tolerance(wd, x, out0, scale)
    assert np.all(err <= tol), f"{qt}: max error {err.max():.3g}, worst error/bound {(err / tol).max():.3g}"
    return w


@pytest.mark.parametrize("qt", ref.TYPES)
async def test_matvec(device, qt):
    """One token: the matrix-vector kernel (subgroup variant where the device has subgroups)."""
    await _check(device, qt, rows=67, cols=COLS[qt], n_tokens=1, seed=1)


@pytest.mark.parametrize("qt", ref.TYPES)
async def test_matvec_fallback_accumulate(device_fallback, qt):
    """The plain (no subgroups, no f16) kernel, adding a scaled product into the output."""
    await _check(device_fallback, qt, rows=67, cols=COLS[qt], n_tokens=1, seed=2, accumulate=True, scale=0.5)


@pytest.mark.parametrize("qt", ref.TYPES)
async def test_matmul_tiled(device, qt):
    """70 tokens x 67 rows: neither a whole number of 64 x 64 tiles."""
    await _check(device, qt, rows=67, cols=COLS[qt], n_tokens=70, seed=3, accumulate=qt in ("q8_0", "q5_k"),
                 scale=0.25 if qt == "f16" else 1.0)


@pytest.mark.parametrize("qt", ["f32", "f16", "bf16"])
@pytest.mark.parametrize("n_tokens", [1, 3])
async def test_matmul_ragged_float_rows(device, qt, n_tokens):
    """Float rows of odd length: every other f16/bf16 row starts mid-word; one token takes the tiled kernel."""
    await _check(device, qt, rows=9, cols=101, n_tokens=n_tokens, seed=4)


@pytest.mark.parametrize("qt,n_tokens",
                         [("q8_0", 1), pytest.param("q8_0", 5, marks=pytest.mark.native_only), ("q6_k", 1)])
async def test_matmul_split_parts(device, qt, n_tokens):
    """A weight split by rows into parts (odd block strides included), one dispatch per part, each part
    ending mid-workgroup (4100 rows: 4 rows per matvec workgroup)."""
    rows, cols = 4100, 256
    w = await _check(device, qt, rows=rows, cols=cols, n_tokens=n_tokens, seed=5, accumulate=n_tokens == 1,
                     max_binding=ref.row_bytes(qt, cols) * 1367)
    assert len(w.parts) >= 3


async def test_matvec_fallback_split_parts(device_fallback):
    """The plain kernel over a split weight."""
    w = await _check(device_fallback, "q6_k", rows=4099, cols=256, n_tokens=1, seed=6,
                     max_binding=ref.row_bytes("q6_k", 256) * 2000)
    assert len(w.parts) == 3


@pytest.mark.parametrize("wg,r,lpr", [(64, 2, 64), (256, 1, 256), (128, 4, 32), (64, 4, 16), (32, 1, 4)])
async def test_matvec_workgroup_shapes(device, device_fallback, wg, r, lpr):
    """Rows per group, lanes per workgroup and per row group, whatever the size heuristic picks: row groups
    smaller and larger than a subgroup (lavapipe's are 8 lanes, NVIDIA's 32); 67 rows leave the last
    workgroup partly empty."""
    mm = sys.modules["rullama_py.ops.matmul"]  # the module (`ops.matmul` is the function)
    mm.MATVEC_SHAPE_OVERRIDE = (wg, r, lpr)
    try:
        await _check(device, "q4_k", rows=67, cols=512, n_tokens=1, seed=8, accumulate=r == 2)
        await _check(device_fallback, "q8_0", rows=67, cols=512, n_tokens=1, seed=9)
    finally:
        mm.MATVEC_SHAPE_OVERRIDE = None


async def test_matvec_wrapped_grid(device):
    """More than 65535 workgroups in one dispatch (a 262144-row head in one part can get there): the grid
    wraps into y. One row per workgroup makes 65538 rows enough."""
    mm = sys.modules["rullama_py.ops.matmul"]
    mm.MATVEC_SHAPE_OVERRIDE = (64, 1, 64)
    try:
        await _check(device, "f32", rows=65535 + 3, cols=8, n_tokens=1, seed=7)
    finally:
        mm.MATVEC_SHAPE_OVERRIDE = None


async def test_matvec_head_shape(device):
    """The heuristic's choice for very tall weights (4 rows per group of 32 lanes), on a split weight."""
    await _check(device, "q6_k", rows=32771, cols=256, n_tokens=1, seed=10,
                 max_binding=ref.row_bytes("q6_k", 256) * 12000)


# (8, 4) and (4, 8) are no device's pick (_matmul_block takes 8 x 8 or 4 x 4): native only, for CI time.
@pytest.mark.parametrize("block", [(8, 8), pytest.param((8, 4), marks=pytest.mark.native_only),
                                   pytest.param((4, 8), marks=pytest.mark.native_only)])
@pytest.mark.parametrize("qt", ["f16", "q8_0", "q4_k", "f32"])
async def test_matmul_register_blocks(device, device_fallback, qt, block):
    """The wider register blocks (8 rows and/or 8 tokens per lane, 128-wide tiles) that long products use: 150
    tokens x 139 rows, neither a whole number of tiles, on both kernel sets; and the plan picks 8 x 8 for the
    vision tower's shapes and 4 x 4 for prefill chunks."""
    mm = sys.modules["rullama_py.ops.matmul"]  # the module (`ops.matmul` is the function)
    mm.MATMUL_BLOCK_OVERRIDE = block
    try:
        for dev in (device, device_fallback):
            await _check(dev, qt, rows=139, cols=COLS[qt], n_tokens=150, seed=7, accumulate=qt == "q8_0")
    finally:
        mm.MATMUL_BLOCK_OVERRIDE = None
    assert mm._matmul_block(device, 3072, 2520)[:2] == (8, 8)
    assert mm._matmul_block(device, 768, 2394)[:2] == (8, 8)  # 114 tiles
    assert mm._matmul_block(device, 1024, 750)[:2] == (4, 4)  # 48 tiles: the audio tower
    assert mm._matmul_block(device, 1536, 64)[:2] == (4, 4)


@pytest.mark.parametrize("n_tokens", [1, 4])
async def test_matmul_output_columns(device, device_fallback, n_tokens):
    """out_offset / out_stride: three products of different types fill the column ranges of one wider output
    ([q | k | v] when the weights cannot be one upload); the columns around each range stay untouched. Many
    tokens (the tiled kernel, slow to compile on a software GPU): one product in the middle of wider rows."""
    for dev in (device, device_fallback):
        rng = np.random.default_rng(20 + n_tokens)
        parts = [("q4_k", 40), ("q6_k", 24), ("q8_0", 8)] if n_tokens == 1 else [("q6_k", 24)]
        cols, width = 256, sum(rows for _, rows in parts) + 3
        x = rng.standard_normal((n_tokens, cols)).astype(np.float32)
        sentinel = np.full((n_tokens, width), 7.0, np.float32)
        out, xt = dev.upload(sentinel), dev.upload(x)
        g = dev.graph()
        want, tol, off = sentinel.astype(np.float64), np.zeros((n_tokens, width)), 1
        for qt, rows in parts:
            raw = ref.random_weight(qt, rows, cols, rng)
            w = _upload_weight(dev, qt, raw, rows, cols)
            await ops.matmul(g, w, xt, out, n_tokens=n_tokens, out_offset=off, out_stride=width)
            wd = ref.dequantize(raw, qt, cols)
            want[:, off: off + rows] = ref.matmul(wd, x)
            tol[:, off: off + rows] = ref.matmul_tolerance(wd, x)
            off += rows
        await dev.run(g)
        got = await dev.read(out)
        assert np.all(np.abs(got - want) <= tol), np.abs(got - want).max()
        with pytest.raises(ValueError, match="do not fit"):
            await ops.matmul(g, w, xt, out, n_tokens=n_tokens, out_offset=width - 2, out_stride=width)


def _gelu(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def _gated_tolerance(a, ta, b, tb):
    """A bound on |gelu(a~) b~ - gelu(a) b| for |a~ - a| <= ta, |b~ - b| <= tb: gelu's slope is at most 1.13,
    plus the kernel's gelu (exp, WGSL: 3 + 2|x| ulp) and the product's rounding, under 1e-5 relative here."""
    return 1.13 * ta * (np.abs(b) + tb) + np.abs(_gelu(a)) * tb + 1e-5 * np.abs(_gelu(a) * b) + 1e-6


@pytest.mark.parametrize("qt,n_tokens", [("q4_k", 1), ("q5_0", 1), ("q6_k", 1), ("f16", 1), ("q5_0", 3)])
async def test_matmul_geglu(device, device_fallback, qt, n_tokens):
    """matmul_geglu: out = gelu(gate . x) * (up . x) from one [gate; up] weight. One token: the matrix-vector
    kernel's GeGLU epilogue (subgroups and plain); more tokens, and a weight in parts: matmul + gelu_mul."""
    F, cols = 37, COLS[qt] if qt != "f16" else 256
    for dev in (device, device_fallback):
        rng = np.random.default_rng(30 + n_tokens)
        raw = ref.random_weight(qt, 2 * F, cols, rng)
        x = (rng.standard_normal((n_tokens, cols)) * 0.3).astype(np.float32)
        wd = ref.dequantize(raw, qt, cols)
        y = ref.matmul(wd, x)
        tol = ref.matmul_tolerance(wd, x)
        want = _gelu(y[:, :F]) * y[:, F:]
        bound = _gated_tolerance(y[:, :F], tol[:, :F], y[:, F:], tol[:, F:])
        for max_binding in (None, ref.row_bytes(qt, cols) * 40):
            w = _upload_weight(dev, qt, raw, 2 * F, cols, max_binding)
            out, scratch = dev.tensor((n_tokens, F)), dev.tensor((n_tokens, 2 * F))
            g = dev.graph()
            await ops.matmul_geglu(g, w, dev.upload(x), out, n_tokens=n_tokens, scratch=scratch)
            assert len(g) == (1 if n_tokens == 1 and max_binding is None else len(w.parts) + 1)
            await dev.run(g)
            got = await dev.read(out)
            assert np.all(np.abs(got - want) <= bound), (qt, max_binding, np.abs(got - want).max())


async def test_matmul_geglu_row_groups_per_workgroup(device, device_fallback):
    """The GeGLU epilogue with several gate/up row pairs per workgroup (4 groups of 32 lanes: the shape tall
    weights of short rows get, E2B's 12288 x 1536 gate_up), 37 pairs leaving the last workgroup part-empty."""
    mm = sys.modules["rullama_py.ops.matmul"]
    mm.MATVEC_SHAPE_OVERRIDE = (128, 1, 32)
    try:
        F, cols = 37, COLS["q4_k"]
        for dev in (device, device_fallback):
            rng = np.random.default_rng(41)
            raw = ref.random_weight("q4_k", 2 * F, cols, rng)
            x = (rng.standard_normal((1, cols)) * 0.3).astype(np.float32)
            wd = ref.dequantize(raw, "q4_k", cols)
            y, tol = ref.matmul(wd, x), ref.matmul_tolerance(wd, x)
            want = _gelu(y[:, :F]) * y[:, F:]
            bound = _gated_tolerance(y[:, :F], tol[:, :F], y[:, F:], tol[:, F:])
            w = _upload_weight(dev, "q4_k", raw, 2 * F, cols, None)
            out = dev.tensor((1, F))
            g = dev.graph()
            await ops.matmul_geglu(g, w, dev.upload(x), out, n_tokens=1)
            await dev.run(g)
            got = await dev.read(out)
            assert np.all(np.abs(got - want) <= bound), np.abs(got - want).max()
    finally:
        mm.MATVEC_SHAPE_OVERRIDE = None


@pytest.mark.parametrize("qt", ["q4_k", "bf16"])
async def test_matvec_gelu_gate(device, device_fallback, qt):
    """matvec_gelu_gate: out = gelu(W . x) * gate[offset..], one dispatch (Gemma 4's per-layer input gate)."""
    rows, cols, off = 19, 256, 5
    for dev in (device, device_fallback):
        rng = np.random.default_rng(40)
        raw = ref.random_weight(qt, rows, cols, rng)
        x = (rng.standard_normal(cols) * 0.3).astype(np.float32)
        gate = rng.standard_normal(off + rows + 4).astype(np.float32)
        w = _upload_weight(dev, qt, raw, rows, cols)
        out = dev.tensor((1, rows))
        g = dev.graph()
        await ops.matvec_gelu_gate(g, w, dev.upload(x), dev.upload(gate), out, gate_offset=off)
        assert len(g) == 1
        await dev.run(g)
        got = (await dev.read(out))[0]
        wd = ref.dequantize(raw, qt, cols)
        y = ref.matmul(wd, x[None])[0]
        p = gate[off: off + rows].astype(np.float64)
        bound = _gated_tolerance(y, ref.matmul_tolerance(wd, x[None])[0], p, 0.0)
        assert np.all(np.abs(got - _gelu(y) * p) <= bound), np.abs(got - _gelu(y) * p).max()


@pytest.mark.parametrize("n_run", [1, 5, 70])
async def test_matmul_step_tokens(device, n_run):
    """step= (a recorded prefill chunk): a capacity of 70 tokens (two 64-token tiles), each run computing only
    the Step uniform's n_tokens; the rows past them keep what they held (their tiles return at once)."""
    from rullama_py import gpu

    cap, rows, cols = 70, 36, 256
    rng = np.random.default_rng(50)
    raw = ref.random_weight("q4_k", rows, cols, rng)
    w = _upload_weight(device, "q4_k", raw, rows, cols)
    x = rng.standard_normal((cap, cols)).astype(np.float32)
    out = device.upload(np.full((cap, rows), 7.0, np.float32))
    step = device.tensor((8,), "uint32", "step", usage=gpu.UNIFORM)
    device.write(step.buffer, np.array([0, n_run, n_run, 0, 0, 0, 0, 0], np.uint32))
    g = device.graph()
    await ops.matmul(g, w, device.upload(x), out, n_tokens=cap, step=step)
    await device.run(g)
    got = await device.read(out)
    wd = ref.dequantize(raw, "q4_k", cols)
    want = ref.matmul(wd, x[:n_run])
    assert np.all(np.abs(got[:n_run] - want) <= ref.matmul_tolerance(wd, x[:n_run]))
    assert (got[n_run:] == 7.0).all()


@pytest.mark.parametrize("qt,cols,splits,n_run,acc", [("q4_k", 768, 4, 5, True), ("f32", 200, 3, 70, False)])
async def test_matmul_split_k(device, qt, cols, splits, n_run, acc):
    """Split K (matmul.wgsl KSPLIT, then matmul_reduce.wgsl): the columns cut into `splits` ranges of whole
    k-steps (200 f32 columns in 3: 96, 96 and 8, the last not a whole tile), each range's partial sums added
    into the output in order, with scale, accumulate and an output column offset inside wider rows, for the
    Step uniform's first n_run of 70 tokens; rows past them and columns outside the product keep their values.
    The bound is the unsplit one: a split sum is a regrouping of the same K products."""
    from rullama_py import gpu

    mm = sys.modules["rullama_py.ops.matmul"]
    cap, rows, stride, off, scale = 70, 36, 50, 9, 0.5
    rng = np.random.default_rng(60 + splits)
    raw = ref.random_weight(qt, rows, cols, rng)
    w = _upload_weight(device, qt, raw, rows, cols)
    x = rng.standard_normal((cap, cols)).astype(np.float32)
    out0 = rng.standard_normal((cap, stride)).astype(np.float32)
    out = device.upload(out0)
    step = device.tensor((8,), "uint32", "step", usage=gpu.UNIFORM)
    device.write(step.buffer, np.array([0, n_run, n_run, 0, 0, 0, 0, 0], np.uint32))
    mm.MATMUL_KSPLIT_OVERRIDE = splits
    try:
        g = device.graph()
        await ops.matmul(g, w, device.upload(x), out, n_tokens=cap, step=step, accumulate=acc, scale=scale,
                         out_offset=off, out_stride=stride)
    finally:
        mm.MATMUL_KSPLIT_OVERRIDE = None
    assert [d.kernel for d in g.dispatches] == ["matmul", "matmul_reduce"]
    assert g.dispatches[0].workgroups[2] == splits
    await device.run(g)
    got = await device.read(out)
    wd = ref.dequantize(raw, qt, cols)
    base = out0[:n_run, off:off + rows] if acc else None
    want = ref.matmul(wd, x[:n_run], base, scale)
    tol = ref.matmul_tolerance(wd, x[:n_run], base, scale)
    assert np.all(np.abs(got[:n_run, off:off + rows] - want) <= tol)
    keep = np.ones_like(got, bool)
    keep[:n_run, off:off + rows] = False
    assert (got[keep] == out0[keep]).all()
