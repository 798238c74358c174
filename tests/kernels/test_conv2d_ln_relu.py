"""ops.conv2d_ln_relu (a stage of Gemma 4's audio subsampler) against tests/reference_nn.conv2d_ln_relu
(float64; transformers' Gemma4AudioSubSampleConvProjectionLayer, channels-last; checked against it in torch
while writing, including which kernel axis is time: test_reference_axes pins that down without torch).

Tolerance, per output value, from the reference's own quantities (u = 2^-24):
- the conv: each value is a sum of K = 9 c_in products, each step one fma or a multiply and an add, so
  |v - v*| <= 2 K u S with S = sum |w| |x| (the reference conv of |x| and |w|); E = its maximum over the
  channels of the position.
- LayerNorm: z = (v - mean) / sigma, sigma = sqrt(var + eps). Its Jacobian gives, to first order,
  |dz_c| <= (|dv_c| + max|dv| + |z_c| max|dv| mean|z|) / sigma <= (2 + |z_c|) max|dv| / sigma (mean|z| <= 1).
  Its own arithmetic: the mean is a sum of C values times f32(1 / C), off by d <= (C + 1) u mean|v| (a shift
  of every value: d / sigma, and a variance of var + d^2, d^2 / (2 sigma^2) relative on z); the variance sum
  (C - 1 roundings, its terms 2 more) is (C + 1) u relative, half of it on sigma; eps added (u), inverseSqrt
  (WGSL: 2 ULP, 4u), v - mean, * inv, * w (u each): |z_c| (C / 2 + 10) u.
- times |ln_w_c|; ReLU is 1-Lipschitz. The first-order bound gets a factor 1 + 1e-3 for the products of two
  u-sized terms it leaves out.
Positions whose inputs are all padding, and the rows past T_out, must be exactly zero."""

import numpy as np
import pytest

import reference_nn as ref
from rullama_py import gpu, ops

pytestmark = pytest.mark.pyodide

U = 2.0**-24
SENTINEL = 7.0


def reference_and_bound(x, w, ln_w, eps, t_in):
    """(want, bound) for one stage over x's rows, T_in = t_in: see the module docstring."""
    c_out, c_in = w.shape[:2]
    v = ref.conv2d_3x3_s2(x, w, t_in)
    s = ref.conv2d_3x3_s2(np.abs(x), np.abs(w), t_in)
    want = np.maximum(ref.layer_norm(v, ln_w, eps), 0.0)
    e = (2 * 9 * c_in * U * s).max(axis=-1, keepdims=True)
    mu = v.mean(axis=-1, keepdims=True)
    sigma = np.sqrt(((v - mu) ** 2).mean(axis=-1, keepdims=True) + eps)
    z = np.abs(v - mu) / sigma
    d = (c_out + 1) * U * np.abs(v).mean(axis=-1, keepdims=True)
    bound = np.abs(ln_w) * ((2 + z) * e / sigma + d / sigma + z * ((c_out / 2 + 10) * U + d**2 / (2 * sigma**2)))
    return want, bound * (1 + 1e-3)


def new_step(device):
    return device.tensor((8,), "uint32", "step", usage=gpu.UNIFORM)


def set_frames(device, step, n):
    device.write(step.buffer, np.array([0, n, n, 0, 0, 0, 0, 0], np.uint32))


def stage_inputs(rng, c_in, c_out, f_in, rows, first_stage):
    """Log-mel-like features for a first stage (log(mel + 1e-3): about -7 to 3), ReLU outputs (non-negative,
    some zero) for a second; conv weights of torch's default init scale, LayerNorm weights around 1 with some
    negative (to exercise the ReLU on both signs)."""
    if first_stage:
        x = rng.normal(-3.0, 2.0, (rows, f_in, c_in))
    else:
        x = np.maximum(rng.standard_normal((rows, f_in, c_in)), 0.0) * 1.5
    w = rng.uniform(-1, 1, (c_out, c_in, 3, 3)) / np.sqrt(9 * c_in)
    ln_w = rng.normal(1.0, 0.5, c_out)
    return x.astype(np.float32), w.astype(np.float32), ln_w.astype(np.float32)


async def record(device, *, f_in, c_in, c_out, in_rows, out_rows, halvings, eps):
    f_out = (f_in - 1) // 2 + 1
    bufs = dict(x=device.tensor((in_rows, f_in, c_in)), w=device.tensor((c_out, c_in, 3, 3)),
                ln_w=device.tensor((c_out,)), out=device.tensor((out_rows, f_out, c_out)), step=new_step(device))
    g = device.graph()
    await ops.conv2d_ln_relu(g, bufs["x"], bufs["w"], bufs["ln_w"], bufs["out"], bufs["step"], f_in=f_in, c_in=c_in,
                             c_out=c_out, eps=eps, t_in_halvings=halvings)
    assert len(g) == 1
    return g, bufs


def reference_rows(x, w, ln_w, eps, t_in, a, b):
    """reference_and_bound for output rows [a, b) only, from the input rows they read (2a - 1 .. 2b - 1). The
    window starts on an even row (2a - 2) so that its outputs stay aligned with the full conv's."""
    lo = max(0, 2 * a - 2)
    want, bound = reference_and_bound(x[lo : 2 * b], w, ln_w, eps, max(0, t_in - lo))
    skip = a - lo // 2
    return want[skip : skip + b - a], bound[skip : skip + b - a]


async def run_check(device, g, bufs, x, w, ln_w, *, n_tokens, halvings, eps, what="", windows=None):
    """Writes x (all capacity rows, garbage past T_in included), runs with step.n_tokens = n_tokens, checks the
    real output rows (all, or those of `windows`, [(first, end), ...]) against the bound and every row past
    T_out for exact zeros. Returns (max error, worst error / bound)."""
    in_rows, out_rows = bufs["x"].shape[0], bufs["out"].shape[0]
    t_in = n_tokens
    for _ in range(halvings):
        t_in = (t_in + 1) // 2
    t_in = min(t_in, in_rows)
    t_out = ops.conv2d_out_len(t_in)
    device.write(bufs["x"].buffer, x)
    device.write(bufs["w"].buffer, w)
    device.write(bufs["ln_w"].buffer, ln_w)
    device.write(bufs["out"].buffer, np.full(bufs["out"].shape, SENTINEL, np.float32))
    set_frames(device, bufs["step"], n_tokens)
    await device.run(g)
    got = await device.read(bufs["out"])
    n = min(t_out, out_rows)
    assert np.all(got[n:] == 0.0), f"{what} T_in {t_in}: rows past T_out = {t_out} are not zero"
    max_err = ratio = 0.0
    for a, b in windows or [(0, n)]:
        if a >= b:
            continue
        want, bound = reference_rows(x, w, ln_w, eps, t_in, a, b)
        err = np.abs(got[a:b] - want)
        ratio = max(ratio, float((err / np.where(bound > 0, bound, np.inf)).max()))
        max_err = max(max_err, float(err.max()))
        assert np.all(err <= bound), (
            f"{what} T_in {t_in} rows {a}:{b}: max error {err.max():.3g}, worst error / bound {ratio:.3g} at "
            f"{np.unravel_index(np.argmax(err - bound), err.shape)}")
        if w.shape[0] > 1:
            assert np.any(want > 0) and np.any(want == 0)  # both sides of the ReLU were exercised
    print(f"conv2d_ln_relu {what} T_in {t_in}: max error {max_err:.3g}, error / bound {ratio:.3g}")
    return max_err, ratio


def test_reference_axes():
    """The reference's conventions, by hand: w[o, i, kt, kf] takes kt over time and kf over frequency; output
    (t, f) reads input rows 2t - 1 + kt and columns 2f - 1 + kf; rows at or past t_in are zero; the output
    lengths are (n - 1) // 2 + 1 (1 s of audio, 99 frames: 50, then 25 tokens)."""
    x = np.zeros((7, 6, 1))
    x[4, 1, 0] = 1.0  # time 4, frequency 1
    w = np.zeros((1, 1, 3, 3))
    w[0, 0, 1, 0] = 2.0  # time tap 1 (row 2t), frequency tap 0 (column 2f - 1)
    v = ref.conv2d_3x3_s2(x, w)
    assert v.shape == (4, 3, 1)
    want = np.zeros((4, 3, 1))
    want[2, 1, 0] = 2.0  # 2t = 4, 2f - 1 = 1
    np.testing.assert_array_equal(v, want)
    np.testing.assert_array_equal(ref.conv2d_3x3_s2(x, w, t_in=4), np.zeros((4, 3, 1)))  # row 4 is padding
    assert [ops.conv2d_out_len(n) for n in (0, 1, 2, 3, 99, 50, 3000)] == [0, 1, 1, 2, 50, 25, 1500]
    # LayerNorm over channels: mean 0, variance 1 (up to eps) with unit weights, then the ReLU
    y = ref.layer_norm(np.array([[1.0, 2.0, 6.0]]), np.ones(3), 0.0)
    np.testing.assert_allclose([y.mean(), (y**2).mean()], [0.0, 1.0], atol=1e-15)


def test_reference_rows():
    """The windowed reference equals the full one on its rows, at the start, odd and even offsets and the end."""
    x, w, ln_w = stage_inputs(np.random.default_rng(1), 2, 4, 7, 13, first_stage=False)
    full = reference_and_bound(x, w, ln_w, 1e-6, 11)
    for a, b in ((0, 3), (1, 4), (2, 5), (3, 7), (5, 7)):
        part = reference_rows(x, w, ln_w, 1e-6, 11, a, b)
        np.testing.assert_allclose(part[0], full[0][a:b], rtol=1e-14, atol=1e-14)
        np.testing.assert_allclose(part[1], full[1][a:b], rtol=1e-14)


@pytest.mark.parametrize(
    "f_in,c_in,c_out,in_rows,out_rows,halvings,runs",
    [
        # odd widths, one input channel, 6 channels (8 lanes a position, 32 positions a workgroup); one graph run
        # over the whole capacity, a shorter length, a length past the capacity (clamped), one frame, none
        (9, 1, 6, 11, 6, 0, (11, 7, 40, 1, 0)),
        # a second stage: T_in = ceil(n_tokens / 2); an even width; the output capacity larger than needed
        (8, 3, 5, 10, 7, 1, (20, 13, 3)),
        # the kernel's three ways to the channel sums: up to 128 channels kept in registers (the cases above),
        # more with few input channels: the window in registers (150 from 2), else re-read (300 from 7). Each
        # runs an odd T_in below the capacity: only then does the last output's window reach a padding row.
        (11, 2, 150, 9, 5, 0, (9, 5)),
        (5, 7, 300, 6, 3, 0, (6, 3)),
        # one output channel: LayerNorm of one value is 0, so every output is 0 (the reference agrees)
        (17, 2, 1, 9, 5, 0, (9,)),
    ],
)
async def test_conv2d_ln_relu(device, f_in, c_in, c_out, in_rows, out_rows, halvings, runs):
    g, bufs = await record(device, f_in=f_in, c_in=c_in, c_out=c_out, in_rows=in_rows, out_rows=out_rows,
                           halvings=halvings, eps=1e-6)
    for i, n in enumerate(runs):
        rng = np.random.default_rng(i + 10 * c_out)
        x, w, ln_w = stage_inputs(rng, c_in, c_out, f_in, in_rows, first_stage=c_in == 1)
        await run_check(device, g, bufs, x, w, ln_w, n_tokens=n, halvings=halvings, eps=1e-6, what=f"run {i}")


async def test_conv2d_ln_relu_large_eps(device):
    """eps comparable to the variance (a position of near-constant channels) weighs in the normalisation."""
    g, bufs = await record(device, f_in=6, c_in=2, c_out=12, in_rows=8, out_rows=4, halvings=0, eps=0.5)
    x, w, ln_w = stage_inputs(np.random.default_rng(5), 2, 12, 6, 8, first_stage=False)
    await run_check(device, g, bufs, x, w * 0.3, ln_w, n_tokens=8, halvings=0, eps=0.5, what="eps 0.5")


async def test_conv2d_ln_relu_fallback(device_fallback):
    g, bufs = await record(device_fallback, f_in=7, c_in=3, c_out=20, in_rows=9, out_rows=5, halvings=1, eps=1e-6)
    x, w, ln_w = stage_inputs(np.random.default_rng(6), 3, 20, 7, 9, first_stage=False)
    await run_check(device_fallback, g, bufs, x, w, ln_w, n_tokens=15, halvings=1, eps=1e-6, what="fallback")


async def test_conv2d_ln_relu_stage_1_real(device):
    """Stage 1 at its real sizes (128 mel bins, 1 -> 128 channels), a graph for 8 s (800 frames) run over the
    whole capacity and over 517 frames."""
    g, bufs = await record(device, f_in=128, c_in=1, c_out=128, in_rows=800, out_rows=400, halvings=0, eps=1e-6)
    x, w, ln_w = stage_inputs(np.random.default_rng(7), 1, 128, 128, 800, first_stage=True)
    for n in (800, 517):
        await run_check(device, g, bufs, x, w, ln_w, n_tokens=n, halvings=0, eps=1e-6, what="stage 1")


async def test_conv2d_ln_relu_stage_2_real(device):
    """Stage 2 at its real sizes (64 bins, 128 -> 32 channels: 1024 features a token), a graph for the output of
    3.2 s (320 frames -> 160 rows), read with the frame count (t_in_halvings=1) of the full capacity and of 251
    frames (126 rows)."""
    g, bufs = await record(device, f_in=64, c_in=128, c_out=32, in_rows=160, out_rows=80, halvings=1, eps=1e-6)
    x, w, ln_w = stage_inputs(np.random.default_rng(8), 128, 32, 64, 160, first_stage=False)
    for n in (320, 251):
        await run_check(device, g, bufs, x, w, ln_w, n_tokens=n, halvings=1, eps=1e-6, what="stage 2")


async def test_conv2d_ln_relu_two_stages(device):
    """The subsampler as the tower records it: both stages in one graph on one Step holding the frame count, for
    a capacity of 400 frames, run over 1 s (99 frames -> 50 -> 25 tokens) and 37 frames. Stage 2 is checked
    against the reference applied to the GPU's stage-1 output."""
    cap = 400
    step = new_step(device)
    x = device.tensor((cap, 128))
    w1, ln1 = device.tensor((128, 1, 3, 3)), device.tensor((128,))
    w2, ln2 = device.tensor((32, 128, 3, 3)), device.tensor((32,))
    h1, h2 = device.tensor((cap // 2, 64, 128)), device.tensor((cap // 4, 32 * 32))
    g = device.graph()
    await ops.conv2d_ln_relu(g, x, w1, ln1, h1, step, f_in=128, c_in=1, c_out=128, eps=1e-6)
    await ops.conv2d_ln_relu(g, h1, w2, ln2, h2, step, f_in=64, c_in=128, c_out=32, eps=1e-6, t_in_halvings=1)
    assert len(g) == 2
    rng = np.random.default_rng(9)
    xs, w1s, ln1s = stage_inputs(rng, 1, 128, 128, cap, first_stage=True)
    _, w2s, ln2s = stage_inputs(rng, 128, 32, 64, 1, first_stage=False)
    for dst, a in ((x, xs), (w1, w1s), (ln1, ln1s), (w2, w2s), (ln2, ln2s)):
        device.write(dst.buffer, a)
    for frames, tokens in ((99, 25), (37, 10)):
        set_frames(device, step, frames)
        await device.run(g)
        a1, a2 = await device.read(h1), await device.read(h2)
        want1, bound1 = reference_and_bound(xs[:frames], w1s, ln1s, 1e-6, frames)
        t1 = want1.shape[0]
        assert np.all(np.abs(a1[:t1] - want1) <= bound1) and np.all(a1[t1:] == 0.0)
        want2, bound2 = reference_and_bound(a1[:t1], w2s, ln2s, 1e-6, t1)
        assert want2.shape[0] == tokens
        assert np.all(np.abs(a2[:tokens] - want2.reshape(tokens, -1)) <= bound2.reshape(tokens, -1))
        assert np.all(a2[tokens:] == 0.0)


async def test_conv2d_ln_relu_30s(device):
    """Stage 1 over 30 s of frames, the longest chunk: a graph for 3000 frames run over 2999 (1500 x 64 positions
    x 128 channels). The reference covers windows at the start, the middle and the end (its float64 arrays over
    all 12M outputs would take long in Pyodide); every row is checked for the ReLU's range."""
    g, bufs = await record(device, f_in=128, c_in=1, c_out=128, in_rows=3000, out_rows=1500, halvings=0, eps=1e-6)
    x, w, ln_w = stage_inputs(np.random.default_rng(11), 1, 128, 128, 3000, first_stage=True)
    await run_check(device, g, bufs, x, w, ln_w, n_tokens=2999, halvings=0, eps=1e-6, what="30 s",
                    windows=[(0, 24), (737, 761), (1476, 1500)])
    got = await device.read(bufs["out"])
    assert np.all(np.isfinite(got)) and np.all(got >= 0) and np.all(got.max(axis=-1) > 0)
