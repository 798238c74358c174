"""Normalisation ops (shaders/rms_norm.wgsl; Kokoro's layer_norm.wgsl, instance_norm_coeffs.wgsl, affine_act.wgsl)."""

from __future__ import annotations

import weakref

from ..gpu import Graph, Tensor

from ._util import WG, rows as _rows


async def rms_norm(g: Graph, x: Tensor, w: Tensor | None, out: Tensor, *, n: int, eps: float, add_one: bool = False,
                   accumulate: bool = False, scale: Tensor | None = None,
                   then: tuple[Tensor, Tensor] | None = None):
    """out = x * rsqrt(mean(x^2) + eps) * w over rows of `n` (w None: no weight; add_one: (1 + w)).
    accumulate: out += that instead (post-norm fused with the residual add). scale (1-element tensor): the
    result is multiplied by scale[0], e.g. out = (out + that) * layer_output_scale (Gemma 4).
    then = (w2, out2): in the same dispatch, out2 = out * rsqrt(mean(out^2) + eps) * w2 over the rows just
    written: a post-norm added into the residual stream, then the next block's input norm."""
    rows = _rows(x, n)
    limit = g.device.limits["max-compute-workgroups-per-dimension"]
    grid = (rows, 1) if rows <= limit else (limit, -(-rows // limit))
    # One workgroup per row, whose lanes each keep ceil(n / 4 / wg) vec4s in registers (at most 8: rows of up
    # to 8192). About 4 vec4s a lane (1,536 values: 128 lanes of 3) measured fastest for a single row on an
    # H200; short rows (per-head norms) take at least 32 lanes.
    if n % 4:
        raise ValueError(f"rms_norm: rows of {n} values; the kernel reads rows of whole vec4s (a multiple of 4)")
    wg = 32
    while wg < WG and 4 * 4 * wg < n:  # the fewest lanes (a power of two) that leave at most 4 vec4s each
        wg *= 2
    if n > 32 * wg:
        raise ValueError(f"rms_norm: rows of {n} values; the kernel holds at most {32 * wg}")
    k = await g.device.kernel("rms_norm", libs=("workgroup_sum",), entry="main" if then is None else "then_norm",
                              N=n, VPL=-(-n // (4 * wg)), EPS=eps,
                              HAS_WEIGHT=w is not None, ADD_ONE=add_one, ACCUMULATE=accumulate,
                              HAS_SCALE=scale is not None, WG=wg,
                              GRID_X=grid[0] if grid[1] > 1 else 0, ROWS=rows if grid[1] > 1 else 0)
    binds = [x, w if w is not None else x, out, scale if scale is not None else x]
    if then is not None:
        w2, out2 = then
        if _count(out2) < rows * n or _count(w2) < n:
            raise ValueError(f"rms_norm: then=({w2.shape}, {out2.shape}) does not hold {rows} rows of {n}")
        binds += [w2, out2]
    g.add(k, binds, grid)


# ---- Kokoro: LayerNorm, AdaIN1d as a per-channel scale and shift, and its application ---------------------------

_placeholders: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _placeholder(device) -> Tensor:
    """A 16-byte buffer to bind where a kernel declares an input it does not use (entry points that write their
    input in place cannot bind that buffer again read-only). One per device."""
    t = _placeholders.get(device)
    if t is None:
        t = _placeholders[device] = device.tensor((4,), "float32", "unused binding")
    return t


def _count(t: Tensor) -> int:
    n = 1
    for d in t.shape:
        n *= d
    return n


def _same_buffer(a: Tensor, b: Tensor) -> bool:
    return a is b or (len(a.parts) == 1 and len(b.parts) == 1 and a.buffer is b.buffer)


def _grid(workgroups: int, limit: int) -> tuple[int, int]:
    """(x, y) covering `workgroups` when one dimension holds at most `limit`; kernels number them y * x_size + x."""
    if workgroups <= limit:
        return (workgroups, 1)
    return (limit, -(-workgroups // limit))


async def layer_norm(g: Graph, x: Tensor, out: Tensor, *, n: int, eps: float, weight: Tensor | None = None,
                     bias: Tensor | None = None, style: Tensor | None = None, style_offset: int = 0,
                     act: str | None = None, slope: float = 0.0, in_stride: int | None = None,
                     out_stride: int | None = None, out_offset: int = 0):
    """LayerNorm over the n channels of every row of x (every row of the capacity: no length), one dispatch
    (shaders/layer_norm.wgsl, one workgroup per row):

        xn = (x - mean) / sqrt(var + eps)              mean, biased var over the row's n values
        y  = xn * weight + bias                        weight, bias: f32 [n], each optional
        y  = (1 + style[o + i]) * y + style[o + n + i] style: f32 vector, o = style_offset (AdaLayerNorm: the
                                                       output of its fc, gamma = the first n, beta = the next n)
        y  = y if y >= 0 else slope * y                act "leaky"

    x: f32, row r at x[r * in_stride : r * in_stride + n] (in_stride default n), rows = x's size / in_stride;
    out: row r written at out[r * out_stride + out_offset : ... + n] (out_stride default n), other columns
    untouched. Kokoro: ALBERT's LayerNorms (128 and 768 channels, eps 1e-12, weight and bias); the text encoder's
    (512, eps 1e-5, weight and bias, act "leaky" slope 0.2); the duration encoder's AdaLayerNorm (512, eps 1e-5,
    style), writing the normed 512 columns of 640-wide rows. out may be x (same buffer) only with equal strides;
    then the kernel's in-place entry binds it once."""
    in_stride = n if in_stride is None else in_stride
    out_stride = n if out_stride is None else out_stride
    if n < 1 or in_stride < n or out_offset + n > out_stride:
        raise ValueError(f"layer_norm: n={n}, in_stride={in_stride}, out_stride={out_stride}, out_offset={out_offset}")
    if act not in (None, "leaky"):
        raise ValueError(f"layer_norm: act {act!r} (None or 'leaky')")
    total = _count(x)
    if total < n:
        raise ValueError(f"layer_norm: input of shape {x.shape} holds less than one row of {n}")
    rows = (total - n) // in_stride + 1  # rows r with r * in_stride + n <= total
    if (rows - 1) * out_stride + out_offset + n > _count(out):
        raise ValueError(f"layer_norm: output of shape {out.shape} is smaller than {rows} rows of stride {out_stride}")
    for t, what, need in ((weight, "weight", n), (bias, "bias", n), (style, "style", style_offset + 2 * n)):
        if t is not None and _count(t) < need:
            raise ValueError(f"layer_norm: {what} of shape {t.shape} holds fewer than {need} values")
    in_place = _same_buffer(x, out)
    if in_place and in_stride != out_stride:
        raise ValueError("layer_norm: in place needs in_stride == out_stride")
    wg = 64 if n <= 64 else 128 if n <= 128 else WG
    grid = _grid(rows, g.device.limits["max-compute-workgroups-per-dimension"])
    k = await g.device.kernel("layer_norm", entry="inplace" if in_place else "main", N=n, NPT=-(-n // wg), WG=wg,
                              EPS=float(eps), HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None,
                              HAS_STYLE=style is not None, STYLE_OFFSET=style_offset, LEAKY=act == "leaky",
                              SLOPE=float(slope), IN_STRIDE=in_stride, OUT_STRIDE=out_stride, OUT_OFFSET=out_offset,
                              GRID_X=grid[0] if grid[1] > 1 else 0, ROWS=rows if grid[1] > 1 else 0)
    spare = x if not in_place else _placeholder(g.device)
    params = [t if t is not None else spare for t in (weight, bias, style)]
    g.add(k, [x, *params] if in_place else [x, *params, out], grid)


_IN_ROWS_PER_BLOCK = 32  # rows of one channel per thread in instance_norm_coeffs' first pass (kept in registers)
_IN_FINISH_WG = 64  # threads per channel in its second pass


def instance_norm_scratch_size(rows: int, channels: int) -> int:
    """f32 values of scratch instance_norm_coeffs needs for x of `rows` (capacity) x `channels`: 2 per channel
    and block of rows. One scratch tensor can serve every instance_norm_coeffs of a graph (dispatches run in
    order) when it is sized for the largest."""
    return 2 * channels * -(-rows // _IN_ROWS_PER_BLOCK)


async def instance_norm_coeffs(g: Graph, x: Tensor, length: Tensor, out: Tensor, *, channels: int, eps: float = 1e-5,
                               style: Tensor | None = None, style_offset: int = 0, scratch: Tensor | None = None):
    """Kokoro's AdaIN1d folded into a per-channel scale and shift (shaders/instance_norm_coeffs.wgsl; two
    dispatches: per-block partial sums, then one workgroup per channel combining them):

        out[c]            = rstd_c * (1 + gamma_c)              rstd_c = 1 / sqrt(var_c + eps)
        out[channels + c] = beta_c - mean_c * out[c]

    so AdaIN1d(x)[t, c] = x[t, c] * out[c] + out[channels + c]. mean_c and the biased var_c are over the real rows
    t < length.n_tokens of x: f32 [T_cap, channels] (time-major; T_cap = x's size / channels); rows at or past
    the length are ignored. length: the Step uniform (shaders/common.wgsl) whose n_tokens is x's real length.
    gamma_c = style[style_offset + c], beta_c = style[style_offset + channels + c]: style holds the AdaIN's fc
    output (fc(s) = [gamma | beta]); without style gamma = beta = 0 (a plain InstanceNorm1d). out: f32
    [2 * channels]. Kokoro's InstanceNorm1d(affine=True) has no weight or bias to apply: its checkpoint holds none
    (KModel loads it with strict=False, leaving the identity; the v1.0 ONNX export has no such initializers).

    Accurate for long sequences with a mean far from zero (30 s of speech: 150,000 rows): values are shifted by a
    typical value of their channel (the median of its first, middle and last real rows), statistics are taken
    per block of 32 rows around the block's mean and combined per channel with Chan et al.'s formula
    (tests/kernels/test_kokoro_norms.py bounds the error). scratch: f32 of instance_norm_scratch_size(T_cap,
    channels) values or more, reusable across calls (and graphs run one after another); None: a new one is made
    at recording."""
    rows = _rows(x, channels)
    if _count(out) < 2 * channels:
        raise ValueError(f"instance_norm_coeffs: output of shape {out.shape} holds fewer than 2 x {channels} values")
    if style is not None and _count(style) < style_offset + 2 * channels:
        raise ValueError(f"instance_norm_coeffs: style of shape {style.shape} holds fewer than "
                         f"{style_offset} + 2 x {channels} values")
    blocks = -(-rows // _IN_ROWS_PER_BLOCK)
    need = instance_norm_scratch_size(rows, channels)
    if scratch is None:
        scratch = g.device.tensor((need,), "float32", "instance_norm partials")
    elif _count(scratch) < need:
        raise ValueError(f"instance_norm_coeffs: scratch of shape {scratch.shape} holds fewer than {need} values")
    consts = dict(C=channels, ROWS_CAP=rows, R=_IN_ROWS_PER_BLOCK, NB=blocks, WG=WG, WG_F=_IN_FINISH_WG,
                  EPS=float(eps), HAS_STYLE=style is not None, STYLE_OFFSET=style_offset)
    limit = g.device.limits["max-compute-workgroups-per-dimension"]
    if channels > limit:
        raise ValueError(f"instance_norm_coeffs: {channels} channels, more workgroups than the device allows")
    k1 = await g.device.kernel("instance_norm_coeffs", entry="partials", **consts)
    g.add(k1, [x, length, scratch], _grid(-(-blocks * channels // WG), min(limit, 32768)))
    k2 = await g.device.kernel("instance_norm_coeffs", entry="finish", **consts)
    g.add(k2, [x, length, scratch, style if style is not None else x, out], channels)


async def affine_act(g: Graph, x: Tensor, coeffs: Tensor, out: Tensor, length: Tensor, *, channels: int,
                     act: str | None = None, slope: float = 0.0, alpha: Tensor | None = None):
    """out[t, c] = act(x[t, c] * coeffs[c] + coeffs[channels + c]) for t < length.n_tokens, 0 for the rows after,
    up to out's capacity (shaders/affine_act.wgsl, one dispatch). With coeffs from instance_norm_coeffs this is
    AdaIN1d (then act), for where the normalised tensor is needed on its own (Kokoro's AdaINResBlock1: Snake1d of
    AdaIN1d(x)).

    x, out: f32 [T_cap, channels] (time-major; T_cap = out's size / channels, x holding at least as many rows);
    out may be x (in place). coeffs: f32 [2 * channels]. length: the Step uniform whose n_tokens is x's real
    length. act: None; "leaky" (u if u >= 0 else slope * u); "snake" (u + sin(alpha[c] u)^2 / alpha[c], Kokoro's
    Snake1d, alpha f32 [channels] = torch's alpha parameter [1, channels, 1]; alpha must not be 0)."""
    rows = _rows(out, channels)
    if _count(x) < rows * channels:
        raise ValueError(f"affine_act: input of shape {x.shape} holds fewer rows than the output {out.shape}")
    if _count(coeffs) < 2 * channels:
        raise ValueError(f"affine_act: coeffs of shape {coeffs.shape} hold fewer than 2 x {channels} values")
    codes = {None: 0, "leaky": 1, "snake": 2}
    if act not in codes:
        raise ValueError(f"affine_act: act {act!r} (None, 'leaky' or 'snake')")
    if (act == "snake") != (alpha is not None):
        raise ValueError("affine_act: alpha goes with act='snake', and only with it")
    if alpha is not None and _count(alpha) < channels:
        raise ValueError(f"affine_act: alpha of shape {alpha.shape} holds fewer than {channels} values")
    total = rows * channels
    in_place = _same_buffer(x, out)
    k = await g.device.kernel("affine_act", libs=("snake_lib",), entry="inplace" if in_place else "main",
                              C=channels, ROWS=rows, TOTAL=total, ACT=codes[act], SLOPE=float(slope), WG=WG)
    a = alpha if alpha is not None else coeffs
    g.add(k, [x, coeffs, a, length] if in_place else [x, coeffs, a, length, out], _grid(-(-total // WG), 32768))
