"""numpy references (float64) of Kokoro's signal ops (rullama_py.ops.signal): the harmonic-plus-noise source,
the STFT and the inverse STFT. Written from kokoro 0.9.4's istftnet.py (SineGen, SourceModuleHnNSF,
Generator.forward, TorchSTFT) and torch's stft / istft definitions, step by step as torch does them but in
float64, never from our kernels. Checked against torch (float64) while writing: the source to 1e-9 with torch's
noise replaced by ours, stft and istft to 1e-14 (tests/kernels/test_signal.py repeats the checks when torch is
installed).
"""

import numpy as np


def hann_window(n):
    """torch.hann_window(n, periodic=True): 0.5 - 0.5 cos(2 pi j / n), j < n."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)


def _linear_resample(v, n_out, scale):
    """F.interpolate(v[None].T, size n_out, mode='linear', align_corners=False) along axis 0 with the given
    source-per-output scale: src = (i + 0.5) * scale - 0.5, clamped below at 0; the right neighbour clamped to the
    last row."""
    src = np.maximum((np.arange(n_out) + 0.5) * scale - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), len(v) - 1)
    i1 = np.minimum(i0 + 1, len(v) - 1)
    lam = (src - i0)[:, None]
    return v[i0] * (1.0 - lam) + v[i1] * lam


def harmonic_source(f0, weight, bias, *, noise=None, noise_scale=1.0, upsample=300, harmonics=9,
                    sample_rate=24000, sine_amp=0.1, noise_std=0.003, voiced_threshold=10.0, parts=False):
    """kokoro's SourceModuleHnNSF(f0 upsampled) -> har_source [upsample * L] for the F0 curve f0 [L].

    noise: [upsample * L, harmonics] standard normals (ops.signal.source_noise, or torch.randn_like's draw) or
    None for none; noise_scale multiplies it (harmonic_source's params.noise). parts=True also returns the
    sines [n, harmonics] (before the voiced mask), the voiced mask [n] and the pre-tanh sums [n]."""
    f0 = np.asarray(f0, np.float64).reshape(-1)
    w = np.asarray(weight, np.float64).reshape(-1)[:harmonics]
    b = float(np.asarray(bias, np.float64).reshape(-1)[0])
    n_frames = len(f0)
    n = upsample * n_frames
    f0_up = np.repeat(f0, upsample)  # nn.Upsample(scale_factor=upsample), nearest
    fn = f0_up[:, None] * np.arange(1, harmonics + 1)  # [n, H]
    rad = np.mod(fn / sample_rate, 1.0)
    # torch adds a random initial phase to rad[0, 1:]; the downsampling below never reads sample 0 (it reads
    # samples upsample * i + upsample / 2 - 1 and upsample * i + upsample / 2), so it has no effect
    rad_down = _linear_resample(rad, n_frames, float(upsample))
    phase = np.cumsum(rad_down, axis=0) * 2.0 * np.pi
    phase_up = _linear_resample(phase * upsample, n, 1.0 / upsample)
    sines = np.sin(phase_up) * sine_amp
    uv = (f0_up > voiced_threshold).astype(np.float64)
    sine_waves = sines * uv[:, None]
    if noise is not None:
        noise_amp = uv * noise_std + (1.0 - uv) * sine_amp / 3.0
        sine_waves = sine_waves + noise_scale * noise_amp[:, None] * np.asarray(noise, np.float64).reshape(n, harmonics)
    pre = sine_waves @ w + b
    out = np.tanh(pre)
    if parts:
        return out, sines, uv, pre
    return out


def source_phase_turns(f0, *, upsample=300, harmonics=9, sample_rate=24000):
    """The exact phase of every sample and harmonic in turns modulo 1, [upsample * L, harmonics]: torch's
    phase_up / (2 pi) mod 1, formed without large numbers (frame sums of frac(f0 k upsample / sample_rate) mod 1,
    then the in-frame part), so that it is exact to float64 rounding however long the sentence; and the index
    i0 of the frame each sample's phase starts from (harmonic_source's error grows with it)."""
    f0 = np.asarray(f0, np.float64).reshape(-1)
    L = len(f0)
    k = np.arange(1, harmonics + 1)
    rad = np.mod(f0[:, None] * k / sample_rate, 1.0)  # [L, H]
    advance = upsample * rad  # turns a frame advances, [0, upsample)
    acc = np.mod(np.cumsum(np.mod(advance, 1.0), axis=0), 1.0)  # frame sums are below L: float64 keeps 1e-13
    n = np.arange(upsample * L)
    src = np.maximum((n + 0.5) / upsample - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), L - 1)
    lam = src - i0
    nxt = np.minimum(i0 + 1, L - 1)
    inner = np.where((i0 + 1 < L)[:, None], lam[:, None] * advance[nxt], 0.0)
    return np.mod(acc[i0] + inner, 1.0), i0


def stft(x, n_fft=20, hop=5):
    """torch.stft(x, n_fft, hop, n_fft, hann_window(n_fft), center=True, pad_mode='reflect', return_complex=True)
    as Generator.forward stacks it: [frames, n_fft + 2] = [|X| | angle(X)] per frame (time-major), frames =
    len(x) // hop + 1. The imaginary parts of bins 0 and n_fft / 2 are set to +0.0 (torch's real FFT gives
    exactly that), and so are those of frame 0, real in exact arithmetic (reflect padding makes its samples even
    about its centre; torch's signs there follow its FFT's rounding): a negative real part has angle +pi."""
    x = np.asarray(x, np.float64).reshape(-1)
    pad = np.pad(x, n_fft // 2, mode="reflect")
    n_frames = len(x) // hop + 1
    frames = np.stack([pad[hop * f: hop * f + n_fft] for f in range(n_frames)]) * hann_window(n_fft)
    X = np.fft.rfft(frames, axis=1)
    X[:, 0] = X[:, 0].real + 0.0j
    X[:, n_fft // 2] = X[:, n_fft // 2].real + 0.0j
    X[0] = X[0].real + 0.0j
    return np.concatenate([np.abs(X), np.arctan2(X.imag, X.real)], axis=1)


def istft_complex(X, n_fft=20, hop=5):
    """torch.istft(X.T, n_fft, hop, n_fft, hann_window(n_fft), center=True) for X [frames, n_fft / 2 + 1] complex:
    irfft of each frame (ignoring the imaginary parts of bins 0 and n_fft / 2), windowed, overlap-added, divided by
    the summed squared window, n_fft / 2 dropped at each end: hop * (frames - 1) samples."""
    X = np.asarray(X, np.complex128)
    m = X.shape[0]
    w = hann_window(n_fft)
    y_frames = np.fft.irfft(X, n=n_fft, axis=1) * w
    total = n_fft + hop * (m - 1)
    y = np.zeros(total)
    env = np.zeros(total)
    for f in range(m):
        y[hop * f: hop * f + n_fft] += y_frames[f]
        env[hop * f: hop * f + n_fft] += w * w
    half = n_fft // 2
    return y[half: total - half] / env[half: total - half]


def istft(spec, n_fft=20, hop=5, conv_post=True):
    """ops.signal.istft's input convention: spec [frames, n_fft + 2]; conv_post=True (Generator.forward):
    X = exp(spec[:, :nb]) e^(i sin(spec[:, nb:])); else X = spec[:, :nb] e^(i spec[:, nb:])."""
    spec = np.asarray(spec, np.float64)
    nb = n_fft // 2 + 1
    a, p = spec[:, :nb], spec[:, nb:2 * nb]
    X = np.exp(a) * np.exp(1j * np.sin(p)) if conv_post else a * np.exp(1j * p)
    return istft_complex(X, n_fft, hop)
