"""Byte-range sources: one small async interface over everywhere a model file can live.

    src = await open_source(x)       # str path, pathlib.Path, "http(s)://" URL, bytes, or a browser JS object
    src.size, src.name
    data = await src.read(offset, n) # exactly n bytes (bytes or memoryview), or SourceError
    await src.close()

Classes: `LocalFile` (a file on disk; in Pyodide, the Emscripten file system), `BytesSource` (bytes in memory),
`HTTPSource` (HTTP Range requests: urllib natively, JS `fetch` in Pyodide), `BlobSource` (a browser File or
Blob), `OPFSSource` (Origin Private File System: a FileSystemFileHandle, or a sync access handle in a worker).

A model file is gigabytes and is read piecewise: a header front to back, then one tensor at a time. Nothing
here reads more than it was asked for, except `SequentialReader`, which reads the header through a window
that grows from 1 to 4 MiB so that parsing thousands of small fields costs a handful of source reads (a
handful of HTTP requests, rather than one per field).
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

IN_BROWSER = sys.platform == "emscripten"

# Reads at least this large go to a worker thread natively, so a 200 MB tensor read does not stall the
# event loop. Smaller reads are cheaper inline than a thread hop.
_THREAD_READ_MIN = 8 << 20


class SourceError(OSError):
    """A source could not be opened or read: missing file, HTTP error, short read, read past the end."""


class Source:
    """Random-access bytes of known size. Subclasses implement `_read` (the range is already checked)."""

    name: str = "<source>"
    size: int = 0

    async def read(self, offset: int, n: int):
        """Exactly `n` bytes at `offset`, as bytes or a memoryview. Raises SourceError past the end."""
        offset, n = int(offset), int(n)
        if offset < 0 or n < 0:
            raise SourceError(f"{self.name}: bad read range offset={offset} n={n}")
        if offset + n > self.size:
            raise SourceError(
                f"{self.name}: read of {n} bytes at offset {offset} goes past the end ({self.size} bytes)"
            )
        if n == 0:
            return b""
        data = await self._read(offset, n)
        if len(data) != n:
            raise SourceError(f"{self.name}: short read: {len(data)} of {n} bytes at offset {offset}")
        return data

    async def _read(self, offset: int, n: int):
        raise NotImplementedError

    async def close(self) -> None:
        pass

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, size={self.size})"


class LocalFile(Source):
    """A file on the local file system (in Pyodide: the Emscripten file system, e.g. a mounted folder)."""

    def __init__(self, path):
        self.path = Path(path)
        self.name = str(self.path)
        try:
            self._f = open(self.path, "rb")
        except FileNotFoundError:
            raise SourceError(f"{self.name}: no such file") from None
        except IsADirectoryError:
            raise SourceError(f"{self.name}: is a directory, not a file") from None
        except OSError as e:
            raise SourceError(f"{self.name}: cannot open: {e.strerror or e}") from None
        self.size = os.fstat(self._f.fileno()).st_size
        # pread is thread-safe (no shared file position), which the threaded big reads need.
        self._pread = getattr(os, "pread", None)

    def _read_sync(self, offset: int, n: int) -> bytes:
        if self._f.closed:
            raise SourceError(f"{self.name}: read after close")
        if self._pread is not None:
            fd = self._f.fileno()
            data = self._pread(fd, n, offset)
            if len(data) == n:
                return data
            # pread may return less than asked near the end or on some file systems: finish in a loop.
            parts = [data]
            got = len(data)
            while got < n:
                more = self._pread(fd, n - got, offset + got)
                if not more:
                    break
                parts.append(more)
                got += len(more)
            return b"".join(parts)
        self._f.seek(offset)
        return self._f.read(n)

    async def _read(self, offset: int, n: int):
        try:
            if n >= _THREAD_READ_MIN and not IN_BROWSER and self._pread is not None:
                return await asyncio.to_thread(self._read_sync, offset, n)
            return self._read_sync(offset, n)
        except OSError as e:
            if isinstance(e, SourceError):
                raise
            raise SourceError(f"{self.name}: read failed at offset {offset}: {e}") from None

    async def close(self) -> None:
        self._f.close()


class BytesSource(Source):
    """Bytes already in memory. Reads are zero-copy memoryview slices."""

    def __init__(self, data, name: str = "<bytes>"):
        self._mv = memoryview(data).cast("B")
        self.size = self._mv.nbytes
        self.name = name

    async def _read(self, offset: int, n: int):
        return self._mv[offset : offset + n]


# ---------------------------------------------------------------------------------------------------------
# HTTP

_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.I)


def _parse_content_range(value) -> tuple[int, int, int | None] | None:
    m = _CONTENT_RANGE.match(str(value)) if value else None
    if not m:
        return None
    total = None if m.group(3) == "*" else int(m.group(3))
    return int(m.group(1)), int(m.group(2)), total


class HTTPSource(Source):
    """A file served over HTTP(S), read with `Range: bytes=a-b` requests. The server must answer 206.

    Open with `await HTTPSource.open(url)`: a 1-byte probe learns the size (from Content-Range) and checks
    that the server honours ranges, so a bad URL fails at open time with a clear message.
    """

    def __init__(self, url: str, size: int, *, timeout: float = 60.0, headers: dict | None = None):
        self.url = url
        self.name = url
        self.size = int(size)
        self.timeout = timeout
        self.headers = dict(headers or {})

    @classmethod
    async def open(cls, url: str, *, timeout: float = 60.0, headers: dict | None = None) -> "HTTPSource":
        src = cls(url, 0, timeout=timeout, headers=headers)
        _, total = await src._get_range(0, 0, probe=True)
        if total is None:
            raise SourceError(f"{url}: the server did not say the file's size (Content-Range total missing)")
        src.size = total
        return src

    async def _read(self, offset: int, n: int):
        data, _ = await self._get_range(offset, offset + n - 1)
        return data

    async def _get_range(self, first: int, last: int, probe: bool = False):
        if IN_BROWSER:
            return await _js_get_range(self, first, last, probe)
        return await asyncio.to_thread(_urllib_get_range, self, first, last, probe)


def _check_206(src: HTTPSource, status: int, content_range, first: int, last: int, probe: bool):
    """Validate a range response's status and Content-Range; return (expected length, total size or None)."""
    if status == 200:
        raise SourceError(
            f"{src.url}: the server ignored the Range request (HTTP 200 with the whole file); "
            "byte-range reads need a server that answers 206 Partial Content"
        )
    if status != 206:
        raise SourceError(f"{src.url}: HTTP {status} for a range request (expected 206 Partial Content)")
    cr = _parse_content_range(content_range)
    if cr is None:
        return None, None  # the browser may hide Content-Range (CORS); the caller checks the body length
    a, b, total = cr
    # On the probe the file may be shorter than what we asked for; elsewhere the range was checked already.
    if a != first or b > last or (not probe and b != last):
        raise SourceError(f"{src.url}: asked for bytes {first}-{last}, the server sent {a}-{b}")
    return b - a + 1, total


def _urllib_get_range(src: HTTPSource, first: int, last: int, probe: bool):
    import socket
    import urllib.error
    import urllib.request

    headers = {**src.headers, "Range": f"bytes={first}-{last}", "Accept-Encoding": "identity"}
    req = urllib.request.Request(src.url, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=src.timeout) as resp:
            length, total = _check_206(src, resp.status, resp.headers.get("Content-Range"), first, last, probe)
            if length is None:
                raise SourceError(f"{src.url}: 206 response without a valid Content-Range header")
            # Read at most one byte more than promised: a misbehaving server cannot make us buffer gigabytes.
            body = resp.read(length + 1)
    except urllib.error.HTTPError as e:
        if e.code == 416:
            raise SourceError(f"{src.url}: HTTP 416 Range Not Satisfiable for bytes {first}-{last}") from None
        raise SourceError(f"{src.url}: HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        reason = e.reason
        if isinstance(reason, ConnectionRefusedError):
            raise SourceError(f"{src.url}: connection refused (is the server running?)") from None
        if isinstance(reason, (socket.timeout, TimeoutError)):
            raise SourceError(f"{src.url}: timed out after {src.timeout} s") from None
        raise SourceError(f"{src.url}: {reason}") from None
    except (socket.timeout, TimeoutError):
        raise SourceError(f"{src.url}: timed out after {src.timeout} s") from None
    except SourceError:
        raise
    except (OSError, ValueError) as e:  # connection reset mid-body, malformed URL, bad status line
        raise SourceError(f"{src.url}: {type(e).__name__}: {e}") from None
    if len(body) != length:
        raise SourceError(f"{src.url}: range {first}-{last}: got {len(body)} bytes, expected {length}")
    return body, total


def _js_null(v) -> bool:
    # JS null arrives as None in older Pyodide and as pyodide.ffi.jsnull in newer ones.
    if v is None:
        return True
    try:
        from pyodide.ffi import jsnull  # type: ignore

        return v is jsnull
    except ImportError:
        return False


def _js_options(d: dict):
    import js  # type: ignore
    from pyodide.ffi import to_js  # type: ignore

    return to_js(d, dict_converter=js.Object.fromEntries)


async def _js_get_range(src: HTTPSource, first: int, last: int, probe: bool):
    import js  # type: ignore

    opts = _js_options({"headers": {**src.headers, "Range": f"bytes={first}-{last}"}})
    try:
        resp = await js.fetch(src.url, opts)
    except Exception as e:  # JsException: network failure, CORS rejection, bad URL
        raise SourceError(f"{src.url}: fetch failed ({e}); is the server up and does it allow this origin?") from None
    status = int(resp.status)
    if status not in (200, 206):
        raise SourceError(f"{src.url}: HTTP {status} {resp.statusText}")
    cr = resp.headers.get("Content-Range")
    length, total = _check_206(src, status, None if _js_null(cr) else cr, first, last, probe)
    data = (await resp.arrayBuffer()).to_bytes()
    if length is not None and len(data) != length:
        raise SourceError(f"{src.url}: range {first}-{last}: got {len(data)} bytes, expected {length}")
    if total is None and probe:
        # Cross-origin responses hide Content-Range unless the server exposes it; Content-Length of a HEAD
        # is always readable.
        head = await js.fetch(src.url, _js_options({"method": "HEAD", "headers": dict(src.headers)}))
        cl = head.headers.get("Content-Length")
        if int(head.status) == 200 and not _js_null(cl):
            total = int(cl)
    return data, total


# ---------------------------------------------------------------------------------------------------------
# Browser objects (Pyodide only)


class BlobSource(Source):
    """A browser File or Blob (from <input type=file>, drag and drop, or an OPFS file), read by slices."""

    def __init__(self, blob, name: str | None = None):
        self._blob = blob
        self.size = int(blob.size)
        blob_name = getattr(blob, "name", None)
        self.name = name or (str(blob_name) if blob_name and not _js_null(blob_name) else "<blob>")

    async def _read(self, offset: int, n: int):
        try:
            buf = await self._blob.slice(offset, offset + n).arrayBuffer()
        except Exception as e:  # the file changed on disk or permission was revoked (NotReadableError)
            raise SourceError(f"{self.name}: reading the blob failed: {e}") from None
        return buf.to_bytes()


class OPFSSource(Source):
    """A file in the Origin Private File System.

    Give it a FileSystemFileHandle (any context: read through `getFile()` as a Blob) or a
    FileSystemSyncAccessHandle (dedicated workers only: synchronous `read(buffer, {at})`, the fastest way).
    The handle stays the caller's: `close()` does not close it. Use `await OPFSSource.open(handle)`.
    `open_path` opens a sync handle of its own where the browser shares one (closed by `close()`).
    """

    def __init__(self, handle, size: int, name: str, blob=None):
        self._handle = handle
        self._blob = blob
        self.size = int(size)
        self.name = name
        self._own_handle = False

    @classmethod
    async def open(cls, handle) -> "OPFSSource":
        if _is_sync_access_handle(handle):
            return cls(handle, int(handle.getSize()), "<opfs sync handle>")
        file = await handle.getFile()
        return cls(handle, int(file.size), f"opfs:{handle.name}", blob=file)

    @classmethod
    async def open_path(cls, path: str) -> "OPFSSource":
        """Open `dir/sub/file.gguf` relative to the origin's OPFS root."""
        import js  # type: ignore

        parts = [p for p in str(path).split("/") if p]
        if not parts:
            raise SourceError(f"opfs:{path}: empty path")
        d = await js.navigator.storage.getDirectory()
        try:
            for p in parts[:-1]:
                d = await d.getDirectoryHandle(p)
            fh = await d.getFileHandle(parts[-1])
        except Exception as e:  # NotFoundError / TypeMismatchError
            raise SourceError(f"opfs:{path}: {e}") from None
        handle = await _shared_sync_handle(fh)
        if handle is None:
            return await cls.open(fh)
        src = cls(handle, int(handle.getSize()), f"opfs:{path}")
        src._own_handle = True
        return src

    async def close(self) -> None:
        if self._own_handle:
            self._own_handle = False
            self._handle.close()

    async def _read(self, offset: int, n: int):
        try:
            if self._blob is not None:
                return (await self._blob.slice(offset, offset + n).arrayBuffer()).to_bytes()
            import js  # type: ignore

            arr = js.Uint8Array.new(n)
            got = int(self._handle.read(arr, _js_options({"at": offset})))
        except Exception as e:
            raise SourceError(f"{self.name}: read failed at offset {offset}: {e}") from None
        if got != n:
            raise SourceError(f"{self.name}: short read: {got} of {n} bytes at offset {offset}")
        return arr.to_bytes()


async def _shared_sync_handle(fh):
    """A sync access handle on OPFS file handle `fh` in the "readwrite-unsafe" mode, or None where there is none
    (not a dedicated worker, or a browser without lock modes). Why: a Gemma 4 model reads a per-layer-embedding
    row for every new token, and a blob read costs milliseconds where a sync read costs tens of microseconds.
    The mode shares the file with other handles of that mode (the app's downloader opens its handle so), so
    loading or resuming the same model again is not locked out; without modes a handle would lock the file."""
    if not hasattr(fh, "createSyncAccessHandle"):
        return None
    try:
        handle = await fh.createSyncAccessHandle(_js_options({"mode": "readwrite-unsafe"}))
    except Exception:  # noqa: BLE001 - the main thread, or the file is locked: read through the blob
        return None
    if getattr(handle, "mode", None) != "readwrite-unsafe":  # the option was ignored: an exclusive lock
        handle.close()
        return None
    return handle


def _is_js_object(x) -> bool:
    return type(x).__module__.startswith("pyodide") or type(x).__name__.startswith("Js")


def _is_sync_access_handle(x) -> bool:
    return hasattr(x, "getSize") and hasattr(x, "read") and hasattr(x, "flush")


_URL = re.compile(r"^https?://", re.I)


async def open_source(x, **http_options) -> Source:
    """A Source for `x`: a Source (returned as is), bytes-like, str path or pathlib.Path, "http(s)://" URL,
    or in Pyodide a File/Blob, FileSystemFileHandle or FileSystemSyncAccessHandle."""
    if isinstance(x, Source):
        return x
    if isinstance(x, (bytes, bytearray, memoryview)):
        return BytesSource(x)
    if isinstance(x, os.PathLike):
        return LocalFile(x)
    if isinstance(x, str):
        if _URL.match(x):
            return await HTTPSource.open(x, **http_options)
        return LocalFile(x)
    if _is_js_object(x):
        if _is_sync_access_handle(x) or hasattr(x, "getFile"):
            return await OPFSSource.open(x)
        if hasattr(x, "slice") and hasattr(x, "arrayBuffer"):
            return BlobSource(x)
    raise TypeError(f"cannot read a model from {type(x).__name__}: give a path, URL, bytes or a browser File")


# ---------------------------------------------------------------------------------------------------------
# Buffered front-to-back reading


class SequentialReader:
    """Reads a source front to back through a growing window (1, 2, then 4 MiB per source read).

    Used for the GGUF header: a 262k-token vocabulary is ~6 MB of small length-prefixed strings, which this
    turns into three reads. `window(n)` exposes the buffer so hot loops can parse in place.
    """

    def __init__(self, source: Source, offset: int = 0, first_chunk: int = 1 << 20, max_chunk: int = 4 << 20):
        self.source = source
        self._buf = memoryview(b"")
        self._base = offset  # file offset of _buf[0]
        self._i = 0  # read position inside _buf
        self._chunk = first_chunk
        self._max_chunk = max_chunk
        self.reads = 0  # how many source reads were made (tests check the coalescing)

    @property
    def pos(self) -> int:
        return self._base + self._i

    @property
    def remaining(self) -> int:
        return self.source.size - self.pos

    def available(self) -> int:
        """Bytes already buffered after the current position."""
        return len(self._buf) - self._i

    async def fill(self, n: int) -> None:
        """Make at least `n` bytes after the current position available. The caller checks `n` against
        `remaining` first; asking past the end raises SourceError."""
        if self.available() >= n:
            return
        pos = self.pos
        want = min(max(n, self._chunk), self.source.size - pos)
        if want < n:
            raise SourceError(f"{self.source.name}: need {n} bytes at offset {pos}, only {want} remain")
        data = await self.source.read(pos, want)
        self.reads += 1
        self._buf = memoryview(data).cast("B")
        self._base, self._i = pos, 0
        self._chunk = min(self._chunk * 2, self._max_chunk)

    def window(self) -> tuple[memoryview, int]:
        """(buffer, index of the current position in it); advance with `advance_to(index)`."""
        return self._buf, self._i

    def advance_to(self, index: int) -> None:
        self._i = index

    async def read(self, n: int) -> memoryview:
        await self.fill(n)
        i = self._i
        self._i = i + n
        return self._buf[i : i + n]
