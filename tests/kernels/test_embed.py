"""ops.embed: gathering rows of a table kept as raw GGUF bytes, for every type, across a table split into
parts. The dequantised values are exact up to one f32 rounding of d * scale, one of the multiply-add and one
of the final scale, hence a relative tolerance of 4 * 2^-24; a K-quant weight d*s*q - dmin*m can cancel to
near 0, where the rounding of its terms dominates, hence an absolute floor of 8 * 2^-24 * max|value|."""

import numpy as np
import pytest

import reference_quant as ref
from rullama_py import ops

pytestmark = pytest.mark.pyodide

# Columns: whole blocks; 100 float columns are not a whole number of 8-element groups and leave every other
# f16 / bf16 row starting mid-word.
COLS = {"f32": 100, "f16": 100, "bf16": 100, "q8_0": 96, "q4_0": 96, "q5_0": 96, "q4_k": 512, "q5_k": 512,
        "q6_k": 512}


async def _check(device, qt, rows, cols, ids, seed, scale, max_binding=None):
    rng = np.random.default_rng(seed)
    raw = ref.random_weight(qt, rows, cols, rng)
    saved = device.limits["max-storage-buffer-binding-size"]
    if max_binding is not None:
        device.limits["max-storage-buffer-binding-size"] = max_binding
    try:
        table = device.upload_rows(raw.tobytes(), rows, ref.row_bytes(qt, cols), (rows, cols), qt, f"emb_{qt}")
    finally:
        device.limits["max-storage-buffer-binding-size"] = saved
    ids = np.asarray(ids, np.uint32)
    n = len(ids)
    sentinel = np.full((n, cols), 7.0, np.float32)  # rows of out-of-table ids must stay untouched
    out = device.upload(sentinel)
    g = device.graph()
    await ops.embed(g, table, device.upload(ids), out, n_tokens=n, scale=scale)
    await device.run(g)
    got = await device.read(out)
    valid = ids < rows
    want = np.where(valid[:, None], ref.embed(ref.dequantize(raw, qt, cols), np.where(valid, ids, 0), scale), 7.0)
    np.testing.assert_allclose(got, want, rtol=4 * 2.0**-24, atol=8 * 2.0**-24 * np.abs(want).max())
    return table


@pytest.mark.parametrize("qt", ref.TYPES)
async def test_embed(device, qt):
    await _check(device, qt, rows=50, cols=COLS[qt], ids=[3, 0, 49, 3, 17, 8], seed=11, scale=float(np.sqrt(COLS[qt])))


@pytest.mark.parametrize("qt", ["q6_k", "q8_0", "f16"])
async def test_embed_split_parts(device, qt):
    """Ids spread over the parts of a split table, the first and last rows of parts, and one id past the
    vocabulary (written by no part)."""
    rows, cols = 301, COLS[qt]
    table = await _check(device, qt, rows=rows, cols=cols, ids=[0, 99, 100, 300, 5, 200, 1000, 150], seed=12,
                         scale=39.191835884530846, max_binding=ref.row_bytes(qt, cols) * 100)
    assert len(table.parts) >= 3


async def test_embed_fallback(device_fallback):
    await _check(device_fallback, "q4_k", rows=20, cols=256, ids=[19, 0, 7], seed=13, scale=1.0)
