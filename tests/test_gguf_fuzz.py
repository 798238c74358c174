"""Property test of the GGUF header parser: any mutation of a valid file either parses into a self-consistent
GGUFFile or raises GGUFError; never another exception, never a hang, never a huge allocation."""

from __future__ import annotations

import asyncio
import signal
import struct
import tempfile
from contextlib import contextmanager
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf.quants import quantize
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rullama_py.gguf_file import GGUFError, GGUFFile
from rullama_py.sources import BytesSource

_loop = asyncio.new_event_loop()  # hypothesis drives plain functions; run the async parser on our own loop


def _base_file() -> bytes:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "base.gguf"
        w = gguf.GGUFWriter(str(p), arch="fuzz")
        w.add_uint32("fuzz.u32", 7)
        w.add_float32("fuzz.f32", 1.5)
        w.add_bool("fuzz.flag", True)
        w.add_string("fuzz.str", "abc")
        w.add_array("fuzz.strs", ["x", "yz", "", "▁w"])
        w.add_array("fuzz.ints", [1, 2, 3])
        w.add_array("fuzz.nested", [[1], [2, 3]])
        w.add_tensor("a", np.arange(16, dtype=np.float32).reshape(2, 8))
        w.add_tensor("q", quantize(np.ones((2, 32), np.float32), Q.Q8_0), raw_dtype=Q.Q8_0)
        w.add_tensor("h", np.ones(32, np.float16))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        return p.read_bytes()


BASE = _base_file()
MAGIC_V3 = BASE[:8]

_interesting_u64 = st.sampled_from([0, 1, 2, 4, 5, 31, 32, 255, 2**31, 2**32 - 1, 2**32, 2**62, 2**63, 2**64 - 1])
_interesting_u32 = st.sampled_from([0, 1, 2, 3, 4, 5, 8, 9, 12, 13, 14, 15, 30, 41, 99, 2**31, 2**32 - 1])
_pos = st.integers(0, 10**6)  # taken modulo the current length
_mutation = st.one_of(
    st.tuples(st.just("byte"), _pos, st.integers(0, 255)),
    st.tuples(st.just("u32"), _pos, st.one_of(_interesting_u32, st.integers(0, 2**32 - 1))),
    st.tuples(st.just("u64"), _pos, st.one_of(_interesting_u64, st.integers(0, 2**64 - 1))),
    st.tuples(st.just("cut"), _pos, st.just(0)),
    st.tuples(st.just("insert"), _pos, st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("delete"), _pos, st.integers(1, 24)),
)


def _mutate(data: bytes, muts) -> bytes:
    b = bytearray(data)
    for kind, pos, arg in muts:
        if not b:
            break
        i = pos % len(b)
        if kind == "byte":
            b[i] = arg
        elif kind == "u32" and len(b) >= 4:
            struct.pack_into("<I", b, min(i, len(b) - 4), arg)
        elif kind == "u64" and len(b) >= 8:
            struct.pack_into("<Q", b, min(i, len(b) - 8), arg)
        elif kind == "cut":
            del b[i:]
        elif kind == "insert":
            b[i:i] = arg
        elif kind == "delete":
            del b[i : i + arg]
    return bytes(b)


class _Hang(Exception):
    pass


@contextmanager
def _time_limit(seconds: float):
    """Turn a hang into a failure: hypothesis' deadline only judges examples that finish."""

    def on_alarm(signum, frame):
        raise _Hang(f"parser still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


class _SmallWindows(GGUFFile):
    HEADER_CHUNK = 5  # every string and array straddles the read window somewhere
    HEADER_MAX_CHUNK = 23


async def _parse_and_check(data: bytes, cls) -> None:
    try:
        gf = await cls.open(BytesSource(data))
    except GGUFError:
        return
    # Parsed: the result must be self-consistent, and every tensor readable.
    assert gf.version in (2, 3)
    end = len(data)
    spans = []
    for info in gf.tensors.values():
        assert gf.data_offset <= info.offset and info.offset + info.nbytes <= end
        assert (info.offset - gf.data_offset) % gf.alignment == 0
        assert info.n_rows * info.row_bytes == info.nbytes and 1 <= len(info.shape) <= 4
        spans.append((info.offset, info.offset + info.nbytes))
        raw = await gf.tensor_bytes(info.name)
        assert len(raw) == info.nbytes
        try:
            with np.errstate(all="ignore"):
                t = await gf.tensor(info.name)
            assert t.dtype == np.float32 and t.size == info.n_elements
        except GGUFError:
            pass  # a type gguf-py cannot dequantise
    spans.sort()
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:]))


def _check(data: bytes, small_windows: bool) -> None:
    cls = _SmallWindows if small_windows else GGUFFile
    with _time_limit(5.0):
        _loop.run_until_complete(_parse_and_check(data, cls))


def test_base_file_parses():
    gf = _loop.run_until_complete(GGUFFile.open(BytesSource(BASE)))
    assert set(gf.tensors) == {"a", "q", "h"} and gf.metadata["fuzz.nested"] == [[1], [2, 3]]
    gf = _loop.run_until_complete(_SmallWindows.open(BytesSource(BASE)))
    assert gf.metadata["fuzz.strs"] == ["x", "yz", "", "▁w"]


_fuzz_settings = settings(
    max_examples=700,
    deadline=2000,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@_fuzz_settings
@given(muts=st.lists(_mutation, min_size=1, max_size=4), small_windows=st.booleans())
def test_mutated_files_parse_or_raise_gguf_error(muts, small_windows):
    _check(_mutate(BASE, muts), small_windows)


@settings(max_examples=300, deadline=2000, database=None)
@given(body=st.binary(max_size=400), small_windows=st.booleans())
def test_random_bodies_after_a_valid_preamble(body, small_windows):
    _check(MAGIC_V3 + body, small_windows)


@settings(max_examples=200, deadline=2000, database=None)
@given(data=st.binary(max_size=64))
def test_random_bytes(data):
    _check(data, False)
