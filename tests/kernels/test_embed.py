"""ops.embed: gathering rows of a table kept as raw GGUF bytes, for every type, across a table split into
parts. The dequantised values are exact up to one f32 rounding of d * scale, one of the multiply-add and one
of the final scale, hence a relative tolerance of 4 * 2^-24; a K-quant weight d*s*q - dmin*m can cancel to
near 0, where the rounding of its terms dominates, hence an absolute floor of 8 * 2^-24 * max|value|.

accumulate=True adds the row to what out holds: one more f32 rounding per call, at most 2^-24 of the partial
sum, bounded by 2^-24 * (|out before| + |rows added|) per call."""

import numpy as np
import pytest

import reference_quant as ref
from rullama_py import ops

pytestmark = pytest.mark.pyodide

# Columns: whole blocks; 100 float columns are not a whole number of 8-element groups and leave every other
# f16 / bf16 row starting mid-word.
COLS = {"f32": 100, "f16": 100, "bf16": 100, "q8_0": 96, "q4_0": 96, "q5_0": 96, "q4_k": 512, "q5_k": 512,
        "q6_k": 512}


async def _check(device, qt, rows, cols, ids, seed, scale, max_binding=None, accumulate=False):
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
    # Rows of out-of-table ids must stay untouched; with accumulate, every row starts from its own values.
    before = rng.standard_normal((n, cols)).astype(np.float32) if accumulate else np.full((n, cols), 7.0, np.float32)
    out = device.upload(before)
    g = device.graph()
    await ops.embed(g, table, device.upload(ids), out, n_tokens=n, scale=scale, accumulate=accumulate)
    await device.run(g)
    got = await device.read(out)
    valid = ids < rows
    rows_ = np.where(valid[:, None], ref.embed(ref.dequantize(raw, qt, cols), np.where(valid, ids, 0), scale), 0.0)
    want = before + rows_ if accumulate else np.where(valid[:, None], rows_, 7.0)
    atol = 8 * 2.0**-24 * np.abs(want).max() + (2.0**-24 * (np.abs(before) + np.abs(rows_)) if accumulate else 0)
    err = np.abs(got - want)
    bound = 4 * 2.0**-24 * np.abs(want) + atol
    assert np.all(err <= bound), f"max error {err.max():.3g}, worst error / bound {(err / (bound + 1e-38)).max():.3g}"
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


@pytest.mark.parametrize("qt", ["f32", "q4_k"])
async def test_embed_accumulate(device, qt):
    """out += table[id]: float rows of 100 columns (a partial last run of 4), a K-quant, a table split in parts,
    an id past the table (its row keeps its values)."""
    cols = COLS[qt]
    table = await _check(device, qt, rows=301, cols=cols, ids=[0, 99, 100, 300, 5, 1000, 150], seed=14, scale=0.5,
                         max_binding=ref.row_bytes(qt, cols) * 100, accumulate=True)
    assert len(table.parts) >= 3


async def test_embed_accumulate_fallback(device_fallback):
    await _check(device_fallback, "f32", rows=20, cols=100, ids=[19, 0, 7, 20], seed=15, scale=1.0, accumulate=True)


async def test_embed_vision_position_table(device):
    """The vision tower's learned positions: v.position_embd.weight F32 [2, P, d] seen as a (2P, d) table,
    added to the patch embeddings by two calls, ids px and P + py (transformers' Gemma4VisionPatchEmbedder:
    table[0][px] + table[1][py]). d = 768, a 13 x 11 grid of patches in a graph for 150 (the ids past the
    image are stale, their rows unused). Exact up to the two f32 additions per value."""
    P, d, pw, ph, cap = 160, 768, 13, 11, 150
    rng = np.random.default_rng(16)
    pos_table = rng.standard_normal((2, P, d)).astype(np.float32)
    patches = rng.standard_normal((cap, d)).astype(np.float32)
    py, px = np.divmod(np.arange(cap), pw)
    px, py = np.where(py < ph, px, 0), np.where(py < ph, py, 0)
    table = device.upload_rows(pos_table.tobytes(), 2 * P, 4 * d, (2 * P, d), "f32", "v.position_embd.weight")
    h = device.upload(patches)
    g = device.graph()
    for ids in (px, P + py):
        await ops.embed(g, table, device.upload(ids.astype(np.uint32)), h, n_tokens=cap, accumulate=True)
    assert len(g) == 2
    await device.run(g)
    got = await device.read(h)
    want = patches.astype(np.float64) + pos_table[0][px] + pos_table[1][py]
    bound = 2 * 2.0**-24 * (np.abs(patches) + np.abs(pos_table[0][px]) + np.abs(pos_table[1][py]))
    assert np.all(np.abs(got - want) <= bound), float(np.abs(got - want).max())
