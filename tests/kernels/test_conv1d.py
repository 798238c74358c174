"""ops.conv1d and ops.conv_transpose1d (Kokoro's 1-D convolutions) against tests/reference_kokoro_nn.conv1d_ref and
conv_transpose1d_ref (float64; checked against torch.nn.functional.conv1d / conv_transpose1d by
test_reference_is_torchs when torch is installed, and pinned by hand without it).

Every case records the op once for a capacity and runs it with a real length below it: input rows past the length
hold NaN (a kernel that read one would show it), output rows past the output length hold NaN before the run and
must come back exactly 0, and the columns of `out` the op does not own must come back unchanged.

Tolerance, from the arithmetic (u = 2^-24). An output is a sum of N products (N = c_in kernel for conv1d,
c_in ceil(kernel / stride) for the transposed conv, ceil(kernel / stride) depthwise), plus the bias and the
accumulated value, then scaled: in any order of summation |error| <= gamma_{N+3} (sum |w| |u| + |bias| +
|out|) |out_scale| with gamma_n = n u / (1 - n u), taken as (N + 4) u. On top, each input value u carries the
transform's own error du, which reaches the output as sum |w| du:
- affine u = x s + b, fused or not: du <= u (|x s| + |u|);
- leaky: the slope's product adds u |u|, and the error above is scaled by at most max(1, |slope|);
- snake u + sin(a u)^2 / a (conv1d_input.wgsl): sin^2 of the f32 product a u is within (4.4 + 5.1e-4 |a u|) u of
  the exact sin^2 of it (measured in numpy f32 over |a u| <= 3e4), the product's rounding moves sin^2 by at most
  |a u| u, the division (2.5 ulp = 5 u) and the sum add 5 u / |a| and u |result|: du <= u (10 / |a| + 1.01 |u|
  + |result|) for the transform's own error, taken as u (16 / |a| + 2 |u| + |result|); the error of the affine
  input is at most doubled (d snake / du = 1 + sin(2 a u) <= 2).
"""

import math

import numpy as np
import pytest

import reference_kokoro_nn as ref
from rullama_py import gpu, ops
from rullama_py.ops import conv as conv_mod

pytestmark = pytest.mark.pyodide

U = 2.0**-24


def new_step(device, n):
    step = device.tensor((8,), "uint32", "step", usage=gpu.UNIFORM)
    set_length(device, step, n)
    return step


def set_length(device, step, n):
    device.write(step.buffer, np.array([0, n, n, 0, 0, 0, 0, 0], np.uint32))


def input_error(x_rows, *, in_affine, in_act, slope, alpha):
    """Bound on the kernel's error in each transformed input value (module docstring), [n, c_in] float64."""
    x_rows = np.asarray(x_rows, np.float64)
    c = x_rows.shape[1]
    pre = ref.conv1d_input(x_rows, in_affine=in_affine)
    post = ref.conv1d_input(x_rows, in_affine=in_affine, in_act=in_act, slope=slope, alpha=alpha)
    du = np.zeros_like(pre)
    if in_affine is not None:
        du = U * (np.abs(x_rows * np.asarray(in_affine, np.float64)[:c]) + np.abs(pre))
    if in_act == "leaky":
        du = max(1.0, abs(slope)) * du + U * np.abs(post)
    elif in_act == "snake":
        a = np.abs(np.asarray(alpha, np.float64)[:c])
        du = 2 * du + U * (16 / a + 2 * np.abs(pre) + np.abs(post))
    return du


def make_inputs(rng, *, c_in, c_out, kernel, in_rows, length, in_stride=None, in_offset=0, w_shape=None,
                bias=True, in_affine=False, in_act=None, scale=1.0):
    """Random f32 inputs; rows of x at or past `length` (and the columns the op does not read) are NaN."""
    in_stride = c_in if in_stride is None else in_stride
    x = np.full((in_rows, in_stride), np.nan, np.float32)
    x[:length, in_offset : in_offset + c_in] = rng.standard_normal((min(length, in_rows), c_in)) * scale
    w_shape = (c_out, c_in, kernel) if w_shape is None else w_shape
    w = (rng.standard_normal(w_shape) / math.sqrt(c_in * kernel)).astype(np.float32)
    b = rng.standard_normal(c_out).astype(np.float32) if bias else None
    # Kokoro's AdaIN: scale (1 + gamma) / std and shift beta - mean (1 + gamma) / std, of order 1.
    aff = None
    if in_affine:
        aff = np.concatenate([rng.uniform(0.2, 2.0, c_in), rng.standard_normal(c_in)]).astype(np.float32)
    alpha = rng.uniform(0.1, 3.0, c_in).astype(np.float32) if in_act == "snake" else None
    if alpha is not None:
        alpha[: c_in // 3] *= -1  # Snake1d's alpha is learned: any sign
    return x, w, b, aff, alpha


def check_output(got, want, bound, prior, cols, what):
    """Columns `cols` within `bound` of `want` (rows past the output length: exactly 0); the rest unchanged."""
    sel = np.zeros(got.shape[1], bool)
    sel[cols] = True
    np.testing.assert_array_equal(got[:, ~sel], prior[:, ~sel], err_msg=f"{what}: columns it does not own changed")
    err = np.abs(got[:, sel] - want[:, sel])
    ok = err <= bound[:, sel]
    if not np.all(ok):
        r, c = np.argwhere(~ok)[0]
        raise AssertionError(f"{what}: out[{r}, {c}] = {got[r, sel][c]!r}, want {want[r, sel][c]!r} +- "
                             f"{bound[r, sel][c]:.3g}; {int((~ok).sum())} values out of bound")
    print(f"{what}: max error {np.nanmax(err, initial=0.0):.3g}, worst error / bound "
          f"{np.nanmax(err / np.maximum(bound[:, sel], 1e-300), initial=0.0):.3g}")


async def run_conv1d(device, rng, *, c_in, c_out, kernel, in_rows, length, out_rows=None, stride=1, dilation=1,
                     padding=0, upsample=1, in_affine=False, in_act=None, slope=0.2, bias=True, accumulate=False,
                     out_scale=1.0, in_stride=None, in_offset=0, out_stride=None, out_offset=0, lengths=(),
                     expect_kernel=None, scale=1.0):
    """Record conv1d once for the capacities, run it at `length` (and at each of `lengths`), check every run."""
    out_stride = c_out if out_stride is None else out_stride
    if out_rows is None:
        out_rows = ref.conv1d_out_len(in_rows, kernel=kernel, stride=stride, dilation=dilation, padding=padding,
                                      upsample=upsample) + 3
    x, w, b, aff, alpha = make_inputs(rng, c_in=c_in, c_out=c_out, kernel=kernel, in_rows=in_rows, length=length,
                                      in_stride=in_stride, in_offset=in_offset, bias=bias, in_affine=in_affine,
                                      in_act=in_act, scale=scale)
    xt, wt = device.upload(x), device.upload(w)
    bt = None if b is None else device.upload(b)
    afft = None if aff is None else device.upload(aff)
    alphat = None if alpha is None else device.upload(alpha)
    out = device.tensor((out_rows, out_stride))
    step = new_step(device, length)
    g = device.graph()
    await ops.conv1d(g, xt, wt, bt, out, step, c_in=c_in, c_out=c_out, kernel=kernel, stride=stride,
                     dilation=dilation, padding=padding, upsample=upsample, in_affine=afft, in_act=in_act, slope=slope,
                     alpha=alphat, accumulate=accumulate, out_scale=out_scale, in_stride=in_stride,
                     in_offset=in_offset, out_stride=out_stride, out_offset=out_offset)
    assert len(g) == 1
    if expect_kernel:
        assert g.dispatches[0].kernel == expect_kernel, g.dispatches[0].kernel
    cols = slice(out_offset, out_offset + c_out)
    opts = dict(c_in=c_in, c_out=c_out, kernel=kernel, stride=stride, dilation=dilation, padding=padding,
                upsample=upsample)
    got = None
    for n in (length, *lengths):
        if n != length:
            x[:, in_offset : in_offset + c_in] = np.nan
            x[:n, in_offset : in_offset + c_in] = rng.standard_normal((n, c_in)) * scale
            device.write(xt.buffer, x)
            set_length(device, step, n)
        prior = rng.standard_normal((out_rows, out_stride)).astype(np.float32)
        n_out = ref.conv1d_out_len(min(n, in_rows), kernel=kernel, stride=stride, dilation=dilation,
                                   padding=padding, upsample=upsample)
        prior[n_out:, cols] = np.nan  # must be overwritten with 0, never read
        device.write(out.buffer, prior)
        await device.run(g)
        got = await device.read(out)
        want = ref.conv1d_ref(x, w, b, n, **opts, in_affine=aff, in_act=in_act, slope=slope, alpha=alpha,
                              accumulate=accumulate, out_scale=out_scale, in_stride=in_stride, in_offset=in_offset,
                              out=prior, out_stride=out_stride, out_offset=out_offset)
        rows = ref._conv_input_rows(x, n, c_in, in_stride, in_offset)
        u = ref.conv1d_input(rows, in_affine=aff, in_act=in_act, slope=slope, alpha=alpha)
        du = input_error(rows, in_affine=aff, in_act=in_act, slope=slope, alpha=alpha)
        absprior = np.where(np.isnan(prior), 0.0, np.abs(prior))
        mag = ref.conv1d_ref(np.abs(u), np.abs(w), None if b is None else np.abs(b), n, **opts,
                             accumulate=accumulate, out=absprior, out_stride=out_stride, out_offset=out_offset)
        prop = ref.conv1d_ref(du, np.abs(w), None, n, **opts, out_rows=out_rows, out_stride=out_stride,
                              out_offset=out_offset)
        bound = abs(out_scale) * ((c_in * kernel + 4) * U * mag + prop)
        check_output(got, want, bound, prior, cols, f"conv1d {c_in}->{c_out} k{kernel} s{stride} d{dilation} "
                     f"p{padding} U{upsample} {in_act} len {n}/{in_rows} [{g.dispatches[0].kernel}]")
        np.testing.assert_array_equal(await device.read(xt), x)
    return got


async def run_conv_transpose1d(device, rng, *, c_in, c_out, kernel, stride, in_rows, length, padding=0,
                               output_padding=0, groups=1, in_affine=False, in_act=None, slope=0.1, bias=True,
                               reflect_pad_left=0, out_rows=None, out_stride=None, out_offset=0, lengths=(),
                               expect_kernel=None):
    out_stride = c_out if out_stride is None else out_stride
    opts = dict(c_in=c_in, c_out=c_out, kernel=kernel, stride=stride, padding=padding, output_padding=output_padding,
                groups=groups)
    lens = dict(kernel=kernel, stride=stride, padding=padding, output_padding=output_padding,
                reflect_pad_left=reflect_pad_left)
    if out_rows is None:
        out_rows = ref.conv_transpose1d_out_len(in_rows, **lens) + 3
    x, w, b, aff, _ = make_inputs(rng, c_in=c_in, c_out=c_out, kernel=kernel, in_rows=in_rows, length=length,
                                  w_shape=(c_in, c_out // groups, kernel), bias=bias, in_affine=in_affine)
    xt, wt = device.upload(x), device.upload(w)
    bt = None if b is None else device.upload(b)
    afft = None if aff is None else device.upload(aff)
    out = device.tensor((out_rows, out_stride))
    step = new_step(device, length)
    g = device.graph()
    await ops.conv_transpose1d(g, xt, wt, bt, out, step, **opts, in_affine=afft, in_act=in_act, slope=slope,
                               reflect_pad_left=reflect_pad_left, out_stride=out_stride, out_offset=out_offset)
    assert len(g) == 1
    if expect_kernel:
        assert g.dispatches[0].kernel == expect_kernel, g.dispatches[0].kernel
    cols = slice(out_offset, out_offset + c_out)
    terms = -(-kernel // stride) * (1 if groups != 1 else c_in)
    got = None
    for n in (length, *lengths):
        if n != length:
            x[:] = np.nan
            x[:n] = rng.standard_normal((n, c_in))
            device.write(xt.buffer, x)
            set_length(device, step, n)
        prior = rng.standard_normal((out_rows, out_stride)).astype(np.float32)
        prior[ref.conv_transpose1d_out_len(min(n, in_rows), **lens):, cols] = np.nan
        device.write(out.buffer, prior)
        await device.run(g)
        got = await device.read(out)
        want = ref.conv_transpose1d_ref(x, w, b, n, **opts, in_affine=aff, in_act=in_act, slope=slope,
                                        reflect_pad_left=reflect_pad_left, out=prior, out_stride=out_stride,
                                        out_offset=out_offset)
        rows = x[: min(n, in_rows)]
        u = ref.conv1d_input(rows, in_affine=aff, in_act=in_act, slope=slope)
        du = input_error(rows, in_affine=aff, in_act=in_act, slope=slope, alpha=None)
        mag = ref.conv_transpose1d_ref(np.abs(u), np.abs(w), None if b is None else np.abs(b), n, **opts,
                                       reflect_pad_left=reflect_pad_left, out_rows=out_rows, out_stride=out_stride,
                                       out_offset=out_offset)
        prop = ref.conv_transpose1d_ref(du, np.abs(w), None, n, **opts, reflect_pad_left=reflect_pad_left,
                                        out_rows=out_rows, out_stride=out_stride, out_offset=out_offset)
        bound = (terms + 4) * U * mag + prop
        check_output(got, want, bound, prior, cols, f"conv_transpose1d {c_in}->{c_out} k{kernel} s{stride} p{padding} "
                     f"op{output_padding} g{groups} R{reflect_pad_left} len {n}/{in_rows} [{g.dispatches[0].kernel}]")
    return got


# ---- the references ---------------------------------------------------------------------------------------------


def test_reference_by_hand():
    """conv1d: w[o, i, k] multiplies seen row t stride + k dilation - padding; upsample repeats rows; transposed:
    input row m feeds rows m stride + k - padding; the reflection pad copies row 1 in front."""
    x = np.zeros((5, 1))
    x[1, 0] = 1.0  # an impulse at row 1
    w = np.array([[[1.0, 10.0, 100.0]]])  # (1, 1, 3)
    y = ref.conv1d_ref(x, w, None, 5, c_in=1, c_out=1, kernel=3, padding=1, out_rows=5)[:, 0]
    np.testing.assert_array_equal(y, [100.0, 10.0, 1.0, 0.0, 0.0])  # out[t] = sum_k w[k] x[t + k - 1]
    y = ref.conv1d_ref(x, w, np.array([0.5]), 5, c_in=1, c_out=1, kernel=3, dilation=2, padding=2, out_rows=6)[:, 0]
    np.testing.assert_array_equal(y, [0.5, 10.5, 0.5, 1.5, 0.5, 0.0])  # 5 rows, then the 0 past out_len
    y = ref.conv1d_ref(x, w, None, 5, c_in=1, c_out=1, kernel=3, stride=2, padding=1, out_rows=3)[:, 0]
    np.testing.assert_array_equal(y, [100.0, 1.0, 0.0])  # rows 0 and 2 of the stride-1 result
    y = ref.conv1d_ref(x, np.ones((1, 1, 1)), None, 3, c_in=1, c_out=1, kernel=1, upsample=2, out_rows=7)[:, 0]
    np.testing.assert_array_equal(y, [0, 0, 1, 1, 0, 0, 0])  # 3 real rows seen as 6; row 6 past out_len
    y = ref.conv1d_ref(x, w, None, 1, c_in=1, c_out=1, kernel=3, padding=1, out_rows=2)[:, 0]
    np.testing.assert_array_equal(y, [0.0, 0.0])  # length 1: the impulse at row 1 is not real
    y = ref.conv_transpose1d_ref(x, w, None, 3, c_in=1, c_out=1, kernel=3, stride=2, out_rows=8)[:, 0]
    np.testing.assert_array_equal(y, [0, 0, 1, 10, 100, 0, 0, 0])  # (3 - 1) 2 + 3 = 7 rows
    y = ref.conv_transpose1d_ref(x, w, None, 3, c_in=1, c_out=1, kernel=3, stride=2, padding=1, output_padding=1,
                                 reflect_pad_left=1, out_rows=8)[:, 0]
    np.testing.assert_array_equal(y, [1, 0, 1, 10, 100, 0, 0, 0])  # 6 rows [0 1 10 100 0 0], then row 1 in front
    aff = np.array([2.0, -1.0])
    np.testing.assert_array_equal(ref.conv1d_input([[1.0], [-1.0]], in_affine=aff, in_act="leaky", slope=0.5),
                                  [[1.0], [-1.5]])
    a = np.array([0.5])
    np.testing.assert_allclose(ref.conv1d_input([[2.0]], in_act="snake", alpha=a), [[2 + math.sin(1.0) ** 2 / 0.5]])


def test_reference_is_torchs():
    """The references against torch (when installed) with every option at once: affine, activation, upsampling,
    strides, dilation, padding, accumulate and scale, column windows, the reflection pad, depthwise groups."""
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        pytest.skip("torch is not installed (test_reference_by_hand pins the conventions)")
    rng = np.random.default_rng(0)
    t = lambda a: torch.tensor(np.asarray(a, np.float64))  # noqa: E731
    for ci, co, k, s, d, p, up, act, n in [(5, 7, 3, 1, 1, 1, 1, None, 13), (22, 9, 12, 6, 1, 3, 1, "leaky", 61),
                                           (6, 4, 5, 2, 3, 4, 2, "snake", 9), (4, 3, 7, 1, 5, 15, 1, "snake", 20)]:
        x = rng.standard_normal((n + 4, ci + 3))
        w, b = rng.standard_normal((co, ci, k)), rng.standard_normal(co)
        aff, alpha = rng.standard_normal(2 * ci), rng.uniform(0.3, 2, ci)
        prior = rng.standard_normal((n * up + 9, co + 5))
        got = ref.conv1d_ref(x, w, b, n, c_in=ci, c_out=co, kernel=k, stride=s, dilation=d, padding=p, upsample=up,
                             in_affine=aff, in_act=act, slope=0.2, alpha=alpha, accumulate=True, out_scale=0.7,
                             in_stride=ci + 3, in_offset=2, out=prior, out_stride=co + 5, out_offset=3)
        u = t(x[:n, 2 : 2 + ci]) * t(aff[:ci]) + t(aff[ci:])
        if act == "leaky":
            u = F.leaky_relu(u, 0.2)
        if act == "snake":
            u = u + (1 / t(alpha)) * torch.sin(t(alpha) * u) ** 2
        u = F.interpolate(u.T[None], scale_factor=up, mode="nearest")
        y = F.conv1d(u, t(w), t(b), stride=s, padding=p, dilation=d)[0].T.numpy()
        want = prior.copy()
        want[: len(y), 3 : 3 + co] = 0.7 * (y + prior[: len(y), 3 : 3 + co])
        want[len(y) :, 3 : 3 + co] = 0.0
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    for ci, co, k, s, p, op, groups, refl, n in [(6, 4, 20, 10, 5, 0, 1, 0, 7), (5, 3, 12, 6, 3, 0, 1, 1, 9),
                                                 (7, 7, 3, 2, 1, 1, 7, 0, 11), (3, 5, 4, 3, 0, 2, 1, 1, 1)]:
        x = rng.standard_normal((n + 4, ci))
        w, b, aff = rng.standard_normal((ci, co // groups, k)), rng.standard_normal(co), rng.standard_normal(2 * ci)
        rows = (n + 4) * s + k
        got = ref.conv_transpose1d_ref(x, w, b, n, c_in=ci, c_out=co, kernel=k, stride=s, padding=p, output_padding=op,
                                       groups=groups, in_affine=aff, in_act="leaky", slope=0.1, reflect_pad_left=refl,
                                       out_rows=rows, out_stride=co + 2, out_offset=1)
        u = F.leaky_relu(t(x[:n]) * t(aff[:ci]) + t(aff[ci:]), 0.1).T[None]
        y = F.conv_transpose1d(u, t(w), t(b), stride=s, padding=p, output_padding=op, groups=groups)
        if refl:
            y = torch.nn.ReflectionPad1d((1, 0))(y)
        y = y[0].T.numpy()
        want = np.zeros((rows, co + 2))
        want[: len(y), 1 : 1 + co] = y
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


# ---- conv1d -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "c_in,c_out,kernel,dilation,padding,in_rows,length,kernel_name",
    [
        (5, 19, 3, 1, 1, 23, 17, "conv1d_tiled"),  # odd sizes: partial channel chunk, tile and row tile
        (37, 70, 7, 3, 9, 90, 71, "conv1d_tiled"),  # dilated; c_out past one 64-channel tile; CK 4
        (9, 33, 11, 5, 25, 40, 40, "conv1d_tiled"),  # Kokoro's widest window (k 11, d 5): every row padded somewhere
        (70, 17, 1, 1, 0, 15, 9, "conv1d_tiled"),  # 1 x 1: CK 32, c_in past one chunk
        (6, 16, 3, 1, 0, 9, 2, "conv1d_tiled"),  # no padding, length below the kernel span: no output rows
        (12, 18, 17, 1, 8, 30, 25, "conv1d_direct"),  # 17 taps of weights do not fit 16 KiB: the direct kernel
        (8, 15, 3, 1, 1, 20, 20, "conv1d_direct"),  # fewer than 16 output channels: the direct kernel
    ],
)
async def test_conv1d_shapes(device, c_in, c_out, kernel, dilation, padding, in_rows, length, kernel_name):
    rng = np.random.default_rng(c_in * 1000 + c_out)
    await run_conv1d(device, rng, c_in=c_in, c_out=c_out, kernel=kernel, dilation=dilation, padding=padding,
                     in_rows=in_rows, length=length, expect_kernel=kernel_name, lengths=(in_rows, 1, 0))


@pytest.mark.parametrize("tile", [(1, 4), (2, 8), (3, 4), (8, 4), (8, 8), "direct"])
async def test_conv1d_tiles(device, monkeypatch, tile):
    """Every tile shape the kernel takes (RPT 1..8 rows x CPT 4 or 8 channels a lane) and the direct kernel, on
    one odd case with every input option."""
    monkeypatch.setattr(conv_mod, "CONV1D_TILE_OVERRIDE", tile)
    rng = np.random.default_rng(7)
    await run_conv1d(device, rng, c_in=13, c_out=150, kernel=5, dilation=2, padding=4, in_rows=150, length=139,
                     in_affine=True, in_act="snake", accumulate=True, out_scale=0.5,
                     expect_kernel="conv1d_direct" if tile == "direct" else "conv1d_tiled")


@pytest.mark.parametrize("in_act", [None, "leaky", "snake"])
@pytest.mark.parametrize("path", ["tiled", "direct"])
async def test_conv1d_input_transform(device, monkeypatch, in_act, path):
    """The affine and each activation, with large inputs (snake: a u up to ~100, where a plain f32 sin drifts)."""
    monkeypatch.setattr(conv_mod, "CONV1D_TILE_OVERRIDE", "direct" if path == "direct" else None)
    rng = np.random.default_rng(11)
    await run_conv1d(device, rng, c_in=21, c_out=24, kernel=3, padding=1, in_rows=40, length=33, in_affine=True,
                     in_act=in_act, slope=0.2, scale=20.0, expect_kernel=f"conv1d_{path}")


async def test_conv1d_strided_and_upsampled(device):
    """Strides take the direct kernel (Kokoro's noise conv 22 -> 256 k12 s6 p3 and F0 conv 1 -> 1 k3 s2 p1); the
    upsampled 1 x 1 shortcut and an upsampled k3 take the tiled one."""
    rng = np.random.default_rng(3)
    await run_conv1d(device, rng, c_in=22, c_out=256, kernel=12, stride=6, padding=3, in_rows=121, length=121,
                     expect_kernel="conv1d_direct", lengths=(61, 6))
    await run_conv1d(device, rng, c_in=1, c_out=1, kernel=3, stride=2, padding=1, in_rows=41, length=40,
                     expect_kernel="conv1d_direct", lengths=(1,))
    await run_conv1d(device, rng, c_in=30, c_out=20, kernel=1, upsample=2, in_rows=17, length=13, bias=False,
                     expect_kernel="conv1d_tiled", lengths=(17,))
    await run_conv1d(device, rng, c_in=7, c_out=33, kernel=3, padding=1, upsample=3, stride=2, in_rows=11, length=9,
                     expect_kernel="conv1d_direct")
    await run_conv1d(device, rng, c_in=7, c_out=33, kernel=3, padding=1, upsample=3, in_rows=11, length=9,
                     expect_kernel="conv1d_tiled")


@pytest.mark.parametrize("path", ["tiled", "direct"])
async def test_conv1d_columns(device, monkeypatch, path):
    """in_stride / in_offset read a column window of a wider buffer, out_stride / out_offset write one (Kokoro's
    concatenations: [x; asr_res; F0; N]), with accumulate and out_scale."""
    monkeypatch.setattr(conv_mod, "CONV1D_TILE_OVERRIDE", "direct" if path == "direct" else None)
    rng = np.random.default_rng(5)
    await run_conv1d(device, rng, c_in=19, c_out=35, kernel=3, padding=1, in_rows=30, length=26, in_stride=31,
                     in_offset=7, out_stride=50, out_offset=9, accumulate=True, out_scale=-0.75, in_act="leaky",
                     in_affine=True, expect_kernel=f"conv1d_{path}", lengths=(30, 3))


async def test_conv1d_residual_block(device):
    """AdainResBlk1d's tail: out = conv2(h), then out = (out + conv1x1(upsample(x))) / sqrt 2 in the same graph."""
    rng = np.random.default_rng(9)
    n, c_in, c_out = 20, 24, 40
    x = rng.standard_normal((n, c_in)).astype(np.float32)
    h = rng.standard_normal((2 * n, c_out)).astype(np.float32)
    w2 = (rng.standard_normal((c_out, c_out, 3)) * 0.2).astype(np.float32)
    b2 = rng.standard_normal(c_out).astype(np.float32)
    wsc = (rng.standard_normal((c_out, c_in, 1)) * 0.2).astype(np.float32)
    out = device.tensor((2 * n + 2, c_out))
    step_x, step_h = new_step(device, n), new_step(device, 2 * n)
    g = device.graph()
    await ops.conv1d(g, device.upload(h), device.upload(w2), device.upload(b2), out, step_h, c_in=c_out, c_out=c_out,
                     kernel=3, padding=1)
    await ops.conv1d(g, device.upload(x), device.upload(wsc), None, out, step_x, c_in=c_in, c_out=c_out, kernel=1,
                     upsample=2, accumulate=True, out_scale=1 / math.sqrt(2))
    await device.run(g)
    got = await device.read(out)
    res = ref.conv1d_ref(h, w2, b2, 2 * n, c_in=c_out, c_out=c_out, kernel=3, padding=1, out_rows=2 * n + 2)
    want = ref.conv1d_ref(x, wsc, None, n, c_in=c_in, c_out=c_out, kernel=1, upsample=2, accumulate=True,
                          out_scale=1 / math.sqrt(2), out=res)
    mag = ref.conv1d_ref(np.abs(h), np.abs(w2), np.abs(b2), 2 * n, c_in=c_out, c_out=c_out, kernel=3, padding=1,
                         out_rows=2 * n + 2)
    mag = ref.conv1d_ref(np.abs(x), np.abs(wsc), None, n, c_in=c_in, c_out=c_out, kernel=1, upsample=2,
                         accumulate=True, out=(3 * c_out + 4) * U * mag)
    bound = ((3 * c_out + 4) + (c_in + 4)) * U * mag
    check_output(got, want, bound, got, slice(0, c_out), "residual + shortcut")


@pytest.mark.parametrize(
    "name,c_in,c_out,kernel,dilation,rows,in_act",
    [
        ("resblock256", 256, 256, 3, 1, 50, "snake"),  # the generator's resblocks and noise resblocks
        ("resblock256", 256, 256, 11, 5, 50, "snake"),
        ("resblock128", 128, 128, 7, 3, 130, "snake"),
        ("resblock128", 128, 128, 11, 1, 130, "snake"),
        ("conv_post", 128, 22, 7, 1, 121, "leaky"),
        ("text_conv", 512, 512, 5, 1, 24, "leaky"),
        ("decode3_conv1", 1090, 512, 3, 1, 12, "leaky"),
        ("encode_conv1", 514, 1024, 3, 1, 9, None),
    ],
)
async def test_conv1d_kokoro_shapes(device, name, c_in, c_out, kernel, dilation, rows, in_act):
    """Kokoro's convs at their real channels, kernels and dilations (weights sized as weight norm leaves them,
    AdaIN-affine inputs), over a moderate length below the capacity: the generator's resblock convs (Snake, and
    x + conv for the dilation-1 ones), conv_post after LeakyReLU(0.01), the text encoder's and the decoder's."""
    rng = np.random.default_rng(rows * c_in + kernel)
    await run_conv1d(device, rng, c_in=c_in, c_out=c_out, kernel=kernel, dilation=dilation,
                     padding=dilation * (kernel - 1) // 2, in_rows=rows, length=rows - 3, in_affine=in_act == "snake",
                     in_act=in_act, slope=0.01 if c_out == 22 else 0.2, accumulate=in_act == "snake" and dilation == 1,
                     expect_kernel="conv1d_tiled")


async def test_conv1d_fallback(device_fallback):
    """The kernels use neither f16 nor subgroups; the fallback device runs each path once."""
    rng = np.random.default_rng(17)
    await run_conv1d(device_fallback, rng, c_in=13, c_out=70, kernel=7, dilation=3, padding=9, in_rows=50, length=44,
                     in_affine=True, in_act="snake", expect_kernel="conv1d_tiled")
    await run_conv1d(device_fallback, rng, c_in=22, c_out=40, kernel=12, stride=6, padding=3, in_rows=61, length=55,
                     expect_kernel="conv1d_direct")
    await run_conv_transpose1d(device_fallback, rng, c_in=24, c_out=20, kernel=12, stride=6, padding=3, in_rows=9,
                               length=8, in_act="leaky", reflect_pad_left=1, expect_kernel="conv1d_tiled")
    await run_conv_transpose1d(device_fallback, rng, c_in=9, c_out=9, groups=9, kernel=3, stride=2, padding=1,
                               output_padding=1, in_rows=9, length=7, expect_kernel="conv_transpose1d")


# ---- conv_transpose1d -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "c_in,c_out,kernel,stride,padding,output_padding,reflect,kernel_name",
    [
        (40, 36, 20, 10, 5, 0, 0, "conv1d_tiled"),  # ups[0] at a smaller size: 2 taps a phase
        (36, 20, 12, 6, 3, 0, 1, "conv1d_tiled"),  # ups[1] with the reflection pad
        (7, 17, 5, 3, 0, 2, 1, "conv1d_tiled"),  # taps that do not divide evenly; output padding; no padding
        (9, 11, 4, 2, 1, 0, 0, "conv_transpose1d"),  # few output channels: the direct kernel
        (5, 21, 3, 1, 1, 0, 1, "conv1d_tiled"),  # stride 1
    ],
)
async def test_conv_transpose1d(device, c_in, c_out, kernel, stride, padding, output_padding, reflect, kernel_name):
    rng = np.random.default_rng(c_in * 100 + kernel)
    await run_conv_transpose1d(device, rng, c_in=c_in, c_out=c_out, kernel=kernel, stride=stride, padding=padding,
                               output_padding=output_padding, reflect_pad_left=reflect, in_rows=13, length=11,
                               in_affine=True, in_act="leaky", expect_kernel=kernel_name, lengths=(13, 2, 1, 0))


@pytest.mark.parametrize("tile", [(1, 8), (4, 4), (8, 4), "direct"])
async def test_conv_transpose1d_tiles(device, monkeypatch, tile):
    monkeypatch.setattr(conv_mod, "CONV1D_TILE_OVERRIDE", tile)
    rng = np.random.default_rng(19)
    await run_conv_transpose1d(device, rng, c_in=23, c_out=70, kernel=12, stride=6, padding=3, in_rows=25, length=21,
                               in_act="leaky", reflect_pad_left=1, out_stride=75, out_offset=2,
                               expect_kernel="conv_transpose1d" if tile == "direct" else "conv1d_tiled")


@pytest.mark.parametrize("out_rows", [1, 2])
async def test_conv_transpose1d_small_capacity(device, out_rows):
    """An output capacity of one or two rows under the reflection pad: row 0 (the copy of row 1) is still
    written, by the lane of row 1, at stride 1 where row 1 is another tile row than row 0."""
    rng = np.random.default_rng(31)
    await run_conv_transpose1d(device, rng, c_in=6, c_out=20, kernel=3, stride=1, in_rows=5, length=4,
                               reflect_pad_left=1, out_rows=out_rows, expect_kernel="conv1d_tiled", lengths=(1,))


async def test_conv_transpose1d_depthwise(device):
    """AdainResBlk1d's upsampling pool: depthwise ConvTranspose1d(C, C, 3, stride 2, padding 1, output_padding 1)
    of leaky(AdaIN(x)): out_len = 2 len."""
    rng = np.random.default_rng(23)
    got = await run_conv_transpose1d(device, rng, c_in=67, c_out=67, groups=67, kernel=3, stride=2, padding=1,
                                     output_padding=1, in_rows=15, length=15, in_affine=True, in_act="leaky",
                                     slope=0.2, expect_kernel="conv_transpose1d", lengths=(8, 1))
    assert got.shape == (33, 67)


@pytest.mark.native_only  # the whole Pyodide run's heaviest cases: lighter ones test the same code there
async def test_conv_transpose1d_kokoro_shapes(device):
    """The generator's upsampling at its real channels: ConvTranspose1d(512, 256, 20, 10, 5) and (256, 128, 12, 6,
    3) + ReflectionPad1d((1, 0)), after LeakyReLU(0.1), over a few frames."""
    rng = np.random.default_rng(29)
    await run_conv_transpose1d(device, rng, c_in=512, c_out=256, kernel=20, stride=10, padding=5, in_rows=8,
                               length=7, in_act="leaky", slope=0.1, expect_kernel="conv1d_tiled")
    await run_conv_transpose1d(device, rng, c_in=256, c_out=128, kernel=12, stride=6, padding=3, reflect_pad_left=1,
                               in_rows=30, length=28, in_act="leaky", slope=0.1, expect_kernel="conv1d_tiled")


async def test_conv_refusals(device):
    """Arguments the kernels cannot honour are refused before anything is recorded."""
    x, w, out, step = device.tensor((4, 3)), device.tensor((5, 3, 2)), device.tensor((4, 5)), new_step(device, 4)
    g = device.graph()
    with pytest.raises(ValueError, match="one buffer"):
        await ops.conv1d(g, out, device.tensor((5, 5, 2)), None, out, step, c_in=5, c_out=5, kernel=2, accumulate=True)
    with pytest.raises(ValueError, match="does not hold"):
        await ops.conv1d(g, x, w, None, out, step, c_in=3, c_out=5, kernel=3)
    with pytest.raises(ValueError, match="columns"):
        await ops.conv1d(g, x, w, None, out, step, c_in=3, c_out=5, kernel=2, in_offset=1)
    with pytest.raises(ValueError, match="alpha"):
        await ops.conv1d(g, x, w, None, out, step, c_in=3, c_out=5, kernel=2, in_act="snake")
    with pytest.raises(ValueError, match="groups"):
        await ops.conv_transpose1d(g, x, device.tensor((3, 1, 3)), None, out, step, c_in=3, c_out=5, kernel=3,
                                   stride=2, groups=3)
    assert len(g) == 0
