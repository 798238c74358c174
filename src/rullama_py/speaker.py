"""Text to speech with Kokoro-82M: `Speaker` opens a Kokoro GGUF (weights, phoneme vocabulary, stock voices),
turns text into phonemes (g2p.py), picks the voice row for each sentence and synthesises it on the GPU
(models/kokoro.py).

    speaker = await Speaker.load()                      # the setup's Kokoro file, or a path / URL / GGUFFile
    pcm = await speaker.say("Hello there.", voice="af_heart")          # float32, 24 kHz, mono
    async for part in speaker.stream(long_text, voice="bm_george"):   # sentence by sentence
        play(part.audio)

Long text is split at sentence boundaries under Kokoro's 510-phoneme limit (g2p.split_sentences) and each piece
is synthesised as soon as the previous one is done, so playback can start after the first sentence.
A voice is a "voicepack": float32 [510, 256], one style row per phoneme count (row len(phonemes) - 1, as the
`kokoro` package and kokoro-js pick it). Stock voices come from the GGUF; others (a cloned voice, a .bin file)
are added with `add_voice`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import g2p
from .gguf_file import GGUFError, GGUFFile
from .models import kokoro_gguf
from .models.kokoro import SAMPLE_RATE, Kokoro, KokoroError

VOICE_ROWS = 510
VOICE_DIM = 256
VOICE_BYTES = VOICE_ROWS * VOICE_DIM * 4


class SpeakerError(ValueError):
    """A request the speaker cannot serve: unknown voice, bad voicepack, nothing to say, bad speed."""


@dataclass
class Utterance:
    """One synthesised piece of a text: its words, its phonemes, 24 kHz float32 audio, frames per phoneme."""

    text: str
    phonemes: str
    audio: np.ndarray
    durations: np.ndarray

    @property
    def seconds(self) -> float:
        return len(self.audio) / SAMPLE_RATE


def voicepack(data, name: str = "voice") -> np.ndarray:
    """A voicepack from raw bytes (kokoro-js's voices/*.bin: little-endian float32 [510, 256]) or an array;
    a clear sentence when the size or the values are wrong."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        raw = bytes(data)
        if len(raw) != VOICE_BYTES:
            raise SpeakerError(f"{name}: a voicepack holds {VOICE_ROWS} x {VOICE_DIM} float32 values "
                               f"({VOICE_BYTES} bytes); this one has {len(raw)} bytes")
        pack = np.frombuffer(raw, "<f4").reshape(VOICE_ROWS, VOICE_DIM)
    else:
        pack = np.asarray(data, np.float32)
        if pack.shape == (VOICE_DIM,):
            pack = np.broadcast_to(pack, (VOICE_ROWS, VOICE_DIM))
        if pack.shape == (VOICE_ROWS, 1, VOICE_DIM):
            pack = pack.reshape(VOICE_ROWS, VOICE_DIM)
        if pack.shape != (VOICE_ROWS, VOICE_DIM):
            raise SpeakerError(f"{name}: a voicepack has shape ({VOICE_ROWS}, {VOICE_DIM}), not {pack.shape}")
    if not np.all(np.isfinite(pack)):
        raise SpeakerError(f"{name}: the voicepack holds values that are not finite numbers")
    return np.ascontiguousarray(pack, np.float32)


def load_voice_file(path) -> np.ndarray:
    """A voicepack from a .bin file (kokoro-js / `rullama clone-voice` format)."""
    path = Path(path)
    try:
        return voicepack(path.read_bytes(), path.name)
    except OSError as e:
        raise SpeakerError(f"cannot read the voice file {path}: {e.strerror or e}") from e


class Speaker:
    """Kokoro-82M with its vocabulary and voices, on one GPU device."""

    def __init__(self, model: Kokoro, config, voices: dict, name: str = "kokoro"):
        self.model = model
        self.config = config
        self.vocab: dict = config.vocab
        self._voices: dict[str, np.ndarray] = dict(voices)
        self.name = name

    @classmethod
    async def load(cls, model=None, *, device=None, progress=None) -> "Speaker":
        """Open a Kokoro GGUF: None (the setup's F16 file), a path, a URL, a Source or an open GGUFFile."""
        from .gpu import default_device

        if model is None:
            from .assets import kokoro_model_path

            model = kokoro_model_path()
        gf = model if isinstance(model, GGUFFile) else await GGUFFile.open(model)
        try:
            config = kokoro_gguf.read_kokoro_config(gf)
            state = await kokoro_gguf.load_state(gf, progress=progress)
            voices = await kokoro_gguf.voices(gf)
        finally:
            if not isinstance(model, GGUFFile):
                await gf.close()
        device = device or await default_device()
        try:
            net = await Kokoro.load(device, state, config)
        except KokoroError as e:  # widths this runner does not support: a file problem, said with its name
            raise kokoro_gguf.KokoroLoadError(f"{getattr(gf.source, 'name', 'kokoro')}: {e}") from e
        return cls(net, config, voices, getattr(gf.source, "name", "kokoro"))

    # -- voices --------------------------------------------------------------------------------------------
    @property
    def voices(self) -> list[str]:
        return sorted(self._voices)

    def add_voice(self, name: str, pack) -> None:
        """Make `pack` (a [510, 256] voicepack, raw .bin bytes or a single 256-value style) available as `name`."""
        if not name or not name.strip():
            raise SpeakerError("a voice needs a name")
        self._voices[name] = voicepack(pack, name)

    def voice(self, voice) -> np.ndarray:
        """The voicepack for a name, a voicepack array, or raw .bin bytes."""
        if isinstance(voice, str):
            pack = self._voices.get(voice)
            if pack is None:
                raise SpeakerError(f"unknown voice {voice!r}; available: {', '.join(self.voices)}")
            return pack
        return voicepack(voice)

    @staticmethod
    def style_row(pack: np.ndarray, n_phonemes: int) -> np.ndarray:
        """The style for a sentence of n_phonemes phoneme tokens: row n - 1 (Kokoro's own choice)."""
        return pack[min(max(n_phonemes - 1, 0), VOICE_ROWS - 1)]

    # -- speech --------------------------------------------------------------------------------------------
    def lang_for(self, voice, lang: str | None) -> str:
        if lang:
            return lang
        return g2p.lang_for_voice(voice) if isinstance(voice, str) else "en-us"

    async def synthesize_phonemes(self, phonemes: str, voice="af_heart", *, speed: float = 1.0, seed: int = 0,
                                  noise: float = 1.0) -> Utterance:
        """Audio for one phoneme string (at most 510 phoneme tokens)."""
        check_speed(speed)
        ids = g2p.tokenize(phonemes, self.vocab)
        if not ids:
            raise SpeakerError("nothing to say: no phoneme of the text is in Kokoro's vocabulary")
        if len(ids) > 510:
            raise SpeakerError(f"{len(ids)} phonemes in one piece; Kokoro reads at most 510 (split the text)")
        style = self.style_row(self.voice(voice), len(ids))
        try:
            audio, dur = await self.model.synthesize([0, *ids, 0], style, speed=speed, seed=seed, noise=noise)
        except KokoroError as e:
            raise SpeakerError(str(e)) from e
        return Utterance("", phonemes, audio, dur)

    async def stream(self, text: str, voice="af_heart", *, speed: float = 1.0, seed: int = 0,
                     lang: str | None = None, cancelled=None):
        """Utterances of `text`, sentence by sentence (an async iterator). `cancelled()` is checked between
        sentences."""
        check_speed(speed)
        pack = self.voice(voice)  # an unknown voice fails before any work
        i = 0
        # phonemes one sentence at a time: the first sentence's audio does not wait for the rest of the text
        async for words, phonemes in g2p.iter_sentences(text, self.lang_for(voice, lang)):
            if cancelled is not None and cancelled():
                return
            u = await self.synthesize_phonemes(phonemes, pack, speed=speed, seed=seed + i)
            u.text = words
            i += 1
            yield u

    async def say(self, text: str, voice="af_heart", *, speed: float = 1.0, seed: int = 0,
                  lang: str | None = None) -> np.ndarray:
        """The whole text as one float32 24 kHz waveform (pieces joined with no gap: each ends in its own
        pause)."""
        parts = [u.audio async for u in self.stream(text, voice, speed=speed, seed=seed, lang=lang)]
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)

    def release(self) -> None:
        self.model.release()


def check_speed(speed: float) -> None:
    """A SpeakerError unless 0.25 <= speed <= 4."""
    if not (isinstance(speed, (int, float)) and 0.25 <= speed <= 4.0):
        raise SpeakerError(f"speed {speed!r} is out of range: use 0.25 to 4 (1 is Kokoro's normal pace)")


__all__ = ["Speaker", "SpeakerError", "Utterance", "voicepack", "load_voice_file", "GGUFError", "SAMPLE_RATE"]
