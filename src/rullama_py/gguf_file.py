"""Streaming GGUF reader (format versions 2 and 3).

    gf = await GGUFFile.open(source)        # anything sources.open_source takes: path, URL, bytes, browser File
    gf.metadata["gemma3.block_count"]       # header key/values as Python values
    info = gf.tensors["blk.0.attn_q.weight"]  # TensorInfo: shape, type, absolute offset, nbytes, rows
    raw = await gf.tensor_bytes(info.name)  # that tensor's raw (quantised) bytes, fetched on demand
    w = await gf.tensor(info.name)          # dequantised float32, numpy shape
    w0 = await gf.tensor(info.name, rows=slice(0, 8))  # only the first 8 rows are fetched

`open` reads only the header (through sources.SequentialReader, so a few large reads); tensor data is read
when asked for, so a 7 GB file never has to sit in memory.

Metadata values: integers and floats as Python numbers, bools as bool, strings as str, arrays as lists.
Numeric arrays longer than `_NUMPY_ARRAY_MIN` elements (token scores, token types) are read-only numpy arrays
instead, since a Python list of 262k floats costs ~10 MB and a noticeable parse time in Pyodide. Strings are
decoded as UTF-8 with `surrogateescape`, so invalid bytes survive: `s.encode("utf-8", "surrogateescape")`.

Bad input raises `GGUFError` (a ValueError) naming the problem. Every count and length is checked against the
bytes that remain in the file before anything is allocated or looped over, so a corrupt or hostile header
fails fast instead of allocating gigabytes or spinning.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
from gguf import (
    GGML_QUANT_SIZES,
    GGUF_DEFAULT_ALIGNMENT,
    GGUF_MAGIC,
    GGMLQuantizationType,
    GGUFReader,
    GGUFValueType,
    Keys,
)
from gguf.quants import dequantize

from .sources import SequentialReader, Source, SourceError, open_source

SUPPORTED_VERSIONS = (2, 3)
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_ARRAY_NESTING = 8  # GGUF allows arrays of arrays; real files nest at most once. Bounds the recursion.
_NUMPY_ARRAY_MIN = 1024

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_INT64_MAX = (1 << 63) - 1

# Numpy dtypes of the scalar value types, from gguf-py's own table (little-endian: GGUF is written LE).
_SCALAR_DTYPES = {t: np.dtype(d).newbyteorder("<") for t, d in GGUFReader.gguf_scalar_to_np.items()}
# struct formats by (kind, itemsize): numpy's dtype.char for uint64 is 'L', which struct reads as 4 bytes.
_STRUCT_CODES = {"u": "_BH_I___Q", "i": "_bh_i___q", "f": "____f___d", "b": "_?"}
_SCALAR_STRUCTS = {t: struct.Struct("<" + _STRUCT_CODES[d.kind][d.itemsize]) for t, d in _SCALAR_DTYPES.items()}
_VALUE_TYPES = {int(t): t for t in GGUFValueType}

# Smallest possible encodings, used to reject counts the remaining bytes cannot hold.
_MIN_STRING = 8  # u64 length, empty payload
_MIN_KV = _MIN_STRING + 4 + 1  # key, value type, one-byte value
_MIN_TENSOR_INFO = _MIN_STRING + 4 + 8 + 4 + 8  # name, n_dims, one dim, type, offset
_MIN_ARRAY = 4 + 8  # element type, count

# Plain (non-block) tensor types that gguf.quants.dequantize does not handle: view and widen ourselves.
_PLAIN_DTYPES = {
    GGMLQuantizationType.I8: np.dtype("<i1"),
    GGMLQuantizationType.I16: np.dtype("<i2"),
    GGMLQuantizationType.I32: np.dtype("<i4"),
    GGMLQuantizationType.I64: np.dtype("<i8"),
    GGMLQuantizationType.F64: np.dtype("<f8"),
}


class GGUFError(ValueError):
    """The file is not a valid GGUF file (or uses something this reader does not support)."""


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's place in the file. `shape` is numpy order (outermost first), i.e. GGUF's `ne` reversed;
    `shape[-1]` is the row (innermost, contiguous) dimension and `n_rows` is the product of the others."""

    name: str
    shape: tuple
    ggml_type: GGMLQuantizationType
    type_name: str  # "q4_k", "f32", "bf16", ...
    offset: int  # absolute byte offset in the file
    nbytes: int
    n_elements: int
    n_rows: int
    row_bytes: int

    @property
    def ne(self) -> tuple:
        """Dimensions in GGUF/ggml order (innermost first)."""
        return tuple(reversed(self.shape))

    @property
    def block_size(self) -> int:
        return GGML_QUANT_SIZES[self.ggml_type][0]

    @property
    def type_size(self) -> int:
        return GGML_QUANT_SIZES[self.ggml_type][1]


class _Header:
    """Parses the header from a SequentialReader; every failure becomes GGUFError."""

    def __init__(self, r: SequentialReader, name: str):
        self.r = r
        self.name = name

    def fail(self, msg: str):
        raise GGUFError(f"{self.name}: {msg} (at byte {self.r.pos})")

    async def need(self, n: int, what: str) -> None:
        if n > self.r.remaining:
            self.fail(f"truncated: {what} needs {n} bytes, only {self.r.remaining} remain")
        await self.r.fill(n)

    async def u32(self, what: str) -> int:
        await self.need(4, what)
        buf, i = self.r.window()
        self.r.advance_to(i + 4)
        return _U32.unpack_from(buf, i)[0]

    async def u64(self, what: str) -> int:
        await self.need(8, what)
        buf, i = self.r.window()
        self.r.advance_to(i + 8)
        return _U64.unpack_from(buf, i)[0]

    async def string(self, what: str) -> str:
        n = await self.u64(f"{what} length")
        if n > self.r.remaining:
            self.fail(f"{what} claims {n} bytes, only {self.r.remaining} remain in the file")
        data = await self.r.read(n)
        return str(data, "utf-8", "surrogateescape")

    async def value(self, vtype: GGUFValueType, what: str, depth: int = 0):
        if vtype == GGUFValueType.STRING:
            return await self.string(what)
        if vtype == GGUFValueType.ARRAY:
            return await self.array(what, depth)
        st = _SCALAR_STRUCTS[vtype]
        await self.need(st.size, what)
        buf, i = self.r.window()
        self.r.advance_to(i + st.size)
        v = st.unpack_from(buf, i)[0]
        return bool(v) if vtype == GGUFValueType.BOOL else v

    async def value_type(self, what: str) -> GGUFValueType:
        code = await self.u32(f"{what} type")
        t = _VALUE_TYPES.get(code)
        if t is None:
            self.fail(f"{what}: unknown value type {code}")
        return t

    async def array(self, what: str, depth: int):
        if depth >= MAX_ARRAY_NESTING:
            self.fail(f"{what}: arrays nested more than {MAX_ARRAY_NESTING} deep")
        etype = await self.value_type(f"{what} element")
        count = await self.u64(f"{what} count")
        if etype == GGUFValueType.STRING:
            min_item = _MIN_STRING
        elif etype == GGUFValueType.ARRAY:
            min_item = _MIN_ARRAY
        else:
            min_item = _SCALAR_DTYPES[etype].itemsize
        if count * min_item > self.r.remaining:
            self.fail(f"{what}: array of {count} {etype.name} elements cannot fit in the {self.r.remaining} bytes left")
        if etype == GGUFValueType.STRING:
            return await self.string_array(count, what)
        if etype == GGUFValueType.ARRAY:
            return [await self.array(f"{what}[{k}]", depth + 1) for k in range(count)]
        dt = _SCALAR_DTYPES[etype]
        data = await self.r.read(count * dt.itemsize)
        if etype == GGUFValueType.BOOL:
            arr = np.frombuffer(data, dtype=np.uint8, count=count) != 0  # any non-zero byte is true
        else:
            arr = np.frombuffer(data, dtype=dt, count=count)
        if count < _NUMPY_ARRAY_MIN:
            return arr.tolist()
        arr = arr.astype(dt.newbyteorder("="), copy=True)  # own memory (not a view of the read window)
        arr.flags.writeable = False
        return arr

    async def string_array(self, count: int, what: str) -> list:
        # The hot path of every header (262k tokens): parse in place over the buffered window and only go
        # back to the reader when a string straddles its end.
        out = []
        append = out.append
        unpack = _U64.unpack_from
        left = count
        while left:
            buf, i = self.r.window()
            end = len(buf)
            while left and i + 8 <= end:
                n = unpack(buf, i)[0]
                j = i + 8 + n
                if j > end:
                    break
                append(str(buf[i + 8 : j], "utf-8", "surrogateescape"))
                i = j
                left -= 1
            self.r.advance_to(i)
            if left:
                append(await self.string(f"{what}[{count - left}]"))
                left -= 1
        return out


def _type_name(t: GGMLQuantizationType) -> str:
    return t.name.lower()


class GGUFFile:
    """A GGUF file's header, with on-demand access to tensor data. Open with `await GGUFFile.open(src)`."""

    # Header read window: first source read, and the size it doubles up to (see sources.SequentialReader).
    HEADER_CHUNK = 1 << 20
    HEADER_MAX_CHUNK = 4 << 20

    def __init__(self, source: Source, owns_source: bool):
        self.source = source
        self._owns_source = owns_source
        self.version = 0
        self.metadata: dict = {}
        self.metadata_types: dict = {}  # key -> GGUFValueType, or (ARRAY, element type) for arrays
        self.tensors: dict[str, TensorInfo] = {}
        self.alignment = GGUF_DEFAULT_ALIGNMENT
        self.data_offset = 0  # absolute offset of the tensor data section
        self.header_reads = 0  # source reads the header took

    @classmethod
    async def open(cls, source, **http_options) -> "GGUFFile":
        """Parse the header of `source` (a Source, or anything `open_source` accepts)."""
        owns = not isinstance(source, Source)
        src = await open_source(source, **http_options)
        gf = cls(src, owns)
        try:
            await gf._parse()
        except SourceError as e:
            # The source ran out or failed under us; report it as a bad file (truncated), keep the cause.
            if owns:
                await src.close()
            raise GGUFError(f"{src.name}: could not read the header: {e}") from e
        except BaseException:
            if owns:
                await src.close()
            raise
        return gf

    async def _parse(self) -> None:
        src = self.source
        r = SequentialReader(src, first_chunk=self.HEADER_CHUNK, max_chunk=self.HEADER_MAX_CHUNK)
        h = _Header(r, src.name)
        if src.size < 4 + 4 + 8 + 8:
            raise GGUFError(f"{src.name}: {src.size} bytes is too short for a GGUF header (truncated file?)")
        magic = await h.u32("magic")
        if magic != GGUF_MAGIC:
            shown = magic.to_bytes(4, "little")
            raise GGUFError(f"{src.name}: not a GGUF file (magic {shown!r}, expected b'GGUF')")
        version = await h.u32("version")
        if version not in SUPPORTED_VERSIONS:
            if version & 0xFFFF == 0 and (version >> 24) in SUPPORTED_VERSIONS:
                raise GGUFError(f"{src.name}: big-endian GGUF files are not supported")
            raise GGUFError(f"{src.name}: unsupported GGUF version {version} (supported: 2 and 3)")
        self.version = version
        n_tensors = await h.u64("tensor count")
        n_kv = await h.u64("metadata count")
        if n_tensors * _MIN_TENSOR_INFO > r.remaining:
            raise GGUFError(
                f"{src.name}: tensor count {n_tensors} cannot fit in a {src.size}-byte file (corrupt or truncated)"
            )
        if n_kv * _MIN_KV + n_tensors * _MIN_TENSOR_INFO > r.remaining:
            raise GGUFError(
                f"{src.name}: metadata count {n_kv} cannot fit in a {src.size}-byte file (corrupt or truncated)"
            )

        for k in range(n_kv):
            key = await h.string(f"metadata key #{k}")
            if key in self.metadata:
                h.fail(f"duplicate metadata key {key!r}")
            vtype = await h.value_type(f"metadata {key!r}")
            if vtype == GGUFValueType.ARRAY:
                # Peek the element type for metadata_types without consuming it twice.
                await h.need(4, f"metadata {key!r} element type")
                buf, i = r.window()
                code = _U32.unpack_from(buf, i)[0]
                self.metadata_types[key] = (vtype, _VALUE_TYPES.get(code))
            else:
                self.metadata_types[key] = vtype
            self.metadata[key] = await h.value(vtype, f"metadata {key!r}")

        align = self.metadata.get(Keys.General.ALIGNMENT, GGUF_DEFAULT_ALIGNMENT)
        if Keys.General.ALIGNMENT in self.metadata:
            if self.metadata_types[Keys.General.ALIGNMENT] != GGUFValueType.UINT32:
                raise GGUFError(f"{src.name}: {Keys.General.ALIGNMENT} must be a uint32")
            if align == 0 or align & (align - 1):
                raise GGUFError(f"{src.name}: {Keys.General.ALIGNMENT} = {align} is not a power of two")
        self.alignment = align

        infos = []
        names = set()
        for k in range(n_tensors):
            name = await h.string(f"tensor #{k} name")
            if name in names:
                h.fail(f"duplicate tensor name {name!r}")
            names.add(name)
            n_dims = await h.u32(f"tensor {name!r} n_dims")
            if not 1 <= n_dims <= MAX_DIMS:
                h.fail(f"tensor {name!r} has {n_dims} dimensions (must be 1..{MAX_DIMS})")
            ne = [await h.u64(f"tensor {name!r} dim") for _ in range(n_dims)]
            code = await h.u32(f"tensor {name!r} type")
            rel = await h.u64(f"tensor {name!r} offset")
            infos.append((name, ne, code, rel))
        header_end = r.pos
        self.header_reads = r.reads
        self.data_offset = -(-header_end // align) * align
        if n_tensors and self.data_offset > src.size:
            raise GGUFError(f"{src.name}: truncated: the tensor data section would start past the end of the file")

        data_size = src.size - self.data_offset
        for name, ne, code, rel in infos:
            self.tensors[name] = self._tensor_info(name, ne, code, rel, data_size)
        self._check_overlaps()

    def _tensor_info(self, name: str, ne: list, code: int, rel: int, data_size: int) -> TensorInfo:
        where = f"{self.source.name}: tensor {name!r}"
        try:
            t = GGMLQuantizationType(code)
        except ValueError:
            raise GGUFError(f"{where}: unknown tensor type {code}") from None
        if t not in GGML_QUANT_SIZES:
            raise GGUFError(f"{where}: tensor type {t.name} has no known block layout")
        block, type_size = GGML_QUANT_SIZES[t]
        n = 1
        for d in ne:
            if d == 0:
                raise GGUFError(f"{where}: has a zero dimension {ne}")
            if d > _INT64_MAX or n * d > _INT64_MAX:
                raise GGUFError(f"{where}: dimensions {ne} overflow a 64-bit element count")
            n *= d
        if ne[0] % block:
            raise GGUFError(f"{where}: row length {ne[0]} is not a multiple of the {t.name} block size {block}")
        nbytes = n // block * type_size
        if rel % self.alignment:
            raise GGUFError(f"{where}: data offset {rel} is not aligned to {self.alignment}")
        if rel > data_size or nbytes > data_size - rel:
            raise GGUFError(
                f"{where}: data [{rel}, {rel + nbytes}) runs past the end of the file "
                f"(data section is {data_size} bytes; truncated file?)"
            )
        n_rows = n // ne[0]
        return TensorInfo(
            name=name,
            shape=tuple(int(d) for d in reversed(ne)),
            ggml_type=t,
            type_name=_type_name(t),
            offset=self.data_offset + rel,
            nbytes=nbytes,
            n_elements=n,
            n_rows=n_rows,
            row_bytes=nbytes // n_rows,
        )

    def _check_overlaps(self) -> None:
        prev = None
        for info in sorted(self.tensors.values(), key=lambda i: (i.offset, i.nbytes)):
            if prev is not None and info.offset < prev.offset + prev.nbytes:
                raise GGUFError(
                    f"{self.source.name}: tensors {prev.name!r} and {info.name!r} overlap "
                    f"([{prev.offset}, {prev.offset + prev.nbytes}) and [{info.offset}, {info.offset + info.nbytes}))"
                )
            prev = info

    # ----------------------------------------------------------------------------------------------------

    @property
    def architecture(self) -> str | None:
        return self.metadata.get(Keys.General.ARCHITECTURE)

    def get(self, key: str, default=None):
        return self.metadata.get(key, default)

    def info(self, name: str) -> TensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise KeyError(f"{self.source.name}: no tensor named {name!r}") from None

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def _row_range(self, info: TensorInfo, rows) -> tuple[int, int]:
        if rows is None:
            return 0, info.n_rows
        if isinstance(rows, int):
            rows = slice(rows, rows + 1)
        if not isinstance(rows, slice):
            raise TypeError("rows must be a slice of row indices or an int")
        start, stop, step = rows.indices(info.n_rows)
        if step != 1:
            raise ValueError("rows: only contiguous slices (step 1) can be read")
        return start, max(start, stop)

    async def tensor_bytes(self, name: str, rows=None):
        """The raw bytes of tensor `name` (all of it, or the rows in slice `rows` of its `n_rows` rows)."""
        info = self.info(name)
        start, stop = self._row_range(info, rows)
        try:
            return await self.source.read(info.offset + start * info.row_bytes, (stop - start) * info.row_bytes)
        except SourceError as e:
            raise GGUFError(f"{self.source.name}: reading tensor {name!r} failed: {e}") from e

    async def tensor(self, name: str, rows=None) -> np.ndarray:
        """Tensor `name` dequantised to float32 in its numpy shape; with `rows`, shape (n, shape[-1])."""
        info = self.info(name)
        start, stop = self._row_range(info, rows)
        raw = await self.tensor_bytes(name, rows if rows is None else slice(start, stop))
        out = dequantize_rows(raw, info.ggml_type, stop - start, info.row_bytes, info.shape[-1])
        return out.reshape(info.shape) if rows is None else out

    async def close(self) -> None:
        if self._owns_source:
            await self.source.close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()

    def __repr__(self) -> str:
        return (
            f"GGUFFile({self.source.name!r}, v{self.version}, arch={self.architecture!r}, "
            f"{len(self.metadata)} keys, {len(self.tensors)} tensors)"
        )


def dequantize_rows(raw, ggml_type: GGMLQuantizationType, n_rows: int, row_bytes: int, row_len: int) -> np.ndarray:
    """Raw tensor bytes (`n_rows` rows of `row_bytes`) to float32 of shape (n_rows, row_len)."""
    data = np.frombuffer(raw, dtype=np.uint8, count=n_rows * row_bytes).reshape(n_rows, row_bytes)
    plain = _PLAIN_DTYPES.get(ggml_type)
    if plain is not None:
        out = data.view(plain).astype(np.float32)
    else:
        try:
            out = dequantize(data, ggml_type)
        except NotImplementedError:  # gguf-py lacks a few block types (Q8_1, Q8_K: ggml's internal formats)
            raise GGUFError(f"dequantising {ggml_type.name} is not supported") from None
        if out.dtype != np.float32 or not out.flags.writeable:
            out = out.astype(np.float32)  # F32 comes back as a view of the (read-only) read buffer
    return out.reshape(n_rows, row_len)
