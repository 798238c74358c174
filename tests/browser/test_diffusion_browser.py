"""The diffusion mode in headless Chromium (WebGPU on SwiftShader) with the tiny DiffusionGemma
(tests/fixtures/diffusion_gemma_tiny.gguf: vocab 512, canvas 16) served by `rullama serve`, and the tiny Gemma 4
beside it (as an Ollama model) for the wrong-mode sentences: tests/browser/diffusion_driver.mjs drives the page,
the checks are here, against diffusion.Diffusion run natively with the same prompt, steps and seed.

Screenshots land in test-artifacts/browser/diffusion-*.png: the model loaded in Diffusion mode, the reply bubble
at several steps (the page and the bubble alone: the grid of cells sharpening, accepted ones bold and blue, changed
ones dimmed, the step counter and the entropy chart), the replies, Stop, and each wrong-mode sentence.

Which steps can be compared with the native run: the page's and the native run's numbers differ by about 1e-3
(relative: the first step's mean entropy differed by 1.1e-3 on a random tiny model; the f16 KV cache, converted
by pack2x16float on two different stacks, is the likely cause, not checked). An argmax keeps its margin against
that on this model (the first step's argmax canvases were equal); the entropy-bound acceptance
(lower entropies summed against 0.1) and the inverse-CDF draws do not always, and once one position is accepted
differently the canvases part. So the 8-step reply is compared at its first step (its argmax depends only on the
prompt and the seeded first canvas), and the equality of whole replies is checked on a reply of one step a canvas
(two canvases: the second reads the first through the encoder): each canvas is then its first step's argmax.
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
SAME_STEPS, SAME_MAX_TOKENS = 1, 32  # the reply compared whole with the native run (see above)
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
            "max_tokens": MAX_TOKENS, "same_steps": SAME_STEPS, "same_max_tokens": SAME_MAX_TOKENS,
            "stop_steps": STOP_STEPS, "max_context": MAX_CONTEXT, "shot_steps": SHOT_STEPS,
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


def native_run(steps: int, max_tokens: int):
    """diffusion.Diffusion on wgpu-py with the page's settings: every step of the same reply."""
    from rullama_py.diffusion import Diffusion, DiffusionParams

    async def go():
        diff = await Diffusion.load(str(TINY_DIFFUSION), max_context=MAX_CONTEXT)
        await diff.start([{"role": "user", "content": PROMPT}],
                         DiffusionParams(steps=steps, seed=SEED, max_new_tokens=max_tokens))
        return [s async for s in diff.steps()], diff

    return run(go())


def test_a_diffusion_model_loads_in_diffusion_mode(page_run):
    ld = page_run["load"]
    assert ld["mode"] == "diffusion" and ld["checked"] == "diffusion"
    d = ld["model"]["diffusion"]
    assert d["canvas_length"] == 16 and ld["model"]["arch"] == "diffusion-gemma"
    assert "diffusion, canvas 16" in ld["pill"]


def test_a_reply_of_one_step_a_canvas_is_the_native_one(page_run):
    want, diff = native_run(SAME_STEPS, SAME_MAX_TOKENS)
    same = page_run["same"]
    steps, reply = same["steps"], same["reply"]
    assert reply.get("error") is None, reply
    assert [s["ids"] for s in steps] == [[int(x) for x in w.argmax] for w in want]
    assert all(s["block_done"] and s["step"] == 1 for s in steps)  # canvases of one step each
    for s, w in zip(steps, want):  # f16 KV cache rounding: see the module's docstring
        assert s["mean_entropy"] == pytest.approx(w.mean_entropy, rel=1e-2)
    assert reply["ids"] == [int(x) for x in diff.output] and reply["text"] == diff.text
    st = reply["stats"]
    assert (st["tokens"], st["forwards"], st["canvases"]) == (diff.stats["tokens"], diff.stats["forwards"], len(want))
    # The bubble became a reply like any other: the text, and "N tokens in M forwards".
    assert same["shown"]["role"] == "assistant" and same["shown"]["text"] == visible(diff.text)
    forwards = "1 forward" if len(want) == 1 else f"{len(want)} forwards"
    assert same["shown"]["meta"].startswith(f"{st['tokens']} tokens in {forwards} (")


def test_the_sharpening_reply_starts_as_the_native_one_and_ends_as_shown(page_run):
    want, _ = native_run(STEPS, MAX_TOKENS)
    sh = page_run["sharpen"]
    steps, reply = sh["steps"], sh["reply"]
    assert reply.get("error") is None, reply
    first = steps[0]
    assert (first["block"], first["step"], first["steps"]) == (0, 1, STEPS)
    assert first["ids"] == [int(x) for x in want[0].argmax]
    assert first["mean_entropy"] == pytest.approx(want[0].mean_entropy, rel=1e-2)
    # The steps run their course: S steps a canvas unless it converged, until max tokens or the end of the text.
    blocks = [s["block"] for s in steps]
    assert blocks == sorted(blocks) and steps[-1]["done"] and len(steps) == reply["stats"]["forwards"]
    for b in set(blocks):
        mine = [s for s in steps if s["block"] == b]
        assert [s["step"] for s in mine] == list(range(1, len(mine) + 1))
        assert len(mine) == STEPS or mine[-1]["converged"] or mine[-1]["done"]
    # What the bubble shows at the end is the page's own last canvas: every finished canvas, cut at the end.
    assert reply["text"] == steps[-1]["text"] and sh["shown"]["text"] == visible(reply["text"])
    st = reply["stats"]
    assert sh["shown"]["meta"].startswith(f"{st['tokens']} tokens in {st['forwards']} forwards (")
    assert st["finish_reason"] in ("stop", "length") and (st["finish_reason"] == "stop") == (steps[-1]["end"] is not None)
    print(f"browser: {len(steps)} steps in {sh['seconds']:.1f} s; scenario {page_run['seconds']:.0f} s")


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
    assert shots and all(len(b["cells"]) == 16 for b in shots)
    assert all(b["chartBlue"] > 10 for b in shots if b["event"]["step"] > 1 or b["event"]["block"] > 0)  # a line
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
    assert page_run["back_to_diffusion"]["hidden"]  # the mode fits the model again: the sentence goes
    assert page_run["load_chat"]["mode"] == "chat"
    chose = page_run["chose_diffusion"]
    chat_name = page_run["load_chat"]["model"]["name"]
    assert not chose["hidden"] and chose["kind"] == "mode"
    assert chose["message"] == (f"{chat_name} is not a diffusion model: it writes token by token, so it cannot run "
                                "in diffusion mode. Switch the mode to Chat.")
    refused = page_run["diffusion_refused"]
    assert refused["kind"] == "not-diffusion" and refused["message"] == chose["message"]
    assert refused["composer"] == "in diffusion mode" and refused["messages"] == 0
