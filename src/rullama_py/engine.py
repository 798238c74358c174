"""The generation API used by the CLI and the web app: load a model, stream tokens, snapshot the state.

    engine = await Engine.load("gemma3:270m", max_context=4096)     # path, Ollama name, URL, or a Source
    async for tok in engine.chat([{"role": "user", "content": "Hi"}]):
        print(tok.text, end="")

One decode step is: write the 32-byte Step uniform (and, for Gemma 4, the token's per-layer-embedding row),
submit the recorded model graph and the recorded sampler graph in one command buffer, and read back the 4
bytes of the sampled token id. The sampled id is written by the GPU straight into the decode run's input, so
nothing else crosses between host and GPU per token.

The sampler graph is one of two recorded at load: the full sampler's, or, while the parameters are greedy with
no repetition penalty, the greedy fast path's plain argmax (the same token; see sampling.py).

Decoding ahead (`Engine.decode_ahead`, models without per-layer embeddings: Gemma 3, and Gemma 4 26B-A4B; and
Gemma 4 E2B/E4B loaded with `ple_on_gpu`, whose graphs gather the per-layer-embedding rows themselves). The
next step needs nothing from the host but the Step uniform, so `step()` submits step n + 1 before it waits for
step n's token, and the GPU goes from one to the next without waiting for the readback and the host's work in
between. Each submitted step has its own readback buffer; at most two are in flight. When generation stops
(an end token, max_tokens, a full context, a cancel) the step submitted ahead ran one token too far: its K/V
row at the next position is harmless (rewritten when that position is fed; the sliding layers' rewind check
already allows for one row written past the context, see Gemma.can_rewind), and everything else is put back
as if it had not run (`settle`): the sampler's counter, its GPU history (uploaded again from the host: it is
always the last tokens of the context plus the pending token) and the decode input (the pending token).
Every method that reads or changes the state settles first.
"""

from __future__ import annotations

import hashlib
import json
import struct
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import assets, media, ollama
from .chat import chat_template_for
from .config import audio_config, vision_config
from .gguf_file import GGUFFile
from .gpu import Device, Readback, Tensor, default_device
from .models.gemma import ContextOverflowError, Gemma, chunk_soft
from .models.gemma_audio import GemmaAudio
from .models.gemma_vision import GemmaVision
from .models.tower import Cancelled, TowerLoadError

VisionLoadError = TowerLoadError  # the name callers used before the audio tower
from .sampling import Sampler, SamplerParams
from .sources import Source
from .tokenizer import Tokenizer

__all__ = ["Engine", "Token", "HostTimes", "SnapshotError", "ContextOverflowError", "open_model_file", "Cancelled",
           "DiffusionModelError",
           "NoTowerError", "TowerLoadError", "VisionLoadError", "MediaSpan"]

SNAPSHOT_MAGIC = b"RLMSNAP\x00"
SNAPSHOT_VERSION = 2  # 2: the media spans of the context; version 1 blobs (text only) are still read


class SnapshotError(ValueError):
    """A state blob that does not belong to the loaded model (or is damaged)."""


class DiffusionModelError(ValueError):
    """A diffusion model (DiffusionGemma) opened for token-by-token chat."""


class NoTowerError(ValueError):
    """An image or audio clip was given to a model without the tower that reads it."""


@dataclass(frozen=True)
class MediaSpan:
    """A block of soft tokens in the context: `n` rows from position `start`, made from the media whose
    content key (sha256 of the bytes, plus the token budget) is `key`. The token ids of every image's block
    are the same placeholder id, so prefix reuse compares these too."""

    start: int
    n: int
    key: str


@dataclass
class _Media:
    kind: str  # "image" or "audio"
    key: str
    prepared: object  # media.PreparedImage or media.PreparedAudio

    @property
    def n_soft(self) -> int:
        return self.prepared.n_soft


# kind -> (the tower's class, the soft-token placeholder, the config reader, what the user is told)
TOWERS = {
    "image": (GemmaVision, "<|image|>", vision_config, "vision tower, so it cannot read images"),
    "audio": (GemmaAudio, "<|audio|>", audio_config, "audio tower, so it cannot listen to audio"),
}
# kind -> the name of its tower and what it does, for the sentence of a model loaded text-only
TOWER_WORDS = {"image": ("vision tower", "read images"), "audio": ("audio tower", "listen to audio")}


@dataclass
class Token:
    id: int
    text: str


@dataclass
class Stats:
    prompt_tokens: int = 0
    prompt_seconds: float = 0.0
    generated_tokens: int = 0
    generate_seconds: float = 0.0
    finish_reason: str = ""  # "stop" (end-of-turn token), "length" (max_tokens), "context" (context full)

    @property
    def prompt_tps(self) -> float:
        return self.prompt_tokens / self.prompt_seconds if self.prompt_seconds else 0.0

    @property
    def generate_tps(self) -> float:
        return self.generated_tokens / self.generate_seconds if self.generate_seconds else 0.0


@dataclass
class _Submitted:
    """A decode step submitted and not yet read back."""

    slot: int  # the readback buffer its token is copied into
    seed: int  # the sampler's random stream it drew from ...
    counter: int  # ... and its counter there: the counter again when it is undone
    params: SamplerParams  # the sampler's parameters when it was submitted


@dataclass
class HostTimes:
    """Where the host's time goes in decode steps (Engine.step), accumulated until reset.

    `host` is everything a step does on the CPU, that is the whole step except the wait for the GPU's 4-byte
    result and the per-layer-embedding row read; `encode` is the part of it spent encoding the next step's
    command buffer (every dispatch of the model and the sampler), `write` writing the step's inputs (the Step
    uniform, the PLE row) and `submit` submitting the command buffer; the rest is the step's own Python. With
    decode_ahead a step submits the step after it, so these are that one's (the first step of a run encodes,
    writes and submits two).
    `ple_read` is the wait for Gemma 4's per-layer-embedding row (file, OPFS or HTTP I/O, not CPU).
    Comparing `host` with the step's wall time says whether a step is bound by the host or by the GPU."""

    steps: int = 0
    host: float = 0.0
    encode: float = 0.0
    write: float = 0.0
    submit: float = 0.0
    ple_read: float = 0.0
    wall: float = 0.0

    def per_step_ms(self) -> dict:
        n = max(self.steps, 1)
        return {"steps": self.steps, "host_ms": 1e3 * self.host / n, "encode_ms": 1e3 * self.encode / n,
                "write_ms": 1e3 * self.write / n, "submit_ms": 1e3 * self.submit / n,
                "ple_read_ms": 1e3 * self.ple_read / n, "wall_ms": 1e3 * self.wall / n}


async def open_model_file(model) -> GGUFFile:
    """A GGUF from a path, "default" (the embedded Gemma 3 270M), an http(s) URL, an Ollama name such as
    "gemma3:270m", or anything sources.open_source accepts (bytes, a browser File/Blob, ...)."""
    if isinstance(model, str):
        if model == "default":
            model = assets.default_model_path()
        elif not model.startswith(("http://", "https://")) and not Path(model).exists():
            if "/" not in model.split(":")[0] or ":" in model:
                model = ollama.resolve_blob(model)
    return await GGUFFile.open(model)


async def _tower_files(gf: GGUFFile, mmproj, text_d_model: int) -> dict:
    """kind -> the file that holds that tower: the mmproj when one is given (llama.cpp writes Gemma 4's vision
    and audio towers into one), else the model file itself (Ollama's blobs carry both). Checked now, from the
    header, so a wrong pairing or an unsupported tensor type fails at load with a sentence rather than at the
    first image or clip."""
    if mmproj is not None:
        mm = mmproj if isinstance(mmproj, GGUFFile) else await GGUFFile.open(mmproj)
    else:
        mm = gf
    files = {}
    if vision_config(mm.metadata) is not None and "v.patch_embd.weight" in mm:
        GemmaVision.validate(mm, text_d_model)
        files["image"] = mm
    if audio_config(mm.metadata) is not None and "a.conv1d.0.weight" in mm:
        GemmaAudio.validate(mm, text_d_model)
        files["audio"] = mm
    if mmproj is not None and not files:
        raise TowerLoadError(f"{mm.source.name} is not a vision or audio projector (no clip.vision or clip.audio "
                             "keys with their v.* or a.* tensors)")
    return files


async def _towers_in(gf: GGUFFile, mmproj) -> tuple[str, ...]:
    """The kinds ("image", "audio") whose tower the model file, or the mmproj when one is given, holds: read from
    the header only, unchecked (a text-only load does not use them)."""
    mm = gf
    if mmproj is not None:
        mm = mmproj if isinstance(mmproj, GGUFFile) else await GGUFFile.open(mmproj)
    kinds = []
    if vision_config(mm.metadata) is not None and "v.patch_embd.weight" in mm:
        kinds.append("image")
    if audio_config(mm.metadata) is not None and "a.conv1d.0.weight" in mm:
        kinds.append("audio")
    return tuple(kinds)


class Engine:
    """A model ready to generate: tokenizer, chat template, GPU model and GPU sampler, and the KV state."""

    def __init__(self, model: Gemma, tokenizer: Tokenizer, sampler: Sampler, params: SamplerParams):
        self.model = model
        self.device = model.device
        self.tokenizer = tokenizer
        self.chat_template = chat_template_for(tokenizer)
        self.sampler = sampler
        self.params = params
        self.tokens: list[int] = []  # tokens whose K/V are in the cache, in order
        self.next_token: int | None = None  # sampled, not yet fed (it sits in the decode run's input)
        self.stats = Stats()
        self.host_times = HostTimes()
        # One readback buffer per decode step in flight: a step's token is copied into its own.
        self._readbacks = [Readback(self.device, 4, "token"), Readback(self.device, 4, "token ahead")]
        self._slot = 0  # the readback buffer of the next submitted step
        self._submitted: list[_Submitted] = []  # decode steps submitted and not read back, oldest first
        self._encoded = None  # (slot, sampler graph, command buffer): the next step's, encoded ahead
        self._prefill_encoded = None  # (sampler graph, readback, command buffer): see _sample_after
        self._decode_ahead = not model.host_ple_rows
        self.full_sample_graph = None  # the full sampler, recorded by load()
        self.greedy_sample_graph = None  # the greedy fast path (argmax), recorded by load()
        self.greedy_fast_path = True  # run the argmax graph while the parameters allow it (False: never)
        self._fingerprint = b""
        self.tower_files: dict[str, GGUFFile] = {}  # "image"/"audio" -> the file holding that tower
        self._image_tokens = 280
        self.spans: list[MediaSpan] = []  # soft-token blocks among self.tokens
        self._towers: dict = {}  # "image"/"audio" -> the tower, built on first use, freed by release_towers()
        self.text_only = False  # loaded with text_only=True: the towers below were left out
        self.towers_left_out: tuple[str, ...] = ()  # kinds whose tower the file (or mmproj) has, not loaded
        # Memory mode for small devices: free the towers' GPU memory when a turn ends; the next image or clip
        # builds its tower again (seconds of upload; the reply is the same).
        self.release_towers_after_turn = False
        self._prepared: dict[str, list] = {}  # recent prepared media by key (the history is re-sent each turn)
        self._cancel = False
        self.stop_ids = frozenset(self.chat_template.stop_ids) | (
            {tokenizer.eos_id} if tokenizer.eos_id is not None else set()
        )

    # -- loading -------------------------------------------------------------------------------------------
    @classmethod
    async def load(cls, model, *, mmproj=None, max_context: int = 4096, prefill_chunk: int | None = None,
                   long_prefill_chunk: int | None = None, device: Device | None = None,
                   params: SamplerParams | None = None, text_only: bool = False,
                   release_towers_after_turn: bool = False, ple_on_gpu: bool = False, kv_cache_type: str = "f16",
                   progress=None) -> "Engine":
        """Open `model` (see open_model_file), upload its weights and record its graphs. `mmproj` (a path, URL,
        bytes or Source) is a llama.cpp vision projector for a text-only model file; Ollama's Gemma 4 blobs
        carry the tower themselves. Towers are uploaded on the first image, not here.

        Memory modes, for small devices: `max_context` sizes the KV cache (the one part of the model's memory
        that grows with it); `text_only` never uploads the towers (an image or clip is then refused with a
        sentence that says so; `towers_left_out` names the towers the file has); `release_towers_after_turn`
        frees the towers when each turn ends (also settable later, as an attribute). For a GPU with memory to
        spare, `ple_on_gpu` uploads Gemma 4 E2B/E4B's per-layer-embedding table (4.7 GB on E2B) rather than
        reading a row from the file per token, so that decoding can run a step ahead (see above).
        `kv_cache_type` "q8_0" keeps the KV cache in 8-bit blocks, about half the memory of "f16" (the default),
        for long contexts on small devices; its rounding moves the logits a little (see ops.kv_cache).
        `prefill_chunk` and `long_prefill_chunk`: the prefill runs' capacities (Gemma.load: by default the
        device's). `progress(done, total, name)` is called per tensor."""
        gf = await open_model_file(model)
        if gf.metadata.get("general.architecture") == "diffusion-gemma":
            raise DiffusionModelError(f"{gf.source.name} is a diffusion model (DiffusionGemma): it writes a whole "
                                      "canvas at a time; use the diffusion mode (`rullama diffuse`) to run it")
        device = device or await default_device()
        tok = Tokenizer.from_gguf_metadata(gf.metadata)
        m = await Gemma.load(gf, device, max_context=max_context, prefill_chunk=prefill_chunk,
                             long_prefill_chunk=long_prefill_chunk, ple_on_gpu=ple_on_gpu,
                             kv_cache_type=kv_cache_type, progress=progress)
        params = params or SamplerParams()
        sampler = await Sampler.create(device, m.cfg.vocab_size, params, max_history=256)
        eng = cls(m, tok, sampler, params)
        eng.full_sample_graph = device.graph()
        await sampler.record(eng.full_sample_graph, m.logits, m.step, m.decode.ids)
        eng.greedy_sample_graph = device.graph()
        await sampler.record_greedy(eng.greedy_sample_graph, m.logits, m.decode.ids)
        eng._fingerprint = await eng._weights_fingerprint()
        if not text_only:
            eng.tower_files = await _tower_files(gf, mmproj, m.cfg.d_model)
        else:
            eng.text_only = True
            eng.towers_left_out = await _towers_in(gf, mmproj)
        eng.release_towers_after_turn = bool(release_towers_after_turn)
        if m.prefill is not m.decode:
            eng._encode_prefill_ahead()  # for the first prompt
        return eng
    @property
    def config(self):
        return self.model.cfg

    @property
    def max_context(self) -> int:
        return self.model.max_context

    @property
    def image_tokens(self) -> int:
        """Soft tokens per image at most (70, 140, 280, 560 or 1120): more read finer detail and cost more."""
        return self._image_tokens

    @image_tokens.setter
    def image_tokens(self, n: int) -> None:
        media._check_budget(n)
        self._image_tokens = int(n)

    @property
    def has_vision(self) -> bool:
        return "image" in self.tower_files

    @property
    def has_audio(self) -> bool:
        return "audio" in self.tower_files

    @property
    def vision_file(self) -> GGUFFile | None:
        return self.tower_files.get("image")

    def set_params(self, params: SamplerParams) -> None:
        """New sampling parameters from the next token on (a step decoded ahead with the old ones is undone)."""
        self.settle()
        self.params = params
        self.sampler.set_params(params)
        self._encoded = None  # it may hold the other sampler graph

    @property
    def sample_graph(self):
        """The sampler graph the current parameters run: the greedy fast path's while they are greedy with no
        repetition penalty (and greedy_fast_path is on), else the full sampler's."""
        if self.greedy_fast_path and self.sampler.fast_greedy and self.greedy_sample_graph is not None:
            return self.greedy_sample_graph
        return self.full_sample_graph

    @property
    def decode_ahead(self) -> bool:
        """Whether step() submits the next decode step before reading this one's token (see the module
        docstring). On by default for models without per-layer embeddings and for Gemma 4 loaded with ple_on_gpu;
        a Gemma 4 model that reads each token's row on the host cannot. Turning it off undoes a step decoded
        ahead."""
        return self._decode_ahead

    @decode_ahead.setter
    def decode_ahead(self, on: bool) -> None:
        if on and self.model.host_ple_rows:
            raise ValueError("this model reads a per-layer-embedding row on the host for every token, so it cannot "
                             "decode a step ahead (load it with ple_on_gpu to let it)")
        self.settle()
        self._decode_ahead = bool(on)

    @property
    def _readback(self) -> Readback:
        return self._readbacks[0]

    # -- the two primitive steps ---------------------------------------------------------------------------
    async def _sample_after(self, run, pos: int, n: int) -> int:
        """Submit the last run of a prompt with the sampler, and read the token back. A prompt's last prefill
        chunk (every short prompt's only one) goes as a command buffer encoded ahead, while the GPU was busy
        with the last one: encoding a chunk's 600-odd dispatches is milliseconds of host time before the
        first token. The next one is encoded here, while this one runs."""
        seed, counter = self.sampler.rng_words()
        self.model.write_step(pos, n, seed, counter)
        self.sampler.advance()
        prefill = run is self.model.prefill
        readback = self._readback
        self.device.submit_encoded(self._take_prefill_encoded() if prefill else self._encode_prompt_end(run))
        if prefill:
            self._encode_prefill_ahead()
        data = await readback.read(self.device, 4)
        return int(np.frombuffer(data, np.uint32, 1)[0])

    def _encode_prefill_ahead(self) -> None:
        """Encode the command buffer of a prompt's last prefill chunk for the next feed. Command buffers are
        single-use; this one stays valid while the sampler graph and the readback it names are the current
        ones (_take_prefill_encoded checks)."""
        self._prefill_encoded = (self.sample_graph, self._readback, self._encode_prompt_end(self.model.prefill))

    def _take_prefill_encoded(self):
        ahead, self._prefill_encoded = self._prefill_encoded, None
        if ahead is not None and ahead[0] is self.sample_graph and ahead[1] is self._readback:
            return ahead[2]
        # none yet, or for other sampler parameters or a readback replaced since
        return self._encode_prompt_end(self.model.prefill)

    def _encode_prompt_end(self, run):
        """`run`'s graph, the sampler and the copy of the sampled token into the readback, one command buffer."""
        return self.device.encode([run.graph, self.sample_graph], self._readback,
                                  (self.model.decode.ids.buffer, 0, 4))

    async def feed(self, ids, soft=()) -> int:
        """Append `ids` to the context (prefill in chunks) and sample the token that follows; returns it.
        `soft`: (offset in ids, tensor, n_rows) blocks of soft tokens whose rows replace the embeddings of
        ids[offset:offset + n_rows] (see Gemma.write_inputs)."""
        ids = [int(i) for i in ids]
        if not ids:
            raise ValueError("feed() needs at least one token")
        self.settle()
        if self.next_token is not None:
            ids = [self.next_token] + ids  # the pending token goes in first
            soft = [(off + 1, t, n) for off, t, n in soft]
            self.next_token = None
        if len(self.tokens) + len(ids) > self.max_context:
            raise ContextOverflowError(
                f"{len(self.tokens) + len(ids)} tokens do not fit the context of {self.max_context} "
                "(start a new chat or load the model with a larger max_context)")
        self.sampler.set_history((self.tokens + ids)[-256:])
        m = self.model
        pos = len(self.tokens)
        done = 0
        while done < len(ids):
            run = m.run_for(len(ids) - done)
            chunk = ids[done: done + run.capacity]
            end = done + len(chunk)
            await m.write_inputs(run, chunk, pos, chunk_soft(soft, done, end))
            if end < len(ids):
                m.write_step(pos, len(chunk))
                self.device.submit(run.graph)
            else:
                self.next_token = await self._sample_after(run, pos, len(chunk))
            self.tokens += chunk
            pos += len(chunk)
            done = end
        return self.next_token

    def _encode_step(self, slot: int):
        m, graph = self.model, self.sample_graph
        cb = self.device.encode([m.decode.graph, graph], self._readbacks[slot], (m.decode.ids.buffer, 0, 4))
        return slot, graph, cb

    async def _submit_step(self, pos: int, times: dict) -> None:
        """Submit the decode step at `pos`: it feeds what the decode input holds (the pending token, or the
        token the step before it samples) and copies its token into its own readback buffer. Adds to `times`
        (encode, ple_read, write, submit seconds)."""
        clock = time.perf_counter
        m, slot = self.model, self._slot
        t0 = clock()
        enc, self._encoded = self._encoded, None
        if enc is None or enc[0] != slot or enc[1] is not self.sample_graph:
            enc = self._encode_step(slot)  # nothing encoded ahead (the first step), or for other parameters
        t1 = clock()
        times["encode"] += t1 - t0
        if m.host_ple_rows:  # never with a step in flight: the token is the pending one
            rows = await m.ple_rows(np.array([self.next_token], np.uint32))
            t2 = clock()
            times["ple_read"] += t2 - t1
            t1 = t2
            self.device.write(m.decode.ple.buffer, rows)
        seed, counter = self.sampler.rng_words()
        self.sampler.advance()
        # A queue write is ordered after the submits before it and before those after it, so rewriting the one
        # Step uniform for this step cannot change what a step submitted earlier, and maybe still running,
        # reads. In the WebGPU spec, GPUQueue.writeBuffer's last step ("write contents into buffer") and
        # submit()'s ("execute each command") are both issued to the queue timeline, whose steps run in the
        # order issued; wgpu stages the write and copies it at the start of the next submit, after the
        # earlier ones, with the barrier the uniform's earlier use needs.
        m.write_step(pos, 1, seed, counter)
        t2 = clock()
        self.device.submit_encoded(enc[2])
        times["write"] += t2 - t1
        times["submit"] += clock() - t2
        self._submitted.append(_Submitted(slot, seed, counter, self.sampler.params))
        self._slot = 1 - slot

    async def step(self, *, ahead: bool = True) -> int:
        """Feed the pending token and sample the next one (one decode step); returns it.

        The step's command buffer was encoded while the GPU ran the previous step (it does not depend on the
        token, which the GPU sampler wrote into the decode input itself); only the Step uniform and, for
        Gemma 4 with per-layer embeddings, the token's row are written now, and queue writes land before the
        submit that follows them. With decode_ahead, the step after this one is submitted too before this
        one's token is read (unless `ahead` is False: the caller will not ask for it); its token is the next
        call's, and any other method undoes it first."""
        if self._submitted and self._submitted[0].params is not self.sampler.params:
            self.settle()  # the sampler's parameters were changed directly, not through set_params
        if self.next_token is None:
            raise RuntimeError("nothing to continue: feed a prompt first")
        if len(self.tokens) + 1 > self.max_context:
            raise ContextOverflowError(f"the context of {self.max_context} tokens is full")
        clock = time.perf_counter
        t0 = clock()
        times = dict(encode=0.0, ple_read=0.0, write=0.0, submit=0.0)
        pos = len(self.tokens)
        if not self._submitted:
            await self._submit_step(pos, times)
        if ahead and self.decode_ahead and len(self._submitted) == 1 and pos + 2 <= self.max_context:
            await self._submit_step(pos + 1, times)
        t1 = clock()
        self._encoded = self._encode_step(self._slot)  # overlaps with the GPU's work on the steps submitted
        t2 = clock()
        times["encode"] += t2 - t1
        first = self._submitted.pop(0)
        try:
            data = await self._readbacks[first.slot].read(self.device, 4)
        except BaseException:
            # Not read (an error, or the task was cancelled): undo this step and the one ahead. A map cut short
            # can leave its buffer unusable, so that one is replaced.
            self._submitted.insert(0, first)
            self._readbacks[first.slot] = Readback(self.device, 4, "token")
            self._encoded = None
            self.settle()
            raise
        t3 = clock()
        self.tokens.append(self.next_token)
        self.next_token = int(np.frombuffer(data, np.uint32, 1)[0])
        t4 = clock()
        h = self.host_times
        h.steps += 1
        h.encode += times["encode"]
        h.write += times["write"]
        h.submit += times["submit"]
        h.ple_read += times["ple_read"]
        h.host += (t2 - t0) - times["ple_read"] + (t4 - t3)
        h.wall += t4 - t0
        return self.next_token

    def settle(self) -> None:
        """Undo the decode steps submitted and not read back (the step decoded ahead after a step() call), so
        that the state is exactly what the steps read back made it. Every Engine method does this first, and
        a generation settles when it stops; call it before reading the sampler or the GPU buffers yourself
        after step() calls. Queue writes only: they land after those steps ran. Their K/V rows past the
        context are left (see the module docstring)."""
        if not self._submitted:
            return
        first, n = self._submitted[0], len(self._submitted)
        s = self.sampler
        if s.seed == first.seed and s.counter == (first.counter + n) & 0xFFFFFFFF:
            s.counter = first.counter  # unless the stream was restarted since (Sampler.set_params with a new seed)
        self._submitted.clear()
        # The GPU history is always the last max_history tokens of the context and the pending token (feed sets
        # it so, every step appends its token); the discarded steps appended theirs.
        self.sampler.set_history((self.tokens + [self.next_token])[-self.sampler.max_history:])
        self.device.write(self.model.decode.ids.buffer, np.array([self.next_token], np.uint32))

    def reset(self) -> None:
        """Forget the context (the KV cache is simply overwritten from position 0)."""
        self.settle()
        self.tokens = []
        self.spans = []
        self.next_token = None
        self.sampler.reset(self.params.seed)
        self.stats = Stats()

    # -- streaming generation ------------------------------------------------------------------------------
    async def generate(self, prompt, *, max_tokens: int = 256, stop_ids=None, continue_context: bool = False):
        """Stream Tokens for `prompt` (text or token ids). Text gets BOS when the context is empty. Stops on
        the model's end tokens (or `stop_ids`), after `max_tokens`, or when the context is full;
        `self.stats.finish_reason` says which (also "cancelled", after cancel())."""
        self._cancel = False  # a cancel() of an earlier reply does not stop this one
        if not continue_context:
            self.reset()
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt, add_bos=not self.tokens and self.next_token is None, parse_special=True)
        else:
            ids = list(prompt)
        async for t in self._stream(ids, max_tokens, stop_ids):
            yield t

    async def chat(self, messages, *, max_tokens: int = 512, progress=None):
        """Stream the model's reply to `messages` (list of {"role", "content"}). The KV cache is reused for the
        longest prefix the new prompt shares with what is already in it, so a follow-up turn only prefills
        the new messages.

        A content may be a list of parts: {"type": "text", "text": ...}, {"type": "image", "image": bytes, a
        file path or a media.PreparedImage} and {"type": "audio", "audio": WAV bytes, a path, 16 kHz mono
        float32 samples or a media.PreparedAudio}. Each image becomes `<|image>` + soft tokens + `<image|>`
        (self.image_tokens per image at most), each 30 s of audio `<|audio>` + soft tokens (one per 40 ms) +
        `<audio|>`; only media outside the reused prefix go through a tower. `progress(event)` is called while
        a tower runs: {"stage": "image" or "audio", "index": i, "count": n, "layer": l, "layers": L}. cancel() stops the tower between layers (Cancelled is raised; the context
        keeps what it had) and a reply at its next token (finish_reason "cancelled")."""
        self._cancel = False
        messages, items = self._with_media(messages)
        ids = self.chat_template.render(messages, add_generation_prompt=True)
        spans = self._find_spans(ids, items)
        self._rewind_to_common_prefix(ids, spans)
        kept = len(self.tokens)
        todo = [(sp, item) for sp, item in zip(spans, items) if sp.start + sp.n > kept]
        soft = []
        try:
            soft = await self._encode_media(todo, progress) if todo else []
            async for t in self._stream(ids[kept:], max_tokens, None,
                                        soft=[(sp.start - kept, t, sp.n) for (sp, _), t in zip(todo, soft)],
                                        spans=[sp for sp, _ in todo]):
                yield t
        finally:
            for t in soft:
                t.parts[0][0].destroy()
            if self.release_towers_after_turn:
                self.release_towers()

    def cancel(self) -> None:
        """Stop a running image encode (between tower layers) or reply (at the next token)."""
        self._cancel = True

    def _rewind_to_common_prefix(self, ids, spans=()) -> None:
        self.settle()
        have = self.tokens + ([self.next_token] if self.next_token is not None else [])
        n = 0
        for a, b in zip(have, ids):
            if a != b:
                break
            n += 1
        # Every image's block has the same ids: a kept block must also hold the same image.
        new = set(spans)
        for sp in self.spans:
            if sp.start < n and sp not in new:
                n = min(n, sp.start)
        n = min(n, len(ids) - 1, len(self.tokens))  # keep at least one token to feed
        if n < len(self.tokens) and not self.model.can_rewind(len(self.tokens), n):
            n = 0
        if n == 0:
            self.reset()
            return
        self.tokens = self.tokens[:n]
        self.spans = [sp for sp in self.spans if sp.start + sp.n <= n]
        self.next_token = None

    # -- images and audio --------------------------------------------------------------------------------------
    def _with_media(self, messages):
        """Messages with every image and audio part prepared (decoded, resized or resampled) and its soft-token
        count filled in, and the media in prompt order. Audio longer than one block (30 s) becomes several
        consecutive audio parts, one block each, as the model takes it."""
        out, items = [], []
        for m in messages:
            content = m.get("content") if isinstance(m, dict) else None
            if not isinstance(content, (list, tuple)):
                out.append(m)
                continue
            parts = []
            for p in content:
                kind = p.get("type") if isinstance(p, dict) else None
                if kind in TOWERS:
                    for item in self._prepare(kind, p.get(kind, p.get("data")), p.get("name") or kind):
                        items.append(item)
                        parts.append({"type": kind, "n_tokens": item.n_soft})
                else:
                    parts.append(p)
            out.append(dict(m, content=parts))
        return out, items

    def _prepare(self, kind: str, data, name: str) -> list[_Media]:
        if kind not in self.tower_files and kind in self.towers_left_out:
            tower, does = TOWER_WORDS[kind]
            raise NoTowerError(f"This model was loaded text-only, without its {tower}, so it cannot {does}. Load it "
                               "again without text-only to use it.")
        if kind not in self.tower_files:
            raise NoTowerError(f"This model has no {TOWERS[kind][3]}. Use a Gemma 4 model with it (Ollama's gemma4 "
                               "files carry both towers), or add its mmproj file.")
        if isinstance(data, (media.PreparedImage, media.PreparedAudio)):
            arr = data.patches if kind == "image" else data.features
            return [_Media(kind, f"{kind}:{hashlib.sha256(arr.tobytes()).hexdigest()[:32]}", data)]
        if isinstance(data, (str, Path)):
            try:
                data = Path(data).read_bytes()
            except OSError as e:
                raise media.MediaError(f"cannot read the {kind} file {data}: {e.strerror or e}") from None
        if isinstance(data, np.ndarray) and kind == "audio":
            raw = np.ascontiguousarray(data, np.float32)
            digest = hashlib.sha256(raw.tobytes()).hexdigest()[:32]
        elif isinstance(data, (bytes, bytearray, memoryview)):
            raw = bytes(data)
            digest = hashlib.sha256(raw).hexdigest()[:32]
        else:
            raise media.MediaError(f"an {kind} part holds {type(data).__name__}; expected the file's bytes")
        key = f"{kind}:{digest}/{self.image_tokens if kind == 'image' else 'x'}"
        prepared = self._prepared.pop(key, None)
        if prepared is None:
            if kind == "image":
                f = self.tower_files["image"]
                c = vision_config(f.metadata)
                img = media.prepare_image(raw, budget=self.image_tokens, patch_size=c.patch_size,
                                          pooling=c.projector_scale_factor, name=name)
                side = f.info("v.position_embd.weight").n_rows // 2  # the tower's positions per side
                if max(img.grid) > side:
                    raise media.MediaError(
                        f"{name} is too long and thin for this model: resized to {img.size[1]} x {img.size[0]} it "
                        f"is {max(img.grid)} patches on one side, and the vision tower knows {side} positions. "
                        "Crop it, or use a smaller image token budget.")
                prepared = [img]
            else:
                prepared = media.prepare_audio(raw, name=name)
        self._prepared[key] = prepared  # most recent last; a few kept for the history re-sent each turn
        while len(self._prepared) > 4:
            self._prepared.pop(next(iter(self._prepared)))
        return [_Media(kind, f"{key}#{i}", p) for i, p in enumerate(prepared)]

    def _find_spans(self, ids, items) -> list[MediaSpan]:
        """The soft-token block of each image or audio block in `ids`, in order."""
        spans, i = [], 0
        for item in items:
            soft_id = self.tokenizer.token_to_id(TOWERS[item.kind][1])
            n = item.n_soft
            while i < len(ids) and not (ids[i] == soft_id and ids[i: i + n] == [soft_id] * n):
                i += 1
            if i >= len(ids):
                raise RuntimeError(f"the rendered prompt lost an {item.kind}'s soft-token block")
            spans.append(MediaSpan(i, n, item.key))
            i += n
        return spans

    async def _tower(self, kind: str):
        tower = self._towers.get(kind)
        if tower is None:
            cls = TOWERS[kind][0]
            tower = self._towers[kind] = await cls.load(self.tower_files[kind], self.device,
                                                        text_d_model=self.config.d_model)
        return tower

    async def _encode_media(self, todo, progress) -> list[Tensor]:
        """Soft tokens of each (span, media), each in its own GPU buffer (a tower's output buffer is reused)."""
        d = self.config.d_model
        out: list[Tensor] = []
        try:
            for i, (_, item) in enumerate(todo):
                tower = await self._tower(item.kind)
                count = sum(1 for _, it in todo if it.kind == item.kind)
                index = sum(1 for _, it in todo[:i] if it.kind == item.kind) + 1

                def on_layer(done, total, kind=item.kind, index=index, count=count):
                    if progress is not None:
                        progress({"stage": kind, "index": index, "count": count, "layer": done, "layers": total})
                on_layer(0, tower.cfg.n_layers)
                if item.kind == "image":
                    rows = await tower.encode(item.prepared, budget=self.image_tokens, on_layer=on_layer,
                                              cancelled=lambda: self._cancel)
                else:
                    rows = await tower.encode(item.prepared, on_layer=on_layer, cancelled=lambda: self._cancel)
                t = self.device.tensor((item.n_soft, d), "float32", f"soft[{i}]")
                self.device.copy([(rows.buffer, 0, t.buffer, 0, t.nbytes)])
                out.append(t)
        except BaseException:
            for t in out:
                t.parts[0][0].destroy()
            raise
        return out

    def release_towers(self) -> None:
        """Free the towers' GPU memory; the next image or clip builds its tower again."""
        for tower in self._towers.values():
            tower.release()
        self._towers.clear()

    @property
    def towers_loaded(self) -> list[str]:
        """The kinds whose tower is on the GPU now ("image", "audio")."""
        return sorted(self._towers)

    def memory(self) -> dict:
        """GPU memory of the device (shared with whatever else runs on it, e.g. a speech model): the bytes its
        buffers hold now and at most since the last `device.reset_peak()`, and the towers loaded now."""
        return {**self.device.memory(), "towers": self.towers_loaded}

    async def _stream(self, ids, max_tokens: int, stop_ids, soft=(), spans=()):
        stop = self.stop_ids if stop_ids is None else frozenset(stop_ids)
        st = self.stats = Stats()
        dec = self.tokenizer.stream_decoder()
        if max_tokens <= 0:
            st.finish_reason = "length"
            return
        t0 = time.perf_counter()
        tok = await self.feed(ids, soft)
        self.spans += list(spans)
        st.prompt_tokens, st.prompt_seconds = len(ids), time.perf_counter() - t0
        t0 = time.perf_counter()
        while True:
            if tok in stop:
                st.finish_reason = "stop"
                break
            st.generated_tokens += 1
            text = dec.push(tok)
            st.generate_seconds = time.perf_counter() - t0
            yield Token(tok, text)
            if st.generated_tokens >= max_tokens:
                st.finish_reason = "length"
                break
            if len(self.tokens) + 1 >= self.max_context:
                st.finish_reason = "context"
                break
            if self._cancel:
                st.finish_reason = "cancelled"
                break
            # Ask for a step ahead only when the loop can come back for it: not after the last token allowed
            # (a stop token cannot be known in advance; that step is undone below).
            again = st.generated_tokens + 1 < max_tokens and len(self.tokens) + 2 < self.max_context
            tok = await self.step(ahead=again)
        self.settle()
        rest = dec.flush()
        if rest:
            yield Token(-1, rest)
        st.generate_seconds = time.perf_counter() - t0

    # -- snapshots -------------------------------------------------------------------------------------------
    async def _weights_fingerprint(self) -> bytes:
        """Identifies the weights, not only their shapes: a fine-tune of the same base gets another value."""
        h = hashlib.sha256()
        gf = self.model.gguf
        for name in ("output_norm.weight", "blk.0.attn_norm.weight"):
            if name in gf:
                h.update(bytes(await gf.tensor_bytes(name)))
        h.update(bytes(await gf.tensor_bytes("token_embd.weight", rows=slice(0, 2))))
        return h.digest()

    def layout_hash(self) -> bytes:
        """What a snapshot must match: the model's configuration, KV layout and weights fingerprint."""
        m = self.model
        desc = {
            "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(m.cfg).items()
                       if k not in ("vision", "audio")},
            "kv": {str(l): [kv[0].shape, kv[2]] for l, kv in sorted(m.kv.items())},
            "kv_cache_type": m.kv_cache_type,
            "max_context": m.max_context,
        }
        h = hashlib.sha256(json.dumps(desc, sort_keys=True, default=str).encode())
        h.update(self._fingerprint)
        return h.digest()

    async def save_state(self) -> bytes:
        """One versioned blob: KV cache, tokens, pending token, sampler state and the media spans."""
        self.settle()
        m = self.model
        head = struct.pack("<8sI32sIIi", SNAPSHOT_MAGIC, SNAPSHOT_VERSION, self.layout_hash(), m.max_context,
                           len(self.tokens), -1 if self.next_token is None else self.next_token)
        parts = [head, np.asarray(self.tokens, np.uint32).tobytes()]
        sampler_state = await self.sampler.state()
        parts += [struct.pack("<I", len(sampler_state)), sampler_state]
        spans = json.dumps([[sp.start, sp.n, sp.key] for sp in self.spans]).encode()
        parts += [struct.pack("<I", len(spans)), spans]
        for l in sorted(m.kv):
            for t in m.kv[l][:2]:
                raw = (await self.device.read(t)).tobytes()
                parts += [struct.pack("<Q", len(raw)), raw]
        return b"".join(parts)

    async def restore_state(self, blob: bytes) -> None:
        """Restore what save_state returned. A blob from another model, another context size, another
        version or a damaged one raises SnapshotError and leaves the current state untouched."""
        mv = memoryview(blob)
        hsize = struct.calcsize("<8sI32sIIi")
        if len(mv) < hsize:
            raise SnapshotError(f"snapshot too short ({len(mv)} bytes)")
        magic, version, layout, max_ctx, n_tok, nxt = struct.unpack_from("<8sI32sIIi", mv, 0)
        if magic != SNAPSHOT_MAGIC:
            raise SnapshotError("not a rullama snapshot (bad magic)")
        if version not in (1, SNAPSHOT_VERSION):
            raise SnapshotError(f"snapshot version {version} is not supported (this build reads 1 and {SNAPSHOT_VERSION})")
        if layout != self.layout_hash():
            raise SnapshotError("the snapshot was made with another model, context size or KV layout")
        if max_ctx != self.max_context or n_tok > max_ctx:
            raise SnapshotError(f"snapshot holds {n_tok} tokens of a {max_ctx}-token context; this model has {self.max_context}")
        off = hsize
        try:
            tokens = np.frombuffer(mv, np.uint32, n_tok, off).tolist()
            off += 4 * n_tok
            (slen,) = struct.unpack_from("<I", mv, off)
            sampler_state = bytes(mv[off + 4: off + 4 + slen])
            off += 4 + slen
            spans = []
            if version >= 2:
                (jlen,) = struct.unpack_from("<I", mv, off)
                spans = [MediaSpan(int(a), int(b), str(c)) for a, b, c in json.loads(bytes(mv[off + 4: off + 4 + jlen]))]
                off += 4 + jlen
                if any(sp.start < 0 or sp.n < 1 or sp.start + sp.n > n_tok for sp in spans):
                    raise SnapshotError("snapshot media spans fall outside its tokens")
            caches = []
            for l in sorted(self.model.kv):
                for t in self.model.kv[l][:2]:
                    (n,) = struct.unpack_from("<Q", mv, off)
                    if n != t.nbytes or off + 8 + n > len(mv):
                        raise SnapshotError(f"snapshot KV block for layer {l} has {n} bytes; expected {t.nbytes}")
                    caches.append((t, mv[off + 8: off + 8 + n]))
                    off += 8 + n
        except (struct.error, ValueError, TypeError) as e:
            raise SnapshotError(f"snapshot is truncated or damaged: {e}") from None
        if off != len(mv):
            raise SnapshotError(f"snapshot has {len(mv) - off} unexpected trailing bytes")
        if len(sampler_state) != slen or len(tokens) != n_tok:
            raise SnapshotError("snapshot is truncated")
        # Validated: now change state.
        self.settle()
        for t, raw in caches:
            self.device.write(t.buffer, raw)
        self.sampler.set_state(sampler_state)
        self.tokens = tokens
        self.spans = spans
        self.next_token = None if nxt < 0 else nxt
        if self.next_token is not None:
            self.device.write(self.model.decode.ids.buffer, np.array([self.next_token], np.uint32))
