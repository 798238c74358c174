"""The one place where the native and the browser GPU paths differ.

Natively the GPU API is wgpu-py. Inside Pyodide it is `webgpu_js`, the project's bridge that implements the
subset of wgpu-py's API that rullama-py uses over the browser's `navigator.gpu`. Everything else in the
package is written once against `api` and the three awaitable helpers below.
"""

from __future__ import annotations

import sys

IN_BROWSER = sys.platform == "emscripten"

if IN_BROWSER:
    from . import webgpu_js as api
else:
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
