"""The `rullama` command (src/rullama_py/cli.py) and `python -m rullama_py`: argument parsing and the error
sentences, images and audio clips in generate and chat (against a stub engine, and end to end on the tiny
vision and audio models), the towers' progress line, Ctrl-C during an image or audio encode, and the
XDG_RUNTIME_DIR fix for the Vulkan stack's noise."""

from __future__ import annotations

import io
import os
import re
import signal
import stat
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import require
from rullama_py import _backend, cli, engine as engine_mod, media
from rullama_py.engine import Stats, Token

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
TINY_TEXT = FIXTURES / "gemma4_tiny_e2b_f32.gguf"
TINY_VISION = FIXTURES / "gemma4_tiny_vision_f32.gguf"
TINY_VISION_MMPROJ = FIXTURES / "gemma4_tiny_vision_q8_0.mmproj.gguf"
TINY_AUDIO = FIXTURES / "gemma4_tiny_audio_f32.gguf"
TINY_AUDIO_Q8 = FIXTURES / "gemma4_tiny_audio_q8_0.gguf"
TINY_AUDIO_Q8_MMPROJ = FIXTURES / "gemma4_tiny_audio_q8_0.mmproj.gguf"
CLIPS = FIXTURES / "audio"
STATS_LINE = re.compile(r"^\[\d+ prompt tokens [\d.]+ tok/s, \d+ generated [\d.]+ tok/s, stop: \w+\]$")


def _png(path: Path, w: int = 64, h: int = 48, color=(200, 10, 10)) -> Path:
    from PIL import Image

    Image.new("RGB", (w, h), color).save(path)
    return path


def _wav_header(nbytes: int, rate: int = 16000, channels: int = 1, bits: int = 16, tag: int = 1) -> bytes:
    """A RIFF/WAVE header (format `tag`: 1 PCM, 2 Microsoft ADPCM, ...) for `nbytes` of samples."""
    align = channels * bits // 8
    return (b"RIFF" + struct.pack("<I", 36 + nbytes) + b"WAVE" + b"fmt "
            + struct.pack("<IHHIIHH", 16, tag, channels, rate, rate * align, align, bits) + b"data" + struct.pack("<I", nbytes))


def _wav(path: Path, seconds: float = 0.5, rate: int = 16000, freq: float = 440.0) -> Path:
    """A 16-bit mono PCM WAV of a sine tone."""
    import numpy as np

    t = np.arange(int(round(seconds * rate))) / rate
    pcm = (np.sin(2 * np.pi * freq * t) * 12000).astype("<i2").tobytes()
    path.write_bytes(_wav_header(len(pcm), rate) + pcm)
    return path


def _gguf(path: Path, tensors: dict[str, tuple], arch: str = "clip", kv: dict | None = None) -> Path:
    """A minimal GGUF with the named F32 tensors (zeros of the given shapes) and uint32 metadata `kv`."""
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(str(path), arch)
    for key, value in (kv or {}).items():
        w.add_uint32(key, value)
    for name, shape in tensors.items():
        w.add_tensor(name, np.zeros(shape, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


class Cancelled(Exception):
    pass


class FakeEngine:
    """What the CLI programs against (engine.Engine's API), recording what it is given. Its towers have
    `layers` layers; `on_layer(engine, index, layer)` is a hook called between them (index counts the media
    blocks of the message from 0). Each audio clip is `audio_blocks` blocks (a long clip is several 30 s
    blocks, each through the tower on its own), reported per kind as the engine does."""

    def __init__(self, has_vision=True, has_audio=True, layers=3, reply="ok!"):
        self.has_vision = has_vision
        self.has_audio = has_audio
        self.audio_blocks = 1
        self.layers = layers
        self.reply = reply
        self.image_tokens = 280
        self.calls: list[tuple] = []
        self.cancelled = False
        self.resets = 0
        self.on_layer = None
        self.stats = Stats()
        self.seen_images = 0  # media blocks already "in the cache": only new ones go through a tower

    def cancel(self):
        self.cancelled = True

    def reset(self):
        self.resets += 1
        self.seen_images = 0

    async def generate(self, prompt, *, max_tokens=256):
        self.calls.append(("generate", prompt, {"max_tokens": max_tokens}))
        for ch in self.reply[:max_tokens]:
            yield Token(1, ch)
        self.stats = Stats(prompt_tokens=3, prompt_seconds=0.1, generated_tokens=len(self.reply), generate_seconds=0.1,
                           finish_reason="length")

    async def chat(self, messages, *, max_tokens=512, **kwargs):
        self.cancelled = False
        self.calls.append(("chat", [dict(m) for m in messages], dict(kwargs, max_tokens=max_tokens)))
        blocks = [p["type"] for m in messages if isinstance(m["content"], list) for p in m["content"]
                  for _ in range(self.audio_blocks if p["type"] == "audio" else 1) if p["type"] in ("image", "audio")]
        new = blocks[self.seen_images:]
        progress = kwargs.get("progress")
        for i, kind in enumerate(new):
            index, count = new[:i].count(kind) + 1, new.count(kind)
            for layer in range(self.layers + 1):
                if self.cancelled:
                    raise engine_mod.Cancelled(f"{kind} encoding was cancelled")
                if progress is not None:
                    progress({"stage": kind, "index": index, "count": count, "layer": layer, "layers": self.layers})
                if self.on_layer is not None:
                    self.on_layer(self, i, layer)
        self.seen_images = len(blocks)
        for ch in self.reply:
            yield Token(1, ch)
            if self.cancelled:
                break
        self.stats = Stats(prompt_tokens=7, prompt_seconds=0.1, generated_tokens=len(self.reply), generate_seconds=0.1,
                           finish_reason="stop")


@pytest.fixture()
def fake(monkeypatch):
    """cli's Engine.load returns a FakeEngine; `fake.load_kwargs` records how it was called."""
    eng = FakeEngine()
    eng.load_kwargs = None

    async def load(model, **kwargs):
        eng.load_kwargs = dict(kwargs, model=model)
        return eng

    monkeypatch.setattr(engine_mod.Engine, "load", staticmethod(load))
    if not hasattr(engine_mod, "Cancelled"):
        monkeypatch.setattr(engine_mod, "Cancelled", Cancelled, raising=False)
    return eng


@pytest.fixture()
def no_engine(monkeypatch):
    """Any attempt to load weights fails the test: the errors must come first."""

    async def load(*args, **kwargs):
        raise AssertionError("the model was loaded although the command should have stopped before")

    monkeypatch.setattr(engine_mod.Engine, "load", staticmethod(load))


def _chat(monkeypatch, capsys, script: str, *args) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "stdin", io.StringIO(script))
    rc = cli.main(["chat", "model.gguf", *args])
    out, err = capsys.readouterr()
    return rc, out, err


# -- python -m rullama_py -----------------------------------------------------------------------------------

def test_python_m_is_the_rullama_command():
    run = lambda *args: subprocess.run([sys.executable, "-m", "rullama_py", *args], capture_output=True, text=True,  # noqa: E731
                                       timeout=60, cwd=ROOT)
    r = run("--help")
    assert r.returncode == 0 and r.stdout.startswith("usage: rullama ") and "generate" in r.stdout
    script = Path(sys.executable).parent / "rullama"
    if script.exists():  # the console script of the venv: the same text
        assert subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60).stdout == r.stdout
    r = run("generate", "--help")
    assert r.returncode == 0 and "--image PATH" in r.stdout and "--image-tokens N" in r.stdout and "--mmproj" in r.stdout
    assert "--audio PATH" in r.stdout
    r = run("serve", "--help")
    assert r.returncode == 0 and r.stdout.startswith("usage: rullama serve") and "--mmproj PATH" in r.stdout
    r = run("generate", "model.gguf", "-p", "x", "--image-tokens", "12")
    assert r.returncode == 2 and "12 is not an image token budget" in r.stderr


# -- argument parsing and the error sentences ---------------------------------------------------------------

def test_image_token_budgets_are_the_media_ones():
    assert cli.IMAGE_TOKEN_BUDGETS == media.SOFT_TOKEN_BUDGETS
    for n in media.SOFT_TOKEN_BUDGETS:
        assert cli._image_tokens(str(n)) == n


@pytest.mark.parametrize("value", ["100", "0", "-70", "281", "2240", "abc", "280.0", ""])
def test_bad_image_tokens_are_refused_with_a_sentence(value, capsys, no_engine):
    for cmd in (["generate", "m.gguf", "-p", "x"], ["chat", "m.gguf"]):
        with pytest.raises(SystemExit) as e:
            cli.main([*cmd, "--image-tokens", value])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert f"argument --image-tokens: {value} is not an image token budget: choose 70, 140, 280, 560 or 1120." in err


def test_image_errors_come_before_the_model_loads(tmp_path, capsys, no_engine):
    svg = tmp_path / "logo.svg"
    svg.write_text('<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>')
    notes = tmp_path / "notes.txt"
    notes.write_text("hello\n")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    damaged = tmp_path / "damaged.png"
    damaged.write_bytes(_png(tmp_path / "ok.png").read_bytes()[:60])
    cases = [
        (tmp_path / "missing.jpg", f"error: {tmp_path / 'missing.jpg'} does not exist."),
        (tmp_path, f"error: {tmp_path} is a folder, not an image."),
        (svg, "error: logo.svg is an SVG image, and SVG is not supported: convert it to PNG and try again."),
        (notes, "error: notes.txt is not an image: it contains text."),
        (empty, "error: empty.png is empty (0 bytes)."),
        (damaged, "error: damaged.png is damaged"),
    ]
    big = tmp_path / "movie.mp4"
    with open(big, "wb") as f:
        f.truncate(cli.MAX_IMAGE_FILE_BYTES + 1)  # sparse: nothing is written
    cases.append((big, f"error: {big} is too large to be an image (1.0 GiB)."))
    for path, sentence in cases:
        rc = cli.main(["generate", str(TINY_TEXT), "-p", "x", "--image", str(tmp_path / "ok.png"), "--image", str(path)])
        err = capsys.readouterr().err
        assert rc == 1 and err.startswith(sentence), (path, err)
        assert "Traceback" not in err and err.count("\n") == 1


def test_a_model_without_a_vision_tower_is_named_before_loading(tmp_path, capsys, no_engine):
    png = _png(tmp_path / "red.png")
    rc = cli.main(["generate", str(TINY_TEXT), "-p", "Describe this image.", "--image", str(png)])
    assert rc == 1
    assert capsys.readouterr().err == (f"error: {TINY_TEXT} has no vision tower; pass --mmproj PATH with a llama.cpp "
                                       "vision projector.\n")


def test_mmproj_errors(tmp_path, capsys, no_engine):
    png = _png(tmp_path / "red.png")
    base = ["generate", str(TINY_TEXT), "-p", "x", "--image", str(png)]
    assert cli.main([*base, "--mmproj", str(tmp_path / "nope.gguf")]) == 1
    assert capsys.readouterr().err == f"error: --mmproj {tmp_path / 'nope.gguf'} does not exist.\n"
    assert cli.main([*base, "--mmproj", str(TINY_TEXT)]) == 1  # a GGUF, but no vision tower in it
    assert capsys.readouterr().err == f"error: --mmproj {TINY_TEXT} is not a vision projector (it has no vision tower).\n"
    assert cli.main(["chat", str(TINY_TEXT), "--mmproj", str(TINY_TEXT)]) == 1
    assert capsys.readouterr().err == (f"error: --mmproj {TINY_TEXT} is not a vision or audio projector (it has "
                                       "neither tower).\n")


async def test_check_vision_reads_only_headers(tmp_path):
    mmproj = _gguf(tmp_path / "mmproj.gguf", {"v.patch_embd.weight": (4, 8)})
    await cli.check_vision(str(TINY_TEXT), str(mmproj))  # a projector: no error
    with pytest.raises(cli.UserError, match="has no vision tower"):
        await cli.check_vision(str(TINY_TEXT))
    if TINY_VISION.exists():
        await cli.check_vision(str(TINY_VISION))  # the tower inside the model file (Ollama's layout)


def test_audio_errors_come_before_the_model_loads(tmp_path, capsys, no_engine):
    """Each --audio file is read and decoded by media's WAV reader before anything loads; its sentence is
    printed. Compressed formats are refused with the sentence that says the command line takes WAV."""
    ok = _wav(tmp_path / "ok.wav")
    notes = tmp_path / "notes.wav"  # a text file renamed
    notes.write_text("hello\nthese are my notes\n")
    mp3 = tmp_path / "song.mp3"
    mp3.write_bytes(b"ID3\x04\x00\x00\x00\x00\x00\x00" + b"\xff\xfb\x90\x00" + bytes(400))
    ogg = tmp_path / "voice.ogg"
    ogg.write_bytes(b"OggS\x00\x02" + bytes(200))
    long = tmp_path / "long.wav"  # 10 min 1 s at 16 kHz, as its header says; the samples are a sparse hole
    with open(long, "wb") as f:
        f.write(_wav_header(601 * 32000))
        f.truncate(44 + 601 * 32000)
    short = tmp_path / "click.wav"
    short.write_bytes(_wav_header(100) + bytes(100))  # 50 samples: less than one 10 ms frame
    adpcm = tmp_path / "adpcm.wav"
    adpcm.write_bytes(_wav_header(100, bits=4, tag=2) + bytes(100))
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    big = tmp_path / "movie.wav"
    with open(big, "wb") as f:
        f.truncate(cli.MAX_AUDIO_FILE_BYTES + 1)  # sparse: nothing is written
    takes_wav = ("the web app decodes MP3, OGG, M4A and other compressed audio in the browser, and the command "
                 "line takes WAV files. Convert it to WAV to use it here.")
    cases = [
        (tmp_path / "missing.wav", f"error: {tmp_path / 'missing.wav'} does not exist."),
        (tmp_path, f"error: {tmp_path} is a folder, not an audio file."),
        (notes, "error: notes.wav is not audio: it contains text. Use a WAV file."),
        (mp3, f"error: song.mp3 is an MP3 file: {takes_wav}"),
        (ogg, f"error: voice.ogg is an OGG file: {takes_wav}"),
        (long, "error: long.wav is too long: it holds 10 min 1 s of audio, and at most 10 min is accepted. "
               "Use a shorter clip."),
        (short, "error: click.wav is too short: 3 ms of audio is less than one 10 ms frame."),
        (adpcm, "error: adpcm.wav is a WAV file compressed with Microsoft ADPCM, which is not supported: use an "
                "uncompressed (PCM) WAV file."),
        (empty, "error: empty.wav is empty (0 bytes)."),
        (big, f"error: {big} is too large to be an audio clip (1.0 GiB)."),
    ]
    for path, sentence in cases:
        rc = cli.main(["generate", str(TINY_TEXT), "-p", "x", "--audio", str(ok), "--audio", str(path)])
        err = capsys.readouterr().err
        assert rc == 1 and err == sentence + "\n", (path, err)
    # An image that is wrong stops the command too, whichever option comes first.
    rc = cli.main(["generate", str(TINY_TEXT), "-p", "x", "--audio", str(ok), "--image", str(notes)])
    assert rc == 1 and capsys.readouterr().err.startswith("error: notes.wav is not an image: it contains text.")


def test_read_audio_measures_the_clip(tmp_path):
    clip = cli.read_audio(str(_wav(tmp_path / "tone.wav", seconds=12.3, rate=8000)))
    assert clip.name == "tone.wav" and abs(clip.seconds - 12.3) < 1e-9 and clip.length == "12.3 s"
    assert clip.part() == {"type": "audio", "audio": (tmp_path / "tone.wav").read_bytes()}
    assert [cli._clip_length(x) for x in (0.04, 0.3, 59.9, 60.0, 125.4, 600.0)] == [
        "40 ms", "0.3 s", "59.9 s", "1 min", "2 min 5 s", "10 min"]


def test_a_model_without_an_audio_tower_is_named_before_loading(tmp_path, capsys, no_engine):
    wav, png = _wav(tmp_path / "hello.wav"), _png(tmp_path / "red.png")
    rc = cli.main(["generate", str(TINY_VISION), "-p", "Transcribe this.", "--audio", str(wav)])
    assert rc == 1
    assert capsys.readouterr().err == (f"error: {TINY_VISION} has no audio tower; pass --mmproj PATH with a llama.cpp "
                                       "projector that has one.\n")
    # Both kinds: the model reads the image but cannot hear the clip.
    assert cli.main(["generate", str(TINY_VISION), "-p", "x", "--image", str(png), "--audio", str(wav)]) == 1
    assert "has no audio tower" in capsys.readouterr().err
    # A vision projector given for audio.
    assert cli.main(["generate", str(TINY_TEXT), "-p", "x", "--audio", str(wav), "--mmproj", str(TINY_VISION_MMPROJ)]) == 1
    assert capsys.readouterr().err == (f"error: --mmproj {TINY_VISION_MMPROJ} is not an audio projector (it has no "
                                       "audio tower).\n")
    # The audio model cannot read the image.
    assert cli.main(["generate", str(TINY_AUDIO), "-p", "x", "--audio", str(wav), "--image", str(png)]) == 1
    assert capsys.readouterr().err == (f"error: {TINY_AUDIO} has no vision tower; pass --mmproj PATH with a llama.cpp "
                                       "vision projector.\n")


async def test_tower_kinds_read_only_headers(tmp_path):
    assert await cli.tower_kinds(str(TINY_TEXT)) == set()
    assert await cli.tower_kinds(str(TINY_VISION)) == {"image"}
    assert await cli.tower_kinds(str(TINY_AUDIO)) == {"audio"}  # Ollama's layout: gemma4.audio.* and a.* inside
    assert await cli.tower_kinds(str(TINY_TEXT), str(TINY_VISION_MMPROJ)) == {"image"}
    both = _gguf(tmp_path / "mmproj.gguf", {"v.patch_embd.weight": (4, 8), "a.conv1d.0.weight": (4, 8)},
                 kv={"clip.audio.block_count": 2})
    assert await cli.tower_kinds(str(TINY_TEXT), str(both)) == {"image", "audio"}
    await cli.check_towers(str(TINY_TEXT), str(both), ["audio", "image"])
    keys_only = _gguf(tmp_path / "keys.gguf", {"v.patch_embd.weight": (4, 8)}, kv={"clip.audio.block_count": 2})
    with pytest.raises(cli.UserError, match="is not an audio projector"):  # clip.audio keys but no a.* tensors
        await cli.check_audio(str(TINY_TEXT), str(keys_only))
    with pytest.raises(cli.UserError, match="has no audio tower"):
        await cli.check_audio(str(TINY_VISION))
    if TINY_AUDIO_Q8_MMPROJ.exists():  # llama.cpp's pair: clip.audio.* keys in the projector
        assert await cli.tower_kinds(str(TINY_AUDIO_Q8), str(TINY_AUDIO_Q8_MMPROJ)) == {"audio"}


def test_chat_takes_an_audio_only_projector(tmp_path, capsys, fake, monkeypatch):
    mmproj = _gguf(tmp_path / "audio-mmproj.gguf", {"a.conv1d.0.weight": (4, 8)}, kv={"clip.audio.block_count": 2})
    rc, out, err = _chat(monkeypatch, capsys, "hi\n/exit\n", "--mmproj", str(mmproj))
    assert rc == 0 and fake.load_kwargs["mmproj"] == str(mmproj) and out == "ok!\n"


# -- generate with images (stub engine) ---------------------------------------------------------------------

def test_generate_images_make_one_user_turn(tmp_path, capsys, fake, monkeypatch):
    a, b = _png(tmp_path / "a.png"), _png(tmp_path / "b.png", 30, 90, (0, 0, 255))
    monkeypatch.setattr(cli, "check_towers", _async_none)
    rc = cli.main(["generate", "model.gguf", "--image", str(a), "--image", str(b), "-p", "Describe these.",
                   "--image-tokens", "560", "--mmproj", "proj.gguf", "-n", "9"])
    out, err = capsys.readouterr()
    assert rc == 0 and out == "ok!"  # the newline goes to stderr, before the stats
    assert fake.load_kwargs["mmproj"] == "proj.gguf" and fake.image_tokens == 560
    (kind, messages, kwargs), = fake.calls
    assert kind == "chat" and kwargs["max_tokens"] == 9 and callable(kwargs["progress"])
    assert messages == [{"role": "user", "content": [{"type": "image", "image": a.read_bytes()},
                                                     {"type": "image", "image": b.read_bytes()},
                                                     {"type": "text", "text": "Describe these."}]}]
    lines = err.splitlines()
    # stderr is not a terminal here: one plain line per report, then the stats.
    assert lines[:4] == [f"reading image 1 of 2: layer {i} of 3" for i in range(4)]
    assert lines[4:8] == [f"reading image 2 of 2: layer {i} of 3" for i in range(4)]
    assert lines[8] == "" and STATS_LINE.match(lines[9]) and len(lines) == 10


def test_generate_without_images_is_unchanged(capsys, fake):
    assert cli.main(["generate", "model.gguf", "-p", "The capital of France is", "-n", "2"]) == 0
    out, err = capsys.readouterr()
    assert out == "ok" and STATS_LINE.match(err.strip())
    assert fake.calls == [("generate", "The capital of France is", {"max_tokens": 2})]
    assert "mmproj" not in fake.load_kwargs


def test_generate_image_on_a_model_without_vision(tmp_path, capsys, fake, monkeypatch):
    """When the headers did not tell (the check passed), has_vision after loading does."""
    fake.has_vision = False
    monkeypatch.setattr(cli, "check_towers", _async_none)
    assert cli.main(["generate", "gemma3:270m", "-p", "x", "--image", str(_png(tmp_path / "a.png"))]) == 1
    assert capsys.readouterr().err.endswith("error: gemma3:270m has no vision tower; pass --mmproj PATH with a "
                                            "llama.cpp vision projector.\n")
    assert fake.calls == []


def test_engine_sentences_are_printed_as_errors(tmp_path, capsys, fake, monkeypatch):
    async def chat(messages, **kwargs):
        raise media.MediaError("a.png is too large: 20000 x 20000 pixels is more than 100 megapixels. Use a smaller image.")
        yield

    fake.chat = chat
    monkeypatch.setattr(cli, "check_towers", _async_none)
    assert cli.main(["generate", "m.gguf", "-p", "x", "--image", str(_png(tmp_path / "a.png"))]) == 1
    assert capsys.readouterr().err == "error: a.png is too large: 20000 x 20000 pixels is more than 100 megapixels. Use a smaller image.\n"


def test_generate_audio_image_and_text_make_one_user_turn(tmp_path, capsys, fake, monkeypatch):
    """--audio and --image repeat and mix: the media first, in the order given, then the text, in one user
    turn; the progress lines count each kind as the engine reports it (a clip in blocks)."""
    a, b = _wav(tmp_path / "a.wav"), _wav(tmp_path / "b.wav", 1.0, 8000, 220.0)
    png = _png(tmp_path / "red.png")
    calls = []

    async def check(model, mmproj=None, kinds=("image",)):
        calls.append((model, mmproj, list(kinds)))

    monkeypatch.setattr(cli, "check_towers", check)
    rc = cli.main(["generate", "model.gguf", "--audio", str(a), "--image", str(png), "--audio", str(b),
                   "-p", "What do you hear and see?", "--mmproj", "proj.gguf", "-n", "5"])
    out, err = capsys.readouterr()
    assert rc == 0 and out == "ok!"
    assert calls == [("model.gguf", "proj.gguf", ["audio", "image"])] and fake.load_kwargs["mmproj"] == "proj.gguf"
    (kind, messages, kwargs), = fake.calls
    assert kind == "chat" and kwargs["max_tokens"] == 5 and callable(kwargs["progress"])
    assert messages == [{"role": "user", "content": [{"type": "audio", "audio": a.read_bytes()},
                                                     {"type": "image", "image": png.read_bytes()},
                                                     {"type": "audio", "audio": b.read_bytes()},
                                                     {"type": "text", "text": "What do you hear and see?"}]}]
    lines = err.splitlines()
    assert lines[:12] == ([f"reading audio 1 of 2: layer {i} of 3" for i in range(4)]
                          + [f"reading image 1 of 1: layer {i} of 3" for i in range(4)]
                          + [f"reading audio 2 of 2: layer {i} of 3" for i in range(4)])
    assert lines[12] == "" and STATS_LINE.match(lines[13]) and len(lines) == 14


def test_a_long_clip_is_read_in_blocks(tmp_path, capsys, fake, monkeypatch):
    fake.audio_blocks, fake.layers = 3, 2  # as a 65 s clip: three 30 s blocks
    monkeypatch.setattr(cli, "check_towers", _async_none)
    assert cli.main(["generate", "m.gguf", "-p", "x", "--audio", str(_wav(tmp_path / "a.wav"))]) == 0
    progress = capsys.readouterr().err.splitlines()[:-2]
    assert progress == [f"reading audio {i} of 3: layer {l} of 2" for i in (1, 2, 3) for l in range(3)]


def test_generate_audio_on_a_model_without_audio(tmp_path, capsys, fake, monkeypatch):
    """When the headers did not tell (the check passed), has_audio after loading does."""
    fake.has_audio = False
    monkeypatch.setattr(cli, "check_towers", _async_none)
    assert cli.main(["generate", "gemma3:270m", "-p", "x", "--audio", str(_wav(tmp_path / "a.wav"))]) == 1
    assert capsys.readouterr().err.endswith("error: gemma3:270m has no audio tower; pass --mmproj PATH with a "
                                            "llama.cpp projector that has one.\n")
    assert fake.calls == []


def test_ctrl_c_during_an_audio_encode_in_generate(tmp_path, capsys, fake, monkeypatch):
    def interrupt(eng, index, layer):
        if layer == 1:
            os.kill(os.getpid(), signal.SIGINT)

    fake.on_layer = interrupt
    monkeypatch.setattr(cli, "check_towers", _async_none)
    before = signal.getsignal(signal.SIGINT)
    rc = cli.main(["generate", "m.gguf", "-p", "x", "--audio", str(_wav(tmp_path / "a.wav"))])
    out, err = capsys.readouterr()
    assert rc == 130 and out == "" and fake.cancelled and signal.getsignal(signal.SIGINT) is before
    assert err == "reading audio 1 of 1: layer 0 of 3\nreading audio 1 of 1: layer 1 of 3\n[cancelled]\n"


async def _async_none(*args, **kwargs):
    return None


# -- the progress line ----------------------------------------------------------------------------------------

class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_tower_progress_rewrites_one_line_on_a_terminal():
    term = _Terminal()
    p = cli.TowerProgress(term)
    p({"stage": "image", "index": 1, "count": 2, "layer": 5, "layers": 16})
    p({"stage": "image", "index": 2, "count": 2, "layer": 16, "layers": 16})
    p({"stage": "audio", "index": 1, "count": 3, "layer": 5, "layers": 12})  # a clip of three 30 s blocks
    p({"stage": "prefill", "index": 1, "count": 1, "layer": 1, "layers": 2})  # not ours to show
    p.done()
    p.done()  # twice: nothing more
    assert term.getvalue() == ("\rreading image 1 of 2: layer 5 of 16\x1b[K\rreading image 2 of 2: layer 16 of 16\x1b[K"
                               "\rreading audio 1 of 3: layer 5 of 12\x1b[K\r\x1b[K")
    plain = io.StringIO()
    p = cli.TowerProgress(plain)
    p({"stage": "image", "index": 1, "count": 2, "layer": 5, "layers": 16})
    p({"stage": "audio", "index": 3, "count": 3, "layer": 12, "layers": 12})
    p.done()
    assert plain.getvalue() == "reading image 1 of 2: layer 5 of 16\nreading audio 3 of 3: layer 12 of 12\n"


# -- chat: /image, the queue, Ctrl-C ----------------------------------------------------------------------------

def test_chat_image_queue(tmp_path, capsys, fake, monkeypatch):
    red, blue = _png(tmp_path / "red.png"), _png(tmp_path / "my blue.png", 20, 10, (0, 0, 255))
    svg = tmp_path / "x.svg"
    svg.write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    script = "\n".join([
        f"/image {red}",
        f"/image {tmp_path / 'missing.png'}",   # an error: the queue is kept
        f"/image {svg}",                         # an error: the queue is kept
        "/image",
        f"/image '{blue}'",                      # quoted, as a terminal pastes a dropped file
        "What is in these?",
        "And now?",                              # no image: plain text
        f"/image {red}",
        "/reset",                                # the queue goes too
        "plain",
        "/exit",
    ]) + "\n"
    rc, out, err = _chat(monkeypatch, capsys, script, "--image-tokens", "70")
    assert rc == 0 and fake.image_tokens == 70
    assert "[image attached: red.png, 64 x 48]" in err and "[image attached: my blue.png, 20 x 10]" in err
    assert f"error: {tmp_path / 'missing.png'} does not exist." in err
    assert "error: x.svg is an SVG image, and SVG is not supported" in err
    assert "error: /image needs a path, as in /image photo.jpg." in err
    first, second, third = fake.calls
    assert first[1] == [{"role": "user", "content": [{"type": "image", "image": red.read_bytes()},
                                                     {"type": "image", "image": blue.read_bytes()},
                                                     {"type": "text", "text": "What is in these?"}]}]
    assert callable(first[2]["progress"])
    assert second[1][1:] == [{"role": "assistant", "content": "ok!"}, {"role": "user", "content": "And now?"}]
    assert third[1] == [{"role": "user", "content": "plain"}] and "progress" not in third[2] and fake.resets == 1
    assert out == "ok!\n" * 3
    assert err.count("reading image 1 of 2: layer 3 of 3") == 1 and err.count("reading image 2 of 2") == 4


def test_chat_image_on_a_model_without_vision(tmp_path, capsys, fake, monkeypatch):
    fake.has_vision = False
    rc, out, err = _chat(monkeypatch, capsys, f"/image {_png(tmp_path / 'a.png')}\nhi\n/exit\n")
    assert rc == 0 and "error: model.gguf has no vision tower; pass --mmproj PATH" in err
    assert fake.calls[0][1] == [{"role": "user", "content": "hi"}]


def test_ctrl_c_during_an_image_encode_returns_to_the_prompt(tmp_path, capsys, fake, monkeypatch):
    """SIGINT while the tower runs: engine.cancel(), chat raises Cancelled, the message and its image are
    dropped, and the conversation goes on from where it was."""
    red = _png(tmp_path / "red.png")

    def interrupt(eng, image, layer):
        if layer == 1 and len(eng.calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)

    fake.on_layer = interrupt
    before = signal.getsignal(signal.SIGINT)
    rc, out, err = _chat(monkeypatch, capsys, f"first\n/image {red}\nlook at this\nsecond\n/exit\n")
    assert rc == 0 and signal.getsignal(signal.SIGINT) is before
    assert "[cancelled: the message and its image were not sent]" in err
    assert "reading image 1 of 1: layer 1 of 3" in err and "layer 2 of 3" not in err
    assert [c[1] for c in fake.calls][2] == [{"role": "user", "content": "first"}, {"role": "assistant", "content": "ok!"},
                                             {"role": "user", "content": "second"}]
    assert out == "ok!\nok!\n"


def test_chat_audio_queue(tmp_path, capsys, fake, monkeypatch):
    clip, other = _wav(tmp_path / "talk.wav", 12.3, 8000), _wav(tmp_path / "my clip.wav", 0.5)
    red = _png(tmp_path / "red.png")
    mp3 = tmp_path / "song.mp3"
    mp3.write_bytes(b"ID3\x03\x00\x00\x00\x00\x00\x00" + bytes(64))
    script = "\n".join([
        f"/audio {clip}",
        f"/audio {tmp_path / 'missing.wav'}",   # an error: the queue is kept
        f"/audio {mp3}",                         # an error: the queue is kept
        "/audio",
        f"/image {red}",
        f"/audio '{other}'",                     # quoted, as a terminal pastes a dropped file
        "What is this?",
        "And now?",                              # nothing attached: plain text
        f"/audio {clip}",
        "/reset",                                # the queue goes too
        "plain",
        "/exit",
    ]) + "\n"
    rc, out, err = _chat(monkeypatch, capsys, script)
    assert rc == 0
    assert "/audio PATH" in err.splitlines()[0]
    assert err.count("[audio attached: talk.wav, 12.3 s]") == 2 and "[audio attached: my clip.wav, 0.5 s]" in err
    assert "[image attached: red.png, 64 x 48]" in err
    assert f"error: {tmp_path / 'missing.wav'} does not exist." in err
    assert "error: song.mp3 is an MP3 file: the web app decodes MP3" in err and "takes WAV files" in err
    assert "error: /audio needs a path, as in /audio clip.wav." in err
    first, second, third = fake.calls
    assert first[1] == [{"role": "user", "content": [{"type": "audio", "audio": clip.read_bytes()},
                                                     {"type": "image", "image": red.read_bytes()},
                                                     {"type": "audio", "audio": other.read_bytes()},
                                                     {"type": "text", "text": "What is this?"}]}]
    assert callable(first[2]["progress"]) and callable(second[2]["progress"])  # the history holds media
    assert second[1][1:] == [{"role": "assistant", "content": "ok!"}, {"role": "user", "content": "And now?"}]
    assert third[1] == [{"role": "user", "content": "plain"}] and "progress" not in third[2] and fake.resets == 1
    assert out == "ok!\n" * 3
    assert err.count("reading audio 1 of 2: layer 3 of 3") == 1 and err.count("reading audio 2 of 2") == 4
    assert err.count("reading image 1 of 1") == 4


def test_chat_audio_on_a_model_without_audio(tmp_path, capsys, fake, monkeypatch):
    fake.has_audio = False
    rc, out, err = _chat(monkeypatch, capsys, f"/audio {_wav(tmp_path / 'a.wav')}\nhi\n/exit\n")
    assert rc == 0 and ("error: model.gguf has no audio tower; pass --mmproj PATH with a llama.cpp projector that "
                        "has one.") in err
    assert fake.calls[0][1] == [{"role": "user", "content": "hi"}]


def test_ctrl_c_during_an_audio_encode_returns_to_the_prompt(tmp_path, capsys, fake, monkeypatch):
    """As for an image: engine.cancel(), chat raises Cancelled, the message and its clips are dropped."""
    wav, png = _wav(tmp_path / "a.wav"), _png(tmp_path / "red.png")

    def interrupt(eng, index, layer):
        if index == 1 and layer == 2 and len(eng.calls) == 2:  # the clip, after the image
            os.kill(os.getpid(), signal.SIGINT)

    fake.on_layer = interrupt
    rc, out, err = _chat(monkeypatch, capsys, f"first\n/image {png}\n/audio {wav}\nlisten\nsecond\n/exit\n")
    assert rc == 0 and "[cancelled: the message and its image and audio clip were not sent]" in err
    assert "reading audio 1 of 1: layer 2 of 3" in err and "reading audio 1 of 1: layer 3 of 3" not in err
    assert [c[1] for c in fake.calls][2] == [{"role": "user", "content": "first"}, {"role": "assistant", "content": "ok!"},
                                             {"role": "user", "content": "second"}]
    assert out == "ok!\nok!\n"
    assert cli._attachments([cli.Audio("a", b"", 1.0)] * 2) == "its audio clips"


def test_ctrl_c_during_a_reply_stops_it_and_keeps_it(capsys, fake, monkeypatch):
    fake.reply = "abcdefgh"
    orig = fake.chat

    async def chat(messages, **kwargs):
        async for t in orig(messages, **kwargs):
            if t.text == "c" and len(fake.calls) == 1:
                os.kill(os.getpid(), signal.SIGINT)
            yield t

    fake.chat = chat
    rc, out, err = _chat(monkeypatch, capsys, "one\ntwo\n/exit\n")
    assert rc == 0 and "[stopped]" in err
    assert out.startswith("abc") and len(out.split("\n")[0]) < 8
    assert fake.calls[1][1][1] == {"role": "assistant", "content": out.split("\n")[0]}


# -- XDG_RUNTIME_DIR -----------------------------------------------------------------------------------------

def test_runtime_dir_is_set_only_when_missing_or_invalid(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    mine = f"rullama-runtime-{os.getuid()}"
    good = tmp_path / "run"
    good.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(good))
    assert _backend.ensure_runtime_dir() is None and os.environ["XDG_RUNTIME_DIR"] == str(good)
    for bad in (None, "", "relative/dir", str(tmp_path / "absent"), str(TINY_TEXT)):
        if bad is None:
            monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
        else:
            monkeypatch.setenv("XDG_RUNTIME_DIR", bad)
        path = _backend.ensure_runtime_dir()
        assert path == str(tmp_path / mine) == os.environ["XDG_RUNTIME_DIR"], bad
        st = os.lstat(path)
        assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.getuid()
    os.chmod(tmp_path / mine, 0o755)  # opened up by someone: closed again
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert stat.S_IMODE(os.lstat(_backend.ensure_runtime_dir()).st_mode) == 0o700
    # A symlink planted where our folder goes is not followed: a fresh private folder instead.
    os.rmdir(tmp_path / mine)
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / mine)
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    path = _backend.ensure_runtime_dir()
    assert path != str(tmp_path / mine) and Path(path).parent == tmp_path
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o700


def test_no_vulkan_noise_without_xdg_runtime_dir():
    """A plain generate with XDG_RUNTIME_DIR unset writes nothing to stderr but our own stats line (the
    Vulkan stack printed "error: XDG_RUNTIME_DIR is invalid or not set in the environment." twice)."""
    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    r = subprocess.run([sys.executable, "-m", "rullama_py", "generate", str(TINY_TEXT), "-p", "hi", "-n", "2",
                        "--temperature", "0"], capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    require(None if "no WebGPU adapter" not in r.stderr else r.stderr.strip(), "the native generate test")
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and STATS_LINE.match(lines[0]), r.stderr
    assert "XDG_RUNTIME_DIR" not in r.stderr and r.stdout


# -- end to end on the tiny vision models -------------------------------------------------------------------

TINY_VISION_Q8 = FIXTURES / "gemma4_tiny_vision_q8_0.gguf"
TINY_VISION_Q8_MMPROJ = FIXTURES / "gemma4_tiny_vision_q8_0.mmproj.gguf"


@pytest.mark.parametrize("model, mmproj, temperature", [
    (TINY_VISION, None, 0.0),                            # Ollama's layout: the tower inside the model file
    (TINY_VISION_Q8, TINY_VISION_Q8_MMPROJ, 0.0),        # llama.cpp's pair: --mmproj
    (TINY_VISION_Q8, TINY_VISION_Q8_MMPROJ, 1.0),        # sampled, same seed
], ids=["f32-greedy", "q8_0-mmproj-greedy", "q8_0-mmproj-seeded"])
def test_generate_image_end_to_end_equals_the_engine(tmp_path, capsys, model, mmproj, temperature):
    """`rullama generate MODEL --image A --image B -p ...` prints what the engine itself makes of the same
    one-turn conversation (images first), token for token; and the images matter (other images, other
    tokens, on the model whose tiny tower moves its replies)."""
    for f in (model, mmproj):
        require(None if f is None or f.exists() else f"{f} is not generated yet", "the vision CLI tests")
    from conftest import run
    from rullama_py.engine import Engine
    from rullama_py.sampling import SamplerParams

    a = _png(tmp_path / "photo.png", 90, 120, (30, 140, 220))
    b = tmp_path / "noise.png"
    import numpy as np
    from PIL import Image

    Image.fromarray((np.random.default_rng(0).random((64, 100, 3)) * 255).astype(np.uint8)).save(b)
    prompt, n = "Describe these images.", 8

    async def direct(images):
        eng = await Engine.load(str(model), mmproj=None if mmproj is None else str(mmproj), max_context=4096,
                                params=SamplerParams(temperature=temperature, seed=7))
        eng.image_tokens = 70
        content = [{"type": "image", "image": p.read_bytes()} for p in images] + [{"type": "text", "text": prompt}]
        return "".join([t.text async for t in eng.chat([{"role": "user", "content": content}], max_tokens=n)])

    def cli_run(images):
        args = ["generate", str(model), "-p", prompt, "-n", str(n), "--temperature", str(temperature), "--seed", "7",
                "--image-tokens", "70"] + [x for p in images for x in ("--image", str(p))]
        rc = cli.main(args + ([] if mmproj is None else ["--mmproj", str(mmproj)]))
        out, err = capsys.readouterr()
        assert rc == 0, err
        return out, err

    want = run(direct([a, b]))
    out, err = cli_run([a, b])
    assert out == want
    lines = [line for line in err.splitlines() if line.strip()]
    progress = [re.fullmatch(r"reading image (\d) of 2: layer (\d+) of (\d+)", line) for line in lines[:-1]]
    assert all(progress), err
    layers = int(progress[0].group(3))
    assert [(int(m.group(1)), int(m.group(2))) for m in progress] == [(i, l) for i in (1, 2) for l in range(layers + 1)]
    assert STATS_LINE.match(lines[-1]), err
    if mmproj is not None and temperature == 0.0:  # the image reaches the model: another image, another reply
        assert cli_run([a])[0] != cli_run([b])[0]


# -- end to end on the tiny audio models --------------------------------------------------------------------

@pytest.mark.parametrize("model, mmproj", [
    (TINY_AUDIO, None),                          # Ollama's layout: the audio tower inside the model file
    (TINY_AUDIO_Q8, TINY_AUDIO_Q8_MMPROJ),       # llama.cpp's pair: --mmproj
], ids=["f32", "q8_0-mmproj"])
def test_generate_audio_end_to_end_equals_the_engine(capsys, monkeypatch, model, mmproj):
    """`rullama generate MODEL --audio CLIP -p ...` samples the same greedy tokens as Engine.chat given the
    same one-turn conversation (the clip first), with the clip's soft tokens in the prompt and the audio
    tower's progress on stderr."""
    for f in (model, mmproj):
        if f is not None and not f.exists():  # the llama.cpp pair is made by tools/make_tiny_gemma4_audio.py
            pytest.skip(f"{f.name} is not generated yet")
    from conftest import run
    from rullama_py.engine import Engine
    from rullama_py.sampling import SamplerParams

    clip, prompt, n = CLIPS / "tower_cat.wav", "the cat", 8
    n_soft = sum(p.n_soft for p in media.prepare_audio(clip.read_bytes()))
    orig = Engine.chat

    async def direct():
        eng = await Engine.load(str(model), mmproj=None if mmproj is None else str(mmproj), max_context=4096,
                                params=SamplerParams(temperature=0.0))
        content = [{"type": "audio", "audio": clip.read_bytes()}, {"type": "text", "text": prompt}]
        toks = [t async for t in orig(eng, [{"role": "user", "content": content}], max_tokens=n)]
        return [t.id for t in toks], "".join(t.text for t in toks), eng.stats.prompt_tokens

    want_ids, want_text, prompt_tokens = run(direct())
    assert prompt_tokens > n_soft > 0

    got = []

    async def chat(self, messages, **kwargs):  # the CLI's engine, recording the ids it samples
        async for t in orig(self, messages, **kwargs):
            got.append(t.id)
            yield t

    monkeypatch.setattr(Engine, "chat", chat)
    args = ["generate", str(model), "--audio", str(clip), "-p", prompt, "-n", str(n), "--temperature", "0"]
    rc = cli.main(args + ([] if mmproj is None else ["--mmproj", str(mmproj)]))
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert got == want_ids and out == want_text
    lines = [line for line in err.splitlines() if line.strip()]
    progress = [re.fullmatch(r"reading audio 1 of 1: layer (\d+) of (\d+)", line) for line in lines[:-1]]
    assert all(progress), err
    layers = int(progress[0].group(2))
    assert [int(m.group(1)) for m in progress] == list(range(layers + 1))
    assert STATS_LINE.match(lines[-1]) and lines[-1].startswith(f"[{prompt_tokens} prompt tokens "), err


# -- rullama say (Kokoro-82M) --------------------------------------------------------------------------------


def _kokoro_file():
    from rullama_py import assets

    path = assets.kokoro_model_path("f16")
    require(None if path.exists() else f"{path} is missing (run tools/setup.sh)", "the rullama say tests")
    return path


def test_say_refuses_before_loading(tmp_path, capsys, monkeypatch):
    """Empty text, a bad speed and a voicepack of the wrong size are sentences, found before the model loads."""
    from rullama_py import speaker

    async def no_load(*a, **k):
        raise AssertionError("the model must not load")

    monkeypatch.setattr(speaker.Speaker, "load", classmethod(lambda cls, *a, **k: no_load()))
    bad = tmp_path / "voice.bin"
    bad.write_bytes(b"\0" * 1000)
    for argv, sentence in ((["say", "   "], "say what?"),
                           (["say", "Hi.", "--speed", "9"], "speed 9.0 is out of range"),
                           (["say", "Hi.", "--voice-file", str(bad)], "voice.bin: a voicepack holds 510 x 256")):
        assert cli.main(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and sentence in err, err


def test_say_lists_voices_and_names_an_unknown_one(capsys):
    path = _kokoro_file()
    assert cli.main(["say", "--list-voices", "--kokoro", str(path)]) == 0
    voices = capsys.readouterr().out.split()
    assert len(voices) == 54 and "af_heart" in voices and "bm_george" in voices
    assert cli.main(["say", "Hello.", "--voice", "zz_nobody", "--kokoro", str(path)]) == 1
    err = capsys.readouterr().err
    assert "unknown voice 'zz_nobody'; available: af_alloy" in err, err


# -- rullama clone-voice -------------------------------------------------------------------------------------------


def test_clone_voice_refuses_before_loading(tmp_path, capsys, monkeypatch):
    """A missing file, a file that is not WAV and a recording that is too short are sentences, before the model
    loads."""
    import numpy as np

    from rullama_py import speaker

    async def no_load(*a, **k):
        raise AssertionError("the model must not load")

    monkeypatch.setattr(speaker.Speaker, "load", classmethod(lambda cls, *a, **k: no_load()))
    notes = tmp_path / "notes.txt"
    notes.write_text("not audio")
    short = tmp_path / "short.wav"
    t = np.arange(24000) / 24000
    short.write_bytes(media.encode_wav((0.3 * np.sin(2 * np.pi * 150 * t)).astype(np.float32), 24000))
    for argv, sentence in ((["clone-voice", str(tmp_path / "nope.wav")], "cannot read"),
                           (["clone-voice", str(notes)], "notes.txt"),
                           (["clone-voice", str(short)], "record at least 3 s")):
        assert cli.main(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and sentence in err, err


def test_clone_voice_writes_a_voicepack_and_prints_the_curve(tmp_path, capsys):
    """Two steps on the tiny Kokoro: the curve is printed a line a step and the file is a voicepack that
    `say --voice-file` reads."""
    import asyncio

    import numpy as np

    from rullama_py import assets
    from rullama_py.speaker import VOICE_BYTES, Speaker, load_voice_file

    tiny = assets.kokoro_tiny_path()
    require(None if tiny.is_file() else f"{tiny} is missing (run tools/setup.sh)", "the clone-voice test")

    async def target():
        s = await Speaker.load(tiny)
        try:
            return await s.say("A warm voice reads a story about the sea and the stars.", voice="bm_george")
        finally:
            s.release()

    wav = tmp_path / "me.wav"
    wav.write_bytes(media.encode_wav(asyncio.run(target()), 24000))
    out = tmp_path / "me.bin"
    rc = cli.main(["clone-voice", str(wav), "-o", str(out), "--steps", "2", "--text", "Ah.", "--start", "af_heart",
                   "--kokoro", str(tiny)])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    lines = cap.out.strip().splitlines()
    assert lines[0] == "step\tloss\tbest\tstep_size" and [ln.split("\t")[0] for ln in lines[1:]] == ["0", "1", "2"]
    best = [float(ln.split("\t")[2]) for ln in lines[1:]]
    assert best[0] >= best[1] >= best[2] > 0
    assert "start voice af_heart" in cap.err and f"wrote {out}" in cap.err
    assert out.stat().st_size == VOICE_BYTES
    pack = load_voice_file(out)
    assert np.isfinite(pack).all()


# -- diffuse: a diffusion model (DiffusionGemma) -------------------------------------------------------------

TINY_DIFFUSION = FIXTURES / "diffusion_gemma_tiny.gguf"
STEP_LINE = re.compile(r"^canvas (\d+)  step +(\d+)/(\d+)  t ([\d.]+)  entropy (\S+)  accepted +(\d+)/(\d+)"
                       r"(  stable)?(  converged)?$")
DIFFUSION_STATS = re.compile(r"^\[(\d+) tokens in (\d+) forwards: ([\d.]+) tokens per forward, (\d+) canvas(es)?, "
                             r"[\d.]+ s\]$")


def _need_tiny_diffusion():
    require(None if TINY_DIFFUSION.exists() else f"{TINY_DIFFUSION.name} is not generated yet", "the diffuse tests")


def test_diffusion_max_steps_is_the_drivers():
    from rullama_py import diffusion

    assert cli.DIFFUSION_MAX_STEPS == diffusion.MAX_STEPS


@pytest.mark.parametrize("value", ["0", "1001", "-3", "ten", "2.5"])
def test_bad_diffuse_steps_are_refused_by_the_parser(value, capsys, no_engine):
    with pytest.raises(SystemExit) as e:
        cli.main(["diffuse", "model.gguf", "-p", "x", "--steps", value])
    assert e.value.code == 2
    assert f"argument --steps: {value} is not a number of steps: give 1 to 1000." in capsys.readouterr().err


@pytest.mark.parametrize("value", ["0", "-1", "many"])
def test_bad_diffuse_max_tokens_are_refused_by_the_parser(value, capsys, no_engine):
    with pytest.raises(SystemExit) as e:
        cli.main(["diffuse", "model.gguf", "-p", "x", "--max-tokens", value])
    assert e.value.code == 2
    assert f"argument --max-tokens/-n: {value} is not a number of tokens: give 1 or more." in capsys.readouterr().err


def test_diffuse_on_a_chat_model_is_refused_from_its_header(capsys, monkeypatch):
    from rullama_py import diffusion

    async def load(*args, **kwargs):
        raise AssertionError("the weights were loaded although the header says this is no diffusion model")

    monkeypatch.setattr(diffusion.Diffusion, "load", staticmethod(load))
    assert cli.main(["diffuse", str(TINY_TEXT), "-p", "x"]) == 1
    assert capsys.readouterr().err == (f"error: {TINY_TEXT} is a gemma4 model, not a diffusion model: use "
                                       "`rullama generate` or `rullama chat` with it.\n")


def test_diffuse_settings_out_of_range_are_a_sentence_before_loading(capsys, monkeypatch):
    _need_tiny_diffusion()
    from rullama_py import diffusion

    async def load(*args, **kwargs):
        raise AssertionError("the weights were loaded although the settings were refused")

    monkeypatch.setattr(diffusion.Diffusion, "load", staticmethod(load))
    for args, sentence in [(["--t-min", "0.9", "--t-max", "0.5"], "temperatures must satisfy 0 < t_min <= t_max"),
                           (["--entropy-bound", "-1"], "entropy_bound must be 0 or more, got -1.0")]:
        assert cli.main(["diffuse", str(TINY_DIFFUSION), "-p", "x", *args]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: " + sentence) and err.count("\n") == 1, err


@pytest.mark.parametrize("command", ["chat", "generate"])
def test_chat_on_a_diffusion_model_points_to_diffuse(command, capsys, monkeypatch):
    _need_tiny_diffusion()
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\n"))
    args = [command, str(TINY_DIFFUSION)] + (["-p", "x"] if command == "generate" else [])
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {TINY_DIFFUSION} is a diffusion model") and "`rullama diffuse`" in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_diffuse_prints_each_step_then_the_drivers_text(capsys):
    """`rullama diffuse` on the tiny model: a line per step on stderr (the canvas, the step of the cap, the
    temperature, the mean entropy, positions accepted) as diffusion.Diffusion itself steps with the same seed,
    the text on stdout, the totals last. Another seed gives other steps (the seed reaches the sampler)."""
    _need_tiny_diffusion()
    from conftest import run
    from rullama_py.diffusion import Diffusion, DiffusionParams

    prompt, steps, seed, n = "hello there", 4, 1, 24

    async def direct(seed):
        diff = await Diffusion.load(str(TINY_DIFFUSION), max_context=4096)
        await diff.start([{"role": "user", "content": prompt}],
                         DiffusionParams(steps=steps, seed=seed, max_new_tokens=n))
        return [s async for s in diff.steps()], diff.text, diff.stats

    def cli_run(seed):
        rc = cli.main(["diffuse", str(TINY_DIFFUSION), "-p", prompt, "--steps", str(steps), "--seed", str(seed),
                       "--max-tokens", str(n)])
        out, err = capsys.readouterr()
        assert rc == 0, err
        return out, err.splitlines()

    want_steps, want_text, want_stats = run(direct(seed))
    out, err = cli_run(seed)
    assert out == want_text + "\n"
    lines = [STEP_LINE.match(line) for line in err[:-1]]
    assert all(lines) and len(lines) == len(want_steps), err
    for m, s in zip(lines, want_steps):
        assert (int(m[1]), int(m[2]), int(m[3])) == (s.block + 1, s.step, steps)
        assert float(m[4]) == pytest.approx(s.temperature, abs=5e-4)
        assert float(m[5]) == pytest.approx(s.mean_entropy, rel=1e-3)  # printed to 5 digits
        assert (int(m[6]), int(m[7])) == (s.n_accepted, len(s.argmax))
        assert bool(m[8]) == s.stable and bool(m[9]) == s.converged
    totals = DIFFUSION_STATS.match(err[-1])
    assert totals, err[-1]
    assert (int(totals[1]), int(totals[2])) == (want_stats["tokens"], want_stats["forwards"])
    assert int(totals[4]) == want_steps[-1].block + 1
    other = [STEP_LINE.match(line)[5] for line in cli_run(seed + 1)[1][:-1]]
    assert other != [m[5] for m in lines]


def test_diffuse_quiet_prints_the_text_only(capsys):
    _need_tiny_diffusion()
    assert cli.main(["diffuse", str(TINY_DIFFUSION), "-p", "hi", "--steps", "2", "--quiet", "--raw", "-n", "8"]) == 0
    out, err = capsys.readouterr()
    assert out.endswith("\n") and not any(STEP_LINE.match(line) for line in err.splitlines())
    assert DIFFUSION_STATS.match(err.splitlines()[-1]), err


# -- rullama bench ------------------------------------------------------------------------------------------

TINY_Q4 = FIXTURES / "gemma4_tiny_q4_k_m.gguf"


def test_bench_measures_every_depth_in_one_load_and_records_them(tmp_path, capsys, monkeypatch):
    """Records in docs/bench/README.md's format, one per depth, appended to what the file holds; each depth's
    decode runs at that depth (positions seen by Engine.step)."""
    import json

    from conftest import run
    from rullama_py import bench, gpu

    loads, positions = [], []
    load, step = engine_mod.Engine.load, engine_mod.Engine.step

    async def counting_load(*args, **kwargs):
        loads.append(args)
        return await load(*args, **kwargs)

    async def spying_step(self):
        positions.append(len(self.tokens))
        return await step(self)

    monkeypatch.setattr(engine_mod.Engine, "load", staticmethod(counting_load))
    monkeypatch.setattr(engine_mod.Engine, "step", spying_step)
    rec = tmp_path / "records.json"
    rec.write_text('[{"engine": "llama.cpp-cuda", "model": "e2b"}]\n')
    argv = ["bench", str(TINY_Q4), "--prompt-tokens", "4", "--gen-tokens", "2", "--repeats", "1", "--ctx", "64",
            "--prefill-chunk", "8", "--depth", "0,20", "--record", str(rec), "--commit", "abc1234",
            "--kv-cache-type", "q8_0"]
    assert cli.main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [r["depth"] for r in printed] == [0, 20] and len(loads) == 1
    dev = run(gpu.default_device())
    records = json.loads(rec.read_text())
    assert records[0] == {"engine": "llama.cpp-cuda", "model": "e2b"}
    new = records[1:]
    assert [r["context"] for r in new] == [0, 20]
    for r in new:
        assert list(r)[:7] == ["engine", "model", "prefill_tok_s", "decode_tok_s", "context", "commit", "command"]
        assert (r["engine"], r["model"], r["commit"]) == ("rullama-py", "gemma4_tiny_q4_k_m", "abc1234")
        assert r["command"] == "rullama " + " ".join(argv)
        assert r["prefill_tok_s"] > 0 and r["decode_tok_s"] > 0 and r["dispatches_per_token"] > 0
        assert (r["prompt_tokens"], r["gen_tokens"], r["prefill_chunk"]) == (4, 2, 8)
        assert r["device"]["device"] == dev.info["device"]
        assert r["kv_cache_type"] == "q8_0" and r["kv_cache_bytes"] % 36 == 0 and r["kv_cache_bytes"] > 0
        if hasattr(dev, "allocated_bytes"):  # weights, KV cache and activations
            assert r["gpu_bytes"] > r["weight_bytes_on_gpu"] > 0
    # each depth: the warm-up's steps after the 4 prompt tokens, then the 2 timed steps after depth + prompt
    # tokens (after a fill, its sampled token goes in with the prompt: 20 + 1 + 4)
    warm = list(range(4, 4 + bench.WARMUP_STEPS))
    assert positions == warm + [4, 5] + warm + [25, 26]


def test_bench_depth_beyond_the_context_is_a_sentence_before_loading(capsys, no_engine):
    assert cli.main(["bench", str(TINY_Q4), "--ctx", "256", "--depth", "0,200", "--prompt-tokens", "64"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "need a context of 328 tokens" in err and "--ctx 328" in err


def test_bench_bad_depths_are_refused_by_the_parser(capsys, no_engine):
    with pytest.raises(SystemExit):
        cli.main(["bench", str(TINY_Q4), "--depth", "0,-1"])
    assert "0,-1 is not a list of depths" in capsys.readouterr().err


def test_bench_commit_is_the_checkout_or_unknown(monkeypatch):
    here = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if here.returncode == 0:
        assert cli._git_commit() == here.stdout.strip()

    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(subprocess, "run", no_git)
    assert cli._git_commit() == "unknown"
