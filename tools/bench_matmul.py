"""Micro-benchmark of the decode matrix-vector kernel (ops.matmul with one token): achieved weight bandwidth
per GGUF type at Gemma 4 E2B shapes. Native only (wgpu-py); prints JSON. --tokens N times the tiled prefill
kernel instead (see tflop_per_s).

Timing is wall time without timestamp queries: one graph holds N back-to-back dispatches of the op (one
submit), another 2N; each is encoded, submitted and waited for (through a readback of the output) several
times. Encoding is timed apart, since the GPU starts only at submit; the difference of the best
submit-to-done times divided by N is the GPU time of one call, free of the fixed submit and readback latency. Consecutive calls write
the same output, so the GPU serialises them as a decode step would. Small weights would stay in the GPU's L2
cache across repetitions and overstate bandwidth, so calls cycle through enough copies of the weight to
stream at least --stream-mb per cycle from memory, as decoding through all layers does.

    python tools/bench_matmul.py                      # all types, all shapes
    python tools/bench_matmul.py --types q4_k,q6_k --reps 50 --shapes 1536x6144
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
import importlib  # noqa: E402

_mm = importlib.import_module("rullama_py.ops.matmul")  # the module: `ops.matmul` is the function
from rullama_py.ops.matmul import QUANT_TYPES, row_bytes  # noqa: E402

# (rows, cols) = (out_features, in_features) of Gemma 4 E2B's decode matrices, and the tied Q6_K head.
SHAPES = [(1536, 2048), (1536, 6144), (6144, 1536), (12288, 1536), (262144, 1536)]
HEAD = (262144, 1536)
# Byte offsets of the f16 fields of each block type (set to small finite values; the rest stays random).
F16_FIELDS = {"q8_0": (0,), "q4_0": (0,), "q5_0": (0,), "q4_k": (0, 2), "q5_k": (0, 2), "q6_k": (208,)}


def random_weight(qt: str, rows: int, cols: int, rng) -> np.ndarray:
    """Raw GGUF bytes of a random, valid (finite) weight."""
    if qt in ("f32", "f16"):
        return rng.standard_normal((rows, cols), dtype=np.float32).astype(qt.replace("f", "float")).view(np.uint8)
    if qt == "bf16":
        return (rng.standard_normal((rows, cols), dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
    blk, size = QUANT_TYPES[qt]
    b = rng.integers(0, 256, (rows * cols // blk, size), dtype=np.uint8)
    for off in F16_FIELDS[qt]:
        b[:, off : off + 2] = np.array([2.0**-8], np.float16).view(np.uint8)
    return b


WARMUP_S = 0.3
heavy = None  # the warm-up graph (main)


async def bench_one(dev, qt: str, rows: int, cols: int, reps: int, stream_mb: float, rng, sweep=(None,),
                    tokens: int = 1) -> list:
    rb = row_bytes(qt, cols)
    nbytes = rows * rb
    raw = random_weight(qt, rows, cols, rng).tobytes()
    copies = max(1, min(64, int(np.ceil(stream_mb * 2**20 / nbytes))))
    weights = [dev.upload_rows(raw, rows, rb, (rows, cols), qt, f"{qt}_{i}") for i in range(copies)]
    x = dev.upload(rng.standard_normal((tokens, cols), dtype=np.float32))
    out = dev.tensor((tokens, rows))

    async def graph(n):
        g = dev.graph()
        for i in range(n):
            await ops.matmul(g, weights[i % copies], x, out, n_tokens=tokens)
        return g

    rb = gpu.Readback(dev, 4, "bench")

    async def best(g, tries=5):
        """Best (encode seconds, submit-to-done seconds) of `tries` runs. Encoding is timed apart: the GPU
        only starts at submit, so Python's per-dispatch encoding cost must not count as kernel time."""
        enc_t, gpu_t = [], []
        for i in range(tries + 1):  # the first run warms up pipelines and bind groups
            t0 = time.perf_counter()
            enc = dev.raw.create_command_encoder()
            g.encode(enc)
            # A copy of the output after the dispatches: mapping its destination waits for all of them.
            enc.copy_buffer_to_buffer(out.buffer, 0, rb.buffer, 0, 4)
            cb = enc.finish()
            t1 = time.perf_counter()
            dev.queue.submit([cb])
            await rb.read(dev, 4)
            t2 = time.perf_counter()
            if i:
                enc_t.append(t1 - t0)
                gpu_t.append(t2 - t1)
        return min(enc_t), min(gpu_t)

    n = max(reps, copies)
    # GPUs idle at low clocks and take a while to ramp up, and small matrices alone do not make them: before
    # each timing, keep the GPU busy with a heavy load for a moment.
    g, t0 = await graph(n), time.perf_counter()
    while WARMUP_S > 0 and time.perf_counter() - t0 < WARMUP_S:
        enc = dev.raw.create_command_encoder()
        heavy.encode(enc)
        dev.queue.submit([enc.finish()])
        await best(g, 1)
    results = []
    for shape in sweep:
        _mm.MATVEC_SHAPE_OVERRIDE = None if shape is None else tuple(int(v) for v in shape.split("x"))
        e1, t1 = await best(await graph(n))
        e2, t2 = await best(await graph(2 * n))
        _mm.MATVEC_SHAPE_OVERRIDE = None
        per_call = max(t2 - t1, 1e-12) / n
        r = {
            "type": qt,
            "rows": rows,
            "cols": cols,
            "wg_r": shape or "default",
            "weight_bytes": nbytes,
            "parts": len(weights[0].parts),
            "copies": copies,
            "calls": n,
            "tokens": tokens,
            "us_per_call": round(per_call * 1e6, 3),
            "gb_per_s": round(nbytes / per_call / 1e9, 2),
            "tflop_per_s": round(2 * rows * cols * tokens / per_call / 1e12, 3),
            "us_per_call_incl_submit": round(t1 / n * 1e6, 3),
            "us_encode_per_call": round(e1 / n * 1e6, 3),
        }
        print(f"{qt:5} {rows:>6}x{cols:<5} {r['wg_r']:8} {r['us_per_call']:9.2f} us  {r['gb_per_s']:8.1f} GB/s"
              f"  {r['tflop_per_s']:7.3f} TFLOP/s", file=sys.stderr, flush=True)
        results.append(r)
    for w in weights:
        for buf, _, _ in w.parts:
            buf.destroy()
    return results


async def main() -> None:
    global WARMUP_S
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--types", default=",".join(QUANT_TYPES), help="comma-separated GGUF types")
    ap.add_argument("--shapes", default=None, help="comma-separated ROWSxCOLS (default: Gemma 4 E2B's)")
    ap.add_argument("--head-types", default="q6_k", help="types to run the 262144x1536 head in")
    ap.add_argument("--reps", type=int, default=100, help="calls per timed graph (N; the second has 2N)")
    ap.add_argument("--stream-mb", type=float, default=128.0, help="weight copies cycled to defeat the L2 cache")
    ap.add_argument("--disable", default="", help="features to turn off, e.g. subgroups,shader-f16")
    ap.add_argument("--sweep", default=None, help="WGxR,WGxR,...: time each matvec shape instead of the default")
    ap.add_argument("--warmup-s", type=float, default=WARMUP_S, help="heavy load before each timing (0: none)")
    ap.add_argument("--tokens", type=int, default=1, help="tokens per call: more than 1 times the tiled (prefill) kernel")
    ap.add_argument("--lib-suffix", default="", help="experiments: use shaders/quant/<type><suffix>.wgsl")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args()
    shapes = SHAPES if args.shapes is None else [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    WARMUP_S = args.warmup_s
    if args.lib_suffix:
        libs = _mm._libs
        _mm._libs = lambda qt: libs(qt)[:-1] + (libs(qt)[-1] + args.lib_suffix * (qt != "f32"),)
    dev = await gpu.Device.open(disable_features=[f for f in args.disable.split(",") if f])
    rng = np.random.default_rng(0)
    # The warm-up load: 64 calls of a 64 MiB f32 matvec (about 20 ms on an H100).
    global heavy
    hw = dev.upload_rows(np.zeros(4096 * 4096, np.float32), 4096, 4096 * 4, (4096, 4096), "f32", "warmup")
    hx, hy = dev.tensor((1, 4096)), dev.tensor((1, 4096))
    heavy = dev.graph()
    for _ in range(64):
        await ops.matmul(heavy, hw, hx, hy, n_tokens=1)
    results = []
    # The fixed cost of one dispatch (launch, and the barrier between dispatches writing the same output):
    # a matvec over a single row of 8 weights. Calls of small matrices cannot go below it.
    floor = (await bench_one(dev, "f32", 1, 8, args.reps, 0, rng))[0]["us_per_call"]
    for qt in args.types.split(","):
        for rows, cols in shapes:
            if (rows, cols) == HEAD and qt not in args.head_types.split(","):
                continue
            sweep = (None,) if args.sweep is None else args.sweep.split(",")
            results += await bench_one(dev, qt, rows, cols, args.reps, args.stream_mb, rng, sweep, args.tokens)
    report = {
        "device": dev.info,
        "features": sorted(dev.features),
        "subgroups": dev.has_subgroups,
        "dispatch_floor_us": floor,
        "limits": dev.limits,
        "results": results,
    }
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    asyncio.run(main())
