"""The GPU runtime: one async-first interface over WebGPU, natively (wgpu-py) and in Pyodide (navigator.gpu).

Objects, from the bottom up:

- `Device`: the adapter's real limits and features, buffer creation with limit checks, uploads, readback,
  and the kernel cache. Open it with `await Device.open()`.
- `Kernel`: one compiled WGSL compute pipeline. `device.kernel(name, **consts)` loads `shaders/<name>.wgsl`,
  prepends a specialisation preamble and caches the pipeline (see "Specialisation" below).
- `Graph`: a recorded list of dispatches. Bind groups are made once when a dispatch is recorded, so running
  a graph again (every decoded token) costs only encoding and one submit. Values that change between runs
  (position, token count) live in small uniform buffers the caller rewrites with `device.write`.
- `Readback`: a reusable staging buffer for reading results; `await device.run(graph, readback)` submits the
  graph, copies into the staging buffer in the same submit and returns the bytes.

Memory. Every buffer is made by `Device.create_buffer`, which counts it: `device.allocated_bytes` is what the
live buffers hold now and `device.peak_bytes` the most they held at once (`reset_peak()` starts a new
measurement). A buffer stops counting when it is destroyed or when Python drops its last reference (the
backend frees it then); natively that is when the driver frees it, in the browser the JS object's memory goes
at its next garbage collection.

Specialisation. A kernel file uses constants it does not declare; the loader writes them in front of it:

    device.kernel("rms_norm", N=640, EPS=1e-6, HAS_WEIGHT=True)
    ->  const N: u32 = 640u;  const EPS: f32 = 1e-06;  const HAS_WEIGHT: bool = true;

(ints become u32, floats f32, bools bool). `libs=("quant/q4_k",)` prepends other files from shaders/ (shared
helpers). Feature variants are whole files: when the device has subgroups, `name.subgroups.wgsl` is preferred
over `name.wgsl`; likewise `name.f16.wgsl` for shader-f16. Every kernel must have the plain fallback file,
and the enable directive (`enable f16;` / `enable subgroups;`) is added by the loader when a variant is used.
Every file may rely on `shaders/common.wgsl`, which is always prepended.
"""

from __future__ import annotations

import asyncio
import math
import os
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import _backend
from ._backend import api


class GPUError(RuntimeError):
    """Base class of every GPU failure the runtime reports."""


class NoAdapterError(GPUError):
    """No WebGPU adapter: the browser lacks WebGPU, or no Vulkan driver is installed natively."""


class DeviceLostError(GPUError):
    """The GPU device was lost (driver reset, tab in background too long, out of memory)."""


class ShaderError(GPUError):
    """A WGSL kernel failed to compile or to build a pipeline."""


class DeviceLimitError(GPUError):
    """A buffer or binding is larger than the device allows."""


# Limits we ask for: the adapter's own values rather than WebGPU's small defaults (128 MiB bindings).
_LIMITS = (
    "max-storage-buffer-binding-size",
    "max-buffer-size",
    "max-compute-workgroup-storage-size",
    "max-compute-invocations-per-workgroup",
    "max-compute-workgroup-size-x",
    "max-compute-workgroups-per-dimension",
    "max-storage-buffers-per-shader-stage",
)

# WebGPU spells the subgroup feature "subgroups"; wgpu-native (wgpu-py 0.32) spells it "subgroup".
_SUBGROUP_NAMES = ("subgroups", "subgroup")

STORAGE = api.BufferUsage.STORAGE | api.BufferUsage.COPY_DST | api.BufferUsage.COPY_SRC
UNIFORM = api.BufferUsage.UNIFORM | api.BufferUsage.COPY_DST


class _translate_errors:
    """Turn the backend's exceptions into ours, naming what was being done. wgpu-py raises e.g.
    GPUValidationError("... Parent device is lost") from whichever call meets a lost device."""

    def __init__(self, what: str, device=None):
        self.what = what
        self.device = device

    def __enter__(self):
        return self

    def __exit__(self, etype, e, tb):
        if e is None or isinstance(e, GPUError) or not isinstance(e, Exception):
            return False
        if self.device is not None:
            self.device.check()  # the browser reports a lost device separately from the failed call
        text = str(e)
        if "lost" in text.lower():
            raise DeviceLostError(f"GPU device lost while {self.what}: {text}") from e
        raise GPUError(f"GPU error while {self.what}: {text}") from e


def shader_dir() -> Path:
    """The WGSL sources: inside the installed wheel, or shaders/ at the root of a source checkout."""
    here = Path(__file__).resolve().parent
    for d in (here / "shaders", here.parent.parent / "shaders"):
        if d.is_dir():
            return d
    raise FileNotFoundError("rullama_py shaders/ folder not found (broken install?)")


def _wgsl_const(name: str, value) -> str:
    if isinstance(value, bool):
        return f"const {name}: bool = {'true' if value else 'false'};"
    if isinstance(value, (int, np.integer)):
        if value < 0:
            raise ValueError(f"kernel constant {name}={value}: integer constants are u32")
        return f"const {name}: u32 = {int(value)}u;"
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(value):
            raise ValueError(f"kernel constant {name}={value} is not finite")
        return f"const {name}: f32 = {float(value)!r};"
    raise TypeError(f"kernel constant {name}: unsupported type {type(value).__name__}")


# Software renderers: WebGPU through them runs on the CPU (Mesa's llvmpipe/lavapipe, Google's SwiftShader,
# Windows' WARP), some hundred times slower than a GPU.
SOFTWARE_GPUS = ("llvmpipe", "lavapipe", "swiftshader", "softpipe", "microsoft basic render driver")


def software_gpu(info: dict) -> str | None:
    """The software renderer's name when the adapter (its info: vendor, device, description, adapter_type) is
    one, else None."""
    text = " ".join(str(info.get(k, "")) for k in ("vendor", "device", "description", "architecture")).lower()
    for name in SOFTWARE_GPUS:
        if name in text:
            return name
    return "software" if str(info.get("adapter_type", "")).upper() == "CPU" else None


@dataclass(eq=False)
class Kernel:
    name: str
    pipeline: object
    layout: object
    source: str


@dataclass(eq=False)
class Tensor:
    """A GPU buffer viewed as an array. `dtype` is a numpy dtype for plain arrays, or a GGUF type name
    ("q4_k", ...) for quantised weights kept as their raw GGUF bytes. Weights larger than the device's
    binding limit are split by rows into `parts`, each (buffer, first_row, n_rows)."""

    shape: tuple
    dtype: str
    parts: list
    label: str = ""

    @property
    def buffer(self):
        if len(self.parts) != 1:
            raise GPUError(f"tensor {self.label!r} is split in {len(self.parts)} parts; use .parts")
        return self.parts[0][0]

    @property
    def nbytes(self) -> int:
        return sum(p[0].size for p in self.parts)

    def view(self, shape, label: str | None = None) -> "Tensor":
        """The same buffer(s) seen with another shape (no larger than the buffer holds)."""
        itemsize = np.dtype(self.dtype).itemsize if self.dtype in np.sctypeDict else 1
        if int(np.prod(shape)) * itemsize > self.nbytes:
            raise ValueError(f"view {shape} of {self.label!r} is larger than its {self.nbytes} bytes")
        return Tensor(tuple(shape), self.dtype, self.parts, self.label if label is None else label)


@dataclass
class Dispatch:
    pipeline: object
    bind_group: object
    workgroups: tuple
    kernel: str = ""  # for profiling and error messages


@dataclass
class Graph:
    """Dispatches recorded once, encoded into one compute pass per run."""

    device: "Device"
    dispatches: list = field(default_factory=list)
    _prepared: object = None  # browser only: the dispatch list handed to JS once (see webgpu_js)

    def add(self, kernel: Kernel, bindings, workgroups) -> None:
        """Record `kernel` over `bindings` (a list of Tensors or raw buffers, bound in order 0, 1, ...)."""
        if isinstance(workgroups, int):
            workgroups = (workgroups,)
        wg = tuple(int(w) for w in workgroups) + (1,) * (3 - len(workgroups))
        limit = self.device.limits["max-compute-workgroups-per-dimension"]
        if max(wg) > limit or min(wg) < 1:
            raise DeviceLimitError(f"kernel {kernel.name}: {wg} workgroups; each dimension must be 1..{limit}")
        bg = self.device.bind_group(kernel, bindings)
        self.dispatches.append(Dispatch(kernel.pipeline, bg, wg, kernel.name))
        self._prepared = None

    def encode(self, encoder) -> None:
        if not self.dispatches:
            return
        if self._prepared is not None:  # replays of a validated graph: see _backend.prepare_dispatches
            _backend.encode_prepared(encoder, self._prepared)
            return
        if _backend.IN_BROWSER:
            self._prepared = _backend.prepare_dispatches(self.dispatches)
            _backend.encode_prepared(encoder, self._prepared)
            return
        cpass = encoder.begin_compute_pass()
        for d in self.dispatches:
            cpass.set_pipeline(d.pipeline)
            cpass.set_bind_group(0, d.bind_group)
            cpass.dispatch_workgroups(*d.workgroups)
        cpass.end()
        self._prepared = _backend.prepare_dispatches(self.dispatches)  # this first run validated them

    def __len__(self) -> int:
        return len(self.dispatches)

    async def profile(self) -> dict:
        """Seconds per kernel name, timing each dispatch on its own (submit + wait). Slow; for tools only."""
        import time

        times: dict = {}
        for d in self.dispatches:
            one = Graph(self.device, [d])
            t0 = time.perf_counter()
            self.device.submit(one)
            await self.device.sync()
            times[d.kernel] = times.get(d.kernel, 0.0) + time.perf_counter() - t0
        return dict(sorted(times.items(), key=lambda kv: -kv[1]))


class Readback:
    """A staging buffer that results are copied into and mapped from; made once, reused every run."""

    def __init__(self, device: "Device", nbytes: int, label: str = "readback"):
        self.nbytes = (int(nbytes) + 3) & ~3
        self.buffer = device.create_buffer(self.nbytes, api.BufferUsage.MAP_READ | api.BufferUsage.COPY_DST, label)
        self.source = None  # (buffer, offset, size) copied on each run

    async def read(self, device: "Device", size: int | None = None) -> memoryview:
        size = self.nbytes if size is None else (size + 3) & ~3
        with _translate_errors("reading back results", device):
            await _backend.map_read(self.buffer, 0, size, spin=device.spin_wait)
            try:
                data = self.buffer.read_mapped(0, size)
            finally:
                self.buffer.unmap()
        device.check()
        return data


class Device:
    """One WebGPU device with the adapter's real limits and features. Create with `await Device.open()`."""

    def __init__(self, adapter, device, features: set, limits: dict, disabled: frozenset):
        self.adapter = adapter
        self.raw = device
        self.queue = device.queue
        self.limits = limits
        self.features = features
        self.has_f16 = "shader-f16" in features and "shader-f16" not in disabled
        self.has_subgroups = bool(features & set(_SUBGROUP_NAMES)) and "subgroups" not in disabled
        self._kernels: dict = {}
        self._compiling: dict = {}  # key -> the future of a compilation in progress
        self._bind_groups: dict = {}
        self._dir = shader_dir()
        self._sources: dict = {}
        self.allocated_bytes = 0  # bytes of the live buffers made by create_buffer (see "Memory" above)
        self.peak_bytes = 0
        self._live: dict = {}  # id(buffer) -> (weak reference, bytes), until destroyed or collected

    # -- opening -----------------------------------------------------------------------------------------
    @classmethod
    async def open(cls, power_preference: str = "high-performance", disable_features=()) -> "Device":
        """Request an adapter and a device with the adapter's limits and the features we use.
        `disable_features` (e.g. {"subgroups", "shader-f16"}) forces the fallback kernels, for tests."""
        try:
            adapter = await _backend.request_adapter(power_preference)
        except Exception as e:  # wgpu-py raises when no Vulkan/Metal/DX12 driver is found
            raise NoAdapterError(f"no WebGPU adapter: {e}") from e
        if adapter is None:
            raise NoAdapterError("no WebGPU adapter (WebGPU disabled or unsupported on this system)")
        have = set(adapter.features)
        disabled = frozenset(disable_features)
        want = [f for f in ("shader-f16", *_SUBGROUP_NAMES) if f in have and f not in disabled]
        if "subgroups" in disabled:
            want = [f for f in want if f not in _SUBGROUP_NAMES]
        alimits = adapter.limits
        limits = {k: int(alimits[k]) for k in _LIMITS if k in alimits}
        try:
            dev = await _backend.request_device(adapter, want, limits)
        except Exception as e:
            raise NoAdapterError(f"the adapter refused a device with features {want}: {e}") from e
        return cls(adapter, dev, set(want), limits, disabled)

    @property
    def software(self) -> str | None:
        """The software renderer's name when this GPU is emulated on the CPU (see software_gpu), else None."""
        return software_gpu(dict(self.adapter.info))

    @property
    def spin_wait(self) -> bool:
        """Whether readbacks wait by polling in a loop (_backend.map_read): on a hardware GPU, where the wait
        is a decode step's latency; not on a software one, whose rasteriser threads need the CPU."""
        spin = getattr(self, "_spin_wait", None)
        if spin is None:
            spin = self._spin_wait = self.software is None
        return spin

    @property
    def info(self) -> dict:
        info = self.adapter.info
        return {k: str(info.get(k, "")) for k in ("vendor", "architecture", "device", "description")}

    def check(self) -> None:
        """Raise the error the device reported asynchronously, if any (browser only; see _backend)."""
        err = _backend.device_error(self.raw)
        if err is not None:
            kind, message = err
            raise (DeviceLostError if kind == "lost" else GPUError)(message)

    # -- buffers -------------------------------------------------------------------------------------------
    def create_buffer(self, nbytes: int, usage=STORAGE, label: str = ""):
        nbytes = max(4, (int(nbytes) + 3) & ~3)
        limit = self.limits["max-buffer-size"]
        if nbytes > limit:
            raise DeviceLimitError(f"buffer {label!r} needs {nbytes:,} bytes; this device allows {limit:,} per buffer")
        if usage & api.BufferUsage.STORAGE:
            blimit = self.limits["max-storage-buffer-binding-size"]
            if nbytes > blimit:
                raise DeviceLimitError(
                    f"buffer {label!r} needs {nbytes:,} bytes; this device binds at most {blimit:,} "
                    "(split it with Device.upload_rows)"
                )
        with _translate_errors(f"creating buffer {label!r}"):
            buf = self.raw.create_buffer(size=nbytes, usage=usage, label=label)
        self._count(buf, nbytes)
        return buf

    # -- memory accounting -----------------------------------------------------------------------------------
    def _count(self, buf, nbytes: int) -> None:
        """Count `buf` until it is destroyed or collected, whichever comes first. Its `destroy` is wrapped on
        the instance (the backends' buffer classes are not ours to subclass), holding the buffer weakly, so that
        the wrapper keeps nothing alive."""
        key = id(buf)
        self._live[key] = (weakref.ref(buf, lambda _, key=key: self._uncount(key)), nbytes)
        self.allocated_bytes += nbytes
        self.peak_bytes = max(self.peak_bytes, self.allocated_bytes)
        ref, destroy = weakref.ref(buf), type(buf).destroy

        def destroy_and_uncount():
            b = ref()
            if b is not None:
                self._uncount(id(b))
                destroy(b)

        buf.destroy = destroy_and_uncount

    def _uncount(self, key: int) -> None:
        entry = self._live.pop(key, None)  # a buffer destroyed, then collected, is uncounted once
        if entry is not None:
            self.allocated_bytes -= entry[1]

    def reset_peak(self) -> int:
        """Start a new peak measurement from what is allocated now; returns the peak that ended."""
        peak, self.peak_bytes = self.peak_bytes, self.allocated_bytes
        return peak

    @property
    def live_buffers(self) -> int:
        return len(self._live)

    def memory(self) -> dict:
        """The GPU memory this device's buffers hold: {"allocated_bytes", "peak_bytes", "buffers"}."""
        return {"allocated_bytes": self.allocated_bytes, "peak_bytes": self.peak_bytes, "buffers": len(self._live)}

    def tensor(self, shape, dtype="float32", label: str = "", usage=STORAGE) -> Tensor:
        """An uninitialised GPU array (contents are zero, as WebGPU guarantees)."""
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        return Tensor(tuple(shape), np.dtype(dtype).name, [(self.create_buffer(nbytes, usage, label), 0, shape[0] if shape else 1)], label)

    def upload(self, array, label: str = "", usage=STORAGE) -> Tensor:
        """Copy a numpy array to a new GPU buffer (one copy: host memory -> GPU)."""
        array = np.ascontiguousarray(array)
        t = self.tensor(array.shape, array.dtype, label, usage)
        self.write(t.buffer, array)
        return t

    def row_parts(self, n_rows: int, row_bytes: int, label: str = "", align_rows: int = 1) -> list:
        """(first row, rows) of each part a row-major matrix is split into so that every part fits the device's
        binding limit. Part boundaries fall on multiples of `align_rows` (the rows of one expert of a
        mixture-of-experts weight, so that no expert straddles two parts) and on 4-byte multiples (every part
        starts word-aligned)."""
        if align_rows < 1:
            raise ValueError(f"{label}: align_rows must be at least 1, not {align_rows}")
        limit = self.limits["max-storage-buffer-binding-size"]
        if row_bytes * align_rows > limit:
            what = "one row" if align_rows == 1 else f"a group of {align_rows} rows"
            raise DeviceLimitError(f"{label}: {what} is {row_bytes * align_rows:,} bytes, over the binding limit "
                                   f"{limit:,}")
        rows_per_part = limit // (row_bytes * align_rows) * align_rows
        while rows_per_part > align_rows and (rows_per_part * row_bytes) % 4:
            rows_per_part -= align_rows
        return [(first, min(rows_per_part, n_rows - first)) for first in range(0, n_rows, rows_per_part)]

    def upload_rows(self, data, n_rows: int, row_bytes: int, shape, dtype: str, label: str = "",
                    align_rows: int = 1) -> Tensor:
        """Upload a row-major matrix given as raw bytes (e.g. a GGUF tensor, still quantised), split by rows
        into parts that each fit the device's binding limit (see row_parts)."""
        mv = memoryview(data).cast("B")
        if mv.nbytes != n_rows * row_bytes:
            raise ValueError(f"{label}: {mv.nbytes} bytes, expected {n_rows} rows x {row_bytes} bytes")
        parts = []
        for first, n in self.row_parts(n_rows, row_bytes, label, align_rows):
            buf = self.create_buffer(n * row_bytes, STORAGE, f"{label}[{first}:{first + n}]")
            self.write(buf, mv[first * row_bytes : (first + n) * row_bytes])
            parts.append((buf, first, n))
        return Tensor(tuple(shape), dtype, parts, label)

    async def upload_rows_from(self, read, n_rows: int, row_bytes: int, shape, dtype: str, label: str = "",
                               progress=None) -> Tensor:
        """upload_rows for a matrix read piece by piece, so that it never sits in host memory whole (Gemma 4's
        4.7 GB per-layer-embedding table does not fit a page's 4 GB heap): `await read(first, n)` returns the
        raw bytes of rows first .. first + n - 1, at most about WRITE_CHUNK bytes at a time (a multiple of 4
        rows). `progress(done_bytes, total_bytes)` after each piece."""
        step = max(4, self.WRITE_CHUNK // row_bytes // 4 * 4)
        parts = []
        for first, n in self.row_parts(n_rows, row_bytes, label):
            buf = self.create_buffer(n * row_bytes, STORAGE, f"{label}[{first}:{first + n}]")
            parts.append((buf, first, n))
            for row in range(first, first + n, step):
                k = min(step, first + n - row)
                data = await read(row, k)
                if memoryview(data).nbytes != k * row_bytes:
                    raise ValueError(f"{label}: rows {row}..{row + k - 1} came as {memoryview(data).nbytes} bytes, "
                                     f"expected {k * row_bytes}")
                self.write(buf, data, (row - first) * row_bytes)
                del data
                if progress is not None:
                    progress((row + k) * row_bytes, n_rows * row_bytes)
        return Tensor(tuple(shape), dtype, parts, label)

    # Writes larger than this go in pieces, so the browser never stages one huge copy at once.
    WRITE_CHUNK = 64 << 20

    def write(self, buffer, data, offset: int = 0) -> None:
        """Write bytes (numpy array, bytes, memoryview) into a buffer without an intermediate copy."""
        mv = memoryview(data).cast("B") if not isinstance(data, np.ndarray) else memoryview(np.ascontiguousarray(data)).cast("B")
        n = mv.nbytes
        if offset + n > buffer.size:
            raise GPUError(f"write of {n} bytes at {offset} overflows buffer of {buffer.size} bytes")
        if n % 4:  # WebGPU writes whole words
            padded = bytearray(n + (4 - n % 4))
            padded[:n] = mv
            mv, n = memoryview(padded), len(padded)
        with _translate_errors("writing a buffer"):
            for start in range(0, n, self.WRITE_CHUNK):
                self.queue.write_buffer(buffer, offset + start, mv[start : start + self.WRITE_CHUNK])

    async def read(self, tensor_or_buffer, dtype=None, shape=None) -> np.ndarray:
        """Read a whole buffer back (tests and debugging; the decode loop uses a Readback instead)."""
        if isinstance(tensor_or_buffer, Tensor):
            t = tensor_or_buffer
            chunks = []
            for buf, _, _ in t.parts:
                chunks.append(await self._read_buffer(buf))
            raw = b"".join(chunks)
            dtype = dtype or (t.dtype if t.dtype in np.sctypeDict else "u1")
            shape = shape or (t.shape if dtype == t.dtype else None)
        else:
            raw = await self._read_buffer(tensor_or_buffer)
            dtype = dtype or "u1"
        arr = np.frombuffer(raw, dtype=dtype)
        if shape is not None:
            arr = arr[: int(np.prod(shape))].reshape(shape)
        return arr

    async def _read_buffer(self, buf) -> bytes:
        rb = Readback(self, buf.size)
        try:
            self.submit(Graph(self), rb, (buf, 0, buf.size))
            return bytes(await rb.read(self, buf.size))
        finally:
            rb.buffer.destroy()

    # -- kernels -------------------------------------------------------------------------------------------
    def _file(self, name: str) -> tuple[str, list[str]]:
        """Source of shaders/<name>.wgsl, or of its feature variant, and the enable directives it needs."""
        for suffix, ok, enable in ((".subgroups", self.has_subgroups, "subgroups"), (".f16", self.has_f16, "f16")):
            p = self._dir / f"{name}{suffix}.wgsl"
            if ok and p.exists():
                return self._read(p), [enable] + (["f16"] if self.has_f16 and enable != "f16" else [])
        p = self._dir / f"{name}.wgsl"
        if not p.exists():
            raise ShaderError(f"no kernel source shaders/{name}.wgsl")
        return self._read(p), []

    def _read(self, p: Path) -> str:
        if p not in self._sources:
            self._sources[p] = p.read_text()
        return self._sources[p]

    def kernel_source(self, name: str, libs=(), entry: str = "main", **consts) -> str:
        enables: list[str] = []
        body = []
        for lib in ("common", *libs, name):
            src, en = self._file(lib)
            enables += [e for e in en if e not in enables]
            body.append(f"// ---- {lib}.wgsl\n{src}")
        # naga (wgpu-py 0.32) rejects `enable subgroups;` as not yet implemented, yet accepts the subgroup
        # builtins when the device has the feature; browsers require the directive.
        head = [f"enable {e};" for e in enables if e != "subgroups" or _backend.IN_BROWSER]
        head += [_wgsl_const(k, v) for k, v in sorted(consts.items())]
        return "\n".join(head) + "\n" + "\n".join(body)

    async def kernel(self, name: str, libs=(), entry: str = "main", **consts) -> Kernel:
        """The compiled pipeline of shaders/<name>.wgsl specialised with `consts` (cached). Graphs recorded
        concurrently that ask for the same kernel share one compilation."""
        key = (name, tuple(libs), entry, tuple(sorted((k, repr(v)) for k, v in consts.items())))
        k = self._kernels.get(key)
        if k is not None:
            return k
        pending = self._compiling.get(key)
        if pending is None:
            pending = self._compiling[key] = asyncio.ensure_future(self._compile(key, name, libs, entry, consts))
        try:
            return await asyncio.shield(pending)
        finally:
            if pending.done():
                self._compiling.pop(key, None)

    async def _compile(self, key, name: str, libs, entry: str, consts: dict) -> Kernel:
        source = self.kernel_source(name, libs, entry, **consts)
        try:
            pipeline = await _backend.create_pipeline(self.raw, source, name, entry)
        except Exception as e:
            raise ShaderError(f"kernel {name} ({', '.join(f'{a}={b}' for a, b in sorted(consts.items()))}) failed to compile: {e}") from e
        self.check()
        k = Kernel(name, pipeline, pipeline.get_bind_group_layout(0), source)
        self._kernels[key] = k
        return k

    def bind_group(self, kernel: Kernel, bindings):
        """A bind group of `bindings` in order (cached by kernel and buffers); None leaves that binding number
        out (one the entry point does not use, between ones it does)."""
        entries, key, bufs = [], [id(kernel)], []
        for i, b in enumerate(bindings):
            if b is None:
                key.append(None)
                continue
            if isinstance(b, Tensor):
                b = b.buffer
            if isinstance(b, tuple):  # (buffer, offset, size): a window into a larger buffer
                buf, off, size = b
                entries.append({"binding": i, "resource": {"buffer": buf, "offset": off, "size": size}})
                key.append((id(buf), off, size))
                bufs.append(buf)
            else:
                entries.append({"binding": i, "resource": {"buffer": b, "offset": 0, "size": b.size}})
                key.append(id(b))
                bufs.append(b)
        key = tuple(key)
        # Keyed by id(), which Python reuses once a buffer is freed (a model unloaded, a test's temporaries):
        # an entry counts only while its own buffers are alive, and goes when one of them is freed, so a new
        # buffer at an old address never gets a bind group of the old one (nor keeps its memory alive).
        hit = self._bind_groups.get(key)
        if hit is not None and all(r() is b for r, b in zip(hit[1], bufs)):
            return hit[0]
        bg = self.raw.create_bind_group(layout=kernel.layout, entries=entries)
        cache = self._bind_groups

        def forget(dead, key=key):
            entry = cache.get(key)
            if entry is not None and any(r is dead for r in entry[1]):
                del cache[key]

        cache[key] = (bg, [weakref.ref(b, forget) for b in bufs])
        return bg

    def graph(self) -> Graph:
        return Graph(self)

    def encode(self, graph, readback: Readback | None = None, source=None):
        """A finished command buffer: `graph` (a Graph or a list of them, in order) and, when `readback` is
        given, a copy of `source` (buffer, offset, size) into it. Encoding ahead (while the GPU runs the
        previous step) and submitting later is how the decode loop hides the host's encoding time."""
        with _translate_errors("encoding work"):
            enc = self.raw.create_command_encoder()
            for gr in graph if isinstance(graph, (list, tuple)) else (graph,):
                gr.encode(enc)
            if readback is not None:
                buf, off, size = source
                enc.copy_buffer_to_buffer(buf, off, readback.buffer, 0, (size + 3) & ~3)
            return enc.finish()

    def submit(self, graph, readback: Readback | None = None, source=None) -> None:
        """Encode (see `encode`) and submit, one command buffer."""
        self.submit_encoded(self.encode(graph, readback, source))

    def copy(self, copies) -> None:
        """Submit buffer-to-buffer copies [(src, src_offset, dst, dst_offset, nbytes), ...] in one command
        buffer. Queue order puts them after the work submitted before and before the work submitted after,
        so a graph submitted next sees the copied bytes (how soft tokens reach a prompt's embedding rows)."""
        if not copies:
            return
        with _translate_errors("copying buffers", self):
            enc = self.raw.create_command_encoder()
            for src, src_off, dst, dst_off, size in copies:
                if size % 4 or src_off % 4 or dst_off % 4:
                    raise GPUError(f"buffer copies move whole words: offsets {src_off}, {dst_off}, size {size}")
                enc.copy_buffer_to_buffer(src, src_off, dst, dst_off, size)
            self.queue.submit([enc.finish()])

    def clear(self, tensor_or_buffer) -> None:
        """Zero a whole tensor (every part) or buffer on the GPU, queued after the work submitted before."""
        bufs = [p[0] for p in tensor_or_buffer.parts] if isinstance(tensor_or_buffer, Tensor) else [tensor_or_buffer]
        with _translate_errors("clearing a buffer", self):
            enc = self.raw.create_command_encoder()
            for buf in bufs:
                enc.clear_buffer(buf, 0, buf.size)
            self.queue.submit([enc.finish()])

    def submit_encoded(self, command_buffer) -> None:
        with _translate_errors("submitting work"):
            self.queue.submit([command_buffer])

    async def run(self, graph, readback: Readback | None = None, source=None) -> memoryview | None:
        """Submit `graph`; with a readback, wait for the GPU and return the copied bytes."""
        self.submit(graph, readback, source)
        if readback is None:
            self.check()
            return None
        return await readback.read(self, source[2])

    async def sync(self) -> None:
        """Wait until the GPU has finished all submitted work (and surface any error it reported). The wait
        is a readback of a copy submitted after that work: mapping a buffer no submission uses would return
        at once on wgpu-native."""
        if getattr(self, "_sync_src", None) is None:
            self._sync_src = self.create_buffer(4, STORAGE, "sync")
            self._sync_rb = Readback(self, 4, "sync")
        self.submit(Graph(self), self._sync_rb, (self._sync_src, 0, 4))
        await self._sync_rb.read(self, 4)

    def destroy(self) -> None:
        self._kernels.clear()
        self._bind_groups.clear()
        self.raw.destroy()


_DEFAULT: Device | None = None


async def default_device() -> Device:
    """A process-wide device (opened on first use). `RULLAMA_DISABLE_FEATURES=subgroups,shader-f16` forces
    the fallback kernels."""
    global _DEFAULT
    if _DEFAULT is None:
        off = [f for f in os.environ.get("RULLAMA_DISABLE_FEATURES", "").split(",") if f]
        _DEFAULT = await Device.open(disable_features=off)
    return _DEFAULT


_FALLBACK: Device | None = None


async def fallback_device() -> Device:
    """A second process-wide device with shader-f16 and subgroups turned off: tests run kernels on it to
    check the fallback variants that devices without those features get."""
    global _FALLBACK
    if _FALLBACK is None:
        _FALLBACK = await Device.open(disable_features=("subgroups", "shader-f16"))
    return _FALLBACK
