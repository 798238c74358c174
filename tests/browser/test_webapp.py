"""The web app's Python bridge (rullama_py.webapp.WebApp) driven natively on wgpu-py with the tiny Gemma 4
fixture: the same calls web/worker.js makes inside Pyodide, without a browser."""

import json
from pathlib import Path

import pytest

from rullama_py.webapp import WebApp

FIX = Path(__file__).resolve().parent.parent / "fixtures"
TINY = FIX / "gemma4_tiny_e2b_f32.gguf"
OPTS = json.dumps({"max_context": 128, "prefill_chunk": 16})
GREEDY = {"temperature": 0, "max_tokens": 6}


class Recorder:
    def __init__(self):
        self.events = []
        self.on_token = None

    def __call__(self, event, payload):
        p = json.loads(payload)
        self.events.append((event, p))
        if event == "token" and self.on_token:
            self.on_token(p)

    def tokens(self):
        return [p for e, p in self.events if e == "token"]


async def _load(rec=None, path=TINY, opts=OPTS):
    app = WebApp(rec or Recorder())
    r = json.loads(await app.load("path", str(path), opts))
    assert r["ok"], r
    return app, r


async def _chat(app, msgs, **req):
    return json.loads(await app.chat(json.dumps(msgs), json.dumps({**GREEDY, **req})))


async def test_load_reports_progress_and_identity():
    rec = Recorder()
    app, info = await _load(rec)
    phases = [p["phase"] for e, p in rec.events if e == "progress"]
    assert phases[0] == "open" and phases[-1] == "ready" and "weights" in phases
    assert info["has_vision"] is False and info["has_audio"] is False
    assert info["identity"] == app.identity and len(info["identity"]) == 64
    assert info["dispatches_per_token"] > 10 and info["tensors"] > 100
    assert info["fetched"] >= info["size"] * 0.8  # the whole file was read once (header window included)


async def test_chat_streams_stops_and_resumes_from_a_snapshot():
    rec = Recorder()
    app, info = await _load(rec)
    msgs = [{"role": "user", "content": "hello"}]
    r1 = await _chat(app, msgs)
    assert r1["ok"] and r1["finish_reason"] == "length" and r1["generated_tokens"] == 6
    streamed = rec.tokens()
    assert "".join(t["text"] for t in streamed) == r1["text"] and streamed[-1]["n"] == 6

    # stop after the third token (the page's stop message arrives between tokens the same way)
    rec.events.clear()
    rec.on_token = lambda p: app.stop() if p["n"] == 3 else None
    msgs += [{"role": "assistant", "content": r1["text"]}, {"role": "user", "content": "more"}]
    r2 = await _chat(app, msgs, max_tokens=50)
    rec.on_token = None
    assert r2["finish_reason"] == "stopped" and r2["generated_tokens"] == 3
    assert app.busy is False

    blob = await app.save_state()
    msgs += [{"role": "assistant", "content": r2["text"]}, {"role": "user", "content": "again"}]
    want = await _chat(app, msgs)

    # a fresh app (a reloaded page) with the same model restores the snapshot and reads only the new turn
    app2, info2 = await _load()
    assert info2["identity"] == info["identity"]
    r = json.loads(await app2.restore_state(blob))
    assert r["ok"] and r["context"] == r2["context"]
    got = await _chat(app2, msgs)
    assert got["text"] == want["text"] and got["prompt_tokens"] == want["prompt_tokens"]
    assert got["prompt_tokens"] < r2["context"] / 2

    # a snapshot from another context size is refused and changes nothing
    app3, _ = await _load(opts=json.dumps({"max_context": 64, "prefill_chunk": 16}))
    r = json.loads(await app3.restore_state(blob))
    assert not r["ok"] and r["error"]["kind"] == "snapshot"
    assert app3.context_used() == 0


async def test_reload_in_the_same_app_reuses_kernels_and_frees_the_old_model():
    app, _ = await _load()
    first = await _chat(app, [{"role": "user", "content": "hi"}])
    old = app.engine
    from rullama_py.webapp import _buffers_of

    bufs = _buffers_of(old)
    assert len(bufs) > 50
    n_kernels = len(app.device._kernels)
    r = json.loads(await app.load("path", str(TINY), OPTS))
    assert r["ok"] and len(app.device._kernels) == n_kernels  # nothing recompiled
    again = await _chat(app, [{"role": "user", "content": "hi"}])
    assert again["text"] == first["text"]


@pytest.mark.parametrize("case", ["corrupt", "missing-url", "refused", "device-limit", "busy-no-model"])
async def test_errors_are_plain_sentences(case, tmp_path):
    from range_server import RangeServer

    app = WebApp(Recorder())
    if case == "corrupt":
        bad = tmp_path / "bad.gguf"
        bad.write_bytes(b"GGUF" + bytes(range(256)) * 8)
        r = json.loads(await app.load("path", str(bad), OPTS))
        kind = "corrupt"
    elif case == "missing-url":
        with RangeServer({"/x.gguf": TINY}) as srv:
            r = json.loads(await app.load("url", srv.url("/missing.gguf"), OPTS))
        kind = "not-found"
    elif case == "refused":
        with RangeServer({}) as srv:
            url = srv.url("/x.gguf")
        r = json.loads(await app.load("url", url, OPTS))  # the server is gone: nothing listens there
        kind = "unreachable"
    elif case == "device-limit":
        r = json.loads(await app.load("path", str(TINY), json.dumps({"max_buffer_size": 4096})))
        kind = "device-limit"
    else:
        r = json.loads(await app.chat("[]", "{}"))
        kind = "no-model"
    assert r["ok"] is False and r["error"]["kind"] == kind, r
    msg = r["error"]["message"]
    assert msg[0].isupper() and msg.endswith(".") and "Error" not in msg  # a sentence, not a traceback


# -- images: the page's parts, the sentences, stop while the tower runs, the vision projector ------------------

from rullama_py import gpu, webapp
from rullama_py.media import MediaError
from rullama_py.sources import SourceError
from rullama_py.gguf_file import GGUFError


def test_engine_messages_turn_image_refs_into_parts():
    png, jpg = b"\x89PNG fake", bytearray(b"\xff\xd8 fake")
    msgs = [{"role": "system", "content": "terse"},
            {"role": "user", "content": [{"type": "image", "ref": 1, "name": "b.jpg"}, {"type": "image", "ref": 0},
                                         {"type": "text", "text": "compare"}]},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": [{"type": "text", "text": "and this"}]}]
    out, n = webapp.engine_messages(msgs, [png, jpg])
    assert n == 2
    assert out[0] == {"role": "system", "content": "terse"} and out[2] == {"role": "assistant", "content": "ok"}
    assert out[1]["content"] == [{"type": "image", "image": bytes(jpg), "name": "b.jpg"},
                                 {"type": "image", "image": png}, {"type": "text", "text": "compare"}]
    assert out[3]["content"] == [{"type": "text", "text": "and this"}]
    for bad in ([{"type": "image", "ref": 2}], [{"type": "image", "ref": True}], [{"type": "video"}]):
        with pytest.raises(ValueError):
            webapp.engine_messages([{"role": "user", "content": bad}], [png, jpg])


@pytest.mark.parametrize("exc, during, kind, words", [
    (MediaError("image is damaged or incomplete: its pixel data could not be decoded."), "chat", "image",
     "The image is damaged or incomplete"),
    (MediaError("cat.svg is an SVG image, and SVG is not supported: convert it to PNG and try again."), "chat",
     "image", "cat.svg is an SVG image"),
    (ImportError("No module named 'PIL'", name="PIL"), "chat", "image-decoder", "image decoder (Pillow)"),
    (ValueError("image grid 3 x 210 exceeds the tower's 64 positions per side"), "chat", "image", "too long and thin"),
    (gpu.DeviceLimitError("buffer 'v.blk.0' needs 9 bytes"), "chat", "vision-limit", "cannot hold the vision tower"),
    (gpu.DeviceLimitError("buffer 'token_embd' needs 9 bytes"), "load", "device-limit", "cannot hold this model"),
    (webapp.MmprojError(SourceError("x.mmproj.gguf: HTTP 404")), "load", "mmproj", "(HTTP 404)"),
    (webapp.MmprojError(GGUFError("x: bad magic")), "load", "mmproj", "damaged or is not a GGUF file"),
    (webapp.MmprojError(TypeError("this Engine.load() takes no mmproj")), "load", "mmproj",
     "cannot load a separate vision projector"),
])
def test_image_errors_are_sentences(exc, during, kind, words):
    e = webapp.describe_error(exc, during)
    assert e["kind"] == kind and words in e["message"], e
    msg = e["message"]
    assert (msg[0].isupper() or msg.startswith("cat.svg")) and msg.endswith(".") and "Error" not in msg


def test_vision_engine_errors_are_sentences():
    from rullama_py import engine

    if not hasattr(engine, "NoTowerError"):
        pytest.skip("this engine has no vision errors yet")
    e = webapp.describe_error(engine.NoTowerError("This model has no vision tower, so it cannot read images."), "chat")
    assert e["kind"] == "no-vision" and "no vision tower" in e["message"]
    e = webapp.describe_error(webapp.MmprojError(engine.VisionLoadError(
        "t.gguf projects images to width 1024, but the text model is 1536 wide: this mmproj belongs to another model")))
    assert e["kind"] == "mmproj" and "belongs to another model" in e["message"]
    e = webapp.describe_error(engine.VisionLoadError("v.blk.0.attn_q.weight: type Q2_K is not supported"), "chat")
    assert e["kind"] == "vision-load" and e["message"].endswith(".")


async def test_images_for_a_model_without_a_vision_tower_are_refused_in_a_sentence():
    app, info = await _load()
    assert info["has_vision"] is False and info["mmproj"] is None
    msgs = [{"role": "user", "content": [{"type": "image", "ref": 0, "name": "cat.png"}, {"type": "text", "text": "hi"}]}]
    r = json.loads(await app.chat(json.dumps(msgs), json.dumps(GREEDY), [b"\x89PNG"]))
    assert r["ok"] is False and r["error"]["kind"] == "no-vision" and "cannot read the images" in r["error"]["message"]
    assert app.busy is False
    r = await _chat(app, [{"role": "user", "content": "hi"}])  # the app is still usable
    assert r["ok"] and r["generated_tokens"] == GREEDY["max_tokens"]


class FakeVisionEngine:
    """Just enough of an Engine to drive WebApp.chat through an image encode (8 tower layers)."""

    has_vision = True
    max_context = 128

    def __init__(self):
        from rullama_py.engine import Stats

        self.stats = Stats()
        self.host_times = HostTimes()
        self.tokens = []
        self.image_tokens = 280
        self.cancelled = 0
        self._cancel = False
        self.seen = None

    def set_params(self, params):
        pass

    def cancel(self):
        self.cancelled += 1
        self._cancel = True

    async def chat(self, messages, *, max_tokens=512, progress=None):
        import asyncio
        from rullama_py.engine import Token

        self.seen = messages
        self._cancel = False
        images = [p for m in messages if isinstance(m["content"], list) for p in m["content"] if p["type"] == "image"]
        for i, _ in enumerate(images):
            for layer in range(9):
                progress({"stage": "image", "index": i + 1, "count": len(images), "layer": layer, "layers": 8})
                await asyncio.sleep(0)
                if self._cancel:
                    raise webapp.Cancelled("image encoding was cancelled")
        for k in range(max_tokens):
            self.tokens.append(k)
            self.stats.generated_tokens += 1
            yield Token(k, "x")


from rullama_py.engine import HostTimes  # noqa: E402


async def test_stop_while_the_tower_runs_cancels_the_engine():
    rec = Recorder()
    app = WebApp(rec)
    app.engine = eng = FakeVisionEngine()
    msgs = [{"role": "user", "content": [{"type": "image", "ref": 0, "name": "a.png"}, {"type": "text", "text": "?"}]}]

    def on_event(event, payload):
        rec(event, payload)
        p = json.loads(payload)
        if event == "media" and p["layer"] == 3:
            app.stop()

    app._emit = on_event
    r = json.loads(await app.chat(json.dumps(msgs), json.dumps({"max_tokens": 5, "image_tokens": 140}), [b"png"]))
    assert r["ok"] and r["finish_reason"] == "stopped" and r["generated_tokens"] == 0 and r["text"] == ""
    assert eng.cancelled == 1 and eng.image_tokens == 140
    assert eng.seen[0]["content"][0] == {"type": "image", "image": b"png", "name": "a.png"}
    media = [p for e, p in rec.events if e == "media"]
    assert [p["layer"] for p in media] == [0, 1, 2, 3] and media[0]["index"] == 1 and media[0]["count"] == 1
    assert app.busy is False and app._chatting is False

    # the next turn runs through (no stale cancel), and reports the images it read
    rec.events.clear()
    app._emit = rec
    r = json.loads(await app.chat(json.dumps(msgs), json.dumps({"max_tokens": 5}), [b"png"]))
    assert r["ok"] and r["finish_reason"] != "stopped" and r["generated_tokens"] == 5 and r["images_read"] == 1
    assert eng.cancelled == 1
    app.stop()  # not chatting: only the flag, the engine is not told
    assert eng.cancelled == 1


@pytest.mark.parametrize("case", ["missing", "not-a-projector"])
async def test_a_bad_vision_projector_is_named_in_the_sentence(case, tmp_path):
    app = WebApp(Recorder())
    mm = str(tmp_path / "missing.mmproj.gguf") if case == "missing" else str(TINY)
    r = json.loads(await app.load("path", str(TINY), OPTS, "path", mm))
    assert r["ok"] is False and r["error"]["kind"] == "mmproj", r
    msg = r["error"]["message"]
    assert "vision projector (mmproj)" in msg and msg[0].isupper() and msg.endswith(".")
    assert app.engine is None and app.busy is False
