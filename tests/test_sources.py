"""Byte-range sources: local files, bytes, HTTP Range against a loopback server, and the browser classes
driven through stand-ins that mimic the JS APIs they use."""

from __future__ import annotations

import os
import socket

import pytest

from range_server import RangeServer
from rullama_py import sources
from rullama_py.sources import (
    BlobSource,
    BytesSource,
    HTTPSource,
    LocalFile,
    OPFSSource,
    SequentialReader,
    SourceError,
    open_source,
)

DATA = bytes(range(256)) * 40 + b"tail"  # 10244 bytes, every offset distinguishable


async def _check_reads(src) -> None:
    assert src.size == len(DATA)
    for off, n in ((0, 1), (0, 16), (255, 300), (len(DATA) - 4, 4), (len(DATA), 0), (1000, len(DATA) - 1000)):
        assert bytes(await src.read(off, n)) == DATA[off : off + n]
    with pytest.raises(SourceError, match="past the end"):
        await src.read(len(DATA) - 3, 4)
    with pytest.raises(SourceError, match="past the end"):
        await src.read(len(DATA) + 10, 1)
    with pytest.raises(SourceError, match="bad read range"):
        await src.read(-1, 4)


async def test_local_file(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(DATA)
    async with LocalFile(p) as src:
        assert src.name == str(p)
        await _check_reads(src)
    with pytest.raises(SourceError, match="read after close"):
        await src.read(0, 1)


async def test_local_file_errors(tmp_path):
    with pytest.raises(SourceError, match="no such file"):
        LocalFile(tmp_path / "missing.gguf")
    with pytest.raises(SourceError, match="directory"):
        LocalFile(tmp_path)


async def test_local_file_big_read_goes_through_a_thread(tmp_path):
    big = os.urandom(sources._THREAD_READ_MIN + 123)
    p = tmp_path / "big.bin"
    p.write_bytes(big)
    async with LocalFile(p) as src:
        assert await src.read(7, len(big) - 7) == big[7:]


async def test_local_file_shrunk_underneath(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(DATA)
    src = LocalFile(p)
    os.truncate(p, 100)
    with pytest.raises(SourceError, match="short read"):
        await src.read(50, 200)
    await src.close()


async def test_bytes_source_is_zero_copy():
    buf = bytearray(DATA)
    src = BytesSource(buf)
    await _check_reads(src)
    view = await src.read(10, 4)
    assert isinstance(view, memoryview)
    buf[10] = 0xEE
    assert view[0] == 0xEE


async def test_http_source():
    with RangeServer({"/d.bin": DATA}) as srv:
        src = await HTTPSource.open(srv.url("/d.bin"))
        assert src.name == srv.url("/d.bin")
        await _check_reads(src)
        assert srv.requests[0] == ("/d.bin", "bytes=0-0")  # the size probe
        assert ("/d.bin", "bytes=255-554") in srv.requests


async def test_http_file_smaller_than_probe():
    with RangeServer({"/one": b"x"}) as srv:
        src = await HTTPSource.open(srv.url("/one"))
        assert src.size == 1 and await src.read(0, 1) == b"x"


async def test_http_errors():
    with RangeServer({"/d.bin": DATA}) as srv:
        with pytest.raises(SourceError, match="HTTP 404"):
            await HTTPSource.open(srv.url("/missing.gguf"))
    with RangeServer({"/d.bin": DATA}, ranges=False) as srv:
        with pytest.raises(SourceError, match="ignored the Range request .*HTTP 200"):
            await HTTPSource.open(srv.url("/d.bin"))
    with RangeServer({"/empty": b""}) as srv:
        with pytest.raises(SourceError, match="416"):
            await HTTPSource.open(srv.url("/empty"))
    # A port nobody listens on: bind one, note it, close it.
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(SourceError, match="connection refused"):
        await HTTPSource.open(f"http://127.0.0.1:{port}/x.gguf", timeout=5)


async def test_http_server_gone_after_open():
    with RangeServer({"/d.bin": DATA}) as srv:
        src = await HTTPSource.open(srv.url("/d.bin"), timeout=5)
    with pytest.raises(SourceError):
        await src.read(0, 10)


async def test_open_source_dispatch(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(DATA)
    for x in (p, str(p)):
        src = await open_source(x)
        assert isinstance(src, LocalFile)
        await src.close()
    for x in (DATA, bytearray(DATA), memoryview(DATA)):
        assert isinstance(await open_source(x), BytesSource)
    same = BytesSource(DATA)
    assert await open_source(same) is same
    with RangeServer({"/d.bin": DATA}) as srv:
        src = await open_source(srv.url("/d.bin"))
        assert isinstance(src, HTTPSource) and src.size == len(DATA)
    with pytest.raises(TypeError, match="cannot read a model from int"):
        await open_source(42)


async def test_sequential_reader_windows():
    src = BytesSource(DATA)
    r = SequentialReader(src, first_chunk=100, max_chunk=400)
    assert bytes(await r.read(10)) == DATA[:10]
    assert r.reads == 1 and r.available() == 90
    assert bytes(await r.read(90)) == DATA[10:100]
    assert bytes(await r.read(1)) == DATA[100:101]  # next window: 200 bytes
    assert r.reads == 2 and r.available() == 199
    assert bytes(await r.read(1000)) == DATA[101:1101]  # a read bigger than the window
    assert r.pos == 1101 and r.remaining == len(DATA) - 1101
    with pytest.raises(SourceError):
        await r.read(len(DATA))


# --- Browser classes, through stand-ins for the JS objects (the real ones exist only inside Pyodide) -----


class _FakeArrayBuffer:
    def __init__(self, data: bytes):
        self._data = data

    def to_bytes(self) -> bytes:
        return self._data


class _FakeBlob:
    """Mimics the Blob API the source uses: size, name, slice(a, b), await arrayBuffer()."""

    def __init__(self, data: bytes, name=None):
        self._data = data
        self.size = len(data)
        if name is not None:
            self.name = name
        self.slices = []

    def slice(self, a, b):
        self.slices.append((a, b))
        return _FakeBlob(self._data[a:b])

    async def arrayBuffer(self):
        return _FakeArrayBuffer(self._data)


class _FakeFileHandle:
    def __init__(self, data: bytes, name: str):
        self.name = name
        self._file = _FakeBlob(data, name)

    async def getFile(self):
        return self._file


async def test_blob_source_with_a_stand_in():
    blob = _FakeBlob(DATA, "model.gguf")
    src = BlobSource(blob)
    assert src.name == "model.gguf"
    await _check_reads(src)
    assert (255, 555) in blob.slices  # slice end is exclusive
    assert BlobSource(_FakeBlob(b"abc")).name == "<blob>"


async def test_opfs_file_handle_with_a_stand_in():
    src = await OPFSSource.open(_FakeFileHandle(DATA, "m.gguf"))
    assert src.name == "opfs:m.gguf"
    await _check_reads(src)


class _FakeSyncHandle:
    """Mimics FileSystemSyncAccessHandle: getSize, read(buffer, {at}), flush, close, and the lock mode."""

    def __init__(self, mode):
        if mode is not None:
            self.mode = mode
        self.closed = False

    def getSize(self):
        return len(DATA)

    def read(self, buffer, options):
        raise AssertionError("not read here")

    def flush(self):
        pass

    def close(self):
        self.closed = True


class _FakeLockingFileHandle(_FakeFileHandle):
    def __init__(self, mode="readwrite-unsafe", fail=False):
        super().__init__(DATA, "m.gguf")
        self.mode, self.fail, self.asked, self.handles = mode, fail, [], []

    async def createSyncAccessHandle(self, options):
        self.asked.append(options)
        if self.fail:
            raise RuntimeError("NoModificationAllowedError: the file is locked")
        self.handles.append(_FakeSyncHandle(self.mode))
        return self.handles[-1]


async def test_opfs_shared_sync_handle_only_where_the_lock_is_shared(monkeypatch):
    from rullama_py import sources

    monkeypatch.setattr(sources, "_js_options", lambda d: d)
    fh = _FakeLockingFileHandle()
    h = await sources._shared_sync_handle(fh)
    assert h is fh.handles[0] and fh.asked == [{"mode": "readwrite-unsafe"}] and not h.closed
    # A browser that ignores the mode gives an exclusive handle: closed again, the blob is read instead.
    fh = _FakeLockingFileHandle(mode=None)
    assert await sources._shared_sync_handle(fh) is None and fh.handles[0].closed
    assert await sources._shared_sync_handle(_FakeLockingFileHandle(fail=True)) is None  # locked, or main thread
    assert await sources._shared_sync_handle(_FakeFileHandle(DATA, "m.gguf")) is None  # no sync handles at all
    # The source closes a handle of its own, once; a handle given to it stays the caller's.
    own = OPFSSource(_FakeSyncHandle("readwrite-unsafe"), len(DATA), "opfs:m.gguf")
    own._own_handle = True
    await own.close()
    await own.close()
    assert own._handle.closed
    given = await OPFSSource.open(_FakeSyncHandle("readwrite-unsafe"))
    await given.close()
    assert not given._handle.closed
