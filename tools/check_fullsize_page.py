"""Full-size Gemma 4 E2B in the web app: loaded over HTTP Range and from the browser's OPFS copy, greedy tokens
compared with native, the worker's wasm heap and the page's and worker's JS heaps measured.

What it checks (docs/PERFORMANCE.md, "Full-size Gemma 4 E2B in the page"):
- the page (headless Chromium, WebGPU on SwiftShader or a real GPU) loads the 6.2 GB E2B-layout file served by
  `rullama serve` over HTTP Range, then again from the OPFS copy ("keep a copy in this browser"), and decodes
  the same greedy token ids as native CPython (Engine, wgpu-py) for the same chat prompt;
- the peak wasm heap (Pyodide's WebAssembly.Memory) and JS heaps (page and worker) stay under --heap-goal-mb;
- the per-layer-embedding (PLE) row wait per decode step from OPFS (Engine.host_times' ple_read) stays under
  --ple-goal-ms, and the prefill's PLE rows (read for the whole prompt) are timed too;
- the page shows the download size and the time left while it downloads (the progress texts are recorded).

The model is the synthetic file of tools/make_synthetic_gguf.py (E2B's exact layout, random weights; its 4.7 GB
BF16 PLE table stays in the file, one row read per new token). On a software GPU a decode step of E2B takes
many seconds, so the default is a short prompt and 3 tokens:

    python tools/check_fullsize_page.py --write /tmp/e2b-full.gguf      # write the 6.2 GB file first
    python tools/check_fullsize_page.py /tmp/e2b-full.gguf              # native, then Chromium; JSON on stdout
    python tools/check_fullsize_page.py /tmp/e2b-full.gguf --browser-only --skip-opfs

Needs Debian's Chromium and web/node_modules (tools/setup.sh). The browser half is
tools/check_fullsize_page.mjs; its OPFS copy lives in a throw-away Chromium profile (as large as the model).
Exit status 1 when a check fails (tokens differ, a heap or the PLE goal exceeded, no size or time left shown).
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
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "src"))

PROMPT = "Hi"
CONTEXT = 2048  # the page's default
PREFILL_CHUNK = 64  # the page's default


async def native(model: str, prompt: str, tokens: int) -> dict:
    """Greedy chat reply ids natively (the same request as the page's: context, chunk, temperature 0)."""
    from rullama_py.engine import Engine, HostTimes
    from rullama_py.sampling import SamplerParams

    t0 = time.perf_counter()
    eng = await Engine.load(model, max_context=CONTEXT, prefill_chunk=PREFILL_CHUNK,
                            params=SamplerParams(temperature=0.0))
    load_s = time.perf_counter() - t0
    eng.host_times = HostTimes()
    ids = [t.id async for t in eng.chat([{"role": "user", "content": prompt}], max_tokens=tokens) if t.id >= 0]
    return {"ids": ids, "load_seconds": load_s, "prompt_tokens": eng.stats.prompt_tokens,
            "prompt_seconds": eng.stats.prompt_seconds, "generate_seconds": eng.stats.generate_seconds,
            "device": eng.device.info, "host": eng.host_times.per_step_ms()}


async def ple_layout(model: str) -> dict:
    """Where the PLE table lies in the file: {offset, row_bytes, rows} for the page's row-read benchmark."""
    from rullama_py.gguf_file import GGUFFile

    async with await GGUFFile.open(model) as gf:
        info = gf.info("per_layer_token_embd.weight")
        return {"offset": info.offset, "row_bytes": info.row_bytes, "rows": info.shape[0]}


def browser(model: str, prompt: str, tokens: int, skip_opfs: bool, timeout_s: int, http_chat: bool = True,
            http: bool = True, opfs_chat: bool = True, ple_bench: int = 0) -> dict:
    """Serve `model` with `rullama serve`'s server in this process and drive the page with the .mjs driver."""
    from rullama_py import server

    srv = server.make_server("127.0.0.1", 0, model_path=Path(model))
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    try:
        with tempfile.TemporaryDirectory() as art:
            conf = {"url": srv.url, "artifacts": art, "prompt": prompt, "max_tokens": tokens, "skip_opfs": skip_opfs,
                    "http_chat": http_chat, "http": http, "opfs_chat": opfs_chat, "timeout_s": timeout_s}
            if ple_bench:
                conf["ple_bench"] = {**asyncio.run(ple_layout(model)), "n": ple_bench}
            env = dict(os.environ, XDG_RUNTIME_DIR=os.environ.get("XDG_RUNTIME_DIR", "/tmp"))
            proc = subprocess.Popen(["node", str(ROOT / "tools/check_fullsize_page.mjs"), json.dumps(conf)],
                                    stdout=subprocess.PIPE, text=True, env=env)
            lines = []
            for line in proc.stdout:  # progress lines as they come: a full run takes many minutes
                lines.append(line)
                if not line.startswith("RESULT:"):
                    print(line.rstrip(), file=sys.stderr, flush=True)
            proc.wait(timeout=60)
    finally:
        srv.shutdown()
        srv.server_close()
    line = next((l for l in reversed(lines) if l.startswith("RESULT:")), None)
    return json.loads(line[len("RESULT:"):]) if line else {"ok": False, "error": "".join(lines[-40:])}


def checks(out: dict, heap_goal_mb: float, ple_goal_ms: float) -> list[tuple[str, bool, str]]:
    """(name, passed, figure) for each goal the run could measure."""
    res = []
    nat, br = out.get("native"), out.get("page") or {}
    for run in ("http", "opfs"):
        r = br.get(run)
        bench = (r or {}).get("ple_bench") or {}
        if "mean_ms" in bench:
            res.append((f"{run}: PLE row read at random ids", bench["mean_ms"] <= ple_goal_ms,
                        f"mean {bench['mean_ms']:.3f} ms, median {bench['median_ms']:.3f}, p95 {bench['p95_ms']:.3f}, "
                        f"max {bench['max_ms']:.2f} over {bench['n']} rows (goal {ple_goal_ms} ms)"))
        if not r or "ids" not in r:  # not loaded, or loaded without a reply (--no-http-chat, --no-opfs-chat)
            continue
        if nat is not None:
            res.append((f"{run}: tokens equal native", r["ids"] == nat["ids"], f"page {r['ids']} native {nat['ids']}"))
        host = r.get("host") or {}
        if run == "opfs" and "ple_read_ms" in host:
            res.append(("opfs: PLE row wait per decode step", host["ple_read_ms"] <= ple_goal_ms,
                        f"{host['ple_read_ms']:.3f} ms (goal {ple_goal_ms} ms)"))
    heaps = br.get("heaps") or {}
    for key in ("wasm_bytes", "worker_js_peak_bytes", "page_js_peak_bytes"):
        if heaps.get(key) is not None:
            res.append((f"peak {key[:-6]}", heaps[key] <= heap_goal_mb * 1e6,
                        f"{heaps[key] / 1e6:.0f} MB (goal {heap_goal_mb:.0f} MB)"))
    texts = br.get("progress_texts") or []
    shown = [t for t in texts if " of " in t and "left" in t]
    if texts:
        res.append(("page shows the download size and time left", bool(shown), shown[0] if shown else texts[-1]))
    return res


def write_model(path: str) -> None:
    import make_synthetic_gguf

    dims = make_synthetic_gguf.scaled_e2b(35, 262144, None)
    size = make_synthetic_gguf.write_synthetic(path, dims, 0, "llama")
    print(f"wrote {path}: {size / 1e9:.3f} GB (Gemma 4 E2B layout, random weights)", file=sys.stderr)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", nargs="?", help="the E2B-layout GGUF (see --write)")
    ap.add_argument("--write", metavar="PATH", help="write the full-size E2B-layout file to PATH and exit")
    ap.add_argument("--prompt", default=PROMPT)
    ap.add_argument("--tokens", type=int, default=3, help="tokens decoded (default 3: a software GPU is slow)")
    ap.add_argument("--native-only", action="store_true")
    ap.add_argument("--browser-only", action="store_true")
    ap.add_argument("--native-ids", help="the native ids of an earlier run (comma-separated): no native run")
    ap.add_argument("--skip-opfs", action="store_true", help="only the HTTP Range load (no 6 GB OPFS copy)")
    ap.add_argument("--no-http-chat", action="store_true",
                    help="no reply after the HTTP Range load (its tokens checked in an earlier run): the OPFS one only")
    ap.add_argument("--no-http", action="store_true", help="no HTTP Range load: the OPFS copy only")
    ap.add_argument("--no-opfs-chat", action="store_true", help="no reply after the OPFS load")
    ap.add_argument("--ple-bench", type=int, default=200, metavar="N",
                    help="after the OPFS load, time N PLE rows read at random ids in the worker (default 200; 0: none)")
    ap.add_argument("--heap-goal-mb", type=float, default=1000.0)
    ap.add_argument("--ple-goal-ms", type=float, default=0.5)
    ap.add_argument("--timeout-s", type=int, default=5400, help="the browser run's limit")
    a = ap.parse_args(argv)
    if a.write:
        write_model(a.write)
        return 0
    if not a.model:
        ap.error("give the model file (or --write PATH)")
    if not Path(a.model).is_file():
        ap.error(f"{a.model} is not a file")
    out = {"model": a.model, "model_bytes": Path(a.model).stat().st_size, "prompt": a.prompt, "tokens": a.tokens}
    if a.native_ids:
        out["native"] = {"ids": [int(x) for x in a.native_ids.split(",")], "given": True}
    elif not a.browser_only:
        out["native"] = asyncio.run(native(a.model, a.prompt, a.tokens))
        print("native:", json.dumps(out["native"]), file=sys.stderr, flush=True)
    if not a.native_only:
        out["page"] = browser(a.model, a.prompt, a.tokens, a.skip_opfs, a.timeout_s, not a.no_http_chat,
                              not a.no_http, not a.no_opfs_chat, a.ple_bench)
    out["checks"] = [{"check": n, "ok": ok, "figure": f} for n, ok, f in checks(out, a.heap_goal_mb, a.ple_goal_ms)]
    print(json.dumps(out, indent=1))
    for c in out["checks"]:
        print(f"{'ok  ' if c['ok'] else 'FAIL'} {c['check']}: {c['figure']}", file=sys.stderr)
    failed = not all(c["ok"] for c in out["checks"]) or (out.get("page") and not out["page"].get("ok"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
