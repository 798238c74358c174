"""Micro-benchmark of the attention path (ops.attention, ops.kv_store, ops.rope) at Gemma 4 E2B shapes: decode
at several context lengths (achieved KV-cache bandwidth) and 512-token prefill chunks. Native only (wgpu-py);
prints JSON.

Timing: a graph of N back-to-back calls and one of 2N, each submitted and waited for several times; the
difference of the best times over N is one call, free of submit and readback latency. The wait is a readback
of 4 bytes of the op's output copied in the same submit: natively, mapping a buffer that no pending submit uses
(Device.sync's empty submit) returns at once, without waiting for the GPU.
Decode calls cycle through enough per-layer caches to stream at least --stream-mb from memory per cycle, as
decoding through all layers does (a single small cache would stay in L2).

    python tools/bench_attention.py
    python tools/bench_attention.py --ctx 1024,32768 --reps 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

import numpy as np

os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")

from rullama_py import gpu, ops  # noqa: E402
from rullama_py.ops.attention import attention_plan  # noqa: E402

# Gemma 4 E2B: 8 q heads, 1 kv head; sliding layers head_dim 256, window 512; global layers head_dim 512.
LAYERS = {"sliding": dict(head_dim=256, window=512), "global": dict(head_dim=512, window=0)}
HEADS, KV_HEADS = 8, 1


def open_device() -> gpu.Device:
    """A gpu.Device with timestamp queries when the adapter has them (gpu.Device.open asks only for the
    features the kernels use)."""
    adapter = gpu.api.gpu.request_adapter_sync(power_preference="high-performance")
    have = set(adapter.features)
    feats = [f for f in ("timestamp-query", "shader-f16", "subgroup") if f in have]
    limits = {k: int(adapter.limits[k]) for k in gpu._LIMITS if k in adapter.limits}
    raw = adapter.request_device_sync(required_features=feats, required_limits=limits)
    return gpu.Device(adapter, raw, set(feats), limits, frozenset())


async def gpu_seconds(dev, dispatches) -> float:
    """GPU time of one compute pass holding `dispatches`, from timestamp queries (ns)."""
    qs = dev.raw.create_query_set(type="timestamp", count=2)
    buf = dev.raw.create_buffer(size=16, usage=gpu.api.BufferUsage.QUERY_RESOLVE | gpu.api.BufferUsage.COPY_SRC)
    rb = gpu.Readback(dev, 16)
    enc = dev.raw.create_command_encoder()
    cpass = enc.begin_compute_pass(timestamp_writes={"query_set": qs, "beginning_of_pass_write_index": 0,
                                                     "end_of_pass_write_index": 1})
    for d in dispatches:
        cpass.set_pipeline(d.pipeline)
        cpass.set_bind_group(0, d.bind_group)
        cpass.dispatch_workgroups(*d.workgroups)
    cpass.end()
    enc.resolve_query_set(qs, 0, 2, buf, 0)
    enc.copy_buffer_to_buffer(buf, 0, rb.buffer, 0, 16)
    dev.queue.submit([enc.finish()])
    t = np.frombuffer(bytes(await rb.read(dev)), np.uint64)
    return float(t[1] - t[0]) * 1e-9


async def timed(dev, build, reps: int, probe, tries: int = 5) -> dict:
    """Seconds per call: GPU time from timestamps when available (also per kernel, for ops that record
    several dispatches per call), and wall time (including the CPU's encoding) by the N / 2N difference."""
    rb = gpu.Readback(dev, 4)
    source = (probe.buffer, 0, 4)
    res = {}

    async def best(n):
        g = dev.graph()
        for i in range(n):
            await build(g, i)
        await dev.run(g, rb, source)
        times = []
        for _ in range(tries):
            t0 = time.perf_counter()
            await dev.run(g, rb, source)
            times.append(time.perf_counter() - t0)
        return min(times), g

    t1, g1 = await best(reps)
    t2, _ = await best(2 * reps)
    res["wall"] = max(t2 - t1, 1e-12) / reps
    if "timestamp-query" in dev.features:
        per = len(g1.dispatches) // reps
        res["gpu"] = min([await gpu_seconds(dev, g1.dispatches) for _ in range(tries)]) / reps
        if per > 1:
            res["gpu_kernels"] = [min([await gpu_seconds(dev, g1.dispatches[k::per]) for _ in range(tries)]) / reps
                                  for k in range(per)]
    return res


def step_tensor(dev, pos: int, n_tokens: int):
    s = dev.tensor((8,), "uint32", "step", usage=gpu.UNIFORM)
    dev.write(s.buffer, np.array([pos, n_tokens, pos + n_tokens, 0, 0, 0, 0, 0], np.uint32))
    return s


def random_cache(dev, rng, slots: int, hd: int, copies: int):
    caches = []
    block = rng.standard_normal((min(slots, 4096), hd)).astype(np.float16)
    for _ in range(copies):
        ck, cv = ops.kv_cache(dev, n_kv_heads=KV_HEADS, head_dim=hd, slots=slots)
        for c in (ck, cv):
            for start in range(0, slots, len(block)):
                n = min(len(block), slots - start)
                dev.write(c.buffer, block[:n], start * hd * 2)
        caches.append((ck, cv))
    return caches


async def bench_decode(dev, kind: str, ctx: int, reps: int, stream_mb: float, rng, wg=None, kt=None,
                       splits=None) -> dict:
    hd, window = LAYERS[kind]["head_dim"], LAYERS[kind]["window"]
    slots = ops.kv_slots(ctx, window=window, max_tokens=1)
    keys = min(ctx, window) if window else ctx
    kv_bytes = 2 * keys * KV_HEADS * hd * 2
    copies = max(1, min(32, int(np.ceil(stream_mb * 2**20 / (2 * slots * hd * 2)))))
    caches = random_cache(dev, rng, slots, hd, copies)
    step = step_tensor(dev, ctx - 1, 1)
    q = dev.upload(rng.standard_normal((1, HEADS, hd)).astype(np.float32) / np.sqrt(hd))
    k = dev.upload(rng.standard_normal((1, KV_HEADS, hd)).astype(np.float32))
    out = dev.tensor((1, HEADS, hd))
    plan = attention_plan(dev, n_tokens=1, n_heads=HEADS, n_kv_heads=KV_HEADS, head_dim=hd, window=window,
                          max_ctx=slots, wg=wg, kt=kt, splits=splits)

    async def attn(g, i):
        ck, cv = caches[i % copies]
        await ops.attention(g, q, ck, cv, out, step, n_heads=HEADS, n_kv_heads=KV_HEADS, head_dim=hd, scale=1.0,
                            window=window, max_ctx=slots, wg=wg, kt=kt, splits=splits)

    async def store(g, i):
        ck, cv = caches[i % copies]
        await ops.kv_store(g, k, k, ck, cv, step, n_kv_heads=KV_HEADS, head_dim=hd, max_ctx=slots)

    async def rope(g, i):
        await ops.rope(g, q, step, n_heads=HEADS, head_dim=hd, base=1e4)

    ta = await timed(dev, attn, reps, out)
    ts = await timed(dev, store, reps, caches[0][0])
    tr = await timed(dev, rope, reps, q)
    t = ta.get("gpu", ta["wall"])
    for ck, cv in caches:
        ck.buffer.destroy()
        cv.buffer.destroy()
    return {"phase": "decode", "layer": kind, "ctx": ctx, "keys": keys, "head_dim": hd, "wg": plan["wg"], "kt": plan["kt"],
            "splits": plan["splits"], "dispatches": plan["dispatches"], "us": round(t * 1e6, 2), "gb_per_s": round(kv_bytes / t / 1e9, 1),
            "us_kernels": [round(x * 1e6, 2) for x in ta.get("gpu_kernels", [])],
            "us_wall": round(ta["wall"] * 1e6, 2), "kv_store_us": round(ts.get("gpu", ts["wall"]) * 1e6, 2),
            "rope_q_us": round(tr.get("gpu", tr["wall"]) * 1e6, 2)}


async def bench_prefill(dev, kind: str, pos: int, T: int, reps: int, rng) -> dict:
    hd, window = LAYERS[kind]["head_dim"], LAYERS[kind]["window"]
    slots = ops.kv_slots(pos + T, window=window, max_tokens=T)
    (ck, cv), = random_cache(dev, rng, slots, hd, 1)
    step = step_tensor(dev, pos, T)
    q = dev.upload(rng.standard_normal((T, HEADS, hd)).astype(np.float32) / np.sqrt(hd))
    out = dev.tensor((T, HEADS, hd))
    plan = attention_plan(dev, n_tokens=T, n_heads=HEADS, n_kv_heads=KV_HEADS, head_dim=hd, window=window,
                          max_ctx=slots)

    async def attn(g, i):
        await ops.attention(g, q, ck, cv, out, step, n_heads=HEADS, n_kv_heads=KV_HEADS, head_dim=hd, scale=1.0,
                            window=window, max_ctx=slots)

    ta = await timed(dev, attn, reps, out)
    t = ta.get("gpu", ta["wall"])
    # Multiply-adds: every (query, head) scores and accumulates over its visible keys.
    macs = 0
    for i in range(T):
        p = pos + i
        macs += (min(p + 1, window) if window else p + 1) * HEADS * hd * 2
    ck.buffer.destroy()
    cv.buffer.destroy()
    return {"phase": "prefill", "layer": kind, "pos": pos, "tokens": T, "head_dim": hd, "rows": plan["rows"],
            "splits": plan["splits"], "dispatches": plan["dispatches"], "us": round(t * 1e6, 1),
            "tflops": round(2 * macs / t / 1e12, 2)}


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ctx", default="1024,8192,32768,131072", help="decode context lengths")
    ap.add_argument("--prefill", default="0,4096", help="prefill chunk start positions")
    ap.add_argument("--chunk", type=int, default=512)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--stream-mb", type=float, default=256.0)
    ap.add_argument("--wg", default="0", help="comma-separated decode workgroup sizes to try (0 = the plan's)")
    ap.add_argument("--kt", default="0", help="comma-separated decode keys-per-tile to try (0 = the plan's)")
    ap.add_argument("--splits", default="0", help="comma-separated decode key splits to try (0 = the plan's)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    dev = open_device()
    rng = np.random.default_rng(0)
    results = []
    for kind in LAYERS:
        for ctx in (int(c) for c in args.ctx.split(",")):
            for wg in (int(w) for w in args.wg.split(",")):
                for kt in (int(k) for k in args.kt.split(",")):
                    for sp in (int(x) for x in args.splits.split(",")):
                        r = await bench_decode(dev, kind, ctx, args.reps, args.stream_mb, rng, wg or None, kt or None,
                                               sp or None)
                        print(json.dumps(r), file=sys.stderr, flush=True)
                        results.append(r)
        for pos in (int(p) for p in args.prefill.split(",") if p):
            r = await bench_prefill(dev, kind, pos, args.chunk, max(3, args.reps // 5), rng)
            print(json.dumps(r), file=sys.stderr, flush=True)
            results.append(r)
    report = {"device": dev.info, "limits": dev.limits, "timestamps": "timestamp-query" in dev.features,
              "results": results}
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    asyncio.run(main())
