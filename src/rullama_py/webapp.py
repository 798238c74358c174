"""The Python half of the web app: what web/worker.js calls inside Pyodide.

    app = WebApp(emit)                       # emit(event: str, payload_json: str) posts to the page
    r = await app.load("url", "http://127.0.0.1:8800/models/default.gguf", '{"max_context": 2048}')
    r = await app.load("url", model_url, options, "url", mmproj_url)   # a llama.cpp model + its projector
    r = await app.load("url", model_url, '{"max_context": 1024, "text_only": true}')   # memory modes: the
                                             # context size, no towers; "release_towers": true frees them after
                                             # each reply (also a chat request's setting); "ple_on_gpu": true
                                             # puts Gemma 4's per-layer-embedding table on the GPU;
                                             # "kv_cache_type": "q8_0" halves the KV cache (default "f16")
    r = app.memory(); r = app.release_towers()   # GPU memory now and at most since the load; free the towers now
    r = await app.chat('[{"role": "user", "content": "Hi"}]', '{"temperature": 0, "max_tokens": 64}')
    r = await app.chat('[{"role": "user", "content": [{"type": "image", "ref": 0}, {"type": "text", "text": "What is it?"}]}]',
                       '{"max_tokens": 64, "image_tokens": 280}', [png_bytes])
    r = await app.chat('[{"role": "user", "content": [{"type": "audio", "ref": 0, "format": "wav"},
                                                      {"type": "audio", "ref": 1, "format": "f32"}, ...]}]',
                       '{"max_tokens": 64}', [wav_bytes, float32_16k_bytes])
    app.stop()                               # from the worker's message handler, while chat() is running
    blob = await app.save_state(); await app.restore_state(blob)

    # a diffusion model (DiffusionGemma): load() takes it like any model (its header says so); then
    r = await app.diffuse('[{"role": "user", "content": "Hi"}]', '{"steps": 48, "seed": 1, "max_tokens": 256}')
                                             # one "diffusion" event per denoising step; app.stop() ends it

    # speech (Kokoro-82M), beside the chat model on the same GPU device
    r = await app.speech_load("url", "http://127.0.0.1:8800/models/kokoro.gguf", '{"name": "kokoro-v1.0-f16.gguf"}')
    r = await app.speech_voices()                              # the loaded model's voices (or a file's, from its header)
    r = await app.speak("Hello there. How are you?", "af_heart", 1.0, 0)   # one "speech" event per sentence
    r = await app.speak_start(text, voice, speed, seed, run); r = await app.speak_next(run)   # the same, a
                                             # sentence per call (the worker lets chat requests in between)
    app.speech_stop()                        # from the worker's message handler: ends speak() between sentences
    r = app.speech_add_voice("mine", voicepack_bytes)           # a kokoro-js .bin voicepack, [510, 256] float32

    # voice cloning (rullama_py.voice.VoiceTrainer on the loaded speech model; one trainer at a time)
    r = await app.clone_target(float32_bytes, 48000, "recording")  # or (wav_bytes, 0, "voice.wav", "wav")
    r = await app.clone_start('{"texts": ["The quick brown fox."], "train": "timbre", "seed": 0}')
    r = await app.clone_step(50, 0.15)       # steps until 50 or 0.15 s of work; the worker calls it in a loop
    pack = await app.clone_voice()            # the best voice so far: voicepack bytes, [510, 256] float32
    r = await app.clone_preview("Hello!")    # a "clone-audio" event with the best voice speaking
    r = app.clone_reset(); r = app.clone_release()

Structured values cross the JS boundary as JSON strings: no proxies to free on either side, and the same
calls work natively (tests/browser/test_webapp.py drives this class on wgpu-py). Media bytes are the one
exception: they come as a list (a JS Array of Uint8Array in the browser, transferred to the worker without
base64), and message parts name them by index (`engine_messages` turns them into the engine's parts). An
audio part's bytes are a WAV file ("format": "wav", decoded and resampled here) or float32 mono samples at
16 kHz ("format": "f32": what the page decoded from MP3, OGG, M4A, WebM or a microphone recording).

Every call returns `{"ok": true, ...}` or `{"ok": false, "error": {"kind", "message", "detail"}}` where
`message` is a plain sentence for the page to show and `kind` one of: no-webgpu, device-limit, device-lost,
not-found, unreachable, no-range, source, corrupt, unsupported, context, busy, no-model, snapshot, chat, gpu,
internal; for images: image (the image itself: damaged, SVG, too large, ...), no-vision (the model has no
vision tower), image-decoder (Pillow is missing), vision-load (the tower cannot be built), vision-limit (the
tower does not fit the GPU); for audio: audio (the clip itself: a damaged or unsupported WAV, too long, too
short, ...), no-audio (the model has no audio tower), resampler (scipy, which resamples WAV files, is
missing), audio-load, audio-limit (as for the vision tower), text-only (images or audio for a model loaded
text-only); for the projector given at load: mmproj (with
the sentence saying what); for speech: speech (the text, voice or speed asked for: empty text, nothing to say,
an unknown voice, a voicepack of the wrong shape, ...), speech-load (the Kokoro file: damaged, not a Kokoro
model, not found, unreachable, too large for the GPU); for voice cloning: clone (the recording: too short,
silent, clipped, damaged; the options or training text; nothing to train yet); for diffusion: diffusion-model
(chat() with a diffusion model loaded), not-diffusion (diffuse() with a chat model), diffusion-media (images or
audio in a conversation for the diffusion model, which reads text only), diffusion (a setting out of range).

GPU memory: load() and chat() return "gpu_memory" ({allocated_bytes, peak_bytes, buffers, towers}: what the
buffers of the one GPU device hold, the chat model, its towers and the speech model together) and a "memory"
event carries the same whenever it changes (a load, a reply, the speech model, towers released).

Streaming events (through `emit`): "progress" while loading (phase, bytes fetched, tensors uploaded, seconds
left), "media" while a message's images or audio go through a tower (stage "image" or "audio": index and
count of the images, or of the 30 s audio blocks, read in this turn, 1-based, layers done and layers) and
"token" per generated token (id, text, running counts). Stop is a flag checked between tokens, and
engine.cancel() for the towers, which stop between layers: each token and each layer awaits the GPU, so the
worker's event loop runs and delivers the page's stop message in time.

Diffusion events: "diffusion" per denoising step (diffusion_event: the step counter, the temperature, the mean
entropy, the argmax canvas as ids and text pieces, which positions were accepted and which kept their argmax, and
the finished canvases' text when one ends). Stop cancels between steps, as between tokens.

Speech events: "speech-progress" while the Kokoro file loads (phase "kokoro-open", "kokoro-weights" with bytes
fetched and tensors uploaded, "kokoro-ready": names apart from the chat model's "progress" phases), and one
"speech" event per synthesised sentence: {run, index, text, phonemes, durations (frames per phoneme token),
samples, sample_rate, seconds, synth_seconds} with the sentence's audio as a third argument of `emit`: the
little-endian float32 mono samples at 24 kHz as bytes (a Uint8Array in the browser, transferred to the page as
it is: no base64, no JSON).

Voice-clone events: "clone-target" {name, samples, sample_rate} with the prepared target (trimmed, 24 kHz,
levelled) as float32 bytes, and "clone-audio" {step, samples, sample_rate} with the current voice speaking the
sample sentence.
"""

from __future__ import annotations

import inspect
import json
import sys
import time
import traceback
from dataclasses import dataclass, field

import numpy as np

from . import engine as _engine
from . import gpu
from .config import ConfigError
from .engine import ContextOverflowError, DiffusionModelError, Engine, HostTimes, SnapshotError
from .gguf_file import GGUFError, GGUFFile
from .models.gemma import ModelLoadError
from .chat import ChatError
from .sampling import SamplerParams
from .sources import BlobSource, HTTPSource, LocalFile, OPFSSource, Source, SourceError

from . import media as _media
from .media import MediaError


class _Never(Exception):
    """Stands for an engine exception this build of the engine does not have."""


Cancelled = getattr(_engine, "Cancelled", _Never)  # a running image or audio encode was stopped (Engine.cancel())
NoTowerError = getattr(_engine, "NoTowerError", _Never)  # an image or clip for a model without that tower
VisionLoadError = getattr(_engine, "VisionLoadError", _Never)  # a tower (or the mmproj) cannot be used

IN_BROWSER = sys.platform == "emscripten"

__all__ = ["WebApp", "diffusion_event", "describe_error", "describe_speech_error", "describe_clone_error", "engine_messages", "MediaParts", "CountingSource",
           "MmprojError"]

_PARAM_FIELDS = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty", "repetition_last_n", "seed")
_PROGRESS_EVERY = 0.1  # seconds between progress events (the 270M model has ~240 tensors)
# Voice cloning: a clone_step call ends after this much work (at least one step), so that the worker's other
# messages wait little; the sentence "play current voice" says; the waveform's columns.
CLONE_STEP_SECONDS = 0.15
CLONE_SAMPLE_TEXT = "Hello! This is my new voice. How does it sound?"
CLONE_ENVELOPE_COLUMNS = 400


class CountingSource(Source):
    """Counts the bytes read from another source (the "fetched" figure of the load progress)."""

    def __init__(self, inner: Source):
        self.inner = inner
        self.name = inner.name
        self.size = inner.size
        self.fetched = 0
        self.reads = 0

    async def _read(self, offset: int, n: int):
        data = await self.inner.read(offset, n)
        self.fetched += n
        self.reads += 1
        return data

    async def close(self) -> None:
        await self.inner.close()


class ReportingSource(CountingSource):
    """A CountingSource that calls `on_read()` after every read: the speech model's load progress in bytes,
    whatever the loader reports itself."""

    def __init__(self, inner: Source, on_read):
        super().__init__(inner)
        self.on_read = on_read

    async def _read(self, offset: int, n: int):
        data = await super()._read(offset, n)
        self.on_read()
        return data


class MmprojError(Exception):
    """Something wrong with the projector (mmproj) given at load; `cause` says what."""

    def __init__(self, cause: BaseException):
        super().__init__(str(cause))
        self.cause = cause


def _sentence(text: str) -> str:
    """An engine's message as a sentence: capital first (unless it starts with a file name, which stays as it
    is), full stop last ("image is damaged" -> "The image is damaged.")."""
    text = " ".join(str(text).split())
    for word in ("image", "audio"):  # an unnamed part is named by its kind in the engine's sentences
        if text.startswith(word + " "):
            text = f"The {word} " + text[len(word) + 1:]
    first = text.split(" ", 1)[0]
    if text and text[0].islower() and "." not in first and "/" not in first:
        text = text[0].upper() + text[1:]
    if text and text[-1] not in ".!?":
        text += "."
    return text


def _describe_mmproj(e: BaseException) -> tuple[str, str]:
    """(kind, sentence) for a problem with the projector file (a llama.cpp mmproj: vision, audio or both)."""
    low = str(e).lower()
    if isinstance(e, SourceError):
        if "http 404" in low:
            return "mmproj", "The projector (mmproj) was not found at that address (HTTP 404). Check its URL."
        if "fetch failed" in low or "connection refused" in low or "timed out" in low:
            return "mmproj", "The projector (mmproj) could not be reached at that address."
        if "no such file" in low:
            return "mmproj", "The projector (mmproj) file was not found."
        return "mmproj", "The projector (mmproj) file could not be read."
    if isinstance(e, GGUFError):
        return "mmproj", "The projector (mmproj) file is damaged or is not a GGUF file."
    if isinstance(e, VisionLoadError):
        if "not a vision" in low:
            return "mmproj", ("That file is not a vision or audio projector (mmproj): it holds neither a vision "
                              "nor an audio tower.")
        if "another model" in low or "wide" in low:
            return "mmproj", "This projector (mmproj) belongs to another model: its output does not fit this model."
        return "mmproj", "This projector (mmproj) cannot be used with this model."
    if isinstance(e, gpu.DeviceLimitError):
        return "mmproj", ("This device's GPU cannot hold the projector (mmproj) next to the model. Try a "
                          "shorter context or a smaller model.")
    if isinstance(e, TypeError) and "mmproj" in low:
        return "mmproj", "This version of rullama cannot load a separate projector (mmproj)."
    return "mmproj", "The projector (mmproj) cannot be used with this model."


def _is_audio_tower(e: BaseException) -> bool:
    """Whether a tower error (a load problem, a GPU limit) is about the audio tower: its tensors are a.* and
    mm.a.* (both layouts); the vision tower's are v.* and mm.*."""
    text = str(e)
    return "audio" in text.lower() or any(q + "a." in text or q + "mm.a." in text for q in ("'", '"', " ", "("))


def describe_error(e: BaseException, during: str = "", media: str = "image") -> dict:
    """A plain sentence for the page, a kind for the page's logic, and the technical detail. `during` is
    what was being done ("load", "chat"): the same GPU limit means the model at load, a tower in a chat (a
    tower is built on its first image or clip). `media` is what the error is about when its text does not
    say ("image" or "audio"): the engine's media sentences name the file, and chat() knows which kind of part
    has that name; a tower's GPU or load error names its tensors (a.* for audio)."""
    detail = f"{type(e).__name__}: {e}"
    text = str(e)
    low = text.lower()
    if isinstance(e, MmprojError):
        kind, msg = _describe_mmproj(e.cause)
        detail = f"{type(e.cause).__name__}: {e.cause}"
    elif isinstance(e, MediaError) and media == "audio":
        kind, msg = "audio", _sentence(text) if text else "This audio clip cannot be read."
    elif isinstance(e, MediaError):
        kind, msg = "image", _sentence(text) if text else "This image cannot be read."
    elif isinstance(e, NoTowerError) and "audio" in low:
        kind, msg = "no-audio", _sentence(text)
    elif isinstance(e, NoTowerError):
        kind, msg = "no-vision", _sentence(text) if text else "This model has no vision tower, so it cannot read images."
    elif during == "chat" and isinstance(e, ValueError) and "positions per side" in low:
        # the tower's position table is shorter than the image's patch grid (a very long, thin image)
        kind, msg = "image", ("This image is too long and thin for this model's vision tower. Crop it, or use "
                              "another image.")
    elif isinstance(e, VisionLoadError) and during == "chat" and (media == "audio" or _is_audio_tower(e)):
        kind, msg = "audio-load", ("This model's audio tower cannot be used (a tensor is missing or of a type "
                                   "rullama does not read), so it cannot listen to audio.")
    elif isinstance(e, VisionLoadError):
        kind, msg = "vision-load", ("This model's vision tower cannot be used (a tensor is missing or of a type "
                                    "rullama does not read), so it cannot read images.")
    elif isinstance(e, ImportError) and getattr(e, "name", "") in ("PIL", "PIL.Image"):
        kind, msg = "image-decoder", ("This app cannot read images: its image decoder (Pillow) is not installed. "
                                      "Run tools/setup.sh, then reload the page.")
    elif (isinstance(e, ImportError) and (getattr(e, "name", "") or "").split(".")[0] == "scipy") or (
            isinstance(e, RuntimeError) and "scipy is not loaded" in low):
        kind, msg = "resampler", ("This app cannot resample audio: its resampler (scipy) is not installed. Run "
                                  "tools/setup.sh, then reload the page.")
    elif isinstance(e, gpu.DeviceLimitError) and during == "chat" and (media == "audio" or _is_audio_tower(e)):
        kind, msg = "audio-limit", ("This device's GPU cannot hold the audio tower next to the model, so it cannot "
                                    "listen to audio. Try a shorter context or a smaller model.")
    elif isinstance(e, gpu.DeviceLimitError) and during == "chat":
        kind, msg = "vision-limit", ("This device's GPU cannot hold the vision tower next to the model, so it cannot "
                                     "read images. Try fewer image tokens, a shorter context or a smaller model.")
    elif isinstance(e, gpu.NoAdapterError):
        kind, msg = "no-webgpu", ("This browser cannot run models: WebGPU is not available (no GPU adapter was "
                                  "found). Use a recent Chrome or Edge with WebGPU turned on.")
    elif isinstance(e, gpu.DeviceLimitError):
        kind, msg = "device-limit", ("This device's GPU cannot hold this model: it needs a larger buffer than the "
                                     "GPU allows. Try a smaller model or a shorter context.")
    elif isinstance(e, gpu.DeviceLostError):
        kind, msg = "device-lost", "The GPU stopped working (the device was lost). Reload the page to start again."
    elif isinstance(e, GGUFError):
        kind, msg = "corrupt", "This file is damaged or is not a GGUF model, so it cannot be loaded."
    elif isinstance(e, SourceError):
        if "http 404" in low:
            kind, msg = "not-found", "The model file was not found at that address (HTTP 404). Check the URL."
        elif "fetch failed" in low or "connection refused" in low or "timed out" in low:
            kind, msg = "unreachable", ("The model server could not be reached: nothing answered at that address, "
                                        "or it does not let this page read from it.")
        elif "ignored the range" in low:
            kind, msg = "no-range", ("That server sent the whole file instead of the part asked for: models are read "
                                     "in parts, so the server must support HTTP Range requests.")
        elif "http " in low:
            kind, msg = "source", "The model server refused the request (" + text.split(": ", 1)[-1] + ")."
        else:
            kind, msg = "source", "The model file could not be read."
    elif isinstance(e, (ConfigError, ModelLoadError)):
        kind, msg = "unsupported", "This model is not supported by rullama (only Gemma 3 and Gemma 4 text models are)."
    elif isinstance(e, ContextOverflowError):
        kind, msg = "context", ("The conversation no longer fits in the model's context. Start a new chat, or load "
                                "the model with a larger context.")
    elif isinstance(e, SnapshotError):
        kind, msg = "snapshot", "The saved state of this conversation belongs to another model; it will be re-read."
    elif isinstance(e, ChatError):
        kind, msg = "chat", "The conversation cannot be written in this model's chat format."
    elif isinstance(e, gpu.GPUError):
        kind, msg = "gpu", "The GPU reported an error."
    else:
        kind, msg = "internal", "Something went wrong inside the app."
    return {"kind": kind, "message": msg, "detail": detail}


def _chunk(opts: dict) -> int | None:
    """The page's prefill chunk setting; none: the model's default for the device."""
    v = opts.get("prefill_chunk")
    return int(v) if v else None


def _json(x) -> str:
    return json.dumps(x, separators=(",", ":"))


def _fail(kind: str, message: str, detail: str = "") -> str:
    return _json({"ok": False, "error": {"kind": kind, "message": message, "detail": detail}})


def _loads(s):
    if s is None:
        return {}
    if not isinstance(s, str):  # a JS string arrives as str; anything else is a caller bug
        s = str(s)
    return json.loads(s) if s else {}


def _media_bytes(x) -> bytes:
    """One attachment's bytes: a JS Uint8Array / ArrayBuffer (its JsProxy), or anything bytes-like."""
    if hasattr(x, "to_bytes"):
        return x.to_bytes()
    if hasattr(x, "to_py"):
        x = x.to_py()
    return bytes(x)


_image_bytes = _media_bytes  # the name before audio


@dataclass
class MediaParts:
    """What engine_messages found: image parts, audio clips (a clip over 30 s is several blocks for the
    tower), the clips sent as WAV files (decoded and resampled here; the others arrive as 16 kHz samples),
    and the names of the parts of each kind, which the engine's sentences about a file begin with."""

    image: int = 0
    audio: int = 0
    wav: int = 0
    names: dict = field(default_factory=lambda: {"image": [], "audio": []})

    def kind_of(self, e: BaseException) -> str:
        """Which kind of part an error is about: the kind of the part whose name begins its message (the
        longest such name), else audio when the messages hold only audio, else image."""
        text = str(e)
        best, kind = -1, "audio" if self.audio and not self.image else "image"
        for k, names in self.names.items():
            for n in names:
                if len(n) > best and (text.startswith(n + " ") or text.startswith(n + ":")):
                    best, kind = len(n), k
        return kind


def engine_messages(messages: list, media=()) -> tuple[list, MediaParts]:
    """The page's messages as the engine takes them, and what media parts they hold (MediaParts).

    A content is a str, or a list of parts {"type": "text", "text": str}, {"type": "image", "ref": k,
    "name": str} and {"type": "audio", "ref": k, "name": str, "format": "wav" | "f32"}, where `ref` indexes
    `media` (the bytes, sent beside the JSON). An image part becomes {"type": "image", "image": bytes,
    "name": str}; an audio part {"type": "audio", "audio": ..., "name": str} with the WAV file's bytes, or
    for "f32" a float32 numpy array of the little-endian mono 16 kHz samples (the page decoded the file or
    recorded it). A message whose parts are text only stays a list."""
    data = [_media_bytes(x) for x in (media or ())]
    out, found = [], MediaParts()
    for m in messages:
        if not isinstance(m, dict) or "role" not in m:
            raise ValueError(f"a message must be an object with a role, not {m!r:.80}")
        content = m.get("content", "")
        if isinstance(content, list):
            parts = []
            for p in content:
                kind = p.get("type") if isinstance(p, dict) else None
                if kind == "text":
                    parts.append({"type": "text", "text": str(p.get("text", ""))})
                elif kind in ("image", "audio"):
                    ref = p.get("ref")
                    if not isinstance(ref, int) or isinstance(ref, bool) or not 0 <= ref < len(data):
                        raise ValueError(f"{kind} part refers to attachment {ref!r}; {len(data)} were sent")
                    value = data[ref]
                    if kind == "audio":
                        fmt = p.get("format", "wav")
                        if fmt == "f32":
                            if len(value) % 4:
                                raise ValueError(f"an f32 audio part holds {len(value)} bytes, not whole float32 samples")
                            value = np.frombuffer(value, "<f4").astype(np.float32)
                        elif fmt == "wav":
                            found.wav += 1
                        else:
                            raise ValueError(f"unknown audio format {fmt!r}")
                    part = {"type": kind, kind: value}
                    if p.get("name"):
                        part["name"] = str(p["name"])
                    parts.append(part)
                    setattr(found, kind, getattr(found, kind) + 1)
                    found.names[kind].append(part.get("name", kind))
                else:
                    raise ValueError(f"unknown message part {p!r:.80}")
            content = parts
        elif content is None:
            content = ""
        out.append({"role": str(m["role"]), "content": content})
    return out, found


async def _load_resampler() -> None:
    """scipy, which resamples WAV files that are not at 16 kHz (media.load_resampler: a no-op natively and
    once loaded; web/worker.js loads it first, when a WAV file is attached). A failure is the resampler's."""
    try:
        await _media.load_resampler()
    except ImportError:
        raise
    except Exception as e:  # noqa: BLE001 - pyodide's loadPackage fails with a JS error
        raise ImportError(f"scipy could not be loaded: {e}", name="scipy") from e


def _accepts(fn, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _buffers_of(root) -> list:
    """The GPU buffers reachable from `root` through rullama_py objects, dicts, lists and tuples (weights,
    KV cache, activations, sampler state, staging buffers), without descending into the shared Device or
    the file's metadata."""
    from ._backend import api
    from .gguf_file import GGUFFile
    from .tokenizer import Tokenizer

    skip = (gpu.Device, GGUFFile, Tokenizer, Source, str, bytes, int, float)
    seen, stack, out = set(), [root], []
    while stack:
        x = stack.pop()
        if id(x) in seen or isinstance(x, skip):
            continue
        seen.add(id(x))
        if isinstance(x, api.GPUBuffer):
            out.append(x)
        elif isinstance(x, dict):
            stack.extend(x.values())
        elif isinstance(x, (list, tuple)):
            stack.extend(x)
        elif type(x).__module__.startswith("rullama_py") and hasattr(x, "__dict__"):
            stack.extend(vars(x).values())
    return out


def diffusion_event(s, prev_argmax, eos_ids, seconds: float) -> dict:
    """The "diffusion" event of one denoising step (diffusion.DiffusionStep), small enough to post every step:
    the canvas as text pieces and masks, never logits.

    {block (canvas index from 0), step (1-based in this canvas), steps (the cap), temperature, mean_entropy,
    n_accepted, canvas_length, stable (the whole argmax canvas as the step before), converged, block_done, done,
    seconds (since the first step), ids (the argmax canvas), pieces (its tokens as text), accepted (1 where the
    step kept its draw), settled (1 where the argmax is the previous step's: all 0 on a canvas's first step),
    end (the first end-of-sequence position, or null), text (on block_done only: every finished canvas's text)}"""
    ids = [int(x) for x in s.argmax]
    settled = ([0] * len(ids) if prev_argmax is None
               else [int(a == b) for a, b in zip(ids, (int(x) for x in prev_argmax))])
    ev = {"block": s.block, "step": s.step, "steps": s.steps, "temperature": float(s.temperature),
          "mean_entropy": float(s.mean_entropy), "n_accepted": int(s.n_accepted), "canvas_length": len(ids),
          "stable": bool(s.stable), "converged": bool(s.converged), "block_done": bool(s.block_done),
          "done": bool(s.done), "seconds": seconds, "ids": ids, "pieces": list(s.pieces),
          "accepted": [int(bool(a)) for a in s.accepted], "settled": settled,
          "end": next((i for i, x in enumerate(ids) if x in eos_ids), None)}
    if s.block_done:
        ev["text"] = s.text
    return ev


# -- speech ---------------------------------------------------------------------------------------------------

def _speech_request_errors() -> tuple:
    """What a bad speech request raises (speaker.SpeakerError: voice, voicepack, speed, too many phonemes;
    g2p.G2PError: nothing speakable, unsupported language, espeak missing), imported late: the chat app does
    not need the speech modules."""
    from . import speaker

    out = [speaker.SpeakerError]
    try:
        from . import g2p

        out += [v for v in vars(g2p).values() if isinstance(v, type) and issubclass(v, Exception)
                and v.__module__ == g2p.__name__]
    except ImportError:
        pass
    return tuple(out)


def _speech_file_errors() -> tuple:
    """What a damaged or foreign Kokoro file raises while it loads: the GGUF reader's and the Kokoro reader's
    own errors, and the lookup errors of a file whose tensors or keys are missing or of the wrong shape."""
    out = [GGUFError, KeyError, ValueError, IndexError]
    try:
        from .models import kokoro_gguf

        out += [v for v in vars(kokoro_gguf).values() if isinstance(v, type) and issubclass(v, Exception)
                and v.__module__ == kokoro_gguf.__name__]
    except ImportError:
        pass
    return tuple(out)


class NotKokoroError(ValueError):
    """The file opened as the speech model is a GGUF of another architecture."""


def describe_speech_error(e: BaseException, during: str = "speak") -> dict:
    """describe_error for speech: kind "speech" for the request (text, voice, voicepack, speed), "speech-load"
    for the Kokoro file (`during` "load"); a GPU that is missing or lost is said as for the chat model."""
    detail = f"{type(e).__name__}: {e}"
    low = str(e).lower()
    if isinstance(e, (gpu.NoAdapterError, gpu.DeviceLostError)):
        return describe_error(e, during)
    if during == "load":
        if isinstance(e, NotKokoroError):
            msg = _sentence(str(e))
        elif isinstance(e, SourceError) and "http 404" in low:
            msg = "The speech model (Kokoro) was not found at that address (HTTP 404)."
        elif isinstance(e, SourceError) and ("fetch failed" in low or "connection refused" in low or "timed out" in low):
            msg = "The speech model (Kokoro) could not be reached: nothing answered at that address."
        elif isinstance(e, SourceError) and "no such file" in low:
            msg = "The speech model (Kokoro) file was not found."
        elif isinstance(e, SourceError):
            msg = "The speech model (Kokoro) file could not be read."
        elif isinstance(e, gpu.DeviceLimitError):
            msg = ("This device's GPU cannot hold the speech model next to the chat model. Try a shorter context "
                   "or a smaller chat model.")
        elif isinstance(e, _speech_file_errors()):
            msg = "The speech model file (Kokoro) is damaged or is not a Kokoro model, so it cannot be loaded."
        else:
            return describe_error(e, during)
        return {"kind": "speech-load", "message": msg, "detail": detail}
    if isinstance(e, _speech_request_errors()):
        text = " ".join(str(e).split())
        if "_" in text.split(" ", 1)[0]:  # it starts with a voice's name (af_mine: ...): kept as it is spelt
            msg = text if text.endswith((".", "!", "?")) else text + "."
        else:
            msg = _sentence(text) if text else "This text cannot be read aloud."
        return {"kind": "speech", "message": msg, "detail": detail}
    return describe_error(e, during)


def _speech_fail(e: BaseException, during: str = "speak") -> str:
    return _json({"ok": False, "error": describe_speech_error(e, during), "trace": traceback.format_exc()[-3000:]})


def _to_page(data: bytes):
    """Bytes for the page: a Uint8Array in the browser (copied out of Python's memory: the worker transfers
    its buffer on), the bytes themselves natively."""
    if IN_BROWSER:
        from pyodide.ffi import to_js  # type: ignore

        return to_js(memoryview(data))
    return data


def _header_voices(gf: GGUFFile) -> list[str]:
    """A Kokoro file's voice names from its header (kokoro.voices, else the kokoro.voice_tensors.* names)."""
    names = gf.get("kokoro.voices")
    if not names:
        prefix = "kokoro.voice_tensors."
        names = [n[len(prefix):] for n in gf.tensors if n.startswith(prefix)]
    return sorted(str(n) for n in names)


def _voice_lang(voice: str) -> str:
    """The language to read in with `voice`: Kokoro's from the name's prefix (af_heart: American English,
    bf_emma: British, ...); American English for a voice added under another name."""
    from . import g2p

    try:
        return g2p.lang_for_voice(voice)
    except g2p.G2PError:
        return "en-us"


def _unreadable(voices) -> list[str]:
    """The voices whose language espeak-ng cannot read in this runtime (in the browser npm phonemizer has English
    only; Kokoro's Japanese and Chinese voices need another G2P everywhere): the picker shows them disabled."""
    from . import g2p

    ok = set(g2p.supported_languages())
    return [v for v in voices if _voice_lang(v) not in ok]


@dataclass
class SpeechRun:
    """One speak request in progress: the speaker's sentence iterator and what has been produced so far."""

    run: int
    agen: object
    index: int = 0
    samples: int = 0
    synth_seconds: float = 0.0
    stopped: bool = False


class WebApp:
    """One loaded model and its conversation state, driven by the worker; and the speech model beside it."""

    def __init__(self, emit=None):
        self._emit = emit
        self.engine: Engine | None = None
        self.diffusion = None  # diffusion.Diffusion when the loaded model is a DiffusionGemma (engine is None then)
        self._diffusing = False
        self.device: gpu.Device | None = None
        self.source: CountingSource | None = None
        self.model_name = ""
        self.mmproj_name = ""
        self.busy = False
        self._stop = False
        self._chatting = False
        self.last_stats: dict = {}
        self.speaker = None  # speaker.Speaker once speech_load() succeeded
        self.speech_info: dict = {}
        self._speech: SpeechRun | None = None
        self._speech_runs = 0
        self._speech_loading = False
        self._clone = None  # voice.VoiceTrainer of the voice-clone panel (one at a time)
        self._clone_target = None  # media.VoiceTarget the next clone_start trains towards

    def emit(self, event: str, payload: dict, data=None) -> None:
        """Post an event to the page; `data` (bytes) goes beside the JSON, as the event's binary payload."""
        if self._emit is not None:
            if data is None:
                self._emit(event, _json(payload))
            else:
                self._emit(event, _json(payload), _to_page(data))

    # -- GPU memory ----------------------------------------------------------------------------------------
    def _memory(self) -> dict:
        """The device's GPU memory (see gpu.Device.memory) and the towers loaded now."""
        dev = getattr(self.engine, "device", None) or self.device
        mem = dev.memory() if dev is not None else {"allocated_bytes": 0, "peak_bytes": 0, "buffers": 0}
        return {**mem, "towers": list(getattr(self.engine, "towers_loaded", []))}

    def _memory_changed(self) -> dict:
        mem = self._memory()
        self.emit("memory", mem)
        return mem

    def memory(self) -> str:
        """{ok, allocated_bytes, peak_bytes, buffers, towers}: the GPU memory the app's buffers hold."""
        return _json({"ok": True, **self._memory()})

    def release_towers(self) -> str:
        """Free the chat model's towers now (the "release towers" setting, ticked); the next image or clip loads
        them again. Returns memory()."""
        if self.busy:
            return _fail("busy", "The model is busy: stop the reply first.")
        if self.engine is not None:
            self.engine.release_towers()
        return _json({"ok": True, **self._memory_changed()})

    # -- loading -------------------------------------------------------------------------------------------
    async def _open_source(self, kind: str, target) -> Source:
        if kind == "url":
            return await HTTPSource.open(str(target))
        if kind == "file":  # a browser File or Blob (picker, drag and drop)
            return BlobSource(target)
        if kind == "opfs":  # a path in the origin's private file system, e.g. "models/abc.gguf"
            if not isinstance(target, str):
                return await OPFSSource.open(target)
            return await OPFSSource.open_path(target)
        if kind == "path":  # native runs and tests
            return LocalFile(str(target))
        raise ValueError(f"unknown model source kind {kind!r}")

    async def _open_device(self, opts: dict) -> gpu.Device:
        """The GPU device for the next model. One device serves every load of the page, so a second model
        (or the same one again) reuses the compiled kernels: on a software GPU compiling them takes minutes.
        The previous model's buffers are destroyed first, so its memory is free before the next upload."""
        cap = opts.get("max_buffer_size")
        if cap:
            # Testing knob: pretend the GPU allows at most this many bytes per buffer (the page passes
            # ?max_buffer=N), to show the "model too large for this device" path on any machine. A device
            # of its own, so the real limits of the shared one stay untouched.
            dev = await gpu.Device.open()
            for k in ("max-buffer-size", "max-storage-buffer-binding-size"):
                dev.limits[k] = min(dev.limits[k], int(cap))
            return dev
        if self.device is None:
            self.device = await gpu.Device.open()
        return self.device

    def _release(self) -> None:
        """Forget the loaded model (a chat engine or a diffusion model) and destroy its GPU buffers."""
        eng, self.engine = self.engine, None
        diff, self.diffusion = self.diffusion, None
        if diff is not None:
            self._destroy_buffers(diff)
        if eng is None:
            return
        src = getattr(getattr(getattr(eng, "model", None), "gguf", None), "source", None)
        if src is not None:  # an OPFS copy's sync handle goes, so that the copy can be deleted or replaced
            import asyncio

            asyncio.ensure_future(src.close())
        release = getattr(eng, "release_towers", None)
        if release is not None:
            try:
                release()
            except Exception:  # noqa: BLE001 - freeing is best effort (a lost device frees everything anyway)
                pass
        self._destroy_buffers(eng)

    @staticmethod
    def _destroy_buffers(root) -> None:
        """Destroy the GPU buffers of a model being forgotten (an Engine or a Diffusion)."""
        for buf in _buffers_of(root):
            try:
                buf.destroy()
            except Exception:  # noqa: BLE001 - the device may be lost already: nothing left to free
                pass
        # Bind groups of the old buffers would go with the buffers' wrappers (gpu.Device.bind_group); drop
        # them now so that the GPU memory they reference is freed before the next model uploads.
        root.device._bind_groups.clear()

    async def load(self, kind: str, target, options=None, mmproj_kind=None, mmproj_target=None) -> str:
        """Open the model, upload its weights (emitting "progress") and get ready to chat. `mmproj_kind` and
        `mmproj_target` name a vision projector (a llama.cpp mmproj GGUF) the same way as the model."""
        if self.busy:
            return _fail("busy", "The model is busy: stop the reply first.")
        self.busy = True
        try:
            mm = (str(mmproj_kind), mmproj_target) if mmproj_kind and mmproj_target is not None else None
            return _json({"ok": True, **await self._load(str(kind), target, _loads(options), mm)})
        except Exception as e:  # noqa: BLE001 - every failure becomes a sentence for the page
            self._release()
            self._memory_changed()
            return _json({"ok": False, "error": describe_error(e, "load"), "trace": traceback.format_exc()[-3000:]})
        finally:
            self.busy = False

    async def _open_mmproj(self, kind: str, target) -> CountingSource:
        """The vision projector's source, its header checked now: a damaged or missing file is reported as the
        projector's (MmprojError), not as the model's."""
        self.emit("progress", {"phase": "open", "text": "Opening the vision projector (mmproj)"})
        if not _accepts(Engine.load, "mmproj"):
            raise MmprojError(TypeError("this Engine.load() takes no mmproj"))
        try:
            msrc = CountingSource(await self._open_source(kind, target))
            await GGUFFile.open(msrc)
        except Exception as e:  # noqa: BLE001
            raise MmprojError(e) from e
        return msrc

    async def _load(self, kind: str, target, opts: dict, mmproj=None) -> dict:
        self._release()
        t0 = time.perf_counter()
        self.emit("progress", {"phase": "open", "text": "Opening the model file"})
        inner = await self._open_source(kind, target)
        src = self.source = CountingSource(inner)
        self.model_name = opts.get("name") or inner.name
        msrc = await self._open_mmproj(*mmproj) if mmproj is not None else None
        self.mmproj_name = (opts.get("mmproj_name") or msrc.name) if msrc is not None else ""
        dev = await self._open_device(opts)
        dev.reset_peak()  # the peak reported from now on is this model's (with what else shares the device)
        state = {"tensors": 0, "last": 0.0, "t_up": None, "t_done": None}

        def progress(done: int, total: int, name: str) -> None:
            now = time.perf_counter()
            if state["t_up"] is None:
                state["t_up"] = now  # the header is parsed: weight transfer starts here
            if name != state.get("name"):  # a table read in pieces counts once
                state["tensors"] += 1
                state["name"] = name
            if done >= total:
                state["t_done"] = now  # all weights are on the GPU: kernel compilation and recording follow
            if now - state["last"] < _PROGRESS_EVERY and done < total:
                return
            state["last"] = now
            elapsed = now - state["t_up"]
            left = (total - done) * elapsed / done if done and elapsed > 0 else None
            self.emit("progress", {"phase": "weights", "fetched": src.fetched, "file_size": src.size,
                                   "done": done, "total": total, "tensors": state["tensors"], "tensor": name,
                                   "seconds_left": left,
                                   "text": "Compiling GPU kernels" if done >= total else "Uploading weights"})

        self.emit("progress", {"phase": "header", "text": "Reading the model header"})
        params = SamplerParams(**self._params(opts.get("params") or {}))
        extra = {"mmproj": msrc} if msrc is not None else {}
        if opts.get("text_only"):
            extra["text_only"] = True
        try:
            eng = await Engine.load(src, max_context=int(opts.get("max_context", 2048)),
                                    prefill_chunk=_chunk(opts), device=dev, params=params,
                                    release_towers_after_turn=bool(opts.get("release_towers")),
                                    ple_on_gpu=bool(opts.get("ple_on_gpu")),
                                    kv_cache_type=str(opts.get("kv_cache_type") or "f16"), progress=progress, **extra)
        except VisionLoadError as e:
            if msrc is not None:
                raise MmprojError(e) from e
            raise
        except DiffusionModelError:  # a DiffusionGemma (seen in its header): loaded for the diffusion mode
            if msrc is not None:
                raise MmprojError(ValueError("a diffusion model reads text only: it takes no projector")) from None
            info = await self._load_diffusion(src, opts, dev, progress)
            info.update(load_seconds=time.perf_counter() - t0,
                        seconds={"header": (state["t_up"] or t0) - t0,
                                 "weights": (state["t_done"] or t0) - (state["t_up"] or t0),
                                 "kernels": time.perf_counter() - (state["t_done"] or t0)},
                        tensors=state["tensors"])
            self.emit("progress", {"phase": "ready", "text": "Ready", "fetched": src.fetched,
                                   "file_size": src.size, "tensors": state["tensors"]})
            info["gpu_memory"] = self._memory_changed()
            return info
        self.engine = eng
        cfg = eng.config
        info = {
            "name": self.model_name,
            "size": src.size,
            "fetched": src.fetched + (msrc.fetched if msrc is not None else 0),
            "mmproj": self.mmproj_name or None,
            "image_tokens": getattr(eng, "image_tokens", None),
            "reads": src.reads,
            "tensors": state["tensors"],
            "arch": getattr(cfg, "arch", ""),
            "vocab_size": cfg.vocab_size,
            "n_layers": cfg.n_layers,
            "max_context": eng.max_context,
            "has_vision": eng.has_vision,
            "has_audio": eng.has_audio,
            "text_only": eng.text_only,
            "towers_left_out": list(eng.towers_left_out),  # loaded text-only: the towers the file has
            "release_towers": eng.release_towers_after_turn,
            "ple_on_gpu": getattr(eng.model, "ple_table", None) is not None,  # asked for, and the model has one
            "kv_cache_type": eng.model.kv_cache_type,
            "kv_cache_bytes": eng.model.kv_cache_bytes,
            "identity": eng.layout_hash().hex(),
            "dispatches_per_token": len(eng.model.decode.graph) + len(eng.sample_graph),
            "diffusion": None,
            "adapter": dev.info,
            "load_seconds": time.perf_counter() - t0,
            # where the load time went: opening + header, weights (read + upload), kernels (compile + record)
            "seconds": {"header": (state["t_up"] or t0) - t0,
                        "weights": (state["t_done"] or t0) - (state["t_up"] or t0),
                        "kernels": time.perf_counter() - (state["t_done"] or t0)},
        }
        self.emit("progress", {"phase": "ready", "text": "Ready", "fetched": src.fetched, "file_size": src.size,
                               "tensors": state["tensors"]})
        info["gpu_memory"] = self._memory_changed()
        return info

    # -- chatting ------------------------------------------------------------------------------------------
    @staticmethod
    def _params(p: dict) -> dict:
        out = {}
        for k in _PARAM_FIELDS:
            v = p.get(k)
            if v is None or v == "":
                continue
            out[k] = int(v) if k in ("top_k", "seed", "repetition_last_n") else float(v)
        return out

    def context_used(self) -> int:
        return len(self.engine.tokens) if self.engine is not None else 0

    async def chat(self, messages, request=None, media=None) -> str:
        """Stream the reply to `messages` (JSON list of {role, content}, a content being a str or a list of
        parts, see engine_messages); `media` holds the bytes the image and audio parts refer to; `request`
        holds the sampling settings, max_tokens and image_tokens. Returns the final stats; finish_reason
        "stopped" after stop(), also when it came while the media were read (then no token was generated)."""
        if self.engine is None and self.diffusion is not None:
            return _fail("diffusion-model", f"{self.model_name} is a diffusion model: it writes a whole canvas at a "
                                            "time, not token by token. Switch the mode to Diffusion to run it.")
        if self.engine is None:
            return _fail("no-model", "Load a model first.")
        if self.busy:
            return _fail("busy", "The model is busy with another request.")
        self.busy = True
        self._stop = False
        self._chatting = True
        eng = self.engine
        found = MediaParts()
        read = {k: {"n": 0, "t0": None, "t1": None} for k in ("image", "audio")}
        try:
            msgs, found = engine_messages(_loads(messages), media)
            req = _loads(request)
            for kind, n in (("image", found.image), ("audio", found.audio)):
                if n and kind in getattr(eng, "towers_left_out", ()):
                    tower, does = _engine.TOWER_WORDS[kind]
                    what = "images" if kind == "image" else "audio"
                    return _fail("text-only", f"This model was loaded text-only, without its {tower}, so it cannot "
                                 f"{does}. Load it again with \"Text only\" unticked to use the {what} of this "
                                 "conversation, or start a new chat.")
            if req.get("release_towers") is not None:
                eng.release_towers_after_turn = bool(req["release_towers"])
            if found.image and not eng.has_vision:
                return _fail("no-vision", "This model has no vision tower, so it cannot read the images of this "
                             "conversation. Load a model that reads images (or add its projector), or start "
                             "a new chat.")
            # A model without an audio tower: the engine says so (NoTowerError) before anything changes.
            if found.wav and getattr(eng, "has_audio", False):
                await _load_resampler()
            eng.set_params(SamplerParams(**self._params(req)))
            if req.get("image_tokens") and hasattr(eng, "image_tokens"):
                eng.image_tokens = int(req["image_tokens"])
            eng.host_times = HostTimes()
            eng.stats = type(eng.stats)()  # a reply stopped while its media are read has no prompt yet
            max_tokens = int(req.get("max_tokens", 512))
            n, text = 0, []
            stopped = self._stop  # stop() while the resampler loaded: the engine never starts

            def on_media(ev: dict) -> None:
                now = time.perf_counter()
                r = read.get(ev.get("stage"))
                if r is not None:
                    r["t0"] = r["t0"] or now
                    r["t1"] = now
                    if ev.get("layers") and ev.get("layer") == ev.get("layers"):
                        r["n"] += 1  # an image, or a 30 s audio block, went through its tower
                self.emit("media", {k: ev.get(k) for k in ("stage", "index", "count", "layer", "layers")})

            media_parts = found.image or found.audio
            extra = {"progress": on_media} if media_parts and _accepts(eng.chat, "progress") else {}
            agen = eng.chat(msgs, max_tokens=max_tokens, **extra)
            try:
                while not stopped:
                    try:
                        tok = await agen.__anext__()
                    except StopAsyncIteration:
                        break
                    if tok.id >= 0:
                        n += 1
                    text.append(tok.text)
                    st = eng.stats
                    self.emit("token", {"id": tok.id, "text": tok.text, "n": n, "context": self.context_used(),
                                        "max_context": eng.max_context, "prompt_tokens": st.prompt_tokens,
                                        "prompt_tps": st.prompt_tps, "generate_tps": st.generate_tps})
                    stopped = self._stop
            except Cancelled:
                stopped = True  # stop() came while the media were read: the context keeps what it had
            finally:
                await agen.aclose()
            self.last_stats = self._stats(stopped)
            if read["image"]["t0"] is not None:
                self.last_stats.update(images_read=read["image"]["n"],
                                       image_seconds=read["image"]["t1"] - read["image"]["t0"])
            if read["audio"]["t0"] is not None:
                self.last_stats.update(audio_read=read["audio"]["n"],
                                       audio_seconds=read["audio"]["t1"] - read["audio"]["t0"])
            self.last_stats["gpu_memory"] = self._memory_changed()
            return _json({"ok": True, "text": "".join(text), **self.last_stats})
        except Exception as e:  # noqa: BLE001
            return _json({"ok": False, "error": describe_error(e, "chat", found.kind_of(e)),
                          "trace": traceback.format_exc()[-3000:], **self._stats(False),
                          "gpu_memory": self._memory_changed()})
        finally:
            self.busy = False
            self._stop = False
            self._chatting = False

    def _stats(self, stopped: bool) -> dict:
        eng = self.engine
        if eng is None:
            return {}
        st = eng.stats
        return {"prompt_tokens": st.prompt_tokens, "prompt_seconds": st.prompt_seconds, "prompt_tps": st.prompt_tps,
                "generated_tokens": st.generated_tokens, "generate_seconds": st.generate_seconds,
                "generate_tps": st.generate_tps,
                "finish_reason": "stopped" if stopped or st.finish_reason == "cancelled" else st.finish_reason,
                "context": self.context_used(), "max_context": eng.max_context, "host": eng.host_times.per_step_ms()}

    def stop(self) -> None:
        """Ask the running chat() to end: after the current token, or between a tower's layers while the
        message's images or audio are read (engine.cancel())."""
        self._stop = True
        if self._diffusing and self.diffusion is not None:
            self.diffusion.cancel()
        if self._chatting and self.engine is not None:
            cancel = getattr(self.engine, "cancel", None)
            if cancel is not None:
                cancel()

    def new_chat(self) -> str:
        if self.busy:
            return _fail("busy", "Stop the reply first.")
        if self.engine is not None:
            self.engine.reset()
        return _json({"ok": True, "context": 0})

    def stats(self) -> str:
        model = self.engine if self.engine is not None else self.diffusion
        return _json({"ok": True, "loaded": model is not None, "diffusion": self.diffusion is not None,
                      "busy": self.busy, **self.last_stats, "context": self.context_used(),
                      "max_context": model.max_context if model is not None else 0, "gpu_memory": self._memory()})

    # -- diffusion (DiffusionGemma: a whole canvas at a time, sharpening step by step) ---------------------------
    async def _load_diffusion(self, src: Source, opts: dict, dev: gpu.Device, progress) -> dict:
        """Load a DiffusionGemma for diffuse() (load() found one in the file's header); what load() returns."""
        from .diffusion import Diffusion

        diff = await Diffusion.load(src, max_context=int(opts.get("max_context", 2048)),
                                    prefill_chunk=_chunk(opts), device=dev, progress=progress)
        self.diffusion = diff
        cfg, d = diff.config, diff.config.diffusion
        return {
            "name": self.model_name,
            "size": src.size,
            "fetched": src.fetched,
            "mmproj": None,
            "image_tokens": None,
            "reads": src.reads,
            "arch": cfg.arch,
            "vocab_size": cfg.vocab_size,
            "n_layers": cfg.n_layers,
            "max_context": diff.max_context,
            "has_vision": False,
            "has_audio": False,
            "identity": "",  # nothing to snapshot: a diffusion reply reads its whole conversation again
            "dispatches_per_token": None,
            # the sampler's defaults, which the page's empty settings stand for
            "diffusion": {"canvas_length": diff.canvas_length, "steps": d.max_steps, "t_min": d.t_min,
                          "t_max": d.t_max, "entropy_bound": d.entropy_bound},
            "adapter": dev.info,
        }

    def _diffusion_params(self, req: dict):
        """diffusion.DiffusionParams from the page's request: steps, t_min, t_max, entropy_bound (empty: the
        model's), max_tokens, seed. A value that is not a number raises DiffusionError naming it."""
        from .diffusion import DiffusionError, DiffusionParams

        def number(key: str, kind, what: str, default=None):
            v = req.get(key)
            if v is None or v == "":
                return default
            try:
                x = float(v)
                if kind is int and x != int(x):
                    raise ValueError
                return kind(x)
            except (TypeError, ValueError, OverflowError):
                raise DiffusionError(f"the {what} must be a {'whole ' if kind is int else ''}number, not {v!r}") from None

        return DiffusionParams(steps=number("steps", int, "number of steps"), t_min=number("t_min", float, "t_min"),
                               t_max=number("t_max", float, "t_max"),
                               entropy_bound=number("entropy_bound", float, "entropy bound"),
                               max_new_tokens=number("max_tokens", int, "max tokens", 256),
                               seed=number("seed", int, "seed", 0))

    async def diffuse(self, messages, request=None, media=None) -> str:
        """Write the reply to `messages` (as for chat()) with the loaded diffusion model, a canvas at a time: one
        "diffusion" event per denoising step (see diffusion_event), Stop ending it after the step running (what
        the canvas shows then is kept). `request`: steps, t_min, t_max, entropy_bound (absent: the model's
        defaults), max_tokens (default 256), seed (default 0). Returns {ok, text, tokens, forwards,
        tokens_per_forward, steps, canvases, seconds, finish_reason: "stop" (end of sequence) | "length" |
        "context" | "stopped"}."""
        from .diffusion import DiffusionError

        diff = self.diffusion
        if diff is None and self.engine is not None:
            return _fail("not-diffusion", f"{self.model_name} is not a diffusion model: it writes token by token, "
                                          "so it cannot run in diffusion mode. Switch the mode to Chat.")
        if diff is None:
            return _fail("no-model", "Load a model first.")
        if self.busy:
            return _fail("busy", "The model is busy with another request.")
        self.busy = True
        self._stop = False
        self._diffusing = True
        try:
            msgs, found = engine_messages(_loads(messages), media)
            if found.image or found.audio:
                return _fail("diffusion-media", "The diffusion model reads text only, and this conversation has "
                                                "images or audio. Take them out of the message, or start a new chat.")
            params = self._diffusion_params(_loads(request))
            await diff.start(msgs, params)
            if self._stop:  # Stop came while the prompt was read: the canvas shows its first step, then ends
                diff.cancel()
            prev, s, steps, t0 = None, None, 0, time.perf_counter()
            while s is None or not s.done:
                s = await diff.step()
                steps += 1
                self.emit("diffusion", diffusion_event(s, prev, diff.eos_ids, time.perf_counter() - t0))
                prev = None if s.block_done else s.argmax
            st = diff.stats
            if self._stop:
                why = "stopped"
            elif any(int(x) in diff.eos_ids for x in s.argmax):
                why = "stop"
            elif st["tokens"] >= diff.params.max_new_tokens:
                why = "length"
            else:
                why = "context"
            self.last_stats = {"tokens": st["tokens"], "forwards": st["forwards"],
                               "tokens_per_forward": st["tokens_per_forward"], "seconds": st["seconds"],
                               "steps": steps, "canvases": s.block + 1, "finish_reason": why,
                               "prompt_tokens": getattr(diff, "prompt_len", None), "max_context": diff.max_context}
            return _json({"ok": True, "text": diff.text, "ids": [int(x) for x in diff.output], **self.last_stats})
        except DiffusionError as e:
            return _json({"ok": False, "error": {"kind": "diffusion", "message": _sentence(str(e)),
                                                 "detail": f"{type(e).__name__}: {e}"}})
        except Exception as e:  # noqa: BLE001 - every failure becomes a sentence for the page
            return _json({"ok": False, "error": describe_error(e, "chat"), "trace": traceback.format_exc()[-3000:]})
        finally:
            self.busy = False
            self._stop = False
            self._diffusing = False

    # -- snapshots -----------------------------------------------------------------------------------------
    @property
    def identity(self) -> str:
        """What a snapshot must match (model configuration, weights fingerprint, context size), as hex."""
        return self.engine.layout_hash().hex() if self.engine is not None else ""

    async def save_state(self):
        """The engine state as bytes (a Uint8Array in the browser), or None without a model."""
        if self.engine is None or self.busy:
            return None
        self.busy = True
        try:
            blob = await self.engine.save_state()
        finally:
            self.busy = False
        if IN_BROWSER:
            from pyodide.ffi import to_js  # type: ignore

            return to_js(memoryview(blob))
        return blob

    async def restore_state(self, data) -> str:
        """Restore save_state's bytes. A snapshot of another model is refused and nothing changes."""
        if self.engine is None:
            return _fail("no-model", "Load a model first.")
        if self.busy:
            return _fail("busy", "The model is busy.")
        if hasattr(data, "to_bytes"):  # a JS Uint8Array
            data = data.to_bytes()
        self.busy = True
        try:
            await self.engine.restore_state(bytes(data))
            return _json({"ok": True, "context": self.context_used()})
        except Exception as e:  # noqa: BLE001
            return _json({"ok": False, "error": describe_error(e)})
        finally:
            self.busy = False

    # -- speech (Kokoro-82M) -------------------------------------------------------------------------------------
    def _speech_device_owner(self):
        """The device the speech model goes on: the chat model's when one is loaded, else the app's device
        (opened here if no model was loaded yet; the chat model loaded later then joins it)."""
        if self.engine is not None:
            return self.engine.device
        return self.device

    async def speech_load(self, kind: str, target, options=None) -> str:
        """Open the Kokoro GGUF (kind "url", "file", "opfs" or "path", as for load()), upload it to the chat
        model's GPU device (emitting "speech-progress") and keep it for speak(). The speaker loaded before stays
        until the new one is ready: a damaged file changes nothing but the end of a text being read aloud.
        `options`: {"name": shown name}."""
        if self._speech_loading:
            return _fail("busy", "The speech model is loading already.")
        self._speech_loading = True
        try:
            await self._end_speech()  # a text being read aloud ends here (its next speak_next says stopped)
            return _json({"ok": True, **await self._speech_load(str(kind), target, _loads(options))})
        except Exception as e:  # noqa: BLE001 - every failure becomes a sentence for the page
            return _speech_fail(e, "load")
        finally:
            self._speech_loading = False

    async def _speech_load(self, kind: str, target, opts: dict) -> dict:
        from .speaker import SAMPLE_RATE, Speaker

        t0 = time.perf_counter()
        self.emit("speech-progress", {"phase": "kokoro-open", "text": "Opening the speech model"})
        state = {"last": 0.0, "t_up": None, "tensors": 0, "done": None, "total": None}

        def report(final: bool = False) -> None:
            # Throttled: bytes read so far (every read), and tensors done when the loader reports them.
            now = time.perf_counter()
            if state["t_up"] is None or (now - state["last"] < _PROGRESS_EVERY and not final):
                return
            state["last"] = now
            elapsed, got = now - state["t_up"], src.fetched - state["header"]
            left = (src.size - src.fetched) * elapsed / got if got > 0 and elapsed > 0 else None
            self.emit("speech-progress", {"phase": "kokoro-weights", "fetched": src.fetched, "file_size": src.size,
                                          "done": state["done"], "total": state["total"], "tensors": state["tensors"],
                                          "seconds_left": left, "text": "Loading the speech model"})

        def progress(*args, **kw) -> None:
            # The loader's own progress: (done, total, name) like the chat model's, or a dict of them.
            ev = args[0] if args and isinstance(args[0], dict) else dict(zip(("done", "total", "tensor"), args))
            ev.update(kw)
            state["tensors"] += 1
            state["done"], state["total"] = ev.get("done"), ev.get("total")
            report(state["done"] is not None and state["done"] == state["total"])

        src = ReportingSource(await self._open_source(kind, target), report)
        name = opts.get("name") or src.name
        try:
            gf = await GGUFFile.open(src)
            arch = gf.architecture
            if arch != "kokoro":
                raise NotKokoroError(f"{name} is not a Kokoro speech model"
                                     + (f" (it holds a {arch} model)" if arch else " (it names no architecture)"))
            dev = self._speech_device_owner()
            if dev is None:
                dev = self.device = await gpu.Device.open()
            state["t_up"], state["header"] = time.perf_counter(), src.fetched
            extra = {"progress": progress} if _accepts(Speaker.load, "progress") else {}
            speaker = await Speaker.load(gf, device=dev, **extra)
        finally:
            await src.close()
        old, self.speaker = self.speaker, speaker
        if old is not None:
            old.release()
        self.speech_info = {
            "name": name,
            "size": src.size,
            "fetched": src.fetched,
            "voices": speaker.voices,
            "unreadable": _unreadable(speaker.voices),
            "sample_rate": SAMPLE_RATE,
            "same_device": self.engine is None or speaker.model.device is self.engine.device,
            "adapter": dev.info,
            "load_seconds": time.perf_counter() - t0,
        }
        self.emit("speech-progress", {"phase": "kokoro-ready", "text": "Speech ready", "fetched": src.fetched,
                                      "file_size": src.size, "tensors": state["tensors"]})
        self._memory_changed()
        return self.speech_info

    async def speech_voices(self, kind=None, target=None) -> str:
        """The voices: the loaded speech model's (stock and added), or with `kind`/`target` those a Kokoro file
        lists in its header (read by ranges; no weights are loaded), for the picker before the first use; and
        those of them whose language cannot be read here ("unreadable")."""
        try:
            if kind is None or kind == "":
                if self.speaker is None:
                    return _fail("speech", "The speech model is not loaded yet.")
                return _json({"ok": True, "loaded": True, "voices": self.speaker.voices,
                              "unreadable": _unreadable(self.speaker.voices)})
            src = await self._open_source(str(kind), target)
            try:
                gf = await GGUFFile.open(src)
                if gf.architecture != "kokoro":
                    raise NotKokoroError(f"{src.name} is not a Kokoro speech model")
                names = _header_voices(gf)
                return _json({"ok": True, "loaded": False, "voices": names, "unreadable": _unreadable(names)})
            finally:
                await src.close()
        except Exception as e:  # noqa: BLE001
            return _speech_fail(e, "load")

    def speech_add_voice(self, name, data) -> str:
        """Add a voice from a voicepack file's bytes (kokoro-js's voices/*.bin: float32 [510, 256]). It reads
        in the language its name's prefix says (bf_mine: British English), else American English."""
        if self.speaker is None:
            return _fail("speech", "The speech model is not loaded yet.")
        try:
            self.speaker.add_voice(str(name or ""), _media_bytes(data))
            return _json({"ok": True, "voices": self.speaker.voices, "unreadable": _unreadable(self.speaker.voices)})
        except Exception as e:  # noqa: BLE001
            return _speech_fail(e)

    async def speak(self, text, voice="af_heart", speed=1.0, seed=0, run=None) -> str:
        """Read `text` aloud: one "speech" event per sentence, the first as soon as it is synthesised. Returns
        {ok, done, run, sentences, samples, seconds, synth_seconds, stopped}; speech_stop() ends it between
        sentences."""
        r = await self.speak_start(text, voice, speed, seed, run)
        started = json.loads(r)
        if not started["ok"]:
            return r
        while True:
            r = await self.speak_next(started["run"])
            out = json.loads(r)
            if not out["ok"] or out["done"]:
                return r

    async def speak_start(self, text, voice="af_heart", speed=1.0, seed=0, run=None) -> str:
        """Check the request and get its sentences ready; speak_next() synthesises them one by one. A new
        request replaces one in progress. `run` (an int the page chooses) tags its events; default a counter."""
        await self._end_speech()
        if self.speaker is None:
            return _fail("speech", "The speech model is not loaded yet.")
        text = "" if text is None else str(text)
        if not text.strip():
            return _fail("speech", "There is nothing to read aloud: the text is empty.")
        voice = str(voice or "")
        if voice not in self.speaker.voices:
            return _fail("speech", f"There is no voice named {voice!r} in the speech model; choose one of its "
                                   f"{len(self.speaker.voices)} voices.", f"voices: {', '.join(self.speaker.voices)}")
        try:
            speed = float(speed if speed is not None else 1.0)
            seed = int(seed or 0)
        except (TypeError, ValueError):
            return _fail("speech", f"The speed {speed!r} and seed {seed!r} must be numbers.")
        if not 0.25 <= speed <= 4.0:  # the speaker's range, said before any text is read
            return _fail("speech", f"The speed {speed:g} is out of range: use 0.25 to 4 (1 is Kokoro's normal pace).")
        self._speech_runs += 1
        rid = int(run) if run is not None else self._speech_runs
        holder: list[SpeechRun] = []
        agen = self.speaker.stream(text, voice, speed=speed, seed=seed, lang=_voice_lang(voice),
                                   cancelled=lambda: bool(holder) and holder[0].stopped)
        self._speech = SpeechRun(rid, agen)
        holder.append(self._speech)
        return _json({"ok": True, "run": rid})

    async def speak_next(self, run=None) -> str:
        """Synthesise the next sentence of the request started last and emit it as a "speech" event. Returns
        {ok, done: false, run, index, samples, seconds}, then at the end {ok, done: true, run, sentences,
        samples, seconds, synth_seconds, stopped}; a request that was replaced or stopped ends at once."""
        from .speaker import SAMPLE_RATE

        sr = self._speech
        if sr is None or (run is not None and int(run) != sr.run):
            return _json({"ok": True, "done": True, "run": run, "stopped": True, "sentences": 0, "samples": 0,
                          "seconds": 0.0, "synth_seconds": 0.0})
        if self.busy:
            return _fail("busy", "The model is busy with another request.")

        def finished() -> str:
            self._speech = None
            return _json({"ok": True, "done": True, "run": sr.run, "stopped": sr.stopped, "sentences": sr.index,
                          "samples": sr.samples, "seconds": sr.samples / SAMPLE_RATE,
                          "synth_seconds": sr.synth_seconds})

        if sr.stopped:
            await sr.agen.aclose()
            return finished()
        t0 = time.perf_counter()
        try:
            u = await sr.agen.__anext__()
        except StopAsyncIteration:
            if sr.index == 0 and not sr.stopped:
                self._speech = None
                return _fail("speech", "There is nothing to read aloud in this text: it has no words, only "
                                       "punctuation or symbols.")
            return finished()
        except Exception as e:  # noqa: BLE001
            self._speech = None
            await sr.agen.aclose()
            return _speech_fail(e)
        took = time.perf_counter() - t0
        audio = np.ascontiguousarray(u.audio, dtype="<f4")
        i = sr.index
        sr.index += 1
        sr.samples += audio.size
        sr.synth_seconds += took
        seconds = audio.size / SAMPLE_RATE
        self.emit("speech", {"run": sr.run, "index": i, "text": u.text, "phonemes": u.phonemes,
                             "durations": [int(d) for d in np.asarray(u.durations).reshape(-1)],
                             "samples": int(audio.size), "sample_rate": SAMPLE_RATE, "seconds": seconds,
                             "synth_seconds": took}, audio.tobytes())
        return _json({"ok": True, "done": False, "run": sr.run, "index": i, "samples": int(audio.size),
                      "seconds": seconds})

    def speech_stop(self, run=None) -> None:
        """End the speak request in progress (or only run `run`) after the sentence being synthesised (the next
        speak_next() reports it stopped)."""
        if self._speech is not None and (run is None or int(run) == self._speech.run):
            self._speech.stopped = True

    async def _end_speech(self) -> None:
        sr, self._speech = self._speech, None
        if sr is not None:
            sr.stopped = True
            await sr.agen.aclose()

    def speech_release(self) -> None:
        """Forget the speech model and free its GPU memory."""
        sp, self.speaker = self.speaker, None
        self._speech = None
        if sp is not None:
            sp.release()

    # -- voice cloning (the voice-clone panel: voice.VoiceTrainer on the speech model) -------------------------
    def _clone_forget(self) -> None:
        """Free the trainer (its GPU buffers); the target stays."""
        tr, self._clone = self._clone, None
        if tr is not None:
            tr.release()

    async def clone_target(self, data, rate=24000, name="recording", fmt="f32") -> str:
        """Make a recording the voice-clone target: `data` is little-endian float32 mono samples at `rate` Hz
        (fmt "f32": what the page decoded or recorded) or a WAV file's bytes (fmt "wav"). It is checked, trimmed
        of silence, resampled to 24 kHz and levelled (media.prepare_voice_target); a trainer of the previous
        target is released. Returns {ok, name, seconds, voice_seconds, trimmed: [start, end] (s of the input),
        input_seconds, input_rate, truncated, warnings, envelope: CLONE_ENVELOPE_COLUMNS [min, max] pairs of the
        input's waveform}; emits "clone-target" with the prepared samples (24 kHz float32: "play the target").
        A bad recording is a sentence (kind "clone") and the target before it stays."""
        name = str(name or "recording")
        try:
            raw = _media_bytes(data)
            if str(fmt) == "wav":
                samples, rate = _media.decode_wav(raw, name)
            else:
                if len(raw) % 4:
                    raise MediaError(f"{name} cannot be read: float32 samples take 4 bytes each, and {len(raw)} bytes "
                                     f"are not a whole number of them.")
                samples = np.frombuffer(raw, "<f4")
            if rate != _media.VOICE_RATE:
                await _load_resampler()
            target = _media.prepare_voice_target(samples, rate, name)
        except Exception as e:  # noqa: BLE001 - every failure becomes a sentence for the page
            return _clone_fail(e, "target")
        self._clone_forget()
        self._clone_target = target
        warnings = []
        if target.truncated:
            warnings.append(f"Only the first {target.seconds:.0f} s of voice in the recording are used.")
        if target.bandwidth_hz < _media.VOICE_RATE / 2:
            warnings.append(f"The recording's sample rate ({target.input_rate} Hz) holds nothing above "
                            f"{target.bandwidth_hz / 1000:g} kHz: the clone is matched on the lower frequencies only.")
        self.emit("clone-target", {"name": name, "samples": int(target.pcm.size), "sample_rate": _media.VOICE_RATE},
                  np.ascontiguousarray(target.pcm, "<f4").tobytes())
        return _json({"ok": True, "name": name, "seconds": target.seconds, "voice_seconds": target.voice_seconds,
                      "trimmed": list(target.trimmed), "input_seconds": target.input_seconds,
                      "input_rate": target.input_rate, "truncated": target.truncated, "warnings": warnings,
                      "rms_db": target.rms_db, "peak": target.peak, "envelope": _envelope(samples)})

    async def clone_start(self, options=None) -> str:
        """Start training a voice towards the target on the loaded speech model: a new trainer (the one before is
        released) prepared (the start voice chosen and its loss measured). `options` (JSON): texts (a list of
        training sentences, default voice.TRAIN_TEXTS), start ("auto" or a voice), train ("timbre" | "all"),
        population (candidates per step), step_size, anneal, seed. Returns {ok, start_voice, start_loss,
        distances, warnings, seconds, phonemes, settings, step: 0, curve: [start_loss]}."""
        if self.speaker is None:
            return _fail("clone", "The speech model is not loaded yet.")
        if self._clone_target is None:
            return _fail("clone", "There is no recording to clone yet: drop a recording of the voice, or record one.")
        from .voice import TRAIN_TEXTS, VoiceTrainer

        self._clone_forget()
        tr = None
        try:
            opts = _loads(options)
            texts = opts.get("texts") or list(TRAIN_TEXTS)
            tr = VoiceTrainer(self.speaker, self._clone_target, texts=[str(t) for t in texts],
                              start=str(opts.get("start") or "auto"), train=str(opts.get("train") or "timbre"),
                              population=_option(opts, "population", 1, int, "candidates per step"),
                              step_size=_option(opts, "step_size", 0.25, float, "step size"),
                              anneal=_option(opts, "anneal", 0.95, float, "anneal factor"),
                              seed=_option(opts, "seed", 0, int, "seed"))
            p = await tr.prepare()
        except Exception as e:  # noqa: BLE001
            if tr is not None:
                tr.release()
            return _clone_fail(e)
        self._clone = tr
        return _json({"ok": True, "start_voice": p.start_voice, "start_loss": p.start_loss,
                      "distances": p.distances, "warnings": list(p.warnings), "seconds": p.seconds,
                      "phonemes": p.phonemes, "settings": tr.settings(), "step": tr.steps, "curve": list(tr.curve)})

    def _trainer(self):
        """The running trainer, or a failure JSON saying why there is none."""
        tr = self._clone
        if tr is None:
            return None, _fail("clone", "Nothing is being trained: press Train first.", "no trainer")
        if tr.speaker is not self.speaker:  # another Kokoro file was loaded since: the trainer was for the old one
            self._clone_forget()
            return None, _fail("clone", "The speech model changed since this training started; press Train to "
                                        "start again with it.", "no trainer")
        return tr, None

    async def clone_step(self, n=1, seconds=CLONE_STEP_SECONDS) -> str:
        """Run up to `n` steps of the climb, stopping early once `seconds` have passed (at least one step): the
        worker calls this in a loop, so its other messages (pause, a chat, reading aloud) wait for one short call
        only. Returns {ok, steps: [TrainStep as dicts], step, best, start_loss, step_size, steps_per_second,
        seconds}."""
        tr, failed = self._trainer()
        if failed:
            return failed
        from dataclasses import asdict

        t0 = time.perf_counter()
        out = []
        try:
            while len(out) < max(1, int(n)) and (not out or time.perf_counter() - t0 < float(seconds)):
                out.append(asdict(await tr.step()))
        except Exception as e:  # noqa: BLE001 - the steps done so far stay in the trainer
            return _clone_fail(e)
        wall = time.perf_counter() - t0
        return _json({"ok": True, "steps": out, "step": tr.steps, "best": tr.best_loss,
                      "start_loss": tr.prepared.start_loss, "step_size": tr.step_size,
                      "steps_per_second": len(out) / wall if wall > 0 else None, "seconds": wall})

    async def clone_voice(self):
        """The current best voice as voicepack bytes (float32 little-endian [510, 256], a kokoro-js .bin and
        `rullama say --voice-file`); a Uint8Array in the browser. A failure is a JSON string, as elsewhere."""
        tr, failed = self._trainer()
        if failed:
            return failed
        try:
            pack = await tr.voicepack()
        except Exception as e:  # noqa: BLE001
            return _clone_fail(e)
        return _to_page(np.ascontiguousarray(pack, "<f4").tobytes())

    async def clone_preview(self, text=CLONE_SAMPLE_TEXT, speed=1.0) -> str:
        """Speak `text` with the current best voice (the training's language); the audio comes as a
        "clone-audio" event (24 kHz float32 samples). The trainer aligns its sentence again by itself at its next
        step. Returns {ok, samples, seconds, synth_seconds}."""
        tr, failed = self._trainer()
        if failed:
            return failed
        text = "" if text is None else str(text)
        if not text.strip():
            return _fail("clone", "There is nothing to say: the sample sentence is empty.")
        from .speaker import SAMPLE_RATE

        t0 = time.perf_counter()
        try:
            pack = await tr.voicepack()
            audio = await self.speaker.say(text, pack, speed=float(speed), seed=0, lang=tr.lang)
        except Exception as e:  # noqa: BLE001
            return _clone_fail(e)
        took = time.perf_counter() - t0
        if audio.size == 0:
            return _fail("clone", "There is nothing to say in the sample sentence: it has no words.")
        self.emit("clone-audio", {"step": tr.steps, "samples": int(audio.size), "sample_rate": SAMPLE_RATE},
                  np.ascontiguousarray(audio, "<f4").tobytes())
        return _json({"ok": True, "step": tr.steps, "samples": int(audio.size), "seconds": audio.size / SAMPLE_RATE,
                      "synth_seconds": took})

    def clone_reset(self) -> str:
        """Back to the start voice (the target, the start voice and the settings are kept)."""
        tr, failed = self._trainer()
        if failed:
            return failed
        tr.reset()
        return _json({"ok": True, "step": tr.steps, "best": tr.best_loss, "step_size": tr.step_size,
                      "curve": list(tr.curve)})

    def clone_release(self) -> str:
        """Free the trainer's GPU buffers (the target stays: Train starts again from it)."""
        self._clone_forget()
        return _json({"ok": True})


# -- voice cloning helpers ---------------------------------------------------------------------------------------

def _clone_errors() -> tuple:
    """What a bad voice-clone request raises: a recording that cannot be used (media.MediaError, and its
    VoiceTargetError), bad options or training text (voice.VoiceCloneError), an unknown start voice
    (speaker.SpeakerError), text that cannot be read (g2p's errors)."""
    from . import voice

    return (MediaError, voice.VoiceCloneError, *_speech_request_errors())


def describe_clone_error(e: BaseException, during: str = "clone") -> dict:
    """describe_error for voice cloning: kind "clone" with the sentence of a request problem (the recording, the
    options, the training text); a missing resampler or a GPU problem is said as elsewhere."""
    if isinstance(e, _clone_errors()):
        return {"kind": "clone", "message": _sentence(str(e)), "detail": f"{type(e).__name__}: {e}"}
    return describe_error(e, during, "audio")


def _clone_fail(e: BaseException, during: str = "clone") -> str:
    return _json({"ok": False, "error": describe_clone_error(e, during), "trace": traceback.format_exc()[-3000:]})


def _option(opts: dict, key: str, default, kind, what: str):
    """A number of the clone options, or VoiceCloneError naming it."""
    from .voice import VoiceCloneError

    v = opts.get(key)
    if v is None or v == "":
        return default
    try:
        x = float(v)
        if kind is int and x != int(x):
            raise ValueError
        return kind(x)
    except (TypeError, ValueError):
        raise VoiceCloneError(f"the {what} must be a {'whole ' if kind is int else ''}number, not {v!r}") from None


def _envelope(samples, columns: int = CLONE_ENVELOPE_COLUMNS) -> list:
    """A waveform for drawing: `columns` [min, max] pairs over equal slices of `samples` (fewer for a shorter
    input), rounded to 1e-4."""
    x = np.asarray(samples, np.float32).reshape(-1)
    if x.size == 0:
        return []
    cols = min(int(columns), x.size)
    edges = np.linspace(0, x.size, cols + 1).astype(np.intp)  # reduceat takes the platform index (32-bit in wasm)
    lo = np.minimum.reduceat(x, edges[:-1])
    hi = np.maximum.reduceat(x, edges[:-1])
    return [[round(float(a), 4), round(float(b), 4)] for a, b in zip(lo, hi)]
