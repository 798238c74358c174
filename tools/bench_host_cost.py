"""Host cost per decode step: native CPython (wgpu-py) against Pyodide in Chromium (the web app's worker).

A decode step's host work is: write the Step uniform (and Gemma 4's per-layer-embedding row), submit the
command buffer encoded during the previous step, encode the next one (every dispatch of the model and the
sampler), and read the 4-byte token back. Engine.step accounts for it in Engine.host_times (see HostTimes);
this tool runs the same greedy chat natively and in the browser and prints both, with the dispatch count.

Host cost depends on the graph (how many dispatches), not on tensor widths, so `--e2b-layout` writes a model
with Gemma 4 E2B's exact layer structure (35 layers, KV sharing, PLE, the same kernels per layer) at small
widths: the same dispatches per token as E2B, but quick to run on a software GPU.

    python tools/bench_host_cost.py --e2b-layout /tmp/e2b-layout.gguf     # write the model, once (~40 MB)
    python tools/bench_host_cost.py /tmp/e2b-layout.gguf                  # native, then Chromium
    python tools/bench_host_cost.py default --tokens 16                    # the real Gemma 3 270M
    python tools/bench_host_cost.py PATH --native-only | --browser-only

The browser half starts `rullama serve` for PATH in this process and drives the page with
tests/browser/driver.mjs (Debian's Chromium, WebGPU on SwiftShader); `tools/setup.sh` installs both.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "src"))

PROMPT = "Write a short story about a lighthouse keeper."


def write_e2b_layout(path: str) -> None:
    import make_synthetic_gguf as layout

    dims = replace(layout.E2B, n_vocab=2048, d_model=256, n_ff=512)
    size = layout.write_synthetic(path, dims, seed=0)
    print(f"wrote {path}: {size / 1e6:.1f} MB, E2B layer structure at d_model {dims.d_model}", file=sys.stderr)


async def native(model: str, tokens: int, ctx: int) -> dict:
    from rullama_py.engine import Engine, HostTimes
    from rullama_py.sampling import SamplerParams

    eng = await Engine.load(model, max_context=ctx, params=SamplerParams(temperature=0.0))
    msgs = [{"role": "user", "content": PROMPT}]
    async for _ in eng.chat(msgs, max_tokens=4):  # warm-up: the first runs validate and prepare the graphs
        pass
    eng.reset()
    eng.host_times = HostTimes()
    async for _ in eng.chat(msgs, max_tokens=tokens):
        pass
    return {"dispatches_per_token": len(eng.model.decode.graph) + len(eng.sample_graph), "device": eng.device.info,
            "tokens": eng.stats.generated_tokens, **eng.host_times.per_step_ms()}


def browser(model: str, tokens: int, ctx: int) -> dict:
    from rullama_py import assets, server

    path = assets.default_model_path() if model == "default" else Path(model)
    srv = server.make_server("127.0.0.1", 0, model_path=path)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    try:
        with tempfile.TemporaryDirectory() as art:
            conf = {"scenario": "real", "url": srv.url, "artifacts": art, "prompts": [PROMPT], "max_tokens": tokens,
                    "max_context": ctx, "timeout_s": 3000}
            env = dict(os.environ, XDG_RUNTIME_DIR=os.environ.get("XDG_RUNTIME_DIR", "/tmp"))
            proc = subprocess.run(["node", str(ROOT / "tests/browser/driver.mjs"), json.dumps(conf)],
                                  capture_output=True, text=True, env=env, timeout=3600)
    finally:
        srv.shutdown()
        srv.server_close()
    line = next((l for l in reversed(proc.stdout.splitlines()) if l.startswith("RESULT:")), None)
    res = json.loads(line[len("RESULT:"):]) if line else {"ok": False, "error": proc.stdout[-2000:] + proc.stderr[-2000:]}
    if not res["ok"]:
        raise SystemExit(f"browser run failed: {res['error']}")
    m, st = res["load"]["model"], res["r"]["stats"]
    return {"dispatches_per_token": m["dispatches_per_token"], "device": m["adapter"], "tokens": st["generated_tokens"],
            "load_seconds": m["seconds"], **st["host"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", nargs="?", help='GGUF path or "default" (the embedded Gemma 3 270M)')
    ap.add_argument("--e2b-layout", metavar="PATH", help="write the E2B-structured small model to PATH and exit")
    ap.add_argument("--tokens", type=int, default=32, help="decode steps measured (default 32)")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--native-only", action="store_true")
    ap.add_argument("--browser-only", action="store_true")
    a = ap.parse_args(argv)
    if a.e2b_layout:
        write_e2b_layout(a.e2b_layout)
        return 0
    if not a.model:
        ap.error("give a model (or --e2b-layout PATH)")
    out = {"model": a.model, "prompt": PROMPT}
    if not a.browser_only:
        out["native"] = asyncio.run(native(a.model, a.tokens, a.ctx))
        print(json.dumps(out["native"]), file=sys.stderr, flush=True)
    if not a.native_only:
        out["pyodide_chromium"] = browser(a.model, a.tokens, a.ctx)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
