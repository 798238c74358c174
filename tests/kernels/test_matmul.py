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


@pytest.mark.parametrize("qt,n_tokens", [("q8_0", 1), ("q8_0", 5), ("q6_k", 1)])
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


@pytest.mark.parametrize("block", [(8, 8), (8, 4), (4, 8)])
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
