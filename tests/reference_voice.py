"""numpy reference (float64) of the voice trainer's timbre signature and of its (1+1) hill-climb rule.

The signature is a timing-invariant description of a voice: the mean log-mel spectrum over the active frames of
24 kHz speech, level removed. Two utterances of one voice give close signatures whatever the words and their
durations, which is why the trainer compares signatures rather than waveforms.

    x (24 kHz, float) -> frames: zero-padded by N_FFT // 2 on both sides, frame f = padded[HOP f, HOP f + N_FFT),
                         f = 0 .. len(x) // HOP  (len(x) // HOP + 1 frames)
                      -> |rfft(frame * periodic Hann)|^2            [frames, 513]   (no scaling)
                      -> @ mel_filterbank().T                       [frames, 80]
                      -> L = ln(mel power + 1e-8)
                      -> e = mean of L over the 80 bands (per frame); active frames: e > max(e) - 6
                      -> m = mean of L over the active frames; signature = m - mean(m)   [80]
    loss(a, b) = mean over the 80 bands of (a - b)^2

The filterbank is librosa.filters.mel(sr=24000, n_fft=1024, n_mels=80, fmin=40, fmax=12000, htk=True,
norm=None) in float64 (librosa stores the same numbers in float32 by default): 80 triangles on the FFT bins'
frequencies k * 24000 / 1024, with corners at 82 frequencies evenly spaced on the HTK mel scale
mel(f) = 2595 log10(1 + f / 700) from 40 Hz to 12 kHz; band m rises from corner m to 1 at corner m + 1 and falls
to 0 at corner m + 2, with no area normalisation. Written from that definition, not from the GPU kernels.
"""

import numpy as np

SAMPLE_RATE = 24000
N_FFT = 1024
HOP = 256
N_MELS = 80
F_MIN, F_MAX = 40.0, 12000.0
LOG_FLOOR = 1e-8  # added to the mel power before the log: digital silence gives ln(1e-8), not -inf
ACTIVE_RANGE = 6.0  # nats of mean log-mel below the loudest frame that still count as active (about 26 dB)


def hz_to_mel(f):
    """The HTK mel scale: 2595 log10(1 + f / 700)."""
    return 2595.0 * np.log10(1.0 + np.asarray(f, np.float64) / 700.0)


def mel_to_hz(m):
    """The inverse of hz_to_mel: 700 (10^(m / 2595) - 1)."""
    return 700.0 * (10.0 ** (np.asarray(m, np.float64) / 2595.0) - 1.0)


def mel_corners(n_mels=N_MELS, f_min=F_MIN, f_max=F_MAX):
    """float64 [n_mels + 2]: the triangles' corner frequencies in Hz, evenly spaced in mel from f_min to f_max;
    band m has its lower edge at corner m, its peak at corner m + 1, its upper edge at corner m + 2."""
    return mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))


def mel_filterbank(sample_rate=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS, f_min=F_MIN, f_max=F_MAX):
    """float64 [n_mels, n_fft // 2 + 1]: weight of FFT bin k (at k * sample_rate / n_fft Hz) in mel band m."""
    corners = mel_corners(n_mels, f_min, f_max)
    freqs = np.arange(n_fft // 2 + 1) * (sample_rate / n_fft)
    lower, peak, upper = corners[:-2, None], corners[1:-1, None], corners[2:, None]
    rising = (freqs[None, :] - lower) / (peak - lower)
    falling = (upper - freqs[None, :]) / (upper - peak)
    return np.maximum(0.0, np.minimum(rising, falling))


def hann(n=N_FFT):
    """The periodic Hann window, 0.5 - 0.5 cos(2 pi j / n) for j < n (np.hanning(n + 1)[:-1])."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)


def frames(x):
    """float64 [len(x) // HOP + 1, N_FFT]: the centred frames, frame f = the zero-padded signal's samples
    [HOP f, HOP f + N_FFT), the padding N_FFT // 2 zeros on both sides."""
    x = np.asarray(x, np.float64).reshape(-1)
    padded = np.concatenate([np.zeros(N_FFT // 2), x, np.zeros(N_FFT // 2)])
    n_frames = x.size // HOP + 1
    index = HOP * np.arange(n_frames)[:, None] + np.arange(N_FFT)[None, :]
    return padded[index]


def power_spectrum(x):
    """float64 [frames, N_FFT // 2 + 1]: |rfft(frame * hann)|^2, unscaled."""
    return np.abs(np.fft.rfft(frames(x) * hann(), axis=-1)) ** 2


def log_mel(x):
    """float64 [frames, N_MELS]: ln(power_spectrum @ mel_filterbank().T + LOG_FLOOR)."""
    return np.log(power_spectrum(x) @ mel_filterbank().T + LOG_FLOOR)


def active_frames(L):
    """bool [frames]: frames whose mean log-mel over the bands is above the loudest frame's minus ACTIVE_RANGE."""
    e = np.asarray(L, np.float64).mean(axis=1)
    return e > e.max() - ACTIVE_RANGE


def signature_of_log_mel(L):
    """float64 [N_MELS]: the mean of the log-mel rows L [frames, N_MELS] over the active frames, minus its own mean
    over the bands (so a change of level, which adds a constant to every band, leaves it unchanged)."""
    L = np.asarray(L, np.float64)
    m = L[active_frames(L)].mean(axis=0)
    return m - m.mean()


def signature(x):
    """float64 [N_MELS]: the timbre signature of 24 kHz mono audio x."""
    return signature_of_log_mel(log_mel(x))


def signature_loss(a, b):
    """The mean over the bands of the squared difference of two signatures (nats^2)."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    return float(np.mean(d * d))


def hill_climb_step_reference(best_loss, candidate_loss, step, *, anneal=0.95):
    """The seed system's (1+1) hill-climb rule for one step, on the losses: the candidate replaces the best when
    its loss is strictly lower, and the step size is kept; otherwise the best stays and the step size is
    multiplied by `anneal`. Returns (best_loss, step, accepted)."""
    if candidate_loss < best_loss:
        return candidate_loss, step, True
    return best_loss, step * anneal, False


def hill_climb_candidate(best, step, scale, noise):
    """float64 [D]: the seed's candidate, best + step * scale * noise (best [D]; step a scalar; scale [D] or a
    scalar, the per-dimension step scales; noise [D], the step's standard-normal draw)."""
    return np.asarray(best, np.float64) + step * np.asarray(scale, np.float64) * np.asarray(noise, np.float64)


def hill_climb_step(best, best_loss, step, scale, noise, loss_fn, *, anneal=0.95):
    """One whole (1+1) step over a given noise vector: the candidate (hill_climb_candidate), its loss
    loss_fn(candidate) (called once), and the rule (hill_climb_step_reference).
    Returns (best, best_loss, step, candidate_loss, accepted)."""
    candidate = hill_climb_candidate(best, step, scale, noise)
    candidate_loss = float(loss_fn(candidate))
    best_loss, step, accepted = hill_climb_step_reference(best_loss, candidate_loss, step, anneal=anneal)
    return (candidate if accepted else np.asarray(best, np.float64)), best_loss, step, candidate_loss, accepted
