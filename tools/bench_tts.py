"""Kokoro-82M speed natively (wgpu-py): real-time factor for ~5 s and ~30 s of speech, and where the time goes.

    python tools/bench_tts.py                       # the setup's F16 Kokoro GGUF
    python tools/bench_tts.py --random-weights      # Kokoro-82M's shapes with random weights (no file needed:
                                                    # the arithmetic is the same; durations are then fixed)
    python tools/bench_tts.py --json out.json

Each case is one sentence of T phoneme ids with an alignment of F frames (600 samples, 25 ms each): real
durations from the model with a file, a fixed realistic alignment (a 10-frame pause at each end, 4 frames per
phoneme) with random weights. Timed: the whole synthesis (text run, duration readback, prosody, decoder,
generator, audio readback) after a warm-up that records the graphs; the median of --reps runs. Per-graph times
and per-kernel totals (each dispatch timed alone: slower than the real run, for the split only) go to the JSON.
The bound: ~27 GMAC per second of audio (shared/reference: 92 % in the generator's convolutions), against the
device's measured f32 FMA rate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from rullama_py import gpu  # noqa: E402
from rullama_py.models import kokoro as K  # noqa: E402
from rullama_py.models import kokoro_gguf  # noqa: E402

CASES = {"5s": (50, 200), "30s": (300, 1200)}  # (phoneme tokens, frames): 200 frames = 5.0 s


def random_state(seed: int = 0) -> dict:
    """Kokoro-82M's tensors with random values of a plausible scale (LSTM and conv weights ~ 1/sqrt(fan-in))."""
    rng = np.random.default_rng(seed)
    state = {}
    for key, place in kokoro_gguf.kokoro_tensor_names().items():
        shape = place.shape
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        scale = 1.0 / np.sqrt(max(fan_in, 1)) if len(shape) > 1 else 0.1
        a = rng.standard_normal(shape).astype(np.float32) * scale
        if "alpha" in key:
            a = np.abs(a) + 0.5  # Snake's alpha divides
        state[key] = a
    return state


async def bench(args) -> dict:
    dev = await gpu.default_device()
    if args.random_weights:
        state = random_state()
        config = None  # Kokoro-82M v1.0's
        source = "random weights (Kokoro-82M shapes)"
    else:
        from rullama_py import assets
        from rullama_py.gguf_file import GGUFFile

        path = Path(args.model) if args.model else assets.kokoro_model_path("f16")
        gf = await GGUFFile.open(path)
        config = kokoro_gguf.read_kokoro_config(gf)
        state = await kokoro_gguf.load_state(gf)
        await gf.close()
        source = str(path.name)
    model = await K.Kokoro.load(dev, state, config)
    rng = np.random.default_rng(1)
    style = rng.standard_normal(256).astype(np.float32) * 0.1
    out = {"device": dev.info, "features": sorted(dev.features), "weights": source, "cases": {}}
    for name in args.cases.split(","):
        tokens, frames = CASES[name]
        ids = np.r_[0, rng.integers(16, 150, tokens - 2), 0].astype(np.uint32)
        dur = np.r_[10, np.full(tokens - 2, (frames - 20) // (tokens - 2)), 0]
        dur[-1] = frames - dur[:-1].sum()
        fixed = dur if args.random_weights else None
        audio, d = await model.synthesize(ids, style, durations=fixed)  # warm-up: records, compiles
        times = []
        for _ in range(args.reps):
            t0 = time.perf_counter()
            audio, d = await model.synthesize(ids, style, durations=fixed)
            times.append(time.perf_counter() - t0)
        seconds = len(audio) / K.SAMPLE_RATE
        best = float(np.median(times))
        run = model._run
        graphs = {}
        for gname in ("text_graph", "decoder_graph", "generator_graph"):
            gr = getattr(run, gname)
            t0 = time.perf_counter()
            dev.submit(gr)
            await dev.sync()
            graphs[gname] = {"seconds": round(time.perf_counter() - t0, 5), "dispatches": len(gr)}
        kernels = {}
        if args.profile:
            for gname in ("text_graph", "decoder_graph", "generator_graph"):
                kernels[gname] = {k: round(v, 5) for k, v in (await getattr(run, gname).profile()).items()}
        out["cases"][name] = {
            "tokens": int(len(ids)), "frames": int(d.sum()), "audio_seconds": round(seconds, 3),
            "synth_seconds_median": round(best, 5), "synth_seconds_runs": [round(t, 5) for t in times],
            "real_time_factor": round(seconds / best, 2), "graphs": graphs,
            "kernels_alone_s": kernels,
            "gmac_estimate": round(27.0 * seconds, 1),
            "achieved_gflops_estimate": round(2 * 27.0 * seconds / best, 1),
        }
        print(f"{name}: {seconds:.2f} s of audio in {best * 1000:.1f} ms = {seconds / best:.1f}x real time "
              f"(graphs: " + ", ".join(f"{k} {v['seconds'] * 1000:.1f} ms" for k, v in graphs.items()) + ")",
              flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="Kokoro GGUF (default: the setup's F16 file)")
    ap.add_argument("--random-weights", action="store_true")
    ap.add_argument("--cases", default="5s,30s")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--profile", action="store_true", help="also time each dispatch alone, per graph")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    out = asyncio.run(bench(args))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
