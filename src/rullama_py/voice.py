"""Voice cloning for Kokoro: a gradient-free search over the 256 values of a voice's style vector, on the GPU.

    trainer = VoiceTrainer(speaker, target_pcm, rate=48000)        # a recording of the voice to clone
    info = await trainer.prepare()                                  # checks, target signature, start voice
    for _ in range(300):
        s = await trainer.step()                                    # s.loss, s.best, s.accepted, s.step_size
    pack = await trainer.voicepack()                                # float32 [510, 256], like a stock voice
    speaker.add_voice("my_voice", pack)

What is compared. Kokoro speaks the training text in a candidate voice; the loss is the mean squared difference
between that audio's timbre signature and the target's (ops/mel.py: the mean log-mel spectrum over active
frames, level-invariant). The signature ignores timing, so the target may say anything, and the durations a
candidate would predict cannot misalign anything: the training sentence keeps the start voice's durations.

How it searches (the seed system's (1+1) hill climb, on the GPU): a candidate is the best offset so far plus
Gaussian noise of scale `step_size` times a per-dimension scale (the spread of the stock voices at the training
sentence's row); it replaces the best if its loss is lower, else `step_size *= anneal`. With `population` K, K
candidates are drawn around the same best in one batch of GPU work and the lowest is taken (a (1+K) climb);
the step size anneals when none of them improves. One step uploads only 16-byte uniforms and reads back K floats:
the candidate is drawn by ops.style_perturb straight into Kokoro's style inputs, and the loss is computed on the
GPU. The noise is counter-based (seed, draw number): a seed gives the same climb on every device.

What is trained. "timbre" (the default) trains the first 128 values, which drive the decoder (the sound of the
voice); the prosody half (the last 128: pitch contour, energy, durations) stays the start voice's, and each step
reruns only the decoder and generator. "all" trains both halves and reruns the text run too.

The result. The search moves one offset; the voicepack is the start voice's pack with that offset added to every
row (a voicepack has a row per sentence length), so the clone speaks sentences of every length.

The start voice is the stock voice whose signature, speaking the training text, is nearest the target's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from . import g2p, ops
from .gpu import UNIFORM
from .models.kokoro import SAMPLE_RATE
from .ops.mel import MELS, mel_frames
from .ops.search import search_params_bytes
from .speaker import VOICE_DIM, Speaker

# The default training text: about four seconds of varied English sounds (vowels, fricatives, nasals, stops).
TRAIN_TEXTS = ("The quick brown fox jumps over the lazy dog.",
               "She sells sea shells, and a wise old owl hums a tune.")
# Thirds of a recording whose signatures are further apart than this (mean squared difference over the bands)
# sound like different people. Measured on Kokoro's real voices (docs/PERFORMANCE.md, voice cloning): one voice
# on two different 15 s texts 0.006 to 0.025; two different stock voices 0.31 (the closest pair of ten) to
# 0.76; a third of a recording (3 s and more) is noisier than a whole text, hence the margin both ways.
MULTI_SPEAKER_LOSS = 0.15
MULTI_SPEAKER_MIN_SECONDS = 9.0  # three parts of at least 3 s each
TIMBRE = "timbre"
ALL = "all"


class VoiceCloneError(ValueError):
    """A voice-cloning request that cannot be served (bad options, nothing to train on)."""


@dataclass
class TrainStep:
    """The outcome of one step: the step number (1 for the first), the lowest loss among its candidates, the best
    loss so far, whether a candidate was kept, the step size now (after annealing) and the step's wall time."""

    step: int
    loss: float
    best: float
    accepted: bool
    step_size: float
    seconds: float


@dataclass
class PreparedTraining:
    """What `prepare` found: the target's length after trimming, its warnings, the start voice and its loss, and
    every start candidate's loss (ascending)."""

    seconds: float
    start_voice: str
    start_loss: float
    distances: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)
    trimmed: tuple = (0.0, 0.0)
    phonemes: str = ""


class VoiceTrainer:
    """Clone a voice from a recording with Kokoro on the speaker's GPU (see the module docstring).

    target: float32 samples (mono, or [samples, channels]) at `rate`, or a media.VoiceTarget already prepared.
    texts: the training sentences (spoken together, at most 510 phonemes); start: "auto" (the nearest of
    `start_voices`, by default the stock voices of the texts' language) or a voice name; train: "timbre" or
    "all"; population: candidates per step; step_size, anneal: the search's step and its decay on a step that
    finds nothing better; seed: the noise stream; multi_speaker_loss: the distance between the signatures of a
    long recording's thirds above which it is said to sound like more than one speaker."""

    def __init__(self, speaker: Speaker, target, rate: int = SAMPLE_RATE, *, texts=TRAIN_TEXTS, lang: str = "en-us",
                 start: str = "auto", start_voices=None, train: str = TIMBRE, population: int = 1,
                 step_size: float = 0.25, anneal: float = 0.95, seed: int = 0,
                 multi_speaker_loss: float = MULTI_SPEAKER_LOSS):
        if train not in (TIMBRE, ALL):
            raise VoiceCloneError(f"train {train!r}: choose 'timbre' (the decoder half) or 'all' (the whole voice)")
        if not 1 <= int(population) <= 64:
            raise VoiceCloneError(f"population {population}: 1 to 64 candidates a step")
        if not (0 < float(step_size) <= 10):
            raise VoiceCloneError(f"step size {step_size}: a positive number up to 10")
        if not (0 < float(anneal) <= 1):
            raise VoiceCloneError(f"anneal {anneal}: a factor in (0, 1]")
        if isinstance(texts, str):
            texts = [texts]
        texts = [t.strip() for t in texts if t and t.strip()]
        if not texts:
            raise VoiceCloneError("there is no training text: give at least one sentence for the voice to speak")
        self.speaker = speaker
        self.model = speaker.model
        self.device = speaker.model.device
        self._target_in = (target, rate)
        self.texts = texts
        self.lang = lang
        self.start = start
        self.start_voices = list(start_voices) if start_voices else None
        self.train = train
        self.population = int(population)
        self.initial_step = float(step_size)
        self.anneal = float(anneal)
        self.seed = int(seed)
        self.multi_speaker_loss = float(multi_speaker_loss)
        self.prepared: PreparedTraining | None = None
        self.curve: list[float] = []  # the best loss after each step; curve[0] is the start voice's loss
        self.steps = 0
        self.step_size = self.initial_step
        self._ids: list[int] = []
        self._durations: np.ndarray | None = None
        self._graphs = None  # (the Kokoro run they were recorded for, perturb graph, signature graph, buffers)
        self._align_mark = -1  # Kokoro's align count after our last alignment

    # -- preparing -----------------------------------------------------------------------------------------
    async def prepare(self) -> PreparedTraining:
        """Check and measure the target, choose the start voice, evaluate it. Called by the first `step`. On an
        error (a bad target or text) the GPU buffers made so far are freed again."""
        if self.prepared is not None:
            return self.prepared
        try:
            return await self._prepare()
        except BaseException:
            self._free()
            raise

    async def _prepare(self) -> PreparedTraining:
        from . import media

        target, rate = self._target_in
        if not isinstance(target, media.VoiceTarget):
            if rate != SAMPLE_RATE:
                await media.load_resampler()  # scipy, loaded on first use in the browser
            target = media.prepare_voice_target(np.asarray(target, np.float32), rate)
        self.target = target
        dev = self.device
        self._tables = ops.mel_tables(dev)
        self._params = ops.search_params(dev, "voice.params")
        self._losses = dev.tensor((max(self.population, 64),), "float32", "voice.losses")
        self._signatures = dev.tensor((max(self.population, 64), MELS), "float32", "voice.signatures")
        self._goal = dev.tensor((MELS,), "float32", "voice.goal")
        self._best = dev.tensor((VOICE_DIM,), "float32", "voice.best")
        self._cand = dev.tensor((self.population, VOICE_DIM), "float32", "voice.candidates")
        self._base = dev.tensor((VOICE_DIM,), "float32", "voice.base")
        self._scale = dev.tensor((VOICE_DIM,), "float32", "voice.scale")

        # the target's signature, and of its thirds (one speaker?)
        self.target_signature = await self._signature_of(target.pcm)
        dev.write(self._goal.buffer, self.target_signature)
        warnings = []
        if target.truncated:
            warnings.append(f"Only the first {target.seconds:.0f} s of the recording are used.")
        if target.seconds >= MULTI_SPEAKER_MIN_SECONDS:
            thirds = np.array_split(target.pcm, 3)
            sigs = [await self._signature_of(p) for p in thirds]
            far = max(float(np.mean((a - b) ** 2)) for i, a in enumerate(sigs) for b in sigs[i + 1:])
            self.thirds_distance = far
            if far > self.multi_speaker_loss:
                warnings.append("The recording sounds like more than one speaker (its parts differ in timbre as "
                                "much as different voices do); the clone will be a blend. Use a recording of "
                                "one voice.")

        # the training text
        phonemes = []
        for text in self.texts:
            try:
                phonemes.append(await g2p.phonemize(text, self.lang))
            except g2p.G2PError as e:
                raise VoiceCloneError(f"the training text {text!r} cannot be read: {e}") from e
        ps = " ".join(p for p in phonemes if p)
        self._ids = g2p.tokenize(ps, self.speaker.vocab)
        if len(self._ids) < 2:
            raise VoiceCloneError("the training text has nothing Kokoro can say; give a sentence with words")
        if len(self._ids) > 510:
            raise VoiceCloneError(f"the training text has {len(self._ids)} phonemes; Kokoro speaks at most 510 at "
                                  "once: use fewer or shorter sentences")

        # the start voice: the nearest stock voice speaking the training text
        candidates = self._start_candidates()
        packs = np.stack([self.speaker.voice(v) for v in candidates])
        row = min(len(self._ids) - 1, packs.shape[1] - 1)
        ref = self.start if self.start != "auto" else candidates[0]
        self._row = row
        self.start_pack = self.speaker.voice(ref).copy()  # until the start is chosen: re-alignments use it
        self._durations = await self._align(self.start_pack[row])
        distances = {}
        if self.start == "auto" and len(candidates) > 1:
            losses = await self._evaluate_styles(packs[:, row])
            distances = dict(sorted(zip(candidates, losses), key=lambda kv: kv[1]))
            start = next(iter(distances))
        else:
            start = ref
        self.start_voice = start
        self.start_pack = self.speaker.voice(start).copy()
        # per-dimension step scale: the spread of the candidate voices at this row (all the stock voices of the
        # language when only one start voice was named)
        spread_from = packs if len(candidates) > 1 else np.stack([self.speaker.voice(v) for v in
                                                                  self._language_voices()])
        scale = spread_from[:, row].std(0).astype(np.float32)
        if self.train == TIMBRE:
            scale[VOICE_DIM // 2:] = 0.0
        self._scale_host = scale
        dev.write(self._scale.buffer, scale)
        dev.write(self._base.buffer, self.start_pack[row])
        dev.write(self._best.buffer, np.zeros(VOICE_DIM, np.float32))
        # the training sentence's timing: the start voice's own durations, kept for the whole climb
        self._durations = await self._align(self.start_pack[row])
        start_loss = (await self._evaluate([0.0]))[0]
        self.best_loss = start_loss
        self.curve = [start_loss]
        self.prepared = PreparedTraining(seconds=target.seconds, start_voice=start, start_loss=start_loss,
                                         distances=distances, warnings=warnings,
                                         trimmed=tuple(getattr(target, "trimmed", (0.0, 0.0))), phonemes=ps)
        return self.prepared

    def _language_voices(self) -> list[str]:
        """The stock voices that speak the training text's language: US and UK voices (a*, b*) for English
        (either accent: timbre is what is matched), every voice otherwise."""
        if not self.lang.startswith("en"):
            return self.speaker.voices
        return [v for v in self.speaker.voices if v[:1] in "ab"] or self.speaker.voices

    def _start_candidates(self) -> list[str]:
        if self.start != "auto":
            self.speaker.voice(self.start)  # an unknown name fails here
            return [self.start]
        names = self.start_voices or self._language_voices()
        for n in names:
            self.speaker.voice(n)
        return list(names)

    # -- GPU work ------------------------------------------------------------------------------------------
    async def _signature_of(self, pcm: np.ndarray) -> np.ndarray:
        return await recording_signature(self.device, pcm, self._tables)

    async def _align(self, style, durations=None) -> np.ndarray:
        dur = await self.model.align([0, *self._ids, 0], style, noise=1.0, seed=self.seed, durations=durations)
        self._align_mark = self.model.aligned
        return dur

    async def _ready_graphs(self):
        """The perturb and signature graphs for Kokoro's current recording; the training sentence's alignment is
        written again if the model has spoken something else since (reading aloud between steps)."""
        model = self.model
        if model.aligned != self._align_mark:
            await self._align(self.start_pack[self._row], self._durations)
        run = model._run
        if self._graphs is None or self._graphs[0] is not run:
            dev = self.device
            frames = mel_frames(run.bufs["audio"].shape[0])
            logmel = dev.tensor((frames, MELS), "float32", "voice.logmel")
            energy = dev.tensor((frames,), "float32", "voice.energy")
            g_sig = dev.graph()
            await ops.log_mel_frames(g_sig, run.bufs["audio"], model.audio_length, self._tables, logmel, energy)
            await ops.mel_signature(g_sig, logmel, energy, model.audio_length, self._goal, self._params,
                                    self._signatures, self._losses)
            g_pert = dev.graph()
            await ops.style_perturb(g_pert, self._params, self._base, self._best, self._scale, self._cand,
                                    model.style_dec, model.style_pros)
            if self._graphs is not None:
                for t in self._graphs[3]:
                    t.buffer.destroy()
            self._graphs = (run, g_pert, g_sig, (logmel, energy))
        return self._graphs

    async def _evaluate(self, steps, counter0: int = 0) -> list[float]:
        """Losses of candidates best + steps[k] * scale * noise(seed, counter0 + k), one batch of GPU work, one
        readback of len(steps) floats."""
        run, g_pert, g_sig, _ = await self._ready_graphs()
        dev, model = self.device, self.model
        for k, s in enumerate(steps):
            dev.write(self._params.buffer, search_params_bytes(self.seed, counter0 + k, k, s))
            dev.submit(g_pert)
            if self.train == ALL:
                model.rerun_text()
            model.submit_audio()
            dev.submit(g_sig)
        return [float(v) for v in (await dev.read(self._losses))[: len(steps)]]

    async def _evaluate_styles(self, styles: np.ndarray) -> list[float]:
        """Losses of whole style rows (the start candidates), on the current alignment."""
        run, _, g_sig, _ = await self._ready_graphs()
        dev, model = self.device, self.model
        losses = []
        for i in range(0, len(styles), self._losses.shape[0]):
            chunk = styles[i: i + self._losses.shape[0]]
            for k, s in enumerate(chunk):
                dev.write(model.style_dec.buffer, np.ascontiguousarray(s[: VOICE_DIM // 2]))
                dev.write(model.style_pros.buffer, np.ascontiguousarray(s[VOICE_DIM // 2:]))
                dev.write(self._params.buffer, search_params_bytes(self.seed, 0, k, 0.0))
                model.rerun_text()
                model.submit_audio()
                dev.submit(g_sig)
            losses += [float(v) for v in (await dev.read(self._losses))[: len(chunk)]]
        return losses

    # -- the search ----------------------------------------------------------------------------------------
    async def step(self) -> TrainStep:
        """One step of the climb: `population` candidates, keep the best if it beats the best so far, else
        anneal the step size."""
        await self.prepare()
        t0 = time.perf_counter()
        K = self.population
        losses = await self._evaluate([self.step_size] * K, counter0=self.steps * K)
        k = int(np.argmin(losses))
        accepted = losses[k] < self.best_loss
        if accepted:
            self.best_loss = losses[k]
            self.device.copy([(self._cand.buffer, k * VOICE_DIM * 4, self._best.buffer, 0, VOICE_DIM * 4)])
        else:
            self.step_size *= self.anneal
        self.steps += 1
        self.curve.append(self.best_loss)
        return TrainStep(self.steps, losses[k], self.best_loss, accepted, self.step_size, time.perf_counter() - t0)

    async def run(self, n: int, callback=None) -> tuple[np.ndarray, list[float]]:
        """n steps; returns the voicepack and the loss curve. callback(TrainStep) after each step."""
        for _ in range(int(n)):
            s = await self.step()
            if callback is not None:
                callback(s)
        return await self.voicepack(), list(self.curve)

    def reset(self) -> None:
        """Back to the start voice (the target and the start choice are kept)."""
        if self.prepared is None:
            return
        self.device.write(self._best.buffer, np.zeros(VOICE_DIM, np.float32))
        self.steps = 0
        self.step_size = self.initial_step
        self.best_loss = self.prepared.start_loss
        self.curve = [self.best_loss]

    # -- the result ----------------------------------------------------------------------------------------
    async def offset(self) -> np.ndarray:
        """The best offset found (float32 [256], added to the start voice's rows)."""
        await self.prepare()
        return (await self.device.read(self._best)).reshape(-1)[:VOICE_DIM].copy()

    async def voicepack(self) -> np.ndarray:
        """The clone as a voicepack, float32 [510, 256]: the start voice's pack plus the best offset in every row."""
        return (self.start_pack + (await self.offset())[None, :]).astype(np.float32)

    def settings(self) -> dict:
        """The options of this training, as saved beside a voice."""
        return dict(texts=list(self.texts), lang=self.lang, start=self.start, start_voice=getattr(self, "start_voice",
                    None), train=self.train, population=self.population, step_size=self.initial_step,
                    anneal=self.anneal, seed=self.seed)

    def release(self) -> None:
        """Free the trainer's GPU buffers (the speaker stays loaded)."""
        self._free()

    def _free(self) -> None:
        tables = getattr(self, "_tables", None)
        names = ("_params", "_losses", "_signatures", "_goal", "_best", "_cand", "_base", "_scale")
        owned = [getattr(self, n) for n in names if getattr(self, n, None) is not None]
        if tables is not None:
            owned += [tables.tables, tables.filterbank, tables.bands]
        if self._graphs is not None:
            owned += list(self._graphs[3])
        for t in owned:
            t.buffer.destroy()
        for n in ("_tables", *names):
            setattr(self, n, None)
        self._graphs = None
        self.prepared = None


async def recording_signature(device, pcm: np.ndarray, tables=None) -> np.ndarray:
    """The timbre signature (float32 [80]) of a recording (float32, 24 kHz) with the trainer's front end on the GPU
    (ops/mel.py), read back. `tables`: ops.mel_tables(device), made once by a caller that measures many."""
    own_tables = tables is None
    tables = ops.mel_tables(device) if own_tables else tables
    pcm = np.ascontiguousarray(pcm, np.float32).reshape(-1)
    x = device.upload(pcm, "signature.audio")
    length = device.tensor((8,), "uint32", "signature.length", usage=UNIFORM)  # a Step: n_tokens = the samples
    device.write(length.buffer, np.array([0, pcm.size, pcm.size, 0, 0, 0, 0, 0], np.uint32))
    frames = mel_frames(pcm.size)
    logmel = device.tensor((frames, MELS), "float32", "signature.logmel")
    energy = device.tensor((frames,), "float32", "signature.energy")
    params = ops.search_params(device, "signature.params")  # slot 0
    goal = device.tensor((MELS,), "float32", "signature.goal")  # the loss is not read here
    sig = device.tensor((1, MELS), "float32", "signature")
    loss = device.tensor((1,), "float32", "signature.loss")
    g = device.graph()
    await ops.log_mel_frames(g, x, length, tables, logmel, energy)
    await ops.mel_signature(g, logmel, energy, length, goal, params, sig, loss)
    device.submit(g)
    out = (await device.read(sig)).reshape(-1)[:MELS].copy()
    temporaries = [x, length, logmel, energy, params, goal, sig, loss]
    if own_tables:
        temporaries += [tables.tables, tables.filterbank, tables.bands]
    for t in temporaries:
        t.buffer.destroy()
    return out


def voice_distance(a: np.ndarray, b: np.ndarray) -> float:
    """The loss between two signatures: the mean squared difference over the bands."""
    return float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))


__all__ = ["VoiceTrainer", "VoiceCloneError", "TrainStep", "PreparedTraining", "TRAIN_TEXTS", "voice_distance",
           "recording_signature"]
