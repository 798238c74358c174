"""rullama_py.media.prepare_voice_target: a recording made ready as the target of voice cloning.

Synthetic recordings only: speech-like syllables (a harmonic complex on a gliding pitch with formant-like
peaks, raised-cosine edges, some with a noise burst) placed at known times in silence or noise, tones, clicks,
clipped copies. The expected values come from how the signals are built (where the syllables are, the tone's
frequency and phase, the clip level), never from the function's own output. The tests marked `pyodide` run
again inside Pyodide (tests/test_in_pyodide.py) with Pyodide's numpy and scipy.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from rullama_py import media
from rullama_py.media import (
    VOICE_KEEP_SECONDS,
    VOICE_LEVEL_DB,
    VOICE_MAX_CLIPPED,
    VOICE_MIN_SECONDS,
    VOICE_RATE,
    MediaError,
    VoiceTarget,
    VoiceTargetError,
    decode_wav,
    encode_wav,
    load_resampler,
    prepare_voice_target,
    prepare_voice_target_wav,
)

pyodide = pytest.mark.pyodide

MARGIN = 0.15  # seconds kept around the voice (media._VOICE_MARGIN_SECONDS)
FRAME = 0.01  # the level analysis' frame: trimming is exact to about one frame


def _syllable(rate: int, seconds: float, rng, *, f0: float, fricative: bool) -> np.ndarray:
    """One syllable: 40 harmonics of a pitch gliding 10% down, peaks near 700 and 2200 Hz, 20 ms raised-cosine
    edges; a fricative one ends in a 60 ms noise burst inside the same span."""
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    pitch = f0 * (1.0 - 0.1 * t / seconds)
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    x = np.zeros(n)
    for k in range(1, 41):
        f = k * f0
        if f >= 0.45 * rate:
            break
        amp = (1 + 2 * math.exp(-(((f - 700) / 300) ** 2)) + math.exp(-(((f - 2200) / 400) ** 2))) / k
        x += amp * np.sin(k * phase + rng.uniform(0, 2 * np.pi))
    if fricative:
        m = min(n, int(0.06 * rate))
        x[n - m:] += 0.5 * np.abs(x).max() * rng.standard_normal(m)
    edge = min(n // 2, int(0.02 * rate))
    ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(edge) / edge)
    x[:edge] *= ramp
    x[n - edge:] *= ramp[::-1]
    return x


def speechlike(rate: int, syllables, *, total: float, peak: float = 0.3, seed: int = 0) -> np.ndarray:
    """float32 [total * rate]: syllables (start, end) in seconds, in digital silence, scaled to `peak`."""
    rng = np.random.default_rng(seed)
    x = np.zeros(int(round(total * rate)))
    for i, (a, b) in enumerate(syllables):
        s = int(round(a * rate))
        y = _syllable(rate, b - a, rng, f0=rng.uniform(100, 220), fricative=i % 3 == 2)
        x[s:s + y.size] += y
    return (peak * x / np.abs(x).max()).astype(np.float32)


def _syllables(start: float, end: float, *, word: float = 0.25, gap: float = 0.1):
    """Syllables of `word` seconds every word + gap from start, the last ending at `end`."""
    out, t = [], start
    while t + word < end - 1e-9:
        out.append((t, t + word))
        t += word + gap
    out.append((end - word, end))
    return out


def _refused(fn, name: str, *words: str) -> str:
    with pytest.raises(VoiceTargetError) as info:
        fn()
    msg = str(info.value)
    assert isinstance(info.value, MediaError)
    assert msg.startswith(name) and msg.endswith(".") and "\n" not in msg, msg
    for w in ("Traceback", "Error", "numpy", "scipy"):
        assert w not in msg, msg
    assert info.value.__cause__ is None and (info.value.__context__ is None or info.value.__suppress_context__)
    for w in words:
        assert w.lower() in msg.lower(), msg
    return msg


def _rms_db(x) -> float:
    x = np.asarray(x, np.float64)
    return 10 * math.log10(np.mean(x * x))


# --- trimming, level, resampling ---------------------------------------------------------------------------

@pyodide
@pytest.mark.parametrize("rate", [16000, 22050, 24000, 44100, 48000])
async def test_speech_in_silence_is_trimmed_to_the_voice_and_resampled(rate):
    await load_resampler()
    syl = _syllables(1.0, 7.0)
    x = speechlike(rate, syl, total=8.5)
    t = prepare_voice_target(x, rate, "talk.wav")
    assert isinstance(t, VoiceTarget)
    assert t.pcm.dtype == np.float32 and t.pcm.ndim == 1 and np.isfinite(t.pcm).all()
    assert t.input_rate == rate and t.input_seconds == pytest.approx(x.size / rate)
    assert t.trimmed == pytest.approx((1.0 - MARGIN, 7.0 + MARGIN), abs=FRAME)
    span = t.trimmed[1] - t.trimmed[0]
    assert t.pcm.size == math.ceil(round(span * rate) * VOICE_RATE / rate) and t.seconds == t.pcm.size / VOICE_RATE
    voiced = sum(b - a for a, b in syl)
    assert abs(t.voice_seconds - voiced) <= 0.02 * len(syl)  # each syllable's 20 ms edges may count or not
    assert not t.truncated and t.clipped == 0.0
    assert t.bandwidth_hz == min(rate, VOICE_RATE) / 2
    assert t.peak == pytest.approx(0.3, rel=1e-6)
    # the level: the voice at VOICE_LEVEL_DB after scaling (the syllables fill the voice frames)
    voice_rms = _rms_db(np.concatenate([x[round(a * rate):round(b * rate)] for a, b in syl]))
    assert t.rms_db == pytest.approx(voice_rms, abs=0.5)
    assert t.gain == pytest.approx(10 ** ((VOICE_LEVEL_DB - t.rms_db) / 20), rel=1e-9)
    assert np.abs(t.pcm).max() <= 0.99


@pyodide
@pytest.mark.parametrize("rate", [16000, 44100, 48000])
async def test_resampling_to_24k_keeps_a_tone_its_frequency_and_its_place(rate):
    await load_resampler()
    f = 1234.5
    n0, n1 = rate, 5 * rate  # the tone from 1 s to 5 s
    x = np.zeros(6 * rate, np.float32)
    k = np.arange(n0, n1)
    x[n0:n1] = 0.25 * np.sin(2 * np.pi * f * k / rate)
    if rate == 48000:  # a component 24 kHz cannot hold: the resampler's filter removes it, no alias at 9 kHz
        x[n0:n1] += 0.05 * np.sin(2 * np.pi * 15000 * k / rate)
    t = prepare_voice_target(x, rate)
    assert t.trimmed == pytest.approx((1.0 - MARGIN, 5.0 + MARGIN), abs=1e-9)  # the tone starts on a frame
    time = t.trimmed[0] + np.arange(t.pcm.size) / VOICE_RATE
    want = t.gain * 0.25 * np.sin(2 * np.pi * f * time)
    inner = (time > 1.01) & (time < 4.99)  # away from the tone's abrupt edges
    assert np.abs(t.pcm[inner] - want[inner]).max() < 2e-3 * t.gain * 0.25
    spectrum = np.abs(np.fft.rfft(t.pcm[inner].astype(np.float64) * np.hanning(inner.sum()), 8 * inner.sum()))
    peak_hz = np.argmax(spectrum) * VOICE_RATE / (8 * inner.sum())
    assert abs(peak_hz - f) < 0.05


@pyodide
def test_the_level_is_normalised_and_the_input_level_reported():
    syl = _syllables(0.5, 4.5)
    loud = speechlike(VOICE_RATE, syl, total=5.0, peak=0.8)
    quiet = speechlike(VOICE_RATE, syl, total=5.0, peak=0.8 * 10 ** (-30 / 20))  # 30 dB lower
    a, b = prepare_voice_target(loud, VOICE_RATE), prepare_voice_target(quiet, VOICE_RATE)
    assert b.rms_db == pytest.approx(a.rms_db - 30, abs=0.01) and b.peak == pytest.approx(a.peak / 10 ** 1.5, rel=1e-5)
    assert b.gain == pytest.approx(a.gain * 10 ** 1.5, rel=1e-4)
    assert a.trimmed == b.trimmed and np.abs(a.pcm - b.pcm).max() < 1e-5
    # a recording with rare high peaks over a quiet voice: scaled so the peaks stay at 0.99, below VOICE_LEVEL_DB
    spiky = quiet.copy()
    spiky[[VOICE_RATE, 2 * VOICE_RATE, 3 * VOICE_RATE]] = 0.5
    c = prepare_voice_target(spiky, VOICE_RATE)
    assert np.abs(c.pcm).max() == pytest.approx(0.99, rel=1e-6) and c.gain == pytest.approx(0.99 / 0.5, rel=1e-6)


@pyodide
def test_noise_before_and_after_the_voice_is_trimmed():
    rng = np.random.default_rng(5)
    x = speechlike(VOICE_RATE, _syllables(2.0, 6.0), total=8.0, peak=0.5)
    x += (10 ** (-40 / 20) * rng.standard_normal(x.size)).astype(np.float32)  # room noise at -40 dBFS throughout
    t = prepare_voice_target(x, VOICE_RATE)
    assert t.trimmed == pytest.approx((2.0 - MARGIN, 6.0 + MARGIN), abs=0.03)


@pyodide
def test_stereo_either_layout_is_averaged_and_a_float_rate_is_taken():
    syl = _syllables(0.5, 4.5)
    left = speechlike(VOICE_RATE, syl, total=5.0, seed=1)
    right = speechlike(VOICE_RATE, syl, total=5.0, seed=2)
    mono = prepare_voice_target(((left.astype(np.float64) + right) / 2).astype(np.float32), VOICE_RATE)
    for stereo in (np.stack([left, right], axis=1), np.stack([left, right], axis=0)):
        t = prepare_voice_target(stereo, float(VOICE_RATE))  # a browser's AudioBuffer.sampleRate is a float
        assert t.input_rate == VOICE_RATE and t.trimmed == mono.trimmed
        np.testing.assert_allclose(t.pcm, mono.pcm, atol=1e-6)


@pyodide
async def test_a_wav_file_is_decoded_then_prepared():
    await load_resampler()
    x = speechlike(44100, _syllables(0.5, 4.5), total=5.0)
    data = encode_wav(x, 44100)
    t = prepare_voice_target_wav(data, "take1.wav")
    want = prepare_voice_target(*decode_wav(data), "take1.wav")
    assert t.trimmed == want.trimmed and np.array_equal(t.pcm, want.pcm)
    assert t.trimmed[0] == pytest.approx(0.5 - MARGIN, abs=FRAME)
    with pytest.raises(MediaError, match="take1.mp3 is an MP3 file"):
        prepare_voice_target_wav(b"ID3\x04" + bytes(100), "take1.mp3")


# --- length ----------------------------------------------------------------------------------------------

@pyodide
@pytest.mark.parametrize("rate", [24000, 44100])
async def test_exactly_three_seconds_of_voice_is_enough_and_less_is_not(rate):
    await load_resampler()
    def burst(seconds):  # a steady harmonic tone starting on a frame boundary, in silence
        x = np.zeros(rate * 6, np.float32)
        n = round(seconds * rate)
        k = np.arange(n)
        x[rate:rate + n] = 0.2 * (np.sin(2 * np.pi * 150 * k / rate) + 0.5 * np.sin(2 * np.pi * 450 * k / rate))
        return x

    t = prepare_voice_target(burst(VOICE_MIN_SECONDS), rate)
    assert t.voice_seconds == pytest.approx(VOICE_MIN_SECONDS, abs=1e-9)
    assert t.trimmed == pytest.approx((1.0 - MARGIN, 1.0 + VOICE_MIN_SECONDS + MARGIN), abs=1e-9)
    _refused(lambda: prepare_voice_target(burst(2.9), rate, "take.wav"), "take.wav", "only 2.9 s of voice",
             "at least 3 s", "10-30 s")


@pyodide
def test_too_little_voice_is_refused_even_in_a_long_clip():
    short = speechlike(VOICE_RATE, [(1.0, 1.9), (2.0, 2.9)], total=10.0)  # 1.8 s of voice in 10 s
    msg = _refused(lambda: prepare_voice_target(short, VOICE_RATE), "recording", "only 1.8 s of voice",
                   "record at least 3 s")
    assert msg == "recording has only 1.8 s of voice; record at least 3 s (10-30 s is best)."
    tiny = speechlike(VOICE_RATE, [(0.05, 0.45)], total=0.5)
    _refused(lambda: prepare_voice_target(tiny, VOICE_RATE, "hi"), "hi", "only 400 ms of voice")


@pyodide
def test_a_long_recording_keeps_its_first_minute_of_voice():
    ten = speechlike(VOICE_RATE, _syllables(0.1, 9.9, word=0.3, gap=0.2), total=10.0)
    x = np.concatenate([np.zeros(2 * VOICE_RATE, np.float32), np.tile(ten, 9)])  # 92 s, voice from 2.1 s
    t = prepare_voice_target(x, VOICE_RATE)
    assert t.truncated and t.trimmed[0] == pytest.approx(2.1 - MARGIN, abs=FRAME)
    assert t.trimmed[1] - t.trimmed[0] == pytest.approx(VOICE_KEEP_SECONDS, abs=1e-9)
    assert t.pcm.size == VOICE_KEEP_SECONDS * VOICE_RATE and t.seconds == VOICE_KEEP_SECONDS
    assert t.voice_seconds == pytest.approx(VOICE_KEEP_SECONDS * 0.3 / 0.5, abs=1.0)
    fits = prepare_voice_target(x[: int(50 * VOICE_RATE)], VOICE_RATE)
    assert not fits.truncated


@pyodide
def test_more_than_ten_minutes_is_refused_before_any_work():
    x = np.zeros(8000 * 601, np.float32)
    _refused(lambda: prepare_voice_target(x, 8000, "lecture.wav"), "lecture.wav", "too long", "10 min",
             "shorter clip")
    # 600 s exactly passes the length check (and is found silent here)
    _refused(lambda: prepare_voice_target(x[: 8000 * 600], 8000, "lecture.wav"), "lecture.wav", "silent")


# --- silence ---------------------------------------------------------------------------------------------

@pyodide
def test_silence_and_near_silence_are_refused():
    rng = np.random.default_rng(3)
    msgs = [
        _refused(lambda: prepare_voice_target(np.zeros(5 * VOICE_RATE, np.float32), VOICE_RATE), "recording",
                 "silent"),
        # microphone self-noise at -60 dBFS
        _refused(lambda: prepare_voice_target((1e-3 * rng.standard_normal(5 * VOICE_RATE)).astype(np.float32),
                                              VOICE_RATE), "recording", "silent"),
    ]
    assert all("microphone" in m and "record again" in m for m in msgs)
    # a few loud clicks in silence are not a voice: the loudest level is that of the 10th loudest 10 ms frame
    clicks = np.zeros(5 * VOICE_RATE, np.float32)
    clicks[np.arange(1, 10) * VOICE_RATE // 2] = 0.9
    _refused(lambda: prepare_voice_target(clicks, VOICE_RATE), "recording", "silent")
    # a quiet voice (peaks at -30 dBFS) is taken
    quiet = speechlike(VOICE_RATE, _syllables(0.5, 5.5), total=6.0, peak=10 ** (-30 / 20))
    assert prepare_voice_target(quiet, VOICE_RATE).voice_seconds > VOICE_MIN_SECONDS


# --- clipping --------------------------------------------------------------------------------------------

def _flat_at(x, level) -> np.ndarray:
    """bool [n]: samples at +-level with a neighbour at the same value (what clipping at `level` leaves)."""
    at = np.abs(x) >= level
    pair = at[1:] & at[:-1] & (x[1:] == x[:-1])
    out = np.zeros(x.size, bool)
    out[1:] |= pair
    out[:-1] |= pair
    return out


@pyodide
def test_a_clipped_recording_is_refused():
    x = speechlike(VOICE_RATE, _syllables(0.5, 5.5), total=6.0, peak=1.0)
    kept = slice(int(0.35 * VOICE_RATE), int(5.65 * VOICE_RATE))  # what trimming keeps (0.15 s margins)
    hot = np.clip(4.0 * x, -1.0, 1.0)  # recorded 12 dB too hot: the loud cycles cut off flat
    msg = _refused(lambda: prepare_voice_target(hot, VOICE_RATE, "mic.wav"), "mic.wav", "clipped",
                   "further from the microphone")
    assert f"{100 * _flat_at(hot, 1.0)[kept].mean():.1f}%" in msg
    # clipped as a 16-bit WAV file stores it (32767 / 32768 on top, -1 below): found after decoding too
    _refused(lambda: prepare_voice_target_wav(encode_wav(hot, VOICE_RATE), "mic.wav"), "mic.wav", "clipped")
    # clipped at a lower level (a gain stage after the clip), on one side only
    _refused(lambda: prepare_voice_target(np.minimum(x, 0.3), VOICE_RATE), "recording", "clipped")
    # one channel of two clipped: found before the channels are averaged
    stereo = np.stack([hot, 0.25 * x], axis=1)
    _refused(lambda: prepare_voice_target(stereo, VOICE_RATE), "recording", "clipped")


@pyodide
def test_a_loud_clean_voice_and_a_few_clipped_peaks_are_taken():
    x = speechlike(VOICE_RATE, _syllables(0.5, 5.5), total=6.0, peak=1.0)  # peaks at full scale, not clipped
    assert prepare_voice_target(x, VOICE_RATE).clipped == 0.0
    # a hum at full scale whose period is a whole number of samples: its crest sample repeats, but alone
    for f in (80.0, 100.0, 83.7):
        hum = np.zeros(5 * VOICE_RATE, np.float32)
        hum[VOICE_RATE // 2:] = np.sin(2 * np.pi * f * np.arange(hum.size - VOICE_RATE // 2) / VOICE_RATE)
        assert prepare_voice_target(hum, VOICE_RATE).clipped == 0.0
    # 6 dB too hot: a few peaks clipped, under VOICE_MAX_CLIPPED of the samples: taken, and the share reported
    warm = np.clip(2.0 * x, -1.0, 1.0)
    t = prepare_voice_target(warm, VOICE_RATE)
    kept = warm[round(t.trimmed[0] * VOICE_RATE):round(t.trimmed[1] * VOICE_RATE)]
    assert 0 < t.clipped <= VOICE_MAX_CLIPPED and t.clipped == _flat_at(kept, 1.0).mean()


# --- bad input -------------------------------------------------------------------------------------------

@pyodide
def test_bad_input_is_refused_with_a_sentence():
    x = speechlike(VOICE_RATE, _syllables(0.5, 4.5), total=5.0)
    _refused(lambda: prepare_voice_target(np.zeros(0, np.float32), VOICE_RATE, "empty.wav"), "empty.wav",
             "no audio", "no samples")
    for empty in (np.zeros((0, 2), np.float32), np.zeros((2, 0), np.float32)):
        _refused(lambda: prepare_voice_target(empty, VOICE_RATE), "recording", "no audio")
    for bad in (np.nan, np.inf, -np.inf):
        y = x.copy()
        y[100] = bad
        _refused(lambda: prepare_voice_target(y, VOICE_RATE), "recording", "not numbers")
    for rate in (0, -24000, 44100.5, float("nan"), float("inf")):
        _refused(lambda: prepare_voice_target(x, rate), "recording", "sample rate", "positive whole number")
    _refused(lambda: prepare_voice_target(x, 4000), "recording", "4000 Hz", "too low", "8000 Hz or more")
    _refused(lambda: prepare_voice_target(x, 1_000_000), "recording", "1000000 Hz", "768000 Hz")
    _refused(lambda: prepare_voice_target(np.zeros((100, 200), np.float32), VOICE_RATE), "recording",
             "shape (100, 200)")
    _refused(lambda: prepare_voice_target(np.zeros((2, 3, 4), np.float32), VOICE_RATE), "recording",
             "shape (2, 3, 4)")
    with pytest.raises(TypeError, match="float array"):
        prepare_voice_target((x * 32767).astype(np.int16), VOICE_RATE)
    with pytest.raises(TypeError, match="number"):
        prepare_voice_target(x, None)
