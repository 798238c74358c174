"""The generation API used by the CLI and the web app: load a model, stream tokens, snapshot the state.

    engine = await Engine.load("gemma3:270m", max_context=4096)     # path, Ollama name, URL, or a Source
    async for tok in engine.chat([{"role": "user", "content": "Hi"}]):
        print(tok.text, end="")

One decode step is: write the 32-byte Step uniform (and, for Gemma 4, the token's per-layer-embedding row),
submit the recorded model graph and the recorded sampler graph in one command buffer, and read back the 4
bytes of the sampled token id. The sampled id is written by the GPU straight into the decode run's input, so
nothing else crosses between host and GPU per token.
"""

from __future__ import annotations

import hashlib
import json
import struct
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import assets, ollama
from .chat import chat_template_for
from .gguf_file import GGUFFile
from .gpu import Device, Readback, default_device
from .models.gemma import ContextOverflowError, Gemma
from .sampling import Sampler, SamplerParams
from .sources import Source
from .tokenizer import Tokenizer

__all__ = ["Engine", "Token", "HostTimes", "SnapshotError", "ContextOverflowError", "open_model_file"]

SNAPSHOT_MAGIC = b"RLMSNAP\x00"
SNAPSHOT_VERSION = 1


class SnapshotError(ValueError):
    """A state blob that does not belong to the loaded model (or is damaged)."""


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
class HostTimes:
    """Where the host's time goes in decode steps (Engine.step), accumulated until reset.

    `host` is everything a step does on the CPU, that is the whole step except the wait for the GPU's 4-byte
    result and the per-layer-embedding row read; `encode` is the part of it spent encoding the next step's
    command buffer (every dispatch of the model and the sampler), `write` writing the step's inputs (the Step
    uniform, the PLE row) and `submit` submitting the command buffer; the rest is the step's own Python.
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
        self._readback = Readback(self.device, 4, "token")
        self._decode_cb = None  # the next decode step's command buffer, encoded ahead
        self._fingerprint = b""
        self.stop_ids = frozenset(self.chat_template.stop_ids) | (
            {tokenizer.eos_id} if tokenizer.eos_id is not None else set()
        )

    # -- loading -------------------------------------------------------------------------------------------
    @classmethod
    async def load(cls, model, *, max_context: int = 4096, prefill_chunk: int = 64, device: Device | None = None,
                   params: SamplerParams | None = None, text_only: bool = True, progress=None) -> "Engine":
        """Open `model` (see open_model_file), upload its weights and record its graphs. `text_only` skips the
        vision and audio towers (the only mode until the towers land). `progress(done, total, name)` is called
        per tensor."""
        gf = await open_model_file(model)
        device = device or await default_device()
        tok = Tokenizer.from_gguf_metadata(gf.metadata)
        m = await Gemma.load(gf, device, max_context=max_context, prefill_chunk=prefill_chunk, progress=progress)
        params = params or SamplerParams()
        sampler = await Sampler.create(device, m.cfg.vocab_size, params, max_history=256)
        eng = cls(m, tok, sampler, params)
        eng.sample_graph = device.graph()
        await sampler.record(eng.sample_graph, m.logits, m.step, m.decode.ids)
        eng._fingerprint = await eng._weights_fingerprint()
        return eng

    @property
    def config(self):
        return self.model.cfg

    @property
    def max_context(self) -> int:
        return self.model.max_context

    @property
    def has_vision(self) -> bool:
        return self.model.cfg.vision is not None and "v.patch_embd.weight" in self.model.gguf

    @property
    def has_audio(self) -> bool:
        return self.model.cfg.audio is not None and any(n.startswith("a.") for n in self.model.gguf.tensors)

    def set_params(self, params: SamplerParams) -> None:
        self.params = params
        self.sampler.set_params(params)

    # -- the two primitive steps ---------------------------------------------------------------------------
    async def _sample_after(self, run, pos: int, n: int) -> int:
        seed, counter = self.sampler.rng_words()
        self.model.write_step(pos, n, seed, counter)
        self.sampler.advance()
        data = await self.device.run([run.graph, self.sample_graph], self._readback, (self.model.decode.ids.buffer, 0, 4))
        return int(np.frombuffer(data, np.uint32, 1)[0])

    async def feed(self, ids) -> int:
        """Append `ids` to the context (prefill in chunks) and sample the token that follows; returns it."""
        ids = [int(i) for i in ids]
        if not ids:
            raise ValueError("feed() needs at least one token")
        if self.next_token is not None:
            ids = [self.next_token] + ids  # the pending token goes in first
            self.next_token = None
        if len(self.tokens) + len(ids) > self.max_context:
            raise ContextOverflowError(
                f"{len(self.tokens) + len(ids)} tokens do not fit the context of {self.max_context} "
                "(start a new chat or load the model with a larger max_context)")
        self.sampler.set_history((self.tokens + ids)[-256:])
        m = self.model
        pos = len(self.tokens)
        while ids:
            run = m.prefill if len(ids) > 1 else m.decode
            chunk, ids = ids[: run.capacity], ids[run.capacity:]
            await m.write_inputs(run, chunk, pos)
            if ids:
                m.write_step(pos, len(chunk))
                self.device.submit(run.graph)
            else:
                self.next_token = await self._sample_after(run, pos, len(chunk))
            self.tokens += chunk
            pos += len(chunk)
        return self.next_token

    def _encode_decode_step(self):
        m = self.model
        return self.device.encode([m.decode.graph, self.sample_graph], self._readback, (m.decode.ids.buffer, 0, 4))

    async def step(self) -> int:
        """Feed the pending token and sample the next one (one decode step).

        The step's command buffer was encoded while the GPU ran the previous step (it does not depend on the
        token, which the GPU sampler wrote into the decode input itself); only the Step uniform and, for
        Gemma 4, the token's per-layer-embedding row are written now, and queue writes land before the
        submit that follows them."""
        if self.next_token is None:
            raise RuntimeError("nothing to continue: feed a prompt first")
        if len(self.tokens) + 1 > self.max_context:
            raise ContextOverflowError(f"the context of {self.max_context} tokens is full")
        clock = time.perf_counter
        t0 = clock()
        m, tok = self.model, self.next_token
        cb, self._decode_cb = self._decode_cb, None
        if cb is None:  # the first step after a prompt: nothing was encoded ahead
            cb = self._encode_decode_step()
        t_enc = clock() - t0
        t_ple = 0.0
        if m.cfg.ple_dim:
            t1 = clock()
            rows = await m.ple_rows(np.array([tok], np.uint32))
            t_ple = clock() - t1
        pos = len(self.tokens)
        seed, counter = self.sampler.rng_words()
        self.sampler.advance()
        t_sub = clock()
        if m.cfg.ple_dim:
            self.device.write(m.decode.ple.buffer, rows)
        m.write_step(pos, 1, seed, counter)
        t_written = clock()
        self.device.submit_encoded(cb)
        t1 = clock()
        self._decode_cb = self._encode_decode_step()  # overlaps with the GPU's work on this step
        t2 = clock()
        data = await self._readback.read(self.device, 4)
        t3 = clock()
        self.next_token = int(np.frombuffer(data, np.uint32, 1)[0])
        self.tokens.append(tok)
        t4 = clock()
        h = self.host_times
        h.steps += 1
        h.encode += t_enc + (t2 - t1)
        h.write += t_written - t_sub
        h.submit += t1 - t_written
        h.ple_read += t_ple
        h.host += (t2 - t0) - t_ple + (t4 - t3)
        h.wall += t4 - t0
        return self.next_token

    def reset(self) -> None:
        """Forget the context (the KV cache is simply overwritten from position 0)."""
        self.tokens = []
        self.next_token = None
        self.sampler.reset(self.params.seed)
        self.stats = Stats()

    # -- streaming generation ------------------------------------------------------------------------------
    async def generate(self, prompt, *, max_tokens: int = 256, stop_ids=None, continue_context: bool = False):
        """Stream Tokens for `prompt` (text or token ids). Text gets BOS when the context is empty. Stops on
        the model's end tokens (or `stop_ids`), after `max_tokens`, or when the context is full;
        `self.stats.finish_reason` says which."""
        if not continue_context:
            self.reset()
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt, add_bos=not self.tokens and self.next_token is None, parse_special=True)
        else:
            ids = list(prompt)
        async for t in self._stream(ids, max_tokens, stop_ids):
            yield t

    async def chat(self, messages, *, max_tokens: int = 512):
        """Stream the model's reply to `messages` (list of {"role", "content"}). The KV cache is reused for the
        longest prefix the new prompt shares with what is already in it, so a follow-up turn only prefills
        the new messages."""
        ids = self.chat_template.render(messages, add_generation_prompt=True)
        self._rewind_to_common_prefix(ids)
        async for t in self._stream(ids[len(self.tokens):], max_tokens, None):
            yield t

    def _rewind_to_common_prefix(self, ids) -> None:
        have = self.tokens + ([self.next_token] if self.next_token is not None else [])
        n = 0
        for a, b in zip(have, ids):
            if a != b:
                break
            n += 1
        n = min(n, len(ids) - 1, len(self.tokens))  # keep at least one token to feed
        if n < len(self.tokens) and not self.model.can_rewind(len(self.tokens), n):
            n = 0
        if n == 0:
            self.reset()
            return
        self.tokens = self.tokens[:n]
        self.next_token = None

    async def _stream(self, ids, max_tokens: int, stop_ids):
        stop = self.stop_ids if stop_ids is None else frozenset(stop_ids)
        st = self.stats = Stats()
        dec = self.tokenizer.stream_decoder()
        if max_tokens <= 0:
            st.finish_reason = "length"
            return
        t0 = time.perf_counter()
        tok = await self.feed(ids)
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
            tok = await self.step()
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
            "max_context": m.max_context,
        }
        h = hashlib.sha256(json.dumps(desc, sort_keys=True, default=str).encode())
        h.update(self._fingerprint)
        return h.digest()

    async def save_state(self) -> bytes:
        """One versioned blob: KV cache, tokens, pending token and sampler state."""
        m = self.model
        head = struct.pack("<8sI32sIIi", SNAPSHOT_MAGIC, SNAPSHOT_VERSION, self.layout_hash(), m.max_context,
                           len(self.tokens), -1 if self.next_token is None else self.next_token)
        parts = [head, np.asarray(self.tokens, np.uint32).tobytes()]
        sampler_state = await self.sampler.state()
        parts += [struct.pack("<I", len(sampler_state)), sampler_state]
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
        if version != SNAPSHOT_VERSION:
            raise SnapshotError(f"snapshot version {version} is not supported (this build reads {SNAPSHOT_VERSION})")
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
            caches = []
            for l in sorted(self.model.kv):
                for t in self.model.kv[l][:2]:
                    (n,) = struct.unpack_from("<Q", mv, off)
                    if n != t.nbytes or off + 8 + n > len(mv):
                        raise SnapshotError(f"snapshot KV block for layer {l} has {n} bytes; expected {t.nbytes}")
                    caches.append((t, mv[off + 8: off + 8 + n]))
                    off += 8 + n
        except (struct.error, ValueError) as e:
            raise SnapshotError(f"snapshot is truncated: {e}") from None
        if off != len(mv):
            raise SnapshotError(f"snapshot has {len(mv) - off} unexpected trailing bytes")
        if len(sampler_state) != slen or len(tokens) != n_tok:
            raise SnapshotError("snapshot is truncated")
        # Validated: now change state.
        for t, raw in caches:
            self.device.write(t.buffer, raw)
        self.sampler.set_state(sampler_state)
        self.tokens = tokens
        self.next_token = None if nxt < 0 else nxt
        if self.next_token is not None:
            self.device.write(self.model.decode.ids.buffer, np.array([self.next_token], np.uint32))
