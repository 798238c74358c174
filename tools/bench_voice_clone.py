"""Voice-cloning speed natively (wgpu-py): training steps per second for a ~2-second training sentence.

    python tools/bench_voice_clone.py                         # the setup's F16 Kokoro GGUF
    python tools/bench_voice_clone.py --kokoro FILE --steps 100 --json out.json

The target is a stock voice reading another text (so the climb has somewhere to go); the trainer starts from
another stock voice. Timed: `VoiceTrainer.step()` after `prepare()` (which records the graphs and compiles the
kernels), for population 1 and 4 and for training the timbre half and the whole voice; the median step time and
steps (and candidates) per second. One candidate is one synthesis of the training sentence by the decoder and the
generator (and the text run too when the whole voice is trained), the signature and the loss on the GPU; one step
reads back `population` floats.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from rullama_py import gpu, media  # noqa: E402
from rullama_py.speaker import Speaker  # noqa: E402
from rullama_py.voice import VoiceTrainer  # noqa: E402

TRAIN_TEXT = "The quick brown fox jumps over the lazy dog."  # about 2 s in most voices
TARGET_TEXT = ("A warm voice reads a short story about the sea, the wind and the stars at night. "
               "It pauses, then goes on, slowly and clearly.")


async def bench(args) -> dict:
    dev = await gpu.default_device()
    speaker = await Speaker.load(args.kokoro, device=dev)
    target_voice, start_voice = args.target_voice, args.start_voice
    pcm = await speaker.say(TARGET_TEXT, voice=target_voice, seed=1)
    target = media.prepare_voice_target(pcm, 24000, target_voice)
    out = {"device": dev.info, "kokoro": Path(str(args.kokoro)).name if args.kokoro else "setup F16",
           "train_text": TRAIN_TEXT,
           "target": target_voice, "start": start_voice, "cases": []}
    for train in ("timbre", "all"):
        for population in (1, 4):
            tr = VoiceTrainer(speaker, target, texts=[TRAIN_TEXT], start=start_voice, train=train,
                              population=population, seed=0)
            t0 = time.perf_counter()
            info = await tr.prepare()
            prep = time.perf_counter() - t0
            await tr.step()  # warm
            times = []
            for _ in range(args.steps):
                s = await tr.step()
                times.append(s.seconds)
            med = statistics.median(times)
            frames = int(tr._durations.sum())
            case = dict(train=train, population=population, sentence_seconds=frames * 600 / 24000,
                        prepare_seconds=round(prep, 3), step_ms_median=round(med * 1e3, 3),
                        steps_per_second=round(1 / med, 2), candidates_per_second=round(population / med, 2),
                        loss_start=info.start_loss, loss_end=tr.best_loss, steps=args.steps + 1)
            out["cases"].append(case)
            print(json.dumps(case), flush=True)
            tr.release()
    speaker.release()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kokoro", default=None, help="Kokoro GGUF (default: the setup's F16 file)")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--target-voice", default="bm_george")
    ap.add_argument("--start-voice", default="af_heart")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()
    out = asyncio.run(bench(args))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
