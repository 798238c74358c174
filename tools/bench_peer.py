"""The peer's figures for `rullama bench`: llama.cpp's llama-bench on the same GGUF, the same prompt and
generation lengths and the same depths, appended as records of the same format (docs/bench/README.md).

    python tools/bench_peer.py LLAMA_BENCH MODEL.gguf --engine llama.cpp-cuda --model-name e2b \\
        --prompt-tokens 128 --gen-tokens 64 --depth 0,1024,8192,32768 --repeats 3 \\
        --record docs/bench/2026-12-03-e2b-long-context-h200.json --gpu-memory -- -fa 1

LLAMA_BENCH is the llama-bench binary (a CUDA or a Vulkan build: say which with --engine). Each depth is one
llama-bench process, `-m MODEL -p P -n G -d D -r R -o json -ngl 99` and whatever follows `--`, so that each
record carries the exact command that made it. llama-bench runs two tests per depth: pp (P prompt tokens
after D tokens of context, timed without sampling) and tg (G tokens generated one at a time after D tokens;
the D tokens are untimed). A record takes the pp test's best repetition (tokens per second) as
prefill_tok_s and the tg test's as decode_tok_s, as `rullama bench` reports its best repeat: llama-bench's own
mean (kept as *_mean) includes its first repetition, which on a GPU just woken runs at a third of the speed of
the others. The repetitions go to *_runs, and llama.cpp's build_commit is the record's commit.

--gpu-memory polls nvidia-smi (every 50 ms) while each process runs and records the GPU memory in use at its
peak above what was in use before it started, in bytes (gpu_bytes): llama.cpp's weights, KV cache and
compute buffers, plus the CUDA context itself.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from rullama_py.bench import BenchError, append_records  # noqa: E402

ENGINES = ("llama.cpp-cuda", "llama.cpp-vulkan")


class PeerError(ValueError):
    """llama-bench could not be run, or its output is not what this tool reads (the message says which)."""


def depths(text: str) -> list[int]:
    """"0,1024,8192" -> [0, 1024, 8192]."""
    out = []
    for part in str(text).split(","):
        try:
            d = int(part)
        except ValueError:
            d = -1
        if d < 0:
            raise argparse.ArgumentTypeError(f"{text!r} is not a list of depths: give token counts such as 0,1024,8192.")
        if d not in out:
            out.append(d)
    return out


def llama_bench_command(binary, model, *, prompt_tokens: int, gen_tokens: int, depth: int, repeats: int,
                        extra=()) -> list[str]:
    """The llama-bench command line; every layer on the GPU (-ngl 99) unless `extra` says otherwise (a second
    -ngl would make llama-bench run every test twice)."""
    gpu_layers = [] if {"-ngl", "--n-gpu-layers"} & set(extra) else ["-ngl", "99"]
    return [str(binary), "-m", str(model), "-p", str(prompt_tokens), "-n", str(gen_tokens), "-d", str(depth),
            "-r", str(repeats), "-o", "json", *gpu_layers, *extra]


def _field(entry: dict, name: str, i: int):
    if name not in entry:
        raise PeerError(f"llama-bench's test {i} has no {name!r} field (is this llama-bench -o json output?)")
    return entry[name]


def _best(test: dict) -> float:
    """A llama-bench test's best repetition in tokens per second (its mean when it lists none)."""
    samples = test.get("samples_ts") or [_field(test, "avg_ts", 0)]
    return round(max(float(x) for x in samples), 2)


def records_from_llama_bench(entries, *, engine: str, model: str, command: str) -> list[dict]:
    """Records from llama-bench's `-o json` list: one per depth (n_depth) holding its pp test (n_prompt > 0,
    n_gen == 0) and its tg test (n_prompt == 0, n_gen > 0). Combined pp+tg tests (-pg) are not read."""
    if not isinstance(entries, list) or not entries:
        raise PeerError("llama-bench printed no test results (expected a JSON list of tests)")
    by_depth: dict[int, dict] = {}
    for i, e in enumerate(entries):
        if not isinstance(e, dict):
            raise PeerError(f"llama-bench's test {i} is a JSON {type(e).__name__}, not an object")
        n_prompt, n_gen = int(_field(e, "n_prompt", i)), int(_field(e, "n_gen", i))
        depth = int(e.get("n_depth", 0))  # builds before -d have no n_depth: every test is at depth 0
        kind = "pp" if n_prompt > 0 and n_gen == 0 else "tg" if n_gen > 0 and n_prompt == 0 else None
        if kind is None:
            continue
        slot = by_depth.setdefault(depth, {})
        if kind in slot:
            raise PeerError(f"llama-bench ran two {kind} tests at depth {depth}; run one prompt and one generation "
                            "length at a time")
        slot[kind] = e
    records = []
    for depth, tests in sorted(by_depth.items()):
        missing = [k for k in ("pp", "tg") if k not in tests]
        if missing:
            raise PeerError(f"llama-bench has no {' or '.join(missing)} test at depth {depth} (give -p and -n > 0)")
        pp, tg = tests["pp"], tests["tg"]
        rec = {"engine": engine, "model": model, "prefill_tok_s": _best(pp), "decode_tok_s": _best(tg),
               "context": depth, "commit": str(pp.get("build_commit", "unknown")), "command": command}
        rec.update({
            "device": pp.get("gpu_info", ""),
            "backends": pp.get("backends", ""),
            "prompt_tokens": int(pp["n_prompt"]),
            "gen_tokens": int(tg["n_gen"]),
            "prefill_tok_s_runs": [round(float(x), 2) for x in pp.get("samples_ts", [])],
            "decode_tok_s_runs": [round(float(x), 2) for x in tg.get("samples_ts", [])],
            "prefill_tok_s_mean": round(float(_field(pp, "avg_ts", 0)), 2),
            "decode_tok_s_mean": round(float(_field(tg, "avg_ts", 0)), 2),
            "build_number": pp.get("build_number"),
            "model_type": pp.get("model_type"),
            "model_size": pp.get("model_size"),
            "n_batch": pp.get("n_batch"),
            "n_ubatch": pp.get("n_ubatch"),
            "n_gpu_layers": pp.get("n_gpu_layers"),
            "flash_attn": pp.get("flash_attn"),
            "type_k": pp.get("type_k"),
            "type_v": pp.get("type_v"),
            "test_time": pp.get("test_time"),
        })
        records.append(rec)
    return records


class GpuMemoryPeak:
    """The peak of nvidia-smi's memory.used (MiB, GPU `index`) while the `with` block runs, above the value
    before it; `peak_bytes` after the block."""

    QUERY = ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"]

    def __init__(self, index: int = 0, interval: float = 0.05):
        self.index, self.interval = index, interval
        self.before = self.peak = None
        self._stop = threading.Event()

    def used_mib(self) -> int:
        try:
            r = subprocess.run(self.QUERY + ["-i", str(self.index)], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError) as e:
            raise PeerError(f"--gpu-memory needs nvidia-smi, which could not run: {e}") from None
        try:
            return int(r.stdout.strip().splitlines()[0])
        except (ValueError, IndexError):
            raise PeerError(f"nvidia-smi gave no memory figure for GPU {self.index}: {r.stdout.strip() or r.stderr.strip()}") from None

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.used_mib())

    def __enter__(self):
        self.before = self.peak = self.used_mib()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        return False

    @property
    def peak_bytes(self) -> int:
        return (self.peak - self.before) << 20


def run_llama_bench(cmd: list[str], timeout: float) -> list:
    """llama-bench's JSON list (its stdout; its log goes to stderr and is shown only when it fails)."""
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise PeerError(f"{cmd[0]} does not exist (give the path of llama.cpp's llama-bench binary)") from None
    except PermissionError:
        raise PeerError(f"{cmd[0]} cannot be executed (is it the llama-bench binary?)") from None
    except subprocess.TimeoutExpired:
        raise PeerError(f"llama-bench ran longer than {timeout:g} s: {shlex.join(cmd)}") from None
    if r.returncode != 0:
        tail = "\n".join(r.stderr.strip().splitlines()[-15:])
        raise PeerError(f"llama-bench failed (exit status {r.returncode}): {shlex.join(cmd)}\n{tail}")
    try:
        return json.loads(r.stdout)
    except json.JSONDecodeError as e:
        raise PeerError(f"llama-bench's output is not JSON ({e.msg} at line {e.lineno}): {shlex.join(cmd)}") from None


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 usage="%(prog)s LLAMA_BENCH MODEL --engine ENGINE [options] [-- llama-bench options]")
    ap.add_argument("llama_bench", help="path of llama.cpp's llama-bench binary")
    ap.add_argument("model", help="the GGUF file")
    ap.add_argument("--engine", required=True, choices=ENGINES, help="which llama.cpp build the binary is")
    ap.add_argument("--model-name", help='the records\' "model" (default: the file name without .gguf)')
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--depth", type=depths, default=[0], help="tokens of context before each test, e.g. 0,1024,8192")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--record", metavar="FILE", help="append the records to this JSON list file")
    ap.add_argument("--gpu-memory", action="store_true", help="record the peak GPU memory (nvidia-smi) of each run")
    ap.add_argument("--gpu-index", type=int, default=0, help="the GPU nvidia-smi reads (default 0)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds one llama-bench run may take")
    a = ap.parse_args(argv)
    from rullama_py.bench import model_label

    model = a.model_name or model_label(a.model)
    try:
        if a.prompt_tokens < 1 or a.gen_tokens < 1 or a.repeats < 1:
            raise PeerError("--prompt-tokens, --gen-tokens and --repeats must each be 1 or more")
        for depth in a.depth:
            cmd = llama_bench_command(a.llama_bench, a.model, prompt_tokens=a.prompt_tokens, gen_tokens=a.gen_tokens,
                                      depth=depth, repeats=a.repeats, extra=extra)
            if a.gpu_memory:
                with GpuMemoryPeak(a.gpu_index) as mem:
                    entries = run_llama_bench(cmd, a.timeout)
            else:
                entries = run_llama_bench(cmd, a.timeout)
            recs = records_from_llama_bench(entries, engine=a.engine, model=model, command=shlex.join(cmd))
            if a.gpu_memory:
                for r in recs:
                    r["gpu_bytes"] = mem.peak_bytes
            print(json.dumps(recs, indent=1), flush=True)
            if a.record:  # depth by depth: a later run that fails keeps the earlier ones
                append_records(a.record, recs)
    except (PeerError, BenchError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
