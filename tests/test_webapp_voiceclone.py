"""The voice-clone panel's Python calls (rullama_py.webapp.WebApp.clone_*), natively: what web/worker.js calls
inside Pyodide. The recording's problems need no model; training runs on the tiny Kokoro (tools/make_tiny_kokoro.py,
made by tools/setup.sh) on this GPU, with a one-word training text so that a step is a short sentence."""

import json

import numpy as np
import pytest

from conftest import require, run
from rullama_py import assets, media
from rullama_py.speaker import VOICE_BYTES, VOICE_DIM, VOICE_ROWS
from rullama_py.webapp import CLONE_ENVELOPE_COLUMNS, WebApp

RATE = 24000
START = "af_heart"
OPTIONS = {"texts": ["Ah."], "start": START, "train": "timbre", "population": 1, "seed": 3}


class Events:
    """emit(event, payload_json, data=None): the events with their binary payloads."""

    def __init__(self):
        self.all = []

    def __call__(self, event, payload, data=None):
        self.all.append((event, json.loads(payload), data))

    def last(self, event):
        return next((p, d) for e, p, d in reversed(self.all) if e == event)


def voice_like(seconds: float, rate: int = RATE, lead: float = 0.0, level: float = 0.3, seed: int = 0) -> np.ndarray:
    """A voiced sound: a 140 Hz harmonic series with a falling spectrum, in syllables of 0.25 s (a pitch wobble
    and an amplitude envelope), between `lead` seconds of silence at each end."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    f0 = 140 * (1 + 0.05 * np.sin(2 * np.pi * 3 * t))
    phase = 2 * np.pi * np.cumsum(f0) / rate
    x = sum(np.sin(k * phase) / k for k in range(1, 30))
    x *= 0.55 + 0.45 * np.sin(2 * np.pi * 4 * t) ** 2
    x += 0.01 * rng.standard_normal(t.size)
    x = (level * x / np.abs(x).max()).astype(np.float32)
    pad = np.zeros(int(lead * rate), np.float32)
    return np.concatenate([pad, x, pad])


def f32(x) -> bytes:
    return np.ascontiguousarray(x, "<f4").tobytes()


def call(coro) -> dict:
    return json.loads(run(coro))


# -- the recording (no model needed) ---------------------------------------------------------------------------

def test_a_recording_becomes_the_target_trimmed_with_its_waveform():
    ev = Events()
    app = WebApp(ev)
    x = voice_like(4.0, lead=1.0)
    r = call(app.clone_target(f32(x), RATE, "me.wav"))
    assert r["ok"] and r["name"] == "me.wav" and r["input_seconds"] == pytest.approx(6.0)
    a, b = r["trimmed"]  # the silence at each end is cut, with a margin of at most 0.15 s and one 10 ms frame
    assert 1.0 - 0.17 <= a <= 1.0 and 5.0 <= b <= 5.0 + 0.17
    assert r["voice_seconds"] == pytest.approx(4.0, abs=0.05) and r["warnings"] == []
    env = np.array(r["envelope"])
    assert env.shape == (CLONE_ENVELOPE_COLUMNS, 2) and (env[:, 0] <= env[:, 1]).all()
    cols = np.linspace(0, 6.0, CLONE_ENVELOPE_COLUMNS + 1)
    quiet = cols[1:] < 0.99  # the leading silence draws flat; the voice reaches its level
    assert np.abs(env[quiet]).max() == 0 and np.abs(env).max() == pytest.approx(np.abs(x).max(), abs=1e-4)
    p, pcm = ev.last("clone-target")  # what "Play target" plays: the kept part, at 24 kHz
    got = np.frombuffer(pcm, "<f4")
    assert p["sample_rate"] == RATE and got.size == p["samples"] == round(r["seconds"] * RATE)
    assert got.size == pytest.approx((b - a) * RATE, abs=2)


@pytest.mark.parametrize("rate", [16000, 44100])
def test_a_wav_file_at_another_rate_is_resampled(rate):
    ev = Events()
    app = WebApp(ev)
    wav = media.encode_wav(voice_like(3.5, rate=rate, lead=0.3), rate)
    r = call(app.clone_target(wav, 0, "voice.wav", "wav"))
    assert r["ok"] and r["input_rate"] == rate and r["input_seconds"] == pytest.approx(4.1, abs=1e-3)
    _, pcm = ev.last("clone-target")
    assert np.frombuffer(pcm, "<f4").size == round(r["seconds"] * RATE)
    assert any("holds nothing above 8 kHz" in w for w in r["warnings"]) == (rate == 16000)


@pytest.mark.parametrize("case, words", [
    ("short", "has only 1.5 s of voice; record at least 3 s"),
    ("silent", "is silent or nearly silent"),
    ("clipped", "is clipped"),
    ("odd bytes", "float32 samples take 4 bytes each"),
    ("damaged wav", "rec.wav is damaged"),
    ("bad rate", "is not a usable rate"),
])
def test_recording_problems_are_sentences_and_keep_the_target(case, words):
    app = WebApp(Events())
    assert call(app.clone_target(f32(voice_like(4.0)), RATE, "good"))["ok"]
    good = app._clone_target
    x = voice_like(4.0)
    args = {
        "short": (f32(voice_like(1.5, lead=1.0)), RATE, "rec"),
        "silent": (f32(np.zeros(5 * RATE, np.float32)), RATE, "rec"),
        "clipped": (f32(np.clip(x * 20, -0.5, 0.5)), RATE, "rec"),
        "odd bytes": (f32(x)[:-2], RATE, "rec"),
        "damaged wav": (b"RIFF\x00\x00\x00\x00WAVEjunk", 0, "rec.wav", "wav"),
        "bad rate": (f32(x), 0.5, "rec"),
    }[case]
    r = call(app.clone_target(*args))
    assert r["ok"] is False and r["error"]["kind"] == "clone", r
    msg = r["error"]["message"]
    assert words in msg and (msg[0].isupper() or msg.startswith("rec.wav")) and msg.endswith("."), msg
    assert app._clone_target is good  # a bad recording changes nothing


def test_training_calls_in_the_wrong_order_are_sentences():
    app = WebApp(Events())
    r = call(app.clone_start(json.dumps(OPTIONS)))
    assert r["error"] == {"kind": "clone", "message": "The speech model is not loaded yet.", "detail": ""}
    for r in (call(app.clone_step(5)), json.loads(run(app.clone_voice())), json.loads(app.clone_reset())):
        assert r["ok"] is False and r["error"]["message"] == "Nothing is being trained: press Train first."


# -- training on the tiny Kokoro ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_app():
    path = assets.kokoro_tiny_path()
    require(None if path.is_file() else f"the tiny Kokoro {path} is not built (tools/setup.sh)", "voice-clone training")
    ev = Events()
    app = WebApp(ev)
    r = call(app.speech_load("path", str(path)))
    assert r["ok"], r
    return app, ev


def test_options_and_start_problems_are_sentences(tiny_app):
    app, _ = tiny_app
    app._clone_target = None
    r = call(app.clone_start(json.dumps(OPTIONS)))
    assert r["error"]["message"] == ("There is no recording to clone yet: drop a recording of the voice, or record "
                                     "one.")
    assert call(app.clone_target(f32(voice_like(4.0)), RATE, "rec"))["ok"]
    for opts, words in [({"population": 0}, "Population 0: 1 to 64 candidates a step."),
                        ({"seed": "x"}, "The seed must be a whole number, not 'x'."),
                        ({"train": "pitch"}, "choose 'timbre' (the decoder half) or 'all'"),
                        ({"start": "zz_nobody"}, "zz_nobody"),
                        ({"texts": ["   "]}, "there is no training text")]:
        r = call(app.clone_start(json.dumps({**OPTIONS, **opts})))
        assert r["ok"] is False and r["error"]["kind"] == "clone" and words.lower() in r["error"]["message"].lower(), r
        assert app._clone is None


def test_train_steps_voicepack_preview_and_reset(tiny_app):
    app, ev = tiny_app
    assert call(app.clone_target(f32(voice_like(4.0, lead=0.5)), RATE, "rec"))["ok"]
    r = call(app.clone_start(json.dumps(OPTIONS)))
    assert r["ok"], r
    start = r["start_loss"]
    assert r["start_voice"] == START and np.isfinite(start) and start > 0 and r["curve"] == [start]
    assert r["settings"]["texts"] == ["Ah."] and r["settings"]["seed"] == 3 and r["step"] == 0

    s = call(app.clone_step(2, 1e9))  # two steps in one call
    assert s["ok"] and [x["step"] for x in s["steps"]] == [1, 2] and s["step"] == 2
    best, size = start, 0.25  # the climb's rule, step by step: keep a lower loss, else anneal the step size
    for x in s["steps"]:
        assert x["accepted"] == (x["loss"] < best)
        best, size = min(best, x["loss"]), size if x["loss"] < best else size * 0.95
        assert x["best"] == pytest.approx(best, rel=1e-6) and x["step_size"] == pytest.approx(size)
    assert s["best"] == pytest.approx(best, rel=1e-6) and s["start_loss"] == start and s["steps_per_second"] > 0
    one = call(app.clone_step(100, 0.0))  # a spent time budget still makes one step
    assert [x["step"] for x in one["steps"]] == [3] and one["best"] <= s["best"]
    first = [x["loss"] for x in s["steps"]] + [one["steps"][0]["loss"]]

    data = run(app.clone_voice())
    assert isinstance(data, bytes) and len(data) == VOICE_BYTES
    pack = np.frombuffer(data, "<f4").reshape(VOICE_ROWS, VOICE_DIM)
    offset = pack - app.speaker.voice(START)  # the start voice's pack moved by one offset, in its timbre half
    assert np.allclose(offset, offset[0], atol=1e-6) and not offset[:, VOICE_DIM // 2:].any()
    assert np.abs(offset).max() > 0 if best < start else not offset.any()
    assert json.loads(app.speech_add_voice("my_clone", data))["ok"]  # the page saves it into the picker this way

    p = call(app.clone_preview("Oh."))  # Kokoro speaks another sentence between two steps
    pe, pcm = ev.last("clone-audio")
    audio = np.frombuffer(pcm, "<f4")
    assert p["ok"] and pe["step"] == 3 and audio.size == p["samples"] == pe["samples"] > 0
    assert np.isfinite(audio).all() and np.abs(audio).max() > 1e-3

    z = json.loads(app.clone_reset())
    assert z["ok"] and z["step"] == 0 and z["curve"] == [start] and z["step_size"] == 0.25
    assert np.array_equal(np.frombuffer(run(app.clone_voice()), "<f4").reshape(VOICE_ROWS, VOICE_DIM),
                          app.speaker.voice(START))
    again = call(app.clone_step(1, 1e9))  # the same seed climbs the same way (the trainer aligned its sentence again)
    assert again["steps"][0]["loss"] == pytest.approx(first[0], rel=1e-5, abs=1e-7)

    speaker = app.speaker
    try:
        app.speaker = object()  # what another speech_load leaves: a new speaker
        r = call(app.clone_step(1))
        assert r["error"]["message"] == ("The speech model changed since this training started; press Train to start "
                                         "again with it.")
        assert app._clone is None
    finally:
        app.speaker = speaker


def test_a_new_target_ends_the_training_and_release_keeps_the_target(tiny_app):
    app, _ = tiny_app
    assert call(app.clone_target(f32(voice_like(4.0)), RATE, "rec"))["ok"]
    assert call(app.clone_start(json.dumps(OPTIONS)))["ok"] and app._clone is not None
    assert call(app.clone_target(f32(voice_like(5.0, seed=1)), RATE, "another"))["ok"]
    assert app._clone is None and app._clone_target.seconds == pytest.approx(5.0, abs=0.05)  # Train starts anew
    assert json.loads(app.clone_release())["ok"] and app._clone_target is not None
    assert call(app.clone_step(1))["error"]["message"] == "Nothing is being trained: press Train first."
