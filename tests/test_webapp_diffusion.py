"""The diffusion mode's Python calls (rullama_py.webapp.WebApp.load / diffuse / chat / stop with a DiffusionGemma),
natively: what web/worker.js calls inside Pyodide. The model is the tiny DiffusionGemma fixture
(tests/fixtures/diffusion_gemma_tiny.gguf: vocab 512, canvas 16); the reference is diffusion.Diffusion driven
directly with the same settings on the same device, so the page's events must be its steps exactly."""

import json
from pathlib import Path

import pytest

from conftest import require, run
from rullama_py.webapp import WebApp

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TINY_DIFFUSION = FIXTURES / "diffusion_gemma_tiny.gguf"
TINY_CHAT = FIXTURES / "gemma4_tiny_e2b_f32.gguf"
MESSAGES = [{"role": "user", "content": "hello there"}]
REQUEST = {"steps": 5, "seed": 3, "max_tokens": 40}


class Events:
    """emit(event, payload_json, data=None), keeping the events and the size of their JSON; `on_step(app, ev)` is
    called after each diffusion event (to press Stop mid-way)."""

    def __init__(self):
        self.all = []
        self.sizes = []
        self.on_step = None
        self.app = None

    def __call__(self, event, payload, data=None):
        ev = json.loads(payload)
        self.all.append((event, ev))
        if event == "diffusion":
            self.sizes.append(len(payload))
            if self.on_step is not None:
                self.on_step(self.app, ev)

    def of(self, event):
        return [p for e, p in self.all if e == event]


def call(coro) -> dict:
    return json.loads(run(coro))


def loaded(path: Path) -> tuple[WebApp, Events]:
    """A WebApp with `path` loaded as the page loads it; its load() answer is app.loaded_info."""
    ev = Events()
    app = ev.app = WebApp(ev)
    r = call(app.load("path", str(path), json.dumps({"max_context": 512, "name": path.name})))
    assert r["ok"], r
    app.loaded_info = r
    return app, ev


@pytest.fixture(scope="module")
def diffusion_app():
    require(None if TINY_DIFFUSION.exists() else f"{TINY_DIFFUSION.name} is not generated yet", "the webapp's "
            "diffusion tests")
    return loaded(TINY_DIFFUSION)


@pytest.fixture(scope="module")
def reference(diffusion_app):
    """The steps diffusion.Diffusion makes of MESSAGES with REQUEST's settings, on the app's device."""
    from rullama_py.diffusion import Diffusion, DiffusionParams

    app, _ = diffusion_app

    async def go():
        diff = await Diffusion.load(str(TINY_DIFFUSION), max_context=512, device=app.device)
        await diff.start(MESSAGES, DiffusionParams(steps=REQUEST["steps"], seed=REQUEST["seed"],
                                                   max_new_tokens=REQUEST["max_tokens"]))
        return [s async for s in diff.steps()], diff

    return run(go())


def test_load_says_it_is_a_diffusion_model_with_its_defaults(diffusion_app):
    app, ev = diffusion_app
    assert app.engine is None and app.diffusion is not None
    cfg = app.diffusion.config
    r = app.loaded_info
    assert r["name"] == TINY_DIFFUSION.name and r["arch"] == "diffusion-gemma" and r["has_vision"] is False and r["identity"] == ""
    assert r["diffusion"] == {"canvas_length": cfg.diffusion.canvas_length, "steps": cfg.diffusion.max_steps,
                              "t_min": cfg.diffusion.t_min, "t_max": cfg.diffusion.t_max,
                              "entropy_bound": cfg.diffusion.entropy_bound}
    assert r["diffusion"]["canvas_length"] == 16 and r["max_context"] == 512
    assert [p["phase"] for p in ev.of("progress")][-1] == "ready"


def test_diffuse_streams_the_drivers_steps(diffusion_app, reference):
    app, ev = diffusion_app
    want, diff = reference
    n0 = len(ev.of("diffusion"))
    r = call(app.diffuse(json.dumps(MESSAGES), json.dumps(REQUEST)))
    assert r["ok"], r
    got = ev.of("diffusion")[n0:]
    assert len(got) == len(want) == r["steps"]
    prev = None
    for e, s in zip(got, want):
        assert (e["block"], e["step"], e["steps"]) == (s.block, s.step, REQUEST["steps"])
        assert e["ids"] == [int(x) for x in s.argmax] and e["pieces"] == s.pieces
        assert e["accepted"] == [int(a) for a in s.accepted] and sum(e["accepted"]) == e["n_accepted"] == s.n_accepted
        assert e["mean_entropy"] == pytest.approx(s.mean_entropy, rel=1e-6)
        assert e["temperature"] == pytest.approx(s.temperature)
        assert (e["stable"], e["converged"], e["block_done"], e["done"]) == (s.stable, s.converged, s.block_done, s.done)
        # settled: the argmax kept from the step before, within a canvas (nothing is settled on its first step)
        if prev is None:
            assert e["settled"] == [0] * e["canvas_length"]
        else:
            assert e["settled"] == [int(a == b) for a, b in zip(e["ids"], prev["ids"])]
        end = next((i for i, x in enumerate(e["ids"]) if x in diff.eos_ids), None)
        assert e["end"] == end
        assert ("text" in e) == e["block_done"] and (not e["block_done"] or e["text"] == s.text)
        prev = None if e["block_done"] else e
    assert got[-1]["done"] and r["text"] == diff.text and r["ids"] == [int(x) for x in diff.output]
    st = diff.stats
    assert (r["tokens"], r["forwards"], r["canvases"]) == (st["tokens"], st["forwards"], got[-1]["block"] + 1)
    assert r["tokens_per_forward"] == pytest.approx(st["tokens_per_forward"])
    ended = any(x in diff.eos_ids for x in got[-1]["ids"])
    assert r["finish_reason"] == ("stop" if ended else "length" if st["tokens"] >= REQUEST["max_tokens"] else "context")
    # Small messages: per position an id, a short piece and two flags, never a row of logits.
    assert max(ev.sizes[n0:]) < 400 + 60 * got[0]["canvas_length"]


def test_stop_ends_after_the_step_running_and_keeps_its_text(diffusion_app):
    app, ev = diffusion_app
    n0 = len(ev.of("diffusion"))
    ev.on_step = lambda a, e: a.stop() if e["step"] == 2 else None
    try:
        r = call(app.diffuse(json.dumps(MESSAGES), json.dumps({**REQUEST, "steps": 20})))
    finally:
        ev.on_step = None
    got = ev.of("diffusion")[n0:]
    assert r["ok"] and r["finish_reason"] == "stopped", r
    # Stop during step 2's event: diffusion.cancel(), so step 3 ends the canvas and the reply with its argmax.
    assert [e["step"] for e in got] == [1, 2, 3] and got[-1]["done"] and got[-1]["block_done"]
    assert r["text"] == got[-1]["text"] and r["forwards"] == 3
    assert not app.busy and call(app.diffuse(json.dumps(MESSAGES), json.dumps({**REQUEST, "steps": 1})))["ok"]


@pytest.mark.parametrize("request_, words", [
    ({"steps": 0}, "Steps must be 1..1000, got 0."),
    ({"steps": 1001}, "Steps must be 1..1000, got 1001."),
    ({"steps": "many"}, "The number of steps must be a whole number, not 'many'."),
    ({"t_min": 0.9, "t_max": 0.5}, "Temperatures must satisfy 0 < t_min <= t_max <= 100, got 0.9 and 0.5."),
    ({"max_tokens": 0}, "Max_new_tokens must be at least 1, got 0."),
])
def test_bad_settings_are_sentences(diffusion_app, request_, words):
    app, ev = diffusion_app
    n0 = len(ev.of("diffusion"))
    r = call(app.diffuse(json.dumps(MESSAGES), json.dumps(request_)))
    assert r["ok"] is False and r["error"]["kind"] == "diffusion" and r["error"]["message"] == words, r
    assert len(ev.of("diffusion")) == n0 and not app.busy


def test_chat_with_a_diffusion_model_says_to_switch_the_mode(diffusion_app):
    app, _ = diffusion_app
    r = call(app.chat(json.dumps(MESSAGES), json.dumps({"max_tokens": 4})))
    assert r["ok"] is False and r["error"]["kind"] == "diffusion-model"
    assert r["error"]["message"] == (f"{TINY_DIFFUSION.name} is a diffusion model: it writes a whole canvas at a time, "
                                     "not token by token. Switch the mode to Diffusion to run it.")


def test_a_conversation_with_media_is_refused(diffusion_app):
    app, ev = diffusion_app
    n0 = len(ev.of("diffusion"))
    msgs = [{"role": "user", "content": [{"type": "image", "ref": 0, "name": "a.png"}, {"type": "text", "text": "hi"}]}]
    r = call(app.diffuse(json.dumps(msgs), json.dumps(REQUEST), [b"\x89PNG not really"]))
    assert r["ok"] is False and r["error"]["kind"] == "diffusion-media"
    assert r["error"]["message"].startswith("The diffusion model reads text only") and len(ev.of("diffusion")) == n0


def test_a_prompt_longer_than_the_context_is_a_sentence(diffusion_app):
    app, _ = diffusion_app
    r = call(app.diffuse(json.dumps([{"role": "user", "content": "word " * 600}]), json.dumps(REQUEST)))
    assert r["ok"] is False and r["error"]["kind"] == "context", r
    assert r["error"]["message"].startswith("The conversation no longer fits in the model's context.")


def test_stats_and_snapshots_with_a_diffusion_model(diffusion_app):
    app, _ = diffusion_app
    st = json.loads(app.stats())
    assert st["loaded"] and st["diffusion"] and st["max_context"] == 512
    assert run(app.save_state()) is None  # nothing to snapshot: each reply reads the conversation again
    assert json.loads(app.new_chat())["ok"]


def test_diffuse_without_a_diffusion_model_says_why():
    r = call(WebApp(Events()).diffuse(json.dumps(MESSAGES), "{}"))
    assert r["ok"] is False and r["error"]["kind"] == "no-model"
    app, ev = loaded(TINY_CHAT)
    r = call(app.diffuse(json.dumps(MESSAGES), json.dumps(REQUEST)))
    assert r["ok"] is False and r["error"]["kind"] == "not-diffusion" and not ev.of("diffusion")
    assert r["error"]["message"] == (f"{TINY_CHAT.name} is not a diffusion model: it writes token by token, so it "
                                     "cannot run in diffusion mode. Switch the mode to Chat.")
    assert json.loads(app.stats())["diffusion"] is False


def test_one_app_goes_from_the_diffusion_model_to_a_chat_model_and_back(diffusion_app):
    """The page's model list serves both kinds: loading one forgets the other (chat() then works, diffuse() says
    why not), and back."""
    app, _ = loaded(TINY_DIFFUSION)
    r = call(app.load("path", str(TINY_CHAT), json.dumps({"max_context": 512})))
    assert r["ok"] and r["diffusion"] is None and app.diffusion is None and app.engine is not None
    assert call(app.chat(json.dumps(MESSAGES), json.dumps({"max_tokens": 2, "temperature": 0})))["ok"]
    assert call(app.diffuse(json.dumps(MESSAGES), json.dumps(REQUEST)))["error"]["kind"] == "not-diffusion"
    r = call(app.load("path", str(TINY_DIFFUSION), json.dumps({"max_context": 512})))
    assert r["ok"] and r["diffusion"] and app.engine is None
    assert call(app.diffuse(json.dumps(MESSAGES), json.dumps({**REQUEST, "steps": 1})))["ok"]
