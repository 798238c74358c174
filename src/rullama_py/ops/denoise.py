"""DiffusionGemma's sampler on the GPU: one denoising step of entropy-bound block diffusion, and the
self-conditioning mix of embedding rows. Per step only a small report comes back to the host, never the
[canvas x vocab] logits.

One step over a canvas of C positions (C <= 1024) and a vocabulary of V, from the decoder's softcapped f32 logits
`raw` [C, V], the step's temperature t, the entropy bound, and per position a uniform u[c] and a renoise token
n[c] (three dispatches):

1. denoise_noise (shaders/denoise_noise.wgsl): u and n from a counter-based generator, a pure function of (seed,
   counter), or left as the host wrote them (F_HOST_NOISE: replaying recorded draws). The host's copy of the
   generator is `denoise_noise_host`.
2. denoise_probs (shaders/denoise_probs.wgsl), one workgroup per position: proc = raw / t, p = softmax(proc)
   written over raw in place (the next step's self-conditioning input), the entropy H = -sum p log p, the argmax
   (first index of the max) and the draw: the first i with cumsum(p)[i] > u[c] (inverse CDF; the last i with
   p > 0 if rounding leaves none).
3. denoise_accept (shaders/denoise_accept.wgsl), one workgroup: positions sorted by H ascending (ties by
   position); sorted position k is accepted iff the entropies before it sum to <= entropy_bound (the lowest one
   always is). canvas[c] = accepted ? draw[c] : n[c]. stable = the argmax equals the previous step's at every
   position (the previous argmax lives in a buffer of the op; F_NEW_CANVAS marks a canvas's first step, which is
   never stable). Writes the report.

Every per-step value (t, the bound, C, V, seed, counter, flags) is in one 32-byte uniform, `DenoiseParams`
(shaders/denoise_lib.wgsl), that the host rewrites before each step (`denoise_params_bytes`): nothing is
recompiled or allocated per step.

Report (u32 words, `report_nbytes(capacity)` bytes, read back in one copy; `parse_report`):
    [0] accepted count   [1] mean entropy (f32 bits)   [2] stable (0/1)   [3] n_pos
    [4, 4 + CAP)             the new canvas (accepted ? draw : renoise token)
    [4 + CAP, 4 + 2 CAP)     argmax of proc (the canvas the model outputs after the last step)
    [4 + 2 CAP, 4 + 3 CAP)   accepted (0/1)
CAP is the capacity the buffers were made for; entries of positions >= n_pos are left as they were.

Precision (f32): the draw equals the float64 inverse CDF of softmax(raw / t) whenever u lies farther from every
bucket boundary than tests/reference_denoise.draw_margin, about (12 M + chunk) 2^-23 with M the largest |raw / t|
and chunk = ceil(V / 256) (2.4e-4 for M = 75, V = 262144, from WGSL's worst-case exp and the sums' rounding;
typical errors are orders of magnitude smaller); at a boundary it is one of the two neighbouring tokens with
p > 0 (a token whose p is 0 in f32 is never drawn).

mix_rows (shaders/mix_rows.wgsl, mix_rows_reduce.wgsl): soft[c, :] = scale * sum_v P[c, v] * E[v, :] with the
token-embedding table E kept as raw GGUF bytes (any ops.matmul.QUANT_TYPES, possibly split into parts), a tiled
product cut along V into splits whose partial tiles one more dispatch sums.

Measured on an NVIDIA H200 (tools/bench_denoise.py, docs/bench/denoise_h200.json; wgpu-py over Vulkan): a step
over 256 x 262144 logits takes 658 us of GPU time (the three passes over the logits at 1.2 TB/s: one workgroup per
row leaves few lanes per multiprocessor, hence the loads four at a time); mix_rows at the 26B-A4B's size (256 x
262144 @ 262144 x 2816) 19.1 ms with a Q4_K table, 18.3 ms Q8_0, 19.3 ms F16 (about 20 TFLOP/s in f32, as the tiled
matmul). 8 x 8 blocks with TK 16 and 24 splits beat TK 32 and the 4 x 8, 8 x 4 and 4 x 4 blocks (22 to 28 ms),
and 8 splits (25 ms); 64 splits tie.

    dn = Denoiser(device, capacity=256, vocab=262144)
    g = device.graph(); ...decoder forward into logits...; await dn.record(g, logits, canvas)
    dn.set_step(temperature=t, entropy_bound=0.1, seed=s, counter=k, new_canvas=first)
    report = dn.parse(await device.run(g, dn.readback, dn.report_source))
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np

from ..gpu import UNIFORM, Device, Graph, Readback, Tensor
from .matmul import _libs, qtype, row_bytes
from .signal import _pcg_hash

WG = 256                # workgroup size of the three step kernels (sample_lib's radix helpers need 256)
MAX_CANVAS = 1024       # positions denoise_accept sorts in workgroup memory (12 KiB)
PARAMS_BYTES = 32
REPORT_HEADER = 4       # words before the per-position arrays

F_NEW_CANVAS = 1        # the first step of a canvas: not stable, the previous argmax is replaced
F_HOST_NOISE = 2        # the host wrote the noise buffer (denoise_noise leaves it alone)
F_INIT_CANVAS = 4       # denoise_noise writes its renoise tokens into the canvas: a new random canvas

_M32 = 0xFFFFFFFF


def _uint32(x, name: str) -> int:
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, np.integer)) or not 0 <= int(x) <= _M32:
        raise ValueError(f"{name} must be an integer in 0..2**32-1, got {x!r}")
    return int(x)


def denoise_params_bytes(*, temperature: float, entropy_bound: float, n_pos: int, vocab: int, seed: int = 0,
                         counter: int = 0, new_canvas: bool = False, host_noise: bool = False,
                         init_canvas: bool = False) -> bytes:
    """The 32-byte DenoiseParams uniform (shaders/denoise_lib.wgsl): f32 1/t, f32 entropy_bound, u32 n_pos,
    u32 vocab, u32 seed, u32 counter, u32 flags, u32 0."""
    if not isinstance(temperature, (int, float, np.integer, np.floating)) or not math.isfinite(temperature) \
            or temperature <= 0:
        raise ValueError(f"the denoising temperature must be a finite number above 0, got {temperature!r}")
    inv_temp = 1.0 / float(temperature)
    if not math.isfinite(np.float32(inv_temp)) or np.float32(inv_temp) == 0:
        raise ValueError(f"the denoising temperature {temperature!r} is out of f32 range")
    if not isinstance(entropy_bound, (int, float, np.integer, np.floating)) or not math.isfinite(entropy_bound):
        raise ValueError(f"the entropy bound must be a finite number, got {entropy_bound!r}")
    if not 1 <= _uint32(n_pos, "n_pos") <= MAX_CANVAS:
        raise ValueError(f"a canvas holds 1..{MAX_CANVAS} positions, got n_pos={n_pos}")
    if _uint32(vocab, "vocab") < 1:
        raise ValueError("the vocabulary must hold at least one token")
    flags = (F_NEW_CANVAS if new_canvas else 0) | (F_HOST_NOISE if host_noise else 0) | \
            (F_INIT_CANVAS if init_canvas else 0)
    return struct.pack("<2f6I", inv_temp, float(entropy_bound), int(n_pos), int(vocab),
                       _uint32(seed, "seed"), _uint32(counter, "counter"), flags, 0)


def denoise_noise_host(seed: int, counter: int, n_pos: int, vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """(u f32 [n_pos], n u32 [n_pos]): what denoise_noise writes for (seed, counter), bit for bit (integer hashes;
    u has 24 random bits, exact in f32). Draw k = counter * 2 * n_pos + i: u[i] = top 24 bits of hash(k) / 2^24,
    n[i] = hash(k + n_pos) % vocab, hash(k) = pcg(pcg(k ^ pcg(seed)) + seed) as shaders/sample_lib.wgsl's
    rand01. A new canvas is the n of a counter of its own."""
    s = np.uint32(_uint32(seed, "seed"))
    with np.errstate(over="ignore"):
        k = (np.uint32(_uint32(counter, "counter")) * np.uint32(2 * n_pos)
             + np.arange(2 * n_pos, dtype=np.uint32)).astype(np.uint32)
        h = _pcg_hash(_pcg_hash(k ^ _pcg_hash(np.array([s], np.uint32))[0]) + s)
    u = ((h[:n_pos] >> np.uint32(8)).astype(np.float64) / 16777216.0).astype(np.float32)
    return u, (h[n_pos:] % np.uint32(vocab)).astype(np.uint32)


def noise_bytes(u, n, capacity: int) -> bytes:
    """The noise buffer's layout for host-written draws: u as f32 at [0, capacity), n as u32 at [capacity,
    2 capacity) (positions past len(u) zero)."""
    u = np.asarray(u, np.float32).reshape(-1)
    n = np.asarray(n).reshape(-1)
    if u.size != n.size or not 1 <= u.size <= capacity:
        raise ValueError(f"noise for {u.size} uniforms and {n.size} tokens does not fit a canvas of {capacity}")
    if u.size and (not np.all((u >= 0) & (u < 1))):
        raise ValueError("the noise uniforms must lie in [0, 1)")
    if n.size and (n.min() < 0 or n.max() > _M32):
        raise ValueError("the renoise tokens must be non-negative 32-bit integers")
    words = np.zeros(2 * capacity, np.uint32)
    words[: u.size] = u.view(np.uint32)
    words[capacity : capacity + n.size] = n.astype(np.uint32)
    return words.tobytes()


def report_nbytes(capacity: int) -> int:
    return 4 * (REPORT_HEADER + 3 * capacity)


@dataclass
class DenoiseReport:
    """What one step returns to the host (see the module docstring for the layout)."""

    canvas: np.ndarray     # u32 [n_pos]: the next canvas
    argmax: np.ndarray     # u32 [n_pos]
    accepted: np.ndarray   # bool [n_pos]
    n_accepted: int
    mean_entropy: float
    stable: bool


def parse_report(data, capacity: int) -> DenoiseReport:
    w = np.frombuffer(bytes(data)[: report_nbytes(capacity)], np.uint32)
    if w.size != REPORT_HEADER + 3 * capacity:
        raise ValueError(f"a report of a canvas of {capacity} holds {report_nbytes(capacity)} bytes, got {w.nbytes}")
    n = int(w[3])
    if n > capacity:
        raise ValueError(f"the report names {n} positions, more than its capacity {capacity}")
    h = REPORT_HEADER
    return DenoiseReport(
        canvas=w[h : h + n].copy(),
        argmax=w[h + capacity : h + capacity + n].copy(),
        accepted=w[h + 2 * capacity : h + 2 * capacity + n] != 0,
        n_accepted=int(w[0]),
        mean_entropy=float(w[1:2].view(np.float32)[0]),
        stable=bool(w[2]),
    )


def _words(t: Tensor) -> int:
    return t.nbytes // 4


def _check_capacity(capacity: int) -> None:
    if not isinstance(capacity, (int, np.integer)) or not 1 <= capacity <= MAX_CANVAS:
        raise ValueError(f"a canvas holds 1..{MAX_CANVAS} positions, got capacity={capacity!r}")


def _check_words(t: Tensor, words: int, what: str) -> None:
    if _words(t) < words:
        raise ValueError(f"{what} {t.label!r} holds {t.nbytes} bytes; it needs {4 * words}")


async def denoise_noise(g: Graph, params: Tensor, noise: Tensor, canvas: Tensor, *, capacity: int) -> None:
    """Fill noise (u32 [2 capacity], see noise_bytes) from (params.seed, params.counter) unless F_HOST_NOISE; with
    F_INIT_CANVAS also canvas[i] = n[i]. One dispatch."""
    _check_capacity(capacity)
    _check_words(noise, 2 * capacity, "noise")
    _check_words(canvas, capacity, "canvas")
    k = await g.device.kernel("denoise_noise", libs=("sample_lib", "denoise_lib"), CAP=capacity, WG=WG)
    g.add(k, [params, noise, canvas], -(-capacity // WG))


async def denoise_probs(g: Graph, params: Tensor, logits: Tensor, noise: Tensor, stats: Tensor, *,
                        capacity: int) -> None:
    """Per position c < n_pos: softmax(logits[c] / t) written over logits[c], and stats[c] = (entropy bits, argmax,
    draw, 0). logits: f32 [capacity, V] (rows of params.vocab; one binding); stats: u32 [capacity, 4]. One
    dispatch of `capacity` workgroups (those past n_pos return at once)."""
    _check_capacity(capacity)
    _check_words(noise, 2 * capacity, "noise")
    _check_words(stats, 4 * capacity, "stats")
    if len(logits.parts) != 1:
        raise ValueError(f"logits {logits.label!r} must be one buffer (it is split in {len(logits.parts)} parts)")
    k = await g.device.kernel("denoise_probs", libs=("denoise_lib",), CAP=capacity, WG=WG)
    g.add(k, [params, logits, noise, stats], capacity)


async def denoise_accept(g: Graph, params: Tensor, stats: Tensor, noise: Tensor, prev_argmax: Tensor, canvas: Tensor,
                         report: Tensor, *, capacity: int) -> None:
    """Entropy-bound acceptance, the new canvas, the stability check and the report (module docstring).
    prev_argmax: u32 [capacity], kept between steps (F_NEW_CANVAS makes its contents irrelevant); canvas: u32
    [capacity], the decoder's input ids; report: u32 [report_nbytes(capacity) / 4]. One workgroup."""
    _check_capacity(capacity)
    for t, words, what in ((stats, 4 * capacity, "stats"), (noise, 2 * capacity, "noise"),
                           (prev_argmax, capacity, "prev_argmax"), (canvas, capacity, "canvas"),
                           (report, report_nbytes(capacity) // 4, "report")):
        _check_words(t, words, what)
    np2 = max(WG, 1 << (capacity - 1).bit_length())
    k = await g.device.kernel("denoise_accept", libs=("denoise_lib",), CAP=capacity, WG=WG, NP=np2)
    g.add(k, [params, stats, noise, prev_argmax, canvas, report], 1)


class Denoiser:
    """The buffers of one sampler (a canvas of up to `capacity` positions over `vocab` tokens): the params
    uniform, the noise, the per-position stats, the previous argmax and the report, with a Readback for it.

    record(g, logits, canvas) appends the step's three dispatches to a graph (after the decoder's forward, which
    writes logits [capacity, vocab] and reads canvas u32 [capacity]); record_init(g, canvas) records a new
    random canvas (run it after set_step(..., init_canvas=True) with the canvas's own counter)."""

    def __init__(self, device: Device, capacity: int, vocab: int, label: str = "denoise"):
        _check_capacity(capacity)
        if not isinstance(vocab, (int, np.integer)) or not 1 <= vocab <= _M32 // max(capacity, 1):
            raise ValueError(f"vocab {vocab!r}: a canvas of {capacity} rows of it must be indexable in 32 bits")
        self.device, self.capacity, self.vocab = device, int(capacity), int(vocab)
        self.params = device.tensor((PARAMS_BYTES // 4,), "uint32", f"{label}.params", usage=UNIFORM)
        self.noise = device.tensor((2 * capacity,), "uint32", f"{label}.noise")
        self.stats = device.tensor((capacity, 4), "uint32", f"{label}.stats")
        self.prev_argmax = device.tensor((capacity,), "uint32", f"{label}.prev_argmax")
        self.report = device.tensor((report_nbytes(capacity) // 4,), "uint32", f"{label}.report")
        self.readback = Readback(device, report_nbytes(capacity), f"{label}.readback")
        self.report_source = (self.report.buffer, 0, report_nbytes(capacity))
        device.write(self.prev_argmax.buffer, np.full(capacity, _M32, np.uint32))
        self.set_step(temperature=1.0, entropy_bound=0.0, new_canvas=True)

    async def record(self, g: Graph, logits: Tensor, canvas: Tensor) -> None:
        if logits.nbytes < 4 * self.capacity * self.vocab:
            raise ValueError(f"logits {logits.label!r} hold {logits.nbytes} bytes; {self.capacity} rows of "
                             f"{self.vocab} need {4 * self.capacity * self.vocab}")
        await denoise_noise(g, self.params, self.noise, canvas, capacity=self.capacity)
        await denoise_probs(g, self.params, logits, self.noise, self.stats, capacity=self.capacity)
        await denoise_accept(g, self.params, self.stats, self.noise, self.prev_argmax, canvas, self.report,
                             capacity=self.capacity)

    async def record_init(self, g: Graph, canvas: Tensor) -> None:
        await denoise_noise(g, self.params, self.noise, canvas, capacity=self.capacity)

    def set_step(self, *, temperature: float, entropy_bound: float, seed: int = 0, counter: int = 0,
                 new_canvas: bool = False, host_noise: bool = False, init_canvas: bool = False,
                 n_pos: int | None = None) -> None:
        """Write the params uniform for the next run (see denoise_params_bytes)."""
        n = self.capacity if n_pos is None else n_pos
        if not isinstance(n, (int, np.integer)) or not 1 <= n <= self.capacity:
            raise ValueError(f"n_pos must be in 1..{self.capacity} (the denoiser's capacity), got {n_pos!r}")
        self.device.write(self.params.buffer, denoise_params_bytes(
            temperature=temperature, entropy_bound=entropy_bound, n_pos=n, vocab=self.vocab, seed=seed,
            counter=counter, new_canvas=new_canvas, host_noise=host_noise, init_canvas=init_canvas))

    def write_noise(self, u, n) -> None:
        """Host-written draws for the next step (use with set_step(host_noise=True)): u in [0, 1), n < vocab."""
        n = np.asarray(n)
        if n.size and n.max() >= self.vocab:
            raise ValueError(f"renoise token {int(n.max())} is outside the vocabulary of {self.vocab}")
        self.device.write(self.noise.buffer, noise_bytes(u, n, self.capacity))

    def parse(self, data) -> DenoiseReport:
        return parse_report(data, self.capacity)


# -- self-conditioning: soft = scale * P @ E -----------------------------------------------------------------------

_MIX_TARGET = 1024        # aim for about this many workgroups (several per multiprocessor on a large GPU)
_MIX_SCRATCH = 128 << 20  # cap on the split partials (bytes)


def mix_rows_plan(device: Device, *, n_rows: int, vocab: int, cols: int, part_rows=None,
                  rows_per_split: int | None = None) -> dict:
    """The tiling mix_rows records: blocks (CPT, DPT), TK, rows per split, the slices of each part and in all."""
    big = n_rows >= 128 and cols >= 128
    cpt = dpt = 8 if big else 4
    tk = 16 if big else 32
    if (16 * (cpt + dpt)) * tk * 4 > device.limits.get("max-compute-workgroup-storage-size", 16384):
        tk //= 2
    tiles = -(-cols // (16 * dpt)) * -(-n_rows // (16 * cpt))
    if rows_per_split is None:
        splits = max(1, min(-(-_MIX_TARGET // tiles), -(-vocab // tk)))
        split = -(-vocab // splits)
        slice_bytes = n_rows * cols * 4
        limit = min(_MIX_SCRATCH, device.limits["max-storage-buffer-binding-size"])
        split = max(split, -(-vocab * slice_bytes // limit))  # the partials fit one binding
    else:
        split = int(rows_per_split)
        if split < 1:
            raise ValueError(f"rows_per_split must be at least 1, got {rows_per_split!r}")
    split = -(-split // tk) * tk
    part_rows = list(part_rows) if part_rows is not None else [vocab]
    slices = [-(-n // split) for n in part_rows]
    return dict(cpt=cpt, dpt=dpt, tk=tk, split=split, slices=slices, total=sum(slices),
                grid=(-(-cols // (16 * dpt)), -(-n_rows // (16 * cpt))))


def mix_rows_scratch_words(plan: dict, n_rows: int, cols: int) -> int:
    """f32 values of the partials scratch a plan needs (0 when it writes the output directly)."""
    return 0 if plan["total"] == 1 else plan["total"] * n_rows * cols


async def mix_rows(g: Graph, probs: Tensor, table: Tensor, out: Tensor, *, n_rows: int, scale: float = 1.0,
                   scratch: Tensor | None = None, rows_per_split: int | None = None) -> None:
    """out[c, :] = scale * sum_v probs[c, v] * table[v, :] for c < n_rows (DiffusionGemma's self-conditioning
    input: probs = the previous step's softmax, table = token_embd, scale = sqrt(d_model)).

    probs: f32 [>= n_rows, V], one buffer, rows of V = table.shape[0] (all-zero rows give zero rows); table: (V, D),
    any of ops.matmul.QUANT_TYPES, possibly split in parts; out: f32 [n_rows, D]. One dispatch per table part,
    plus one that sums the splits (none when the whole sum is one split). scratch: f32 of at least
    mix_rows_scratch_words(mix_rows_plan(...)) values, made here if not given (recorded once per graph, so not
    per step); rows_per_split overrides the plan (tests)."""
    vocab, cols = table.shape
    qt = qtype(table)
    rb = row_bytes(qt, cols)
    if not isinstance(n_rows, (int, np.integer)) or n_rows < 1:
        raise ValueError(f"mix_rows: n_rows must be a positive integer, got {n_rows!r}")
    if len(probs.parts) != 1:
        raise ValueError(f"mix_rows: probs {probs.label!r} must be one buffer")
    if probs.nbytes < 4 * n_rows * vocab:
        raise ValueError(f"mix_rows: probs {probs.label!r} hold {probs.nbytes} bytes; {n_rows} rows of {vocab} "
                         f"probabilities need {4 * n_rows * vocab}")
    if out.nbytes < 4 * n_rows * cols:
        raise ValueError(f"mix_rows: out {out.label!r} holds {out.nbytes} bytes; {n_rows} x {cols} f32 need "
                         f"{4 * n_rows * cols}")
    if not math.isfinite(scale):
        raise ValueError(f"mix_rows: scale must be finite, got {scale!r}")
    dev = g.device
    plan = mix_rows_plan(dev, n_rows=n_rows, vocab=vocab, cols=cols, part_rows=[n for _, _, n in table.parts],
                         rows_per_split=rows_per_split)
    direct = plan["total"] == 1
    if not direct:
        need = mix_rows_scratch_words(plan, n_rows, cols)
        if scratch is None:
            scratch = dev.tensor((need,), "float32", "mix_rows.partials")
        elif scratch.nbytes < 4 * need:
            raise ValueError(f"mix_rows: scratch {scratch.label!r} holds {scratch.nbytes} bytes; needs {4 * need}")
    slice0 = 0
    for (buf, first, n), slices in zip(table.parts, plan["slices"]):
        k = await dev.kernel("mix_rows", libs=_libs(qt), ROWS=n, ROW0=first, COLS=cols, ROW_BYTES=rb, N_POS=n_rows,
                             VOCAB=vocab, CPT=plan["cpt"], DPT=plan["dpt"], TK=plan["tk"], SPLIT=plan["split"],
                             SLICE0=slice0, DIRECT=direct, SCALE=float(scale))
        g.add(k, [buf, probs, out if direct else scratch], (*plan["grid"], slices))
        slice0 += slices
    if not direct:
        total = n_rows * cols
        groups = -(-total // WG)
        gx = min(groups, 32768)
        k = await dev.kernel("mix_rows_reduce", N=total, SLICES=plan["total"], SCALE=float(scale), WG=WG, GRID_X=gx)
        g.add(k, [scratch, out], (gx, -(-groups // gx)))
