"""The `rullama` command (native): generate, chat, bench, list, serve.

MODEL is a GGUF path, an Ollama model name (gemma3:270m, gemma4:e2b), an http(s) URL (read with Range
requests), or "default" for the embedded Gemma 3 270M that the setup installs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from .sampling import SamplerParams


def _sampling_args(p: argparse.ArgumentParser) -> None:
    d = SamplerParams()
    p.add_argument("--temperature", type=float, default=d.temperature, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=d.top_k)
    p.add_argument("--top-p", type=float, default=d.top_p)
    p.add_argument("--min-p", type=float, default=d.min_p)
    p.add_argument("--repeat-penalty", type=float, default=d.repetition_penalty)
    p.add_argument("--seed", type=int, default=d.seed)


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help='GGUF path, Ollama name (gemma3:270m), http(s) URL, or "default"')
    p.add_argument("--ctx", type=int, default=4096, help="context length to allocate (max_context)")
    p.add_argument("--prefill-chunk", type=int, default=64, help="tokens per prefill dispatch")


def _params(a) -> SamplerParams:
    return SamplerParams(temperature=a.temperature, top_k=a.top_k, top_p=a.top_p, min_p=a.min_p,
                         repetition_penalty=a.repeat_penalty, seed=a.seed)


async def _load(a, params=None, quiet=False):
    from tqdm import tqdm

    from .engine import Engine

    bar = None

    def progress(done, total, name):
        nonlocal bar
        if quiet:
            return
        if bar is None:
            bar = tqdm(total=total, unit="B", unit_scale=True, desc="loading weights", file=sys.stderr, leave=False)
        bar.update(done - bar.n)

    try:
        return await Engine.load(a.model, max_context=a.ctx, prefill_chunk=a.prefill_chunk, params=params,
                                 progress=progress)
    finally:
        if bar is not None:
            bar.close()


async def _generate(a) -> int:
    eng = await _load(a, _params(a))
    prompt = a.prompt
    if a.chat:
        prompt = eng.chat_template.render([{"role": "user", "content": prompt}])
    async for tok in eng.generate(prompt, max_tokens=a.max_tokens):
        sys.stdout.write(tok.text)
        sys.stdout.flush()
    s = eng.stats
    print(f"\n[{s.prompt_tokens} prompt tokens {s.prompt_tps:.1f} tok/s, {s.generated_tokens} generated "
          f"{s.generate_tps:.1f} tok/s, stop: {s.finish_reason}]", file=sys.stderr)
    return 0


async def _chat(a) -> int:
    eng = await _load(a, _params(a))
    messages = [{"role": "system", "content": a.system}] if a.system else []
    print("chat: type a message; /reset starts over, /exit quits", file=sys.stderr)
    loop = asyncio.get_running_loop()
    while True:
        sys.stderr.write(">>> ")
        sys.stderr.flush()
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line or line.strip() == "/exit":
            return 0
        if line.strip() == "/reset":
            messages = messages[:1] if a.system else []
            eng.reset()
            continue
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line.rstrip("\n")})
        reply = []
        async for tok in eng.chat(messages, max_tokens=a.max_tokens):
            reply.append(tok.text)
            sys.stdout.write(tok.text)
            sys.stdout.flush()
        print()
        messages.append({"role": "assistant", "content": "".join(reply)})


async def _bench(a) -> int:
    """Prefill and decode throughput, and the weight bytes per second that decode implies (every decoded token
    reads every weight the GPU holds once)."""
    from .gpu import default_device

    eng = await _load(a, SamplerParams(temperature=0.0), quiet=True)
    m = eng.model
    dev = await default_device()
    weight_bytes = sum(t.nbytes for t in m.w.values())
    ids = [(7 + 31 * i) % (m.cfg.vocab_size - 10) + 5 for i in range(a.prompt_tokens)]
    # Warm-up: the first runs compile and upload pipelines.
    eng.reset()
    await eng.feed(ids[: min(len(ids), m.prefill_chunk)])
    for _ in range(3):
        await eng.step()
    results = {}
    for rep in range(a.repeats):
        eng.reset()
        t0 = time.perf_counter()
        await eng.feed(ids)
        t1 = time.perf_counter()
        for _ in range(a.gen_tokens):
            await eng.step()
        t2 = time.perf_counter()
        results.setdefault("prefill", []).append(len(ids) / (t1 - t0))
        results.setdefault("decode", []).append(a.gen_tokens / (t2 - t1))
    best_decode = max(results["decode"])
    out = {
        "model": str(a.model),
        "arch": m.cfg.arch,
        "device": dev.info,
        "features": sorted(dev.features),
        "prompt_tokens": len(ids),
        "gen_tokens": a.gen_tokens,
        "prefill_chunk": m.prefill_chunk,
        "prefill_tok_s": round(max(results["prefill"]), 2),
        "decode_tok_s": round(best_decode, 2),
        "decode_tok_s_runs": [round(x, 2) for x in results["decode"]],
        "weight_bytes_on_gpu": weight_bytes,
        "decode_weight_GB_s": round(weight_bytes * best_decode / 1e9, 2),
        "dispatches_per_token": len(m.decode.graph) + len(eng.sample_graph),
    }
    print(json.dumps(out, indent=1))
    return 0


def _list(a) -> int:
    from . import ollama

    models = ollama.list_models(a.ollama)
    if not models:
        print(f"no models in {ollama.models_dir() if a.ollama is None else a.ollama}", file=sys.stderr)
    for m in models:
        print(f"{m.name}\t{m.size / 1e9:.2f} GB\t{m.digest[:19]}")
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["serve"]:  # the server parses its own options (src/rullama_py/server.py)
        from . import server

        return server.main(argv[1:])
    ap = argparse.ArgumentParser(prog="rullama", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    g = sub.add_parser("generate", help="complete a prompt")
    _model_args(g)
    _sampling_args(g)
    g.add_argument("--prompt", "-p", required=True)
    g.add_argument("--max-tokens", "-n", type=int, default=256)
    g.add_argument("--chat", action="store_true", help="wrap the prompt as a user turn of the chat template")

    c = sub.add_parser("chat", help="interactive chat")
    _model_args(c)
    _sampling_args(c)
    c.add_argument("--system", default="", help="system prompt")
    c.add_argument("--max-tokens", "-n", type=int, default=1024)

    b = sub.add_parser("bench", help="prefill/decode tokens per second as JSON")
    _model_args(b)
    b.add_argument("--prompt-tokens", type=int, default=128)
    b.add_argument("--gen-tokens", type=int, default=64)
    b.add_argument("--repeats", type=int, default=3)

    li = sub.add_parser("list", help="models in the Ollama store")
    li.add_argument("--ollama", default=None, help="store root (default $OLLAMA_MODELS or ~/.ollama/models)")

    sub.add_parser("serve", help="serve the web app and a model on localhost (rullama serve --help)")

    a = ap.parse_args(argv)
    if a.cmd == "list":
        return _list(a)
    try:
        return asyncio.run({"generate": _generate, "chat": _chat, "bench": _bench}[a.cmd](a))
    except KeyboardInterrupt:
        return 130
    except (OSError, ValueError, RuntimeError, LookupError) as e:  # our errors are all of these kinds, with clear messages
        print(f"rullama: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
