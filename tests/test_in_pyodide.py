"""The `pyodide`-marked kernel tests, run again inside Pyodide 0.27.7 with WebGPU (Node + Dawn on SwiftShader).

One Node process runs them all (tests/pyodide_node.mjs); each appears here as its own pytest result, with the
same id as the native test. Needs the setup's web/node_modules and Chromium's SwiftShader ICD; in CI a missing
piece is a failure, elsewhere a skip.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import pyodide_runner
from conftest import require

ROOT = Path(__file__).resolve().parent.parent
SWIFTSHADER = "/usr/lib/chromium/vk_swiftshader_icd.json"
IDS = [test_id for test_id, _, _ in pyodide_runner.collect()]


def _missing() -> str | None:
    if not shutil.which("node"):
        return "node is not installed"
    if not (ROOT / "web/node_modules/pyodide/pyodide-lock.json").exists():
        return "web/node_modules is missing (run the setup)"
    if not Path(SWIFTSHADER).exists():
        return f"{SWIFTSHADER} is missing (Debian chromium package)"
    return None


@pytest.fixture(scope="session")
def pyodide_results():
    require(_missing(), "the Pyodide tests")
    # Always test the current working tree: rebuild our wheel (about two seconds).
    subprocess.run([sys.executable, str(ROOT / "tools/pyodide_dist.py")], check=True, stdout=subprocess.DEVNULL)
    env = dict(os.environ, VK_ICD_FILENAMES=SWIFTSHADER, XDG_RUNTIME_DIR=os.environ.get("XDG_RUNTIME_DIR", "/tmp"))
    failures = []
    for attempt in range(2):  # once more after a run that died without results (seen once on a loaded machine)
        proc = subprocess.run(["node", str(ROOT / "tests/pyodide_node.mjs")], capture_output=True, text=True, env=env,
                              timeout=1800)
        line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULTS:")), None)
        if line is not None:
            if failures:
                print("Pyodide run retried after:\n" + failures[0], file=sys.stderr)
            return json.loads(line[len("RESULTS:"):])
        failures.append(f"exit {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    pytest.fail("Pyodide run failed twice; first " + failures[0] + "\nthen " + failures[1])


@pytest.mark.parametrize("test_id", IDS)
def test_in_pyodide(pyodide_results, test_id):
    r = pyodide_results.get(test_id)
    assert r is not None, f"{test_id} did not run in Pyodide"
    if r["outcome"] == "skipped":
        pytest.skip(r["message"])
    assert r["outcome"] == "passed", r["message"]
