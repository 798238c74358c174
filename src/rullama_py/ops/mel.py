"""The voice trainer's timbre signature (shaders/log_mel_frames.wgsl, shaders/mel_signature.wgsl): the mean log-mel
spectrum over a recording's active frames, compared with a target's by mean squared difference.

Why this signature: averaging over frames makes it independent of timing, so the durations a new voice predicts
cannot break the comparison with a target speaking other words; subtracting its own mean makes it independent of
loudness. What is left is the spectral envelope, the timbre (the seed system's recipe told 12 of 12 Kokoro stock
voices apart across texts with it).

    tables = mel_tables(device)                             # window, twiddles, filterbank (float64 on the host)
    await log_mel_frames(g, audio, length, tables, logmel, energy)       # [frames, 80] and [frames]
    await mel_signature(g, logmel, energy, length, goal, params, signature, loss)

Front end (24 kHz): frames of N_FFT 1024 samples every HOP 256, centred (zeros outside the signal: frame f is
samples [256 f - 512, 256 f + 512)), f = 0 .. L // 256; a periodic Hann window; the power spectrum's 513 bins;
80 triangular mel bands on the HTK scale (2595 log10(1 + f / 700)) from 40 Hz to 12 kHz, not area-normalised
(librosa.filters.mel(sr=24000, n_fft=1024, n_mels=80, fmin=40, fmax=12000, htk=True, norm=None)); L = ln(mel +
1e-8). Active frames: mean-over-bands energy within THRESHOLD (6 nats, about 26 dB) of the loudest frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..gpu import Device, Graph, Tensor
from .nn import _count

SAMPLE_RATE = 24000
N_FFT = 1024
HOP = 256
MELS = 80
F_MIN, F_MAX = 40.0, 12000.0
THRESHOLD = 6.0  # nats below the loudest frame's mean log-mel: frames quieter than that are pauses
_WG = 256


def mel_frames(n_samples: int) -> int:
    """Frames of the centred front end over n_samples: n_samples // HOP + 1."""
    return int(n_samples) // HOP + 1


def mel_filterbank() -> np.ndarray:
    """float64 [MELS, N_FFT // 2 + 1]: triangles on the HTK mel scale between MELS + 2 equally spaced points from
    F_MIN to F_MAX, each rising from its left point to 1 at its centre and falling to 0 at its right one, as a
    function of each FFT bin's frequency."""
    mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)  # noqa: E731
    hz = lambda m: 700.0 * (10.0 ** (m / 2595.0) - 1.0)  # noqa: E731
    points = hz(np.linspace(mel(F_MIN), mel(F_MAX), MELS + 2))
    bins = np.arange(N_FFT // 2 + 1) * (SAMPLE_RATE / N_FFT)
    lo, mid, hi = points[:-2, None], points[1:-1, None], points[2:, None]
    return np.maximum(0.0, np.minimum((bins - lo) / (mid - lo), (hi - bins) / (hi - mid)))


@dataclass
class MelTables:
    """The constant inputs of log_mel_frames, on the GPU: window and twiddles, filterbank, band ranges."""

    tables: Tensor  # f32 [2 N_FFT]: periodic Hann window, then (cos, sin)(2 pi k / N_FFT), k < N_FFT / 2
    filterbank: Tensor  # f32 [MELS, N_FFT / 2 + 1]
    bands: Tensor  # u32 [MELS, 2]: first and one-past-last nonzero bin of each band


def mel_tables(device: Device) -> MelTables:
    """Upload the front end's constants, computed in float64 (no device's sin or cos enters the signature)."""
    j = np.arange(N_FFT)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * j / N_FFT)  # periodic Hann: np.hanning(N + 1)[:-1]
    k = np.arange(N_FFT // 2)
    twiddles = np.stack([np.cos(2 * np.pi * k / N_FFT), np.sin(2 * np.pi * k / N_FFT)], 1).reshape(-1)
    fb = mel_filterbank()
    nz = fb > 0
    bands = np.stack([nz.argmax(1), N_FFT // 2 + 1 - nz[:, ::-1].argmax(1)], 1).astype(np.uint32)
    return MelTables(device.upload(np.concatenate([window, twiddles]).astype(np.float32), "mel.tables"),
                     device.upload(fb.astype(np.float32), "mel.filterbank"),
                     device.upload(bands, "mel.bands"))


async def log_mel_frames(g: Graph, x: Tensor, length: Tensor, tables: MelTables, out: Tensor, energy: Tensor):
    """out[f, m] = ln(mel power + 1e-8) of frame f, energy[f] = its mean over the bands, for the
    length.n_tokens // HOP + 1 frames of x's real samples (see the module's front end).

    x: f32 [IN] (24 kHz samples); length: Step uniform, n_tokens = L real samples (at most IN); out: f32
    [FRAMES, MELS]; energy: f32 [FRAMES]. Rows past the real frames are written as 0. One dispatch, a workgroup
    per frame (FFT in workgroup memory)."""
    frames = _count(out) // MELS
    if frames < 1 or _count(out) % MELS or _count(energy) < frames:
        raise ValueError(f"log_mel_frames: output {out.shape} is not rows of {MELS}, or energy {energy.shape} "
                         "has fewer rows")
    k = await g.device.kernel("log_mel_frames", libs=("signal_lib",), N=N_FFT, LOG2N=N_FFT.bit_length() - 1,
                              HOP=HOP, NB=N_FFT // 2 + 1, MELS=MELS, IN=_count(x), FRAMES=frames, WG=_WG)
    gx = min(frames, 32768)
    g.add(k, [x, length, tables.tables, tables.filterbank, tables.bands, out, energy], (gx, -(-frames // gx)))


async def mel_signature(g: Graph, logmel: Tensor, energy: Tensor, length: Tensor, goal: Tensor, params: Tensor,
                        signature: Tensor, loss: Tensor):
    """signature[slot] = the mean of logmel's rows over the active frames, minus its own mean over the bands;
    loss[slot] = mean over bands of (signature[slot] - goal)^2; slot = params.slot (ops.search.search_params).

    logmel, energy: log_mel_frames's outputs (f32 [FRAMES, MELS], [FRAMES]); length: the same Step uniform as
    there; goal: f32 [MELS] (the target's signature; any values when only the signature is wanted);
    signature: f32 [SLOTS, MELS]; loss: f32 [SLOTS]. One dispatch, one workgroup."""
    frames = _count(logmel) // MELS
    slots = _count(loss)
    if _count(signature) < slots * MELS or _count(goal) < MELS:
        raise ValueError(f"mel_signature: signature {signature.shape} for {slots} slots, goal {goal.shape}")
    k = await g.device.kernel("mel_signature", HOP=HOP, MELS=MELS, FRAMES=frames, THRESHOLD=float(THRESHOLD),
                              WG=_WG)
    g.add(k, [logmel, energy, length, goal, params, signature, loss], 1)
