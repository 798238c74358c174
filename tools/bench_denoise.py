"""Micro-benchmark of DiffusionGemma's sampler kernels at the real model's sizes (ops/denoise.py): one denoising
step (noise, softmax/entropy/argmax/draw, acceptance: 3 dispatches) over a 256 x 262144 canvas of logits, and
mix_rows (the self-conditioning input 256 x 262144 probabilities @ a 262144 x 2816 embedding table) per GGUF type.
Native only (wgpu-py); prints JSON.

Timing as tools/bench_matmul.py: a graph of N back-to-back calls and one of 2N are each encoded ahead, submitted
and waited for (a readback of the output) several times; the difference of the best times divided by N is the GPU
time of one call, free of the fixed submit and readback latency. The step's logits are overwritten by p in place,
so repeats sample from softmax(p / t): the same work (the crossing's chunk is walked wherever it lies).

    python tools/bench_denoise.py --types q4_k,q8_0,f16 --out bench_denoise.json
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

from rullama_py import gpu  # noqa: E402
from rullama_py.ops import denoise as dn  # noqa: E402
from rullama_py.ops.matmul import QUANT_TYPES, row_bytes  # noqa: E402

F16_FIELDS = {"q8_0": (0,), "q4_0": (0,), "q5_0": (0,), "q4_k": (0, 2), "q5_k": (0, 2), "q6_k": (208,)}


def random_table(qt: str, rows: int, cols: int, rng) -> np.ndarray:
    """Raw GGUF bytes of a random, finite table (speed does not depend on the values)."""
    if qt in ("f32", "f16"):
        return rng.standard_normal((rows, cols), dtype=np.float32).astype(qt.replace("f", "float")).view(np.uint8)
    blk, size = QUANT_TYPES[qt]
    b = rng.integers(0, 256, (rows * cols // blk, size), dtype=np.uint8)
    for off in F16_FIELDS[qt]:
        b[:, off : off + 2] = np.array([2.0**-8], np.float16).view(np.uint8)
    return b


async def gpu_time(dev, make_graph, out, n: int, repeats: int) -> float:
    """Seconds of GPU time per call: (best time of 2n calls - best of n) / n."""
    best = {}
    rb = gpu.Readback(dev, 4)
    for k in (n, 2 * n):
        g = await make_graph(k)
        dev.submit(g)  # warm-up (validates the graph)
        await dev.sync()
        times = []
        for _ in range(repeats):
            cb = dev.encode(g, rb, (out.buffer, 0, 4))
            t0 = time.perf_counter()
            dev.submit_encoded(cb)
            await rb.read(dev, 4)
            times.append(time.perf_counter() - t0)
        best[k] = min(times)
    return (best[2 * n] - best[n]) / n


async def bench_step(dev, C: int, V: int, n: int, repeats: int, rng) -> dict:
    raw = (30 * np.tanh(rng.standard_normal((C, V), dtype=np.float32) * 4 / 30)).astype(np.float32)
    logits = dev.upload(raw, "logits")
    canvas = dev.tensor((C,), "uint32", "canvas")
    d = dn.Denoiser(dev, C, V)
    d.set_step(temperature=0.8, entropy_bound=0.1, seed=1, counter=1, new_canvas=True)

    async def make(k):
        g = dev.graph()
        for _ in range(k):
            await d.record(g, logits, canvas)
        return g

    s = await gpu_time(dev, make, d.report, n, repeats)
    t0 = time.perf_counter()
    rep = d.parse(await dev.run(await make(1), d.readback, d.report_source))
    wall = time.perf_counter() - t0
    return dict(op="denoise step", canvas=C, vocab=V, dispatches=3, gpu_us=round(s * 1e6, 1),
                logits_gb_per_s=round(3 * C * V * 4 / s / 1e9, 1), one_step_wall_ms=round(wall * 1e3, 2),
                report_bytes=dn.report_nbytes(C), n_accepted=rep.n_accepted)


async def bench_mix(dev, qt: str, C: int, V: int, D: int, n: int, repeats: int, rng, split=None) -> dict:
    raw = random_table(qt, V, D, rng)
    table = dev.upload_rows(raw, V, row_bytes(qt, D), (V, D), qt, f"E_{qt}")
    del raw
    P = rng.random((C, V), dtype=np.float32)
    P /= P.sum(1, keepdims=True)
    probs = dev.upload(P, "probs")
    out = dev.tensor((C, D), "float32", "soft")
    plan = dn.mix_rows_plan(dev, n_rows=C, vocab=V, cols=D, part_rows=[p[2] for p in table.parts],
                            rows_per_split=split)
    scratch = dev.tensor((max(1, dn.mix_rows_scratch_words(plan, C, D)),), "float32", "scratch")

    async def make(k):
        g = dev.graph()
        for _ in range(k):
            await dn.mix_rows(g, probs, table, out, n_rows=C, scale=D**0.5, scratch=scratch, rows_per_split=split)
        return g

    s = await gpu_time(dev, make, out, n, repeats)
    flop = 2 * C * V * D
    for buf, _, _ in table.parts:
        buf.destroy()
    probs.parts[0][0].destroy()
    return dict(op="mix_rows", type=qt, canvas=C, vocab=V, dims=D, parts=len(table.parts), split=plan["split"],
                slices=plan["total"], blocks=f"{plan['cpt']}x{plan['dpt']}", gpu_ms=round(s * 1e3, 3),
                tflop_per_s=round(flop / s / 1e12, 2), table_gb_per_s=round(table.nbytes / s / 1e9, 1))


async def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--canvas", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=262144)
    ap.add_argument("--dims", type=int, default=2816)
    ap.add_argument("--types", default="q4_k,q8_0,f16")
    ap.add_argument("--splits", default="", help="rows per split to try besides the plan's, comma-separated")
    ap.add_argument("--reps", type=int, default=10, help="calls per timed graph (N)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="")
    a = ap.parse_args(argv)
    dev = await gpu.default_device()
    rng = np.random.default_rng(0)
    res = dict(device=dev.info, results=[])
    r = await bench_step(dev, a.canvas, a.vocab, a.reps, a.repeats, rng)
    print(json.dumps(r), file=sys.stderr)
    res["results"].append(r)
    for qt in [t for t in a.types.split(",") if t]:
        for split in [None] + [int(s) for s in a.splits.split(",") if s]:
            r = await bench_mix(dev, qt, a.canvas, a.vocab, a.dims, max(1, a.reps // 5), a.repeats, rng, split)
            print(json.dumps(r), file=sys.stderr)
            res["results"].append(r)
    text = json.dumps(res, indent=1)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    asyncio.run(main())
