"""Where a model's GPU time goes, per kernel family, measured on the GPU with timestamp queries.

    python tools/profile_gpu.py MODEL                                # the decode step (model + sampler)
    python tools/profile_gpu.py MODEL --prefill --json profile.json  # and one prefill chunk
    python tools/profile_gpu.py MODEL --depth 8192 --ctx 8400        # decode with 8192 tokens in the cache

MODEL is anything the engine loads (a GGUF path, an Ollama name, "default"). The tool records the model's
graphs as the engine does, feeds `--depth` tokens (a real context for attention to read), runs one decode
step, then times every dispatch of the decode graph and the sampler graph (and, with --prefill, of one
prefill chunk) on the GPU:

- `inside-passes` (when the device has wgpu-native's 'timestamp-query-inside-passes'): the graph is encoded
  as the engine encodes it, one compute pass per graph, with a timestamp written before the first dispatch
  and after every dispatch; a dispatch's time is the gap between its two timestamps.
- `pass-per-dispatch` (otherwise, with WebGPU's 'timestamp-query'): every dispatch in a compute pass of its
  own, with the pass's beginning and end timestamps. Passes add barriers and lose overlap between
  dispatches, so the sum of dispatches says how far this is from the real step.

Each timed run follows --warm untimed runs of the same graphs in the same command buffer, so that the GPU is
busy when the timestamps start, as it is while the engine decodes step after step. Without them a short step
reads long: on an H200 the 270M's step measured 3,859 us with --warm 0 and 909 us with --warm 10 (1.45 ms a
token as the engine runs it), since the GPU idles between one timed run's readback and the next. Each
dispatch's time is the median over --repeats runs. The whole step is also timed as the engine runs it
(the same passes, timestamps only at the first pass's beginning and the last pass's end): "step" against
"sum of dispatches" says what the per-dispatch timestamps themselves cost. A family is a kernel file with
its entry point and its quantisation library ("matvec q4_k", "attention split", "rms_norm"). The host's
encoding time per dispatch is measured on the replay path the engine uses for every token
(gpu.Graph.encode after the first run).

Native only (wgpu-py): wgpu-native's writeTimestamp inside passes has no browser counterpart. On lavapipe
(Mesa 22.3) both timestamp features are exposed, and its times are CPU times of the software rasteriser.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")

from rullama_py import _backend, gpu  # noqa: E402
from rullama_py._backend import api  # noqa: E402

INSIDE_PASSES = "timestamp-query-inside-passes"
TIMESTAMP = "timestamp-query"
METHODS = ("inside-passes", "pass-per-dispatch")
MAX_QUERIES = 4096  # queries per query set that wgpu allows


class ProfileError(ValueError):
    """The profile cannot be taken as asked (the message says why)."""


# -- the device --------------------------------------------------------------------------------------------
@asynccontextmanager
async def _with_timestamp_features():
    """Device.open asks only for the features the kernels use; timestamps need theirs too. Device.open calls
    _backend.request_device, so for the duration of the open that call adds whichever timestamp features the
    adapter offers."""
    plain = _backend.request_device

    async def request_device(adapter, required_features, required_limits):
        have = set(adapter.features)
        extra = [f for f in (TIMESTAMP, INSIDE_PASSES) if f in have]
        return await plain(adapter, list(required_features) + extra, required_limits)

    _backend.request_device = request_device
    try:
        yield
    finally:
        _backend.request_device = plain


async def open_device(disable_features=()) -> gpu.Device:
    """A gpu.Device like the engine's, with the adapter's timestamp features on as well."""
    if _backend.IN_BROWSER:
        raise ProfileError("the GPU profile is native only: the browser has no timestamps inside compute passes")
    async with _with_timestamp_features():
        return await gpu.Device.open(disable_features=disable_features)


def timestamp_features(device: gpu.Device) -> set:
    return {f for f in (TIMESTAMP, INSIDE_PASSES) if f in set(device.raw.features)}


def pick_method(device: gpu.Device, method: str = "auto") -> str:
    have = timestamp_features(device)
    if TIMESTAMP not in have:
        name = device.info.get("device") or "this GPU"
        raise ProfileError(f"{name} offers no 'timestamp-query' feature, so GPU time cannot be measured per "
                           "dispatch here.")
    if method == "auto":
        return "inside-passes" if INSIDE_PASSES in have else "pass-per-dispatch"
    if method not in METHODS:
        raise ProfileError(f"unknown method {method!r}: choose auto, {' or '.join(METHODS)}.")
    if method == "inside-passes" and INSIDE_PASSES not in have:
        raise ProfileError("this device lacks 'timestamp-query-inside-passes'; use --method pass-per-dispatch.")
    return method


def ns_per_tick(device: gpu.Device) -> float:
    """wgpu-native resolves raw timestamp ticks; the queue's period turns them into nanoseconds."""
    from wgpu.backends.wgpu_native._ffi import lib

    return float(lib.wgpuQueueGetTimestampPeriod(device.queue._internal))


# -- what each dispatch is ---------------------------------------------------------------------------------
def family(name: str, libs=(), entry: str = "main") -> str:
    """A kernel family: the kernel's file, its entry point when not "main", and the type of the weights it
    reads. ops/matmul.py lists a weight type's libraries as quant/bytes, its helpers (quant/k_scales), then
    the type's own file last: ("quant/bytes", "quant/k_scales", "quant/q4_k") -> "q4_k". A product whose input
    is formed in its prologue (matvec_stream_norm) is "matvec+norm"."""
    quants = [lib.split("/", 1)[1] for lib in libs if lib.startswith("quant/")]
    name += "+norm" if "matvec_stream_norm" in libs else ""
    return " ".join([name] + ([entry] if entry != "main" else []) + quants[-1:])


def describe(device: gpu.Device, graphs) -> list[dict]:
    """Each dispatch of `graphs` in order: graph index, kernel file, entry, libraries, the specialisation
    constants (gpu.Device.kernel's cache key is how a pipeline's constants are known), workgroups, family."""
    by_pipeline = {id(k.pipeline): key for key, k in device._kernels.items()}
    out = []
    for gi, g in enumerate(graphs):
        for d in g.dispatches:
            key = by_pipeline.get(id(d.pipeline))
            if key is None:  # not compiled through Device.kernel: only the recorded name is known
                name, libs, entry, consts = d.kernel or "?", (), "main", {}
            else:
                name, libs, entry, const_items = key
                consts = {k: _const_value(v) for k, v in const_items}
            out.append({"graph": gi, "kernel": name, "entry": entry, "libs": list(libs), "consts": consts,
                        "workgroups": list(d.workgroups), "family": family(name, libs, entry)})
    return out


def _const_value(text: str):
    """Device.kernel keys hold repr() of each constant; back to a JSON value where it is a plain number."""
    try:
        return json.loads(text.lower() if text in ("True", "False") else text)
    except (ValueError, TypeError):
        return text


# -- timing ------------------------------------------------------------------------------------------------
class _Queries:
    """`n` timestamp slots over as many query sets as wgpu allows per set, resolved into one readback."""

    def __init__(self, device: gpu.Device, n: int):
        self.device = device
        self.n = n
        self.sets = [device.raw.create_query_set(type=api.QueryType.timestamp, count=min(MAX_QUERIES, n - first),
                                                 label=f"timestamps[{first}]")
                     for first in range(0, n, MAX_QUERIES)]
        # resolve offsets must be multiples of 256 bytes; a full set is 32 KiB
        self.resolved = device.raw.create_buffer(size=8 * MAX_QUERIES * len(self.sets),
                                                 usage=api.BufferUsage.QUERY_RESOLVE | api.BufferUsage.COPY_SRC)
        self.readback = gpu.Readback(device, 8 * MAX_QUERIES * len(self.sets), "timestamps")

    def slot(self, i: int) -> tuple:
        return self.sets[i // MAX_QUERIES], i % MAX_QUERIES

    def resolve(self, enc) -> None:
        for s, qs in enumerate(self.sets):
            count = min(MAX_QUERIES, self.n - s * MAX_QUERIES)
            enc.resolve_query_set(qs, 0, count, self.resolved, 8 * MAX_QUERIES * s)
        enc.copy_buffer_to_buffer(self.resolved, 0, self.readback.buffer, 0, self.resolved.size)

    async def read(self) -> np.ndarray:
        raw = await self.readback.read(self.device)
        ticks = np.frombuffer(raw, np.uint64).reshape(len(self.sets), MAX_QUERIES)
        return np.concatenate([ticks[s, : min(MAX_QUERIES, self.n - s * MAX_QUERIES)]
                               for s in range(len(self.sets))])

    def destroy(self) -> None:
        for qs in self.sets:
            qs.destroy()
        self.resolved.destroy()
        self.readback.buffer.destroy()


def _dispatch(cpass, d) -> None:
    cpass.set_pipeline(d.pipeline)
    cpass.set_bind_group(0, d.bind_group)
    cpass.dispatch_workgroups(*d.workgroups)


def _encode_untimed(enc, graphs, n: int) -> None:
    """`n` runs of `graphs` without timestamps, a compute pass per graph as the engine encodes them."""
    for _ in range(n):
        for g in graphs:
            if g.dispatches:
                cpass = enc.begin_compute_pass()
                for d in g.dispatches:
                    _dispatch(cpass, d)
                cpass.end()


def _pass_writes(q: _Queries, begin: int | None, end: int | None) -> dict:
    """A compute pass's timestampWrites (WebGPU: both indices in one query set)."""
    w = {}
    for key, i in (("beginning_of_pass_write_index", begin), ("end_of_pass_write_index", end)):
        if i is not None:
            qs, local = q.slot(i)
            w["query_set"] = qs
            w[key] = local
    return w


async def time_step(device: gpu.Device, graphs, repeats: int, warm: int = 0) -> list[float]:
    """GPU µs of `graphs` run as the engine runs them (a compute pass each, in order), one value per run, each
    after `warm` untimed runs."""
    q = _Queries(device, 2)
    scale = ns_per_tick(device) / 1e3
    runs = []
    try:
        for _ in range(repeats):
            enc = device.raw.create_command_encoder()
            _encode_untimed(enc, graphs, warm)
            live = [g for g in graphs if g.dispatches]
            for gi, g in enumerate(live):
                cpass = enc.begin_compute_pass(timestamp_writes=_pass_writes(
                    q, 0 if gi == 0 else None, 1 if gi == len(live) - 1 else None) or None)
                for d in g.dispatches:
                    _dispatch(cpass, d)
                cpass.end()
            q.resolve(enc)
            device.queue.submit([enc.finish()])
            t = (await q.read()).astype(np.float64)
            runs.append(float(t[1] - t[0]) * scale)
    finally:
        q.destroy()
    return runs


async def time_dispatches(device: gpu.Device, graphs, method: str, repeats: int, warm: int = 0) -> np.ndarray:
    """GPU µs of every dispatch of `graphs`, [repeats, n_dispatches], each run after `warm` untimed ones."""
    dispatches = [(gi, d) for gi, g in enumerate(graphs) for d in g.dispatches]
    n = len(dispatches)
    if method == "inside-passes":
        n_slots = n + sum(1 for g in graphs if g.dispatches)  # one opening timestamp per pass
    else:
        n_slots = 2 * n
    q = _Queries(device, n_slots)
    scale = ns_per_tick(device) / 1e3
    out = np.zeros((repeats, n))
    try:
        for r in range(repeats):
            enc = device.raw.create_command_encoder()
            _encode_untimed(enc, graphs, warm)
            ends = []  # (slot before, slot after) of each dispatch
            slot = 0
            if method == "inside-passes":
                for g in graphs:
                    if not g.dispatches:
                        continue
                    cpass = enc.begin_compute_pass()
                    qs, i = q.slot(slot)
                    cpass._write_timestamp(qs, i)  # wgpu-py 0.32: wgpu.backends.wgpu_native.extras.write_timestamp
                    for d in g.dispatches:
                        _dispatch(cpass, d)
                        qs, i = q.slot(slot + 1)
                        cpass._write_timestamp(qs, i)
                        ends.append((slot, slot + 1))
                        slot += 1
                    slot += 1
                    cpass.end()
            else:
                for _, d in dispatches:
                    cpass = enc.begin_compute_pass(timestamp_writes=_pass_writes(q, slot, slot + 1))
                    _dispatch(cpass, d)
                    cpass.end()
                    ends.append((slot, slot + 1))
                    slot += 2
            q.resolve(enc)
            device.queue.submit([enc.finish()])
            t = (await q.read()).astype(np.float64)
            a, b = np.array(ends).T
            out[r] = (t[b] - t[a]) * scale
    finally:
        q.destroy()
    return out


def host_encode_us(device: gpu.Device, graphs, n: int = 20) -> float:
    """Host µs to encode `graphs` into a command buffer on the engine's per-token path (replay of validated
    graphs through wgpu-native's bare calls), per dispatch."""
    device.encode(list(graphs))  # the first encode validates and prepares the replay
    count = sum(len(g) for g in graphs)
    t0 = time.perf_counter()
    for _ in range(n):
        device.encode(list(graphs))
    return 1e6 * (time.perf_counter() - t0) / n / max(count, 1)


def summarise(labels: list[dict], per_run: np.ndarray, step_runs: list[float]) -> dict:
    """Per-dispatch medians, the families sorted by total time, and the step against the sum."""
    med = np.median(per_run, axis=0) if len(per_run) else np.zeros(len(labels))
    total = float(med.sum())
    fams: dict = {}
    for lab, us in zip(labels, med):
        f = fams.setdefault(lab["family"], {"family": lab["family"], "count": 0, "total_us": 0.0})
        f["count"] += 1
        f["total_us"] += float(us)
    families = sorted(fams.values(), key=lambda f: -f["total_us"])
    for f in families:
        f["share"] = f["total_us"] / total if total > 0 else 0.0
        f["mean_us"] = f["total_us"] / f["count"]
    return {
        "dispatches": len(labels),
        "step_us": statistics.median(step_runs) if step_runs else None,
        "step_us_runs": step_runs,
        "sum_of_dispatches_us": total,
        "families": families,
        "per_dispatch": [dict(lab, us=float(us)) for lab, us in zip(labels, med)],
    }


async def profile_graphs(device: gpu.Device, graphs, *, method: str, repeats: int, before_run=None,
                         warm: int = 0) -> dict:
    """The whole profile of `graphs`: step time, per-dispatch and per-family GPU time, host encoding.
    `before_run()` rewrites the inputs before every timed run (the Step uniform)."""
    if before_run:
        before_run()
    await device.sync()
    step_runs = []
    for _ in range(repeats):
        if before_run:
            before_run()
        step_runs += await time_step(device, graphs, 1, warm)
    per_run = []
    for _ in range(repeats):
        if before_run:
            before_run()
        per_run.append((await time_dispatches(device, graphs, method, 1, warm))[0])
    out = summarise(describe(device, graphs), np.array(per_run), step_runs)
    out["method"] = method
    out["host_encode_us_per_dispatch"] = host_encode_us(device, graphs)
    return out


# -- a model -----------------------------------------------------------------------------------------------
def git_commit() -> str:
    try:
        r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                           timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else "unknown"


async def profile_model(model, *, prefill: bool = False, depth: int = 64, ctx: int = 4096, prefill_chunk: int = 64,
                        repeats: int = 5, method: str = "auto", device: gpu.Device | None = None,
                        ple_on_gpu: bool = False, warm: int = 10) -> dict:
    """Load `model` (with Gemma 4's per-layer-embedding table on the GPU if `ple_on_gpu`), put `depth` tokens
    in its cache, and profile the decode step (and a prefill chunk)."""
    from rullama_py.engine import Engine
    from rullama_py.sampling import SamplerParams

    if repeats < 1:
        raise ProfileError(f"{repeats} repeats: give 1 or more.")
    if warm < 0:
        raise ProfileError(f"{warm} warm-up runs: give 0 or more.")
    if depth < 1:
        raise ProfileError(f"a depth of {depth} tokens: give 1 or more (decode follows a prompt).")
    device = device or await open_device()
    method = pick_method(device, method)
    eng = await Engine.load(model, max_context=ctx, prefill_chunk=prefill_chunk, device=device,
                            params=SamplerParams(temperature=0.0), text_only=True, ple_on_gpu=ple_on_gpu)
    m = eng.model
    need = depth + 1 + (m.prefill.capacity if prefill else 0)
    if need > eng.max_context:
        raise ProfileError(f"a depth of {depth} tokens, the decode step{' and a prefill chunk' if prefill else ''} "
                           f"need a context of {need} tokens; the model was loaded with {eng.max_context} "
                           f"(give --ctx {need} or more).")
    vocab = m.cfg.vocab_size
    ids = [(7 + 31 * i) % (vocab - 10) + 5 for i in range(depth)]
    await eng.feed(ids)
    await eng.step(ahead=False)  # nothing in flight after it; the decode graphs' first run: validated, pipelines warm
    pos = len(eng.tokens)
    out = {"model": str(model), "arch": m.cfg.arch, "device": device.info, "features": sorted(device.features),
           "timestamp_features": sorted(timestamp_features(device)), "ns_per_tick": ns_per_tick(device),
           "depth": pos, "max_context": eng.max_context, "commit": git_commit(), "repeats": repeats, "warm": warm,
           "ple_on_gpu": m.ple_table is not None}
    out["decode"] = await profile_graphs(device, [m.decode.graph, eng.sample_graph], method=method, repeats=repeats,
                                         before_run=lambda: m.write_step(pos, 1), warm=warm)
    if prefill:
        cap = m.prefill.capacity
        chunk = [(11 + 17 * i) % (vocab - 10) + 5 for i in range(cap)]
        await m.write_inputs(m.prefill, chunk, pos)
        out["prefill"] = await profile_graphs(device, [m.prefill.graph], method=method, repeats=repeats,
                                              before_run=lambda: m.write_step(pos, cap), warm=warm)
        out["prefill"]["tokens"] = cap
    return out


def format_profile(name: str, p: dict) -> str:
    lines = []
    step = p["step_us"]
    how = {"inside-passes": "a timestamp after every dispatch, inside the passes",
           "pass-per-dispatch": "a compute pass per dispatch"}[p["method"]]
    lines.append(f"{name}: {p['dispatches']} dispatches; GPU step {step:.1f} us (as the engine runs it), "
                 f"sum of dispatches {p['sum_of_dispatches_us']:.1f} us ({how})")
    lines.append(f"  host encoding (the engine's replay path): {p['host_encode_us_per_dispatch']:.2f} us per dispatch")
    lines.append(f"  {'family':<28} {'count':>6} {'total us':>10} {'share':>7} {'us each':>9}")
    for f in p["families"]:
        lines.append(f"  {f['family']:<28} {f['count']:>6} {f['total_us']:>10.1f} {100 * f['share']:>6.1f}% "
                     f"{f['mean_us']:>9.2f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help='GGUF path, Ollama name or "default"')
    ap.add_argument("--prefill", action="store_true", help="also profile one prefill chunk")
    ap.add_argument("--depth", type=int, default=64, help="tokens in the cache before the profiled step (default 64)")
    ap.add_argument("--ctx", type=int, default=4096, help="context to allocate (default 4096)")
    ap.add_argument("--prefill-chunk", type=int, default=64, help="tokens per prefill chunk (default 64)")
    ap.add_argument("--repeats", type=int, default=5, help="runs per measurement; medians are reported (default 5)")
    ap.add_argument("--warm", type=int, default=10,
                    help="untimed runs before each timed one, in the same command buffer (default 10)")
    ap.add_argument("--method", default="auto", choices=("auto",) + METHODS)
    ap.add_argument("--ple-on-gpu", action="store_true",
                    help="Gemma 4 E2B/E4B: the per-layer-embedding table on the GPU, as rullama bench --ple-on-gpu")
    ap.add_argument("--json", metavar="OUT", help="write the whole profile (every dispatch) as JSON")
    a = ap.parse_args(argv)
    try:
        prof = asyncio.run(profile_model(a.model, prefill=a.prefill, depth=a.depth, ctx=a.ctx,
                                         prefill_chunk=a.prefill_chunk, repeats=a.repeats, method=a.method,
                                         ple_on_gpu=a.ple_on_gpu, warm=a.warm))
    except (ProfileError, gpu.GPUError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    prof["command"] = " ".join(["tools/profile_gpu.py", *(argv if argv is not None else sys.argv[1:])])
    print(f"{prof['model']} on {prof['device'].get('device')}, {prof['depth']} tokens in the cache, median of "
          f"{a.repeats} runs")
    print(format_profile("decode", prof["decode"]))
    if "prefill" in prof:
        print(format_profile(f"prefill chunk of {prof['prefill']['tokens']} tokens", prof["prefill"]))
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump(prof, f, indent=1)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
