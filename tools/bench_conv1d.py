"""GFLOP/s of ops.conv1d and ops.conv_transpose1d on Kokoro's real shapes (native wgpu).

Kokoro-82M's iSTFTNet generator spends ~92 % of the model's ~27 GMAC per second of audio in Conv1d layers: the
resblocks and noise resblocks at 256 channels x 800 rows/s (20 F, F = 40 frames/s) with kernels 3 / 7 / 11 and
dilations 1 / 3 / 5, and at 128 channels x 4800 rows/s (120 F). This times one dispatch of each shape for a
sentence of --seconds of audio, recorded for exactly that length (so every row is real), and prints GFLOP/s
(2 multiply-adds per MAC) and milliseconds, plus the generator's total: each resblock shape weighted by how
often Kokoro runs it.

    python tools/bench_conv1d.py                    # 5 s of audio, the default tile
    python tools/bench_conv1d.py --seconds 1 --reps 1     # lavapipe: a CPU does ~1 GFLOP/s
    python tools/bench_conv1d.py --sweep            # every tile shape (RPT x CPT) on each shape
    python tools/bench_conv1d.py --only gen         # the generator's resblock convs only
    python tools/bench_conv1d.py --torch            # and torch's cuDNN conv on the same shapes (fp32, TF32 off)

RULLAMA_DISABLE_FEATURES=subgroups,shader-f16 makes no difference: the conv kernels use neither.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from rullama_py import gpu, ops  # noqa: E402
from rullama_py.ops import conv as conv_mod  # noqa: E402


def shapes(seconds: float) -> list[dict]:
    """Kokoro's convs for `seconds` of audio: F = 40 frames/s; generator stage 0 at 20 F rows, stage 1 at 120 F
    (+ 1 after the reflection pad). `count`: how many times one sentence runs the shape (for the total)."""
    f = int(round(40 * seconds))
    out = []
    # Generator resblocks: 3 per stage (kernels 3, 7, 11), each 3 x (dilated conv, conv of dilation 1); the noise
    # resblock of stage 0 has kernel 7 and of stage 1 kernel 11 (same dilations).
    for stage, (ch, rows) in enumerate(((256, 20 * f), (128, 120 * f + 1))):
        noise_k = 7 if stage == 0 else 11
        for k in (3, 7, 11):
            blocks = 2 if k == noise_k else 1
            for d in (1, 3, 5):
                # Per block: convs1 at dilations 1, 3, 5 and convs2 (three) at dilation 1.
                out.append(dict(group="gen", name=f"resblock {ch}ch k{k} d{d}", c_in=ch, c_out=ch, kernel=k,
                                dilation=d, padding=d * (k - 1) // 2, rows=rows, count=blocks * (4 if d == 1 else 1),
                                act="snake"))
    out.append(dict(group="gen", name="conv_post 128->22 k7", c_in=128, c_out=22, kernel=7, dilation=1, padding=3,
                    rows=120 * f + 1, count=1, act="leaky"))
    out.append(dict(group="gen", name="noise_conv 22->256 k12 s6", c_in=22, c_out=256, kernel=12, stride=6,
                    padding=3, rows=120 * f + 1, count=1))
    out.append(dict(group="gen", name="ups0 ConvT 512->256 k20 s10", transposed=True, c_in=512, c_out=256,
                    kernel=20, stride=10, padding=5, rows=2 * f, count=1, act="leaky"))
    out.append(dict(group="gen", name="ups1 ConvT 256->128 k12 s6 +pad", transposed=True, c_in=256, c_out=128,
                    kernel=12, stride=6, padding=3, reflect=1, rows=20 * f, count=1, act="leaky"))
    # Decoder: encode AdainResBlk1d(514 -> 1024) and decode.0-2 (1090 -> 1024) at F rows, decode.3 (1090 -> 512,
    # upsampling) to 2F rows; text encoder convs over the tokens (about 12 a second of audio).
    out.append(dict(group="dec", name="encode conv1 514->1024 k3", c_in=514, c_out=1024, kernel=3, padding=1,
                    rows=f, count=1, act="leaky"))
    out.append(dict(group="dec", name="decode conv1 1090->1024 k3", c_in=1090, c_out=1024, kernel=3, padding=1,
                    rows=f, count=3, act="leaky"))
    out.append(dict(group="dec", name="decode conv2 1024->1024 k3", c_in=1024, c_out=1024, kernel=3, padding=1,
                    rows=f, count=4, act="leaky"))
    out.append(dict(group="dec", name="shortcut 1x1 1090->1024", c_in=1090, c_out=1024, kernel=1, rows=f, count=3,
                    accumulate=True))
    out.append(dict(group="dec", name="pool depthwise ConvT 1090 k3 s2", transposed=True, groups=1090, c_in=1090,
                    c_out=1090, kernel=3, stride=2, padding=1, output_padding=1, rows=f, count=1, act="leaky"))
    out.append(dict(group="dec", name="decode.3 conv1 1090->512 k3", c_in=1090, c_out=512, kernel=3, padding=1,
                    rows=2 * f, count=1, act="leaky"))
    out.append(dict(group="dec", name="decode.3 conv2 512->512 k3", c_in=512, c_out=512, kernel=3, padding=1,
                    rows=2 * f, count=1, act="leaky"))
    out.append(dict(group="dec", name="shortcut 1x1 1090->512 up2", c_in=1090, c_out=512, kernel=1, upsample=2,
                    rows=f, count=1, accumulate=True))
    out.append(dict(group="dec", name="text conv 512->512 k5", c_in=512, c_out=512, kernel=5, padding=2,
                    rows=max(16, int(12 * seconds)), count=3, act="leaky"))
    return out


async def bench_one(dev, s: dict, reps: int) -> dict:
    rng = np.random.default_rng(0)
    tr = s.get("transposed", False)
    rows, c_in, c_out, k = s["rows"], s["c_in"], s["c_out"], s["kernel"]
    stride, up = s.get("stride", 1), s.get("upsample", 1)
    groups = s.get("groups", 1)
    x = dev.upload(rng.standard_normal((rows, c_in)).astype(np.float32))
    wshape = (c_in, c_out // groups, k) if tr else (c_out, c_in, k)
    w = dev.upload((rng.standard_normal(wshape) / np.sqrt(c_in * k)).astype(np.float32))
    b = dev.upload(rng.standard_normal(c_out).astype(np.float32))
    aff = dev.upload(rng.standard_normal(2 * c_in).astype(np.float32))
    alpha = dev.upload(rng.uniform(0.5, 1.5, c_in).astype(np.float32))
    step = dev.tensor((8,), "uint32", "step", usage=gpu.UNIFORM)
    dev.write(step.buffer, np.array([0, rows, rows, 0, 0, 0, 0, 0], np.uint32))
    pad = s.get("padding", 0)
    if tr:
        n_out = (rows - 1) * stride - 2 * pad + k + s.get("output_padding", 0) + s.get("reflect", 0)
        macs = rows * c_in * (c_out // groups) * k
    else:
        n_out = (rows * up + 2 * pad - s.get("dilation", 1) * (k - 1) - 1) // stride + 1
        macs = n_out * c_out * c_in * k
    out = dev.tensor((n_out, c_out))
    g = dev.graph()
    if tr:
        await ops.conv_transpose1d(g, x, w, b, out, step, c_in=c_in, c_out=c_out, kernel=k, stride=stride,
                                   padding=pad, output_padding=s.get("output_padding", 0), groups=groups,
                                   in_affine=aff, in_act=s.get("act"), slope=0.1, reflect_pad_left=s.get("reflect", 0))
    else:
        await ops.conv1d(g, x, w, b, out, step, c_in=c_in, c_out=c_out, kernel=k, stride=stride,
                         dilation=s.get("dilation", 1), padding=pad, upsample=up, in_affine=aff,
                         in_act=s.get("act"), slope=0.1, alpha=alpha, accumulate=s.get("accumulate", False))
    kernel = g.dispatches[0].kernel
    dev.submit(g)  # warm-up (and the first run's validation)
    await dev.sync()
    timed = gpu.Graph(dev, g.dispatches * reps)  # one submit of `reps` dispatches: no per-submit overhead
    t0 = time.perf_counter()
    dev.submit(timed)
    await dev.sync()
    dt = (time.perf_counter() - t0) / reps
    return dict(name=s["name"], kernel=kernel, rows=rows, macs=macs, ms=dt * 1e3, gflops=2 * macs / dt / 1e9)


def bench_torch(s: dict, reps: int) -> float | None:
    """Milliseconds of torch's own conv (cuDNN, fp32 with TF32 off) on the same shape, batch 1, channels first;
    None without torch or CUDA. Only the convolution: no input transform, no accumulate."""
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    dev = torch.device("cuda")
    tr, groups = s.get("transposed", False), s.get("groups", 1)
    c_in, c_out, k = s["c_in"], s["c_out"], s["kernel"]
    x = torch.randn(1, c_in, s["rows"] * s.get("upsample", 1), device=dev)
    w = torch.randn(*((c_in, c_out // groups, k) if tr else (c_out, c_in, k)), device=dev)
    if tr:
        def run():
            return F.conv_transpose1d(x, w, stride=s["stride"], padding=s.get("padding", 0),
                                      output_padding=s.get("output_padding", 0), groups=groups)
    else:
        def run():
            return F.conv1d(x, w, stride=s.get("stride", 1), padding=s.get("padding", 0),
                            dilation=s.get("dilation", 1))
    with torch.no_grad():
        run()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            run()
        end.record()
        torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0, help="audio length the shapes are sized for")
    ap.add_argument("--reps", type=int, default=20, help="timed dispatches per shape, in one submit (after a warm-up)")
    ap.add_argument("--only", choices=("gen", "dec"), help="only the generator's or the decoder's shapes")
    ap.add_argument("--match", help="only shapes whose name contains this")
    ap.add_argument("--sweep", action="store_true", help="time every tile shape (RPT, CPT) and the direct path")
    ap.add_argument("--tile", help="force RPT,CPT (e.g. 8,4) or 'direct'")
    ap.add_argument("--torch", action="store_true", help="also time torch's conv on CUDA (fp32, TF32 off), if present")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()
    dev = await gpu.default_device()
    print(f"device: {dev.info['device']} ({dev.info['description']})", flush=True)
    tiles = [None]
    if args.sweep:
        tiles = [(r, c) for c in (4, 8) for r in (1, 2, 4, 8)] + ["direct"]
    elif args.tile:
        tiles = ["direct" if args.tile == "direct" else tuple(int(v) for v in args.tile.split(","))]
    results = []
    total = {}
    for s in shapes(args.seconds):
        if (args.only and s["group"] != args.only) or (args.match and args.match not in s["name"]):
            continue
        for tile in tiles:
            conv_mod.CONV1D_TILE_OVERRIDE = tile
            try:
                r = await bench_one(dev, s, args.reps)
            except Exception as e:  # a tile that does not fit this shape
                print(f"{s['name']:36s} tile {tile}: {type(e).__name__}: {str(e)[:80]}", flush=True)
                continue
            finally:
                conv_mod.CONV1D_TILE_OVERRIDE = None
            r["tile"] = tile if tile is not None else "default"
            r["count"] = s["count"]
            theirs = ""
            if args.torch and tile is tiles[0]:
                r["torch_ms"] = bench_torch(s, args.reps)
                if r["torch_ms"] is not None:
                    theirs = f"   torch {r['torch_ms']:8.3f} ms {2 * r['macs'] / r['torch_ms'] / 1e6:9.1f} GFLOP/s"
            results.append(r)
            print(f"{s['name']:36s} {str(r['tile']):9s} {r['kernel']:17s} {r['rows']:6d} rows "
                  f"{r['macs'] / 1e9:7.3f} GMAC {r['ms']:9.3f} ms {r['gflops']:9.1f} GFLOP/s{theirs}", flush=True)
            best = total.get(s["name"])
            if best is None or r["ms"] < best["ms"]:
                total[s["name"]] = r
    if total:
        ms = sum(r["ms"] * r["count"] for r in total.values())
        macs = sum(r["macs"] * r["count"] for r in total.values())
        best = ", best tile" if args.sweep else ""
        print(f"total (each shape x its count per sentence{best}): {macs / 1e9:.2f} GMAC in {ms:.1f} ms = "
              f"{2 * macs / ms / 1e6:.1f} GFLOP/s for {args.seconds:g} s of audio")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(device=dev.info, seconds=args.seconds, results=results), indent=1))


if __name__ == "__main__":
    asyncio.run(main())
