"""DiffusionGemma's entropy-bound block-diffusion sampler: text appears a whole canvas at a time and sharpens.

    diff = await Diffusion.load("diffusiongemma.gguf")
    await diff.start([{"role": "user", "content": "Hi"}], DiffusionParams(seed=1))
    async for s in diff.steps():
        print(s.block, s.step, s.mean_entropy, s.text)

A canvas of C positions starts as uniform random tokens. Each step (transformers' `generate`, see
reference notes in docs/ and models/diffusion_gemma.py):
1. the decoder reads the canvas (and the previous step's distribution, for self-conditioning) -> logits [C, V];
2. with t = t_min + (t_max - t_min) * cur_step / S (cur_step = S .. 1), per position: p = softmax(logits / t),
   its entropy, its argmax and one draw from p;
3. positions sorted by entropy are accepted while the entropies before them sum to at most `entropy_bound`;
   accepted positions keep their draw, all others get fresh uniform tokens;
4. the canvas is done when the argmax canvas equals the previous step's and the mean entropy is under
   `confidence_threshold`, or after S steps; its text is the argmax canvas. The encoder then writes the finished
   canvas into the cache and the next canvas starts after it, until end of sequence or max_new_tokens.

Steps 2-3 run on the GPU (ops/denoise.py) in the same submit as the decoder; per step only the canvas, the argmax
canvas, the accepted mask and three numbers come back (a few KB), never the [C, V] logits. The random draws come
from a counter-based generator seeded by `seed`, so a run is the same on every device; tests can instead write
recorded draws (`replay`) to replay transformers' own run exactly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from . import ops
from .chat import chat_template_for
from .gpu import Device, default_device
from .models.diffusion_gemma import DiffusionGemma, NotDiffusionModelError
from .models.gemma import ContextOverflowError
from .tokenizer import Tokenizer

__all__ = ["Diffusion", "DiffusionParams", "DiffusionStep", "DiffusionError", "NotDiffusionModelError",
           "ContextOverflowError"]

MAX_STEPS = 1000


class DiffusionError(ValueError):
    """A diffusion setting out of range, or a call out of order."""


@dataclass(frozen=True)
class DiffusionParams:
    """Sampler settings; None takes the model file's value (config.DiffusionConfig)."""

    steps: int | None = None  # S: denoising steps per canvas at most
    t_min: float | None = None
    t_max: float | None = None
    entropy_bound: float | None = None
    stability_threshold: int | None = None
    confidence_threshold: float | None = None
    max_new_tokens: int = 256
    seed: int = 0

    def resolved(self, cfg) -> "DiffusionParams":
        """These settings with the model's defaults filled in, checked."""
        d = cfg.diffusion
        p = DiffusionParams(
            steps=d.max_steps if self.steps is None else int(self.steps),
            t_min=d.t_min if self.t_min is None else float(self.t_min),
            t_max=d.t_max if self.t_max is None else float(self.t_max),
            entropy_bound=d.entropy_bound if self.entropy_bound is None else float(self.entropy_bound),
            stability_threshold=(d.stability_threshold if self.stability_threshold is None
                                 else int(self.stability_threshold)),
            confidence_threshold=(d.confidence_threshold if self.confidence_threshold is None
                                  else float(self.confidence_threshold)),
            max_new_tokens=int(self.max_new_tokens), seed=int(self.seed))
        if not 1 <= p.steps <= MAX_STEPS:
            raise DiffusionError(f"steps must be 1..{MAX_STEPS}, got {p.steps}")
        if not 0 < p.t_min <= p.t_max <= 100:
            raise DiffusionError(f"temperatures must satisfy 0 < t_min <= t_max <= 100, got {p.t_min} and {p.t_max}")
        if not p.entropy_bound >= 0:
            raise DiffusionError(f"entropy_bound must be 0 or more, got {p.entropy_bound}")
        if not 1 <= p.stability_threshold <= 16:
            raise DiffusionError(f"stability_threshold must be 1..16 steps, got {p.stability_threshold}")
        if not p.confidence_threshold >= 0:
            raise DiffusionError(f"confidence_threshold must be 0 or more, got {p.confidence_threshold}")
        if p.max_new_tokens < 1:
            raise DiffusionError(f"max_new_tokens must be at least 1, got {p.max_new_tokens}")
        return p

    def temperature(self, cur_step: int) -> float:
        """t for cur_step = steps .. 1 (transformers counts down)."""
        return self.t_min + (self.t_max - self.t_min) * cur_step / self.steps


@dataclass
class DiffusionStep:
    """What one denoising step did, for the page and the CLI."""

    block: int  # canvas index, from 0
    step: int  # 1-based step within this canvas
    steps: int  # the cap S
    temperature: float
    canvas: np.ndarray  # u32 [C]: the canvas after acceptance and renoising (the next step's input)
    argmax: np.ndarray  # u32 [C]: the most likely token per position (the text if the canvas stopped here)
    accepted: np.ndarray  # bool [C]
    n_accepted: int
    mean_entropy: float
    stable: bool  # the argmax canvas equals the previous step's (stability_threshold steps in a row)
    block_done: bool
    converged: bool  # stopped by the stable-and-confident rule, not by the step cap
    done: bool  # the whole generation ended (end of sequence, max_new_tokens, or cancelled)
    pieces: list = field(default_factory=list)  # the argmax canvas's tokens as text, one per position
    text: str = ""  # finished canvases + this argmax canvas, cut at end of sequence


class Diffusion:
    """A DiffusionGemma ready to generate. Create with `await Diffusion.load(model)`."""

    def __init__(self, model: DiffusionGemma, tokenizer: Tokenizer):
        self.model = model
        self.device: Device = model.device
        self.tokenizer = tokenizer
        self.chat_template = chat_template_for(tokenizer)
        cfg = model.cfg
        self.canvas_length = model.canvas_length
        self.eos_ids = frozenset(self.chat_template.stop_ids) | (
            {tokenizer.eos_id} if tokenizer.eos_id is not None else set())
        self.pad_id = tokenizer.pad_id if getattr(tokenizer, "pad_id", None) is not None else 0
        self.params = DiffusionParams().resolved(cfg)
        self.denoiser: ops.Denoiser | None = None  # made in load
        self.sample_graph = self.init_graph = None
        # Tests: an object with initial() -> a canvas and step_noise() -> (uniforms [C], renoise tokens [C]),
        # replaying recorded draws instead of the seeded generator's.
        self.replay = None
        self._reset_generation()

    def _reset_generation(self) -> None:
        self.pos = 0  # cache positions written by the encoder
        self.block = 0
        self.cur_step = 0  # counts down from steps; 0: no canvas in progress
        self.history_stable = 0
        self.output: list[int] = []  # finished canvases' tokens (cut at end of sequence)
        self.finished = True
        self._cancel = False
        self.forwards = 0
        self.seconds = 0.0
        self._draw = 0  # the noise generator's counter

    @classmethod
    async def load(cls, model, *, max_context: int = 4096, prefill_chunk: int | None = None, device: Device | None = None,
                   progress=None) -> "Diffusion":
        """Open `model` (a path, URL, Ollama name or Source, as Engine.load), upload its weights and record the
        encoder, the decoder and the sampler."""
        from .engine import open_model_file

        gf = await open_model_file(model)
        device = device or await default_device()
        tok = Tokenizer.from_gguf_metadata(gf.metadata)
        m = await DiffusionGemma.load(gf, device, max_context=max_context, prefill_chunk=prefill_chunk,
                                      progress=progress)
        diff = cls(m, tok)
        await diff._record_sampler()
        return diff

    @property
    def config(self):
        return self.model.cfg

    @property
    def max_context(self) -> int:
        return self.model.max_context

    # -- the sampler's GPU state ---------------------------------------------------------------------------
    async def _record_sampler(self) -> None:
        m, dev = self.model, self.device
        self.denoiser = ops.Denoiser(dev, self.canvas_length, m.cfg.vocab_size)
        self.sample_graph = dev.graph()  # after the decoder: probabilities, entropies, draws, acceptance
        await self.denoiser.record(self.sample_graph, m.logits, m.decoder.ids)
        self.init_graph = dev.graph()  # a new random canvas straight into the decoder's input
        await self.denoiser.record_init(self.init_graph, m.decoder.ids)

    # -- generating ----------------------------------------------------------------------------------------
    def prompt_ids(self, prompt) -> list[int]:
        """A chat (list of messages) in the model's chat format, a raw string, or token ids as they are."""
        if isinstance(prompt, (list, tuple, np.ndarray)) and all(isinstance(t, (int, np.integer)) for t in prompt):
            ids = [int(t) for t in prompt]
            if ids and not 0 <= min(ids) <= max(ids) < self.model.cfg.vocab_size:
                raise DiffusionError(f"prompt token ids must be in 0..{self.model.cfg.vocab_size - 1}")
            return ids
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt, add_bos=self.tokenizer.bos_id is not None)
        return list(self.chat_template.render(prompt, add_generation_prompt=True))

    async def start(self, prompt, params: DiffusionParams | None = None) -> None:
        """Encode the prompt (the cache is rebuilt from position 0) and set up the first canvas."""
        self.params = (params or DiffusionParams()).resolved(self.model.cfg)
        ids = self.prompt_ids(prompt)
        if not ids:
            raise DiffusionError("the prompt is empty")
        self._reset_generation()
        if len(ids) + self.canvas_length > self.max_context:
            raise ContextOverflowError(f"the prompt's {len(ids)} tokens and a canvas of {self.canvas_length} exceed "
                                       f"the context of {self.max_context} tokens")
        t0 = time.perf_counter()
        self.pos = await self.model.encode(ids, 0)
        self.prompt_len = len(ids)
        self.finished = False
        self._new_canvas()
        self.seconds += time.perf_counter() - t0

    def _new_canvas(self) -> None:
        """A canvas of uniform random tokens at the positions after the cache; no self-conditioning yet."""
        m, p = self.model, self.params
        self.cur_step = p.steps
        self.history_stable = 0
        self.new_canvas = True
        m.set_canvas_step(self.pos)
        m.clear_self_conditioning()
        if self.replay is not None:  # tests: transformers' own initial canvas
            self.device.write(m.decoder.ids.buffer, np.asarray(self.replay.initial(), np.uint32))
            return
        self.denoiser.set_step(temperature=1.0, entropy_bound=0.0, seed=p.seed, counter=self._next_counter(),
                               init_canvas=True)
        self.device.submit(self.init_graph)

    def _next_counter(self) -> int:
        """The noise generator's counter for the next draw: every canvas and every step draws afresh."""
        self._draw += 1
        return self._draw

    async def step(self) -> DiffusionStep:
        """One denoising step of the current canvas (and, when it finishes, the encoder over it and the next
        canvas's start)."""
        if self.finished:
            raise DiffusionError("no generation in progress: call start() first")
        p, m, dn = self.params, self.model, self.denoiser
        t0 = time.perf_counter()
        cur = self.cur_step
        t = p.temperature(cur)
        if self.replay is not None:  # tests: transformers' recorded uniforms and renoise tokens for this step
            dn.write_noise(*self.replay.step_noise())
        dn.set_step(temperature=t, entropy_bound=p.entropy_bound, seed=p.seed, counter=self._next_counter(),
                    new_canvas=self.new_canvas, host_noise=self.replay is not None)
        self.new_canvas = False
        data = await self.device.run([m.decoder.graph, self.sample_graph], dn.readback, dn.report_source)
        self.forwards += 1
        rep = dn.parse(data)
        self.history_stable = self.history_stable + 1 if rep.stable else 0
        converged = self.history_stable >= p.stability_threshold and rep.mean_entropy < p.confidence_threshold
        self.cur_step -= 1
        block_done = converged or self.cur_step == 0 or self._cancel
        argmax = rep.argmax
        done = False
        out = DiffusionStep(block=self.block, step=p.steps - cur + 1, steps=p.steps, temperature=t,
                            canvas=rep.canvas, argmax=argmax, accepted=rep.accepted, n_accepted=rep.n_accepted,
                            mean_entropy=rep.mean_entropy, stable=rep.stable, block_done=block_done,
                            converged=converged, done=False)
        if block_done:
            tokens = [int(x) for x in argmax]
            eos_at = next((i for i, x in enumerate(tokens) if x in self.eos_ids), None)
            room = p.max_new_tokens - len(self.output)
            kept = tokens[: eos_at if eos_at is not None else len(tokens)][:room]
            self.output.extend(kept)
            done = self._cancel or eos_at is not None or len(self.output) >= p.max_new_tokens
            if not done:
                self.pos = await m.encode(tokens, self.pos)
                if self.pos + self.canvas_length > self.max_context:
                    done = True  # the next canvas would not fit the context
                else:
                    self.block += 1
                    self._new_canvas()
            if done:
                self.finished = True
        out.done = done
        out.pieces = [self.tokenizer.decode([int(x)]) for x in argmax]
        out.text = self._text(None if block_done else argmax)
        self.seconds += time.perf_counter() - t0
        return out

    async def steps(self):
        """Every step until the generation ends."""
        while not self.finished:
            yield await self.step()

    def cancel(self) -> None:
        """End after the current step (its canvas's argmax is kept)."""
        self._cancel = True

    def _text(self, current=None) -> str:
        ids = list(self.output)
        if current is not None:
            tokens = [int(x) for x in current]
            eos_at = next((i for i, x in enumerate(tokens) if x in self.eos_ids), None)
            ids += tokens[: eos_at if eos_at is not None else len(tokens)]
        return self.tokenizer.decode(ids)

    @property
    def text(self) -> str:
        return self._text()

    @property
    def stats(self) -> dict:
        tokens = len(self.output)
        return dict(forwards=self.forwards, tokens=tokens,
                    tokens_per_forward=tokens / self.forwards if self.forwards else 0.0, seconds=self.seconds)


