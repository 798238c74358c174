"""Micro-benchmark of the GPU sampler (rullama_py.sampling) at Gemma's 262144-token vocabulary. Native only.

Two numbers per case:
- `token_ms`: what one decoded token pays for sampling when it is the whole graph: prepare (8-byte uniform
  write), submit, wait and read back the 4-byte id; median over --iters runs.
- `gpu_us` (and per stage): GPU time of one sampler call, free of submit/readback latency: one graph holds
  N back-to-back copies of the dispatches, another 2N; the difference of the best times over N.

    python tools/bench_sampling.py [--vocab 262144] [--iters 50] [--reps 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time

import numpy as np

os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

from rullama_py import gpu  # noqa: E402
from rullama_py.sampling import Sampler, SamplerParams  # noqa: E402

CASES = {
    "greedy": SamplerParams(temperature=0.0, seed=1),
    "default": SamplerParams(seed=1),  # llama.cpp defaults: T 0.8, top_k 40, top_p 0.95, min_p 0.05
    "penalty_top_p": SamplerParams(temperature=0.8, top_k=0, top_p=0.9, min_p=0.0, repetition_penalty=1.1, repetition_last_n=64, seed=1),
}


def logits_for(kind: str, vocab: int, rng) -> np.ndarray:
    x = rng.standard_normal(vocab).astype(np.float32) * 2.0
    if kind == "peaked":
        idx = rng.choice(vocab, 30, replace=False)
        x[idx] += rng.uniform(4, 9, 30).astype(np.float32)
    elif kind == "one_list":  # 300 strong tokens all owned by stage 1's workgroup 5: stage 2's exact fallback
        x[5 + 128 * np.arange(300)] += 6.0
    elif kind == "gemma3":  # real first-step logits of Gemma 3 270M (tests/goldens)
        path = os.path.join(os.path.dirname(__file__), "..", "tests", "goldens", "gemma3_270m_llamacpp_logits.npz")
        x = np.load(path)["case0"].astype(np.float32)
    return x


async def best_time(dev, g, runs: int) -> float:
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        dev.submit(g)
        await dev.sync()
        ts.append(time.perf_counter() - t)
    return min(ts)


async def gpu_time(dev, dispatches, reps: int) -> float:
    g1, g2 = dev.graph(), dev.graph()
    g1.dispatches = list(dispatches) * reps
    g2.dispatches = list(dispatches) * (2 * reps)
    await best_time(dev, g1, 2)
    t1 = await best_time(dev, g1, 5)
    t2 = await best_time(dev, g2, 5)
    return (t2 - t1) / reps


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab", type=int, default=262144)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--check", type=int, default=3, help="draws compared with the numpy reference per case")
    a = ap.parse_args()
    dev = await gpu.default_device()
    print(json.dumps({"device": dev.info}), flush=True)
    import reference_sampling as ref

    rows = []
    rng = np.random.default_rng(0)
    for kind in ("gemma3", "peaked", "one_list"):
        logits = logits_for(kind, a.vocab, rng)
        lt = dev.upload(logits)
        step = dev.tensor((8,), "uint32", usage=gpu.UNIFORM)
        out = dev.tensor((1,), "uint32")
        for name, params in CASES.items():
            s = await Sampler.create(dev, a.vocab, params, max_history=64, softcap=30.0)
            g = dev.graph()
            await s.record(g, lt, step, out)
            rb = gpu.Readback(dev, 4)
            got, hist = [], []
            for i in range(a.check):
                s.prepare(step)
                got.append(int(np.frombuffer(await dev.run(g, rb, (out.buffer, 0, 4)), np.uint32)[0]))
            for i in range(a.check):
                hist.append(ref.sample(logits, params, hist, 1, i, 30.0, 64))
            ts = []
            for _ in range(a.iters):
                t = time.perf_counter()
                s.prepare(step)
                await dev.run(g, rb, (out.buffer, 0, 4))
                ts.append(time.perf_counter() - t)
            both = await gpu_time(dev, g.dispatches, a.reps)
            st1 = await gpu_time(dev, g.dispatches[:1], a.reps)
            st2 = await gpu_time(dev, g.dispatches[1:], a.reps)
            row = dict(logits=kind, case=name, matches_reference=got == hist, token_ms=round(statistics.median(ts) * 1e3, 3),
                       gpu_us=round(both * 1e6, 1), stage1_us=round(st1 * 1e6, 1), stage2_us=round(st2 * 1e6, 1))
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"{'logits':10} {'case':14} {'ref':5} {'token_ms':>9} {'gpu_us':>8} {'st1_us':>8} {'st2_us':>8}")
    for r in rows:
        print(f"{r['logits']:10} {r['case']:14} {str(r['matches_reference']):5} {r['token_ms']:9.3f} {r['gpu_us']:8.1f} {r['stage1_us']:8.1f} {r['stage2_us']:8.1f}")


if __name__ == "__main__":
    asyncio.run(main())
