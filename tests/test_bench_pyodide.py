"""rullama_py.bench's pieces, and tools/bench_pyodide.mjs: the benchmark inside Pyodide (Node, Dawn on SwiftShader)
on the tiny Gemma 4 fixture, its records in docs/bench/README.md's format. The native side of the same measurement
is tested through `rullama bench` in tests/test_cli.py."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import require
from rullama_py import bench

ROOT = Path(__file__).resolve().parent.parent
TOOL = ROOT / "tools/bench_pyodide.mjs"
TINY_Q4 = ROOT / "tests/fixtures/gemma4_tiny_q4_k_m.gguf"
SWIFTSHADER = "/usr/lib/chromium/vk_swiftshader_icd.json"


def test_prompt_ids_stay_clear_of_the_special_ids():
    ids = bench.prompt_ids(5000, 300)
    assert min(ids) == 5 and max(ids) == 294 and len(set(ids)) == 290  # 31 and 290 are coprime: every id once
    assert bench.prompt_ids(3, 262144) == [12, 43, 74]


def test_settings_out_of_range_are_sentences():
    bench.check_settings(100, prompt_tokens=50, gen_tokens=30, repeats=1, depth=20)  # exactly fits
    with pytest.raises(bench.BenchError, match="need a context of 101 tokens, more than the 100 given"):
        bench.check_settings(100, prompt_tokens=50, gen_tokens=30, repeats=1, depth=21)
    with pytest.raises(bench.BenchError, match="0 repeats: give 1 or more"):
        bench.check_settings(100, prompt_tokens=1, gen_tokens=1, repeats=0)
    with pytest.raises(bench.BenchError, match="-1 depth: give 0 or more"):
        bench.check_settings(100, prompt_tokens=1, gen_tokens=1, repeats=1, depth=-1)


def test_records_are_appended_to_a_json_list_only(tmp_path):
    rec = bench.record({"prefill_tok_s": 10.0, "decode_tok_s": 2.0, "depth": 64, "features": ["subgroups"]},
                       model="m", commit="abc1234", command="x", engine="rullama-py-pyodide")
    assert list(rec) == ["engine", "model", "prefill_tok_s", "decode_tok_s", "context", "commit", "command", "depth",
                         "features"]
    assert rec["context"] == 64
    path = tmp_path / "runs.json"
    bench.append_records(path, [rec])
    bench.append_records(path, [rec])
    assert json.loads(path.read_text()) == [rec, rec]
    path.write_text('{"engine": "x"}')
    with pytest.raises(bench.BenchError, match="holds a JSON dict, not a list"):
        bench.append_records(path, [rec])
    path.write_text("[1, 2")
    with pytest.raises(bench.BenchError, match="is not JSON"):
        bench.append_records(path, [rec])
    assert path.read_text() == "[1, 2"  # left alone
    assert bench.model_label("/models/gemma-3-270m-Q4_K_M.GGUF") == "gemma-3-270m-Q4_K_M"


def _node_missing() -> str | None:
    if not shutil.which("node"):
        return "node is not installed"
    if not (ROOT / "web/node_modules/pyodide/pyodide-lock.json").exists():
        return "web/node_modules is missing (run the setup)"
    if not Path(SWIFTSHADER).exists():
        return f"{SWIFTSHADER} is missing (Debian chromium package)"
    return None


def _tool(*args, timeout=60):
    env = dict(os.environ, VK_ICD_FILENAMES=SWIFTSHADER, XDG_RUNTIME_DIR=os.environ.get("XDG_RUNTIME_DIR", "/tmp"))
    return subprocess.run(["node", str(TOOL), *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT)


@pytest.mark.parametrize("args, sentence", [
    (["--foo", "1"], "unknown option --foo."),
    (["--depth", "0,x"], "--depth 0,x: give whole numbers of 0 or more, separated by commas."),
    (["--gen-tokens", "0"], "--gen-tokens 0 is not a whole number of 1 or more."),
    (["--ctx"], "--ctx needs a value."),
])
def test_bench_pyodide_bad_options_are_sentences(args, sentence):
    require(None if shutil.which("node") else "node is not installed", "tools/bench_pyodide.mjs")
    proc = _tool(TINY_Q4, *args)
    assert proc.returncode == 2 and proc.stderr.startswith("bench_pyodide: " + sentence), proc.stderr
    proc = _tool("no-such-model.gguf")
    assert proc.returncode == 2 and proc.stderr.strip() == "bench_pyodide: no-such-model.gguf: no such file."


def test_bench_pyodide_records_the_tiny_model(tmp_path):
    """Two depths in one load, appended to a record file that holds a record already; the records' command is
    what was measured (not the folders the files came from). With --ple-on-gpu: the per-layer-embedding table
    streamed onto the GPU in Pyodide, and decode a step ahead."""
    require(_node_missing(), "tools/bench_pyodide.mjs")
    subprocess.run([sys.executable, str(ROOT / "tools/pyodide_dist.py")], check=True, stdout=subprocess.DEVNULL)
    rec = tmp_path / "records.json"
    rec.write_text('[{"engine": "rullama-py", "model": "gemma4_tiny_q4_k_m"}]\n')
    proc = _tool(TINY_Q4, "--prompt-tokens", 4, "--gen-tokens", 2, "--repeats", 1, "--ctx", 64, "--prefill-chunk", 8,
                 "--depth", "0,20", "--record", rec, "--wheels", ROOT / "web/dist/wheels", "--commit", "abc1234", "--ple-on-gpu",
                 timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = json.loads(proc.stdout)
    records = json.loads(rec.read_text())
    assert records[0] == {"engine": "rullama-py", "model": "gemma4_tiny_q4_k_m"} and records[1:] == printed
    assert [r["context"] for r in printed] == [0, 20]
    for r in printed:
        assert list(r)[:7] == ["engine", "model", "prefill_tok_s", "decode_tok_s", "context", "commit", "command"]
        assert (r["engine"], r["model"], r["commit"]) == ("rullama-py-pyodide", "gemma4_tiny_q4_k_m", "abc1234")
        assert r["command"] == ("node tools/bench_pyodide.mjs " + str(TINY_Q4) + " --prompt-tokens 4 --gen-tokens 2"
                                " --repeats 1 --ctx 64 --prefill-chunk 8 --depth 0,20 --record " + str(rec)
                                + " --ple-on-gpu")
        assert r["ple_on_gpu"] is True and r["decode_ahead"] is True
        assert r["prefill_tok_s"] > 0 and r["decode_tok_s"] > 0 and r["dispatches_per_token"] > 0
        assert (r["prompt_tokens"], r["gen_tokens"], r["prefill_chunk"], r["max_context"]) == (4, 2, 8, 64)
        assert r["device"]["architecture"] == "swiftshader" and "shader-f16" not in r["features"]
        assert r["decode_host_ms"]["steps"] == 2
