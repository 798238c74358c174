"""Token sampling on the GPU: per decoded token only the sampled id (4 bytes) is read back.

Semantics: llama.cpp's default sampler chain (common/common.h: penalties, top_k, top_p, min_p, temperature,
then `dist`; src/llama-sampling.cpp), with the stages we support:

0. optional logit soft-cap `c * tanh(x / c)` (Gemma's final_logit_softcapping), applied before everything;
1. repetition penalty: each distinct token among the last `repetition_last_n` sampled (or `set_history`)
   tokens gets logit / penalty if logit > 0, else logit * penalty (llama.cpp's rule; we multiply by
   1 / penalty, which can differ from the division in the last bit);
2. top-k on the penalised logits (ties: lower id first);
3. top-p: keep the shortest prefix (in that order) whose softmax mass reaches top_p (at least one token);
4. min-p: keep tokens with logit >= max logit + log(min_p);
5. temperature: divide by `temperature` and draw from the softmax of what is left.

As in llama.cpp, top-p and min-p see the *untempered* logits (the temperature sampler comes last in its
chain). `temperature_first=True` gives the other common convention (Hugging Face's warpers, where top-p and
min-p see logits / temperature). temperature == 0 is greedy: the exact argmax of the (soft-capped, penalised)
logits, lowest id on ties.

The draw is reproducible: its uniform number is a pure function of (seed, counter), a PCG-style hash written
in WGSL (shaders/sample_lib.wgsl) and mirrored bit for bit in numpy (tests/reference_sampling.py), so a seed
gives the same tokens natively and in the browser. The sampler's host-side counter advances by one per
sampled token; `Sampler.prepare(step)` writes (seed, counter) into the `Step` uniform and advances it.

Algorithm (2 dispatches per token):

- stage 1, shaders/sample_select.wgsl, NSLICE = ceil(V / 2048) workgroups (128 for a 262144 vocabulary);
  workgroup w owns the tokens w, w + NSLICE, w + 2 NSLICE, ... Interleaving matters: an LM's likely tokens
  cluster in id ranges (in Gemma 3 270M's first-step logits, ids 0..2047 hold 57 to 87 of the top 256),
  which would overload contiguous slices. Each workgroup loads its 2048 logits into workgroup memory,
  applies soft-cap and penalty (the penalised tokens are marked in a bit set from the GPU-side history),
  and finds its top 256 by radix select (8 bits per pass, 3 barriers per pass, usually 2-4 passes) on
  64-bit composite keys (order-preserving float bits, ~id), so that ties resolve to the lower id and no two
  keys are equal. A second radix select over those 256 finds its top HEADS; the list is written heads
  first, then the largest of the rest, then the rest.
- stage 2, shaders/sample_draw.wgsl, one workgroup: radix-select the top 256 among the heads of all lists
  (HEADS = 8 for 128 lists: 1024 keys in workgroup memory). If no list's largest non-head reaches that
  threshold, those are exactly the global top 256; otherwise (one list holds more than HEADS of the top
  256: about 4% of draws for randomly placed top tokens, none of the three Gemma prompts) it selects over all
  128 x 256 candidates instead, a few microseconds slower but exact.
  Then it bitonic-sorts the 256, applies top-k / top-p / min-p / temperature with workgroup prefix sums,
  draws, writes the token id and appends it to the history ring buffer.

Greedy fast path (2 dispatches, shaders/sample_argmax.wgsl). With temperature 0 and no repetition penalty in
effect (`Sampler.fast_greedy`) the token is just the argmax: `record_greedy` records a graph that computes it
without the selections and the sort. Its first dispatch has ceil(V / 2048) workgroups (128 for a 262144
vocabulary), each reducing 2048 contiguous logits (8 per invocation, loaded before any is compared) to its best
composite key; the second, one workgroup, reduces those, writes the token id and appends it to the history like
stage 2, so the GPU history stays right for a later switch to penalised sampling. It gives exactly the token of
the full path: the soft-cap is applied by the same WGSL function (distinct logits can round to one capped value,
so an argmax of the raw logits could differ from the capped one's lowest id), the keys are the same, and NaN is
ranked by its bits in both (order_key: a NaN with the sign bit clear above +inf, one with it set below -inf).
The random stream is not used, but the caller still advances the counter per token (`prepare`), so a later
switch to sampling draws the same numbers either way.

Measured with tools/bench_sampling.py on an H100 (wgpu-native over Vulkan), V = 262144: about 11 us of GPU
time per token (stage 1 ~5.5 us, stage 2 ~5 us), about 20 us when stage 2 takes its fallback; lavapipe on
two CPU cores needs about 0.2 s.

Candidate cap. Only the CAND = 256 largest penalised logits are ever candidates, so top_k is limited to 256
(a larger value raises ValueError) and top_k = 0 means "all of the top 256", not llama.cpp's "all V". With
top_k in 1..256 (llama.cpp's default 40, Gemma's recommended 64) the result is exact. With top_k = 0 the
difference is confined to the tail: tokens ranked below 256 are never drawn. Let eps be the probability mass
of that tail (1 - the top 256's share of the softmax). With top_p = 1 and min_p = 0 the draw distribution
differs from llama.cpp's by a total-variation distance of exactly eps (at the draw temperature). With
top_p < 1, top-p normalises over the top 256 only, so its prefix can be shorter than llama.cpp's (never
longer), by about top_p * eps of probability mass at most (eps at the scale top-p sees). min-p keeps the
tokens with p >= min_p * p_max; if that set has at most 256 tokens and lies inside our top-p prefix, the
result is exact. Measured on Gemma 3 270M's
first-step logits for the three prompts of tests/goldens/gemma3_270m_llamacpp_logits.npz: eps = 0.4%, 0.4%,
0.0% at temperature 0.7 and 6.3%, 14.1%, 0.0% at temperature 1.0 (a top 1024 would still miss 1.8% and
7.5%): so top_k = 0 with top_p = 1 and min_p = 0 is a real approximation at temperature >= 1, while with
min_p = 0.05 (llama.cpp's default) all three prompts keep exactly llama.cpp's token set (17, 2 and 1 tokens).
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass

import numpy as np

from .gpu import STORAGE, UNIFORM, Device, Graph, Tensor

CAND = 256    # candidates kept for the filters (== the kernels' workgroup size)
SLICE = 2048  # most tokens per stage-1 workgroup (8 KiB of workgroup memory)
POOL = 1024   # keys stage 2 holds in workgroup memory: NSLICE * HEADS <= POOL
WG = 256
ARGMAX_ITEMS = 8  # logits per invocation in the greedy path's first dispatch (WG * ARGMAX_ITEMS per workgroup)
MAX_INV_TEMP = 1e30  # cap on 1 / temperature (f32 range): tinier temperatures act greedily, exact ties drawn at random

_F_GREEDY, _F_TOP_P, _F_MIN_P, _F_PENALTY, _F_SOFTCAP = 1, 2, 4, 8, 16
_STATE_MAGIC = b"RLSM"
_STATE_VERSION = 1
_STEP_RNG_OFFSET = 12  # byte offset of Step.seed (then Step.counter) in shaders/common.wgsl's Step


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _is_real(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_))


@dataclass(frozen=True)
class SamplerParams:
    """Sampling parameters (llama.cpp's defaults). Invalid values raise ValueError when constructed.

    temperature: 0 = greedy (argmax); > 0 divides the logits before the draw.
    top_k: keep the k most likely tokens, 1..256; 0 = all of the top 256 (see the module docstring).
    top_p: nucleus sampling, in (0, 1]; 1 disables it.
    min_p: drop tokens less likely than min_p times the most likely one, in [0, 1]; 0 disables it.
    repetition_penalty: in [1e-6, 1e6]; 1 disables it, > 1 discourages repeats.
    repetition_last_n: how many recent tokens are penalised; 0 disables, -1 = the whole history kept.
    seed: 0..2**32-1, or None for a random one (chosen once, see Sampler.seed).
    temperature_first: apply the temperature before top-p / min-p (Hugging Face order) instead of last.
    """

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repetition_penalty: float = 1.0
    repetition_last_n: int = 64
    seed: int | None = None
    temperature_first: bool = False

    def __post_init__(self):
        self.validate()

    def validate(self, max_history: int | None = None) -> None:
        """Raise ValueError naming the first invalid field. With `max_history`, also check that the
        penalised window fits the sampler's history."""

        def real(name, lo, hi, lo_open=False, hi_open=False):
            v = getattr(self, name)
            if not _is_real(v) or not math.isfinite(float(v)):
                raise ValueError(f"SamplerParams.{name} must be a finite number, got {v!r}")
            v = float(v)
            if (v <= lo if lo_open else v < lo) or (v >= hi if hi_open else v > hi):
                lb, rb = "(" if lo_open else "[", ")" if hi_open else "]"
                raise ValueError(f"SamplerParams.{name} must be in {lb}{lo}, {hi}{rb}, got {v!r}")

        real("temperature", 0.0, math.inf, hi_open=True)
        if not _is_int(self.top_k) or not 0 <= self.top_k <= CAND:
            raise ValueError(
                f"SamplerParams.top_k must be an integer in 0..{CAND} (0 = all of the top {CAND} "
                f"candidates; the GPU sampler keeps at most {CAND}), got {self.top_k!r}"
            )
        real("top_p", 0.0, 1.0, lo_open=True)
        real("min_p", 0.0, 1.0)
        real("repetition_penalty", 1e-6, 1e6)
        if not _is_int(self.repetition_last_n) or self.repetition_last_n < -1:
            raise ValueError(
                f"SamplerParams.repetition_last_n must be an integer >= -1 (-1 = whole history, 0 = off), "
                f"got {self.repetition_last_n!r}"
            )
        if max_history is not None and self.repetition_last_n > max_history:
            raise ValueError(
                f"SamplerParams.repetition_last_n={self.repetition_last_n} exceeds the sampler's history of "
                f"{max_history} tokens (create the Sampler with a larger max_history)"
            )
        if self.seed is not None and (not _is_int(self.seed) or not 0 <= self.seed < 2**32):
            raise ValueError(f"SamplerParams.seed must be None or an integer in 0..2**32-1, got {self.seed!r}")
        if not isinstance(self.temperature_first, (bool, np.bool_)):
            raise ValueError(f"SamplerParams.temperature_first must be a bool, got {self.temperature_first!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def _penalised_window(p: SamplerParams, max_history: int) -> int:
    return max_history if p.repetition_last_n == -1 else int(p.repetition_last_n)


def penalty_applies(p: SamplerParams, max_history: int) -> bool:
    """Whether the repetition penalty changes any logit: a penalty other than 1 over a window of >= 1 token."""
    return float(p.repetition_penalty) != 1.0 and _penalised_window(p, max_history) > 0


def pack_params(p: SamplerParams, max_history: int, softcap: float | None = None) -> bytes:
    """The 48-byte SampleParams uniform (shaders/sample_lib.wgsl)."""
    t = float(p.temperature)
    inv_temp = min(1.0 / t, MAX_INV_TEMP) if t > 0 else 0.0
    pen = float(p.repetition_penalty)
    last_n = _penalised_window(p, max_history)
    flags = 0
    if p.greedy:
        flags |= _F_GREEDY
    if p.top_p < 1.0:
        flags |= _F_TOP_P
    if p.min_p > 0.0:
        flags |= _F_MIN_P
    if penalty_applies(p, max_history):
        flags |= _F_PENALTY
    if softcap:
        flags |= _F_SOFTCAP
    return struct.pack(
        "<6f3I2fI",
        inv_temp,
        inv_temp if p.temperature_first else 1.0,
        float(p.top_p),
        math.log(p.min_p) if p.min_p > 0 else 0.0,
        1.0 / pen,
        pen,
        int(p.top_k),
        last_n,
        flags,
        float(softcap or 0.0),
        1.0 / softcap if softcap else 0.0,
        0,
    )


class Sampler:
    """GPU token sampler. `await Sampler.create(device, vocab_size, params, max_history)`, then record it once
    into the decode graph with `await sampler.record(g, logits, step, out_token)`; before each run call
    `sampler.prepare(step)` (writes the seed and counter into the Step uniform and advances the counter).
    The token history for the repetition penalty lives on the GPU: every run appends its sampled token.

    Greedy fast path: `await sampler.record_greedy(g, logits, out_token)` records the plain argmax; a caller that
    holds both graphs runs that one while `sampler.fast_greedy` is true (the same token, fewer GPU
    microseconds)."""

    def __init__(self, device: Device, vocab_size: int, max_history: int, softcap: float | None):
        self.device = device
        self.vocab_size = vocab_size
        self.max_history = max_history
        self.softcap = softcap
        self.nslice = -(-vocab_size // SLICE)
        self.heads = min(CAND, POOL // self.nslice)
        if self.heads < 1:
            raise ValueError(f"vocab_size={vocab_size} is too large for the GPU sampler (at most {POOL * SLICE})")
        self.ktot = min(CAND, vocab_size)
        # Workgroup w of stage 1 owns tokens w, w + nslice, ...; stage 2's first selection needs at least KTOT
        # real keys among the heads.
        sizes = [(vocab_size - w + self.nslice - 1) // self.nslice for w in range(self.nslice)]
        assert max(sizes) <= SLICE and sum(min(self.heads, CAND, n) for n in sizes) >= self.ktot
        self.params: SamplerParams | None = None
        self.seed = 0
        self.counter = 0
        self.params_buf = device.create_buffer(48, UNIFORM, "sampler.params")
        self.hist_buf = device.create_buffer((2 + max_history) * 4, STORAGE, "sampler.history")
        self.cand_buf = device.create_buffer(self.nslice * CAND * 8, STORAGE, "sampler.candidates")
        self.argmax_part = WG * ARGMAX_ITEMS  # logits per workgroup of the greedy path's first dispatch
        self.argmax_parts = -(-vocab_size // self.argmax_part)
        self.part_buf = device.create_buffer(self.argmax_parts * 8, STORAGE, "sampler.argmax_partials")

    @classmethod
    async def create(
        cls,
        device: Device,
        vocab_size: int,
        params: SamplerParams | None = None,
        max_history: int = 256,
        softcap: float | None = None,
    ) -> "Sampler":
        """A sampler for logits of `vocab_size` entries. `softcap`: Gemma's final logit soft-cap (e.g. 30.0),
        or None. `max_history`: tokens kept for the repetition penalty (>= repetition_last_n)."""
        if not _is_int(vocab_size) or vocab_size < 1:
            raise ValueError(f"vocab_size must be a positive integer, got {vocab_size!r}")
        if not _is_int(max_history) or max_history < 1:
            raise ValueError(f"max_history must be a positive integer, got {max_history!r}")
        if softcap is not None and (not _is_real(softcap) or not math.isfinite(softcap) or softcap <= 0):
            raise ValueError(f"softcap must be None or a finite number > 0, got {softcap!r}")
        self = cls(device, int(vocab_size), int(max_history), None if softcap is None else float(softcap))
        self.set_params(params if params is not None else SamplerParams())
        self.reset()
        await self._kernels(0)  # compile now, not at the first record
        return self

    # -- parameters and random stream ----------------------------------------------------------------------
    def set_params(self, params: SamplerParams) -> None:
        """Switch parameters without re-recording (rewrites a 48-byte uniform). A seed different from the
        current one restarts the random stream (counter 0); seed None keeps the current stream."""
        if not isinstance(params, SamplerParams):
            raise TypeError(f"expected SamplerParams, got {type(params).__name__}")
        params.validate(self.max_history)
        if params.seed is not None and (self.params is None or params.seed != self.seed):
            self.seed, self.counter = int(params.seed), 0
        elif self.params is None:
            self.seed, self.counter = int.from_bytes(os.urandom(4), "little"), 0
        self.params = params
        self.device.write(self.params_buf, pack_params(params, self.max_history, self.softcap))

    @property
    def fast_greedy(self) -> bool:
        """True when the parameters make the token the argmax of the (soft-capped) logits: temperature 0 and no
        repetition penalty in effect. Then the graph of `record_greedy` gives the token `record`'s would."""
        p = self.params
        return p is not None and p.greedy and not penalty_applies(p, self.max_history)

    def rng_words(self) -> tuple[int, int]:
        """(seed, counter) for the next draw: what `prepare` writes into Step.seed and Step.counter."""
        return self.seed, self.counter

    def advance(self, n: int = 1) -> None:
        self.counter = (self.counter + n) & 0xFFFFFFFF

    def prepare(self, step) -> None:
        """Write (seed, counter) into the Step uniform (a Tensor or buffer; bytes 12..20) and advance the
        counter. Call once before each run that samples."""
        buf = step.buffer if isinstance(step, Tensor) else step
        self.device.write(buf, np.array(self.rng_words(), np.uint32), offset=_STEP_RNG_OFFSET)
        self.advance()

    # -- recording -----------------------------------------------------------------------------------------
    async def _kernels(self, row: int):
        common = dict(CAND=CAND, WG=WG)  # the pipelines depend on the vocabulary (and logits row) only
        k1 = await self.device.kernel(
            "sample_select",
            libs=("sample_lib",),
            V=self.vocab_size,
            NSLICE=self.nslice,
            SLICE=SLICE,
            HEADS=self.heads,
            ROW_OFFSET=row * self.vocab_size,
            **common,
        )
        k2 = await self.device.kernel(
            "sample_draw",
            libs=("sample_lib", "sample_history"),
            NSLICE=self.nslice,
            KTOT=self.ktot,
            HEADS=self.heads,
            NHEAD=self.nslice * self.heads,
            **common,
        )
        return k1, k2

    async def _greedy_kernels(self, row: int):
        consts = dict(V=self.vocab_size, ROW_OFFSET=row * self.vocab_size, WG=WG, ITEMS=ARGMAX_ITEMS,
                      PART=self.argmax_part, NPART=self.argmax_parts)
        libs = ("sample_lib", "sample_best", "sample_history")
        k1 = await self.device.kernel("sample_argmax", libs=libs, entry="partials", **consts)
        k2 = await self.device.kernel("sample_argmax", libs=libs, entry="finish", **consts)
        return k1, k2

    def _check_record(self, logits: Tensor, out_token: Tensor, row: int) -> None:
        v = self.vocab_size
        n = int(np.prod(logits.shape)) if logits.shape else 1
        if logits.dtype != "float32" or not _is_int(row) or row < 0 or n < (row + 1) * v:
            raise ValueError(f"logits {logits.shape} {logits.dtype}: need float32 with at least {row + 1} rows of {v}")
        if isinstance(out_token, Tensor) and np.dtype(out_token.dtype).itemsize != 4:
            raise ValueError(f"out_token must be a 4-byte integer tensor, got {out_token.dtype}")

    async def record(self, g: Graph, logits: Tensor, step, out_token: Tensor, row: int = 0) -> None:
        """Record the 2 sampling dispatches: sample row `row` of `logits` (f32, rows of vocab_size) and write
        the token id to out_token[0] (a 4-byte integer tensor). `step`: the Step uniform (shaders/common.wgsl)."""
        self._check_record(logits, out_token, row)
        k1, k2 = await self._kernels(row)
        g.add(k1, [logits, self.params_buf, self.hist_buf, self.cand_buf], self.nslice)
        g.add(k2, [self.cand_buf, self.params_buf, step, self.hist_buf, out_token], 1)

    async def record_greedy(self, g: Graph, logits: Tensor, out_token: Tensor, row: int = 0) -> None:
        """Record the greedy fast path's 2 dispatches (see the module docstring): the argmax of row `row` of
        `logits`, soft-capped when the sampler has a cap, lowest id on ties, into out_token[0], appended to the
        history. Gives the token `record`'s graph gives while `fast_greedy` holds; with other parameters it
        still gives the argmax, whatever they say (the caller picks the graph)."""
        self._check_record(logits, out_token, row)
        k1, k2 = await self._greedy_kernels(row)
        g.add(k1, [logits, self.params_buf, self.part_buf], self.argmax_parts)
        g.add(k2, [self.part_buf, self.hist_buf, out_token], 1)

    # -- history and state ---------------------------------------------------------------------------------
    def set_history(self, tokens) -> None:
        """Replace the GPU history with `tokens` (oldest first; e.g. the prompt, which llama.cpp also feeds to
        its penalty sampler). Only the last max_history are kept."""
        t = np.asarray(list(tokens) if not isinstance(tokens, np.ndarray) else tokens).reshape(-1)
        if t.size and (not np.issubdtype(t.dtype, np.integer) or t.min() < 0 or t.max() >= self.vocab_size):
            raise ValueError(f"history tokens must be integer ids in 0..{self.vocab_size - 1}")
        t = t[-self.max_history :].astype(np.uint32)
        buf = np.zeros(2 + self.max_history, np.uint32)
        buf[0] = t.size
        buf[1] = t.size % self.max_history
        buf[2 : 2 + t.size] = t
        self.device.write(self.hist_buf, buf)

    def reset(self, seed: int | None = None) -> None:
        """Empty the history and restart the random stream (with `seed` when given)."""
        if seed is not None:
            if not _is_int(seed) or not 0 <= seed < 2**32:
                raise ValueError(f"seed must be an integer in 0..2**32-1, got {seed!r}")
            self.seed = int(seed)
        self.counter = 0
        self.set_history([])

    async def history(self) -> np.ndarray:
        """The tokens in the GPU history, oldest first (reads the GPU; for tests and snapshots)."""
        raw = await self.device.read(self.hist_buf, np.uint32)
        count, nxt = int(min(raw[0], self.max_history)), int(raw[1]) % self.max_history
        ring = raw[2 : 2 + self.max_history]
        return ring[(nxt - count + np.arange(count)) % self.max_history].copy()

    async def state(self) -> bytes:
        """Seed, counter and history as bytes (for snapshots; restore with set_state). Reads the GPU."""
        h = await self.history()
        return struct.pack("<4s5I", _STATE_MAGIC, _STATE_VERSION, self.seed, self.counter, self.vocab_size, h.size) + h.astype("<u4").tobytes()

    def set_state(self, data: bytes) -> None:
        """Restore what `state()` returned (the parameters are not part of it)."""
        data = bytes(data)
        head = struct.calcsize("<4s5I")
        if len(data) < head:
            raise ValueError("sampler state: too short")
        magic, version, seed, counter, vocab, n = struct.unpack_from("<4s5I", data)
        if magic != _STATE_MAGIC or version != _STATE_VERSION:
            raise ValueError(f"sampler state: not a version-{_STATE_VERSION} sampler state")
        if vocab != self.vocab_size:
            raise ValueError(f"sampler state is for a vocabulary of {vocab}, this sampler has {self.vocab_size}")
        if len(data) != head + 4 * n:
            raise ValueError(f"sampler state: {len(data)} bytes, expected {head + 4 * n} for {n} history tokens")
        self.set_history(np.frombuffer(data, "<u4", n, head))
        self.seed, self.counter = seed, counter
