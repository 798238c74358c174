"""Micro-benchmark of one mixture-of-experts layer (ops.moe) at Gemma 4 26B-A4B's dimensions: 128 experts of
704 rows, top 8, d_model 2816, on synthetic weights (gate_up Q4_K; down Q5_0 by default, the type llama.cpp's
quantiser falls back to from Q4_K when rows are not a multiple of 256, as 704 is not). Native only (wgpu-py);
prints JSON.

A layer: the router's matmul (f32, 128 x 2816), moe_route, for many tokens moe_group, the gate_up expert
product, gelu_mul, the down product with the weighted combine (and its combine dispatch for many tokens).
Times per stage and per layer for each token count (default 1: decode, and 256: a prefill chunk or a
DiffusionGemma canvas).

Timing is wall time without timestamp queries, as in tools/bench_matmul.py: one graph holds N back-to-back
layers (one submit), another 2N; each is encoded, then submitted and waited for several times; the difference
of the best submit-to-done times divided by N is the GPU time of one layer. Consecutive layers cycle through
--layers copies of the weights, each with its own router (so its own experts), so that decode does not find
its 8 experts in the L2 cache from the previous layer.

    python tools/bench_moe.py                        # decode and 256 tokens
    python tools/bench_moe.py --tokens 1,64,256,512 --down-type q8_0
    python tools/bench_moe.py --sweep-matvec 128x4x128,256x1x256 --sweep-tiles 32x16x4,32x16x8
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import sys
import time

import numpy as np

os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")

from rullama_py import gpu, ops  # noqa: E402
from rullama_py.ops import moe  # noqa: E402
from rullama_py.ops.matmul import QUANT_TYPES, row_bytes  # noqa: E402

_mm = importlib.import_module("rullama_py.ops.matmul")  # the module: `ops.matmul` is the function
# Byte offsets of the f16 fields of each block type (set to small finite values; the rest stays random).
F16_FIELDS = {"q8_0": (0,), "q4_0": (0,), "q5_0": (0,), "q4_k": (0, 2), "q5_k": (0, 2), "q6_k": (208,)}


def random_weight(qt: str, rows: int, cols: int, rng) -> bytes:
    """Raw GGUF bytes of a random, valid (finite) weight."""
    if qt in ("f32", "f16"):
        return rng.standard_normal((rows, cols), dtype=np.float32).astype(qt.replace("f", "float")).tobytes()
    blk, size = QUANT_TYPES[qt]
    b = rng.integers(0, 256, (rows * cols // blk, size), dtype=np.uint8)
    for off in F16_FIELDS[qt]:
        b[:, off : off + 2] = np.array([2.0**-8], np.float16).view(np.uint8)
    return b.tobytes()


class Layer:
    """One MoE layer's weights and buffers for n_tokens; the activations are shared between copies."""

    def __init__(self, dev, shared: dict, raw: dict, a, rng, n_tokens: int, copy: int):
        e, k, d, ff = a.experts, a.top_k, a.d_model, a.ff
        self.shared = shared
        self.router = dev.upload((rng.standard_normal((e, d)) / np.sqrt(d)).astype(np.float32), f"router{copy}")
        self.scale = dev.upload(rng.uniform(0.5, 1.5, e).astype(np.float32), f"scale{copy}")
        self.gate_up = dev.upload_rows(raw["gate_up"], e * 2 * ff, row_bytes(a.gate_up_type, d), (e * 2 * ff, d),
                                       a.gate_up_type, f"gate_up{copy}", align_rows=2 * ff)
        self.down = dev.upload_rows(raw["down"], e * d, row_bytes(a.down_type, ff), (e * d, ff), a.down_type,
                                    f"down{copy}", align_rows=d)
        self.ids = dev.tensor((n_tokens, k), "uint32", f"ids{copy}")
        self.weights = dev.tensor((n_tokens, k), "float32", f"weights{copy}")
        self.groups = dev.tensor((moe.moe_groups_size(n_tokens, e),), "uint32", f"groups{copy}") if n_tokens > 1 else None
        self.kw = dict(n_tokens=n_tokens, n_experts=e, top_k=k)
        self.ff = ff

    async def record(self, g, stage: str) -> None:
        s, kw = self.shared, self.kw
        if stage == "router":
            await ops.matmul(g, self.router, s["x"], s["logits"], n_tokens=kw["n_tokens"])
        elif stage == "route":
            await ops.moe_route(g, s["logits"], self.scale, self.ids, self.weights, **kw)
        elif stage == "group":
            if self.groups is not None:
                await ops.moe_group(g, self.ids, self.groups, **kw)
        elif stage == "gate_up":
            await ops.expert_matmul(g, self.gate_up, s["x"], self.ids, s["gu"], groups=self.groups, **kw)
        elif stage == "gelu":
            await ops.gelu_mul(g, s["gu"], None, s["act"], n=self.ff, fused=True)
        elif stage == "down":
            await ops.expert_matmul_sum(g, self.down, s["act"], self.ids, self.weights, s["out"], accumulate=True,
                                        groups=self.groups, partial=s["partial"], **kw)


STAGES = ("router", "route", "group", "gate_up", "gelu", "down")


async def best(dev, g, probe, tries: int) -> float:
    """Best submit-to-done seconds of `tries` runs of graph g (after one warm-up run)."""
    rb = gpu.Readback(dev, 4, "bench")
    times = []
    for i in range(tries + 1):
        enc = dev.raw.create_command_encoder()
        g.encode(enc)
        enc.copy_buffer_to_buffer(probe, 0, rb.buffer, 0, 4)  # mapping it waits for every dispatch
        cb = enc.finish()
        t0 = time.perf_counter()
        dev.queue.submit([cb])
        await rb.read(dev, 4)
        if i:
            times.append(time.perf_counter() - t0)
    rb.buffer.destroy()
    return min(times)


async def per_layer(dev, layers, stages, n: int, tries: int, probe) -> float:
    """GPU seconds of one layer's `stages`: (t(2n) - t(n)) / n."""
    async def graph(reps):
        g = dev.graph()
        for i in range(reps):
            for st in stages:
                await layers[i % len(layers)].record(g, st)
        return g

    t1 = await best(dev, await graph(n), probe, tries)
    t2 = await best(dev, await graph(2 * n), probe, tries)
    return max(t2 - t1, 1e-12) / n


async def bench_tokens(dev, a, raw, n_tokens: int, rng) -> dict:
    e, k, d, ff = a.experts, a.top_k, a.d_model, a.ff
    shared = {
        "x": dev.upload(rng.standard_normal((n_tokens, d)).astype(np.float32), "x"),
        "logits": dev.tensor((n_tokens, e), "float32", "logits"),
        "gu": dev.tensor((n_tokens, k, 2 * ff), "float32", "gu"),
        "act": dev.tensor((n_tokens, k, ff), "float32", "act"),
        "out": dev.tensor((n_tokens, d), "float32", "out"),
        "partial": dev.tensor((n_tokens * k, d), "float32", "partial") if n_tokens > 1 else None,
    }
    layers = [Layer(dev, shared, raw, a, rng, n_tokens, c) for c in range(a.layers)]
    # Route every copy once so that each has its own ids (and groups) before stages are timed alone.
    g = dev.graph()
    for layer in layers:
        for st in STAGES:
            await layer.record(g, st)
    await dev.run(g)
    await dev.sync()
    probe = shared["out"].buffer
    # GPUs idle at low clocks; a few heavy runs first bring them up.
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < a.warmup_s:
        await per_layer(dev, layers, STAGES, a.layers, 1, probe)
    # Enough layers per graph that one run takes --graph-ms: the jitter of a submit and its readback (tens of
    # microseconds) must be small next to the difference measured.
    rough = await per_layer(dev, layers, STAGES, a.layers, 2, probe)
    n = max(a.reps, a.layers, min(4000, int(a.graph_ms * 1e-3 / rough)))
    stages = {st: await per_layer(dev, layers, (st,), n, a.tries, probe) for st in STAGES
              if not (st == "group" and n_tokens == 1)}
    total = await per_layer(dev, layers, STAGES, n, a.tries, probe)
    # Expert weight bytes a layer reads: decode reads top_k experts of each weight; many tokens read at
    # most every expert once (per row tile: the grouped kernel's reuse).
    per_expert = 2 * ff * row_bytes(a.gate_up_type, d) + d * row_bytes(a.down_type, ff)
    experts_read = min(e, k * n_tokens)
    result = {
        "tokens": n_tokens,
        "us_per_layer": round(total * 1e6, 2),
        "us_per_stage": {st: round(t * 1e6, 2) for st, t in stages.items()},
        "expert_bytes_read_at_most": per_expert * experts_read,
        "gb_per_s_experts": round(per_expert * experts_read / (stages["gate_up"] + stages["down"]) / 1e9, 1),
        "us_per_token": round(total * 1e6 / n_tokens, 3),
        "layer_copies": a.layers,
        "layers_per_graph": n,
        "parts": [len(layers[0].gate_up.parts), len(layers[0].down.parts)],
    }
    print(f"{n_tokens:4} tokens: {result['us_per_layer']:9.1f} us/layer  "
          + "  ".join(f"{st} {t:.1f}" for st, t in result["us_per_stage"].items())
          + f"  ({result['gb_per_s_experts']} GB/s of expert weights)", file=sys.stderr, flush=True)
    for layer in layers:
        for w in (layer.gate_up, layer.down):
            for buf, _, _ in w.parts:
                buf.destroy()
    return result


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", default="1,256", help="comma-separated token counts")
    ap.add_argument("--experts", type=int, default=128)
    ap.add_argument("--top-k", type=int, default=8)
    ap.add_argument("--d-model", type=int, default=2816)
    ap.add_argument("--ff", type=int, default=704, help="rows of one expert's gate (and of its up)")
    ap.add_argument("--gate-up-type", default="q4_k")
    ap.add_argument("--down-type", default="q5_0")
    ap.add_argument("--layers", type=int, default=6, help="weight copies cycled (each about 460 MB at the defaults)")
    ap.add_argument("--reps", type=int, default=40, help="at least this many layers per timed graph (N; the "
                    "second has 2N)")
    ap.add_argument("--graph-ms", type=float, default=30.0, help="N is raised until a graph of N layers takes this")
    ap.add_argument("--tries", type=int, default=8)
    ap.add_argument("--warmup-s", type=float, default=1.0)
    ap.add_argument("--max-binding-mb", type=float, default=None, help="pretend a smaller binding limit (parts)")
    ap.add_argument("--disable", default="", help="features to turn off, e.g. subgroups")
    ap.add_argument("--sweep-matvec", default=None, help="WGxRxLPR,...: time decode with each matvec shape")
    ap.add_argument("--sweep-tiles", default=None, help="TNxTKxRPT,...: time many tokens with each grouped tile")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    a = ap.parse_args()
    dev = await gpu.Device.open(disable_features=[f for f in a.disable.split(",") if f])
    if a.max_binding_mb:
        dev.limits["max-storage-buffer-binding-size"] = int(a.max_binding_mb * 2**20)
    rng = np.random.default_rng(0)
    raw = {"gate_up": random_weight(a.gate_up_type, a.experts * 2 * a.ff, a.d_model, rng),
           "down": random_weight(a.down_type, a.experts * a.d_model, a.ff, rng)}
    results = []
    for n_tokens in (int(t) for t in a.tokens.split(",")):
        if n_tokens == 1 and a.sweep_matvec:
            variants = [("matvec", tuple(int(v) for v in s.split("x"))) for s in a.sweep_matvec.split(",")]
        elif n_tokens > 1 and a.sweep_tiles:
            variants = [("tile", tuple(int(v) for v in s.split("x"))) for s in a.sweep_tiles.split(",")]
        else:
            variants = [(None, None)]
        for kind, shape in variants:
            _mm.MATVEC_SHAPE_OVERRIDE = shape if kind == "matvec" else None
            moe.GROUPED_TILE_OVERRIDE = shape if kind == "tile" else None
            try:
                r = await bench_tokens(dev, a, raw, n_tokens, rng)
            finally:
                _mm.MATVEC_SHAPE_OVERRIDE = None
                moe.GROUPED_TILE_OVERRIDE = None
            r["variant"] = "x".join(map(str, shape)) if shape else "default"
            if shape:
                print(f"  variant {r['variant']}", file=sys.stderr, flush=True)
            results.append(r)
    report = {
        "device": dev.info,
        "features": sorted(dev.features),
        "subgroups": dev.has_subgroups,
        "dims": {"experts": a.experts, "top_k": a.top_k, "d_model": a.d_model, "ff": a.ff,
                 "gate_up_type": a.gate_up_type, "down_type": a.down_type},
        "results": results,
    }
    text = json.dumps(report, indent=1)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    asyncio.run(main())
