"""The diffusion mode in headless Chromium (WebGPU on SwiftShader) with the tiny DiffusionGemma
(tests/fixtures/diffusion_gemma_tiny.gguf: vocab 512, canvas 16) served by `rullama serve`, and the tiny Gemma 4
beside it (as an Ollama model) for the wrong-mode sentences: tests/browser/diffusion_driver.mjs drives the page,
the checks are here, against diffusion.Diffusion run natively with the same prompt, steps and seed.

Screenshots land in test-artifacts/browser/diffusion-*.png: the model loaded in Diffusion mode, the reply bubble
at several steps (the grid of cells sharpening, accepted ones bold and blue, changed ones dimmed, the step counter
and the entropy chart), the reply, Stop, and each wrong-mode sentence.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import require, run
from test_browser import ART, OLLAMA_NAME, Served, _missing, _ollama_store

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).resolve().parent / "diffusion_driver.mjs"
TINY_DIFFUSION = ROOT / "tests" / "fixtures" / "diffusion_gemma_tiny.gguf"
TINY_CHAT = ROOT / "tests" / "fixtures" / "gemma4_tiny_e2b_f32.gguf"
PROMPT = "Tell me a story."
STEPS, SEED, MAX_TOKENS = 8, 5, 24  # 24 tokens: a second canvas of 16 unless the first one ends the text
STOP_STEPS = 200
MAX_CONTEXT = 512
SHOT_STEPS = [1, 3, 5, 8, 10]


def visible(text: str) -> str:
    """The page's visible() (web/js/state.js): control characters but newline and tab as their Unicode pictures."""
    return "".join(chr(0x2400 + ord(c)) if ord(c) < 0x20 and c not in "\n\t" else c for c in text)


@pytest.fixture(scope="module", autouse=True)
def _needs_browser():
    require(_missing(), "the browser tests")
    require(None if TINY_DIFFUSION.exists() else f"{TINY_DIFFUSION.name} is not generated yet", "the diffusion "
            "browser test")


@pytest.fixture(scope="module")
def page_run(tmp_path_factory):
    ART.mkdir(parents=True, exist_ok=True)
    for old in ART.glob("diffusion-*.png"):
        old.unlink()
    s = Served(model_path=TINY_DIFFUSION, ollama_root=_ollama_store(tmp_path_factory.mktemp("ollama"), TINY_CHAT))
    conf = {"url": s.url, "artifacts": str(ART), "prompt": PROMPT, "steps": STEPS, "seed": SEED,
            "max_tokens": MAX_TOKENS, "stop_steps": STOP_STEPS, "max_context": MAX_CONTEXT, "shot_steps": SHOT_STEPS,
            "chat_model_id": "ollama:" + OLLAMA_NAME, "timeout_s": 600}
    env = dict(os.environ, XDG_RUNTIME_DIR=os.environ.get("XDG_RUNTIME_DIR", "/tmp"))
    try:
        proc = subprocess.run(["node", str(DRIVER), json.dumps(conf)], capture_output=True, text=True, timeout=900,
                              env=env)
    finally:
        s.close()
    (ART / "diffusion.log").write_text(proc.stdout + proc.stderr)
    line = next((l for l in reversed(proc.stdout.splitlines()) if l.startswith("RESULT:")), None)
    if line is None:
        pytest.fail(f"the driver exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    res = json.loads(line[len("RESULT:"):])
    if not res["ok"]:
        pytest.fail(f"the diffusion scenario failed: {res['error']}\n--- log tail ---\n{proc.stdout[-3000:]}")
    return res


@pytest.fixture(scope="module")
def native():
    """diffusion.Diffusion on wgpu-py with the page's settings: every step of the same reply."""
    from rullama_py.diffusion import Diffusion, DiffusionParams

    async def go():
        diff = await Diffusion.load(str(TINY_DIFFUSION), max_context=MAX_CONTEXT)
        await diff.start([{"role": "user", "content": PROMPT}],
                         DiffusionParams(steps=STEPS, seed=SEED, max_new_tokens=MAX_TOKENS))
        return [s async for s in diff.steps()], diff

    return run(go())


def test_a_diffusion_model_loads_in_diffusion_mode(page_run):
    ld = page_run["load"]
    assert ld["mode"] == "diffusion" and ld["checked"] == "diffusion"
    d = ld["model"]["diffusion"]
    assert d["canvas_length"] == 16 and ld["model"]["arch"] == "diffusion-gemma"
    assert "diffusion, canvas 16" in ld["pill"]


def test_the_reply_is_the_native_run_step_for_step(page_run, native):
    """Same prompt, steps and seed: the same canvases (the draws come from a counter-based generator, the same on
    every device; Pyodide + SwiftShader against wgpu-py + lavapipe), the same text and counts."""
    want, diff = native
    steps, reply = page_run["steps"], page_run["reply"]
    assert reply.get("error") is None, reply
    assert len(steps) == len(want)
    assert [s["ids"] for s in steps] == [[int(x) for x in w.argmax] for w in want]
    assert [s["n_accepted"] for s in steps] == [w.n_accepted for w in want]
    for s, w in zip(steps, want):
        assert s["mean_entropy"] == pytest.approx(w.mean_entropy, rel=1e-3, abs=1e-6)
    assert reply["ids"] == [int(x) for x in diff.output] and reply["text"] == diff.text
    st = reply["stats"]
    assert (st["tokens"], st["forwards"]) == (diff.stats["tokens"], diff.stats["forwards"])
    # The bubble became a reply like any other: the text, and "N tokens in M forwards".
    last = page_run["shown"][-1]
    assert last["role"] == "assistant" and last["text"] == visible(diff.text)
    assert last["meta"].startswith(f"{st['tokens']} tokens in {st['forwards']} forwards")
    print(f"browser: {len(steps)} steps in {page_run['reply_seconds']:.1f} s; scenario {page_run['seconds']:.0f} s")


def test_the_canvas_sharpens_in_place_step_by_step(page_run):
    """Each painted state of the bubble matches its step: a cell per position, the accepted ones marked, the
    ones whose guess changed dimmed, the counter saying the step; the chart drawn; the page kept drawing frames."""
    seen = page_run["seen"]
    assert len(seen) >= 3, seen  # several steps were painted, not only the last
    for s in seen:
        assert s["cells"] == 16 and s["accepted"] == s["n_accepted"], s
        assert s["unsettled"] == s["n_unsettled"] and f"step {s['step']}/{STEPS}, canvas {s['block'] + 1}" in s["counter"]
    assert all(s["unsettled"] == 16 for s in seen if s["step"] == 1)  # a canvas's first step: nothing settled yet
    shots = page_run["shots"]
    assert shots and all(b["chartBlue"] > 10 and len(b["cells"]) == 16 for b in shots)
    f = page_run["frames"]
    assert f["n"] > 10 and f["p99"] < 250, f


def test_stop_keeps_the_text_so_far(page_run):
    st = page_run["stopped"]
    r = st["reply"]
    assert r["stats"]["finish_reason"] == "stopped" and 3 <= st["steps"] < STOP_STEPS
    assert r["stats"]["forwards"] == st["steps"] and st["last"]["done"]
    assert st["shown"]["text"] == r["text"] and "stopped" in st["shown"]["meta"]


def test_the_wrong_mode_is_said_in_a_sentence(page_run):
    name = TINY_DIFFUSION.name
    chose = page_run["chose_chat"]
    assert not chose["hidden"] and chose["kind"] == "mode"
    assert chose["message"] == (f"{name} is a diffusion model: it writes a whole canvas at a time, not token by "
                                "token. Switch the mode to Diffusion to run it.")
    refused = page_run["chat_refused"]
    assert refused["kind"] == "diffusion-model" and refused["message"] == chose["message"]
    assert refused["composer"] == "in chat mode" and refused["messages"] == 0  # the message went back
    assert page_run["back_to_diffusion"]["hidden"]
    assert page_run["load_chat"]["mode"] == "chat"
    chose = page_run["chose_diffusion"]
    chat_name = page_run["load_chat"]["model"]["name"]
    assert not chose["hidden"] and chose["kind"] == "mode"
    assert chose["message"] == (f"{chat_name} is not a diffusion model: it writes token by token, so it cannot run "
                                "in diffusion mode. Switch the mode to Chat.")
    refused = page_run["diffusion_refused"]
    assert refused["kind"] == "not-diffusion" and refused["message"] == chose["message"]
    assert refused["composer"] == "in diffusion mode" and refused["messages"] == 0
