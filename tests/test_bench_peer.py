"""tools/bench_peer.py: llama-bench's `-o json` output becomes records of docs/bench/README.md's format.

The sample below is written by hand in the layout llama.cpp documents for `llama-bench -o json` (a list of
tests, each with build_commit, gpu_info, backends, model_type, n_prompt, n_gen, n_depth, avg_ts, samples_ts,
...); its figures are made up. A fake llama-bench script prints it, so the whole tool runs without llama.cpp."""

from __future__ import annotations

import importlib.util
import json
import os
import stat
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def _tool():
    spec = importlib.util.spec_from_file_location("bench_peer", HERE.parent / "tools" / "bench_peer.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


bench_peer = _tool()


def _test(n_prompt: int, n_gen: int, n_depth: int, avg_ts: float, samples: list[float]) -> dict:
    return {
        "build_commit": "4f2a9c1e", "build_number": 6123, "cpu_info": "Intel(R) Xeon(R) Platinum 8480C",
        "gpu_info": "NVIDIA H200", "backends": "CUDA", "model_filename": "/tmp/e2b.gguf",
        "model_type": "gemma4 E2B Q4_K - Medium", "model_size": 3106735104, "model_n_params": 4647450147,
        "n_batch": 2048, "n_ubatch": 512, "n_threads": 16, "cpu_mask": "0x0", "cpu_strict": False, "poll": 50,
        "type_k": "f16", "type_v": "f16", "n_gpu_layers": 99, "split_mode": "layer", "main_gpu": 0,
        "no_kv_offload": False, "flash_attn": True, "tensor_split": "0.00", "use_mmap": True, "embeddings": False,
        "n_prompt": n_prompt, "n_gen": n_gen, "n_depth": n_depth, "test_time": "2026-12-03T10:15:02Z",
        "avg_ns": int(1e9 * (n_prompt + n_gen) / avg_ts), "stddev_ns": 250000, "avg_ts": avg_ts,
        "stddev_ts": 1.5, "samples_ns": [int(1e9 * (n_prompt + n_gen) / s) for s in samples], "samples_ts": samples,
    }


SAMPLE = [
    _test(128, 0, 0, 10512.734118, [10498.2, 10527.3]),
    _test(0, 64, 0, 231.418803, [231.1, 231.7]),
    _test(128, 0, 1024, 9810.112345, [9805.0, 9815.2]),
    _test(0, 64, 1024, 224.907125, [224.8, 225.0]),
]


def test_records_from_the_sample():
    recs = bench_peer.records_from_llama_bench(SAMPLE, engine="llama.cpp-cuda", model="e2b", command="llama-bench ...")
    assert [r["context"] for r in recs] == [0, 1024]
    r0, r1 = recs
    assert list(r0)[:7] == ["engine", "model", "prefill_tok_s", "decode_tok_s", "context", "commit", "command"]
    assert (r0["engine"], r0["model"], r0["commit"], r0["command"]) == ("llama.cpp-cuda", "e2b", "4f2a9c1e",
                                                                       "llama-bench ...")
    # the best repetition, as rullama bench reports its best repeat; llama-bench's mean beside it
    assert (r0["prefill_tok_s"], r0["decode_tok_s"]) == (10527.3, 231.7)
    assert (r1["prefill_tok_s"], r1["decode_tok_s"]) == (9815.2, 225.0)
    assert (r0["prefill_tok_s_mean"], r0["decode_tok_s_mean"]) == (10512.73, 231.42)
    assert (r0["prompt_tokens"], r0["gen_tokens"], r0["device"], r0["backends"]) == (128, 64, "NVIDIA H200", "CUDA")
    assert r1["prefill_tok_s_runs"] == [9805.0, 9815.2] and r1["decode_tok_s_runs"] == [224.8, 225.0]
    assert r0["flash_attn"] is True and r0["n_ubatch"] == 512
    json.dumps(recs)  # every value is plain JSON


def test_output_it_cannot_read_is_named():
    rec = bench_peer.records_from_llama_bench
    kw = dict(engine="llama.cpp-cuda", model="e2b", command="x")
    with pytest.raises(bench_peer.PeerError, match="no test results"):
        rec([], **kw)
    with pytest.raises(bench_peer.PeerError, match="no tg test at depth 0"):
        rec(SAMPLE[:1], **kw)
    with pytest.raises(bench_peer.PeerError, match="no 'n_gen' field"):
        rec([{"n_prompt": 128}], **kw)
    with pytest.raises(bench_peer.PeerError, match="two pp tests at depth 0"):
        rec(SAMPLE[:2] + [_test(256, 0, 0, 1.0, [1.0])], **kw)
    # a combined -pg test is not a prefill or a decode figure: left out
    assert len(rec(SAMPLE[:2] + [_test(128, 64, 0, 1.0, [1.0])], **kw)) == 1


def test_depths_and_the_command():
    assert bench_peer.depths("0,1024,8192,1024") == [0, 1024, 8192]
    with pytest.raises(Exception, match="not a list of depths"):
        bench_peer.depths("0,-5")
    cmd = bench_peer.llama_bench_command("lb", "m.gguf", prompt_tokens=128, gen_tokens=64, depth=1024, repeats=3,
                                         extra=["-fa", "1"])
    assert cmd == ["lb", "-m", "m.gguf", "-p", "128", "-n", "64", "-d", "1024", "-r", "3", "-o", "json", "-ngl", "99",
                   "-fa", "1"]
    assert "99" not in bench_peer.llama_bench_command("lb", "m", prompt_tokens=1, gen_tokens=1, depth=0, repeats=1,
                                                      extra=["-ngl", "20"])


def _script(path: Path, body: str) -> Path:
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


FAKE_LLAMA_BENCH = """
import json, sys, time, os
args = sys.argv[1:]
opt = lambda name: args[args.index(name) + 1]
assert opt("-o") == "json" and opt("-ngl") == "99"
tests = json.loads(os.environ["FAKE_TESTS"])
depth = int(opt("-d"))
print("llama-bench: loading model", file=sys.stderr)
mem = os.environ.get("FAKE_MEM")
if mem:
    open(mem, "w").write("3000")
    time.sleep(0.5)
    open(mem, "w").write("1000")
out = [dict(t, n_depth=depth, n_prompt=int(opt("-p")) if t["n_prompt"] else 0, n_gen=int(opt("-n")) if t["n_gen"] else 0)
       for t in tests]
if os.environ.get("FAKE_FAIL"):
    print("ggml_cuda_init: failed to initialize CUDA", file=sys.stderr)
    sys.exit(1)
print(json.dumps(out, indent=2))
"""


def test_the_tool_runs_each_depth_and_appends_records(tmp_path, monkeypatch, capsys):
    lb = _script(tmp_path / "llama-bench", FAKE_LLAMA_BENCH)
    smi = _script(tmp_path / "nvidia-smi", f"print(open({str(tmp_path / 'mem')!r}).read())")
    (tmp_path / "mem").write_text("1000")
    monkeypatch.setenv("FAKE_TESTS", json.dumps(SAMPLE[:2]))
    monkeypatch.setenv("FAKE_MEM", str(tmp_path / "mem"))
    monkeypatch.setattr(bench_peer.GpuMemoryPeak, "QUERY", [str(smi)])
    out = tmp_path / "records.json"
    out.write_text(json.dumps([{"engine": "rullama-py", "model": "e2b"}]))
    assert bench_peer.main([str(lb), "/tmp/e2b.gguf", "--engine", "llama.cpp-cuda", "--prompt-tokens", "32",
                            "--gen-tokens", "8", "--depth", "0,512", "--repeats", "2", "--record", str(out),
                            "--gpu-memory", "--", "-fa", "1"]) == 0
    recs = json.loads(out.read_text())
    assert recs[0] == {"engine": "rullama-py", "model": "e2b"}  # what was there stays
    new = recs[1:]
    assert [r["context"] for r in new] == [0, 512]
    assert all(r["model"] == "e2b" and r["engine"] == "llama.cpp-cuda" for r in new)  # the file name without .gguf
    assert all((r["prompt_tokens"], r["gen_tokens"]) == (32, 8) for r in new)
    assert new[1]["command"] == (f"{lb} -m /tmp/e2b.gguf -p 32 -n 8 -d 512 -r 2 -o json -ngl 99 -fa 1")
    assert all(r["gpu_bytes"] == 2000 << 20 for r in new)


def test_a_failing_or_missing_llama_bench_is_a_sentence(tmp_path, monkeypatch, capsys):
    lb = _script(tmp_path / "llama-bench", FAKE_LLAMA_BENCH)
    monkeypatch.setenv("FAKE_TESTS", json.dumps(SAMPLE[:2]))
    monkeypatch.setenv("FAKE_FAIL", "1")
    assert bench_peer.main([str(lb), "m.gguf", "--engine", "llama.cpp-vulkan"]) == 1
    err = capsys.readouterr().err
    assert "llama-bench failed (exit status 1)" in err and "failed to initialize CUDA" in err
    assert bench_peer.main([str(tmp_path / "nothing"), "m.gguf", "--engine", "llama.cpp-vulkan"]) == 1
    assert "does not exist" in capsys.readouterr().err
