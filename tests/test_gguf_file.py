"""The streaming GGUF reader: small files written with gguf.GGUFWriter (round trips, every error path), and
the real Gemma 3 270M file through LocalFile, BytesSource and HTTPSource, cross-checked against gguf-py."""

from __future__ import annotations

import struct
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf.quants import dequantize, quantize

from range_server import RangeServer
from rullama_py.gguf_file import GGUFError, GGUFFile
from rullama_py.sources import BytesSource, HTTPSource, LocalFile

REAL_TYPES = {"q8_0", "q5_0", "q4_k", "q6_k", "f32"}


# ---------------------------------------------------------------------------------------------------------
# Small files built with GGUFWriter


def _write(path: Path, kvs=(), tensors=(), alignment=None) -> bytes:
    w = gguf.GGUFWriter(str(path), arch="test")
    if alignment is not None:
        w.add_custom_alignment(alignment)
    for add, key, value in kvs:
        getattr(w, add)(key, value)
    for name, arr, raw_dtype, raw_shape in tensors:
        w.add_tensor(name, arr, raw_shape=raw_shape, raw_dtype=raw_dtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path.read_bytes()


def _blocks(rng, qtype, n_rows, row_len) -> np.ndarray:
    """Random bytes in the layout of `qtype` (gguf-py cannot quantize every K type), shape (rows, row_bytes)."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    return rng.integers(0, 256, size=(n_rows, row_len // block * size), dtype=np.uint8)


def sample_tensors(rng):
    f32 = rng.standard_normal((4, 8)).astype(np.float32)
    f16 = rng.standard_normal((2, 32)).astype(np.float16)
    q80 = quantize(rng.standard_normal((3, 64)).astype(np.float32), Q.Q8_0)
    bf16 = quantize(rng.standard_normal((2, 3, 32)).astype(np.float32), Q.BF16)
    q4k = _blocks(rng, Q.Q4_K, 2, 256)
    q6k = _blocks(rng, Q.Q6_K, 3, 512)
    i32 = np.arange(12, dtype=np.int32).reshape(3, 4)
    return [
        ("w.f32", f32, None, None),
        ("w.f16", f16, None, None),
        ("w.q8_0", q80, Q.Q8_0, None),
        ("w.bf16", bf16, Q.BF16, None),
        ("w.q4_k", q4k, Q.Q4_K, None),
        ("w.q6_k", q6k, Q.Q6_K, None),
        ("w.i32", i32, None, None),
        ("w.vec", rng.standard_normal(7).astype(np.float32), None, None),
    ]


def sample_kvs(n_tokens=50):
    return [
        ("add_uint32", "test.u32", 7),
        ("add_int64", "test.i64", -(1 << 40)),
        ("add_float32", "test.f32", 0.5),
        ("add_float64", "test.f64", 1e-300),
        ("add_bool", "test.flag", True),
        ("add_string", "test.str", "héllo ▁world"),
        ("add_array", "test.ints", [1, 2, 3]),
        ("add_array", "test.bools", [True, False, True, True]),
        ("add_array", "test.nested", [[1, 2], [3, 4, 5]]),
        ("add_array", "test.strs", [f"tok{i}" * (i % 5) for i in range(n_tokens)]),
        ("add_array", "test.scores", [float(i) / 4 for i in range(2000)]),
    ]


@pytest.fixture
def small(tmp_path) -> bytes:
    """A GGUF with every value kind and a few tensor types."""
    rng = np.random.default_rng(0)
    return _write(tmp_path / "small.gguf", sample_kvs(), sample_tensors(rng))


@pytest.fixture
def tiny(tmp_path) -> bytes:
    """A minimal GGUF (one key, two tensors) for byte-by-byte truncation and corruption."""
    kvs = [("add_uint32", "test.u32", 7), ("add_array", "test.strs", ["a", "bc"])]
    tensors = [
        ("t.a", np.ones((2, 8), np.float32), None, None),
        ("t.b", quantize(np.ones((1, 32), np.float32), Q.Q8_0), Q.Q8_0, None),
    ]
    return _write(tmp_path / "tiny.gguf", kvs, tensors)


async def _open(data: bytes) -> GGUFFile:
    return await GGUFFile.open(BytesSource(data))


def _reader_from_bytes(tmp_path, data: bytes) -> gguf.GGUFReader:
    p = tmp_path / "check.gguf"
    p.write_bytes(data)
    return gguf.GGUFReader(str(p))


def _check_against_reader(gf: GGUFFile, r: gguf.GGUFReader) -> None:
    assert len(gf.tensors) == len(r.tensors)
    assert gf.data_offset == r.data_offset
    for t in r.tensors:
        info = gf.tensors[t.name]
        assert info.ggml_type == t.tensor_type
        assert info.type_name == t.tensor_type.name.lower()
        assert info.ne == tuple(int(x) for x in t.shape)
        assert info.shape == tuple(int(x) for x in reversed(t.shape))
        assert info.offset == t.data_offset
        assert info.nbytes == t.n_bytes
        assert info.n_elements == t.n_elements
        assert info.n_rows * info.row_bytes == info.nbytes
        assert info.n_rows == t.n_elements // int(t.shape[0])


async def test_roundtrip_metadata(small, tmp_path):
    gf = await _open(small)
    m = gf.metadata
    assert gf.version == 3 and gf.architecture == "test" and gf.alignment == 32
    assert m["test.u32"] == 7 and isinstance(m["test.u32"], int)
    assert m["test.i64"] == -(1 << 40)
    assert m["test.f32"] == 0.5 and m["test.f64"] == 1e-300
    assert m["test.flag"] is True
    assert m["test.str"] == "héllo ▁world"
    assert m["test.ints"] == [1, 2, 3]
    assert m["test.bools"] == [True, False, True, True]
    assert m["test.nested"] == [[1, 2], [3, 4, 5]]
    assert m["test.strs"] == [f"tok{i}" * (i % 5) for i in range(50)]
    scores = m["test.scores"]
    assert isinstance(scores, np.ndarray) and scores.dtype == np.float32 and not scores.flags.writeable
    np.testing.assert_array_equal(scores, np.arange(2000, dtype=np.float32) / 4)
    assert gf.metadata_types["test.u32"] == gguf.GGUFValueType.UINT32
    assert gf.metadata_types["test.strs"] == (gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.STRING)
    r = _reader_from_bytes(tmp_path, small)
    for key, field in r.fields.items():
        if key.startswith("GGUF.") or key == "test.nested":
            continue
        expect = field.contents()
        got = m[key]
        if isinstance(got, np.ndarray):
            np.testing.assert_array_equal(got, expect)
        elif isinstance(expect, float):
            assert got == pytest.approx(expect, rel=1e-7)
        else:
            assert got == expect, key


async def test_roundtrip_tensors(small, tmp_path):
    gf = await _open(small)
    _check_against_reader(gf, _reader_from_bytes(tmp_path, small))
    rng = np.random.default_rng(0)
    for name, arr, raw_dtype, _ in sample_tensors(rng):
        info = gf.tensors[name]
        raw = bytes(await gf.tensor_bytes(name))
        assert raw == arr.tobytes(), name
        got = await gf.tensor(name)
        assert got.dtype == np.float32 and got.shape == info.shape
        if raw_dtype is None:
            expect = arr.astype(np.float32)
        else:
            expect = dequantize(arr, raw_dtype)
        np.testing.assert_array_equal(got, expect.reshape(info.shape), err_msg=name)
        # Row reads fetch only those rows and agree with the full tensor.
        rows = await gf.tensor(name, rows=slice(info.n_rows - 1, None))
        np.testing.assert_array_equal(rows, got.reshape(info.n_rows, -1)[-1:], err_msg=name)


async def test_small_read_windows_parse_the_same(small, monkeypatch):
    """Strings and arrays straddling the read window's edge at every possible point parse the same."""
    ref = await _open(small)
    for chunk in (1, 7, 64):
        monkeypatch.setattr(GGUFFile, "HEADER_CHUNK", chunk)
        monkeypatch.setattr(GGUFFile, "HEADER_MAX_CHUNK", chunk * 3)
        gf = await _open(small)
        assert gf.metadata.keys() == ref.metadata.keys()
        for k, v in ref.metadata.items():
            if isinstance(v, np.ndarray):
                np.testing.assert_array_equal(gf.metadata[k], v)
            else:
                assert gf.metadata[k] == v, (chunk, k)
        assert gf.tensors == ref.tensors


async def test_header_reads_are_coalesced(tmp_path):
    data = _write(tmp_path / "many.gguf", sample_kvs(n_tokens=60000), [])
    assert len(data) > 1 << 20
    gf = await _open(data)
    assert len(gf.metadata["test.strs"]) == 60000
    assert gf.header_reads <= 2  # 1 MiB, then 2 MiB


async def test_version_2_and_alignment(tmp_path):
    data = bytearray(_write(tmp_path / "a.gguf", [], [("x", np.ones(64, np.float32), None, None)], alignment=64))
    gf = await _open(bytes(data))
    assert gf.alignment == 64 and gf.tensors["x"].offset % 64 == 0
    data[4:8] = struct.pack("<I", 2)  # v2 differs from v3 only in allowing big-endian files
    gf = await _open(bytes(data))
    assert gf.version == 2
    np.testing.assert_array_equal(await gf.tensor("x"), np.ones(64, np.float32))


async def test_opens_paths_and_owns_its_source(tmp_path, small):
    p = tmp_path / "f.gguf"
    p.write_bytes(small)
    for arg in (p, str(p)):
        async with await GGUFFile.open(arg) as gf:
            assert isinstance(gf.source, LocalFile)
            assert len(gf.tensors) == 8
        assert gf.source._f.closed
    src = LocalFile(p)
    gf = await GGUFFile.open(src)
    await gf.close()
    assert not src._f.closed  # a Source passed in stays the caller's
    await src.close()


async def test_unknown_tensor_name(small):
    gf = await _open(small)
    with pytest.raises(KeyError, match="no tensor named"):
        await gf.tensor("nope")


# ---------------------------------------------------------------------------------------------------------
# Corruption: locate fields in GGUFWriter output and break them one at a time.


def _kv_value_at(data: bytes, key: str) -> int:
    """Offset of the value type field of metadata key `key`."""
    enc = key.encode()
    i = data.index(struct.pack("<Q", len(enc)) + enc)
    return i + 8 + len(enc)


def _tensor_info_at(data: bytes, name: str) -> int:
    """Offset of the n_dims field of tensor `name`'s info."""
    enc = name.encode()
    i = data.index(struct.pack("<Q", len(enc)) + enc)
    return i + 8 + len(enc)


def _put(data: bytes, offset: int, fmt: str, value) -> bytes:
    b = bytearray(data)
    struct.pack_into(fmt, b, offset, value)
    return bytes(b)


async def _bad(data: bytes, match: str) -> None:
    with pytest.raises(GGUFError, match=match):
        await _open(data)


async def test_truncated_everywhere(tiny):
    gf = await _open(tiny)
    data_end = max(t.offset + t.nbytes for t in gf.tensors.values())
    for n in range(len(tiny)):
        if n >= data_end:
            await _open(tiny[:n])  # only trailing padding cut: still valid
            continue
        with pytest.raises(GGUFError):
            await _open(tiny[:n])


async def test_truncated_messages(tiny):
    await _bad(b"", "too short")
    await _bad(tiny[:40], "tensor count 2 cannot fit")
    await _bad(tiny[:120], "truncated")
    await _bad(tiny[: len(tiny) - 40], "past the end of the file")


async def test_bad_magic_and_version(tiny):
    await _bad(b"GGML" + tiny[4:], "not a GGUF file")
    await _bad(_put(tiny, 4, "<I", 1), "unsupported GGUF version 1")
    await _bad(_put(tiny, 4, "<I", 4), "unsupported GGUF version 4")
    await _bad(_put(tiny, 4, ">I", 3), "big-endian")


async def test_absurd_counts(tiny):
    await _bad(_put(tiny, 8, "<Q", 1 << 62), "tensor count .* cannot fit")
    await _bad(_put(tiny, 8, "<Q", 10**6), "tensor count .* cannot fit")
    await _bad(_put(tiny, 16, "<Q", (1 << 64) - 1), "metadata count")
    await _bad(_put(tiny, 16, "<Q", 10**5), "metadata count")
    # A string array claiming 2^60 elements, and a string claiming 2^60 bytes.
    at = _kv_value_at(tiny, "test.strs")
    await _bad(_put(tiny, at + 8, "<Q", 1 << 60), "cannot fit")
    await _bad(_put(tiny, at + 16, "<Q", 1 << 60), "claims")
    # The key string's own length.
    i = tiny.index(b"test.u32") - 8
    await _bad(_put(tiny, i, "<Q", 1 << 50), "claims")


async def test_unknown_value_types(tiny):
    at = _kv_value_at(tiny, "test.u32")
    await _bad(_put(tiny, at, "<I", 13), "unknown value type 13")
    at = _kv_value_at(tiny, "test.strs")
    await _bad(_put(tiny, at + 4, "<I", 99), "unknown value type 99")


async def test_array_nesting_limit(tmp_path):
    deep = [1]
    for _ in range(12):
        deep = [deep]
    data = _write(tmp_path / "deep.gguf", [("add_array", "test.deep", deep)])
    await _bad(data, "nested")


async def test_duplicate_tensor_name(tiny):
    # Rename tensor "t.b" to "t.a": same length, so the layout is unchanged.
    at = _tensor_info_at(tiny, "t.b")
    b = bytearray(tiny)
    b[at - 1 : at] = b"a"
    await _bad(bytes(b), "duplicate tensor name 't.a'")


async def test_duplicate_key(tmp_path):
    data = _write(tmp_path / "d.gguf", [("add_uint32", "test.aaa", 1), ("add_uint32", "test.bbb", 2)])
    await _bad(data.replace(b"test.bbb", b"test.aaa"), "duplicate metadata key 'test.aaa'")


async def test_bad_tensor_infos(tiny):
    at = _tensor_info_at(tiny, "t.a")  # n_dims (2), ne0 (8), ne1 (2), type (f32), offset
    await _bad(_put(tiny, at, "<I", 5), "5 dimensions")
    await _bad(_put(tiny, at, "<I", 0), "0 dimensions")
    await _bad(_put(tiny, at + 4, "<Q", 0), "zero dimension")
    await _bad(_put(_put(tiny, at + 4, "<Q", 1 << 62), at + 12, "<Q", 1 << 62), "overflow")
    await _bad(_put(tiny, at + 20, "<I", 4), "unknown tensor type 4")  # Q4_2: removed from ggml
    await _bad(_put(tiny, at + 20, "<I", 1000), "unknown tensor type 1000")
    await _bad(_put(tiny, at + 24, "<Q", 1 << 40), "past the end")
    await _bad(_put(tiny, at + 24, "<Q", 4), "not aligned")
    at_b = _tensor_info_at(tiny, "t.b")  # q8_0, ne0 = 32
    await _bad(_put(tiny, at_b + 4, "<Q", 16), "not a multiple of the Q8_0 block size 32")
    await _bad(_put(tiny, at_b + 20, "<Q", 0), "overlap")  # b's offset moved onto a


async def test_bad_alignment(tmp_path):
    data = _write(tmp_path / "a.gguf", [], [("x", np.ones(8, np.float32), None, None)], alignment=64)
    at = _kv_value_at(data, "general.alignment")
    await _bad(_put(data, at + 4, "<I", 24), "not a power of two")
    await _bad(_put(data, at + 4, "<I", 0), "not a power of two")
    await _bad(_put(data, at, "<I", int(gguf.GGUFValueType.INT32)), "must be a uint32")


# ---------------------------------------------------------------------------------------------------------
# The real model


def _real_model() -> Path:
    from rullama_py.assets import default_model_path, is_default_model_ready

    p = default_model_path()
    if not is_default_model_ready(p):
        pytest.skip(f"the real Gemma 3 270M GGUF is not in the cache ({p}); run `python -m rullama_py.assets`")
    return p


@pytest.fixture(scope="module")
def real_reader():
    return gguf.GGUFReader(str(_real_model()))


def _sample_rows(info, n=4):
    """A few rows from the start, middle and end: enough to cover every block position, cheap to compare."""
    if info.n_rows <= 3 * n:
        return [slice(0, info.n_rows)]
    mid = info.n_rows // 2
    return [slice(0, n), slice(mid, mid + n), slice(info.n_rows - n, info.n_rows)]


async def _check_real(gf: GGUFFile, r: gguf.GGUFReader, full_types=True) -> None:
    assert gf.version == 3 and gf.architecture == "gemma3"
    assert len(gf.tensors) == 236
    _check_against_reader(gf, r)
    types = {i.type_name for i in gf.tensors.values()}
    assert types == REAL_TYPES
    # Metadata equals gguf-py's reading of it.
    for key, field in r.fields.items():
        if key.startswith("GGUF."):
            continue
        got, expect = gf.metadata[key], field.contents()
        if isinstance(got, np.ndarray):
            np.testing.assert_array_equal(got, np.asarray(expect))
        elif isinstance(expect, float):
            assert got == pytest.approx(expect, rel=1e-7), key
        else:
            assert got == expect, key
    # Dequantisation matches gguf-py's for a few tensors of every type, checked on sampled rows.
    by_name = {t.name: t for t in r.tensors}
    seen = set()
    for info in gf.tensors.values():
        if info.type_name in seen and info.name != "token_embd.weight":
            continue
        seen.add(info.type_name)
        ref_raw = np.asarray(by_name[info.name].data).reshape(info.n_rows, -1)
        for rows in _sample_rows(info):
            got = await gf.tensor(info.name, rows=rows)
            raw = await gf.tensor_bytes(info.name, rows=rows)
            assert bytes(raw) == ref_raw[rows].view(np.uint8).tobytes(), info.name
            expect = dequantize(ref_raw[rows], info.ggml_type).reshape(got.shape)
            np.testing.assert_array_equal(got, expect, err_msg=f"{info.name} rows {rows}")
    assert seen == REAL_TYPES


@pytest.mark.slow
async def test_real_model_local_file(real_reader):
    async with await GGUFFile.open(LocalFile(_real_model())) as gf:
        await _check_real(gf, real_reader)
        assert gf.header_reads <= 4  # ~6.5 MB header: 1 + 2 + 4 MiB windows
        # Small whole tensors through the full-tensor path.
        for name in ("output_norm.weight", "blk.0.attn_q.weight", "blk.0.ffn_down.weight"):
            info = gf.tensors[name]
            t = await gf.tensor(name)
            assert t.shape == info.shape
            ref = dequantize(np.asarray(real_reader.tensors[list(gf.tensors).index(name)].data), info.ggml_type)
            np.testing.assert_array_equal(t, ref.reshape(info.shape))


@pytest.mark.slow
async def test_real_model_bytes_source(real_reader):
    data = _real_model().read_bytes()
    gf = await GGUFFile.open(BytesSource(data))
    await _check_real(gf, real_reader)


@pytest.mark.slow
async def test_real_model_over_http(real_reader):
    path = _real_model()
    with RangeServer({"/gemma.gguf": path}) as srv:
        src = await HTTPSource.open(srv.url("/gemma.gguf"))
        assert src.size == path.stat().st_size
        gf = await GGUFFile.open(src)
        header_requests = len(srv.requests)
        assert header_requests <= 5  # the size probe plus at most four header windows
        await _check_real(gf, real_reader)
        # The tied embedding/head: one row fetched on its own, and the requests carried Range headers.
        row = await gf.tensor("token_embd.weight", rows=2)
        assert row.shape == (1, 640)
        assert all(rng and rng.startswith("bytes=") for _, rng in srv.requests)
