"""ops.lstm (the recurrence of Kokoro's bidirectional LSTMs) against tests/reference_kokoro_nn.lstm_bidirectional
(float64; torch.nn.LSTM(bidirectional=True) from the input projection, checked against torch, unpadded and packed,
while writing; test_reference_by_hand pins its conventions without torch).

Tolerance. A recurrence feeds each step's rounding into the next; bounding the free-running difference from
the reference needs the Jacobian of every step, whose worst case (|W_hh| row sums of 8 at H = 256) grows the
bound without limit. So the kernel is checked step by step (teacher forcing): the reference runs each step from
the kernel's own previous h (the f32 values it wrote, which are also what it read back), so the gates of step t
differ from the kernel's only by that step's rounding. The cell state is not an output: the reference runs its
own cell recurrence from those gates, and the bound carries the cell's error along it, where it is damped by
the forget gate (f <= 1) instead of amplified by W_hh. Per unit and step, u = 2^-24:
- pre-activations a_q = xw_q + sum_k W[qH + j, k] h_prev[k]: H + 1 terms, at most H + 2 roundings on any
  term's path (two fma chains, their sum, + xw; a product rounded apart where fma is not fused), so
  |da_q| <= gamma S_q, gamma = (H + 2) u / (1 - (H + 2) u), S_q = |xw_q| + sum_k |W[qH + j, k]| |h_prev[k]|.
- sigmoid and tanh: WGSL allows exp 3 + 2|x| ULP and division 2.5 ULP. sigmoid = 1 / (1 + e), e = exp(-|z|)
  (times e for z < 0): e's error moves it by at most max_z e (3 + 2|z|) u / (1 + e)^2 <= 1.0 u for z >= 0 and
  e / (1 + e) (3 + 2|z|) u (1 + e / (1 + e)) <= 2.3 u for z < 0, the add, divide and multiply 4.5 u more: under
  EPS_SIGMOID = 8 u. tanh = (1 - e) / (1 + e), e = exp(-2|x|): 2 e (3 + 4|x|) u / (1 + e)^2 <= 2.0 u from e,
  4.5 u from the rest: under EPS_TANH = 8 u. By the mean value theorem a gate moves by at most gamma S times
  the largest slope of its function within gamma S of a, taken where |a| is least, max(|a| - gamma S, 0) (a
  saturated gate has a tiny slope: its pre-activation error, large next to |xw| = 1e4, hardly moves it), so
  the gates are off by at most e_s = EPS_SIGMOID + that (i, f, o) and e_g = EPS_TANH + that (g).
- cell: c = fma(f, c_prev, i g) with c_prev off by E (the bound of the step before, 0 at the first):
  E' = (f + e_f) E + e_f |c_prev| + e_i (|g| + e_g) + i e_g + 2u ((f + e_f)(|c_prev| + E) + (i + e_i)(|g| + e_g)).
- h = o tanh(c): tanh(c) is off by e_t = EPS_TANH + E' times tanh's largest slope within E' of c, and
  |dh| <= e_o (|tanh c| + e_t) + o e_t + u (o + e_o)(|tanh c| + e_t).
Every product of two errors is kept, so this is a bound, not a first-order estimate. test_lstm_real checks that
it is tight enough to matter: at H = 256 it stays under 7e-5 (median 1.3e-5), and a change of 1e-4 in one
output fails it. The difference from the free-running
reference is printed for information (a few 1e-7 at H = 256 over 600 steps).
Rows at or past the length must be exactly zero, and rows before it bit-identical whatever lies past it."""

import numpy as np
import pytest

import reference_kokoro_nn as ref
from rullama_py import gpu, ops
from rullama_py.ops.lstm import lstm_weights

pytestmark = pytest.mark.pyodide

U = 2.0**-24
EPS_SIGMOID = 8 * U
EPS_TANH = 8 * U
SENTINEL = 7.0


def _sig(z):
    return 1.0 / (1.0 + np.exp(-z))


def test_reference_by_hand():
    """H = 1, length 2 in a capacity of 3: gate order i, f, g, o in each half of a row, the forward direction over
    rows 0, 1 and the backward over rows 1, 0, each from h = c = 0, W_hh times the previous h; row 2 is 0."""
    fwd = np.array([[0.3, -0.2, 0.5, 0.1], [-0.4, 0.7, 0.2, -0.3]])
    bwd = np.array([[0.1, 0.2, 0.3, 0.4], [-0.1, 0.5, -0.6, 0.2]])
    x_proj = np.concatenate([np.concatenate([fwd, bwd], axis=1), np.full((1, 8), 50.0)])
    w_hh = np.array([[0.5, -0.25, 1.0, 0.75], [-0.5, 0.25, 0.6, -1.0]])[:, :, None]  # [2, 4H, H]

    def step(a, h, c, w):
        a = a + w * h
        c = _sig(a[1]) * c + _sig(a[0]) * np.tanh(a[2])
        return _sig(a[3]) * np.tanh(c), c

    f0, c = step(fwd[0], 0.0, 0.0, w_hh[0, :, 0])
    f1, _ = step(fwd[1], f0, c, w_hh[0, :, 0])
    b1, c = step(bwd[1], 0.0, 0.0, w_hh[1, :, 0])
    b0, _ = step(bwd[0], b1, c, w_hh[1, :, 0])
    want = np.array([[f0, b0], [f1, b1], [0.0, 0.0]])
    np.testing.assert_allclose(ref.lstm_bidirectional(x_proj, w_hh, 2), want, rtol=1e-15, atol=1e-16)


def test_reference_teacher_forcing():
    """Fed its own hidden states, the teacher-forced reference is the free-running one."""
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((9, 12)), rng.standard_normal((12, 3))
    free = ref.lstm_direction(x, w)
    forced = ref.lstm_direction(x, w, h_feed=free["h"])
    for k in free:
        np.testing.assert_array_equal(forced[k], free[k])


def test_lstm_weights_layout():
    """lstm_weights(fwd, bwd)[d, k, j, q] = W_hh_d[q H + j, k]."""
    h = 3
    fwd = np.arange(4 * h * h, dtype=np.float32).reshape(4 * h, h)
    bwd = -fwd - 1
    w = lstm_weights(fwd, bwd)
    assert w.shape == (2, h, h, 4) and w.dtype == np.float32 and w.flags.c_contiguous
    for d, src in enumerate((fwd, bwd)):
        for k in range(h):
            for j in range(h):
                for q in range(4):
                    assert w[d, k, j, q] == src[q * h + j, k]


def _sigmoid_slope(z):
    """sigmoid'(z) = sigmoid(z) (1 - sigmoid(z)) for z >= 0: the largest slope on [z, inf) and (-inf, -z]."""
    s = ref.lstm_sigmoid(-z)
    return s * (1.0 - s)


def _tanh_slope(z):
    """tanh'(z) = 1 - tanh(z)^2 for z >= 0, likewise the largest slope at |x| >= z."""
    return 1.0 - np.tanh(z) ** 2


def _slope(slope, a, ea, q, hidden):
    """How far gate q moves when its pre-activation a moves by at most ea: ea times the largest slope on
    [a - ea, a + ea] (the mean value theorem), whose point nearest 0 is max(|a| - ea, 0)."""
    a, ea = a[:, q * hidden : (q + 1) * hidden], ea[:, q * hidden : (q + 1) * hidden]
    return slope(np.maximum(np.abs(a) - ea, 0.0)) * ea


def direction_bound(x_dir, w_dir, h_got):
    """(want, bound) [L, H] for one direction's outputs in the order it ran them, from its input rows x_dir
    [L, 4H] (same order), w_dir [4H, H] and the kernel's outputs h_got [L, H]: see the module docstring."""
    hidden = w_dir.shape[1]
    rec = ref.lstm_direction(x_dir, w_dir, h_feed=h_got)
    s = np.abs(x_dir) + np.abs(rec["h_prev"]) @ np.abs(w_dir).T.astype(np.float64)
    n = hidden + 2
    ea = n * U / (1 - n * U) * s
    a = rec["a"]
    e_i, e_f, e_o = (EPS_SIGMOID + _slope(_sigmoid_slope, a, ea, q, hidden) for q in (0, 1, 3))
    e_g = EPS_TANH + _slope(_tanh_slope, a, ea, 2, hidden)
    i, f, g, o, c_prev, c = (rec[k] for k in ("i", "f", "g", "o", "c_prev", "c"))
    e_c = np.zeros_like(c)
    e = np.zeros(hidden)
    for t in range(len(c)):
        fe, ie, ge, cp = f[t] + e_f[t], i[t] + e_i[t], np.abs(g[t]) + e_g[t], np.abs(c_prev[t])
        e = fe * e + e_f[t] * cp + e_i[t] * ge + i[t] * e_g[t] + 2 * U * (fe * (cp + e) + ie * ge)
        e_c[t] = e
    tau = np.abs(np.tanh(c))
    e_t = EPS_TANH + _tanh_slope(np.maximum(np.abs(c) - e_c, 0.0)) * e_c
    return rec["h"], e_o * (tau + e_t) + o * e_t + U * (o + e_o) * (tau + e_t)


def check(got, x_proj, w_hh, length, what=""):
    """got [rows, 2H] (the LSTM's columns of the output): rows past the length exactly 0, each direction within
    its per-step bound. Returns the worst error / bound."""
    hidden = w_hh.shape[2]
    n = min(length, x_proj.shape[0])
    assert np.all(got[n:] == 0.0), f"{what}: rows at or past the length {n} are not zero"
    assert np.all(np.isfinite(got))
    ratio = 0.0
    for d in (0, 1):
        x_dir = x_proj[:n, d * 4 * hidden : (d + 1) * 4 * hidden].astype(np.float64)
        h_dir = got[:n, d * hidden : (d + 1) * hidden].astype(np.float64)
        if d == 1:  # the backward direction runs t = n - 1 .. 0
            x_dir, h_dir = x_dir[::-1], h_dir[::-1]
        want, bound = direction_bound(x_dir, w_hh[d], h_dir)
        err = np.abs(h_dir - want)
        if n:
            ratio = max(ratio, float((err / bound).max()))
        assert np.all(err <= bound), (
            f"{what} direction {d}: max error {err.max():.3g}, worst error / bound {(err / bound).max():.3g} at "
            f"(step, unit) {np.unravel_index(np.argmax(err / bound), err.shape)}")
    free = np.abs(got[:n] - ref.lstm_bidirectional(x_proj, w_hh, n)[:n])
    print(f"lstm {what} H {hidden} length {n}: worst error / per-step bound {ratio:.3g}, "
          f"free-running difference {free.max() if n else 0.0:.3g}")
    return ratio


def inputs(rng, hidden, rows, *, x_scale=2.0):
    """W_hh of torch's init, U(-1 / sqrt(H), 1 / sqrt(H)); projections of about the size an input projection of
    that init gives (x_scale), with saturating gates sprinkled in (|a| up to 1e4: sigmoid and tanh must stay
    finite and exact there)."""
    w_hh = rng.uniform(-1, 1, (2, 4 * hidden, hidden)) / np.sqrt(hidden)
    x_proj = rng.standard_normal((rows, 8 * hidden)) * x_scale
    big = rng.random(x_proj.shape) < 0.01
    x_proj[big] = rng.choice([-1e4, -60.0, 60.0, 1e4], big.sum())
    return x_proj.astype(np.float32), w_hh.astype(np.float32)


def new_step(device):
    return device.tensor((8,), "uint32", "step", usage=gpu.UNIFORM)


def set_length(device, step, n):
    device.write(step.buffer, np.array([0, n, n, 0, 0, 0, 0, 0], np.uint32))


async def record(device, hidden, in_rows, *, out_rows=None, out_stride=None, out_offset=0):
    stride = 2 * hidden if out_stride is None else out_stride
    bufs = dict(xw=device.tensor((in_rows, 8 * hidden)), w=device.tensor((2, hidden, hidden, 4)),
                out=device.tensor((out_rows or in_rows, stride)), step=new_step(device))
    g = device.graph()
    await ops.lstm(g, bufs["xw"], bufs["w"], bufs["out"], bufs["step"], hidden=hidden, out_stride=out_stride,
                   out_offset=out_offset)
    assert len(g) == 1
    return g, bufs


async def run(device, g, bufs, x_proj, w_hh, length):
    """Writes the inputs and a sentinel-filled output, runs with n_tokens = length; the whole output back."""
    device.write(bufs["xw"].buffer, x_proj)
    device.write(bufs["w"].buffer, lstm_weights(w_hh[0], w_hh[1]))
    device.write(bufs["out"].buffer, np.full(bufs["out"].shape, SENTINEL, np.float32))
    set_length(device, bufs["step"], length)
    await device.run(g)
    return await device.read(bufs["out"])


@pytest.mark.parametrize(
    "hidden,rows,lengths",
    [
        (5, 9, (9, 4, 1, 0, 30)),  # whole capacity, shorter, one row, none, past the capacity (clamped to 9)
        (17, 13, (13, 6, 1)),  # 17 units: one workgroup of 32 threads, 15 idle; H not a multiple of 4
        (64, 20, (20, 11)),
        (300, 5, (5, 3)),  # more units than threads: 256 threads, some with two units
    ],
)
async def test_lstm(device, hidden, rows, lengths):
    """One graph run at several lengths; rows past each length hold other values in a second run, which must
    not change a bit of the rows before it."""
    g, bufs = await record(device, hidden, rows)
    for r, n in enumerate(lengths):
        rng = np.random.default_rng(100 * hidden + r)
        x_proj, w_hh = inputs(rng, hidden, rows)
        got = await run(device, g, bufs, x_proj, w_hh, n)
        check(got, x_proj, w_hh, n, f"run {r}")
        if n < rows:
            x_proj[n:] = rng.standard_normal(x_proj[n:].shape).astype(np.float32) * 1e3
            np.testing.assert_array_equal(await run(device, g, bufs, x_proj, w_hh, n), got)


async def test_lstm_out_stride_offset(device):
    """The 2H outputs into columns [5, 5 + 2H) of rows of 2H + 9 (the model's [LSTM out | style] rows), an output
    capacity past the input's: those columns zero from the length on, every other column untouched."""
    hidden, rows, out_rows, stride, offset = 17, 11, 14, 2 * 17 + 9, 5
    g, bufs = await record(device, hidden, rows, out_rows=out_rows, out_stride=stride, out_offset=offset)
    x_proj, w_hh = inputs(np.random.default_rng(3), hidden, rows)
    for n in (11, 7):
        got = await run(device, g, bufs, x_proj, w_hh, n)
        assert got.shape == (out_rows, stride)
        cols = np.arange(stride)
        mine = (cols >= offset) & (cols < offset + 2 * hidden)
        assert np.all(got[:, ~mine] == SENTINEL)
        check(got[:, mine], x_proj, w_hh, n, "strided")


async def test_lstm_fallback(device_fallback):
    g, bufs = await record(device_fallback, 17, 10)
    x_proj, w_hh = inputs(np.random.default_rng(4), 17, 10)
    check(await run(device_fallback, g, bufs, x_proj, w_hh, 8), x_proj, w_hh, 8, "fallback")


@pytest.mark.parametrize("rows,lengths", [(100, (100, 61)), (640, (600,))])
async def test_lstm_real(device, rows, lengths):
    """Kokoro's size, H = 256: T = 100 tokens (whole and 61), and 600 duration frames (15 s of speech) in a
    capacity of 640. Projections of the size Kokoro's input projections give (x_scale 1: 640 inputs of about
    unit size through W_ih of torch's init). The bound must be tight enough to catch a change of 1e-4."""
    g, bufs = await record(device, 256, rows)
    for r, n in enumerate(lengths):
        x_proj, w_hh = inputs(np.random.default_rng(rows + r), 256, rows, x_scale=1.0)
        got = await run(device, g, bufs, x_proj, w_hh, n)
        check(got, x_proj, w_hh, n, "real")
        bad = got.copy()
        bad[n // 2, 300] += 1e-4
        with pytest.raises(AssertionError):
            check(bad, x_proj, w_hh, n, "a changed output")


async def test_lstm_rejects(device):
    step, g = new_step(device), device.graph()
    xw, w, out = device.tensor((4, 8 * 3)), device.tensor((2, 3, 3, 4)), device.tensor((4, 6))
    with pytest.raises(ValueError, match="fit"):
        await ops.lstm(g, xw, w, out, step, hidden=3, out_offset=1)
    with pytest.raises(ValueError, match="fewer rows"):
        await ops.lstm(g, xw, w, device.tensor((3, 6)), step, hidden=3)
    with pytest.raises(ValueError, match="w_hh"):
        await ops.lstm(g, xw, device.tensor((2, 12, 2)), out, step, hidden=3)
    assert len(g) == 0
