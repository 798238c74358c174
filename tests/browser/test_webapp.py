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


# -- speech (Kokoro-82M): the page's calls, their events and sentences --------------------------------------------

from rullama_py import speaker as _speaker

KOKORO_RATE = 24000
PHONEME_GOLDENS = FIX / "g2p" / "kokoro_js_phonemes.json"


class SpeechRecorder(Recorder):
    """Events with their binary payload (a "speech" event's float32 samples)."""

    def __init__(self):
        super().__init__()
        self.data = []
        self.on_speech = None

    def __call__(self, event, payload, data=None):
        super().__call__(event, payload)
        if data is not None:
            self.data.append((event, json.loads(payload), data))
            if event == "speech" and self.on_speech:
                self.on_speech(json.loads(payload))

    def speech(self):
        return [(p, np.frombuffer(d, "<f4")) for e, p, d in self.data if e == "speech"]


class FakeKokoro:
    """Kokoro's GPU model stood in for: audio that says which ids, style, speed and seed it was given (a
    sentence of n ids lasts n * 100 samples), so the test sees what the speaker passed on."""

    def __init__(self):
        self.calls = []
        self.released = False

    async def synthesize(self, ids, style, *, speed=1.0, seed=0, noise=1.0):
        self.calls.append((list(ids), float(style[0]), speed, seed))
        n = len(ids) * 100
        audio = (np.sin(np.arange(n) * (seed + 1) * 0.01) * 0.5 + style[0]).astype(np.float32)
        return audio, np.ones(len(ids), np.int32)

    def release(self):
        self.released = True


def _fake_speaker():
    """The real Speaker (g2p with espeak-ng, sentence splitting, voices, voicepacks) over FakeKokoro; its
    vocabulary: every phoneme symbol of the g2p goldens."""
    goldens = json.loads(PHONEME_GOLDENS.read_text())
    symbols = sorted({ch for row in goldens["phonemes"] for lang in ("en-us", "en-gb") for ch in row[lang]})
    config = type("Config", (), {"vocab": {ch: i + 1 for i, ch in enumerate(symbols)}})()
    voices = {name: np.full((510, 256), k + 1, np.float32) for k, name in enumerate(("af_heart", "bm_george"))}
    return _speaker.Speaker(FakeKokoro(), config, voices, "fake-kokoro")


def _speech_app(rec=None):
    app = WebApp(rec or SpeechRecorder())
    app.speaker = _fake_speaker()
    return app


TWO = "The cat sat on the mat. Then it went to sleep!"


async def test_speak_streams_one_event_per_sentence_with_its_samples():
    rec = SpeechRecorder()
    app = _speech_app(rec)
    r = json.loads(await app.speak(TWO, "bm_george", 1.25, 7, 41))
    assert r["ok"] and r["done"] and not r["stopped"] and r["run"] == 41 and r["sentences"] == 2
    got = rec.speech()
    assert [p["index"] for p, _ in got] == [0, 1] and all(p["run"] == 41 for p, _ in got)
    assert [p["text"] for p, _ in got] == ["The cat sat on the mat.", "Then it went to sleep!"]
    calls = app.speaker.model.calls
    # the voice's style row, the speed, and the seed counting up per sentence, as Speaker.stream does
    assert [(c[1], c[2], c[3]) for c in calls] == [(2.0, 1.25, 7), (2.0, 1.25, 8)]
    for (p, pcm), call in zip(got, calls):
        assert p["samples"] == pcm.size == len(call[0]) * 100 and p["sample_rate"] == KOKORO_RATE
        assert p["seconds"] == pytest.approx(pcm.size / KOKORO_RATE) and p["phonemes"]
        assert call[0][0] == call[0][-1] == 0 and len(call[0]) == len(_speaker.g2p.tokenize(p["phonemes"],
                                                                                             app.speaker.vocab)) + 2
    # the bytes are the speaker's own float32 samples, unchanged
    want = [u.audio async for u in _fake_speaker().stream(TWO, "bm_george", speed=1.25, seed=7)]
    assert all(np.array_equal(pcm, w) for (_, pcm), w in zip(got, want))
    assert r["samples"] == sum(pcm.size for _, pcm in got) and r["seconds"] == pytest.approx(r["samples"] / KOKORO_RATE)
    assert app._speech is None


async def test_stop_ends_speech_between_sentences():
    rec = SpeechRecorder()
    app = _speech_app(rec)
    rec.on_speech = lambda p: app.speech_stop() if p["index"] == 0 else None  # the page's Stop, after sentence 1
    r = json.loads(await app.speak(TWO + " And then it woke up.", "af_heart"))
    assert r["ok"] and r["done"] and r["stopped"] and r["sentences"] == 1
    assert len(rec.speech()) == 1 and len(app.speaker.model.calls) == 1  # nothing synthesised after the stop


async def test_a_new_request_replaces_the_one_in_progress():
    """What the worker does: speak_start, then one speak_next per sentence; a second speak_start (a new Read
    aloud) ends the first: its next speak_next says done (stopped) and no event of it comes any more."""
    rec = SpeechRecorder()
    app = _speech_app(rec)
    assert json.loads(await app.speak_start(TWO, "af_heart", 1, 0, 1)) == {"ok": True, "run": 1}
    first = json.loads(await app.speak_next(1))
    assert first["ok"] and not first["done"] and first["index"] == 0
    assert json.loads(await app.speak_start("Hello there.", "bm_george", 1, 0, 2))["run"] == 2
    app.speech_stop(1)  # what the first request's loop in the worker says: it stops that run only
    old = json.loads(await app.speak_next(1))
    assert old["done"] and old["stopped"]
    new = json.loads(await app.speak_next(2))
    assert new["index"] == 0 and json.loads(await app.speak_next(2))["done"]
    assert [(p["run"], p["index"]) for p, _ in rec.speech()] == [(1, 0), (2, 0)]


async def test_loading_a_speech_model_ends_the_text_being_read(tmp_path):
    """Another Kokoro file chosen while a text is read aloud: that text ends (its next speak_next says stopped),
    also when the new file turns out damaged."""
    app = _speech_app()
    await app.speak_start(TWO, "af_heart", 1, 0, 5)
    assert not json.loads(await app.speak_next(5))["done"]
    bad = tmp_path / "k.gguf"
    bad.write_bytes(b"GGUF" + bytes(64))
    assert json.loads(await app.speech_load("path", str(bad)))["error"]["kind"] == "speech-load"
    r = json.loads(await app.speak_next(5))
    assert r["done"] and r["stopped"] and app._speech is None


@pytest.mark.parametrize("text, voice, speed, words", [
    ("", "af_heart", 1, "the text is empty"),
    ("   \n\t ", "af_heart", 1, "the text is empty"),
    ("?!... ---", "af_heart", 1, "nothing to speak"),  # g2p's sentence (espeak-ng reads emoji by their names)
    ("…!? «» — ...", "af_heart", 1, "nothing to speak"),
    (TWO, "xx_nobody", 1, "There is no voice named 'xx_nobody'"),
    (TWO, "af_heart", 9, "out of range"),
    (TWO, "af_heart", "fast", "must be numbers"),
])
async def test_bad_speech_requests_are_sentences(text, voice, speed, words):
    rec = SpeechRecorder()
    app = _speech_app(rec)
    r = json.loads(await app.speak(text, voice, speed, 0))
    assert r["ok"] is False and r["error"]["kind"] == "speech", r
    msg = r["error"]["message"]
    assert words.lower() in msg.lower() and msg[0].isupper() and msg.endswith(".") and "Error" not in msg, msg
    assert not rec.speech() and app._speech is None
    assert json.loads(await app.speak("Hello.", "af_heart"))["ok"]  # the next request is served as usual


async def test_a_long_paste_streams_without_waiting_for_the_whole_text():
    """20,000 characters: the first sentence is spoken (an event with its samples) before the rest is
    synthesised; stop ends it there."""
    base = ("It was a bright cold day in April, and the clocks were striking thirteen. Winston Smith slipped "
            "quickly through the glass doors of Victory Mansions, though not quickly enough to prevent a swirl "
            "of gritty dust from entering along with him. ")
    text = (base * (20000 // len(base) + 1))[:20000]
    rec = SpeechRecorder()
    app = _speech_app(rec)
    rec.on_speech = lambda p: app.speech_stop() if p["index"] == 1 else None
    r = json.loads(await app.speak(text, "af_heart"))
    assert r["ok"] and r["stopped"] and r["sentences"] == 2 and len(rec.speech()) == 2
    assert rec.speech()[0][0]["text"].startswith("It was a bright cold day in April")


async def test_voices_and_added_voicepacks():
    app = _speech_app()
    assert json.loads(await app.speech_voices()) == {"ok": True, "loaded": True, "voices": ["af_heart", "bm_george"],
                                                     "unreadable": []}
    assert webapp._unreadable(["af_heart", "bf_emma", "jf_alpha", "zm_yunxi", "mine"]) == ["jf_alpha", "zm_yunxi"]
    pack = np.full((510, 256), 0.25, np.float32)
    r = json.loads(app.speech_add_voice("mine", pack.tobytes()))
    assert r["ok"] and r["voices"] == ["af_heart", "bm_george", "mine"]
    assert json.loads(await app.speak("Hello.", "mine"))["ok"] and app.speaker.model.calls[-1][1] == 0.25
    for data, words in ((b"\0" * 1000, "1000 bytes"), (np.full((510, 255), 1, np.float32).tobytes(), "bytes"),
                        (np.full((510, 256), np.nan, np.float32).tobytes(), "not finite")):
        r = json.loads(app.speech_add_voice("bad", data))
        assert r["ok"] is False and r["error"]["kind"] == "speech" and words in r["error"]["message"], r
        assert r["error"]["message"].endswith(".")
    r = json.loads(app.speech_add_voice("", pack.tobytes()))
    assert r["error"]["kind"] == "speech" and "name" in r["error"]["message"]


async def test_speech_before_the_speech_model_is_loaded():
    app = WebApp(SpeechRecorder())
    for r in (await app.speak("Hello.", "af_heart"), await app.speech_voices(), app.speech_add_voice("v", b"")):
        r = json.loads(r)
        assert r["ok"] is False and r["error"]["kind"] == "speech" and "not loaded" in r["error"]["message"]


@pytest.mark.parametrize("case", ["damaged", "truncated", "not-gguf", "gemma", "missing-url", "missing-file"])
async def test_a_bad_kokoro_file_is_a_sentence(case, tmp_path):
    from range_server import RangeServer

    app = _speech_app()
    kept = app.speaker
    bad = tmp_path / "kokoro.gguf"
    if case == "damaged":
        bad.write_bytes(b"GGUF" + bytes(range(256)) * 8)
    elif case == "truncated":  # a real GGUF header cut short
        bad.write_bytes(TINY.read_bytes()[:3000])
    elif case == "not-gguf":
        bad.write_bytes(b"RIFF" + b"\0" * 4000)
    if case == "missing-url":
        with RangeServer({"/x.gguf": TINY}) as srv:
            r = json.loads(await app.speech_load("url", srv.url("/kokoro.gguf")))
        words = "not found at that address (HTTP 404)"
    elif case == "missing-file":
        r = json.loads(await app.speech_load("path", str(tmp_path / "nope.gguf")))
        words = "was not found"
    elif case == "gemma":
        r = json.loads(await app.speech_load("path", str(TINY), json.dumps({"name": "tiny.gguf"})))
        words = "tiny.gguf is not a Kokoro speech model (it holds a gemma4 model)"
    else:
        r = json.loads(await app.speech_load("path", str(bad)))
        words = "is damaged or is not a Kokoro model"
    assert r["ok"] is False and r["error"]["kind"] == "speech-load", r
    assert words in r["error"]["message"] and r["error"]["message"].endswith("."), r["error"]
    assert app.speaker is kept  # the speech model loaded before stays
    r = json.loads(await app.speech_voices("path", str(TINY)))
    assert r["error"]["kind"] == "speech-load" and "not a Kokoro speech model" in r["error"]["message"]


def test_speech_errors_are_sentences():
    from rullama_py import g2p

    e = webapp.describe_speech_error(g2p.G2PError("there is nothing to say in this text"))
    assert e["kind"] == "speech" and e["message"] == "There is nothing to say in this text."
    e = webapp.describe_speech_error(_speaker.SpeakerError("unknown voice 'x'"))
    assert e["kind"] == "speech" and e["message"] == "Unknown voice 'x'."
    e = webapp.describe_speech_error(_speaker.SpeakerError("af_mine: a voicepack has shape (510, 256), not (3,)"))
    assert e["message"] == "af_mine: a voicepack has shape (510, 256), not (3,)."  # the voice's name as spelt
    e = webapp.describe_speech_error(gpu.DeviceLimitError("buffer 'decoder' needs 9 bytes"), "load")
    assert e["kind"] == "speech-load" and "cannot hold the speech model" in e["message"]
    e = webapp.describe_speech_error(gpu.DeviceLostError("lost"), "speak")
    assert e["kind"] == "device-lost"


async def test_the_real_kokoro_loads_beside_the_chat_model_on_one_device():
    """The real Kokoro F16 file loads on the chat model's device, read whole, with its own progress phases and
    its voices. It is not made to speak here: a sentence takes minutes on lavapipe. Speaking through the same
    calls is the next test's, on the tiny Kokoro (the real model's kernels, F16, at small widths), and the real
    weights' output is checked against KModel in tests/test_kokoro.py."""
    from conftest import require
    from rullama_py import assets

    kokoro = assets.kokoro_model_path()
    require(None if kokoro.is_file() else f"{kokoro} is missing (run tools/setup.sh)", "the speech tests on the real Kokoro")
    rec = SpeechRecorder()
    app, _ = await _load(rec)
    n = len(rec.events)
    r = json.loads(await app.speech_load("path", str(kokoro)))
    assert r["ok"], r
    assert r["same_device"] is True and app.speaker.model.device is app.engine.device is app.device
    assert r["voices"] == app.speaker.voices and "af_heart" in r["voices"] and r["sample_rate"] == KOKORO_RATE
    events = rec.events[n:]
    phases = [p["phase"] for e, p in events if e == "speech-progress"]
    assert phases[0] == "kokoro-open" and phases[-1] == "kokoro-ready" and "kokoro-weights" in phases
    assert not [e for e, _ in events if e == "progress"]  # the chat model's progress is not touched
    assert r["fetched"] >= r["size"] * 0.9


async def test_a_chat_model_loaded_again_leaves_speech_as_it_was():
    """A chat model loaded again beside the speech model (the old one's buffers freed, the device's bind-group
    cache cleared) leaves speech on the same device giving the same samples, and chat answers as before. On the
    tiny Kokoro (tools/make_tiny_kokoro.py: the real model's kernels at small widths, seconds a sentence)."""
    from conftest import require
    from rullama_py import assets

    kokoro = assets.kokoro_tiny_path()
    require(None if kokoro.is_file() else f"the tiny Kokoro {kokoro} is not built (tools/setup.sh)", "the speech tests")
    rec = SpeechRecorder()
    app, _ = await _load(rec)
    hi = [{"role": "user", "content": "hi"}]
    before = await _chat(app, hi)
    r = json.loads(await app.speech_load("path", str(kokoro)))
    assert r["ok"] and r["same_device"] is True, r
    out = json.loads(await app.speak("Hi.", "bf_emma", 1.0, 3))
    assert out["ok"] and out["sentences"] == 1, out
    [(_, pcm)] = rec.speech()
    assert pcm.size > 0 and np.abs(pcm).max() > 0  # samples worth comparing

    r = json.loads(await app.load("path", str(TINY), OPTS))
    assert r["ok"] and app.engine.device is app.speaker.model.device
    again = json.loads(await app.speak("Hi.", "bf_emma", 1.0, 3))
    [_, (_, pcm_again)] = rec.speech()
    assert again["ok"] and np.array_equal(pcm_again, pcm)  # the same device and kernels: the same samples
    assert (await _chat(app, hi))["text"] == before["text"]


# -- memory modes and GPU memory ------------------------------------------------------------------------------

VISION = FIX / "gemma4_tiny_vision_f32.gguf"
PHOTO = (FIX / "images" / "landscape.jpg").read_bytes()


async def test_memory_modes_text_only_and_towers_freed_after_each_reply():
    """The page's memory modes through WebApp: a text-only load leaves the vision tower out and refuses the
    image with a sentence naming that; loaded again with the towers freed after each reply, a reply that read
    an image leaves the GPU memory where the load left it (and says so in its gpu_memory and a memory event);
    a request that keeps them keeps the tower until release_towers()."""
    rec = Recorder()
    app = WebApp(rec)
    opts = {"max_context": 256, "prefill_chunk": 16}
    info = json.loads(await app.load("path", str(VISION), json.dumps({**opts, "text_only": True})))
    assert info["ok"] and info["text_only"] is True and info["towers_left_out"] == ["image"]
    assert info["has_vision"] is False and info["gpu_memory"]["allocated_bytes"] > 0
    assert [p for e, p in rec.events if e == "memory"][-1] == info["gpu_memory"]
    msgs = [{"role": "user", "content": [{"type": "image", "ref": 0, "name": "cat.jpg"}, {"type": "text", "text": "hi"}]}]
    request = json.dumps({**GREEDY, "max_tokens": 2, "image_tokens": 70})
    r = json.loads(await app.chat(json.dumps(msgs), request, [PHOTO]))
    assert not r["ok"] and r["error"]["kind"] == "text-only"
    assert r["error"]["message"].startswith("This model was loaded text-only, without its vision tower, so it cannot "
                                            "read images. Load it again with \"Text only\" unticked")

    info = json.loads(await app.load("path", str(VISION), json.dumps({**opts, "release_towers": True})))
    assert info["ok"] and info["text_only"] is False and info["release_towers"] is True and info["has_vision"]
    await app.device.sync()  # the device's own small sync buffer exists from here on, not from the first layer
    loaded = json.loads(app.memory())["allocated_bytes"]
    r = json.loads(await app.chat(json.dumps(msgs), request, [PHOTO]))
    assert r["ok"] and r["images_read"] == 1 and r["generated_tokens"] == 2
    assert r["gpu_memory"]["allocated_bytes"] == loaded and r["gpu_memory"]["towers"] == []
    assert r["gpu_memory"]["peak_bytes"] > loaded  # the tower was there while it read the image

    app.new_chat()
    kept = json.loads(await app.chat(json.dumps(msgs), json.dumps({**json.loads(request), "release_towers": False}),
                                     [PHOTO]))
    assert kept["ok"] and kept["text"] == r["text"] and kept["gpu_memory"]["towers"] == ["image"]
    assert kept["gpu_memory"]["allocated_bytes"] > loaded
    freed = json.loads(app.release_towers())
    assert freed["ok"] and freed["towers"] == [] and freed["allocated_bytes"] == loaded
    assert [p for e, p in rec.events if e == "memory"][-1]["allocated_bytes"] == loaded
