"""The one place where the native and the browser GPU paths differ.

Natively the GPU API is wgpu-py. Inside Pyodide it is `webgpu_js`, the project's bridge that implements the
subset of wgpu-py's API that rullama-py uses over the browser's `navigator.gpu`. Everything else in the
package is written once against `api` and the three awaitable helpers below.
"""

from __future__ import annotations

import os
import sys

IN_BROWSER = sys.platform == "emscripten"


def _usable_runtime_dir(path: str) -> bool:
    return bool(path) and os.path.isabs(path) and os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK)


def ensure_runtime_dir() -> str | None:
    """Give the process a valid XDG_RUNTIME_DIR when it has none (a login over ssh, a container, cron).

    The Vulkan drivers' window-system code asks libwayland for a display even for compute-only use, and
    libwayland prints "error: XDG_RUNTIME_DIR is invalid or not set in the environment." (once per driver)
    when the variable is unset or not an absolute path; users read that as our failure. With a valid
    directory the display lookup just finds no socket, silently. The directory is private to the user: a
    per-user folder under the temp dir, created 0700 and used only when it is ours and closed to others
    (else a fresh mkdtemp one). Returns the directory set, or None when the environment was already fine.
    Must run before the Vulkan loader is first touched; this module's import does it."""
    if _usable_runtime_dir(os.environ.get("XDG_RUNTIME_DIR", "")):
        return None
    import stat
    import tempfile

    path = os.path.join(tempfile.gettempdir(), f"rullama-runtime-{os.getuid()}")
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError:
        path = None
    if path is not None:
        try:
            st = os.lstat(path)  # not a symlink someone else planted, ours, and closed to others
            ok = stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid()
            if ok and st.st_mode & 0o077:
                os.chmod(path, 0o700)
        except OSError:
            ok = False
        if not ok:
            path = None
    if path is None:
        path = tempfile.mkdtemp(prefix="rullama-runtime-")  # 0700, unique
    os.environ["XDG_RUNTIME_DIR"] = path
    return path


if IN_BROWSER:
    from . import webgpu_js as api
else:
    if os.name == "posix" and sys.platform != "darwin":  # Linux and the BSDs: Mesa's and others' Wayland code
        ensure_runtime_dir()
    import wgpu as api  # noqa: F401  (re-exported)


async def request_adapter(power_preference: str):
    if IN_BROWSER:
        return await api.gpu.request_adapter_async(power_preference=power_preference)
    # wgpu-py's sync call blocks for ~1 s natively; there is no event loop to keep responsive here.
    return api.gpu.request_adapter_sync(power_preference=power_preference)


async def request_device(adapter, required_features, required_limits):
    if IN_BROWSER:
        return await adapter.request_device_async(
            required_features=required_features, required_limits=required_limits
        )
    return adapter.request_device_sync(required_features=required_features, required_limits=required_limits)


async def create_pipeline(device, code: str, label: str, entry_point: str):
    """Compile WGSL into a compute pipeline; raises with the compiler's message. The browser reports shader
    errors asynchronously, so there we catch them in an error scope (and through the async pipeline
    creation's rejected promise) instead of letting them escape as uncaptured errors; wgpu-py raises them
    synchronously."""
    if IN_BROWSER:
        device.push_error_scope("validation")
        failure = None
        try:
            module = device.create_shader_module(code=code, label=label)
            pipeline = await device.create_compute_pipeline_async(
                layout="auto", compute={"module": module, "entry_point": entry_point}
            )
        except Exception as e:  # noqa: BLE001 - reported below, after the scope is closed
            failure = e
        scoped = await device.pop_error_scope_async()
        if scoped is not None:
            raise RuntimeError(scoped)
        if failure is not None:
            raise failure
        return pipeline
    module = device.create_shader_module(code=code, label=label)
    return device.create_compute_pipeline(layout="auto", compute={"module": module, "entry_point": entry_point})


async def map_read(buffer, offset: int, size: int) -> None:
    """Map a MAP_READ buffer. Natively we block in wgpu-native's own wait: wgpu-py's awaitable polls with a
    back-off of up to 10 ms, which would dominate a millisecond-sized decode step."""
    if IN_BROWSER:
        await buffer.map_async(api.MapMode.READ, offset, size)
    else:
        buffer.map_sync(api.MapMode.READ, offset, size)


def prepare_dispatches(dispatches):
    """A recorded graph's dispatches in the form `encode_prepared` replays quickly.

    Browser: one JS array, encoded by one call into JS (see webgpu_js). Native: the raw wgpu-native handles.
    wgpu-py wraps every C call in Python error capture, and for three calls per dispatch that is the largest
    cost of a decode step. Replaying an identical, already-validated command list through the bare C
    functions skips it; gpu.Graph always encodes a graph's first run through the checked API."""
    if IN_BROWSER:
        return api.prepare_dispatches(dispatches)
    return [(d.pipeline._internal, d.bind_group._internal, *d.workgroups) for d in dispatches]


def encode_prepared(encoder, prepared) -> None:
    if IN_BROWSER:
        encoder.encode_prepared(prepared)
        return
    from wgpu.backends.wgpu_native._ffi import ffi, lib

    cpass = encoder.begin_compute_pass()
    h = cpass._internal
    set_pipeline, set_group = lib.wgpuComputePassEncoderSetPipeline, lib.wgpuComputePassEncoderSetBindGroup
    dispatch, null = lib.wgpuComputePassEncoderDispatchWorkgroups, ffi.NULL
    for pipeline, group, x, y, z in prepared:
        set_pipeline(h, pipeline)
        set_group(h, 0, group, 0, null)
        dispatch(h, x, y, z)
    cpass.end()


def device_error(device):
    """An error the device reported asynchronously (lost device, uncaptured validation error), or None.
    wgpu-py raises those at the call that caused them, so natively there is nothing pending."""
    if IN_BROWSER:
        return device.pending_error()
    return None
