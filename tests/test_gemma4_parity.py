"""Gemma 4 tiny models on the GPU against transformers (goldens in tests/fixtures, made by
tools/make_tiny_gemma4.py): prefill and step-by-step decode logits at every position, with positions past the
sliding window, KV-shared layers, PLE, proportional RoPE and the logit soft-cap; F32, F16, Q8_0/BF16 and
Q4_K_M weights."""

from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, quants

import reference_gemma4

from rullama_py.gguf_file import GGUFFile
from rullama_py.models.gemma import Gemma

FIXTURES = Path(__file__).parent / "fixtures"
NAMES = ["e2b_f32", "e4b_q8_0", "gqa4_f16", "q4_k_m", "moe_f32", "moe_q4_k"]
# Logits reach 13-26 here. The KV cache is f16 (about 5e-4 relative per stored value) while the goldens are
# float64; the measured worst case is 0.012. 0.03 leaves room for other GPUs' float rounding, and is still far
# below what any real mistake (a wrong norm, mask or rope) produces (>= 0.5; see test_fixtures' mutations).
ATOL = 0.03


async def _load(device, name, chunk, ple_on_gpu=False):
    gf = await GGUFFile.open(FIXTURES / f"gemma4_tiny_{name}.gguf")
    return await Gemma.load(gf, device, max_context=64, prefill_chunk=chunk, ple_on_gpu=ple_on_gpu)


@pytest.mark.parametrize("name", NAMES)
async def test_decode_step_by_step(device, name):
    z = np.load(FIXTURES / f"gemma4_tiny_{name}.npz")
    m = await _load(device, name, chunk=8)
    toks, ref = z["tokens"].tolist(), z["decode_logits"]
    for t, tok in enumerate(toks):
        got = await m.forward([tok], t)
        np.testing.assert_allclose(got, ref[t], atol=ATOL, err_msg=f"position {t}")
        assert got.argmax() == ref[t].argmax()


@pytest.mark.parametrize("name", ["e2b_f32", "q4_k_m", "gqa4_f16"])
async def test_decode_stream_norms(device, monkeypatch, name):
    """The decode run adds every block's output to the stream in the prologue of the products that read it
    (ops.StreamNorm): the only norm dispatches of the stream left are the first layer's input norm and the
    last layer's (which also forms the head's input). Decoding with the norms as dispatches of their own
    (FUSE_STREAM_NORMS False) still gives the goldens' logits."""
    from rullama_py.models import gemma

    z = np.load(FIXTURES / f"gemma4_tiny_{name}.npz")
    toks, ref = z["tokens"].tolist(), z["decode_logits"]
    m = await _load(device, name, chunk=8)
    prologues = {id(k.pipeline) for key, k in device._kernels.items() if "matvec_stream_norm" in key[1]}
    fused = sum(1 for d in m.decode.graph.dispatches if id(d.pipeline) in prologues)
    # every product that reads the stream: q/k/v (but the first layer's), feed-forward, per-layer input gate
    readers = sum(len(L.qkv) for L in m.layers[1:]) + sum(1 if L.gate_up else 2 for L in m.layers) + len(m.layers)
    assert fused == readers
    norms = sum(1 for d in m.decode.graph.dispatches if d.kernel == "rms_norm")
    assert norms == 2 + 1  # and the per-layer projection's norm (not the stream's)
    monkeypatch.setattr(gemma, "FUSE_STREAM_NORMS", False)
    plain = await _load(device, name, chunk=8)
    assert len(plain.decode.graph) - len(m.decode.graph) == 3 * len(m.layers) - 1
    for t, tok in enumerate(toks[:6]):
        got = await plain.forward([tok], t)
        np.testing.assert_allclose(got, ref[t], atol=ATOL, err_msg=f"position {t}")


@pytest.mark.parametrize("name", NAMES)
async def test_prefill_chunks_then_decode(device, name):
    z = np.load(FIXTURES / f"gemma4_tiny_{name}.npz")
    m = await _load(device, name, chunk=7)  # chunks straddle the sliding window and the KV ring
    toks, ref = z["tokens"].tolist(), z["logits"]
    split = len(toks) - 6
    got = await m.forward(toks[:split], 0)  # several prefill chunks, the last one partial
    np.testing.assert_allclose(got, ref[split - 1], atol=ATOL)
    for t in range(split, len(toks)):
        got = await m.forward([toks[t]], t)
        np.testing.assert_allclose(got, ref[t], atol=ATOL, err_msg=f"position {t}")


@pytest.mark.parametrize("name", NAMES)
async def test_long_prefill_run(device, name):
    """With a long prefill run beside the prefill run (what a hardware GPU gets for prompts longer than a
    chunk), a prompt goes in long chunks while more than a chunk remains, then the prefill run, then decode
    runs; the logits are the goldens' all along."""
    z = np.load(FIXTURES / f"gemma4_tiny_{name}.npz")
    gf = await GGUFFile.open(FIXTURES / f"gemma4_tiny_{name}.gguf")
    m = await Gemma.load(gf, device, max_context=64, prefill_chunk=4, long_prefill_chunk=9)
    assert m.prefill_long.capacity == 9 and m.prefill.capacity == 4
    toks, ref = z["tokens"].tolist(), z["logits"]
    used = []
    write_inputs = m.write_inputs

    async def spy(run, ids, pos, soft=()):
        used.append((run.capacity, len(ids)))
        return await write_inputs(run, ids, pos, soft)

    m.write_inputs = spy
    split = len(toks) - 3
    got = await m.forward(toks[:split], 0)
    np.testing.assert_allclose(got, ref[split - 1], atol=ATOL)
    n, want = split, []
    while n > 0:  # the chunks run_for picks: long while more than 4 remain
        cap = 9 if n > 4 else 4 if n > 1 else 1
        want.append((cap, min(cap, n)))
        n -= min(cap, n)
    assert used == want and used[0] == (9, 9)
    for t in range(split, len(toks)):
        np.testing.assert_allclose(await m.forward([toks[t]], t), ref[t], atol=ATOL, err_msg=f"position {t}")


async def test_the_long_prefill_run_is_a_hardware_gpus(device, monkeypatch):
    """Software GPUs get none; a hardware GPU gets LONG_PREFILL_CHUNK when its binding limit holds the widest
    activation of that many tokens (E2B's GeGLU input: 512 x 12,288 floats), else none."""
    from types import SimpleNamespace

    from rullama_py.models import gemma

    m = await _load(device, "e2b_f32", chunk=None)
    assert device.software and m.long_prefill_chunk == 0 and m.prefill_long is None
    e2b = SimpleNamespace(ffn_dim=[6144] * 35, n_layers=35, ple_dim=256)
    monkeypatch.setattr(type(device), "software", property(lambda self: None))
    monkeypatch.setitem(device.limits, "max-storage-buffer-binding-size", 512 * 12288 * 4)
    assert gemma.default_long_prefill_chunk(device, e2b) == gemma.LONG_PREFILL_CHUNK == 512
    monkeypatch.setitem(device.limits, "max-storage-buffer-binding-size", 512 * 12288 * 4 - 4)
    assert gemma.default_long_prefill_chunk(device, e2b) == 0


@pytest.mark.parametrize("name", ["e2b_f32", "q4_k_m"])
async def test_prefill_with_split_k(device, name):
    """The prefill graph with every tiled product cut in 3 column ranges (ops.matmul's split K, which a
    hardware GPU picks for a chunk's narrow products and the software GPUs of these tests never do) gives the
    same logits."""
    import sys

    mm = sys.modules["rullama_py.ops.matmul"]
    z = np.load(FIXTURES / f"gemma4_tiny_{name}.npz")
    mm.MATMUL_KSPLIT_OVERRIDE = 3
    try:
        m = await _load(device, name, chunk=7)
    finally:
        mm.MATMUL_KSPLIT_OVERRIDE = None
    assert any(d.kernel == "matmul_reduce" for d in m.prefill.graph.dispatches)
    toks, ref = z["tokens"].tolist(), z["logits"]
    got = await m.forward(toks, 0)
    np.testing.assert_allclose(got, ref[len(toks) - 1], atol=ATOL)


@pytest.mark.parametrize("name", ["e2b_f32", "e4b_q8_0"])  # an F32 and a BF16 per-layer-embedding table
async def test_ple_table_on_the_gpu(device, name):
    """ple_on_gpu: the table is uploaded as it is in the file and the graphs gather its rows (ops.embed, scaled
    as the host rows are): prefill chunks and step-by-step decode give the goldens' logits, and the gathered
    identity rows equal the host-read ones bit for bit."""
    z = np.load(FIXTURES / f"gemma4_tiny_{name}.npz")
    m = await _load(device, name, chunk=7, ple_on_gpu=True)
    assert m.ple_table is not None and m.ple_table.shape[0] == m.cfg.vocab_size
    toks, ref = z["tokens"].tolist(), z["logits"]
    split = len(toks) - 4
    np.testing.assert_allclose(await m.forward(toks[:split], 0), ref[split - 1], atol=ATOL)
    for t in range(split, len(toks)):
        np.testing.assert_allclose(await m.forward([toks[t]], t), ref[t], atol=ATOL, err_msg=f"position {t}")
    # The decode run's identity rows before the projection's norm added onto them: gather alone.
    ids = np.array([toks[-1]], np.uint32)
    g = device.graph()
    from rullama_py import ops
    out = device.tensor((1, m.cfg.n_layers * m.cfg.ple_dim))
    await ops.embed(g, m.ple_table, device.upload(ids), out, n_tokens=1,
                    scale=float(np.sqrt(m.cfg.ple_dim) / np.sqrt(2.0)))
    await device.run(g)
    np.testing.assert_array_equal(await device.read(out), await m.ple_rows(ids))
    # Soft tokens (an image's rows) take the pad token's row, which the host writes since the gather skips
    # their ids: the same logits, bit for bit, as the model that reads every row on the host, across two
    # prefill chunks.
    host = await _load(device, name, chunk=7)
    rows = device.upload(np.random.default_rng(3).standard_normal((5, m.cfg.d_model)).astype(np.float32))
    soft = [(4, rows, 5)]  # ids 4..8 become soft tokens
    np.testing.assert_array_equal(await m.forward(toks[:12], 0, soft), await host.forward(toks[:12], 0, soft))


async def test_the_ple_tables_upload_is_counted_with_the_weights(device, monkeypatch):
    """ple_on_gpu: the table's pieces report progress in the weights' total, after them and never backwards,
    ending at every byte; the table is read in pieces (Device.upload_rows_from), never whole."""
    gf = await GGUFFile.open(FIXTURES / "gemma4_tiny_e2b_f32.gguf")
    table = gf.info("per_layer_token_embd.weight")
    monkeypatch.setattr(device, "WRITE_CHUNK", table.nbytes // 3 & ~3, raising=False)
    seen = []
    m = await Gemma.load(gf, device, max_context=64, prefill_chunk=8, ple_on_gpu=True,
                         progress=lambda done, total, name: seen.append((done, total, name)))
    assert m.ple_table is not None
    totals = {t for _, t, _ in seen}
    assert len(totals) == 1 and seen[-1][0] == totals.pop()
    assert all(a[0] <= b[0] for a, b in zip(seen, seen[1:]))
    pieces = [done for done, _, name in seen if name == table.name]
    assert len(pieces) >= 3 and seen[-len(pieces)][2] == table.name  # the table last, in several pieces
    assert pieces[-1] - table.nbytes == seen[-len(pieces) - 1][0]  # right after the other weights


async def test_a_ple_table_the_gpu_cannot_hold_is_a_sentence(device, monkeypatch):
    """ple_on_gpu on a GPU that refuses the table's buffers: a ModelLoadError that names the table, its size
    and the way out (reading the rows from the file), not the runtime's error alone."""
    from rullama_py import gpu
    from rullama_py.models.gemma import ModelLoadError

    create_buffer = device.create_buffer

    def refusing(size, usage, label="", *args, **kw):
        if label.startswith("per_layer_token_embd.weight["):  # a part of the table
            raise gpu.DeviceLimitError(f"buffer {label!r} needs {size:,} bytes; this device allows 1,024")
        return create_buffer(size, usage, label, *args, **kw)

    monkeypatch.setattr(device, "create_buffer", refusing)
    with pytest.raises(ModelLoadError, match=r"per-layer-embedding table \(0\.\d GB\) does not fit on this GPU.*"
                                             r"without ple_on_gpu"):
        await _load(device, "e2b_f32", chunk=8, ple_on_gpu=True)


@pytest.mark.parametrize("name", ["e2b_f32", "e4b_q8_0"])  # an F32 and a BF16 per-layer-embedding table
async def test_ple_rows_and_their_cache_match_gguf(device, name):
    """The host-read per-layer-embedding rows (and the LRU that keeps recent ones) equal gguf-py's reading of
    the table, scaled by sqrt(ple_dim) / sqrt(2), whether a row comes from the file or from the cache."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    path = FIXTURES / f"gemma4_tiny_{name}.gguf"
    t = next(t for t in GGUFReader(path).tensors if t.name == "per_layer_token_embd.weight")
    table = dequantize(t.data, t.tensor_type).reshape(-1, t.shape[0]).astype(np.float32)
    m = await _load(device, name, chunk=8)
    m._ple_cache_rows = 3  # small, so that the ids below evict and re-read rows
    scale = np.float32(np.sqrt(m.cfg.ple_dim) / np.sqrt(2.0))
    ids = np.array([5, 7, 5, 9, 11, 5, 7, 7, 300, 5], np.uint32)
    for _ in range(2):
        got = await m.ple_rows(ids)
        np.testing.assert_array_equal(got, table[ids] * scale)
    assert len(m._ple_cache) == 3 and list(m._ple_cache) == [7, 300, 5]  # most recently used last
    # A call's missed rows are read one run of consecutive ids at a time, all at once: 2 reads for 5 rows here.
    reads = []
    read = m.gguf.source.read

    async def counting_read(offset, n):
        reads.append(n)
        return await read(offset, n)

    m.gguf.source.read = counting_read
    ids = np.array([40, 41, 42, 5, 43, 90, 40], np.uint32)  # 5 is cached; 40-43 one run, 90 another
    np.testing.assert_array_equal(await m.ple_rows(ids), table[ids] * scale)
    assert sorted(reads) == sorted([m._ple_info.row_bytes, 4 * m._ple_info.row_bytes])


# The tiny models whose heads (32, 64 values) hold whole q8_0 blocks; the others' 16-value heads are refused.
Q8_NAMES = ["e2b_f32", "e4b_q8_0", "q4_k_m"]
# Measured worst case against the q8_0 reference (a 9-token prompt, then decode runs): 0.066 (e2b_f32), 0.100
# (e4b_q8_0), 0.007 (q4_k_m); 0.108 for e2b_f32 decoded a token at a time from the start.
Q8_ATOL = 0.2


class _Q8Cache(reference_gemma4.Cache):
    """The reference's cache holding each key and value as gguf-py's Q8_0 round trip (quantise, dequantise):
    llama.cpp's q8_0 cache, whose scale is rounded to f16 (ours keeps it in f32, 2^-11 closer)."""

    def append(self, il, k, v):
        def q8(x):
            x = np.asarray(x, np.float32)
            flat = x.reshape(-1, x.shape[-1])
            back = quants.dequantize(quants.quantize(flat, GGMLQuantizationType.Q8_0), GGMLQuantizationType.Q8_0)
            return back.reshape(x.shape).astype(np.float64)

        super().append(il, q8(k), q8(v))


@pytest.mark.parametrize("name", Q8_NAMES)
async def test_q8_0_kv_cache(device, name):
    """With the KV cache as q8_0 (prompt and decode runs), against tests/reference_gemma4.py over a q8_0 cache.

    Quantising is not continuous: where the GPU's f32 key sits across a rounding edge from the float64 one, that
    value is a whole step (its block's largest / 127) off, and these tiny models (logits up to 26) turn a few such
    steps into up to 0.11 of a logit. So the bound is Q8_ATOL; and over the positions, the logits must sit nearer
    the q8_0 reference than the f16-cache goldens (median of the per-position worst case at most 0.6 of it, measured
    0.10-0.49), which a cache quantised some other way, or not at all, would not. Greedy tokens equal the
    reference's wherever its top-2 margin exceeds twice the bound."""
    z = np.load(FIXTURES / f"gemma4_tiny_{name}.npz")
    gf = await GGUFFile.open(FIXTURES / f"gemma4_tiny_{name}.gguf")
    m = await Gemma.load(gf, device, max_context=64, prefill_chunk=7, kv_cache_type="q8_0")
    assert all(k.dtype == "kv_q8_0" for k, _, _ in m.kv.values())
    toks, goldens = z["tokens"].tolist(), z["decode_logits"]
    ref = reference_gemma4.Gemma4(str(FIXTURES / f"gemma4_tiny_{name}.gguf"))
    cache = _Q8Cache(ref.cfg.n_layer)
    split = 9  # a prompt of two prefill chunks, then one token a run
    want = list(ref.forward(toks[:split], cache))[-1:] + [ref.forward([t], cache)[-1] for t in toks[split:]]
    got = [await m.forward(toks[:split], 0)] + [await m.forward([toks[t]], t) for t in range(split, len(toks))]
    positions = range(split - 1, len(toks))
    err_q8 = [float(np.abs(g - w).max()) for g, w in zip(got, want)]
    err_f16 = [float(np.abs(g - goldens[p]).max()) for g, p in zip(got, positions)]
    assert max(err_q8) < Q8_ATOL, f"worst {max(err_q8):.3f} at position {positions[int(np.argmax(err_q8))]}"
    assert np.median(err_q8) <= 0.6 * np.median(err_f16), (np.median(err_q8), np.median(err_f16))
    for p, g, w in zip(positions, got, want):
        top2 = np.sort(w)[-2:]
        if top2[1] - top2[0] > 2 * Q8_ATOL:
            assert g.argmax() == w.argmax(), f"position {p}"


async def test_a_q8_0_kv_cache_needs_whole_blocks_per_head(device):
    """16-value heads cannot hold a 32-value block: a sentence that says so, before any weight is uploaded."""
    gf = await GGUFFile.open(FIXTURES / "gemma4_tiny_gqa4_f16.gguf")
    with pytest.raises(ValueError, match="multiple of 32 values .* are 16: use the f16 cache"):
        await Gemma.load(gf, device, max_context=64, kv_cache_type="q8_0")
    with pytest.raises(ValueError, match="'q4_0' is not supported; choose one of f16, q8_0"):
        await Gemma.load(gf, device, max_context=64, kv_cache_type="q4_0")
