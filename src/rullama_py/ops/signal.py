"""Kokoro's signal ops, the two ends of the iSTFTNet generator: the harmonic-plus-noise source
(shaders/harmonic_source_phase.wgsl + harmonic_source.wgsl), the STFT of that source (stft.wgsl) and the inverse
STFT that makes the audio (istft.wgsl), all with shaders/signal_lib.wgsl (our own sin, log and atan2, whose
accuracy does not depend on the driver).

Layouts are time-major (a signal is one column, [samples] or [samples, 1]; spectra are [frames, 2 * bins]). Graphs
are recorded for capacities; each op reads its input's real length from a Step uniform (`length`, n_tokens) and
writes zeros past its output's real length, up to the output tensor's size.

Real sizes (Kokoro, F duration frames): f0 2F rows -> source 600F samples -> STFT 120F + 1 frames of 22 ->
(generator) -> 120F + 1 frames of 22 -> inverse STFT 600F samples.
"""

from __future__ import annotations

import struct

import numpy as np

from ..gpu import Device, Graph, Tensor

from .nn import _count, _grid

_WG = 256
_ISTFT_WG = 64  # samples per workgroup of istft: 17 frames of bins cached in workgroup memory
SOURCE_PARAMS_BYTES = 16


# -- the harmonic-plus-noise source --------------------------------------------------------------------------------

def source_params_bytes(seed: int, noise: float = 1.0) -> bytes:
    """The 16 bytes of harmonic_source's `params`: struct SourceParams { seed: u32, noise: f32, 0u32, 0u32 }.
    `noise` scales the source's Gaussian noise: 1.0 as Kokoro was trained (unvoiced sounds are made of it), 0.0 for
    a deterministic source."""
    return struct.pack("<If2I", int(seed) & 0xFFFFFFFF, float(noise), 0, 0)


def source_params(device: Device, seed: int = 0, noise: float = 1.0, label: str = "source_params") -> Tensor:
    """A GPU tensor holding harmonic_source's params (rewrite it per run with `source_params_bytes`)."""
    t = device.tensor((SOURCE_PARAMS_BYTES // 4,), "uint32", label)
    device.write(t.buffer, source_params_bytes(seed, noise))
    return t


def _pcg_hash(v: np.ndarray) -> np.ndarray:
    """shaders/harmonic_source.wgsl's pcg_hash over a uint32 array (wrapping arithmetic)."""
    state = v * np.uint32(747796405) + np.uint32(2891336453)
    word = ((state >> ((state >> np.uint32(28)) + np.uint32(4))) ^ state) * np.uint32(277803737)
    return (word >> np.uint32(22)) ^ word


def source_noise(seed: int, n_samples: int, harmonics: int = 9) -> np.ndarray:
    """The standard normals harmonic_source draws, f32 [n_samples, harmonics] (torch.randn_like(sine_waves)'s
    layout, batch dropped), so a reference run in torch can be fed the very noise the GPU adds.

    Counter-based, as the kernel's source_normal: for index i = sample * harmonics + harmonic,
    h1 = pcg(pcg(i ^ pcg(seed)) + seed), h2 = pcg(h1) (uint32), u1 = ((h1 >> 8) + 1) / 2^24 in (0, 1],
    u2 = (h2 >> 8) / 2^24 in [0, 1), z = sqrt(-2 ln u1) cos(2 pi u2), here in float64 then rounded to f32 (the GPU
    evaluates the same formula in f32, within a few 1e-7 relative)."""
    with np.errstate(over="ignore"):
        idx = np.arange(n_samples * harmonics, dtype=np.uint32)
        s = np.uint32(int(seed) & 0xFFFFFFFF)
        h1 = _pcg_hash(_pcg_hash(idx ^ _pcg_hash(np.array([s], np.uint32))[0]) + s)
        h2 = _pcg_hash(h1)
    u1 = ((h1 >> np.uint32(8)).astype(np.float64) + 1.0) / 16777216.0
    u2 = (h2 >> np.uint32(8)).astype(np.float64) / 16777216.0
    z = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)
    return z.astype(np.float32).reshape(n_samples, harmonics)


async def harmonic_source(g: Graph, f0: Tensor, linear_w: Tensor, linear_b: Tensor, out: Tensor, length: Tensor,
                          params: Tensor, *, upsample: int = 300, harmonics: int = 9, sample_rate: int = 24000,
                          sine_amp: float = 0.1, noise_std: float = 0.003, voiced_threshold: float = 10.0):
    """Kokoro's harmonic source har_source (kokoro.istftnet.SourceModuleHnNSF with SineGen, as Generator.forward
    calls it: F0 upsampled x `upsample` by nearest, 9 harmonics, sine_amp 0.1, noise_std 0.003, voiced above
    10 Hz), out[n] = tanh(b + sum_k w[k - 1] (sine_k[n] uv[n] + noise_k[n])) for n < upsample * L.

    f0: f32 [FRAMES] or [FRAMES, 1] (the F0 curve, 2F rows at 80 per second); linear_w: f32 [harmonics] or
    [1, harmonics] (m_source.l_linear.weight, torch's layout); linear_b: f32 [1] (l_linear.bias); out: f32 [OUT]
    or [OUT, 1], 24 kHz samples; length: the Step uniform whose n_tokens is L, the real frames of f0 (at most
    FRAMES); samples from upsample * L to OUT are written as 0. params: 16 bytes, storage, see
    `source_params_bytes` (seed, noise scale; rewritten per run).

    Torch's maths exactly (see shaders/harmonic_source.wgsl), except precision: torch accumulates the phase in f32
    radians, which reach 1e5..1e6 over a sentence (f32 spacing up to 0.06 rad); here each frame's advance
    frac(f0 k * upsample / sample_rate) is formed to ~1e-7 turns without rounding f0 k / 80 itself, the advances
    are summed as 32-bit fixed-point turns (wrapping: exact modulo one turn) and the in-frame interpolation is
    added the same way, so a sample's phase is within (frames so far) * 1.8e-7 + 5e-7 turns of the exact value
    (worst case; over 400 frames the output was measured 2.5e-6 from the float64 reference, torch's f32 4e-4).
    torch's random initial phases of harmonics 2..9 are left out: torch's linear downsampling never reads the
    sample they are added to, so they have no effect (checked in torch). The noise is counter-based
    (`source_noise`): a seed gives the same audio every run, natively and in the browser.

    Two dispatches: one workgroup scans the accumulated phases over the L frames (any L up to FRAMES; O(L / 256)
    per thread) into a scratch u32 [FRAMES, harmonics] made here, then one thread per output sample."""
    if sample_rate % upsample:
        raise ValueError(f"harmonic_source: sample_rate {sample_rate} is not a multiple of upsample {upsample}")
    if not 1 <= harmonics <= 16:
        raise ValueError(f"harmonic_source: harmonics {harmonics}; 1..16 are supported")
    if not 1 <= upsample <= 32768:
        raise ValueError(f"harmonic_source: upsample {upsample}")
    frames, total = _count(f0), _count(out)
    if _count(linear_w) < harmonics or _count(linear_b) < 1:
        raise ValueError(f"harmonic_source: weight {linear_w.shape} / bias {linear_b.shape} for {harmonics} harmonics")
    if total > frames * upsample:
        raise ValueError(f"harmonic_source: {total} output samples for {frames} frames of {upsample}")
    if params.nbytes < SOURCE_PARAMS_BYTES:
        raise ValueError(f"harmonic_source: params hold {params.nbytes} bytes, need {SOURCE_PARAMS_BYTES}")
    r = sample_rate // upsample
    consts = dict(FRAMES=frames, H=harmonics, HI_MASK=(0xFFFFFFFF << harmonics.bit_length()) & 0xFFFFFFFF,
                  R=float(r), INV_R=float(np.float32(1.0 / r)), U=upsample, WG=_WG)
    phase = g.device.tensor((frames, harmonics), "uint32", f"{out.label}.phase")
    k = await g.device.kernel("harmonic_source_phase", libs=("signal_lib",), **consts)
    g.add(k, [f0, length, phase], 1)
    k = await g.device.kernel("harmonic_source", libs=("signal_lib",), OUT=total, SINE_AMP=float(sine_amp),
                              NOISE_STD=float(noise_std), VOICED_THRESHOLD=float(voiced_threshold), **consts)
    g.add(k, [f0, linear_w, linear_b, length, params, phase, out], _grid(total, _WG))


# -- STFT and its inverse ------------------------------------------------------------------------------------------

def stft_frames(n_samples: int, hop: int = 5) -> int:
    """Frames of a centred STFT of n_samples: n_samples // hop + 1 (Kokoro: 600F -> 120F + 1)."""
    return n_samples // hop + 1


def istft_samples(n_frames: int, hop: int = 5) -> int:
    """Samples of a centred inverse STFT of n_frames: hop * (n_frames - 1) (Kokoro: 120F + 1 -> 600F)."""
    return hop * max(n_frames - 1, 0)


def _check_fft(what: str, n_fft: int, hop: int) -> int:
    if n_fft < 2 or n_fft % 2 or not 1 <= hop <= n_fft:
        raise ValueError(f"{what}: n_fft {n_fft} (even) and hop {hop} (1..n_fft)")
    return n_fft // 2 + 1


async def stft(g: Graph, x: Tensor, out: Tensor, length: Tensor, *, n_fft: int = 20, hop: int = 5):
    """Magnitude and phase of the centred STFT, as kokoro's TorchSTFT.transform and the generator's
    torch.cat([mag, phase], dim=1): torch.stft(x, n_fft, hop, n_fft, hann_window(n_fft, periodic=True),
    center=True, pad_mode='reflect'), then out[f] = [|X[f, 0..n_fft/2]| | angle(X[f, 0..n_fft/2])].

    x: f32 [IN] or [IN, 1] samples; length: Step with n_tokens = N, the real samples (at most IN); out: f32
    [ROWS, n_fft + 2] (time-major: row f is frame f, magnitudes then phases; Kokoro [120F + 1, 22]); the
    N // hop + 1 real frames are written, rows past them are 0. The reflect padding reads only samples < N
    (torch needs N > n_fft / 2). The imaginary parts of bins 0 and n_fft / 2 are exactly +0.0, as torch's FFT
    gives, so a negative real part has phase +pi there, never -pi; so are those of frame 0, whose spectrum is real
    in exact arithmetic (reflect padding makes the frame even about its centre): torch leaves rounding noise of
    either sign there (about 1e-8), so its phase is +pi or -pi at random where the real part is negative, ours
    always +pi. One dispatch, one thread per frame."""
    nb = _check_fft("stft", n_fft, hop)
    rows = _count(out) // (2 * nb)
    if rows < 1 or _count(out) % (2 * nb):
        raise ValueError(f"stft: output {out.shape} is not rows of {2 * nb}")
    k = await g.device.kernel("stft", libs=("signal_lib",), N=n_fft, HOP=hop, NB=nb, IN=_count(x), ROWS=rows, WG=64)
    g.add(k, [x, length, out], _grid(rows, 64))


async def istft(g: Graph, spec: Tensor, out: Tensor, length: Tensor, *, n_fft: int = 20, hop: int = 5,
                conv_post: bool = True):
    """The centred inverse STFT of kokoro's TorchSTFT.inverse: torch.istft(mag * exp(1j * phase), n_fft, hop,
    n_fft, hann_window(n_fft, periodic=True), center=True): per frame an irfft (the imaginary parts of bins 0 and
    n_fft / 2 ignored), windowed, overlap-added, divided by the summed squared window, n_fft / 2 samples dropped at
    each end.

    spec: f32 [FRAMES, n_fft + 2], time-major, each row [n_fft/2 + 1 channels | n_fft/2 + 1 channels]:
    conv_post=True (the generator: Generator.forward's conv_post output x) reads mag = exp(x[:, :11]),
    phase = sin(x[:, 11:]) (the sine of the raw channel, used as the angle, as kokoro does); conv_post=False reads
    mag and phase as they are (stft's output: then istft inverts stft). length: Step with n_tokens = M, the real
    frames (at most FRAMES); out: f32 [OUT] or [OUT, 1]: the hop * (M - 1) real samples, zeros after them.
    One dispatch, one thread per output sample summing its n_fft / hop overlapping frames (no atomics)."""
    nb = _check_fft("istft", n_fft, hop)
    frames = _count(spec) // (2 * nb)
    if frames < 1 or _count(spec) % (2 * nb):
        raise ValueError(f"istft: spectrum {spec.shape} is not rows of {2 * nb}")
    total = _count(out)
    cache = (_ISTFT_WG - 1 + n_fft + hop - 1) // hop  # frames one workgroup's samples reach
    k = await g.device.kernel("istft", libs=("signal_lib",), N=n_fft, HOP=hop, NB=nb, FRAMES=frames, OUT=total,
                              CACHE=cache, CONV_POST=bool(conv_post), WG=_ISTFT_WG)
    g.add(k, [spec, length, out], _grid(total, _ISTFT_WG))
