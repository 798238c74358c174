"""The `rullama` command (native): generate, chat, diffuse, bench, list, serve, say, clone-voice. `python -m rullama_py` is the same.

MODEL is a GGUF path, an Ollama model name (gemma3:270m, gemma4:e2b), an http(s) URL (read with Range
requests), or "default" for the embedded Gemma 3 270M that the setup installs.

Images and audio (models with a vision or audio tower: Ollama's Gemma 4 blobs, or a text model with --mmproj,
a llama.cpp projector GGUF holding the tower):

    rullama generate MODEL --image photo.jpg -p "Describe this image."     # --image repeats
    rullama generate MODEL --audio clip.wav -p "Transcribe this."          # --audio repeats; WAV files
    rullama chat MODEL                                                     # then: /image photo.jpg, /audio clip.wav

A diffusion model (DiffusionGemma) writes a whole canvas of tokens at a time and sharpens it step by step:

    rullama diffuse MODEL -p "Write a haiku." --steps 48 --seed 1          # a line per step, then the text

Speech (Kokoro-82M, the Kokoro GGUF the setup builds):

    rullama say "Hello there." --voice af_heart -o hello.wav               # --list-voices, --speed, --voice-file
    rullama clone-voice me.wav -o me.bin --steps 300 --seed 1              # prints the loss curve
    rullama say "Hello there." --voice-file me.bin -o me-hello.wav
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shlex
import signal
import sys
import threading
import time
from dataclasses import dataclass

from .sampling import SamplerParams


def _sampling_args(p: argparse.ArgumentParser) -> None:
    d = SamplerParams()
    p.add_argument("--temperature", type=float, default=d.temperature, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=d.top_k)
    p.add_argument("--top-p", type=float, default=d.top_p)
    p.add_argument("--min-p", type=float, default=d.min_p)
    p.add_argument("--repeat-penalty", type=float, default=d.repetition_penalty)
    p.add_argument("--seed", type=int, default=d.seed)


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help='GGUF path, Ollama name (gemma3:270m), http(s) URL, or "default"')
    p.add_argument("--ctx", type=int, default=4096, help="context length to allocate (max_context)")
    p.add_argument("--prefill-chunk", type=int, default=None,
                   help="tokens per prefill run (default: 256 on a GPU, with 512-token runs for long prompts, "
                        "and 64 on one emulated in software; a number: that many for every chunk)")


IMAGE_TOKEN_BUDGETS = (70, 140, 280, 560, 1120)  # media.SOFT_TOKEN_BUDGETS (kept here: --help stays light)


def _image_tokens(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = None
    if n not in IMAGE_TOKEN_BUDGETS:
        choices = ", ".join(str(b) for b in IMAGE_TOKEN_BUDGETS[:-1]) + f" or {IMAGE_TOKEN_BUDGETS[-1]}"
        raise argparse.ArgumentTypeError(f"{text} is not an image token budget: choose {choices}.")
    return n


def _ple_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ple-on-gpu", action="store_true",
                   help="Gemma 4 E2B/E4B: keep the per-layer-embedding table on the GPU (4.7 GB on E2B) instead of "
                        "reading a row from the file per token; decoding then runs a step ahead")


def _kv_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kv-cache-type", choices=("f16", "q8_0"), default="f16",
                   help="the KV cache's format: f16, or q8_0 (8-bit blocks, as llama.cpp's -ctk/-ctv q8_0) for about "
                        "half its memory at long contexts (default: f16)")


def _vision_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mmproj", metavar="PATH|URL",
                   help="a llama.cpp projector GGUF (vision and/or audio tower) for a text-only model (Ollama's "
                        "Gemma 4 blobs need none)")
    p.add_argument("--image-tokens", type=_image_tokens, default=280, metavar="N",
                   help="soft tokens per image: 70, 140, 280 (default), 560 or 1120; more see finer detail")
    # Memory modes for small GPUs (with --ctx, which sizes the KV cache).
    p.add_argument("--text-only", action="store_true",
                   help="never load the vision and audio towers (less GPU memory); images and clips are refused")
    p.add_argument("--release-towers", action="store_true",
                   help="free the towers' GPU memory after each reply; the next image or clip loads them again")


def software_gpu_notice(info: dict) -> str | None:
    """One line for stderr when the GPU is emulated in software, with the speed to expect (docs/PERFORMANCE.md:
    a Gemma 3 270M decode step takes about 1.3 s on lavapipe with 2 CPU cores)."""
    from .gpu import software_gpu

    name = software_gpu(info)
    if name is None:
        return None
    return (f"note: this GPU is emulated in software ({name}, on the CPU): expect about 1 token/s from Gemma 3 "
            "270M and much less from larger models; a hardware GPU's driver runs them hundreds of times faster.")


async def _device_with_notice():
    """The GPU device, opened before the weights load, and the software-GPU notice on stderr when a person
    watches it (a terminal: logs and pipes stay as they were). None when no device opens: the loader says
    why."""
    from . import gpu

    try:
        dev = await gpu.default_device()
    except gpu.GPUError:
        return None
    line = software_gpu_notice(dict(dev.adapter.info))
    if line and sys.stderr.isatty():
        print(line, file=sys.stderr)
    return dev


class UserError(Exception):
    """A problem with what the user asked for; the message is a plain sentence, printed as `error: ...`."""


MAX_IMAGE_FILE_BYTES = 1 << 30  # media's pixel limit (100 MP) stays far below this even as an uncompressed BMP


@dataclass
class Image:
    """An image file, read and checked (decoded once to learn its size) before it is sent."""

    path: str
    data: bytes
    width: int
    height: int

    @property
    def name(self) -> str:
        return os.path.basename(self.path.rstrip("/")) or self.path

    def part(self) -> dict:
        return {"type": "image", "image": self.data}


def read_image(path: str) -> Image:
    """Read and decode an image file. Raises UserError (no such file, a folder, unreadable) or
    media.MediaError (not an image we read: SVG, HEIC, damaged, ...), both with a sentence for the user."""
    from . import media

    full = os.path.expanduser(path)
    if not os.path.exists(full):
        raise UserError(f"{path} does not exist.")
    if os.path.isdir(full):
        raise UserError(f"{path} is a folder, not an image.")
    if os.path.getsize(full) > MAX_IMAGE_FILE_BYTES:  # a video or a disk image: not read into memory
        raise UserError(f"{path} is too large to be an image ({os.path.getsize(full) / 2**30:.1f} GiB).")
    try:
        with open(full, "rb") as f:
            data = f.read()
    except OSError as e:
        raise UserError(f"{path} cannot be read: {e.strerror or e}.") from None
    rgb = media.decode_image(data, name=os.path.basename(path) or path)
    return Image(path, data, int(rgb.shape[1]), int(rgb.shape[0]))


MAX_AUDIO_FILE_BYTES = 1 << 30  # 10 min (media.MAX_AUDIO_SECONDS) of 48 kHz stereo float32 is 230 MB


@dataclass
class Audio:
    """A WAV file, read and checked (decoded once to learn its length) before it is sent."""

    path: str
    data: bytes
    seconds: float

    @property
    def name(self) -> str:
        return os.path.basename(self.path.rstrip("/")) or self.path

    def part(self) -> dict:
        return {"type": "audio", "audio": self.data}

    @property
    def length(self) -> str:
        """'0.3 s', '12.3 s', '2 min 5 s' (under 0.1 s: '40 ms')."""
        return _clip_length(self.seconds)


def _clip_length(seconds: float) -> str:
    if seconds < 0.1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 59.95:
        return f"{seconds:.1f} s"
    m, s = divmod(int(round(seconds)), 60)
    return f"{m} min {s} s" if s else f"{m} min"


def read_audio(path: str) -> Audio:
    """Read and decode a WAV file. Raises UserError (no such file, a folder, unreadable, too large) or
    media.MediaError (not a WAV file we read: MP3, OGG, a compressed WAV, too long, too short, damaged, ...),
    both with a sentence for the user. media checks the length from the WAV header before converting any
    sample."""
    from . import media

    full = os.path.expanduser(path)
    if not os.path.exists(full):
        raise UserError(f"{path} does not exist.")
    if os.path.isdir(full):
        raise UserError(f"{path} is a folder, not an audio file.")
    size = os.path.getsize(full)
    if size > MAX_AUDIO_FILE_BYTES:  # a video or a disk image: not read into memory
        raise UserError(f"{path} is too large to be an audio clip ({size / 2**30:.1f} GiB).")
    try:
        with open(full, "rb") as f:
            data = f.read()
    except OSError as e:
        raise UserError(f"{path} cannot be read: {e.strerror or e}.") from None
    name = os.path.basename(path.rstrip("/")) or path
    wav, rate = media.decode_wav(data, name=name)
    if media.audio_frames(math.ceil(len(wav) * media.SAMPLE_RATE / rate)) == 0:
        media.prepare_audio(data, name=name)  # too short for one feature frame: media's sentence (a tiny clip)
    return Audio(path, data, len(wav) / rate)


def _path_or_url(x: str) -> str:
    return x if x.startswith(("http://", "https://")) else os.path.expanduser(x)


def _no_vision(model) -> str:
    return f"{model} has no vision tower; pass --mmproj PATH with a llama.cpp vision projector."


def _no_audio(model) -> str:
    return f"{model} has no audio tower; pass --mmproj PATH with a llama.cpp projector that has one."


def _no_tower(kind: str, model, mmproj=None) -> str:
    if mmproj:
        return {"image": f"--mmproj {mmproj} is not a vision projector (it has no vision tower).",
                "audio": f"--mmproj {mmproj} is not an audio projector (it has no audio tower)."}[kind]
    return _no_vision(model) if kind == "image" else _no_audio(model)


async def tower_kinds(model, mmproj=None) -> set:
    """The towers the engine will find, from the GGUF headers only (no weight is read): "image" and/or
    "audio", of the mmproj when one is given, else of the model file itself (as engine._tower_files)."""
    from .config import audio_config
    from .engine import open_model_file
    from .gguf_file import GGUFFile

    if mmproj:
        if not mmproj.startswith(("http://", "https://")) and not os.path.isfile(os.path.expanduser(mmproj)):
            raise UserError(f"--mmproj {mmproj} does not exist.")
        gf = await GGUFFile.open(_path_or_url(mmproj))
    else:
        gf = await open_model_file(model)
    try:
        kinds = set()
        if "v.patch_embd.weight" in gf:
            kinds.add("image")
        if "a.conv1d.0.weight" in gf and audio_config(gf.metadata) is not None:
            kinds.add("audio")
        return kinds
    finally:
        await gf.close()


async def check_towers(model, mmproj=None, kinds=("image",)) -> None:
    """Before any weight is loaded: raise UserError when `model` (with `mmproj`) lacks the tower of one of
    `kinds` ("image", "audio"), naming the first missing one."""
    have = await tower_kinds(model, mmproj)
    for kind in kinds:
        if kind not in have:
            raise UserError(_no_tower(kind, model, mmproj))


async def check_vision(model, mmproj=None) -> None:
    """Before any weight is loaded: raise UserError when `model` (with `mmproj`) cannot read images."""
    await check_towers(model, mmproj, ("image",))


async def check_audio(model, mmproj=None) -> None:
    """Before any weight is loaded: raise UserError when `model` (with `mmproj`) cannot hear audio."""
    await check_towers(model, mmproj, ("audio",))


async def check_projector(model, mmproj) -> None:
    """An mmproj given to chat must hold a tower of some kind."""
    if not await tower_kinds(model, mmproj):
        raise UserError(f"--mmproj {mmproj} is not a vision or audio projector (it has neither tower).")


class TowerProgress:
    """A tower's progress on one line of stderr: "reading image 1 of 2: layer 5 of 16" or "reading audio 1 of
    3: layer 5 of 12" (a long clip is several 30 s blocks, counted one by one), rewritten in place (\r) on a
    terminal, one plain line per report otherwise. Call as engine.chat's `progress`."""

    def __init__(self, stream=None):
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._open = False

    def __call__(self, event: dict) -> None:
        stage = event.get("stage")
        if stage not in ("image", "audio"):
            return
        msg = (f"reading {stage} {event['index']} of {event['count']}: "  # index counts from 1
               f"layer {event['layer']} of {event['layers']}")
        if self.tty:
            self.stream.write("\r" + msg + "\x1b[K")
            self._open = True
        else:
            self.stream.write(msg + "\n")
        self.stream.flush()

    def done(self) -> None:
        """Clear the progress line (before the reply is printed)."""
        if self._open:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._open = False


class Interrupts:
    """Ctrl-C while a reply is being made: the first one cancels a running image or audio encode (engine.cancel(),
    chat then raises Cancelled) and asks the token loop to stop (`hit`); a second one interrupts as usual.
    Installed as the SIGINT handler for the duration of a `with` block (main thread only)."""

    def __init__(self, engine):
        self.engine = engine
        self.hit = False
        self._prev = None

    def _on_sigint(self, signum, frame):
        if self.hit:
            raise KeyboardInterrupt
        self.hit = True
        cancel = getattr(self.engine, "cancel", None)
        if cancel is not None:
            cancel()

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._prev = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc):
        if self._prev is not None:
            signal.signal(signal.SIGINT, self._prev)
            self._prev = None
        return False


def _cancelled_error():
    """engine.Cancelled (the exception chat raises when an image or audio encode is cancelled)."""
    from . import engine

    return getattr(engine, "Cancelled", ())


def _sentence_errors() -> tuple:
    """Errors whose message is a sentence for the user, printed as `error: <sentence>`: a bad image or clip,
    media for a model without the tower, an mmproj that does not fit the model."""
    from . import engine
    from .media import MediaError

    from .g2p import G2PError
    from .speaker import SpeakerError
    from .voice import VoiceCloneError

    diffusion = ()
    if hasattr(engine, "DiffusionModelError"):  # a diffusion model given to chat or generate; bad diffuse settings
        from .diffusion import DiffusionError, NotDiffusionModelError

        diffusion = (engine.DiffusionModelError, DiffusionError, NotDiffusionModelError, engine.ContextOverflowError)
    return (UserError, MediaError, SpeakerError, G2PError, VoiceCloneError) + diffusion + tuple(getattr(engine, n) for n in ("NoTowerError", "TowerLoadError",
                                                                        "VisionLoadError") if hasattr(engine, n))


def _has_media(messages) -> bool:
    return any(isinstance(m.get("content"), list) and any(isinstance(p, dict) and p.get("type") in ("image", "audio")
                                                          for p in m["content"]) for m in messages)


def _params(a) -> SamplerParams:
    return SamplerParams(temperature=a.temperature, top_k=a.top_k, top_p=a.top_p, min_p=a.min_p,
                         repetition_penalty=a.repeat_penalty, seed=a.seed)


class WeightsBar:
    """The weights' upload as a tqdm bar on stderr (none when quiet, or when stderr is not a terminal: a log file
    gets no stream of redraws). Pass as a loader's `progress(done, total, name)`; close() when loaded."""

    def __init__(self, quiet=False):
        self.quiet = quiet
        self.bar = None

    def __call__(self, done, total, name):
        if self.quiet:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="B", unit_scale=True, desc="loading weights", file=sys.stderr,
                            leave=False, disable=None)
        if total != self.bar.total or done < self.bar.n:  # the projector's weights after the model's
            self.bar.reset(total=total)
        self.bar.update(done - self.bar.n)

    def close(self):
        if self.bar is not None:
            self.bar.close()


async def _load(a, params=None, quiet=False):
    from .engine import Engine

    progress = WeightsBar(quiet)
    kwargs = {}
    if getattr(a, "mmproj", None):
        kwargs["mmproj"] = _path_or_url(a.mmproj)
    if getattr(a, "text_only", False):
        kwargs["text_only"] = True
    if getattr(a, "release_towers", False):
        kwargs["release_towers_after_turn"] = True
    if getattr(a, "ple_on_gpu", False):
        kwargs["ple_on_gpu"] = True
    if getattr(a, "kv_cache_type", "f16") != "f16":
        kwargs["kv_cache_type"] = a.kv_cache_type
    dev = await _device_with_notice()
    if dev is not None:
        kwargs["device"] = dev
    try:
        eng = await Engine.load(a.model, max_context=a.ctx, prefill_chunk=a.prefill_chunk, params=params,
                                progress=progress, **kwargs)
    finally:
        progress.close()
    if getattr(a, "image_tokens", None) is not None:
        eng.image_tokens = a.image_tokens
    return eng


def _image_arg(path: str) -> tuple[str, str]:
    return ("image", path)


def _audio_arg(path: str) -> tuple[str, str]:
    return ("audio", path)


_READERS = {"image": read_image, "audio": read_audio}
_HAS = {"image": "has_vision", "audio": "has_audio"}


async def _generate(a) -> int:
    if a.text_only and a.media:
        raise UserError("--text-only leaves the vision and audio towers out, so --image and --audio cannot be used "
                        "with it.")
    attached = [_READERS[kind](p) for kind, p in a.media or []]  # fail before any weight is loaded
    kinds = list(dict.fromkeys(kind for kind, _ in a.media or []))
    if kinds:
        await check_towers(a.model, a.mmproj, kinds)
    eng = await _load(a, _params(a))
    for kind in kinds:  # when the headers did not tell
        if not getattr(eng, _HAS[kind], False):
            raise UserError(_no_tower(kind, a.model, a.mmproj))
    tower = TowerProgress()
    with Interrupts(eng) as intr:
        try:
            if attached:
                # One user turn, images and clips first in the order given, as a chat app sends it.
                content = [x.part() for x in attached] + [{"type": "text", "text": a.prompt}]
                messages = [{"role": "user", "content": content}]
                stream = eng.chat(messages, max_tokens=a.max_tokens, progress=tower)
            else:
                prompt = a.prompt
                if a.chat:
                    prompt = eng.chat_template.render([{"role": "user", "content": prompt}])
                stream = eng.generate(prompt, max_tokens=a.max_tokens)
            try:
                async for tok in stream:
                    tower.done()
                    sys.stdout.write(tok.text)
                    sys.stdout.flush()
                    if intr.hit:  # Ctrl-C: the engine stops at its next token too (cancel())
                        break
            finally:
                await stream.aclose()
        except _cancelled_error():
            tower.done()
            print("[cancelled]", file=sys.stderr)
            return 130
        finally:
            tower.done()
    if intr.hit:
        print("\n[stopped]", file=sys.stderr)
        return 130
    s = eng.stats
    print(f"\n[{s.prompt_tokens} prompt tokens {s.prompt_tps:.1f} tok/s, {s.generated_tokens} generated "
          f"{s.generate_tps:.1f} tok/s, stop: {s.finish_reason}]", file=sys.stderr)
    return 0


async def _readline() -> str:
    """A line of stdin without blocking the event loop. A daemon thread, not the loop's executor: after
    Ctrl-C at the prompt asyncio.run would wait for the executor's thread, that is for an Enter."""
    loop = asyncio.get_running_loop()
    fut = loop.create_future()

    def deliver(ok, value):
        if not fut.done():
            (fut.set_result if ok else fut.set_exception)(value)

    def work():
        try:
            line = sys.stdin.readline()
        except Exception as e:  # noqa: BLE001 - handed to the awaiting task
            loop.call_soon_threadsafe(deliver, False, e)
        else:
            loop.call_soon_threadsafe(deliver, True, line)

    threading.Thread(target=work, name="rullama-stdin", daemon=True).start()
    return await fut


CHAT_HELP = ("chat: type a message; /image PATH attaches an image to the next one, /audio PATH a WAV clip, "
             "/reset starts over, /exit quits")


def _image_path(arg: str) -> str:
    """The path of an `/image` or `/audio` line: as typed, or unquoted / unescaped the way a terminal pastes a
    dropped file ('my photo.jpg', my\\ photo.jpg)."""
    if os.path.exists(os.path.expanduser(arg)):
        return arg
    try:
        words = shlex.split(arg)
    except ValueError:
        return arg
    return words[0] if len(words) == 1 else arg


def _attachments(queued) -> str:
    """What a cancelled message carried: "its image", "its audio clips", "its image and audio clip"."""
    n_images = sum(isinstance(x, Image) for x in queued)
    n_clips = len(queued) - n_images
    words = [w + ("s" if n > 1 else "") for n, w in ((n_images, "image"), (n_clips, "audio clip")) if n]
    return "its " + " and ".join(words)


def _attach(cmd: str, kind: str, eng, a, queued: list) -> None:
    """One `/image PATH` or `/audio PATH` line: queue the file or print why not (the queue stays)."""
    from .media import MediaError

    word = "/" + kind
    arg = cmd[len(word):].strip()
    if not arg:
        example = "photo.jpg" if kind == "image" else "clip.wav"
        print(f"error: {word} needs a path, as in {word} {example}.", file=sys.stderr)
        return
    if kind in getattr(eng, "towers_left_out", ()):
        print(f"error: the model was loaded with --text-only, so {word} cannot be used; start again without "
              "--text-only.", file=sys.stderr)
        return
    if not getattr(eng, _HAS[kind], False):
        print("error: " + _no_tower(kind, a.model, a.mmproj), file=sys.stderr)
        return
    try:
        x = _READERS[kind](_image_path(arg))
    except (UserError, MediaError) as e:
        print(f"error: {e}", file=sys.stderr)
        return
    queued.append(x)
    if kind == "image":
        print(f"[image attached: {x.name}, {x.width} x {x.height}]", file=sys.stderr)
    else:
        print(f"[audio attached: {x.name}, {x.length}]", file=sys.stderr)


def _is_command(cmd: str, word: str) -> bool:
    return cmd == word or cmd.startswith((word + " ", word + "\t"))


async def _chat(a) -> int:
    if a.mmproj:
        await check_projector(a.model, a.mmproj)
    eng = await _load(a, _params(a))
    messages = [{"role": "system", "content": a.system}] if a.system else []
    queued: list = []  # Image and Audio, in the order attached
    print(CHAT_HELP, file=sys.stderr)
    while True:
        sys.stderr.write(">>> ")
        sys.stderr.flush()
        line = await _readline()
        cmd = line.strip()
        if not line or cmd == "/exit":
            return 0
        if cmd == "/reset":
            messages = messages[:1] if a.system else []
            queued.clear()
            eng.reset()
            continue
        kind = next((k for k in ("image", "audio") if _is_command(cmd, "/" + k)), None)
        if kind is not None:
            _attach(cmd, kind, eng, a, queued)
            continue
        if not cmd:
            continue
        text = line.rstrip("\n")
        content = [x.part() for x in queued] + [{"type": "text", "text": text}] if queued else text
        messages.append({"role": "user", "content": content})
        sent, queued = queued, []
        reply, outcome = await _chat_turn(eng, messages, a.max_tokens)
        if outcome == "cancelled":  # the conversation stays as it was before this message
            messages.pop()
            what = f"the message and {_attachments(sent)} were" if sent else "the message was"
            print(f"[cancelled: {what} not sent]", file=sys.stderr)
            continue
        if outcome.startswith("error: "):
            messages.pop()
            print(outcome, file=sys.stderr)
            continue
        print()
        if outcome == "stopped":
            print("[stopped]", file=sys.stderr)
        messages.append({"role": "assistant", "content": reply})


async def _chat_turn(eng, messages, max_tokens):
    """Stream one reply. Returns (reply text, "done" | "stopped" (Ctrl-C during the reply: kept so far) |
    "cancelled" (Ctrl-C during an image or audio encode: nothing kept) | "error: <sentence>")."""
    from .engine import ContextOverflowError

    tower = TowerProgress()
    kwargs = {"max_tokens": max_tokens}
    if _has_media(messages):
        kwargs["progress"] = tower
    reply = []
    with Interrupts(eng) as intr:
        stream = eng.chat(messages, **kwargs)
        try:
            async for tok in stream:
                tower.done()
                reply.append(tok.text)
                sys.stdout.write(tok.text)
                sys.stdout.flush()
                if intr.hit:  # Ctrl-C: the engine stops at its next token too (cancel())
                    break
            await stream.aclose()
        except _cancelled_error():
            return "", "cancelled"
        except _sentence_errors() as e:
            return "", f"error: {e}"
        except ContextOverflowError as e:
            return "", f"error: {e} (/reset starts over)"
        finally:
            tower.done()
    return "".join(reply), ("stopped" if intr.hit else "done")


async def _bench(a) -> int:
    """Prefill and decode throughput at each --depth, and the weight bytes per second that decode implies
    (every decoded token reads every weight the GPU holds once); the measurement is bench.measure, the same
    inside Pyodide. --record appends the figures to a JSON list of records (docs/bench/README.md)."""
    from . import bench

    try:  # the numbers against --ctx before any weight is read; against the model's own limit after
        bench.check_settings(a.ctx, prompt_tokens=a.prompt_tokens, gen_tokens=a.gen_tokens, repeats=a.repeats,
                             depth=max(a.depth))
        eng = await _load(a, SamplerParams(temperature=0.0), quiet=True)
        results = []
        for depth in a.depth:
            bench.check_settings(eng.max_context, prompt_tokens=a.prompt_tokens, gen_tokens=a.gen_tokens,
                                 repeats=a.repeats, depth=depth)
            result = await bench.measure(eng, prompt_tokens=a.prompt_tokens, gen_tokens=a.gen_tokens,
                                         repeats=a.repeats, depth=depth)
            results.append({"model": str(a.model), **result})
        print(json.dumps(results[0] if len(results) == 1 else results, indent=1))
        if a.record:
            model = a.model_name or ("gemma3-270m" if a.model == "default" else bench.model_label(a.model))
            commit = a.commit or _git_commit()
            command = shlex.join(["rullama", *a.command_line])
            bench.append_records(a.record, [bench.record(r, model=model, commit=commit, command=command)
                                            for r in results])
    except bench.BenchError as e:
        raise UserError(str(e)) from None
    return 0


def _git_commit() -> str:
    """This source tree's commit (git rev-parse --short HEAD), or "unknown" outside a git checkout."""
    import subprocess

    try:
        r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=os.path.dirname(os.path.abspath(__file__)),
                           capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else "unknown"


def _depths(text: str) -> list[int]:
    """--depth: "0,1024,8192" -> [0, 1024, 8192] (one load measures every depth)."""
    out = []
    for part in text.split(","):
        try:
            n = int(part)
        except ValueError:
            n = -1
        if n < 0:
            raise argparse.ArgumentTypeError(f"{text} is not a list of depths: give token counts such as 0,1024,8192.")
        if n not in out:
            out.append(n)
    return out


DIFFUSION_MAX_STEPS = 1000  # diffusion.MAX_STEPS (kept here: --help stays light)


def _steps(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = None
    if n is None or not 1 <= n <= DIFFUSION_MAX_STEPS:
        raise argparse.ArgumentTypeError(f"{text} is not a number of steps: give 1 to {DIFFUSION_MAX_STEPS}.")
    return n


def _tokens(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = None
    if n is None or n < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a number of tokens: give 1 or more.")
    return n


async def _diffuse(a) -> int:
    """rullama diffuse: a DiffusionGemma writes the reply a canvas at a time; each denoising step is a line on
    stderr (its mean entropy and how many positions it accepted), the text goes to stdout."""
    from .config import ModelConfig
    from .diffusion import Diffusion, DiffusionParams
    from .engine import open_model_file

    params = DiffusionParams(steps=a.steps, t_min=a.t_min, t_max=a.t_max, entropy_bound=a.entropy_bound,
                             max_new_tokens=a.max_tokens, seed=a.seed)
    # From the header alone, before any weight is read: a model that is not a diffusion model, bad settings.
    gf = await open_model_file(a.model)
    try:
        cfg = ModelConfig.from_metadata(gf.metadata)
    finally:
        await gf.close()
    if cfg.diffusion is None:
        raise UserError(f"{a.model} is a {cfg.arch} model, not a diffusion model: use `rullama generate` or "
                        "`rullama chat` with it.")
    params.resolved(cfg)  # DiffusionError (a sentence) for settings out of range, such as t_min above t_max
    progress = WeightsBar(a.quiet)
    await _device_with_notice()  # Diffusion.load opens the same default device
    try:
        diff = await Diffusion.load(a.model, max_context=a.ctx, prefill_chunk=a.prefill_chunk, progress=progress)
    finally:
        progress.close()
    prompt = a.prompt if a.raw else [{"role": "user", "content": a.prompt}]
    with Interrupts(diff) as intr:
        await diff.start(prompt, params)
        if intr.hit:  # Ctrl-C while the prompt was read: start() began afresh, so cancel again
            diff.cancel()
        async for s in diff.steps():
            if not a.quiet:
                print(f"canvas {s.block + 1}  step {s.step:3d}/{s.steps}  t {s.temperature:.3f}  "
                      f"entropy {s.mean_entropy:.4e}  accepted {s.n_accepted:4d}/{len(s.argmax)}"
                      + ("  stable" if s.stable else "") + ("  converged" if s.converged else ""),
                      file=sys.stderr, flush=True)
    print(diff.text)
    st = diff.stats
    canvases = diff.block + 1
    print(f"[{st['tokens']} tokens in {st['forwards']} forwards: {st['tokens_per_forward']:.2f} tokens per forward, "
          f"{canvases} canvas{'' if canvases == 1 else 'es'}, {st['seconds']:.1f} s]", file=sys.stderr)
    if intr.hit:
        print("[stopped]", file=sys.stderr)
        return 130
    return 0


def _list(a) -> int:
    from . import ollama

    models = ollama.list_models(a.ollama)
    if not models:
        print(f"no models in {ollama.models_dir() if a.ollama is None else a.ollama}", file=sys.stderr)
    for m in models:
        print(f"{m.name}\t{m.size / 1e9:.2f} GB\t{m.digest[:19]}")
    return 0


async def _say(a) -> int:
    """rullama say: text (or stdin with "-") to a WAV file with Kokoro-82M, sentence by sentence."""
    from pathlib import Path

    import numpy as np

    from .media import encode_wav
    from .speaker import SAMPLE_RATE, Speaker, SpeakerError, check_speed, load_voice_file

    # what can be refused without the model is refused first
    text = None
    if not a.list_voices:
        text = sys.stdin.read() if a.text == "-" else a.text
        if text is None or not text.strip():
            raise UserError("say what? give the text (or - to read it from stdin)")
        check_speed(a.speed)
    voice = load_voice_file(a.voice_file) if a.voice_file else a.voice
    speaker = await Speaker.load(a.kokoro)
    if a.list_voices:
        for v in speaker.voices:
            print(v)
        return 0
    speaker.voice(voice)  # an unknown name fails here, naming the voices there are
    parts, t0 = [], time.perf_counter()
    async for u in speaker.stream(text, voice, speed=a.speed, seed=a.seed, lang=a.lang):
        parts.append(u.audio)
        print(f"[{u.seconds:5.2f} s] {u.text}", file=sys.stderr)
    pcm = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    took = time.perf_counter() - t0
    try:
        Path(a.output).write_bytes(encode_wav(pcm, SAMPLE_RATE))
    except OSError as e:
        raise SpeakerError(f"cannot write {a.output}: {e.strerror or e}") from e
    seconds = len(pcm) / SAMPLE_RATE
    print(f"wrote {a.output}: {seconds:.2f} s of speech in {took:.2f} s ({seconds / max(took, 1e-9):.1f}x real time)",
          file=sys.stderr)
    return 0


async def _clone_voice(a) -> int:
    """rullama clone-voice: a recording to a voicepack file, by Kokoro voice training on the GPU."""
    from pathlib import Path

    from .media import decode_wav, encode_wav, prepare_voice_target
    from .speaker import SAMPLE_RATE, Speaker, SpeakerError
    from .voice import TRAIN_TEXTS, VoiceTrainer

    # the recording and the options are checked before the model loads
    try:
        data = Path(a.target).read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {a.target}: {e.strerror or e}") from e
    samples, rate = decode_wav(data, Path(a.target).name)
    target = prepare_voice_target(samples, rate, Path(a.target).name)
    if a.steps < 0:
        raise UserError(f"--steps {a.steps}: a number of steps, 0 or more")
    speaker = await Speaker.load(a.kokoro)
    trainer = VoiceTrainer(speaker, target, texts=a.text or TRAIN_TEXTS, lang=a.lang, start=a.start,
                           train=a.train, population=a.population, step_size=a.step_size, seed=a.seed)
    t0 = time.perf_counter()
    info = await trainer.prepare()
    for w in info.warnings:
        print(f"warning: {w}", file=sys.stderr)
    near = ", ".join(f"{v} {d:.4f}" for v, d in list(info.distances.items())[:3])
    print(f"target: {info.seconds:.1f} s of voice; start voice {info.start_voice} (loss {info.start_loss:.4f}"
          + (f"; nearest: {near}" if near else "") + f") in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    print("step\tloss\tbest\tstep_size")
    print(f"0\t{info.start_loss:.6f}\t{info.start_loss:.6f}\t{trainer.step_size:.4f}")
    t1 = time.perf_counter()
    for _ in range(a.steps):
        s = await trainer.step()
        print(f"{s.step}\t{s.loss:.6f}\t{s.best:.6f}\t{s.step_size:.4f}", flush=s.step % 10 == 0)
    took = time.perf_counter() - t1
    pack = await trainer.voicepack()
    try:
        Path(a.output).write_bytes(pack.astype("<f4").tobytes())
        if a.sample:
            audio = await speaker.say(a.sample_text, voice=pack, seed=a.seed)
            Path(a.sample).write_bytes(encode_wav(audio, SAMPLE_RATE))
    except OSError as e:
        raise SpeakerError(f"cannot write the result: {e.strerror or e}") from e
    print(f"wrote {a.output}: loss {info.start_loss:.4f} -> {trainer.best_loss:.4f} in {a.steps} steps "
          f"({a.steps / max(took, 1e-9):.1f} steps/s); use it with: rullama say --voice-file {a.output} TEXT",
          file=sys.stderr)
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["serve"]:  # the server parses its own options (src/rullama_py/server.py)
        from . import server

        return server.main(argv[1:])
    ap = argparse.ArgumentParser(prog="rullama", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    g = sub.add_parser("generate", help="complete a prompt")
    _model_args(g)
    _ple_arg(g)
    _kv_arg(g)
    _sampling_args(g)
    g.add_argument("--prompt", "-p", required=True)
    g.add_argument("--max-tokens", "-n", type=int, default=256)
    g.add_argument("--chat", action="store_true", help="wrap the prompt as a user turn of the chat template")
    g.add_argument("--image", dest="media", action="append", type=_image_arg, metavar="PATH",
                   help="an image to show the model (repeatable); the images, clips and the prompt become one user "
                        "turn of the chat template, images and clips first, in the order given")
    g.add_argument("--audio", dest="media", action="append", type=_audio_arg, metavar="PATH",
                   help="a WAV clip for the model to hear (repeatable, at most 10 min each; may be combined with "
                        "--image); a model with an audio tower, or --mmproj with one")
    _vision_args(g)

    c = sub.add_parser("chat", help="interactive chat (/image PATH attaches an image, /audio PATH a WAV clip)")
    _model_args(c)
    _ple_arg(c)
    _kv_arg(c)
    _sampling_args(c)
    _vision_args(c)
    c.add_argument("--system", default="", help="system prompt")
    c.add_argument("--max-tokens", "-n", type=int, default=1024)

    b = sub.add_parser("bench", help="prefill/decode tokens per second as JSON")
    _model_args(b)
    _ple_arg(b)
    _kv_arg(b)
    b.add_argument("--prompt-tokens", type=int, default=128)
    b.add_argument("--gen-tokens", type=int, default=64)
    b.add_argument("--repeats", type=int, default=3)
    b.add_argument("--depth", type=_depths, default=[0], metavar="N[,N...]",
                   help="tokens of context in the cache before the timed prefill and decode, filled untimed with "
                        "prefill chunks (llama-bench -d); several depths, one load: 0,1024,8192. --ctx must hold "
                        "depth + prompt + generated tokens")
    b.add_argument("--record", metavar="FILE", help="append the figures as records to this JSON list file "
                                                   "(docs/bench/README.md)")
    b.add_argument("--model-name", help='the records\' "model", e.g. e2b (default: the file name without .gguf)')
    b.add_argument("--commit", help="the records' commit (default: git rev-parse --short HEAD of this source tree)")
    b.set_defaults(command_line=argv)

    d = sub.add_parser("diffuse", help="a diffusion model (DiffusionGemma) writes the reply a canvas at a time")
    _model_args(d)
    d.add_argument("--prompt", "-p", required=True)
    d.add_argument("--steps", type=_steps, default=None, metavar="N",
                   help=f"denoising steps per canvas at most, 1 to {DIFFUSION_MAX_STEPS} (default: the model's, 48)")
    d.add_argument("--seed", type=int, default=0, help="seed of the canvas noise and draws (same seed, same text)")
    d.add_argument("--max-tokens", "-n", type=_tokens, default=256, metavar="N", help="the reply's length at most")
    d.add_argument("--t-min", type=float, default=None, help="temperature of the last step (default: the model's)")
    d.add_argument("--t-max", type=float, default=None, help="temperature of the first step (default: the model's)")
    d.add_argument("--entropy-bound", type=float, default=None,
                   help="a step accepts positions while the entropies before them sum to at most this")
    d.add_argument("--raw", action="store_true", help="the prompt as it is, without the chat template")
    d.add_argument("--quiet", "-q", action="store_true", help="no line per step (and no load bar): the text only")

    li = sub.add_parser("list", help="models in the Ollama store")
    li.add_argument("--ollama", default=None, help="store root (default $OLLAMA_MODELS or ~/.ollama/models)")

    sub.add_parser("serve", help="serve the web app and a model on localhost (rullama serve --help)")

    sp = sub.add_parser("say", help="text to speech with Kokoro-82M, written as a WAV file")
    sp.add_argument("text", nargs="?", help='what to say ("-" reads stdin)')
    sp.add_argument("--output", "-o", default="say.wav", help="WAV file to write (default say.wav)")
    sp.add_argument("--voice", default="af_heart", help="a stock voice (see --list-voices)")
    sp.add_argument("--voice-file", default=None, help="a voicepack file ([510, 256] float32, e.g. from clone-voice)")
    sp.add_argument("--speed", type=float, default=1.0, help="pace, 0.25 to 4 (default 1)")
    sp.add_argument("--seed", type=int, default=0, help="seed of the vocoder's noise (same seed, same audio)")
    sp.add_argument("--lang", default=None, help="espeak language (default: from the voice's first letter)")
    sp.add_argument("--kokoro", default=None, help="Kokoro GGUF path or URL (default: the setup's F16 file)")
    sp.add_argument("--list-voices", action="store_true", help="print the voices and exit")

    cv = sub.add_parser("clone-voice", help="train a Kokoro voice on a recording (WAV), written as a voicepack file")
    cv.add_argument("target", help="a WAV recording of the voice: one speaker, 10-30 s is best (3 s at least)")
    cv.add_argument("--output", "-o", default="voice.bin", help="voicepack file to write (default voice.bin)")
    cv.add_argument("--steps", type=int, default=300, help="hill-climb steps (default 300)")
    cv.add_argument("--seed", type=int, default=0, help="seed of the search's noise (same seed, same voice)")
    cv.add_argument("--train", choices=("timbre", "all"), default="timbre",
                    help="timbre: the decoder half of the voice (default); all: the prosody half too")
    cv.add_argument("--population", type=int, default=1, help="candidates per step (default 1)")
    cv.add_argument("--step-size", type=float, default=0.25, help="initial step, in stock-voice spreads (default 0.25)")
    cv.add_argument("--start", default="auto", help="the voice to start from (default: the nearest stock voice)")
    cv.add_argument("--text", action="append", default=None, help="a training sentence (repeatable)")
    cv.add_argument("--lang", default="en-us", help="espeak language of the training text (default en-us)")
    cv.add_argument("--sample", default=None, help="also write a WAV of the clone speaking --sample-text")
    cv.add_argument("--sample-text", default="Hello! This is my new voice, made on my own GPU.")
    cv.add_argument("--kokoro", default=None, help="Kokoro GGUF path or URL (default: the setup's F16 file)")

    a = ap.parse_args(argv)
    if a.cmd == "list":
        return _list(a)
    sentences = _sentence_errors()
    try:
        return asyncio.run({"generate": _generate, "chat": _chat, "bench": _bench, "say": _say,
                            "clone-voice": _clone_voice, "diffuse": _diffuse}[a.cmd](a))
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except sentences as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (OSError, ValueError, RuntimeError, LookupError) as e:  # our errors are all of these kinds, with clear messages
        print(f"rullama: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
