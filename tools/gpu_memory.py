"""GPU memory per memory mode: what a model holds after loading at each context size, and what its towers add
during and after a turn with an image or a clip, kept, freed after the turn, or never loaded (text only).

    .venv/bin/python tools/gpu_memory.py tests/fixtures/gemma4_tiny_vision_f32.gguf \
        --image tests/fixtures/images/landscape.jpg --image-tokens 70 --ctx 256 2048
    .venv/bin/python tools/gpu_memory.py tests/fixtures/gemma4_tiny_audio_f32.gguf \
        --audio tests/fixtures/audio/tower_yes.wav --ctx 256
    .venv/bin/python tools/gpu_memory.py default --ctx 512 2048 8192 32768     # the real Gemma 3 270M

The figures are gpu.Device's count of the bytes its buffers hold (allocated_bytes, peak_bytes), so they are the
same on any GPU for the same file and settings. Each row runs on a device of its own, opened for it: devices
keep some scratch (attention's split partials, sized by the context), and a fresh one makes each row the
model's alone. Prints a Markdown table (MB = 10^6 bytes) and, with --json, writes the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from rullama_py import gpu, ops  # noqa: E402
from rullama_py.engine import Engine, NoTowerError  # noqa: E402
from rullama_py.sampling import SamplerParams  # noqa: E402


async def settled(dev: gpu.Device) -> int:
    """The allocated bytes once Python dropped what it no longer holds (a finished await's result is freed
    when the task next yields; cycles when collected)."""
    await asyncio.sleep(0)
    gc.collect()
    return dev.allocated_bytes


async def _turn(eng: Engine, parts: list) -> dict:
    """One user turn with `parts` (media, then text), from an empty context: the peak during it and what is
    held after it, and the reply's token ids."""
    eng.reset()
    eng.device.reset_peak()
    msg = {"role": "user", "content": parts + [{"type": "text", "text": "What is this?"}]}
    ids = [t.id async for t in eng.chat([msg], max_tokens=2) if t.id >= 0]
    after = await settled(eng.device)
    return {"peak": eng.device.peak_bytes, "after": after, "ids": ids}


async def _row(a, ctx: int, mode: str, parts: list) -> dict:
    dev = await gpu.Device.open()
    try:
        await dev.sync()  # its small buffer exists from now on, not from the first tower layer
        base = await settled(dev)
        t0 = time.perf_counter()
        kw = {"mmproj": a.mmproj} if a.mmproj else {}
        eng = await Engine.load(a.model, device=dev, max_context=ctx, params=SamplerParams(temperature=0.0),
                                text_only=mode == "text only", release_towers_after_turn=mode == "towers freed",
                                kv_cache_type=a.kv_cache_type, **kw)
        eng.image_tokens = a.image_tokens
        row = {"ctx": ctx, "mode": mode, "load_seconds": time.perf_counter() - t0,
               "loaded": await settled(dev) - base,
               "kv_cache": eng.model.kv_cache_bytes}
        if parts:
            try:
                turn = await _turn(eng, parts)
                row.update(turn_peak=turn["peak"] - base, after_turn=turn["after"] - base, ids=turn["ids"])
            except NoTowerError as e:
                row.update(turn_peak=None, after_turn=await settled(dev) - base, refused=str(e))
        del eng
        return row
    finally:
        gc.collect()
        dev.destroy()


def _mb(n) -> str:
    return "-" if n is None else f"{n / 1e6:.2f}"


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help='a GGUF path, an Ollama name or "default" (the embedded Gemma 3 270M)')
    ap.add_argument("--mmproj", help="a llama.cpp projector for the towers")
    ap.add_argument("--ctx", type=int, nargs="+", default=[2048], help="context sizes (the first one for the modes)")
    ap.add_argument("--image", action="append", default=[], help="an image for the turn (repeatable)")
    ap.add_argument("--audio", action="append", default=[], help="a WAV clip for the turn (repeatable)")
    ap.add_argument("--image-tokens", type=int, default=280)
    ap.add_argument("--kv-cache-type", choices=ops.KV_CACHE_TYPES, default="f16", help="the KV cache's format")
    ap.add_argument("--json", help="write the rows here too")
    a = ap.parse_args()
    parts = [{"type": "image", "image": Path(p).read_bytes()} for p in a.image]
    parts += [{"type": "audio", "audio": Path(p).read_bytes()} for p in a.audio]
    rows = [await _row(a, ctx, "towers kept" if parts else "default", parts) for ctx in a.ctx]
    if parts:
        rows += [await _row(a, a.ctx[0], mode, parts) for mode in ("towers freed", "text only")]
    dev_info = (await gpu.default_device()).info
    print(f"{a.model} on {dev_info['vendor']} {dev_info['device']}, KV cache {a.kv_cache_type}; MB = 10^6 bytes\n")
    print("| context | mode | after load | of it KV cache | peak during a turn | after the turn |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        after = _mb(r.get("after_turn")) + (" (refused)" if r.get("refused") else "")
        print(f"| {r['ctx']} | {r['mode']} | {_mb(r['loaded'])} | {_mb(r['kv_cache'])} | {_mb(r.get('turn_peak'))} "
              f"| {after} |")
    same = {tuple(r["ids"]) for r in rows if r.get("ids")}
    if parts:
        print(f"\nreplies (token ids) of the turns: {'all the same' if len(same) == 1 else sorted(same)}")
    if a.json:
        Path(a.json).write_text(json.dumps({"model": a.model, "adapter": dev_info, "kv_cache_type": a.kv_cache_type, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
