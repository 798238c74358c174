"""The voice-clone panel in headless Chromium (WebGPU on SwiftShader) with the tiny Kokoro (tools/make_tiny_kokoro.py)
served by `rullama serve --kokoro`: the `voiceclone` scenario of tests/browser/driver.mjs, checked here.

The target is the tiny Kokoro itself speaking in a stock voice (bm_george), synthesised natively, so that the
climb from another stock voice (af_heart) has somewhere to go; training speaks a one-word text, so that a step is
a short sentence on this software GPU. Screenshots of every step land in test-artifacts/browser/voiceclone-*.png.

On SwiftShader (2 CPU cores, with a CI-like test run beside it) the scenario took 5.2 minutes with 20 steps:
Kokoro's load and the start about 2 minutes (compiling its pipelines), the steps about 6.5 s each (a step is the
one-word sentence through the tiny model's decoder and generator, the signature and the loss), the rest under a
minute. STEPS is 10: enough for a pause after the third step and a resume, and for the curve to fall (with this
seed the best loss improves at steps 1, 2, 6 and 9), and the page draws at least 10 steps across the canvas's
width, so the drawn curve still spans it; how far a long climb gets is the native trainer's test
(tests/test_voice.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import require, run
from rullama_py import assets, media
from rullama_py.speaker import VOICE_BYTES, VOICE_DIM, VOICE_ROWS, Speaker
from test_browser import ART, Served, _missing, drive
from test_webapp_voiceclone import voice_like

pytestmark = pytest.mark.browser

TARGET_VOICE, START_VOICE = "bm_george", "af_heart"
TARGET_TEXT = "Hello there, this is a test of a cloned voice speaking."
TRAIN_TEXT = "Ah."
STEPS, SEED = 10, 1
NAME, IMPORTED = "my_clone", "imported_voice"
SAY = "Hi."
SAMPLE = "Oh."  # "Play current voice" speaks it


@pytest.fixture(scope="module", autouse=True)
def _needs_browser():
    require(_missing(), "the browser tests")


@pytest.fixture(scope="module")
def tiny_speaker():
    path = assets.kokoro_tiny_path()
    require(None if path.is_file() else f"the tiny Kokoro {path} is not built (tools/setup.sh)", "the voice-clone "
            "browser test")
    return run(Speaker.load(str(path)))


@pytest.fixture(scope="module")
def target_wav(tiny_speaker):
    pcm = run(tiny_speaker.say(TARGET_TEXT, TARGET_VOICE))
    return media.encode_wav(pcm, 24000)


@pytest.fixture(scope="module")
def clone_run(target_wav):
    ART.mkdir(parents=True, exist_ok=True)
    files = {"target": target_wav, "short": media.encode_wav(voice_like(1.5, lead=0.5), 24000),
             "silent": media.encode_wav(np.zeros(5 * 24000, np.float32), 24000)}
    paths = {}
    for k, data in files.items():  # by path: a WAV in base64 is too long for the driver's command line
        paths[f"{k}_path"] = str(ART / f"voiceclone-{k}.wav")
        Path(paths[f"{k}_path"]).write_bytes(data)
    s = Served(model_path=None, kokoro_path=assets.kokoro_tiny_path())
    try:
        return drive("voiceclone", s.url, timeout_s=2400, target_name="george.wav", text=TRAIN_TEXT, start=START_VOICE,
                     steps=STEPS, seed=SEED, name=NAME, imported=IMPORTED, say=SAY, sample=SAMPLE, **paths)
    finally:
        s.close()


def test_a_dropped_recording_becomes_the_target_with_its_waveform(clone_run, target_wav):
    t = clone_run["target"]
    samples, rate = media.decode_wav(target_wav)
    want = media.prepare_voice_target(samples, rate, "george.wav")
    assert t["name"] == "george.wav" and t["seconds"] == pytest.approx(want.seconds, abs=1e-6)
    assert t["trimmed"] == pytest.approx(list(want.trimmed), abs=1e-6) and t["envelope"] == 400
    assert clone_run["wave"]["blue"] > 500  # the waveform is drawn
    assert clone_run["attachments"] == 0  # dropped on the panel: not attached to the chat
    assert clone_run["error_after_target"] is True  # the too-short recording's sentence went away


def test_training_draws_a_falling_loss_curve(clone_run):
    tr = clone_run["trained"]
    assert tr["lastError"] is None and tr["status"] == "done" and tr["steps"] == STEPS, tr
    assert tr["started"]["start_voice"] == START_VOICE and tr["started"]["settings"]["texts"] == [TRAIN_TEXT]
    curve, losses = tr["curve"], tr["losses"]
    assert len(curve) == STEPS + 1 and curve[0] == tr["started"]["start_loss"]
    best = curve[0]
    for k in range(1, STEPS + 1):  # best so far: the lower of the step's candidate and the best before it
        assert curve[k] == pytest.approx(min(best, losses[k]), rel=1e-6)
        best = curve[k]
    assert all(b <= a for a, b in zip(curve, curve[1:])) and curve[-1] < curve[0]  # the climb found a nearer voice
    assert f"Step {STEPS} of {STEPS}" in clone_run["status_text"] and "steps/s" not in clone_run["status_text"]
    assert clone_run["button_while_training"] == "Pause" and clone_run["button_after"] == "Train"
    # Pause stopped the loop where it was (the status says so, the button offers Resume), and Resume went on from
    # there: one curve of STEPS + 1 points.
    p = clone_run["paused"]
    assert p["status"] == "paused" and p["button"] == "Resume" and p["text"].endswith("· paused")
    assert 3 <= p["steps"] < STEPS and p["steps_a_second_later"] == p["steps"] and p["curve"] == curve[: p["steps"] + 1]
    # The curve as drawn: a line falling left to right (canvas y grows downwards), spanning most of the width.
    cols = [ys for ys in clone_run["curve_pixels"]["cols"]]
    drawn = [(x, max(ys)) for x, ys in enumerate(cols) if ys]
    assert len(drawn) > 0.8 * clone_run["curve_pixels"]["width"]
    assert all(y2 >= y1 - 1 for (_, y1), (_, y2) in zip(drawn, drawn[1:]))
    assert drawn[-1][1] > drawn[0][1] + 10
    # The page kept drawing frames while the worker trained.
    assert clone_run["frames"]["n"] > 20 and clone_run["frames"]["p99"] < 250, clone_run["frames"]
    print(f"browser: {STEPS} steps in {clone_run['train_seconds']:.1f} s (with Kokoro's load and the start), "
          f"loss {curve[0]:.4f} -> {curve[-1]:.4f}; scenario {clone_run['seconds']:.0f} s")


def test_the_start_loss_is_the_native_trainers(clone_run, tiny_speaker, target_wav):
    from rullama_py.voice import VoiceTrainer

    samples, rate = media.decode_wav(target_wav)
    tr = VoiceTrainer(tiny_speaker, media.prepare_voice_target(samples, rate), texts=[TRAIN_TEXT], start=START_VOICE,
                      seed=SEED)
    p = run(tr.prepare())
    first = run(tr.step())
    page = clone_run["trained"]
    # Pyodide + SwiftShader against wgpu-py + lavapipe, the same WGSL in f32 (the same noise draw for step 1)
    assert page["curve"][0] == pytest.approx(p.start_loss, rel=1e-3)
    assert page["losses"][1] == pytest.approx(first.loss, rel=1e-3)


def test_the_current_voice_plays_and_the_saved_voice_reads_aloud(clone_run):
    pv = clone_run["preview"]
    assert pv["step"] == STEPS and pv["samples"] > 2400 and pv["peak"] > 1e-3
    saved = clone_run["picker_saved"]
    groups = {g["label"]: g["voices"] for g in saved["groups"]}
    assert groups["My voices"] == [NAME] and saved["selected"] == NAME and saved["saved"] == [NAME]
    assert saved["groups"][0]["label"] == "My voices"  # listed first
    sp = clone_run["spoken"]
    assert sp["error"] is None and sp["voice"] == NAME and sp["sentences"] == sp["received"] == 1 and sp["samples"] > 0
    assert {"what": "speak", "voice": NAME} in sp["log"]


def test_the_exported_voicepack_is_the_start_voice_moved_and_says_text(clone_run, tiny_speaker, tmp_path):
    from rullama_py import cli

    path = Path(clone_run["exported"]["path"])
    assert clone_run["exported"]["name"] == f"{NAME}.bin" and path.stat().st_size == VOICE_BYTES
    pack = np.fromfile(path, "<f4").reshape(VOICE_ROWS, VOICE_DIM)
    offset = pack - tiny_speaker.voice(START_VOICE)  # timbre training moves the start voice by one offset
    assert np.allclose(offset, offset[0], atol=1e-6) and not offset[:, VOICE_DIM // 2:].any() and offset.any()
    out = tmp_path / "said.wav"
    assert cli.main(["say", SAY, "--kokoro", str(assets.kokoro_tiny_path()), "--voice-file", str(path),
                     "-o", str(out)]) == 0
    said, rate = media.decode_wav(out.read_bytes())
    assert rate == 24000 and said.size > 0 and np.abs(said).max() > 1e-3


def test_reset_goes_back_to_the_start_voice(clone_run):
    r = clone_run["reset"]
    assert r["steps"] == 0 and r["curve"] == [clone_run["trained"]["curve"][0]] and r["stepSize"] == 0.25
    assert r["button"] == "Train" and "Step 0 of" in r["text"]
    assert [v["name"] for v in r["saved"]] == [IMPORTED, NAME]  # the saved voice is not touched


def test_import_reads_the_file_back_and_a_reload_keeps_my_voices(clone_run):
    imp = clone_run["picker_imported"]
    assert {g["label"]: g["voices"] for g in imp["groups"]}["My voices"] == [IMPORTED, NAME]
    assert imp["selected"] == IMPORTED and imp["saved"] == [IMPORTED, NAME]
    again = clone_run["picker_reload"]
    assert {g["label"]: g["voices"] for g in again["groups"]}["My voices"] == [IMPORTED, NAME]
    assert again["saved"] == [IMPORTED, NAME] and again["selected"] == IMPORTED


@pytest.mark.parametrize("case, words", [
    ("short", "short.wav has only"),
    ("wrong_size", "wrong.bin is not a Kokoro voicepack: a voicepack holds 510 x 256 float32 values (522,240 "
                   "bytes), and this file has 1,000 bytes."),
    ("silent", "silent.wav is silent or nearly silent"),
])
def test_errors_are_sentences_and_nothing_is_lost(clone_run, case, words):
    e = clone_run["errors"][case]
    assert e["kind"] == "clone" and words in e["message"] and e["message"].endswith("."), e
    if case == "wrong_size":
        assert clone_run["saved_after_wrong"] == [IMPORTED, NAME]
    if case == "silent":
        after = clone_run["after_silent"]
        assert after["target"]["name"] == "george.wav" and after["steps"] == STEPS and after["started"]
