"""The GPU runtime itself: uploads, readback, row splitting, specialisation, and that every failure surfaces
as a named Python exception (natively and in Pyodide)."""

import numpy as np
import pytest

from rullama_py import _backend, gpu, ops

pytestmark = pytest.mark.pyodide


async def test_upload_read_roundtrip(device):
    for dtype in (np.float32, np.uint32, np.int8, np.float16):
        a = (np.arange(1001) % 97).astype(dtype)
        t = device.upload(a)
        np.testing.assert_array_equal(await device.read(t), a)


async def test_limits_and_features_exposed(device):
    lim = device.limits
    assert lim["max-storage-buffer-binding-size"] >= 128 << 20  # WebGPU's guaranteed minimum
    assert lim["max-buffer-size"] >= lim["max-storage-buffer-binding-size"] or lim["max-buffer-size"] >= 256 << 20
    assert isinstance(device.has_f16, bool) and isinstance(device.has_subgroups, bool)


async def test_upload_rows_splits_over_binding_limit(device):
    rows, row_bytes = 50, 36
    data = np.random.default_rng(0).integers(0, 255, rows * row_bytes, dtype=np.uint8)
    saved = device.limits["max-storage-buffer-binding-size"]
    device.limits["max-storage-buffer-binding-size"] = 400  # pretend a tiny device: about 11 rows per part
    try:
        t = device.upload_rows(data, rows, row_bytes, (rows, row_bytes), "u8", "w")
    finally:
        device.limits["max-storage-buffer-binding-size"] = saved
    assert len(t.parts) > 1
    assert [p[1] for p in t.parts] == sorted(p[1] for p in t.parts)
    assert sum(p[2] for p in t.parts) == rows
    assert all((p[2] * row_bytes) % 4 == 0 or p is t.parts[-1] for p in t.parts)
    np.testing.assert_array_equal(await device.read(t), data)


async def test_upload_rows_from_reads_piece_by_piece(device):
    """A matrix streamed from a reader: the same parts and bytes as upload_rows, read in pieces of at most
    WRITE_CHUNK bytes (whole multiples of 4 rows) that never cross a part, with progress after each."""
    rows, row_bytes = 50, 36
    data = np.random.default_rng(1).integers(0, 255, rows * row_bytes, dtype=np.uint8)
    reads, seen = [], []

    async def read(first, n):
        reads.append((first, n))
        return data[first * row_bytes: (first + n) * row_bytes].tobytes()

    saved = device.limits["max-storage-buffer-binding-size"]
    device.limits["max-storage-buffer-binding-size"] = 400  # 11 rows a part, 5 parts
    device.WRITE_CHUNK = 4 * row_bytes + 10  # pieces of 4 rows
    try:
        t = await device.upload_rows_from(read, rows, row_bytes, (rows, row_bytes), "u8", "w",
                                          progress=lambda done, total: seen.append((done, total)))
        want_parts = device.row_parts(rows, row_bytes, "w")
    finally:
        device.limits["max-storage-buffer-binding-size"] = saved
        del device.WRITE_CHUNK
    assert [(first, n) for _, first, n in t.parts] == want_parts and len(want_parts) == 5
    assert all(n <= 4 for _, n in reads) and sum(n for _, n in reads) == rows
    for first, n in reads:  # no piece crosses a part boundary
        assert any(p0 <= first and first + n <= p0 + pn for p0, pn in want_parts)
    assert seen[-1] == (rows * row_bytes, rows * row_bytes) and len(seen) == len(reads)
    np.testing.assert_array_equal(await device.read(t), data)

    async def short_read(first, n):
        return b"\0" * (n * row_bytes - 1)

    with pytest.raises(ValueError, match="rows 0..*came as"):
        await device.upload_rows_from(short_read, rows, row_bytes, (rows, row_bytes), "u8", "w")


async def test_buffer_over_device_limit_is_named(device):
    too_big = device.limits["max-buffer-size"] + 4
    with pytest.raises(gpu.DeviceLimitError, match="weights.*allows"):
        device.create_buffer(too_big, label="weights")
    over_binding = device.limits["max-storage-buffer-binding-size"] + 4
    if over_binding <= device.limits["max-buffer-size"]:
        with pytest.raises(gpu.DeviceLimitError, match="binds at most"):
            device.create_buffer(over_binding, label="big")


async def test_shader_compile_error_is_named(device):
    src_dir = device._dir
    bad = src_dir / "_test_broken.wgsl"
    bad.write_text("@compute @workgroup_size(1) fn main() { let x: u32 = this_is_not_defined; }\n")
    try:
        with pytest.raises(gpu.ShaderError, match="_test_broken"):
            await device.kernel("_test_broken")
    finally:
        bad.unlink()
    with pytest.raises(gpu.ShaderError, match="no kernel source"):
        await device.kernel("no_such_kernel")


async def test_specialisation_constants_are_typed(device):
    src = device.kernel_source("rms_norm", N=640, EPS=1e-6, HAS_WEIGHT=True)
    assert "const N: u32 = 640u;" in src and "const EPS: f32 = 1e-06;" in src and "const HAS_WEIGHT: bool = true;" in src
    assert src.index("struct Step") < src.index("fn main")  # common.wgsl comes first
    with pytest.raises(ValueError):
        device.kernel_source("rms_norm", N=-1)
    with pytest.raises(TypeError):
        device.kernel_source("rms_norm", N="640")


async def test_kernel_cache_reuses_pipelines(device):
    x = device.upload(np.ones((2, 48), np.float32))
    y = device.tensor((2, 48))
    await ops.rms_norm(device.graph(), x, None, y, n=48, eps=1e-6)
    n = len(device._kernels)
    await ops.rms_norm(device.graph(), x, None, y, n=48, eps=1e-6)
    assert len(device._kernels) == n  # same specialisation: cached
    await ops.rms_norm(device.graph(), x, None, y, n=96, eps=1e-6)
    assert len(device._kernels) == n + 1


async def test_graph_rerun_reuses_bind_groups(device):
    x = device.upload(np.ones((2, 64), np.float32))
    w = device.upload(np.full(64, 2.0, np.float32))
    y = device.tensor((2, 64))
    g = device.graph()
    await ops.rms_norm(g, x, w, y, n=64, eps=1e-6)
    before = len(device._bind_groups)
    g2 = device.graph()
    await ops.rms_norm(g2, x, w, y, n=64, eps=1e-6)
    assert len(device._bind_groups) == before  # same kernel + buffers: same bind group
    for _ in range(3):
        await device.run(g)
    np.testing.assert_allclose(await device.read(y), np.full((2, 64), 2.0), rtol=1e-5)


async def test_bind_groups_go_with_their_buffers(device):
    """Bind groups are cached by buffer id(); Python reuses an id once its buffer is freed, so an entry must
    leave with its buffers (or a new buffer at the old address would run with the old buffer's bind group)."""
    import gc

    rng = np.random.default_rng(0)
    y = device.tensor((2, 64))
    before = len(device._bind_groups)
    for _ in range(4):
        data = rng.standard_normal((2, 64)).astype(np.float32)
        x = device.upload(data)
        g = device.graph()
        await ops.rms_norm(g, x, None, y, n=64, eps=1e-6)
        assert len(device._bind_groups) == before + 1
        await device.run(g)
        want = data / np.sqrt((data * data).mean(-1, keepdims=True) + 1e-6)
        np.testing.assert_allclose(await device.read(y), want, rtol=1e-4, atol=1e-5)
        del x, g
        gc.collect()
        assert len(device._bind_groups) == before  # the entry left with x


async def test_readback_reuse(device):
    t = device.upload(np.arange(8, dtype=np.uint32))
    rb = gpu.Readback(device, 16)
    g = device.graph()
    for off in (0, 16):
        got = await device.run(g, rb, (t.buffer, off, 16))
        assert np.frombuffer(got, np.uint32).tolist() == list(range(off // 4, off // 4 + 4))


async def test_readback_spin_wait_sees_each_submission(device):
    """The readback wait a hardware GPU gets (Device.spin_wait: polling in a loop, _backend.map_read), forced
    here: two submissions in flight, each copying what a kernel wrote just before it, read back in order; each
    readback holds its own submission's values, not the later one's."""
    saved = getattr(device, "_spin_wait", None)
    device._spin_wait = True
    try:
        src = device.upload(np.zeros(4, np.float32))
        rbs = [gpu.Readback(device, 16), gpu.Readback(device, 16)]
        for i, rb in enumerate(rbs):
            device.write(src.buffer, np.full(4, i + 1, np.float32))
            device.submit(device.graph(), rb, (src.buffer, 0, 16))
        for i, rb in enumerate(rbs):
            assert np.frombuffer(bytes(await rb.read(device, 16)), np.float32).tolist() == [i + 1.0] * 4
    finally:
        device._spin_wait = saved


async def test_no_adapter_is_named(monkeypatch):
    async def no_adapter(power_preference):
        return None

    monkeypatch.setattr(_backend, "request_adapter", no_adapter)
    with pytest.raises(gpu.NoAdapterError, match="no WebGPU adapter"):
        await gpu.Device.open()


async def test_lost_device_is_named():
    d = await gpu.Device.open()
    t = d.upload(np.arange(16, dtype=np.float32))
    d.raw.destroy()
    with pytest.raises(gpu.DeviceLostError):
        await d.read(t)


async def test_clear_zeroes_every_part(device):
    """Device.clear zeroes a whole multi-part tensor on the GPU, after the writes queued before it."""
    rows = np.arange(1, 49, dtype=np.float32).reshape(12, 4)
    saved = device.limits["max-storage-buffer-binding-size"]
    device.limits["max-storage-buffer-binding-size"] = 64  # 4 rows per part
    try:
        t = device.upload_rows(rows.tobytes(), 12, 16, (12, 4), "f32", "parts")
    finally:
        device.limits["max-storage-buffer-binding-size"] = saved
    assert len(t.parts) == 3
    device.clear(t)
    for buf, _, n in t.parts:
        assert not (await device.read(buf, np.float32)).any()
    device.write(t.parts[0][0], rows[:1])
    assert (await device.read(t.parts[0][0], np.float32))[:4].tolist() == [1, 2, 3, 4]
