"""tests/reference_voice.py against facts that do not come from it: the HTK mel scale's defining points, what
a triangular filterbank with shared corners must satisfy, the DFT's definition and Parseval's theorem, where a
pure tone's energy lies, the level and order invariances the signature is built to have, and the hill-climb rule
worked by hand. (While writing it, it was also compared with the seed recipe melsig_identifiability.py: the
filterbank equal, the signatures to 2e-15.)
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import reference_voice as rv

RATE = rv.SAMPLE_RATE
BIN_HZ = RATE / rv.N_FFT  # 23.4375 Hz


def _voice(seconds: float, *, f0: float, formants, seed: int) -> np.ndarray:
    """A steady vowel-like sound: harmonics of f0 shaped by resonance peaks, plus breath noise in every band."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    x = np.zeros(t.size)
    for k in range(1, int(11000 / f0)):
        amp = sum(math.exp(-(((k * f0 - f) / bw) ** 2)) for f, bw in formants) + 0.05
        x += amp / k * np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 2 * np.pi))
    return x / np.abs(x).max() + 0.01 * rng.standard_normal(t.size)


# --- the mel scale and the filterbank ---------------------------------------------------------------------

def test_the_htk_mel_scale():
    assert rv.hz_to_mel(0.0) == 0.0
    assert rv.hz_to_mel(700.0) == pytest.approx(2595 * math.log10(2), rel=1e-15)
    assert rv.hz_to_mel(1000.0) == pytest.approx(1000.0, abs=0.05)  # the scale's design point
    f = np.array([40.0, 440.0, 3000.0, 12000.0])
    np.testing.assert_allclose(rv.mel_to_hz(rv.hz_to_mel(f)), f, rtol=1e-13)
    c = rv.mel_corners()
    assert c.shape == (82,) and c[0] == pytest.approx(40.0, rel=1e-13) and c[-1] == pytest.approx(12000.0, rel=1e-13)
    steps = np.diff(rv.hz_to_mel(c))
    np.testing.assert_allclose(steps, (rv.hz_to_mel(12000.0) - rv.hz_to_mel(40.0)) / 81, rtol=1e-10)


def test_the_filterbank_is_triangles_between_the_mel_corners():
    fb = rv.mel_filterbank()
    c = rv.mel_corners()
    freqs = np.arange(rv.N_FFT // 2 + 1) * BIN_HZ
    assert fb.shape == (80, 513) and fb.dtype == np.float64
    assert fb.min() == 0.0 and fb.max() <= 1.0
    assert np.all(fb.max(axis=1) > 0)  # no empty band (librosa would warn)
    for m in range(80):
        inside = (freqs > c[m]) & (freqs < c[m + 2])
        assert np.array_equal(fb[m] > 0, inside), m  # support: strictly between the band's outer corners
        peak = int(np.argmax(fb[m]))
        assert math.floor(c[m + 1] / BIN_HZ) <= peak <= math.ceil(c[m + 1] / BIN_HZ), m  # a bin next to its peak
    # adjacent triangles share their corners, so between the first and the last peak the weights sum to 1
    between = (freqs >= c[1]) & (freqs <= c[80])
    np.testing.assert_allclose(fb[:, between].sum(axis=0), 1.0, rtol=0, atol=1e-12)
    # and each triangle is linear in Hz on either side of its peak: equal steps from bin to bin
    for m in (0, 20, 79):
        for side in ((freqs > c[m]) & (freqs < c[m + 1]), (freqs > c[m + 1]) & (freqs < c[m + 2])):
            w = fb[m, side]
            if w.size > 2:
                np.testing.assert_allclose(np.diff(w, 2), 0.0, atol=1e-12)


# --- frames and the power spectrum ------------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 255, 256, 257, 1023, 1024, 24000, 24000 * 2 + 77])
def test_frames_are_centred_and_count_n_over_hop_plus_one(n):
    x = np.arange(1, n + 1, dtype=np.float64)  # sample j holds j + 1: a frame's values say where it reads
    fr = rv.frames(x)
    assert fr.shape == (n // 256 + 1, 1024)
    for f in {0, min(1, fr.shape[0] - 1), fr.shape[0] // 2, fr.shape[0] - 1}:
        pos = 256 * f + np.arange(1024) - 512  # the frame's first sample sits 512 before 256 f
        want = np.where((pos >= 0) & (pos < n), pos + 1, 0)
        np.testing.assert_array_equal(fr[f], want)


def test_the_window_is_the_periodic_hann():
    w = rv.hann()
    np.testing.assert_allclose(w, np.hanning(1025)[:-1], atol=1e-15)
    assert w[0] == 0.0 and w[512] == 1.0 and np.allclose(w[1:], w[:0:-1], atol=1e-15)


def test_the_power_spectrum_is_the_unscaled_dft():
    rng = np.random.default_rng(1)
    x = rng.standard_normal(3000)
    p = rv.power_spectrum(x)
    fr = rv.frames(x)[5] * rv.hann()
    j = np.arange(1024)
    for k in (0, 1, 100, 511, 512):  # the DFT's definition, sum over j of v_j e^(-2 pi i j k / 1024)
        dft = np.sum(fr * np.exp(-2j * np.pi * j * k / 1024))
        assert p[5, k] == pytest.approx(abs(dft) ** 2, rel=1e-10)
    # Parseval over the one-sided spectrum: |X_0|^2 + 2 sum |X_1..511|^2 + |X_512|^2 = 1024 sum v^2
    one_sided = p[:, 0] + 2 * p[:, 1:512].sum(axis=1) + p[:, 512]
    np.testing.assert_allclose(one_sided, 1024 * np.sum((rv.frames(x) * rv.hann()) ** 2, axis=1), rtol=1e-10)


def test_digital_silence_is_the_log_floor():
    L = rv.log_mel(np.zeros(2000))
    assert L.shape == (8, 80) and np.all(L == np.log(1e-8))


# --- what the signature says -------------------------------------------------------------------------------

def test_a_pure_tone_peaks_in_the_band_that_holds_it():
    c = rv.mel_corners()
    t = np.arange(RATE) / RATE
    for m in range(80):  # a tone at each band's peak frequency
        assert int(np.argmax(rv.signature(np.sin(2 * np.pi * c[m + 1] * t + 0.3)))) == m, m
    for f in (75.0, 440.0, 1000.0, 2345.6, 7777.0, 11900.0):  # and anywhere: a band whose triangle covers f
        k = int(np.argmax(rv.signature(np.sin(2 * np.pi * f * t))))
        assert c[k] < f < c[k + 2], f
    # two tones: the two bands stand out above all the others
    two = rv.signature(np.sin(2 * np.pi * c[31] * t) + np.sin(2 * np.pi * c[61] * t))
    assert set(np.argsort(two)[-2:]) == {30, 60}


def test_the_signature_ignores_the_level(monkeypatch):
    x = _voice(1.5, f0=150, formants=[(700, 150), (1200, 200), (2600, 300)], seed=0)
    s = rv.signature(x)
    assert s.shape == (80,) and abs(s.mean()) < 1e-12
    # a gain adds 2 ln(gain) to every band of every frame: the same frames stay active and the band mean takes
    # it away. Only the 1e-8 floor added before the log breaks this, by about 1e-8 / (a band's power): here the
    # breath noise keeps every band's power above 0.04 at gain 1.
    for gain in (0.5, 7.0, 1e3):
        np.testing.assert_allclose(rv.signature(gain * x), s, rtol=0, atol=1e-6)
    assert np.abs(rv.signature(1e-2 * x) - s).max() > 1e-4  # 40 dB down, the floor shows
    monkeypatch.setattr(rv, "LOG_FLOOR", 0.0)
    s0 = rv.signature(x)
    for gain in (1e-3, 1e-2, 7.0, 1e3):  # without the floor, exact for any gain
        np.testing.assert_allclose(rv.signature(gain * x), s0, rtol=0, atol=1e-10)
    other = _voice(1.5, f0=150, formants=[(300, 100), (2300, 200), (3000, 300)], seed=0)  # another vowel
    assert rv.signature_loss(rv.signature(other), s) > 0.1


def test_silence_around_the_voice_changes_nothing():
    x = _voice(1.0, f0=210, formants=[(500, 120), (1800, 250)], seed=2)
    x = np.concatenate([np.zeros(2400), x, np.zeros(2400)])  # its own 0.1 s of silence at both ends
    s = rv.signature(x)
    for before, after in ((256, 0), (512 * 7, 1), (0, 999), (256 * 40, 12345)):  # before: whole hops
        padded = np.concatenate([np.zeros(before), x, np.zeros(after)])
        assert rv.frames(padded).shape[0] > rv.frames(x).shape[0] or (before, after) == (0, 0)
        np.testing.assert_allclose(rv.signature(padded), s, rtol=0, atol=1e-10)


def test_the_order_of_the_sounds_does_not_matter():
    gap = np.zeros(2048)
    a = _voice(0.5, f0=120, formants=[(600, 150), (1100, 200)], seed=3)
    b = _voice(0.5, f0=180, formants=[(400, 100), (2200, 300)], seed=4)
    # whole hops, so that both orders cut the same frames
    a, b = (np.concatenate([v, np.zeros((-v.size) % 256)]) for v in (a, b))
    ab = np.concatenate([gap, a, gap, b, gap])
    ba = np.concatenate([gap, b, gap, a, gap])
    np.testing.assert_allclose(rv.signature(ab), rv.signature(ba), rtol=0, atol=1e-10)
    assert rv.signature_loss(rv.signature(ab), rv.signature(np.concatenate([gap, a, gap]))) > 0.01


def test_only_frames_within_6_nats_of_the_loudest_are_averaged():
    rng = np.random.default_rng(7)
    shapes = rng.standard_normal((6, 80))
    shapes -= shapes.mean(axis=1, keepdims=True)  # each row's band mean is exactly its level below
    levels = np.array([0.0, -3.0, -5.99, -6.01, -20.0, -2.0])
    L = levels[:, None] + shapes
    active = rv.active_frames(L)
    assert active.tolist() == [True, True, True, False, False, True]
    want = shapes[active].mean(axis=0)  # the levels cancel in the signature
    np.testing.assert_allclose(rv.signature_of_log_mel(L), want - want.mean(), atol=1e-12)
    np.testing.assert_allclose(rv.signature_of_log_mel(L + 3.0), rv.signature_of_log_mel(L), atol=1e-12)


def test_the_loss_is_the_mean_squared_difference():
    a = np.zeros(80)
    assert rv.signature_loss(a, a) == 0.0
    assert rv.signature_loss(a, np.ones(80)) == 1.0
    b = a.copy()
    b[3] = 2.0
    assert rv.signature_loss(a, b) == rv.signature_loss(b, a) == 4.0 / 80


# --- the hill-climb step --------------------------------------------------------------------------------

def test_the_hill_climb_rule_accepts_only_a_strictly_lower_loss_and_anneals_otherwise():
    assert rv.hill_climb_step_reference(2.0, 1.25, 0.5) == (1.25, 0.5, True)
    assert rv.hill_climb_step_reference(2.0, 3.0, 0.5) == (2.0, 0.5 * 0.95, False)
    assert rv.hill_climb_step_reference(2.0, 2.0, 0.5) == (2.0, 0.5 * 0.95, False)  # as good is not better
    assert rv.hill_climb_step_reference(2.0, 3.0, 0.5, anneal=0.9) == (2.0, 0.45, False)
    assert rv.hill_climb_step_reference(2.0, float("nan"), 0.5) == (2.0, 0.5 * 0.95, False)  # NaN never wins


def test_the_hill_climb_step_on_vectors():
    calls = []

    def loss(v):
        calls.append(v.copy())
        return float(np.sum(v * v))

    best, best_loss, step = np.array([1.0, 1.0]), 2.0, 1.0
    scale = np.array([0.5, 2.0])
    # noise (-1, 0): candidate (0.5, 1), loss 1.25 < 2: taken, step kept
    best, best_loss, step, cand_loss, ok = rv.hill_climb_step(best, best_loss, step, scale, np.array([-1.0, 0.0]),
                                                              loss)
    assert ok and np.array_equal(best, [0.5, 1.0]) and best_loss == 1.25 == cand_loss and step == 1.0
    # noise (1, 1): candidate (1, 3), loss 10: refused, step * 0.95
    best, best_loss, step, cand_loss, ok = rv.hill_climb_step(best, best_loss, step, scale, np.array([1.0, 1.0]),
                                                              loss)
    assert not ok and np.array_equal(best, [0.5, 1.0]) and best_loss == 1.25 and cand_loss == 10.0
    assert step == 0.95
    # the step scales the noise: 0.95 * scale (0.5, 2) * noise (-1, -0.25) from (0.5, 1)
    best, best_loss, step, cand_loss, ok = rv.hill_climb_step(best, best_loss, step, scale,
                                                              np.array([-1.0, -0.25]), loss)
    np.testing.assert_allclose(calls[-1], [0.5 - 0.95 * 0.5, 1.0 - 0.95 * 0.5], rtol=1e-15)
    assert ok and len(calls) == 3  # one evaluation per step


def test_a_seeded_climb_never_rises_and_anneals_once_per_refusal():
    target = np.linspace(-1, 1, 16)
    loss = lambda v: float(np.mean((v - target) ** 2))  # noqa: E731
    rng = np.random.default_rng(0)
    best, step = np.zeros(16), 0.5
    best_loss, curve, refused = loss(best), [], 0
    for _ in range(200):
        best, best_loss, step, _, ok = rv.hill_climb_step(best, best_loss, step, 1.0, rng.standard_normal(16), loss)
        refused += not ok
        curve.append(best_loss)
    assert np.all(np.diff(curve) <= 0) and curve[-1] < 0.25 * loss(np.zeros(16))
    assert step == pytest.approx(0.5 * 0.95**refused, rel=1e-12)
