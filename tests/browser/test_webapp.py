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
    out, found = webapp.engine_messages(msgs, [png, jpg])
    assert (found.image, found.audio, found.wav) == (2, 0, 0) and found.names["image"] == ["b.jpg", "image"]
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
     "cannot load a separate projector"),
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
    e = webapp.describe_error(webapp.MmprojError(engine.VisionLoadError(
        "m.gguf is not a vision or audio projector (no clip.vision or clip.audio keys with their v.* or a.* tensors)")))
    assert e["kind"] == "mmproj" and "not a vision or audio projector" in e["message"]
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
    """Just enough of an Engine to drive WebApp.chat through image and audio encodes (8 tower layers each)."""

    has_vision = True
    has_audio = True
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
        parts = [p for m in messages if isinstance(m["content"], list) for p in m["content"] if p["type"] != "text"]
        for p in parts:
            same = [q for q in parts if q["type"] == p["type"]]
            for layer in range(9):
                progress({"stage": p["type"], "index": same.index(p) + 1, "count": len(same), "layer": layer,
                          "layers": 8})
                await asyncio.sleep(0)
                if self._cancel:
                    raise webapp.Cancelled("encoding was cancelled")
        for k in range(max_tokens):
            self.tokens.append(k)
            self.stats.generated_tokens += 1
            yield Token(k, "x")


from rullama_py.engine import HostTimes  # noqa: E402


@pytest.mark.parametrize("kind", ["image", "audio"])
async def test_stop_while_the_tower_runs_cancels_the_engine(kind):
    rec = Recorder()
    app = WebApp(rec)
    app.engine = eng = FakeVisionEngine()
    part = {"type": "image", "ref": 0, "name": "a.png"} if kind == "image" else \
        {"type": "audio", "ref": 0, "name": "a.png", "format": "wav"}
    msgs = [{"role": "user", "content": [part, {"type": "text", "text": "?"}]}]

    def on_event(event, payload):
        rec(event, payload)
        p = json.loads(payload)
        if event == "media" and p["layer"] == 3:
            app.stop()

    app._emit = on_event
    r = json.loads(await app.chat(json.dumps(msgs), json.dumps({"max_tokens": 5, "image_tokens": 140}), [b"png"]))
    assert r["ok"] and r["finish_reason"] == "stopped" and r["generated_tokens"] == 0 and r["text"] == ""
    assert eng.cancelled == 1 and eng.image_tokens == 140
    assert eng.seen[0]["content"][0] == {"type": kind, kind: b"png", "name": "a.png"}
    media = [p for e, p in rec.events if e == "media"]
    assert [p["layer"] for p in media] == [0, 1, 2, 3] and media[0]["index"] == 1 and media[0]["count"] == 1
    assert {p["stage"] for p in media} == {kind}
    assert app.busy is False and app._chatting is False

    # the next turn runs through (no stale cancel), and reports the images or audio blocks it read
    rec.events.clear()
    app._emit = rec
    r = json.loads(await app.chat(json.dumps(msgs), json.dumps({"max_tokens": 5}), [b"png"]))
    assert r["ok"] and r["finish_reason"] != "stopped" and r["generated_tokens"] == 5
    assert r["images_read" if kind == "image" else "audio_read"] == 1
    assert ("audio_read" if kind == "image" else "images_read") not in r
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
    assert "projector (mmproj)" in msg and msg[0].isupper() and msg.endswith(".")
    assert app.engine is None and app.busy is False


# -- audio: the page's parts (WAV bytes, float32 samples), the sentences, the tiny audio model -----------------

import numpy as np  # noqa: E402

from rullama_py import media  # noqa: E402

AUDIO = FIX / "gemma4_tiny_audio_f32.gguf"
AUDIO_Q8, AUDIO_MMPROJ = FIX / "gemma4_tiny_audio_q8_0.gguf", FIX / "gemma4_tiny_audio_q8_0.mmproj.gguf"
CLIPS = FIX / "audio"
AUDIO_OPTS = json.dumps({"max_context": 256, "prefill_chunk": 16})


def test_engine_messages_turn_audio_refs_into_parts():
    wav = (CLIPS / "tower_yes.wav").read_bytes()
    samples = np.array([0.0, 0.5, -0.25, 1.5], np.float32)
    msgs = [{"role": "user", "content": [{"type": "image", "ref": 0, "name": "p.png"},
                                         {"type": "audio", "ref": 1, "name": "yes.wav", "format": "wav"},
                                         {"type": "audio", "ref": 2, "name": "rec.wav", "format": "f32"},
                                         {"type": "audio", "ref": 1},
                                         {"type": "text", "text": "what is said?"}]}]
    out, found = webapp.engine_messages(msgs, [b"png", wav, samples.tobytes()])
    c = out[0]["content"]
    assert c[0] == {"type": "image", "image": b"png", "name": "p.png"}
    assert c[1] == {"type": "audio", "audio": wav, "name": "yes.wav"} and c[3] == {"type": "audio", "audio": wav}
    assert c[2]["name"] == "rec.wav" and c[2]["audio"].dtype == np.float32 and np.array_equal(c[2]["audio"], samples)
    assert (found.image, found.audio, found.wav) == (1, 3, 2) and found.names["audio"] == ["yes.wav", "rec.wav", "audio"]
    for bad in ([{"type": "audio", "ref": 2, "format": "f32"}], [{"type": "audio", "ref": 1, "format": "f32"}],
                [{"type": "audio", "ref": 0, "format": "mp3"}]):  # out of range, 3 bytes, an unknown format
        with pytest.raises(ValueError):
            webapp.engine_messages([{"role": "user", "content": bad}], [samples.tobytes(), b"abc"])


def test_media_errors_are_told_apart_by_the_part_they_name():
    found = webapp.MediaParts(image=1, audio=2, names={"image": ["cat.png"], "audio": ["cat.png.wav", "talk.wav"]})
    assert found.kind_of(MediaError("talk.wav is damaged or incomplete: its WAV header is cut short.")) == "audio"
    assert found.kind_of(MediaError("cat.png.wav has no audio: its data chunk is empty.")) == "audio"  # the longest name
    assert found.kind_of(MediaError("cat.png is damaged or incomplete: it could not be decoded.")) == "image"
    assert found.kind_of(MediaError("something else")) == "image"  # both kinds present, no name: an image's
    assert webapp.MediaParts(audio=1, names={"image": [], "audio": ["a"]}).kind_of(ValueError("x")) == "audio"


@pytest.mark.parametrize("exc, media_kind, kind, words", [
    (MediaError("talk.wav is damaged or incomplete: its WAV header is cut short."), "audio", "audio",
     "talk.wav is damaged or incomplete"),
    (MediaError("audio is too short: 6 ms of audio is less than one 10 ms frame."), "audio", "audio",
     "The audio is too short"),
    (ImportError("No module named 'scipy'", name="scipy"), "audio", "resampler", "resampler (scipy)"),
    (RuntimeError("scipy is not loaded: await rullama_py.media.load_resampler() before resampling audio"), "audio",
     "resampler", "resampler (scipy)"),
    (gpu.DeviceLimitError("buffer 'audio.x[750]' needs 9 bytes"), "image", "audio-limit", "cannot hold the audio tower"),
    (gpu.DeviceLimitError("kernel conv2d_ln_relu: 70000 workgroups"), "audio", "audio-limit", "audio tower"),
    (gpu.DeviceLimitError("buffer 'v.blk.0' needs 9 bytes"), "image", "vision-limit", "vision tower"),
])
def test_audio_errors_are_sentences(exc, media_kind, kind, words):
    e = webapp.describe_error(exc, "chat", media_kind)
    assert e["kind"] == kind and words in e["message"], e
    msg = e["message"]
    assert (msg[0].isupper() or msg.startswith("talk.wav")) and msg.endswith(".") and "Error" not in msg


def test_audio_tower_errors_are_sentences():
    from rullama_py import engine

    e = webapp.describe_error(engine.NoTowerError("This model has no audio tower, so it cannot listen to audio. Use a "
                                                  "Gemma 4 model with it, or add its mmproj file."), "chat")
    assert e["kind"] == "no-audio" and e["message"].startswith("This model has no audio tower")
    e = webapp.describe_error(engine.TowerLoadError("m.gguf: tensor a.blk.0.attn_q.weight has type Q2_K, which "
                                                    "rullama-py does not read"), "chat")
    assert e["kind"] == "audio-load" and "audio tower cannot be used" in e["message"]


async def test_audio_for_a_model_without_an_audio_tower_gives_the_engines_sentence():
    app, info = await _load()
    assert info["has_audio"] is False
    wav = (CLIPS / "tower_yes.wav").read_bytes()
    msgs = [{"role": "user", "content": [{"type": "audio", "ref": 0, "name": "yes.wav", "format": "wav"},
                                         {"type": "text", "text": "hi"}]}]
    r = json.loads(await app.chat(json.dumps(msgs), json.dumps(GREEDY), [wav]))
    assert r["ok"] is False and r["error"]["kind"] == "no-audio", r
    assert r["error"]["message"].startswith("This model has no audio tower, so it cannot listen to audio.")
    assert app.busy is False and app.context_used() == 0
    r = await _chat(app, [{"role": "user", "content": "hi"}])  # the app is still usable
    assert r["ok"] and r["generated_tokens"] == GREEDY["max_tokens"]


def _audio_msg(ref_format, text="what is said?"):
    return [{"role": "user", "content": [{"type": "audio", "ref": 0, "name": "cat.wav", "format": ref_format},
                                         {"type": "text", "text": text}]}]


@pytest.fixture(scope="module")
def native_audio():
    from conftest import run
    from rullama_py.engine import Engine
    from rullama_py.sampling import SamplerParams

    if not AUDIO.exists():
        pytest.skip(f"{AUDIO.name} is not generated yet")
    eng = run(Engine.load(str(AUDIO), max_context=256, prefill_chunk=16, params=SamplerParams(temperature=0.0)))
    wav = (CLIPS / "tower_cat.wav").read_bytes()

    async def go():
        return [t.id async for t in eng.chat([{"role": "user", "content": [
            {"type": "audio", "audio": wav}, {"type": "text", "text": "what is said?"}]}], max_tokens=6) if t.id >= 0]
    return run(go()), eng.stats.prompt_tokens


async def test_a_wav_and_its_samples_give_the_native_reply(native_audio):
    want, prompt_tokens = native_audio
    rec = Recorder()
    app, info = await _load(rec, AUDIO, AUDIO_OPTS)
    assert info["has_audio"] is True and info["has_vision"] is False
    wav = (CLIPS / "tower_cat.wav").read_bytes()
    r = json.loads(await app.chat(json.dumps(_audio_msg("wav")), json.dumps(GREEDY), [wav]))
    assert r["ok"], r
    assert [t["id"] for t in rec.tokens()] == want and r["prompt_tokens"] == prompt_tokens
    media_ev = [p for e, p in rec.events if e == "media"]
    assert media_ev and all(p["stage"] == "audio" for p in media_ev)
    assert media_ev[-1]["index"] == media_ev[-1]["count"] == 1 and media_ev[-1]["layer"] == media_ev[-1]["layers"] > 0
    assert r["audio_read"] == 1 and r["audio_seconds"] >= 0 and "images_read" not in r

    # The same clip as float32 16 kHz samples (what the page sends for a recording or a decoded MP3): a WAV
    # at 16 kHz decodes to exactly these samples, so the reply is the same. A new chat: not reused from the cache.
    samples, rate = media.decode_wav(wav)
    assert rate == 16000
    app.new_chat()
    rec.events.clear()
    r = json.loads(await app.chat(json.dumps(_audio_msg("f32")), json.dumps(GREEDY), [samples.astype("<f4").tobytes()]))
    assert r["ok"] and [t["id"] for t in rec.tokens()] == want and r["audio_read"] == 1

    # A WAV whose header is cut short: the sentence from media, kind audio; nothing changed in the context.
    before = app.context_used()
    r = json.loads(await app.chat(json.dumps(_audio_msg("wav")), json.dumps(GREEDY), [wav[:30]]))
    assert r["ok"] is False and r["error"]["kind"] == "audio", r
    assert r["error"]["message"] == "cat.wav is damaged or incomplete: its WAV format chunk is cut short."
    assert app.context_used() == before and app.busy is False


async def test_the_audio_model_and_projector_pair_hears_a_wav():
    if not (AUDIO_Q8.exists() and AUDIO_MMPROJ.exists()):
        pytest.skip("the tiny audio q8_0 + mmproj pair is not generated yet")
    from rullama_py.engine import Engine
    from rullama_py.sampling import SamplerParams

    wav = (CLIPS / "tower_yes.wav").read_bytes()
    eng = await Engine.load(str(AUDIO_Q8), mmproj=str(AUDIO_MMPROJ), max_context=256, prefill_chunk=16,
                            params=SamplerParams(temperature=0.0))
    want = [t.id async for t in eng.chat([{"role": "user", "content": [
        {"type": "audio", "audio": wav}, {"type": "text", "text": "what is said?"}]}], max_tokens=6) if t.id >= 0]
    rec = Recorder()
    app = WebApp(rec)
    info = json.loads(await app.load("path", str(AUDIO_Q8), AUDIO_OPTS, "path", str(AUDIO_MMPROJ)))
    assert info["ok"] and info["has_audio"] is True and info["mmproj"].endswith(AUDIO_MMPROJ.name)
    r = json.loads(await app.chat(json.dumps(_audio_msg("wav")), json.dumps(GREEDY), [wav]))
    assert r["ok"] and [t["id"] for t in rec.tokens()] == want and r["audio_read"] == 1
