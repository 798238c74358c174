"""The prefill and decode benchmark, one measurement for every place rullama-py runs: `rullama bench` natively
(wgpu-py) and tools/bench_pyodide.mjs inside Pyodide (the browser's WebGPU, Dawn in Node).

    eng = await Engine.load(path_or_source, max_context=..., prefill_chunk=..., params=GREEDY)
    result = await measure(eng, prompt_tokens=128, gen_tokens=64, repeats=3, depth=0)
    rec = record(result, engine="rullama-py", model="gemma3-270m", commit="abc1234", command="...")
    append_records("docs/bench/2026-12-02-NAME.json", [rec])

What is measured: after a warm-up (one prefill chunk and three decode steps: the first runs compile nothing,
but do upload pipelines and fill caches), each repeat starts from an empty context, fills `depth` tokens of
context untimed, then times the prefill of `prompt_tokens` tokens (Engine.feed: prefill chunks, and the first
token sampled on the GPU) and `gen_tokens` greedy decode steps (Engine.step). Both timed spans end with the
sampled token read back from the GPU, so they hold all of the GPU's work. The best repeat of each counts.

The token ids are a fixed arithmetic sequence over the vocabulary (no tokenizer, no text): every engine and
every run reads the same ids.
"""

from __future__ import annotations

import json
import os
import sys
import time

WARMUP_STEPS = 3


class BenchError(ValueError):
    """Benchmark settings that cannot be measured (the message says which and why)."""


def prompt_ids(n: int, vocab_size: int) -> list[int]:
    """The benchmark's `n` token ids: spread over the vocabulary, clear of the first few (special) ids."""
    return [(7 + 31 * i) % (vocab_size - 10) + 5 for i in range(n)]


def check_settings(max_context: int, *, prompt_tokens: int, gen_tokens: int, repeats: int, depth: int = 0) -> None:
    """BenchError with a sentence when the numbers are out of range or do not fit the context."""
    for name, value, least in (("prompt tokens", prompt_tokens, 1), ("generated tokens", gen_tokens, 1),
                               ("repeats", repeats, 1), ("depth", depth, 0)):
        if int(value) < least:
            raise BenchError(f"{value} {name}: give {least} or more.")
    need = depth + prompt_tokens + gen_tokens
    if need > max_context:
        raise BenchError(f"a depth of {depth} tokens, {prompt_tokens} prompt tokens and {gen_tokens} generated "
                         f"tokens need a context of {need} tokens, more than the {max_context} given "
                         f"(give --ctx {need} or more).")


async def measure(eng, *, prompt_tokens: int = 128, gen_tokens: int = 64, repeats: int = 3, depth: int = 0) -> dict:
    """Time prefill and decode on a loaded Engine (greedy sampling: load it with temperature 0).

    Returns the figures (tokens per second, best of `repeats`, and every run's), what the device is, the
    weight bytes decode reads per token, dispatches per decode token, and the host's share of a decode step
    (Engine.host_times over the best decode run)."""
    from .engine import HostTimes
    from .gpu import Device

    m = eng.model
    check_settings(eng.max_context, prompt_tokens=prompt_tokens, gen_tokens=gen_tokens, repeats=repeats, depth=depth)
    ids = prompt_ids(depth + prompt_tokens, m.cfg.vocab_size)
    context, prompt = ids[:depth], ids[depth:]
    eng.reset()
    await eng.feed(prompt[: min(len(prompt), max(m.prefill_chunk, m.long_prefill_chunk))])
    for _ in range(WARMUP_STEPS):
        await eng.step()
    runs: dict[str, list] = {"prefill": [], "decode": [], "host": []}
    clock = time.perf_counter
    for _ in range(repeats):
        eng.reset()
        if context:
            await eng.feed(context)  # untimed; its last token is pending and goes in with the prompt
        before = len(eng.tokens)
        t0 = clock()
        await eng.feed(prompt)
        t1 = clock()
        prefilled = len(eng.tokens) - before
        eng.host_times = HostTimes()
        for _ in range(gen_tokens):
            await eng.step()
        t2 = clock()
        runs["prefill"].append(prefilled / (t1 - t0))
        runs["decode"].append(gen_tokens / (t2 - t1))
        runs["host"].append(eng.host_times.per_step_ms())
    best = max(range(repeats), key=lambda i: runs["decode"][i])
    dev: Device = eng.device
    weight_bytes = sum(t.nbytes for t in m.w.values())
    out = {
        "arch": m.cfg.arch,
        "device": dev.info,
        "features": sorted(dev.features),
        "depth": depth,
        "prompt_tokens": len(prompt),
        "gen_tokens": gen_tokens,
        "prefill_chunk": m.prefill_chunk,
        "long_prefill_chunk": m.long_prefill_chunk,
        "max_context": eng.max_context,
        "prefill_tok_s": round(max(runs["prefill"]), 2),
        "decode_tok_s": round(runs["decode"][best], 2),
        "prefill_tok_s_runs": [round(x, 2) for x in runs["prefill"]],
        "decode_tok_s_runs": [round(x, 2) for x in runs["decode"]],
        "weight_bytes_on_gpu": weight_bytes,
        "decode_weight_GB_s": round(weight_bytes * runs["decode"][best] / 1e9, 2),
        "dispatches_per_token": len(m.decode.graph) + len(eng.sample_graph),
        "ple_on_gpu": m.ple_table is not None,
        "kv_cache_type": m.kv_cache_type,
        "kv_cache_bytes": m.kv_cache_bytes,
        "decode_ahead": eng.decode_ahead,
        "decode_host_ms": {k: round(v, 4) if isinstance(v, float) else v for k, v in runs["host"][best].items()},
    }
    gpu_bytes = getattr(dev, "allocated_bytes", None)
    if gpu_bytes is not None:
        out["gpu_bytes"] = int(gpu_bytes() if callable(gpu_bytes) else gpu_bytes)
    return out


def engine_name() -> str:
    """"rullama-py-pyodide" inside Pyodide (the browser's WebGPU), "rullama-py" natively (wgpu-py)."""
    return "rullama-py-pyodide" if sys.platform == "emscripten" else "rullama-py"


def model_label(name: str) -> str:
    """A record's "model" when none is given: the file's name without folders and without .gguf."""
    base = os.path.basename(str(name).rstrip("/")) or str(name)
    return base[: -len(".gguf")] if base.lower().endswith(".gguf") else base


def record(result: dict, *, model: str, commit: str, command: str, engine: str | None = None) -> dict:
    """One record of a docs/bench/*.json list: {"engine", "model", "prefill_tok_s", "decode_tok_s", "context"
    (the depth: tokens already in the cache), "commit", "command"}, then the rest of `result`."""
    rec = {"engine": engine or engine_name(), "model": model, "prefill_tok_s": result["prefill_tok_s"],
           "decode_tok_s": result["decode_tok_s"], "context": result.get("depth", 0), "commit": commit,
           "command": command}
    rec.update({k: v for k, v in result.items() if k not in rec})
    return rec


def append_records(path, records: list[dict]) -> None:
    """Append to a JSON list file (created when missing). A file that is not a JSON list is left alone."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        text = ""
    if text.strip():
        try:
            have = json.loads(text)
        except json.JSONDecodeError as e:
            raise BenchError(f"{path} is not JSON ({e.msg} at line {e.lineno}); records go into a JSON list.") from None
        if not isinstance(have, list):
            raise BenchError(f"{path} holds a JSON {type(have).__name__}, not a list of records.")
    else:
        have = []
    have.extend(records)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(have, f, indent=1)
        f.write("\n")
