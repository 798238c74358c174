"""The voice trainer's kernels against tests/reference_voice.py (float64): log_mel_frames (the framed log-mel
spectrum and each frame's energy), mel_signature (the timbre signature over active frames and its loss) and
style_perturb (the seeded candidate, against ops.search.search_noise computed on the host).

None of these kernels has a subgroup or f16 variant: every device runs the same code, natively and in Pyodide.

Error bounds, u = 2^-24:
- log_mel_frames: the radix-2 FFT's worst case, |dX| <= c log2(N) u sqrt(N) ||x w||_2 for every bin (each of the
  10 stages rounds a butterfly by at most (2 + sqrt 2) u of its operands, the twiddles (f32 of float64 values)
  by u; c = 5 covers both with margin); the power |X|^2 is then off by 2 |X| |dX| + |dX|^2 (+ 3u of itself), the
  band sums by the filterbank's weights times that (+ (bins + 1) u of the band), and L = ln(mel + 1e-8) by the
  relative error of its argument (+ a few ULP of ln_pos: 4e-7 absolute below |L| = 20).
- mel_signature: sums over frames of L in f32 (frames u |L| per value, at most) and the centring, compared with
  the reference's signature over the same active frames (the threshold is only compared where no frame's energy
  lies within the energy error of it: the tests' signals keep a clear margin).
- style_perturb: the normal draw's sqrt(-2 ln u1) cos(2 pi u2) with signal_lib's ln and cosine (a few ULP each):
  within 2e-6 of the float64 draw times |scale| step, plus the sums' roundings.
"""

import numpy as np
import pytest

import reference_voice as ref
from rullama_py import gpu, ops
from rullama_py.ops import mel as mel_module
from rullama_py.ops.search import search_noise, search_params_bytes

pytestmark = pytest.mark.pyodide

U = 2.0**-24
SR = 24000


def step_buffer(device, n):
    s = device.tensor((8,), "uint32", "step", usage=gpu.UNIFORM)
    device.write(s.buffer, np.array([0, n, n, 0, 0, 0, 0, 0], np.uint32))
    return s


def speechlike(seconds, seed=0, f0=140.0):
    """A voiced buzz (harmonics of a gliding f0 under a formant-like tilt) in syllable-rate bursts, with pauses and
    a little noise: a signal with loud frames and quiet ones, like speech."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    t = np.arange(n) / SR
    f = f0 * (1 + 0.1 * np.sin(2 * np.pi * 0.7 * t))
    phase = 2 * np.pi * np.cumsum(f) / SR
    x = sum(np.sin(k * phase) / k ** 1.2 for k in range(1, 30))
    env = np.clip(np.sin(2 * np.pi * 3.0 * t), 0, None) ** 0.5 * (np.sin(2 * np.pi * 0.4 * t) > -0.6)
    return (0.2 * x * env + 0.002 * rng.standard_normal(n)).astype(np.float32)


def test_reference_mel_filterbank_is_ours():
    """The kernel's filterbank (ops/mel.py, uploaded) is the reference's."""
    np.testing.assert_allclose(mel_module.mel_filterbank(), ref.mel_filterbank(), atol=1e-12)


async def _log_mel(device, x, capacity):
    xs = np.zeros(capacity, np.float32)
    xs[: x.size] = x
    xb = device.upload(xs, "x")
    length = step_buffer(device, x.size)
    frames = mel_module.mel_frames(capacity)
    logmel = device.tensor((frames, 80), "float32", "logmel")
    energy = device.tensor((frames,), "float32", "energy")
    tables = ops.mel_tables(device)
    g = device.graph()
    await ops.log_mel_frames(g, xb, length, tables, logmel, energy)
    device.submit(g)
    return (xb, length, tables, logmel, energy, (await device.read(logmel)).reshape(frames, 80),
            (await device.read(energy)).reshape(-1))


def log_mel_bound(x):
    """Per frame and band, the bound described in the module docstring."""
    xf = ref.frames(np.asarray(x, np.float64)) * ref.hann()  # windowed frames [F, 1024]
    X = np.fft.rfft(xf, axis=-1)
    dX = 5 * 10 * U * np.sqrt(1024) * np.sqrt((xf**2).sum(1, keepdims=True))
    dP = 2 * np.abs(X) * dX + dX**2 + 3 * U * np.abs(X) ** 2
    fb = ref.mel_filterbank()
    mel = np.abs(X) ** 2 @ fb.T
    dmel = dP @ fb.T + 520 * U * mel
    return dmel / (mel + 1e-8) + 4e-7 + U * 20


@pytest.mark.parametrize("seconds, extra", [(2.0, 0), (0.5, 777), (3.3, 4096)])
async def test_log_mel_frames(device, seconds, extra):
    x = speechlike(seconds, seed=int(seconds * 10))
    *_, L, E = await _log_mel(device, x, x.size + extra)
    want = ref.log_mel(x.astype(np.float64))
    F = want.shape[0]
    assert F == x.size // 256 + 1
    bound = log_mel_bound(x)
    err = np.abs(L[:F] - want)
    assert np.all(err <= bound), f"worst error / bound {(err / bound).max():.3g}, max error {err.max():.3g}"
    np.testing.assert_allclose(E[:F], want.mean(1), atol=float(bound.max()) + 1e-6)
    assert not L[F:].any() and not E[F:].any()  # rows past the real frames are zero


async def test_log_mel_frames_of_silence_and_of_a_single_sample(device):
    *_, L, E = await _log_mel(device, np.zeros(3000, np.float32), 4000)
    np.testing.assert_allclose(L[: 3000 // 256 + 1], np.log(1e-8), rtol=1e-6)
    x = np.zeros(1000, np.float32)
    x[600] = 1.0  # an impulse: a flat spectrum in the frames that see it, scaled by the window there
    *_, L, _ = await _log_mel(device, x, 1000)
    np.testing.assert_allclose(L, ref.log_mel(x.astype(np.float64)), atol=1e-4)


async def test_mel_signature_and_loss(device):
    x = speechlike(2.5, seed=3)
    y = speechlike(2.0, seed=4, f0=210.0) * 3.0
    goal_sig = ref.signature(y.astype(np.float64))
    xb, length, tables, logmel, energy, L, E = await _log_mel(device, x, x.size + 1000)
    goal = device.upload(goal_sig.astype(np.float32), "goal")
    params = ops.search_params(device)
    sig = device.tensor((3, 80), "float32", "signature")
    loss = device.tensor((3,), "float32", "loss")
    g = device.graph()
    await ops.mel_signature(g, logmel, energy, length, goal, params, sig, loss)
    device.write(params.buffer, search_params_bytes(0, 0, 2, 0.0))  # slot 2
    device.submit(g)
    got = (await device.read(sig)).reshape(3, 80)
    want = ref.signature(x.astype(np.float64))
    # the active frames are the reference's (a clear margin around the threshold)
    e = ref.log_mel(x.astype(np.float64)).mean(1)
    assert np.abs(e - (e.max() - 6.0)).min() > 1e-3
    tol = float(log_mel_bound(x).max()) * 2 + 1e-5
    np.testing.assert_allclose(got[2], want, atol=tol)
    assert not got[:2].any()  # only the slot asked for
    got_loss = (await device.read(loss))[2]
    want_loss = ref.signature_loss(want, goal_sig)
    assert abs(got_loss - want_loss) <= 4 * tol * np.abs(want - goal_sig).mean() + 1e-6 * want_loss
    assert want_loss > 0.01  # different voices: a loss that means something


async def test_signature_is_level_invariant_on_the_gpu(device):
    x = speechlike(1.5, seed=5)
    sigs = []
    for gain in (1.0, 0.05):
        xb, length, tables, logmel, energy, _, _ = await _log_mel(device, x * gain, x.size)
        goal = device.upload(np.zeros(80, np.float32), "goal")
        params = ops.search_params(device)
        sig = device.tensor((1, 80), "float32", "sig")
        loss = device.tensor((1,), "float32", "loss")
        g = device.graph()
        await ops.mel_signature(g, logmel, energy, length, goal, params, sig, loss)
        device.submit(g)
        sigs.append((await device.read(sig)).reshape(-1))
        assert abs((await device.read(loss))[0] - np.mean(sigs[-1].astype(np.float64) ** 2)) < 1e-5
    # the GPU's signatures follow the reference's at both levels, so they change with the level only as much as
    # the reference does (the 1e-8 floor: a few 1e-3 at -26 dB for this signal's quietest bands)
    tol = float(log_mel_bound(x * 0.05).max()) * 2 + 1e-5
    want = [ref.signature(x.astype(np.float64) * g) for g in (1.0, 0.05)]
    for got, w in zip(sigs, want):
        np.testing.assert_allclose(got, w, atol=tol)
    assert np.abs(sigs[0] - sigs[1]).max() <= np.abs(want[0] - want[1]).max() + 2 * tol
    assert np.abs(sigs[0] - sigs[1]).max() < 0.01


@pytest.mark.parametrize("seed, counter, slot, step", [(0, 0, 0, 0.25), (7, 123456, 3, 1.5), (2**32 - 1, 5, 1, 0.0)])
async def test_style_perturb(device, seed, counter, slot, step):
    rng = np.random.default_rng(counter)
    base, best = rng.standard_normal((2, 256)).astype(np.float32) * 0.3
    scale = rng.random(256).astype(np.float32) * 0.2
    scale[128:200] = 0.0  # dimensions that are not trained stay exactly at best
    t = {k: device.upload(v, k) for k, v in (("base", base), ("best", best), ("scale", scale))}
    cand = device.tensor((4, 256), "float32", "cand")
    dec, pros = device.tensor((128,), "float32", "dec"), device.tensor((128,), "float32", "pros")
    params = ops.search_params(device)
    g = device.graph()
    await ops.style_perturb(g, params, t["base"], t["best"], t["scale"], cand, dec, pros)
    device.write(params.buffer, search_params_bytes(seed, counter, slot, step))
    device.submit(g)
    z = search_noise(seed, counter)
    want = best.astype(np.float64) + step * scale.astype(np.float64) * z
    got = (await device.read(cand)).reshape(4, 256)
    bound = 2e-6 * step * scale * (1 + np.abs(z)) + 2 * U * (np.abs(best) + np.abs(want))
    assert np.all(np.abs(got[slot] - want) <= bound)
    np.testing.assert_array_equal(got[slot][128:200], best[128:200])
    style = np.concatenate([await device.read(dec), await device.read(pros)])
    assert np.all(np.abs(style - (base + got[slot])) <= U * (np.abs(base) + np.abs(got[slot])) + 1e-30)
    others = [i for i in range(4) if i != slot]
    assert not got[others].any()


def test_search_noise_is_standard_normal():
    z = np.concatenate([search_noise(11, c) for c in range(200)])
    assert abs(z.mean()) < 0.02 and abs(z.std() - 1) < 0.02
    assert not np.array_equal(search_noise(11, 0), search_noise(11, 1))
    assert not np.array_equal(search_noise(11, 0), search_noise(12, 0))
    np.testing.assert_array_equal(search_noise(11, 3), search_noise(11, 3))
