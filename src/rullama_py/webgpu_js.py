"""The subset of wgpu-py's API that rullama-py uses, implemented over the browser's `navigator.gpu` (Pyodide).

wgpu-py's own browser backend is a stub (0.32.0), so in Pyodide `rullama_py._backend` imports this module in
its place. Names, keyword arguments and dict keys follow wgpu-py (snake_case descriptors, kebab-case limit
names) so that gpu.py is written once. Only what gpu.py calls is here; anything else is deliberately absent.

Two browser specifics are handled here rather than in gpu.py:
- Errors: WebGPU reports validation errors and device loss asynchronously. We listen for both and keep the
  first one; gpu.Device.check() raises it at the next readback, so a failed dispatch never looks like a
  silent all-zero result.
- Host cost: every call into JS from Pyodide costs microseconds. A recorded graph is therefore handed to
  JS once (`prepare_dispatches`) and then encoded by one JS call per run.
"""

from __future__ import annotations

import js  # type: ignore[import-not-found]  (Pyodide only)
from pyodide.ffi import create_proxy, to_js  # type: ignore[import-not-found]

try:  # Pyodide >= 0.26 exposes JS null as jsnull; older ones map it to None
    from pyodide.ffi import jsnull  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover
    jsnull = None


def _is_null(x) -> bool:
    return x is None or x is jsnull or (hasattr(js, "undefined") and x is js.undefined)


class _Flags:
    def __init__(self, js_obj, names):
        for n in names:
            setattr(self, n, int(getattr(js_obj, n)))


BufferUsage = _Flags(js.GPUBufferUsage, "MAP_READ MAP_WRITE COPY_SRC COPY_DST INDEX VERTEX UNIFORM STORAGE INDIRECT QUERY_RESOLVE".split())
MapMode = _Flags(js.GPUMapMode, ["READ", "WRITE"])


def _camel(name: str) -> str:
    head, *rest = name.replace("-", "_").split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def _kebab(name: str) -> str:
    return "".join("-" + c.lower() if c.isupper() else c for c in name)


def _js(value):
    """wgpu-py style descriptor -> JS object: snake_case keys to camelCase, wrappers to their JS objects."""
    if isinstance(value, _Wrapper):
        return value.js
    if isinstance(value, dict):
        obj = js.Object.new()
        for k, v in value.items():
            if v is not None:
                setattr(obj, _camel(k), _js(v))
        return obj
    if isinstance(value, (list, tuple)):
        return to_js([_js(v) for v in value])
    return value


class _Wrapper:
    __slots__ = ("js", "__weakref__")  # gpu.Device's bind-group cache holds weak references to buffers

    def __init__(self, js_obj):
        self.js = js_obj


# One JS function encodes a whole prepared dispatch list: [pipeline, bindGroup, x, y, z] * n, flattened.
_encode_js = js.Function.new(
    "encoder",
    "list",
    "const p = encoder.beginComputePass();"
    "for (let i = 0; i < list.length; i += 5) {"
    "  p.setPipeline(list[i]); p.setBindGroup(0, list[i + 1]);"
    "  p.dispatchWorkgroups(list[i + 2], list[i + 3], list[i + 4]);"
    "}"
    "p.end();",
)


def prepare_dispatches(dispatches):
    """A JS array describing `dispatches` (gpu.Dispatch), encoded later by one call to JS."""
    flat = []
    for d in dispatches:
        flat += [d.pipeline.js, d.bind_group.js, *d.workgroups]
    return to_js(flat)


class GPU:
    async def request_adapter_async(self, power_preference: str = "high-performance"):
        if _is_null(getattr(js.navigator, "gpu", None)):
            raise RuntimeError("this browser has no WebGPU (navigator.gpu is missing)")
        a = await js.navigator.gpu.requestAdapter(_js({"power_preference": power_preference}))
        return None if _is_null(a) else GPUAdapter(a)


gpu = GPU()


class GPUAdapter(_Wrapper):
    @property
    def features(self) -> set:
        return {str(f) for f in js.Array.from_(self.js.features)}

    @property
    def limits(self) -> dict:
        lim = self.js.limits
        names = [str(k) for k in js.Object.keys(js.Object.getPrototypeOf(lim))] or [str(k) for k in js.Object.keys(lim)]
        out = {}
        for n in names:
            v = getattr(lim, n, None)
            if isinstance(v, (int, float)):
                out[_kebab(n)] = int(v)
        return out

    @property
    def info(self) -> dict:
        i = self.js.info
        return {k: str(getattr(i, k, "") or "") for k in ("vendor", "architecture", "device", "description")}

    async def request_device_async(self, required_features=(), required_limits=None):
        desc = js.Object.new()
        desc.requiredFeatures = to_js(list(required_features))
        lim = js.Object.new()
        for k, v in (required_limits or {}).items():
            setattr(lim, _camel(k), v)
        desc.requiredLimits = lim
        d = await self.js.requestDevice(desc)
        return GPUDevice(d)


class GPUDevice(_Wrapper):
    __slots__ = ("queue", "_error", "_proxies")  # (and _Wrapper's)

    def __init__(self, js_obj):
        super().__init__(js_obj)
        self.queue = GPUQueue(js_obj.queue)
        self._error = None

        def on_error(event):
            if self._error is None:
                self._error = ("validation", f"WebGPU error: {event.error.message}")

        def on_lost(info):
            if self._error is None or self._error[0] != "lost":
                self._error = ("lost", f"GPU device lost ({info.reason}): {info.message}")

        self._proxies = [create_proxy(on_error), create_proxy(on_lost)]
        js_obj.addEventListener("uncapturederror", self._proxies[0])
        js_obj.lost.then(self._proxies[1])

    def pending_error(self):
        err, self._error = self._error, (self._error if self._error and self._error[0] == "lost" else None)
        return err

    def create_buffer(self, *, size, usage, label="", mapped_at_creation=False):
        return GPUBuffer(self.js.createBuffer(_js({"size": size, "usage": usage, "label": label, "mapped_at_creation": mapped_at_creation})))

    def create_shader_module(self, *, code, label=""):
        return _Wrapper(self.js.createShaderModule(_js({"code": code, "label": label})))

    async def create_compute_pipeline_async(self, *, layout, compute):
        desc = _js({"layout": layout, "compute": compute})
        try:
            p = await self.js.createComputePipelineAsync(desc)
        except Exception as e:  # GPUPipelineError: the WGSL compile log is in its message
            raise RuntimeError(str(e)) from None
        return GPUComputePipeline(p)

    def push_error_scope(self, kind):
        self.js.pushErrorScope(kind)

    async def pop_error_scope_async(self):
        """The scope's error message, or None."""
        err = await self.js.popErrorScope()
        return None if _is_null(err) else str(err.message)

    def create_bind_group(self, *, layout, entries, label=""):
        return _Wrapper(self.js.createBindGroup(_js({"layout": layout, "entries": entries, "label": label})))

    def create_command_encoder(self, label=""):
        return GPUCommandEncoder(self.js.createCommandEncoder())

    def destroy(self):
        self.js.destroy()


class GPUComputePipeline(_Wrapper):
    def get_bind_group_layout(self, index):
        return _Wrapper(self.js.getBindGroupLayout(index))


class GPUCommandEncoder(_Wrapper):
    def begin_compute_pass(self):
        return GPUComputePassEncoder(self.js.beginComputePass())

    def encode_prepared(self, prepared):
        _encode_js(self.js, prepared)

    def copy_buffer_to_buffer(self, source, source_offset, destination, destination_offset, size):
        self.js.copyBufferToBuffer(source.js, source_offset, destination.js, destination_offset, size)

    def clear_buffer(self, buffer, offset=0, size=None):
        if size is None:
            self.js.clearBuffer(buffer.js, offset)
        else:
            self.js.clearBuffer(buffer.js, offset, size)

    def finish(self):
        return _Wrapper(self.js.finish())


class GPUComputePassEncoder(_Wrapper):
    def set_pipeline(self, pipeline):
        self.js.setPipeline(pipeline.js)

    def set_bind_group(self, index, bind_group):
        self.js.setBindGroup(index, bind_group.js)

    def dispatch_workgroups(self, x, y=1, z=1):
        self.js.dispatchWorkgroups(x, y, z)

    def end(self):
        self.js.end()


_SMALL_WRITE = 64 << 10  # bytes; larger writes (weights) go through a zero-copy view


class GPUQueue(_Wrapper):
    def submit(self, command_buffers):
        self.js.submit(to_js([c.js for c in command_buffers]))

    def write_buffer(self, buffer, buffer_offset, data, data_offset=0, size=None):
        mv = memoryview(data).cast("B")
        if data_offset or size is not None:
            mv = mv[data_offset : None if size is None else data_offset + size]
        if mv.nbytes <= _SMALL_WRITE:
            # Per-step inputs (the Step uniform, a PLE row): one call with a copy. Measured in Pyodide 0.27.7
            # on Node: 9 us for 32 bytes and 40 us for 36 KB, against about 130 us for the view path below.
            self.js.writeBuffer(buffer.js, buffer_offset, to_js(mv))
            return
        # Zero-copy: a Uint8Array view of the wasm heap, handed to writeBuffer (which copies it to the GPU)
        # and released before anything can grow the heap and detach it.
        proxy = create_proxy(mv)
        view = proxy.getBuffer("u8")
        try:
            self.js.writeBuffer(buffer.js, buffer_offset, view.data)
        finally:
            view.release()
            proxy.destroy()


class GPUBuffer(_Wrapper):
    @property
    def size(self) -> int:
        return int(self.js.size)

    async def map_async(self, mode, offset=0, size=None):
        await (self.js.mapAsync(mode, offset) if size is None else self.js.mapAsync(mode, offset, size))

    def read_mapped(self, buffer_offset=0, size=None):
        r = self.js.getMappedRange(buffer_offset) if size is None else self.js.getMappedRange(buffer_offset, size)
        return js.Uint8Array.new(r).to_memoryview()  # one copy, JS -> wasm heap

    def unmap(self):
        self.js.unmap()

    def destroy(self):
        self.js.destroy()
