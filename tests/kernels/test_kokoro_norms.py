"""Kokoro's normalisations and small ops against tests/reference_kokoro_nn.py (float64): layer_norm, the AdaIN1d
coefficients (instance_norm_coeffs) and their application (affine_act), gelu, the duration head (durations),
the alignment gather (gather_rows) and broadcast_row.

Error bounds come from the arithmetic of each kernel, with u = 2^-24 and WGSL's accuracy rules (+, -, * correctly
rounded: u relative; x / y 2.5 ULP: 5u; inverseSqrt 2 ULP: 4u; exp 3 + 2|x| ULP: (6 + 4|x|) u; fma one or two
roundings). Each op's bound is derived in its section; the final factor 2 covers the products of (1 + u) factors
and the squares of errors that the first-order sums leave out (all below 1e-3 of the bound at these sizes)."""

import math

import numpy as np
import pytest

import reference_kokoro_nn as ref
from reference_nn import gelu_tanh
from rullama_py import gpu, ops
from rullama_py.ops import norm as norm_module

pytestmark = pytest.mark.pyodide

U = 2.0**-24


def step_buffer(device, n_tokens):
    """The Step uniform (shaders/common.wgsl) with n_tokens = the real length."""
    s = device.tensor((8,), "uint32", "step", usage=gpu.UNIFORM)
    set_length(device, s, n_tokens)
    return s


def set_length(device, step, n_tokens):
    device.write(step.buffer, np.array([0, n_tokens, n_tokens, 0, 0, 0, 0, 0], np.uint32))


def check(got, want, bound, what):
    err = np.abs(np.asarray(got, np.float64) - want)
    worst = float((err / np.maximum(bound, 1e-300)).max()) if err.size else 0.0
    assert np.all(err <= bound), f"{what}: max error {err.max():.3g}, worst error / bound {worst:.3g}"
    print(f"{what}: max error {err.max():.3g}, worst error / bound {worst:.3g}")


# ---- layer_norm --------------------------------------------------------------------------------------------------
# One workgroup of WG threads per row of n; thread l holds x[l + k WG], k < NPT = ceil(n / WG). Each value
# reaches the row's sum through at most k_add = NPT + log2(WG) roundings (a serial sum, then the tree), so with
# mean|x| the row's mean absolute value:
#   mean:  |dm| <= (k_add + 5) u mean|x|                  (+5u: the division by n)
#   d_i = x_i - mean rounds by u |d_i| (+ dm, the same for every i, so it cancels from sum d_i (d_i + e_i) to
#   first order); sum d_i^2 rounds by (k_add + 1) u: var has a relative error (k_add + 3) u + 5u (division) + u
#   (+ eps) + dm^2 / (var + eps), and rstd = inverseSqrt(var + eps) half of that + 4u: rho.
#   xn:    |e| <= dm rstd + |xn| (rho + 2u)
#   then * w + b: e |w| + 2u (|xn w| + |b|); the style: |1 + g| e + 3u (|(1 + g) y| + |b_style|); leaky: + u |y|.


def layer_norm_bound(x, wg, *, eps, weight=None, bias=None, style=None, style_offset=0, act=None):
    x = np.asarray(x, np.float64)
    n = x.shape[1]
    k_add = -(-n // wg) + math.log2(wg)
    dm = (k_add + 5) * U * np.abs(x).mean(1, keepdims=True)
    mean = x.mean(1, keepdims=True)
    var = ((x - mean) ** 2).mean(1, keepdims=True)
    rstd = 1.0 / np.sqrt(var + eps)
    rho = (0.5 * (k_add + 9) + 4) * U + 0.5 * dm**2 / (var + eps)
    xn = (x - mean) * rstd
    e = dm * rstd + np.abs(xn) * (rho + 2 * U)
    y = xn
    if weight is not None:
        w = np.asarray(weight, np.float64)
        b = np.zeros(n) if bias is None else np.asarray(bias, np.float64)
        e = e * np.abs(w) + 2 * U * (np.abs(xn * w) + np.abs(b))
        y = xn * w + b
    elif bias is not None:
        e = e + U * np.abs(xn + bias)
        y = xn + np.asarray(bias, np.float64)
    if style is not None:
        s = np.asarray(style, np.float64)
        g1, b1 = 1.0 + s[style_offset : style_offset + n], s[style_offset + n : style_offset + 2 * n]
        e = np.abs(g1) * e + 3 * U * (np.abs(g1 * y) + np.abs(b1))
        y = g1 * y + b1
    if act == "leaky":
        e = e + U * np.abs(y)
    return 2 * e


def layer_norm_wg(n):
    return 64 if n <= 64 else 128 if n <= 128 else 256  # as ops.layer_norm picks


async def run_layer_norm(device, x, *, eps, weight=None, bias=None, style=None, style_offset=0, act=None, slope=0.0,
                         in_stride=None, out_stride=None, out_offset=0, in_place=False, what="layer_norm"):
    """x: [rows, n] real values; the buffers get strides and spare columns filled with 7.0 (never read, and the
    output's must stay 7.0)."""
    rows, n = x.shape
    in_stride = n if in_stride is None else in_stride
    out_stride = n if out_stride is None else out_stride
    xbuf = np.full((rows, in_stride), 7.0, np.float32)
    xbuf[:, :n] = x
    up = lambda a: None if a is None else device.upload(np.asarray(a, np.float32))  # noqa: E731
    xt = device.upload(xbuf)
    if in_place:
        out = xt
        before = xbuf.copy()
    else:
        before = np.full((rows, out_stride), 7.0, np.float32)
        out = device.upload(before)
    g = device.graph()
    await ops.layer_norm(g, xt, out, n=n, eps=eps, weight=up(weight), bias=up(bias), style=up(style),
                         style_offset=style_offset, act=act, slope=slope, in_stride=in_stride, out_stride=out_stride,
                         out_offset=out_offset)
    assert len(g) == 1
    await device.run(g)
    got = await device.read(out)
    got = got.reshape(rows, out_stride)
    want = ref.layer_norm(x, eps=eps, weight=weight, bias=bias, style=style, style_offset=style_offset, act=act,
                          slope=slope)
    bound = layer_norm_bound(x, layer_norm_wg(n), eps=eps, weight=weight, bias=bias, style=style,
                             style_offset=style_offset, act=act)
    check(got[:, out_offset : out_offset + n], want, bound, what)
    outside = np.ones(out_stride, bool)
    outside[out_offset : out_offset + n] = False
    if in_place:
        # the input columns the output window does not cover keep their values
        np.testing.assert_array_equal(got[:, outside], before[:, outside])
    else:
        assert (got[:, outside] == 7.0).all()
        np.testing.assert_array_equal((await device.read(xt)).reshape(rows, in_stride), xbuf)
    return got


@pytest.mark.parametrize(
    "rows,n,eps,affine,shift,scale",
    [
        (13, 128, 1e-12, True, 0.3, 1.0),  # ALBERT's embedding LayerNorm
        (5, 768, 1e-12, True, 2.0, 3.0),  # ALBERT's layer LayerNorms
        (4, 1000, 1e-5, True, 0.0, 1.0),  # NPT 4
        (6, 65, 1e-5, False, -1.0, 0.5),  # one past a workgroup of 64
        (3, 129, 1e-6, True, 50.0, 0.1),  # a mean 500 standard deviations off zero
        (2, 3, 1e-5, False, 0.0, 1.0),
        (1, 1, 1e-5, True, 0.0, 1.0),  # one value: xn = 0, y = bias
    ],
)
async def test_layer_norm(device, rows, n, eps, affine, shift, scale):
    rng = np.random.default_rng(rows * 1000 + n)
    x = (rng.standard_normal((rows, n)) * scale + shift).astype(np.float32)
    w = rng.standard_normal(n).astype(np.float32) if affine else None
    b = rng.standard_normal(n).astype(np.float32) if affine else None
    await run_layer_norm(device, x, eps=eps, weight=w, bias=b, what=f"layer_norm {rows}x{n} eps {eps}")


async def test_layer_norm_constant_rows(device):
    """Rows with no spread: with ALBERT's eps 1e-12, rstd = 1e6 would amplify any rounding of the mean; the
    mean of equal values is exact here (sums of 128 threes and of halves are exact), so y = bias exactly."""
    n = 128
    x = np.stack([np.full(n, 3.0), np.full(n, -0.5), np.zeros(n)]).astype(np.float32)
    b = np.random.default_rng(1).standard_normal(n).astype(np.float32)
    w = np.ones(n, np.float32)
    got = await run_layer_norm(device, x, eps=1e-12, weight=w, bias=b, what="layer_norm constant rows")
    np.testing.assert_array_equal(got, np.broadcast_to(b, x.shape))


async def test_layer_norm_text_encoder(device):
    """The text encoder's LayerNorm(512) with gamma and beta, then LeakyReLU 0.2, over rows of the capacity."""
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((37, 512)) * 4 + 1).astype(np.float32)
    w = (1 + 0.3 * rng.standard_normal(512)).astype(np.float32)
    b = (0.5 * rng.standard_normal(512)).astype(np.float32)
    await run_layer_norm(device, x, eps=1e-5, weight=w, bias=b, act="leaky", slope=0.2, what="text encoder LN")


async def test_layer_norm_ada_in_place(device):
    """The duration encoder's AdaLayerNorm: rows of 640 whose first 512 columns (the LSTM's output) are normed in
    place with gamma | beta from the style's fc (style_offset picks one layer's out of a stacked vector); the
    last 128 columns (the style, written by broadcast_row) stay."""
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((21, 512)) * 0.3).astype(np.float32)
    style = (rng.standard_normal(3 * 1024) * 0.5).astype(np.float32)
    await run_layer_norm(device, x, eps=1e-5, style=style, style_offset=1024, in_stride=640, out_stride=640,
                         in_place=True, what="AdaLayerNorm in place")


async def test_layer_norm_windows(device):
    """Strided input, output into a column window of wider rows (others untouched), and in place with the
    window shifted right within the row: every value is read before any is written."""
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((9, 100)) * 2 - 3).astype(np.float32)
    w = rng.standard_normal(100).astype(np.float32)
    style = rng.standard_normal(200).astype(np.float32)
    await run_layer_norm(device, x, eps=1e-5, weight=w, style=style, in_stride=111, out_stride=133, out_offset=17,
                         act="leaky", slope=0.01, what="layer_norm windows")
    await run_layer_norm(device, x, eps=1e-5, bias=w, in_stride=150, out_stride=150, out_offset=40, in_place=True,
                         what="layer_norm in place, shifted window")


async def test_layer_norm_fallback(device_fallback):
    rng = np.random.default_rng(6)
    x = (rng.standard_normal((5, 768)) + 1).astype(np.float32)
    await run_layer_norm(device_fallback, x, eps=1e-12, weight=rng.standard_normal(768).astype(np.float32),
                         bias=rng.standard_normal(768).astype(np.float32), what="layer_norm fallback")


async def test_layer_norm_refuses(device):
    x = device.tensor((4, 10))
    g = device.graph()
    wide = device.tensor((4, 12))
    with pytest.raises(ValueError, match="in place"):
        await ops.layer_norm(g, wide, wide, n=10, eps=1e-5, in_stride=10, out_stride=12)
    with pytest.raises(ValueError, match="out_offset"):
        await ops.layer_norm(g, x, device.tensor((4, 10)), n=10, eps=1e-5, out_offset=1)
    with pytest.raises(ValueError, match="act"):
        await ops.layer_norm(g, x, device.tensor((4, 10)), n=10, eps=1e-5, act="relu")
    assert len(g) == 0


# ---- instance_norm_coeffs ----------------------------------------------------------------------------------------
# Per channel c, over the real rows x_t (t < n): the kernel shifts by K = the median of x[0], x[n / 2], x[n - 1]
# (exact f32 values), v_t = x_t - K rounded (|dv_t| <= u |v_t|). Blocks b of R rows: S_b = sum v (serial, at
# most R roundings), m_b = S_b / n_b (5u), Q_b = sum (v - m_b)^2 around the block's own mean; then per channel the
# workgroup's trees combine m = sum S_b / n and M2 = sum_b Q_b + n_b (m_b - m)^2 (each thread adds ceil(B / 64)
# blocks serially, then 6 tree levels: k_c roundings). With D_b = m_b - m, d_t = v_t - m_b (exact values):
#   |dm_b| <= (R + 5) u mean_b|v|,        |dm| <= (R + k_c + 5) u mean|v|
#   Q_b:   (R + 2) u Q_b + 2u sum_b |d_t| |v_t| (the rounding of v, which need not be small next to d)
#   between blocks: 2 sum n_b |D_b| dm_b + 5u sum n_b D_b^2 (the dm part is the same for all b and cancels:
#   sum n_b D_b = 0), plus n_b dm_b^2 and n dm^2 (second order, kept)
#   M2:    + (k_c + 1) u M2 for the sums;  var = M2 / n: 5u, + eps: u; rstd: half the relative error + 4u: rho.
#   scale = rstd (1 + gamma): |d scale| <= |scale| (rho + 2u)
#   shift = beta - (K + m) scale: |d shift| <= (|dm| + u |mean|) |scale| + |mean scale| (rho + 2u)
#                                              + u (|mean scale| + |shift|)


def instance_norm_bound(x, length, *, eps, coeffs_want):
    x = np.asarray(x, np.float64)
    n, c = min(int(length), x.shape[0]), x.shape[1]
    real = x[:n]
    r = norm_module._IN_ROWS_PER_BLOCK
    k_shift = np.median(real[[0, n // 2, n - 1]], axis=0)
    v = real - k_shift
    blocks = -(-n // r)
    k_c = -(-blocks // norm_module._IN_FINISH_WG) + 6
    mean_v = v.mean(0)
    m2 = ((v - mean_v) ** 2).sum(0)
    err = (k_c + 1) * U * m2
    dm = (r + k_c + 5) * U * np.abs(v).mean(0)
    for b in range(blocks):
        vb = v[b * r : (b + 1) * r]
        nb = len(vb)
        mb = vb.mean(0)
        q = ((vb - mb) ** 2).sum(0)
        dmb = (r + 5) * U * np.abs(vb).mean(0)
        err += (r + 2) * U * q + 2 * U * (np.abs(vb - mb) * np.abs(vb)).sum(0)
        err += 2 * nb * np.abs(mb - mean_v) * dmb + 5 * U * nb * (mb - mean_v) ** 2 + nb * dmb**2
    err += n * dm**2
    var = m2 / n
    rho = 0.5 * (err / n + 6 * U * var) / (var + eps) + 4 * U
    scale, shift = coeffs_want[:c], coeffs_want[c:]
    mean = k_shift + mean_v
    b_scale = np.abs(scale) * (rho + 2 * U)
    b_shift = (dm + U * np.abs(mean)) * np.abs(scale) + np.abs(mean * scale) * (rho + 2 * U)
    b_shift += U * (np.abs(mean * scale) + np.abs(shift))
    return 2 * np.concatenate([b_scale, b_shift])


async def run_instance_norm(device, x, length, *, eps=1e-5, style=None, style_offset=0, what="instance_norm"):
    rows, c = x.shape
    xt, out, step = device.upload(x), device.tensor((2 * c,)), step_buffer(device, length)
    g = device.graph()
    await ops.instance_norm_coeffs(g, xt, step, out, channels=c, eps=eps,
                                   style=None if style is None else device.upload(style), style_offset=style_offset)
    assert len(g) == 2
    await device.run(g)
    got = await device.read(out)
    want = ref.instance_norm_coeffs(x, min(length, rows), eps=eps, style=style, style_offset=style_offset)
    check(got, want, instance_norm_bound(x, length, eps=eps, coeffs_want=want), what)
    return got


@pytest.mark.parametrize(
    "rows,channels,length,mean,std",
    [
        (4801, 128, 4801, 0.5, 2.0),  # 1 s of the generator's last stage (4800 rows/s), full capacity
        (2400, 1090, 2391, -1.0, 3.0),  # the decoder's 1090 channels (30 s at 80 rows/s), garbage past the length
        (333, 5, 300, 0.0, 1.0),  # a length that is not a multiple of the block
        (40, 7, 1, 3.0, 1.0),  # one real row: var 0, mean = that row
        (40, 7, 33, 3.0, 1.0),
        (10, 3, 50, 0.0, 1.0),  # a length past the capacity counts as the capacity
    ],
)
async def test_instance_norm_coeffs(device, rows, channels, length, mean, std):
    rng = np.random.default_rng(rows + channels)
    x = (rng.standard_normal((rows, channels)) * std + mean).astype(np.float32)
    x[length:] = rng.standard_normal((max(rows - length, 0), channels)).astype(np.float32) * 1e4  # never read
    style = rng.standard_normal(2 * channels + 9).astype(np.float32) * 0.5
    await run_instance_norm(device, x, length, style=style, style_offset=9,
                            what=f"instance_norm {rows}x{channels} length {length}")


async def test_instance_norm_coeffs_large_mean(device):
    """100,003 real rows of mean 100 and standard deviation 1 (a capacity of 100,100, with 1e4 past the length).
    Plain f32 sums of x and x^2 would lose everything (x^2 ~ 1e4, var 1: cancellation by 1e4 with sums of 1e5
    terms); here the shift by the median row takes the 100 out before any sum, and the blocks' means are combined
    without cancellation. The bound above comes to 7e-6 relative on the scale and 8e-4 on the shift (of -100,
    so 8e-6 relative); the error is about 1e-5 on the shift, near the f32 rounding of -100 itself."""
    rows, length, c = 100_100, 100_003, 24
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((rows, c)) + 100).astype(np.float32)
    x[length:] = 1e4
    got = await run_instance_norm(device, x, length, what="instance_norm mean 100 std 1, 1e5 rows")
    # The normalised values x * scale + shift (in float64 here) then err by |x| d_scale + d_shift.
    want = ref.instance_norm_coeffs(x, length)
    bound = instance_norm_bound(x, length, eps=1e-5, coeffs_want=want)
    real = x[:length].astype(np.float64)
    check(real * got[:c] + got[c:], ref.affine_act(real, want, length), np.abs(real) * bound[:c] + bound[c:],
          "AdaIN1d of mean 100 std 1")


async def test_instance_norm_coeffs_outliers_at_the_ends(device):
    """Convolution edges can leave the first and last rows far off: the median of the first, middle and last
    rows stays a typical value, so the sums never carry the outliers' magnitude into every row."""
    rows, c = 5000, 16
    rng = np.random.default_rng(8)
    x = (rng.standard_normal((rows, c)) * 0.5 + 3).astype(np.float32)
    x[0], x[-1] = 1000.0, -500.0
    await run_instance_norm(device, x, rows, what="instance_norm outliers at the ends")


async def test_instance_norm_coeffs_no_style_and_lengths(device):
    """No style: a plain InstanceNorm1d (gamma = beta = 0). One recorded graph, run for several lengths through
    the Step uniform (pipelines and bind groups unchanged), zero length included (mean 0, var 0)."""
    rows, c = 200, 33
    rng = np.random.default_rng(9)
    x = (rng.standard_normal((rows, c)) * 2 + 1).astype(np.float32)
    xt, out, step = device.upload(x), device.tensor((2 * c,)), step_buffer(device, rows)
    g = device.graph()
    await ops.instance_norm_coeffs(g, xt, step, out, channels=c)
    for length in (200, 64, 31, 1, 0):
        set_length(device, step, length)
        await device.run(g)
        got = await device.read(out)
        want = ref.instance_norm_coeffs(x, length)
        if length == 0:
            np.testing.assert_allclose(got, np.concatenate([np.full(c, 1e-5**-0.5), np.zeros(c)]), rtol=1e-6)
        else:
            check(got, want, instance_norm_bound(x, length, eps=1e-5, coeffs_want=want), f"no style, length {length}")


async def test_instance_norm_coeffs_shared_scratch(device):
    """Two calls of one graph sharing one scratch sized by instance_norm_scratch_size (dispatches run in order)."""
    rng = np.random.default_rng(10)
    a = rng.standard_normal((300, 64)).astype(np.float32)
    b = (rng.standard_normal((1000, 20)) * 5 - 2).astype(np.float32)
    scratch = device.tensor((max(ops.instance_norm_scratch_size(300, 64), ops.instance_norm_scratch_size(1000, 20)),))
    step = step_buffer(device, 290)
    outs = [device.tensor((128,)), device.tensor((40,))]
    g = device.graph()
    await ops.instance_norm_coeffs(g, device.upload(a), step, outs[0], channels=64, scratch=scratch)
    await ops.instance_norm_coeffs(g, device.upload(b), step, outs[1], channels=20, scratch=scratch)
    await device.run(g)
    for x, out in zip((a, b), outs):
        want = ref.instance_norm_coeffs(x, 290)
        check(await device.read(out), want, instance_norm_bound(x, 290, eps=1e-5, coeffs_want=want), "shared scratch")
    with pytest.raises(ValueError, match="scratch"):
        await ops.instance_norm_coeffs(g, device.upload(b), step, outs[1], channels=20, scratch=device.tensor((10,)))


async def test_instance_norm_coeffs_fallback(device_fallback):
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((700, 130)) * 2 + 5).astype(np.float32)
    await run_instance_norm(device_fallback, x, 650, style=rng.standard_normal(260).astype(np.float32),
                            what="instance_norm fallback")


# ---- affine_act --------------------------------------------------------------------------------------------------
# u = fma(x, s, h), fused (u |u|) or not (u |x s| + u |u|): |du| <= u (|x s| + |u|).
# leaky: + u |slope u|. snake(u, a) = u + sin(a u)^2 / a: its derivative in u is 1 + sin(2 a u), at most 2, so du
# counts twice; z = a u rounds by u |z|, which moves sin^2 by at most u |z|; snake_lib's sin^2: the reduction
# r = z - k pi/2 is exact to 2u |r| + 4.5e-15 |k|, the polynomials truncate below 2e-9 and round within 3u, so
# |sin| is within 5u + 2e-9 and its square within 11u + 4e-9; then / a (5u of the quotient) and + u (u |y|).


def affine_act_bound(x, coeffs, length, *, act=None, slope=0.0, alpha=None):
    x = np.asarray(x, np.float64)
    c = x.shape[1]
    n = min(int(length), x.shape[0])
    k = np.asarray(coeffs, np.float64)
    xs = x[:n] * k[:c]
    u = xs + k[c : 2 * c]
    e = U * (np.abs(xs) + np.abs(u))
    if act == "leaky":
        e = e + U * np.abs(slope * u)
    elif act == "snake":
        a = np.abs(np.asarray(alpha, np.float64)[:c])
        y = ref.snake(u, alpha[:c])
        e = 2 * e + (11 * U + 4e-9 + U * np.abs(a * u)) / a + 5 * U * np.sin(a * u) ** 2 / a + U * np.abs(y)
    out = np.zeros_like(x)
    out[:n] = 2 * e
    return out


async def run_affine_act(device, x, coeffs, length, *, act=None, slope=0.0, alpha=None, in_place=False, what=""):
    rows, c = x.shape
    xt, step = device.upload(x), step_buffer(device, length)
    out = xt if in_place else device.upload(np.full((rows, c), 7.0, np.float32))
    g = device.graph()
    await ops.affine_act(g, xt, device.upload(coeffs), out, step, channels=c, act=act, slope=slope,
                         alpha=None if alpha is None else device.upload(alpha))
    assert len(g) == 1
    await device.run(g)
    got = await device.read(out)
    want = ref.affine_act(x, coeffs, length, act=act, slope=slope, alpha=alpha)
    check(got, want, affine_act_bound(x, coeffs, length, act=act, slope=slope, alpha=alpha), what)
    assert (got[min(length, rows):] == 0.0).all()
    if not in_place:
        np.testing.assert_array_equal(await device.read(xt), x)
    return got


@pytest.mark.parametrize("act", [None, "leaky", "snake"])
@pytest.mark.parametrize("in_place", [False, True])
async def test_affine_act(device, act, in_place):
    rows, c, length = 77, 130, 61
    rng = np.random.default_rng(12)
    x = (rng.standard_normal((rows, c)) * 3 + 1).astype(np.float32)
    coeffs = np.concatenate([rng.uniform(0.2, 2.0, c), rng.standard_normal(c)]).astype(np.float32)
    alpha = rng.uniform(0.05, 8.0, c).astype(np.float32) if act == "snake" else None
    await run_affine_act(device, x, coeffs, length, act=act, slope=0.2, alpha=alpha, in_place=in_place,
                         what=f"affine_act {act} in place {in_place}")


async def test_affine_act_snake_wide_angles(device):
    """Snake1d over arguments a u up to about +-3000 rad (large activations times large alphas) and near the
    multiples of pi/2 where the reduction switches polynomial: our sin stays within a few ulps everywhere (WGSL's
    own sin need not, outside [-pi, pi])."""
    c = 64
    rng = np.random.default_rng(13)
    alpha = np.concatenate([rng.uniform(0.1, 10, c - 4), [1.0, 1.0, 30.0, 0.01]]).astype(np.float32)
    x = (rng.standard_normal((300, c)) * 100).astype(np.float32)
    x[:50, c - 4] = np.float32(np.pi / 4) * np.arange(-25, 25)  # odd multiples of pi/4: the fold between cos and sin
    x[:50, c - 3] = np.float32(np.pi / 2) * np.arange(-25, 25)
    coeffs = np.concatenate([np.ones(c), np.zeros(c)]).astype(np.float32)
    await run_affine_act(device, x, coeffs, 300, act="snake", alpha=alpha, what="snake wide angles")


async def test_affine_act_adain(device):
    """instance_norm_coeffs then affine_act in one graph is AdaIN1d (then LeakyReLU 0.2, as AdainResBlk1d's
    norm1 + actv): rows past the length come out 0."""
    rows, c, length = 500, 256, 437
    rng = np.random.default_rng(14)
    x = (rng.standard_normal((rows, c)) * 2 + 0.7).astype(np.float32)
    style = (rng.standard_normal(2 * c) * 0.3).astype(np.float32)
    xt, step, coeffs, out = device.upload(x), step_buffer(device, length), device.tensor((2 * c,)), device.tensor((rows, c))
    g = device.graph()
    await ops.instance_norm_coeffs(g, xt, step, coeffs, channels=c, style=device.upload(style))
    await ops.affine_act(g, xt, coeffs, out, step, channels=c, act="leaky", slope=0.2)
    await device.run(g)
    k = await device.read(coeffs)
    got = await device.read(out)
    kw = ref.instance_norm_coeffs(x, length, style=style)
    kb = instance_norm_bound(x, length, eps=1e-5, coeffs_want=kw)
    want = ref.affine_act(x, kw, length, act="leaky", slope=0.2)
    # the coefficients' errors move u = x scale + shift by |x| d_scale + d_shift, then affine_act's own rounding
    bound = affine_act_bound(x, k, length, act="leaky", slope=0.2)
    bound[:length] += np.abs(x[:length]) * kb[:c] + kb[c:]
    check(got, want, bound, "AdaIN1d + leaky")


async def test_affine_act_grid_wraps(device):
    """Past 32768 workgroups of 256 values the grid wraps into its second dimension (the generator's last stage,
    150,000 rows of 128 channels, takes 75,000): 65,600 rows x 128 channels, 10 rows past the length."""
    rows, c = 65_600, 128
    rng = np.random.default_rng(22)
    x = rng.standard_normal((rows, c)).astype(np.float32)
    coeffs = np.concatenate([rng.uniform(0.5, 2, c), rng.standard_normal(c)]).astype(np.float32)
    await run_affine_act(device, x, coeffs, rows - 10, act="leaky", slope=0.1, what="affine_act, wrapped grid")


async def test_affine_act_fallback(device_fallback):
    rng = np.random.default_rng(15)
    x = rng.standard_normal((40, 22)).astype(np.float32)
    coeffs = rng.standard_normal(44).astype(np.float32)
    await run_affine_act(device_fallback, x, coeffs, 39, act="snake", alpha=rng.uniform(0.5, 2, 22).astype(np.float32),
                         what="affine_act fallback")


# ---- gelu --------------------------------------------------------------------------------------------------------
# gelu_tanh (common.wgsl) = 0.5 x (1 + t), t = 1 - 2 / (exp(2 v) + 1), v = sqrt(2/pi) (x + 0.044715 x^3) clamped
# to +-15 (where t = +-1 to 1e-13). v rounds by 4u relative (cube, products, sum); exp(2v) by (6 + 8|v|) u and
# by 8u |v| from v's rounding; through 2 / (E + 1), whose derivative carries 2 E / (E + 1)^2, that is at most 4u
# absolute on t over all v (the factor dies off faster than |v| grows), plus 6u (the add and the division of a
# quotient <= 2, so 12u) and u: |dt| <= 17u. Then 1 + t (<= 2u absolute), the product: |dy| <= 10u |x| + u |y|.


@pytest.mark.parametrize("in_place", [False, True])
async def test_gelu(device, in_place):
    rng = np.random.default_rng(16)
    x = (rng.standard_normal((7, 2048)) * 3).astype(np.float32)
    x[0, :9] = [0.0, -30.0, 30.0, 1e-3, -1e-3, 6.0, -6.0, 100.0, -1e-30]
    xt = device.upload(x)
    out = None if in_place else device.tensor(x.shape)
    g = device.graph()
    await ops.gelu(g, xt, out)
    assert len(g) == 1
    await device.run(g)
    got = await device.read(xt if in_place else out)
    want = gelu_tanh(x)
    check(got, want, 2 * (10 * U * np.abs(x) + U * np.abs(want)), f"gelu in place {in_place}")


async def test_gelu_fallback(device_fallback):
    x = np.linspace(-8, 8, 1001).astype(np.float32)
    out = device_fallback.tensor(x.shape)
    g = device_fallback.graph()
    await ops.gelu(g, device_fallback.upload(x), out)
    await device_fallback.run(g)
    want = gelu_tanh(x)
    check(await device_fallback.read(out), want, 2 * (10 * U * np.abs(x) + U * np.abs(want)), "gelu fallback")


# ---- durations ---------------------------------------------------------------------------------------------------
# sigmoid (sigmoid_lib.wgsl): e = exp(-|z|) to (6 + 4|z|) u relative; z >= 0: r = 1 / (1 + e), the add and the
# division 6u relative, e's error entering scaled by e / (1 + e) = 1 - sigmoid; z < 0: e r, e's error in full and
# 7u. The serial sum of BINS terms: (BINS - 1) u sum; / speed: 5u. Where the f32 sum / speed lies within that bound
# of a tie (k + 0.5) either neighbour is right; everywhere else the result must equal the float64 one.


def duration_bound(logits, speed):
    z = np.asarray(logits, np.float64)
    s = 0.5 * (1.0 + np.tanh(0.5 * z))
    e_sig = np.where(z >= 0, 6 * U * s + (6 + 4 * np.abs(z)) * U * (1 - s), (13 + 4 * np.abs(z)) * U * s)
    total = s.sum(-1)
    return 2 * ((e_sig.sum(-1) + (z.shape[-1] - 1) * U * total) / speed + 5 * U * total / speed)


async def run_durations(device, logits, speeds, length, rows=None):
    rows = logits.shape[0] if rows is None else rows
    bins = logits.shape[1]
    speed = device.upload(np.array([speeds[0]], np.float32))
    out = device.upload(np.full(rows, 77, np.uint32))
    g = device.graph()
    await ops.durations(g, device.upload(logits), speed, out, step_buffer(device, length), bins=bins)
    assert len(g) == 1
    results = []
    for sp in speeds:  # the same graph: speed is read at run time
        device.write(speed.buffer, np.array([sp], np.float32))
        await device.run(g)
        results.append(await device.read(out))
    return results


async def test_durations_random(device):
    """50 bins of N(0, 2^2) logits: sums around 25. Speeds 1 and 1.27 through one graph; rows past the length 0."""
    rng = np.random.default_rng(17)
    rows, length = 64, 47
    logits = (rng.standard_normal((rows, 50)) * 2).astype(np.float32)
    logits[length:] = np.nan  # never read
    speeds = (1.0, float(np.float32(1.27)), 0.5)
    for sp, got in zip(speeds, await run_durations(device, logits, speeds, length)):
        want = ref.durations(logits, sp, length)
        v = ref.duration_sums(logits[:length], sp)
        near_tie = np.abs(v - np.floor(v) - 0.5) <= duration_bound(logits[:length], sp)
        ok = (got[:length] == want[:length]) | (near_tie & (np.abs(got[:length].astype(np.int64) - v) <= 0.5 + 1e-6))
        assert ok.all(), (sp, got[:length][~ok], want[:length][~ok])
        assert near_tie.sum() <= 1
        assert (got[length:] == 0).all()


async def test_durations_ties_to_even(device):
    """Sums that are exactly k + 0.5 in f32: sigmoid(30) = 1 and sigmoid(-200) = 0 exactly (1 + exp(-30) rounds to
    1, exp(-200) underflows), sigmoid(0) = 1/2. torch.round and WGSL's round() take ties to the even neighbour:
    0.5 -> 0 (then at least 1), 1.5 -> 2, 2.5 -> 2, 3.5 -> 4; speed 2 halves exactly: 5 -> 2.5 -> 2, 7 -> 3.5 -> 4."""
    ones_and_halves = [(0, 1), (1, 1), (2, 1), (3, 1), (5, 0), (7, 0), (2, 0), (0, 0), (49, 1), (50, 0)]
    logits = np.full((len(ones_and_halves), 50), -200.0, np.float32)
    for t, (ones, half) in enumerate(ones_and_halves):
        logits[t, :ones] = 30.0
        logits[t, ones : ones + half] = 0.0
    at_1, at_2 = await run_durations(device, logits, (1.0, 2.0), len(ones_and_halves))
    sums = np.array([o + 0.5 * h for o, h in ones_and_halves])
    np.testing.assert_array_equal(at_1, np.maximum(1, np.round(sums)))
    np.testing.assert_array_equal(at_1, [1, 2, 2, 4, 5, 7, 2, 1, 50, 50])
    np.testing.assert_array_equal(at_2, [1, 1, 1, 2, 2, 4, 1, 1, 25, 25])
    # (the float64 reference is no judge here: its sigmoid(30) is 1 - 9e-14, so 7 / 2 falls just below 3.5)


async def test_durations_fallback(device_fallback):
    rng = np.random.default_rng(18)
    logits = (rng.standard_normal((9, 50)) * 3 - 1).astype(np.float32)
    (got,) = await run_durations(device_fallback, logits, (1.0,), 9, rows=9)
    v = ref.duration_sums(logits, 1.0)
    near_tie = np.abs(v - np.floor(v) - 0.5) <= duration_bound(logits, 1.0)
    assert ((got == ref.durations(logits, 1.0, 9)) | near_tie).all()


# ---- gather_rows and broadcast_row -----------------------------------------------------------------------------
# Copies: exact.


async def test_gather_rows_alignment(device):
    """en = d^T @ aln: the duration encoder's 640-wide token rows repeated by their durations; F = 23 real
    frames of a capacity of 30 (the index past F holds garbage, never read), one index past the table (reads
    the last row)."""
    rng = np.random.default_rng(19)
    d = rng.standard_normal((7, 640)).astype(np.float32)
    dur = np.array([2, 5, 1, 3, 4, 1, 7])
    index = np.full(30, 123456, np.uint32)
    frames = ref.alignment_index(dur)
    index[: len(frames)] = frames
    index[4] = 99  # past the 7 rows
    out = device.upload(np.full((30, 640), 7.0, np.float32))
    g = device.graph()
    await ops.gather_rows(g, device.upload(d), device.upload(index), out, step_buffer(device, len(frames)), n=640)
    assert len(g) == 1
    await device.run(g)
    got = await device.read(out)
    want = ref.gather_rows(d, index, len(frames), n=640, out=np.full((30, 640), 7.0)).reshape(30, 640)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got[4], d[6])
    aln = np.zeros((7, len(frames)))
    aln[frames, np.arange(len(frames))] = 1.0
    ok = np.arange(len(frames)) != 4
    np.testing.assert_array_equal(got[: len(frames)][ok], (d.T.astype(np.float64) @ aln).T[ok])


async def test_gather_rows_windows(device):
    """asr = t_en @ aln into the first 512 columns of the decoder's 514-wide input rows ([asr; F0; N]); the table
    read through a column window of wider rows; the other output columns untouched."""
    await gather_windows(device)


async def test_gather_rows_fallback(device_fallback):
    await gather_windows(device_fallback)


async def gather_windows(device):
    rng = np.random.default_rng(20)
    table = rng.standard_normal((5, 530)).astype(np.float32)
    index = np.array([0, 0, 1, 4, 4, 4, 2, 3, 9, 9, 9], np.uint32)
    length = 8
    before = np.full((11, 514), 7.0, np.float32)
    out = device.upload(before)
    g = device.graph()
    await ops.gather_rows(g, device.upload(table), device.upload(index), out, step_buffer(device, length), n=512,
                          table_stride=530, table_offset=11, out_stride=514, out_offset=0)
    await device.run(g)
    got = await device.read(out)
    want = ref.gather_rows(table, index, length, n=512, out=before, table_stride=530, table_offset=11, out_stride=514)
    np.testing.assert_array_equal(got.reshape(-1), want)
    assert (got[:, 512:] == 7.0).all() and (got[length:, :512] == 0.0).all()


async def test_broadcast_row(device):
    """s_pros = ref_s[128:] into the last 128 columns of 640-wide rows, every row of the capacity."""
    rng = np.random.default_rng(21)
    ref_s = rng.standard_normal(256).astype(np.float32)
    before = rng.standard_normal((19, 640)).astype(np.float32)
    out = device.upload(before)
    g = device.graph()
    await ops.broadcast_row(g, device.upload(ref_s), out, n=128, rows=19, out_stride=640, out_offset=512,
                            vec_offset=128)
    assert len(g) == 1
    await device.run(g)
    got = await device.read(out)
    want = ref.broadcast_row(ref_s, before, n=128, rows=19, out_stride=640, out_offset=512, vec_offset=128)
    np.testing.assert_array_equal(got.reshape(-1), want)
    np.testing.assert_array_equal(got[:, :512], before[:, :512])
    assert (got[:, 512:] == ref_s[128:]).all()


async def test_broadcast_row_fallback(device_fallback):
    out = device_fallback.upload(np.zeros((3, 10), np.float32))
    g = device_fallback.graph()
    await ops.broadcast_row(g, device_fallback.upload(np.arange(5, dtype=np.float32)), out, n=3, rows=2,
                            out_stride=10, out_offset=6, vec_offset=1)
    await device_fallback.run(g)
    want = np.zeros((3, 10), np.float32)
    want[:2, 6:9] = [1, 2, 3]
    np.testing.assert_array_equal(await device_fallback.read(out), want)
