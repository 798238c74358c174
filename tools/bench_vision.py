"""Benchmark: Gemma 4's vision tower with E2B's real dimensions, rullama-py (WGSL through wgpu-py) against the
same tower in PyTorch on the same GPU in the same run, plus prefill of a prompt holding an image.

The weights are random in the real layout (16 layers, d 768, 12 heads x 64, FFN 3072, patch 16, a 10240-entry
position table, projection to 1536, F16 matrices as Ollama stores the tower, finite clamp bounds on every
linear): speed does not depend on the values. The tower is written as a llama.cpp-style mmproj GGUF and loaded
through the same code path as a real file.

    python3 tools/bench_vision.py --out bench.json                   # tower: ours vs PyTorch fp32 / bf16
    python3 tools/bench_vision.py --text /tmp/e2b.gguf --out b.json  # + prefill of a 280-token image prompt
    (/tmp/e2b.gguf from tools/make_synthetic_gguf.py: E2B's text layout, real-size vocabulary)

PyTorch is optional (skipped when it or CUDA is missing); its tower is written here in plain torch with the
same math as transformers' Gemma4VisionModel (scaled_dot_product_attention for the bidirectional attention).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src"))

E2B_VISION = dict(n_layers=16, d=768, heads=12, ffn=3072, patch=16, positions=10240, pool=3, text_d=1536)
LINEARS = ("attn_q", "attn_k", "attn_v", "attn_out", "ffn_gate", "ffn_up", "ffn_down")


def synthetic_weights(dims: dict, seed: int = 0) -> dict:
    """name -> float32 array in numpy (outermost-first) order, as the GGUF stores them."""
    rng = np.random.default_rng(seed)
    d, f, p, n = dims["d"], dims["ffn"], dims["patch"], dims["n_layers"]
    w = {
        "v.patch_embd.weight": rng.standard_normal((d, 3, p, p), np.float32) * 0.03,
        "v.position_embd.weight": rng.standard_normal((2, dims["positions"], d), np.float32) * 0.1,
        "mm.input_projection.weight": rng.standard_normal((dims["text_d"], d), np.float32) / math.sqrt(d),
    }
    for l in range(n):
        b = f"v.blk.{l}."
        for name, shape in (("attn_q", (d, d)), ("attn_k", (d, d)), ("attn_v", (d, d)), ("attn_out", (d, d)),
                            ("ffn_gate", (f, d)), ("ffn_up", (f, d)), ("ffn_down", (d, f))):
            w[b + name + ".weight"] = rng.standard_normal(shape, np.float32) / math.sqrt(shape[1])
            for s, v in (("input_min", -50.0), ("input_max", 50.0), ("output_min", -80.0), ("output_max", 80.0)):
                w[b + name + "." + s] = np.array([v], np.float32)
        for name in ("ln1", "attn_post_norm", "ln2", "ffn_post_norm"):
            w[b + name + ".weight"] = (0.5 + rng.random(d)).astype(np.float32)
        hd = d // dims["heads"]
        w[b + "attn_q_norm.weight"] = (0.5 + rng.random(hd)).astype(np.float32)
        w[b + "attn_k_norm.weight"] = (0.5 + rng.random(hd)).astype(np.float32)
    return w


def write_mmproj(path: str, dims: dict, w: dict) -> None:
    from gguf import GGMLQuantizationType as Q, GGUFWriter

    gw = GGUFWriter(path, "clip")
    gw.add_bool("clip.has_vision_encoder", True)
    gw.add_string("clip.projector_type", "gemma4v")
    for key, value in (("block_count", dims["n_layers"]), ("embedding_length", dims["d"]),
                       ("attention.head_count", dims["heads"]), ("feed_forward_length", dims["ffn"]),
                       ("patch_size", dims["patch"]), ("projector.scale_factor", dims["pool"]), ("image_size", 224)):
        gw.add_uint32("clip.vision." + key, value)
    gw.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-6)
    for name, a in w.items():
        if a.ndim >= 2 and name != "v.position_embd.weight":
            gw.add_tensor(name, a.astype(np.float16), raw_dtype=Q.F16)
        else:
            gw.add_tensor(name, a)
    gw.write_header_to_file()
    gw.write_kv_data_to_file()
    gw.write_tensors_to_file()
    gw.close()


def photo(width: int, height: int) -> bytes:
    """A PNG with some structure (the tower's speed does not depend on it)."""
    from PIL import Image

    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([(x * 255 // width), (y * 255 // height), ((x + y) * 7) % 256], -1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return buf.getvalue()


async def bench_ours(mmproj: str, images: dict, repeats: int, blocks=()) -> dict:
    from rullama_py.gguf_file import GGUFFile
    from rullama_py.gpu import default_device
    from rullama_py.models.gemma_vision import GemmaVision

    dev = await default_device()
    gf = await GGUFFile.open(mmproj)
    t0 = time.perf_counter()
    tower = await GemmaVision.load(gf, dev, text_d_model=E2B_VISION["text_d"])
    out = {"device": dev.info, "load_s": time.perf_counter() - t0, "images": {}}
    for label, (img, budget) in images.items():
        t0 = time.perf_counter()
        await tower.run_for(img.patches.shape[0], budget)
        record_s = time.perf_counter() - t0
        runs = []
        for stepwise in (False, True):  # one submit, or per layer with a wait (progress and cancel)
            times = []
            for i in range(repeats + 2):
                await dev.sync()
                t0 = time.perf_counter()
                await tower.encode(img, budget=budget, on_layer=(lambda d, t: None) if stepwise else None)
                await dev.sync()
                if i >= 2:
                    times.append(time.perf_counter() - t0)
            runs.append(times)
        graphs = (await tower.run_for(img.patches.shape[0], budget)).graphs
        # Seconds per kernel in one layer (each dispatch timed alone: submit + wait, so a few us of overhead each)
        profile = {k: round(1e3 * v, 3) for k, v in (await graphs[1].profile()).items()}
        out["images"][label] = {"layer_profile_ms": profile,
            "patches": int(img.patches.shape[0]), "soft_tokens": img.n_soft, "record_and_compile_s": record_s,
            "encode_ms_median": 1e3 * float(np.median(runs[0])), "encode_ms_min": 1e3 * float(min(runs[0])),
            "encode_ms_per_layer_sync_median": 1e3 * float(np.median(runs[1])),
            "dispatches": sum(len(g) for g in graphs),
        }
    if blocks:  # the tiled matmul's register blocks, each forced in turn (the graphs are recorded again)
        mm = sys.modules["rullama_py.ops.matmul"]
        out["matmul_blocks_ms"] = {}
        for block in blocks:
            mm.MATMUL_BLOCK_OVERRIDE = block
            tower._runs.clear()
            for label, (img, budget) in images.items():
                times = []
                for i in range(repeats + 2):
                    await dev.sync()
                    t0 = time.perf_counter()
                    await tower.encode(img, budget=budget)
                    await dev.sync()
                    if i >= 2:
                        times.append(time.perf_counter() - t0)
                out["matmul_blocks_ms"].setdefault(f"{block[0]}x{block[1]}", {})[label] = 1e3 * float(np.median(times))
        mm.MATMUL_BLOCK_OVERRIDE = None
    return out


def bench_torch(w: dict, dims: dict, images: dict, repeats: int) -> dict:
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return {"skipped": "no torch"}
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA"}
    dev = torch.device("cuda")
    d, hd, nh, k = dims["d"], dims["d"] // dims["heads"], dims["heads"], dims["pool"]
    out = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(0)}

    def rms(x, wt=None, eps=1e-6):
        y = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)
        return (y * wt if wt is not None else y).to(x.dtype)

    def rope2d(x, px, py):  # x [N, nh, hd]; axial NeoX over halves
        half, q = hd // 2, hd // 4
        inv = 1.0 / (100.0 ** (torch.arange(0, half, 2, device=dev, dtype=torch.float32) / half))
        outs = []
        for part, pos in ((x[..., :half], px), (x[..., half:], py)):
            ang = pos[:, None].float() * inv[None]
            cos, sin = torch.cat([ang.cos(), ang.cos()], -1)[:, None].to(x.dtype), torch.cat([ang.sin(), ang.sin()], -1)[:, None].to(x.dtype)
            rot = torch.cat([-part[..., q:], part[..., :q]], -1)
            outs.append(part * cos + rot * sin)
        return torch.cat(outs, -1)

    for dtype_name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        W = {n: torch.tensor(a, device=dev).to(dtype) for n, a in w.items()}
        Wp = W["v.patch_embd.weight"].reshape(d, -1)
        table = W["v.position_embd.weight"]
        res = {}
        for label, (img, _) in images.items():
            x_in = torch.tensor(img.patches, device=dev).to(dtype)
            px = torch.tensor(img.positions[:, 0].astype(np.int64), device=dev)
            py = torch.tensor(img.positions[:, 1].astype(np.int64), device=dev)
            pw, ph = img.grid

            def lin(x, name):
                wt = W[name + ".weight"]
                if name + ".input_min" in W:
                    x = x.clamp(W[name + ".input_min"], W[name + ".input_max"])
                y = x @ wt.T
                if name + ".output_min" in W:
                    y = y.clamp(W[name + ".output_min"], W[name + ".output_max"])
                return y

            def tower():
                h = x_in @ Wp.T + table[0][px] + table[1][py]
                n = h.shape[0]
                for l in range(dims["n_layers"]):
                    b = f"v.blk.{l}."
                    x = rms(h, W[b + "ln1.weight"])
                    q = rope2d(rms(lin(x, b + "attn_q").view(n, nh, hd), W[b + "attn_q_norm.weight"]), px, py)
                    kk = rope2d(rms(lin(x, b + "attn_k").view(n, nh, hd), W[b + "attn_k_norm.weight"]), px, py)
                    v = rms(lin(x, b + "attn_v").view(n, nh, hd))
                    a = F.scaled_dot_product_attention(q.transpose(0, 1), kk.transpose(0, 1), v.transpose(0, 1), scale=1.0)
                    h = h + rms(lin(a.transpose(0, 1).reshape(n, d), b + "attn_out"), W[b + "attn_post_norm.weight"])
                    x = rms(h, W[b + "ln2.weight"])
                    g = F.gelu(lin(x, b + "ffn_gate"), approximate="tanh") * lin(x, b + "ffn_up")
                    h = h + rms(lin(g, b + "ffn_down"), W[b + "ffn_post_norm.weight"])
                pooled = h.float().view(ph // k, k, pw // k, k, d).mean((1, 3)).reshape(-1, d) * math.sqrt(d)
                return rms(pooled).to(dtype) @ W["mm.input_projection.weight"].T

            with torch.no_grad():
                for _ in range(3):
                    tower()
                torch.cuda.synchronize()
                times = []
                for _ in range(repeats):
                    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    s.record()
                    tower()
                    e.record()
                    torch.cuda.synchronize()
                    times.append(s.elapsed_time(e))
            res[label] = {"encode_ms_median": float(np.median(times)), "encode_ms_min": float(min(times))}
        out[dtype_name] = res
    return out


async def bench_prefill(text: str, mmproj: str, png: bytes, repeats: int) -> dict:
    from rullama_py.engine import Engine
    from rullama_py.sampling import SamplerParams

    eng = await Engine.load(text, mmproj=mmproj, max_context=1024, params=SamplerParams(temperature=0.0))
    msgs = [{"role": "user", "content": [{"type": "image", "image": png},
                                         {"type": "text", "text": "Describe this image in one sentence."}]}]
    res = []
    for _ in range(repeats + 1):
        eng.reset()
        async for _tok in eng.chat(msgs, max_tokens=1):
            pass
        res.append((eng.stats.prompt_tokens, eng.stats.prompt_seconds))
    n, secs = res[-1][0], float(np.median([s for _, s in res[1:]]))
    return {"prompt_tokens": n, "prompt_seconds_median": secs, "prefill_tok_s": n / secs,
            "note": "prompt_seconds includes preparing the image (Pillow) and the tower's encode"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--text", help="an E2B-layout text GGUF, to also measure prefill of an image prompt")
    ap.add_argument("--out", help="write the JSON here too")
    ap.add_argument("--layers", type=int, default=E2B_VISION["n_layers"], help="fewer layers: a quick dry run")
    ap.add_argument("--budgets", default="280,1120", help="soft-token budgets to encode (of 280 and 1120)")
    ap.add_argument("--matmul-blocks", default="", help="also time these tiled-matmul register blocks, e.g. 4x4,8x8")
    args = ap.parse_args()
    E2B_VISION["n_layers"] = args.layers
    from rullama_py import media

    images = {}
    for label, (wd, ht, budget) in {"280 tokens (640x480 photo)": (640, 480, 280),
                                    "1120 tokens (1600x1200 photo)": (1600, 1200, 1120)}.items():
        if str(budget) not in args.budgets.split(","):
            continue
        images[label] = (media.prepare_image(photo(wd, ht), budget=budget), budget)
    blocks = [tuple(int(v) for v in b.split("x")) for b in args.matmul_blocks.split(",") if b]
    w = synthetic_weights(E2B_VISION)
    with tempfile.TemporaryDirectory() as tmp:
        mm = os.path.join(tmp, "e2b-vision-synthetic.mmproj.gguf")
        write_mmproj(mm, E2B_VISION, w)
        result = {"command": " ".join(sys.argv), "dims": E2B_VISION,
                  "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                           text=True).stdout.strip(),
                  "rullama": asyncio.run(bench_ours(mm, images, args.repeats, blocks)),
                  "pytorch": bench_torch(w, E2B_VISION, images, args.repeats)}
        if args.text:
            result["prefill"] = asyncio.run(bench_prefill(args.text, mm, photo(640, 480), 3))
    for label in images:
        ours = result["rullama"]["images"][label]["encode_ms_median"]
        for dt in ("fp32", "bf16"):
            theirs = result["pytorch"].get(dt, {}).get(label, {}).get("encode_ms_median")
            if theirs:
                result["rullama"]["images"][label][f"ratio_vs_torch_{dt}"] = ours / theirs
    text = json.dumps(result, indent=1, default=str)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
