"""ops.signal (Kokoro's harmonic-plus-noise source, STFT and inverse STFT) against tests/reference_kokoro_signal.py
(float64, torch's maths step by step; checked against kokoro's torch modules while writing, and again in
test_reference_is_torchs when torch is installed).

Error bounds, u = 2^-24, from the arithmetic of the kernels (shaders/signal_lib.wgsl states the accuracy of its
functions: sin_turns within 4 ULP of its result, phase_advance within 3u turns):
- the source (source_bound): a sample's phase in turns is off by at most (i0 + 1) E_D (the fixed-point sum of
  i0 + 1 frame advances, each within E_D = 3u) + E_IN (the in-frame part: E_D plus the roundings of
  (2c D_int mod 2U + 2c D_frac) / 2U) + u (fixed point to f32); sin is 2 pi-Lipschitz and sin_turns adds 4u; the
  noise draw z is within 100u of source_noise's (the log's, sqrt's and cosine's relative errors times
  |z| <= 5.8, and source_noise's own f32 rounding); the weighted sum adds (H + 2) u of its terms' magnitudes and
  tanh (1 - 2 / (exp(2x) + 1) with WGSL's exp to (3 + 2|2x|) ULP) 10u.
- the STFT (stft_bound): each of Re X and Im X is a sum of N products whose factors carry u (the sample),
  19u absolute (the window sin^2(pi j / N): its argument rounds by 1.5u, then 4 ULP) and 13.5u absolute (the
  twiddle), summed sequentially (N u), so |dX| <= sqrt(2) u sum_j |x_j| (19 + w_j (N + 14)); |X| adds 6u of
  itself (squares, sum, WGSL's sqrt); the angle is off by at most 2 |dX| / |X| + 32u (atan2_ieee), and is not
  compared where |X| <= 2 |dX| (no sign is certain there).
- the inverse STFT (istft_bound): each bin (Re, Im) is within mag (17u + (3 + 2|a|) u + u) of exact (exp's WGSL
  accuracy, the sine of the raw channel and the cosine and sine of that), each twiddle within 13.5u, the
  irfft sum of N / 2 + 1 terms adds (N / 2 + 2) u of its magnitudes, the window 19u; the envelope and the final
  division add 8u of the result plus 35u w_j / envelope.
"""

import numpy as np
import pytest

import reference_kokoro_signal as ref
from rullama_py import gpu, ops
from rullama_py.ops import signal

pytestmark = pytest.mark.pyodide

U = 2.0**-24
UP = 300  # Kokoro's samples per F0 frame
H = 9
E_D = 3 * U + 2.0**-32  # one frame's advance, frac(f0 k / 80) as fixed point (phase_advance)


def _half_ulp(x: float) -> float:
    return 2.0 ** (np.floor(np.log2(x)) - 24)


# the in-frame part of a sample's phase: D_frac's error, 2c D_frac and the sum rounded (< 2U and < 4U), the
# multiplication by f32(1 / 2U) (constant and product, value < 2), fixed point truncation
E_IN = E_D + (_half_ulp(2 * UP) + _half_ulp(4 * UP)) / (2 * UP) + 2 * U + 2.0**-32


def new_step(device, n):
    step = device.tensor((8,), "uint32", "step", usage=gpu.UNIFORM)
    set_length(device, step, n)
    return step


def set_length(device, step, n):
    device.write(step.buffer, np.array([0, n, n, 0, 0, 0, 0, 0], np.uint32))


# -- the references ----------------------------------------------------------------------------------------------

def test_reference_by_hand():
    """Closed forms the references must meet, without torch."""
    # a steady F0 is a pure sinusoid: inside the frames, phase = rad (n + 150.5) turns (U C[i0] + c rad with
    # C[i] = (i + 1) rad, c = n - 300 i0 - 149.5); before sample 150 it is held at frame 0's, 300 rad
    f, L = 220.0, 12
    out, sines, uv, pre = ref.harmonic_source(np.full(L, f), np.eye(H)[0], [0.0], parts=True)
    n = np.arange(UP * L)
    rad = f / 24000
    inner = (n >= 150) & (n < UP * (L - 1) + 150)
    np.testing.assert_allclose(sines[inner, 0], 0.1 * np.sin(2 * np.pi * rad * (n[inner] + 150.5)), atol=1e-12)
    np.testing.assert_allclose(sines[:150, 0], 0.1 * np.sin(2 * np.pi * UP * rad), atol=1e-12)
    np.testing.assert_allclose(out, np.tanh(sines[:, 0]), atol=1e-15)
    assert uv.all()
    # the harmonics: sines[:, k - 1] has k times the frequency
    np.testing.assert_allclose(sines[inner, 2], 0.1 * np.sin(2 * np.pi * 3 * rad * (n[inner] + 150.5)), atol=1e-11)
    # torch's downsampling never reads sample 0, where the random initial phases go
    r = np.random.default_rng(0).random((UP * L, H))
    r2 = r.copy()
    r2[0] += 0.37
    np.testing.assert_array_equal(ref._linear_resample(r, L, float(UP)), ref._linear_resample(r2, L, float(UP)))
    # source_phase_turns (sums of fractions) is harmonic_source's phase (cumsum of rad in float64)
    f0 = np.concatenate([np.linspace(80, 500, 150), np.zeros(20), np.full(30, 7.0), np.linspace(300, 120, 100)])
    _, sines, _, _ = ref.harmonic_source(f0, np.ones(H), [0.0], parts=True)
    turns, i0 = ref.source_phase_turns(f0)
    np.testing.assert_allclose(0.1 * np.sin(2 * np.pi * turns), sines, atol=1e-11)
    assert i0[0] == 0 and i0[-1] == len(f0) - 1 and i0[450] == 1 and i0[449] == 0
    # voiced above 10 Hz only, noise amplitude 0.003 there and 0.1 / 3 elsewhere
    z = np.ones((UP * 3, H))
    _, _, uv, pre = ref.harmonic_source([10.0, 10.5, -3.0], np.eye(H)[4], [0.0], noise=z, parts=True)
    np.testing.assert_array_equal(uv, np.repeat([0.0, 1.0, 0.0], UP))
    np.testing.assert_allclose(pre[:UP], 0.1 / 3)
    np.testing.assert_allclose(pre[2 * UP:], 0.1 / 3)

    # STFT of a constant c (reflection keeps it constant): the periodic Hann window's DFT is 10 at bin 0, -5 at
    # bin 1 and 0 elsewhere, so |X| = 10 |c|, 5 |c|, 0..., and bin 0 of c < 0 has angle +pi
    S = ref.stft(np.full(60, -1.5))
    assert S.shape == (13, 22)
    np.testing.assert_allclose(S[:, 0], 15.0)
    np.testing.assert_allclose(S[:, 1], 7.5)
    np.testing.assert_array_equal(S[:, 11], np.pi)
    np.testing.assert_allclose(S[:, 2:11], 0.0, atol=1e-13)
    # istft inverts stft where frames overlap fully or the envelope is exact: all of x when len(x) % hop == 0
    x = np.random.default_rng(1).standard_normal(125)
    np.testing.assert_allclose(ref.istft(ref.stft(x), conv_post=False), x, atol=1e-13)
    assert len(ref.istft(np.zeros((26, 22)))) == 125


def test_reference_is_torchs():
    """When torch is installed: the references against torch.stft, torch.istft (float64) and kokoro's
    SourceModuleHnNSF (float64, its noise replaced by source_noise's; kokoro's uv and noise amplitude stay f32,
    whence the 1e-8). Without torch these were checked while writing (same numbers)."""
    try:
        import torch
    except ImportError:
        pytest.skip("torch is not installed (checked while writing)")
    rng = np.random.default_rng(2)
    x = rng.standard_normal(137)
    win = torch.hann_window(20, periodic=True, dtype=torch.float64)
    X = torch.stft(torch.tensor(x), 20, 5, 20, window=win, center=True, pad_mode="reflect", return_complex=True)
    S = ref.stft(x)
    np.testing.assert_allclose(S[:, :11], torch.abs(X).numpy().T, atol=1e-12)
    dphase = (S[:, 11:] - torch.angle(X).numpy().T + np.pi) % (2 * np.pi) - np.pi
    np.testing.assert_allclose(dphase, 0.0, atol=1e-9)
    spec = rng.standard_normal((28, 22))
    Z = torch.exp(torch.tensor(spec[:, :11]).T) * torch.exp(1j * torch.sin(torch.tensor(spec[:, 11:]).T))
    np.testing.assert_allclose(ref.istft(spec), torch.istft(Z, 20, 5, 20, window=win, center=True).numpy(), atol=1e-12)
    try:
        import kokoro.istftnet as istftnet
    except Exception:
        return
    L = 40
    f0 = np.concatenate([np.zeros(8), np.linspace(90, 320, 24), np.full(8, 5.0)]).astype(np.float32)
    w = rng.standard_normal(H).astype(np.float32)
    z = torch.tensor(signal.source_noise(7, UP * L)).double()[None]
    m = istftnet.SourceModuleHnNSF(24000, UP, harmonic_num=H - 1, voiced_threshod=10).double()
    with torch.no_grad():
        m.l_linear.weight[:] = torch.tensor(w).double()[None]
        m.l_linear.bias[:] = 0.1
        real = torch.randn_like
        torch.randn_like = lambda t, *a, **k: z.clone() if t.shape == z.shape else real(t, *a, **k)
        try:
            har, _, _ = m(torch.nn.Upsample(scale_factor=UP)(torch.tensor(f0).double()[None, None]).transpose(1, 2))
        finally:
            torch.randn_like = real
    want = ref.harmonic_source(f0, w, [0.1], noise=signal.source_noise(7, UP * L))
    np.testing.assert_allclose(har[0, :, 0].numpy(), want, atol=1e-8)


def test_source_noise_numpy():
    """source_noise: standard normals, [n, harmonics] indexed by sample * harmonics + harmonic (a prefix of a
    longer draw), the same for the same seed, unrelated for another."""
    z = signal.source_noise(5, 40000)
    assert z.shape == (40000, H) and z.dtype == np.float32
    n = z.size
    assert abs(z.mean()) < 5 / np.sqrt(n)
    assert abs(z.std() - 1) < 5 / np.sqrt(2 * n)
    assert abs(np.mean(z**4) - 3) < 5 * np.sqrt(96 / n)  # kurtosis of a normal (variance of z^4 is 96)
    np.testing.assert_array_equal(signal.source_noise(5, 100), z[:100])
    np.testing.assert_array_equal(signal.source_noise(5, 100, harmonics=3).reshape(-1), z.reshape(-1)[:300])
    other = signal.source_noise(6, 40000)
    assert abs(np.corrcoef(z.reshape(-1), other.reshape(-1))[0, 1]) < 5 / np.sqrt(n)
    assert np.abs(z).max() <= np.sqrt(-2 * np.log(2.0**-24)) + 1e-6


# -- the harmonic source ---------------------------------------------------------------------------------------

def source_bound(f0, w, b, *, noise_scale, sine_amp=0.1, noise_std=0.003):
    """Per-sample bound on |GPU - reference| of harmonic_source (see the module docstring)."""
    f0 = np.asarray(f0, np.float32).astype(np.float64)
    w = np.abs(np.asarray(w, np.float64).reshape(-1))
    L = len(f0)
    _, sines, uv, _ = ref.harmonic_source(f0, w, b, parts=True)
    _, i0 = ref.source_phase_turns(f0)
    e_turns = (i0 + 1) * E_D + E_IN + U
    e_sine = sine_amp * (2 * np.pi * e_turns + 5 * U) * uv  # [n]
    amp = noise_scale * np.where(uv > 0, noise_std, sine_amp / 3)  # [n]
    e_v = e_sine + amp * 100 * U  # [n], the same for every harmonic
    mag_v = np.abs(sines) * uv[:, None] + amp[:, None] * 5.8  # [n, H]: |v| <= |sine| + amp max|z|
    e_pre = e_v * w.sum() + (H + 2) * U * (abs(float(np.asarray(b).reshape(-1)[0])) + mag_v @ w)
    assert e_pre.shape == (UP * L,)
    return e_pre + 10 * U


async def run_source(device, f0, w, b, *, cap=None, out_cap=None, seed=0, noise=0.0, runs=1):
    """harmonic_source over f0 (the real frames), recorded for `cap` frames (f0 rows past the real ones hold
    garbage) and `out_cap` samples (the output starts as garbage); returns the output of each run."""
    L = len(f0)
    cap = cap or L
    out_cap = out_cap or UP * cap
    f0_cap = np.full(cap, 1e4, np.float32)
    f0_cap[L:][1::2] = -77.0
    f0_cap[:L] = f0
    step = new_step(device, L)
    out = device.upload(np.full(out_cap, 7.0, np.float32))
    params = signal.source_params(device, seed, noise)
    g = device.graph()
    await ops.harmonic_source(g, device.upload(f0_cap), device.upload(np.asarray(w, np.float32)),
                              device.upload(np.asarray(b, np.float32).reshape(1)), out, step, params)
    assert len(g) == 2
    outs = []
    for _ in range(runs):
        await device.run(g)
        outs.append(await device.read(out))
    return outs if runs > 1 else outs[0]


def check_source(got, f0, w, b, *, seed=0, noise=0.0, what=""):
    L = len(f0)
    z = signal.source_noise(seed, UP * L) if noise else None
    want = ref.harmonic_source(np.asarray(f0, np.float32), w, b, noise=z, noise_scale=noise)
    bound = source_bound(f0, w, b, noise_scale=noise)
    err = np.abs(got[: UP * L] - want)
    assert np.all(err <= bound), (
        f"{what}: max error {err.max():.3g}, worst error / bound {(err / bound).max():.3g} at sample {np.argmax(err / bound)}")
    np.testing.assert_array_equal(got[UP * L:], 0.0)
    print(f"harmonic_source {what}: L {L}, max error {err.max():.3g} (bound there {bound[np.argmax(err)]:.3g})")


def f0_curve(kind: str) -> np.ndarray:
    if kind == "steady":
        return np.full(40, 220.0, np.float32)
    if kind == "gliding":  # 80 -> 450 Hz with a vibrato
        t = np.arange(37)
        return (80 + 10 * t + 15 * np.sin(t * 0.7)).astype(np.float32)
    if kind == "switches":  # voiced / unvoiced around the 10 Hz threshold, a negative (predicted) F0, jumps
        return np.repeat(np.array([0, 150, 8, 12, 300, -5, 10, 10.5, 480, 0, 95], np.float32), 4)
    if kind == "one_frame":
        return np.array([130.0], np.float32)
    if kind == "two_frames":
        return np.array([130.0, 260.0], np.float32)
    raise ValueError(kind)


@pytest.mark.parametrize("kind,noise", [(kind, noise) for kind in ("steady", "gliding", "switches", "one_frame",
                                                                   "two_frames") for noise in (0.0, 1.0)])
async def test_harmonic_source(device, kind, noise):
    """Recorded for 48 frames, as a model records one capacity for sentences of every length (and compiles the
    pipelines once)."""
    f0 = f0_curve(kind)
    rng = np.random.default_rng(len(f0))
    w = (rng.standard_normal(H) * 0.6).astype(np.float32)
    b = np.float32(0.05)
    got = await run_source(device, f0, w, b, cap=48, seed=42, noise=noise)
    check_source(got, f0, w, b, seed=42, noise=noise, what=f"{kind} noise {noise}")


async def test_harmonic_source_fallback(device_fallback):
    f0 = f0_curve("switches")
    w = np.linspace(-1, 1, H).astype(np.float32)
    got = await run_source(device_fallback, f0, w, 0.0, cap=50, out_cap=UP * 47, seed=3, noise=1.0)
    check_source(got, f0, w, 0.0, seed=3, noise=1.0, what="fallback")


async def test_harmonic_source_noise(device):
    """The GPU's noise is source_noise's, harmonic by harmonic (a one-hot weight picks one): out = tanh(amp z) in
    unvoiced frames (amp 0.1 / 3) and tanh(sine + 0.003 z) in voiced ones; the same seed repeats bit for bit;
    another seed draws unrelated noise; noise 0 leaves the sines alone. Statistics over 30,000 samples per
    region: mean 0 and standard deviation 1 within 5 sigma."""
    L = 200
    f0 = np.concatenate([np.zeros(100), np.full(100, 200.0)]).astype(np.float32)
    half = UP * 100
    for h in (0, 8):
        w = np.eye(H, dtype=np.float32)[h]
        on, again = await run_source(device, f0, w, 0.0, cap=448, seed=11, noise=1.0, runs=2)
        np.testing.assert_array_equal(on, again)
        off = await run_source(device, f0, w, 0.0, cap=448, seed=11, noise=0.0)
        other = await run_source(device, f0, w, 0.0, cap=448, seed=12, noise=1.0)
        check_source(on, f0, w, 0.0, seed=11, noise=1.0, what=f"noise harmonic {h}")
        check_source(off, f0, w, 0.0, what=f"no noise harmonic {h}")
        on, off, other = on[: UP * L], off[: UP * L], other[: UP * L]
        z_np = signal.source_noise(11, UP * L)[:, h].astype(np.float64)
        np.testing.assert_array_equal(off[:half], 0.0)  # unvoiced, no noise: tanh(0)
        z_unvoiced = np.arctanh(on[:half].astype(np.float64)) / (0.1 / 3)
        # tanh's 10u and the noise's 100u, through arctanh (|out| < 0.2) and divided by amp
        np.testing.assert_allclose(z_unvoiced, z_np[:half], rtol=0, atol=(10 * U + (0.1 / 3) * 100 * U) / 0.96 / (0.1 / 3))
        z_voiced = (np.arctanh(on[half:].astype(np.float64)) - np.arctanh(off[half:].astype(np.float64))) / 0.003
        e_voiced = (2 * source_bound(f0, w, 0.0, noise_scale=1.0)[half:] / 0.98) / 0.003
        assert np.all(np.abs(z_voiced - z_np[half:]) <= e_voiced)
        for z in (z_unvoiced, z_voiced):
            assert abs(z.mean()) < 5 / np.sqrt(half)
            assert abs(z.std() - 1) < 5 / np.sqrt(2 * half) + 1e-3
        z_other = np.arctanh(other[:half].astype(np.float64)) / (0.1 / 3)
        assert abs(np.corrcoef(z_other, z_unvoiced)[0, 1]) < 5 / np.sqrt(half)


async def test_harmonic_source_real_size(device):
    """Kokoro's size: F = 200 duration frames -> 400 F0 rows -> 120,000 samples (5 s), recorded for 224 frames
    (the rows past 400 hold garbage), a speech-like F0 (gliding, with pauses), noise on. Its phase reaches
    4e5 radians at the 9th harmonic, where torch's f32 keeps 0.03 rad; here the bound at the last sample is
    (400 * 3u + ...) turns."""
    t = np.arange(400)
    f0 = (140 + 60 * np.sin(t / 37.0) + 25 * np.sin(t / 5.3)).astype(np.float32)
    f0[90:130] = 0.0
    f0[250:262] = 3.0
    f0[330:335] = -2.0
    w = (np.random.default_rng(9).standard_normal(H) * 0.4).astype(np.float32)
    got = await run_source(device, f0, w, -0.02, cap=448, seed=2024, noise=1.0)
    assert got.shape == (UP * 448,)
    check_source(got, f0, w, -0.02, seed=2024, noise=1.0, what="real size")


# -- STFT --------------------------------------------------------------------------------------------------------

def stft_bound(x, n_fft=20, hop=5):
    """Per-frame bound on |dX| (either bin) of stft (see the module docstring), [frames]."""
    x = np.abs(np.asarray(x, np.float64))
    pad = np.pad(x, n_fft // 2, mode="reflect")
    w = ref.hann_window(n_fft)
    frames = np.stack([pad[hop * f: hop * f + n_fft] for f in range(len(x) // hop + 1)])
    return np.sqrt(2) * U * (frames @ (19 + w * (n_fft + 14)))


def check_stft(got, x, *, what="", n_fft=20, hop=5):
    """got: the GPU's [rows, n_fft + 2] for the real samples x."""
    nb = n_fft // 2 + 1
    want = ref.stft(x, n_fft, hop)
    frames = len(want)
    dX = stft_bound(x, n_fft, hop)[:, None]
    mag, mag_ref = got[:frames, :nb], want[:, :nb]
    err = np.abs(mag - mag_ref)
    bound = dX + 6 * U * mag_ref
    assert np.all(err <= bound), f"{what}: magnitude error {err.max():.3g}, worst / bound {(err / bound).max():.3g}"
    sure = mag_ref > 2 * dX  # where the angle is determined within the bound
    dphase = np.abs((got[:frames, nb:] - want[:, nb:] + np.pi) % (2 * np.pi) - np.pi)
    pbound = 2 * dX / np.maximum(mag_ref, 1e-300) + 32 * U
    assert np.all(dphase[sure] <= pbound[sure]), f"{what}: phase error {dphase[sure].max():.3g}"
    # where the reference has Im exactly +0 (bins 0 and n_fft / 2, frame 0) and a sure sign, the angle is exactly
    # 0 or +pi (f32), never -pi
    exact = np.zeros_like(sure)
    exact[:, [0, nb - 1]] = True
    exact[0] = True
    exact &= sure
    np.testing.assert_array_equal(got[:frames, nb:][exact], np.where(want[:, nb:][exact] > 3, np.float32(np.pi), 0.0))
    np.testing.assert_array_equal(got[frames:], 0.0)
    print(f"stft {what}: {len(x)} samples, magnitude error {err.max():.3g}, phase error {dphase[sure].max():.3g} "
          f"({(~sure).sum()} of {sure.size} angles undetermined)")


async def run_stft(device, x, *, cap=None, rows=None, n_fft=20, hop=5):
    n = len(x)
    cap = cap or n
    rows = rows or cap // hop + 1
    x_cap = np.full(cap, 1e3, np.float32)
    x_cap[:n] = x
    out = device.upload(np.full((rows, n_fft + 2), 7.0, np.float32))
    g = device.graph()
    await ops.stft(g, device.upload(x_cap), out, new_step(device, n), n_fft=n_fft, hop=hop)
    assert len(g) == 1
    await device.run(g)
    return await device.read(out)


@pytest.mark.parametrize("n,cap", [(137, 137), (600, 731), (11, 40), (1000, 1000), (13, 13)])
async def test_stft(device, n, cap):
    rng = np.random.default_rng(n)
    x = (rng.standard_normal(n) * 0.4).astype(np.float32)
    x[: n // 4] += np.sin(np.arange(n // 4) * 0.9).astype(np.float32)  # a tone, so that some bins stand out
    got = await run_stft(device, x, cap=cap)
    check_stft(got, x, what=f"n {n} cap {cap}")


async def test_stft_fallback(device_fallback):
    x = np.random.default_rng(3).uniform(-1, 1, 213).astype(np.float32)
    check_stft(await run_stft(device_fallback, x, cap=260), x, what="fallback")


async def test_stft_phase_sign(device):
    """Bins whose imaginary part is exactly zero get phase +pi (never -pi) when their real part is negative:
    bin 0 of a negative constant, bin 10 (Nyquist) of an alternating signal with a negative real part, and
    frame 0, real in exact arithmetic (reflect padding makes it even about its centre)."""
    pi32 = np.float32(np.pi)
    got = await run_stft(device, np.full(60, -1.0, np.float32))
    np.testing.assert_array_equal(got[:, 11], pi32)  # bin 0: -10, angle +pi
    np.testing.assert_allclose(got[:, 0], 10.0, rtol=1e-6)
    alt = np.where(np.arange(60) % 2 == 0, -1.0, 1.0).astype(np.float32)
    got = await run_stft(device, alt)
    want = ref.stft(alt)
    nyquist_negative = want[:, 21] > 3  # its angle is pi: re < 0
    assert nyquist_negative.any() and (~nyquist_negative).any()
    np.testing.assert_array_equal(got[:, 21], np.where(nyquist_negative, pi32, np.float32(0.0)))
    assert not np.any(np.signbit(got[:, [11, 21]]))
    x = np.random.default_rng(4).standard_normal(100).astype(np.float32)
    got = await run_stft(device, x)
    assert set(np.unique(got[0, 11:])) <= {np.float32(0.0), pi32}
    check_stft(got, x, what="frame 0 real")


# -- inverse STFT ------------------------------------------------------------------------------------------------

def istft_bound(spec, *, conv_post=True, dX=None, n_fft=20, hop=5):
    """Per-sample bound on |GPU - reference| of istft(spec) (see the module docstring); dX [frames, bins]: an
    error already in the input bins (the round trip's STFT error), carried through the inverse linearly."""
    spec = np.asarray(spec, np.float64)
    nb = n_fft // 2 + 1
    M = len(spec)
    a, p = spec[:, :nb], spec[:, nb:]
    if conv_post:
        mag, X = np.exp(a), np.exp(a) * np.exp(1j * np.sin(p))
        e_bin = mag * (17 + 3 + 2 * np.abs(a) + 1) * U
    else:
        mag, X = np.abs(a), a * np.exp(1j * p)
        e_bin = mag * 12 * U
    if dX is not None:
        e_bin = e_bin + dX
    c = np.full(nb, 2.0)
    c[0] = c[-1] = 1.0
    e_s = (e_bin + mag * (13.5 + nb + 2) * U) @ c  # [M]: |ds| of the irfft sum (before / N)
    s = np.fft.irfft(X, n=n_fft, axis=1) * n_fft  # [M, N], exact sums
    w = ref.hann_window(n_fft)
    total = n_fft + hop * (M - 1)
    num = np.zeros(total)
    env = np.zeros(total)
    wsum = np.zeros(total)
    for f in range(M):
        sl = slice(hop * f, hop * f + n_fft)
        num[sl] += w * e_s[f] + 19 * U * np.abs(s[f]) + 4 * U * w * np.abs(s[f])
        env[sl] += w * w
        wsum[sl] += w
    half = n_fft // 2
    num, env, wsum = num[half: total - half], env[half: total - half], wsum[half: total - half]
    y = ref.istft_complex(X, n_fft, hop)
    return num / (n_fft * env) + np.abs(y) * (8 * U + 35 * U * wsum / env)


async def run_istft(device, spec, *, cap=None, out_cap=None, conv_post=True):
    M = len(spec)
    cap = cap or M
    out_cap = out_cap or 5 * (cap - 1)
    spec_cap = np.full((cap, 22), 33.0, np.float32)  # garbage: exp(33) would overflow a sum that read it
    spec_cap[:M] = spec
    out = device.upload(np.full(out_cap, 7.0, np.float32))
    g = device.graph()
    await ops.istft(g, device.upload(spec_cap), out, new_step(device, M), conv_post=conv_post)
    assert len(g) == 1
    await device.run(g)
    return await device.read(out)


def check_istft(got, spec, *, conv_post=True, dX=None, want=None, what=""):
    n = 5 * (len(spec) - 1)
    if want is None:
        want = ref.istft(spec, conv_post=conv_post)
    bound = istft_bound(spec, conv_post=conv_post, dX=dX)
    err = np.abs(got[:n] - want)
    assert np.all(err <= bound), f"{what}: max error {err.max():.3g}, worst / bound {(err / bound).max():.3g}"
    np.testing.assert_array_equal(got[n:], 0.0)
    print(f"istft {what}: {len(spec)} frames, max error {err.max():.3g} (bound {bound.min():.3g}..{bound.max():.3g})")


def conv_post_spec(rng, frames):
    """Like the generator's conv_post output: log-magnitudes around 0 and raw phase channels of a few radians."""
    a = rng.standard_normal((frames, 11)) * 0.8 - 0.5
    p = rng.standard_normal((frames, 11)) * 2.5
    return np.concatenate([a, p], axis=1).astype(np.float32)


@pytest.mark.parametrize("frames,cap", [(2, 2), (3, 9), (29, 29), (200, 263), (14, 15)])
async def test_istft(device, frames, cap):
    spec = conv_post_spec(np.random.default_rng(frames), frames)
    got = await run_istft(device, spec, cap=cap)
    check_istft(got, spec, what=f"cap {cap}")


async def test_istft_raw(device):
    """conv_post=False: magnitude and angle as they are (stft's output)."""
    rng = np.random.default_rng(6)
    spec = np.concatenate([rng.uniform(0, 3, (41, 11)), rng.uniform(-12, 12, (41, 11))], axis=1).astype(np.float32)
    got = await run_istft(device, spec, cap=50, conv_post=False)
    check_istft(got, spec, conv_post=False, what="raw")


async def test_istft_fallback(device_fallback):
    spec = conv_post_spec(np.random.default_rng(7), 57)
    check_istft(await run_istft(device_fallback, spec, cap=60), spec, what="fallback")


async def test_istft_stft_round_trip(device):
    """istft(stft(x)) = x on the GPU (conv_post=False), both recorded in one graph on their own Step uniforms;
    the bound carries the STFT's error through the inverse."""
    n = 1000
    x = (np.random.default_rng(8).standard_normal(n) * 0.5).astype(np.float32)
    frames = n // 5 + 1
    spec = device.tensor((frames + 7, 22))
    y = device.upload(np.full(n + 40, 7.0, np.float32))
    g = device.graph()
    await ops.stft(g, device.upload(x), spec, new_step(device, n))
    await ops.istft(g, spec, y, new_step(device, frames), conv_post=False)
    await device.run(g)
    got_spec = (await device.read(spec))[:frames]
    # the STFT's complex error: |d mag| + mag |d angle|, or everything where the angle is undetermined
    dX_frame = stft_bound(x)[:, None]
    mag = ref.stft(x)[:, :11]
    dX = np.where(mag > 2 * dX_frame, 3 * dX_frame + 38 * U * mag, 6 * dX_frame)
    check_istft(await device.read(y), got_spec, conv_post=False, dX=dX, want=x.astype(np.float64), what="round trip")


async def test_signal_real_sizes(device):
    """Kokoro's generator ends at F = 200 frames, recorded for 224 as the model records them, with their Step
    uniforms: source 400 -> 120,000 samples, STFT -> 24,001 frames of 22, inverse STFT of a conv_post-like
    spectrum of 24,001 frames -> 120,000 samples."""
    F, Fc = 200, 224
    rng = np.random.default_rng(10)
    t = np.arange(2 * F)
    f0 = (180 + 70 * np.sin(t / 23.0)).astype(np.float32)
    f0[40:70] = 0.0
    f0_cap = np.zeros(2 * Fc, np.float32)
    f0_cap[: 2 * F] = f0
    w = (rng.standard_normal(H) * 0.5).astype(np.float32)
    har_src = device.tensor((600 * Fc, 1))
    har = device.tensor((120 * Fc + 1, 22))
    post = conv_post_spec(rng, 120 * F + 1)
    post_cap = np.zeros((120 * Fc + 1, 22), np.float32)
    post_cap[: len(post)] = post
    audio = device.tensor((600 * Fc, 1))
    g = device.graph()
    await ops.harmonic_source(g, device.upload(f0_cap), device.upload(w), device.upload(np.zeros(1, np.float32)),
                              har_src, new_step(device, 2 * F), signal.source_params(device, 77, 1.0))
    await ops.stft(g, har_src, har, new_step(device, 600 * F))
    await ops.istft(g, device.upload(post_cap), audio, new_step(device, 120 * F + 1))
    assert len(g) == 4
    await device.run(g)
    src = (await device.read(har_src)).reshape(-1)
    check_source(src, f0, w, 0.0, seed=77, noise=1.0, what="F 200")
    check_stft(await device.read(har), src[: 600 * F], what="F 200")
    check_istft((await device.read(audio)).reshape(-1), post, what="F 200")
