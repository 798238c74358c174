"""tools/check_fullsize_page.py: its verdicts on a run's figures (quick), and the full-size run itself (slow, opt-in).

The full run loads the 6.2 GB Gemma 4 E2B-layout file in headless Chromium twice (HTTP Range, then the OPFS copy)
and decodes on the browser's GPU; on a software GPU that is an hour. It runs only when RULLAMA_FULLSIZE_GGUF names
the file (write it with `python tools/check_fullsize_page.py --write PATH`), so CI, which runs the slow tests
too, skips it:

    RULLAMA_FULLSIZE_GGUF=/tmp/e2b-full.gguf .venv/bin/python -m pytest tests/test_check_fullsize_page.py -k full
"""

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import check_fullsize_page as tool  # noqa: E402


def run_figures(**over):
    page = {"ok": True,
            "http": {"ids": [5, 6, 7], "host": {"ple_read_ms": 9.0}},
            "opfs": {"ids": [5, 6, 7], "host": {"ple_read_ms": 0.2}},
            "heaps": {"wasm_bytes": 600e6, "worker_js_peak_bytes": 40e6, "page_js_peak_bytes": 20e6},
            "progress_texts": ["Downloading to the browser cache: 1.20 GB of 6.16 GB · about 2 min left"]}
    page.update(over)
    return {"native": {"ids": [5, 6, 7]}, "page": page}


def verdicts(out):
    return {name: ok for name, ok, _ in tool.checks(out, heap_goal_mb=1000, ple_goal_ms=0.5)}


def test_checks_pass_on_good_figures():
    v = verdicts(run_figures())
    assert v and all(v.values()), v
    assert "opfs: PLE row wait per decode step" in v  # the HTTP run's 9 ms is not held to the OPFS goal


@pytest.mark.parametrize("over, failing", [
    ({"opfs": {"ids": [5, 6, 8], "host": {"ple_read_ms": 0.2}}}, "opfs: tokens equal native"),
    ({"opfs": {"ids": [5, 6, 7], "host": {"ple_read_ms": 0.8}}}, "opfs: PLE row wait per decode step"),
    ({"heaps": {"wasm_bytes": 1.2e9, "worker_js_peak_bytes": 40e6, "page_js_peak_bytes": 20e6}}, "peak wasm"),
    ({"progress_texts": ["Compiling GPU kernels…"]}, "page shows the download size and time left"),
])
def test_checks_fail_on_each_missed_goal(over, failing):
    v = verdicts(run_figures(**over))
    assert v[failing] is False
    assert sum(not ok for ok in v.values()) == 1, v


def test_bad_arguments_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        tool.main([str(tmp_path / "missing.gguf")])
    assert "is not a file" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.browser
def test_full_size_e2b_in_the_page():
    path = os.environ.get("RULLAMA_FULLSIZE_GGUF")
    if not path:
        pytest.skip("opt-in: RULLAMA_FULLSIZE_GGUF names the full-size E2B-layout file (about an hour)")
    assert tool.main([path]) == 0
