"""Convolutions of Gemma 4's audio tower (shaders/conv2d_ln_relu.wgsl, depthwise_conv1d.wgsl)."""

from __future__ import annotations

from ..gpu import Graph, Tensor

from ._util import WG, rows as _rows
from .nn import _count, _grid, _same


_CONV_WG = 64  # threads (output positions) per workgroup of conv2d_ln_relu


def conv2d_out_len(n: int) -> int:
    """Output length of a 3-wide, stride-2, padding-1 convolution over n: (n - 1) // 2 + 1 (0 for n = 0)."""
    return (n + 1) // 2


async def conv2d_ln_relu(g: Graph, x: Tensor, w: Tensor, ln_w: Tensor, out: Tensor, step: Tensor, *, f_in: int,
                         c_in: int, c_out: int, eps: float, t_in_halvings: int = 0):
    """One stage of the audio tower's subsampler (transformers' Gemma4AudioSubSampleConvProjectionLayer):
    Conv2d 3x3, stride 2, padding 1, no bias, then LayerNorm over the output channels (weight, no bias, eps)
    and ReLU. One dispatch over every output row of `out`.

    Channels-last: x f32 [in_rows, f_in, c_in] (the first stage: the log-mel features [frames, 128], c_in = 1);
    out f32 [out_rows, f_out, c_out], f_out = (f_in - 1) // 2 + 1. Flattened, out is [out_rows, f_out * c_out]
    with c fastest: the input of the linear that follows (transformers permutes to [B, T, F, C] and reshapes).
    w: the GGUF tensor a.conv1d.N.weight, ne [3, 3, c_in, c_out] = numpy (c_out, c_in, 3, 3) = torch's Conv2d
    weight (out, in, kernel over time, kernel over frequency); ln_w f32 [c_out] (a.conv1d.N.norm.weight).
    Real sizes (gemma4 E2B/E4B): stage 1 f_in 128, c_in 1, c_out 128; stage 2 f_in 64, c_in 128, c_out 32,
    then 32 * 32 = 1024 features per token. (transformers sizes that linear as channels[0] // 4 * channels[1],
    which equals f_out * c_out only because channels[0] = 128 = the mel bins: tiny configs keep it at 128.)

    The time length is read at run time from `step` (the Step uniform, shaders/common.wgsl): the graph is
    recorded once for a capacity of frames, and T_in = step.n_tokens (the real mel frames of this run) rounded
    up to half `t_in_halvings` times, at most in_rows. So with one Step holding the frame count, the first stage
    takes t_in_halvings=0 and the second t_in_halvings=1 (its T_in is the first stage's T_out). Input rows at
    or past T_in are the zero padding (as transformers' mask makes them); output rows from T_out =
    (T_in - 1) // 2 + 1 to out_rows are written as zeros (transformers computes values there and masks them
    later; here they are simply zero, so whatever reads the whole capacity sees finite values)."""
    if f_in < 1 or c_in < 1 or c_out < 1 or t_in_halvings < 0:
        raise ValueError(f"conv2d_ln_relu: f_in={f_in}, c_in={c_in}, c_out={c_out}, t_in_halvings={t_in_halvings}")
    f_out = conv2d_out_len(f_in)
    in_rows, out_rows = _rows(x, f_in * c_in), _rows(out, f_out * c_out)
    if _count(w) < 9 * c_in * c_out:
        raise ValueError(f"conv weight of shape {w.shape} holds fewer than 3 x 3 x {c_in} x {c_out} values")
    if _count(ln_w) < c_out:
        raise ValueError(f"LayerNorm weight of shape {ln_w.shape} holds fewer than {c_out} values")
    # One thread per output position, no workgroup barriers (their cost dominated on lavapipe and SwiftShader):
    # STORE keeps every channel's sum in registers (up to 128 channels, both Gemma 4 stages); else PATCH keeps
    # the 3 x 3 x c_in window (up to 4 input channels) and recomputes the sums in each of three passes.
    store = c_out <= 128
    patch = not store and c_in <= 4
    k = await g.device.kernel("conv2d_ln_relu", F_IN=f_in, C_IN=c_in, C_OUT=c_out, F_OUT=f_out, IN_ROWS=in_rows,
                              OUT_ROWS=out_rows, HALVINGS=t_in_halvings, EPS=float(eps), STORE=store, PATCH=patch,
                              NV=c_out if store else 1, NP=9 * c_in if patch else 1, WG=_CONV_WG)
    g.add(k, [x, w, ln_w, step, out], _grid(out_rows * f_out, _CONV_WG))


async def depthwise_conv1d(g: Graph, x: Tensor, w: Tensor, out: Tensor, *, channels: int, kernel: int):
    """Causal depthwise convolution over time (transformers' Gemma4AudioCausalConv1d, groups = channels, no bias):
    out[t, c] = sum_j w[c, j] * x[t - (kernel - 1) + j, c], rows of x before 0 being zero.

    x, out: f32 [rows, channels], distinct tensors; the row count is the tensors' capacity (causal, so rows past
    the real length never feed real rows). w: the GGUF tensor conv_dw, ne [kernel, channels] = numpy
    (channels, kernel) = torch's weight [channels, 1, kernel]. Gemma 4: kernel 5. One dispatch."""
    if kernel < 1:
        raise ValueError(f"depthwise_conv1d: kernel {kernel}")
    if _rows(x, channels) != _rows(out, channels):
        raise ValueError(f"depthwise_conv1d: input {x.shape} and output {out.shape} differ in size")
    total = _count(out)
    if _count(w) < channels * kernel:
        raise ValueError(f"depthwise weight of shape {w.shape} holds fewer than {channels} x {kernel} values")
    k = await g.device.kernel("depthwise_conv1d", C=channels, K=kernel, TOTAL=total, WG=WG)
    g.add(k, [x, w, out], _grid(total, WG))


# ---- Kokoro's 1-D convolutions (shaders/conv1d_tiled.wgsl, conv1d_direct.wgsl, conv_transpose1d.wgsl, with the
# input transform of conv1d_input.wgsl). Time-major f32: a sequence of T rows of C channels is [T_cap, C]; the
# real input length is the Step uniform's n_tokens, read at run time, so one recorded graph serves every length.

_CONV_WG_MEMORY = 16384  # bytes of workgroup memory the tiled kernel may use: WebGPU's guaranteed minimum
_CONV_MIN_TILED_C_OUT = 16  # fewer output channels leave most of a 64-channel tile idle: one thread per value

# (RPT, CPT): rows and channels per lane forced for every tiled conv, or None; "direct" forces the one-thread-
# per-output kernels wherever they apply. For tools/bench_conv1d.py and the tests only.
CONV1D_TILE_OVERRIDE: tuple | str | None = None


def _conv_tile(device, c_in: int, c_out: int, taps: int, tap_rows: int, rows: int, phases: int = 1
               ) -> tuple[int, int, int] | None:
    """(RPT, CPT, CK) of the tiled kernel, or None when it does not apply (few output channels, or the weights of
    one 4-channel chunk for every tap do not fit): `taps` taps per output row, `tap_rows` window rows between
    neighbouring taps (the dilation), `rows` tile rows to cover (per phase), `phases` dispatches in z.

    A lane owns RPT rows x CPT channels of a 16 RPT x 16 CPT tile. 8 x 4 (128 rows x 64 channels) by default:
    per 4-input-channel step a lane makes 12 vec4 loads for 128 fmas (4 x 4: 8 for 64), and on lavapipe it ran
    the generator's 128-channel k7 conv 1.3 x faster than 4 x 4 and 3.4 x faster than 1 x 4 (the one-thread-per-
    output kernel: 13 x slower). RPT is halved while the tiles would be mostly past the rows or fewer than 128
    workgroups (a large GPU has over 100 multiprocessors; the decoder's 1024 channels x 200 rows are 32 tiles
    of 128 x 64). The generator at 5 s keeps 8 x 4: 376 workgroups for 128 channels x 24,000 rows, 128 for 256
    x 4000. Unmeasured on large GPUs: tools/bench_conv1d.py --sweep times every tile shape. 8 x 8 blocks do not
    fit Kokoro's kernels of 7 and 11 taps. CK, the input channels per step, is the largest multiple of 4 (at
    most 32) whose window and weights fit in 16 KiB, (16 RPT + tap_rows (taps - 1) + taps 16 CPT) CK 4 bytes:
    more channels per step means fewer barriers."""
    override = CONV1D_TILE_OVERRIDE
    if override == "direct" or (override is None and c_out < _CONV_MIN_TILED_C_OUT):
        return None
    if override is None:
        rpt, cpt = 8, 4
        while rpt > 1 and (16 * rpt > 2 * rows or -(-c_out // (16 * cpt)) * -(-rows // (16 * rpt)) * phases < 128):
            rpt //= 2
    else:
        rpt, cpt = override
    limit = min(_CONV_WG_MEMORY, device.limits.get("max-compute-workgroup-storage-size", _CONV_WG_MEMORY))
    floats = 16 * rpt + tap_rows * (taps - 1) + taps * 16 * cpt  # per input channel of a step
    ck = min(32, -(-c_in // 4) * 4, (limit // (4 * floats)) // 4 * 4)
    if ck < 4:
        return None
    return rpt, cpt, ck


def _conv_bindings(x, w, bias, in_affine, alpha, length, out) -> list:
    # An absent bias, affine or alpha binds w in its place (the kernel never reads it; read-only bindings may
    # share a buffer), so every variant has the same seven bindings.
    return [x, w, w if bias is None else bias, w if in_affine is None else in_affine, w if alpha is None else alpha,
            length, out]


def _conv_check(x, w, bias, out, in_affine, alpha, *, c_in, c_out, w_count, in_act, in_stride, in_offset,
                out_stride, out_offset, what) -> tuple[int, int]:
    """Validate the common arguments; (input rows, output rows) of the buffers' capacities."""
    if c_in < 1 or c_out < 1:
        raise ValueError(f"{what}: c_in={c_in}, c_out={c_out}")
    if in_offset < 0 or in_offset + c_in > in_stride or out_offset < 0 or out_offset + c_out > out_stride:
        raise ValueError(f"{what}: columns [{in_offset}, +{c_in}) of rows of {in_stride} in, [{out_offset}, "
                         f"+{c_out}) of rows of {out_stride} out")
    if _count(x) % in_stride or _count(out) % out_stride:
        raise ValueError(f"{what}: input {x.shape} / output {out.shape} are not whole rows of {in_stride} / "
                         f"{out_stride}")
    if _count(w) != w_count:
        raise ValueError(f"{what}: weight of shape {w.shape} does not hold {w_count} values")
    if bias is not None and _count(bias) < c_out:
        raise ValueError(f"{what}: bias of shape {bias.shape} holds fewer than {c_out} values")
    if in_affine is not None and _count(in_affine) < 2 * c_in:
        raise ValueError(f"{what}: in_affine of shape {in_affine.shape} holds fewer than 2 x {c_in} values")
    if in_act not in (None, "leaky", "snake"):
        raise ValueError(f"{what}: in_act {in_act!r} (None, 'leaky' or 'snake')")
    if in_act == "snake" and (alpha is None or _count(alpha) < c_in):
        raise ValueError(f"{what}: snake needs alpha of {c_in} values")
    for name, t in (("input", x), ("weight", w), ("bias", bias), ("in_affine", in_affine), ("alpha", alpha)):
        if t is not None and _same(t, out):
            raise ValueError(f"{what}: the {name} and the output are one buffer (WebGPU forbids binding a buffer "
                             "twice when one binding is writable)")
    return _count(x) // in_stride, _count(out) // out_stride


def _input_consts(in_affine, in_act, slope, c_in) -> dict:
    # SLOPE only matters to LeakyReLU: a fixed value otherwise, so the other variants share pipelines.
    return dict(C_IN=c_in, AFFINE=in_affine is not None, LEAKY=in_act == "leaky", SNAKE=in_act == "snake",
                SLOPE=float(slope) if in_act == "leaky" else 0.0)


async def conv1d(g: Graph, x: Tensor, w: Tensor, bias: Tensor | None, out: Tensor, length: Tensor, *, c_in: int,
                 c_out: int, kernel: int, stride: int = 1, dilation: int = 1, padding: int = 0, upsample: int = 1,
                 in_affine: Tensor | None = None, in_act: str | None = None, slope: float = 0.0,
                 alpha: Tensor | None = None, accumulate: bool = False, out_scale: float = 1.0,
                 in_stride: int | None = None, in_offset: int = 0, out_stride: int | None = None,
                 out_offset: int = 0):
    """torch's Conv1d over time with Kokoro's neighbours folded in; one dispatch.

    x: f32 [in_rows, in_stride] (in_stride defaults to c_in), the conv reading columns [in_offset, in_offset +
    c_in) of rows 0 .. len - 1, len = length.n_tokens (`length` is the Step uniform, shaders/common.wgsl;
    rows at or past len are absent: zero padding). upsample U: the input is seen nearest-upsampled (seen row r
    = row r // U, length len U; Kokoro's shortcut conv1x1 of an upsampled input).
    Input transform, on every real input value (padding stays zero): u = x; in_affine (f32 [2 c_in]): u = u *
    in_affine[c] + in_affine[c_in + c] (instance norm + AdaIN folded into a scale and shift by another op);
    in_act "leaky": u if u >= 0 else slope u; "snake": u + sin(alpha[c] u)^2 / alpha[c] (alpha f32 [c_in]).
    w: f32 (c_out, c_in, kernel), torch's layout (weight norm folded); bias: f32 [c_out] or None.
    out: f32 [out_rows, out_stride] (out_stride defaults to c_out), written at columns [out_offset, out_offset +
    c_out): for t < out_len = (len U + 2 padding - dilation (kernel - 1) - 1) // stride + 1,
        out[t, o] = out_scale ((out[t, o] if accumulate) + bias[o] + sum_{k, i} w[o, i, k] u[t stride +
                    k dilation - padding, i]),
    and 0 in rows out_len .. out_rows. accumulate reads `out` first (x = x + conv, (res + shortcut) / sqrt 2);
    out must not share a buffer with any input.

    Stride 1 with 16 or more output channels runs the tiled implicit-GEMM kernel (conv1d_tiled.wgsl; see
    _conv_tile); strided convs and fewer output channels run one thread per output value (conv1d_direct.wgsl)."""
    in_stride = c_in if in_stride is None else in_stride
    out_stride = c_out if out_stride is None else out_stride
    if kernel < 1 or stride < 1 or dilation < 1 or padding < 0 or upsample < 1:
        raise ValueError(f"conv1d: kernel={kernel}, stride={stride}, dilation={dilation}, padding={padding}, "
                         f"upsample={upsample}")
    in_rows, out_rows = _conv_check(x, w, bias, out, in_affine, alpha, c_in=c_in, c_out=c_out,
                                    w_count=c_out * c_in * kernel, in_act=in_act, in_stride=in_stride,
                                    in_offset=in_offset, out_stride=out_stride, out_offset=out_offset, what="conv1d")
    consts = dict(_input_consts(in_affine, in_act, slope, c_in), C_OUT=c_out, K=kernel, D=dilation, PAD=padding,
                  UP=upsample, IN_ROWS=in_rows, IN_STRIDE=in_stride, IN_OFFSET=in_offset, OUT_ROWS=out_rows,
                  OUT_STRIDE=out_stride, OUT_OFFSET=out_offset, HAS_BIAS=bias is not None, ACC=bool(accumulate),
                  OUT_SCALE=float(out_scale))
    bindings = _conv_bindings(x, w, bias, in_affine, alpha, length, out)
    tile = _conv_tile(g.device, c_in, c_out, kernel, dilation, out_rows) if stride == 1 else None
    if tile is not None:
        rpt, cpt, ck = tile
        k = await g.device.kernel("conv1d_tiled", libs=("conv1d_input",), **consts, S=1, OUT_PAD=0, REFLECT=False,
                                  TRANSPOSED=False, J=kernel, RPT=rpt, CPT=cpt, CK=ck)
        g.add(k, bindings, (-(-c_out // (16 * cpt)), -(-out_rows // (16 * rpt)), 1))
    else:
        k = await g.device.kernel("conv1d_direct", libs=("conv1d_input",), **consts, S=stride, WG=WG)
        g.add(k, bindings, _grid(out_rows * c_out, WG))


async def conv_transpose1d(g: Graph, x: Tensor, w: Tensor, bias: Tensor | None, out: Tensor, length: Tensor, *,
                           c_in: int, c_out: int, kernel: int, stride: int, padding: int = 0,
                           output_padding: int = 0, groups: int = 1, in_affine: Tensor | None = None,
                           in_act: str | None = None, slope: float = 0.0, reflect_pad_left: int = 0,
                           out_stride: int | None = None, out_offset: int = 0):
    """torch's ConvTranspose1d over time, optionally followed by ReflectionPad1d((1, 0)); one dispatch.

    x: f32 [in_rows, c_in], rows 0 .. len - 1 real, len = length.n_tokens (the Step uniform), transformed as in
    conv1d (in_affine, in_act "leaky" with slope) before the convolution. w: f32 (c_in, c_out // groups, kernel),
    torch's layout; groups is 1 or c_in = c_out (depthwise: Kokoro's upsampling "pool", kernel 3, stride 2,
    padding 1, output_padding 1). bias: f32 [c_out] or None. The unpadded output row q < L = (len - 1) stride -
    2 padding + (kernel - 1) + output_padding + 1 is
        y[q, o] = bias[o] + sum_{m stride + k = q + padding} sum_i u[m, i] w[i, o, k]     (groups 1)
        y[q, c] = bias[c] + sum_{m stride + k = q + padding} u[m, c] w[c, 0, k]           (depthwise)
    reflect_pad_left 1 (the generator's last upsampling): out row 0 = y row 1, row r = y row r - 1, out_len =
    L + 1 (y rows past L count as 0). out: f32 [out_rows, out_stride] (default c_out), written at columns
    [out_offset, out_offset + c_out): out_len rows of values, then 0 up to out_rows.

    groups 1 with 16 or more output channels runs the tiled kernel by output phase (conv1d_tiled.wgsl with
    TRANSPOSED: each of the `stride` phases is a stride-1 conv of ceil(kernel / stride) taps); the depthwise
    conv and the rest run one thread per output value (conv_transpose1d.wgsl)."""
    out_stride = c_out if out_stride is None else out_stride
    depthwise = groups != 1
    if depthwise and not groups == c_in == c_out:
        raise ValueError(f"conv_transpose1d: groups {groups}: only 1 or c_in = c_out (depthwise)")
    if kernel < 1 or stride < 1 or padding < 0 or output_padding < 0 or reflect_pad_left not in (0, 1):
        raise ValueError(f"conv_transpose1d: kernel={kernel}, stride={stride}, padding={padding}, "
                         f"output_padding={output_padding}, reflect_pad_left={reflect_pad_left}")
    if in_act == "snake":
        raise ValueError("conv_transpose1d: in_act 'snake' is not supported (None or 'leaky')")
    in_rows, out_rows = _conv_check(x, w, bias, out, in_affine, None, c_in=c_in, c_out=c_out,
                                    w_count=c_in * (c_out // groups) * kernel, in_act=in_act, in_stride=c_in,
                                    in_offset=0, out_stride=out_stride, out_offset=out_offset,
                                    what="conv_transpose1d")
    consts = dict(_input_consts(in_affine, in_act, slope, c_in), C_OUT=c_out, K=kernel, S=stride, PAD=padding,
                  OUT_PAD=output_padding, REFLECT=bool(reflect_pad_left), IN_ROWS=in_rows, OUT_ROWS=out_rows,
                  OUT_STRIDE=out_stride, OUT_OFFSET=out_offset, HAS_BIAS=bias is not None)
    bindings = _conv_bindings(x, w, bias, in_affine, None, length, out)
    taps = -(-kernel // stride)
    # Tile rows are input-rate rows m of one phase; enough of them that m stride + phase - padding covers every
    # unpadded output row below out_rows - reflect_pad_left, and row 1 (whose lane also writes row 0 when padded).
    last = max(out_rows - 1 - reflect_pad_left, reflect_pad_left)
    m_rows = (last + padding) // stride + 1
    tile = None if depthwise else _conv_tile(g.device, c_in, c_out, taps, 1, m_rows, stride)
    if tile is not None:
        rpt, cpt, ck = tile
        k = await g.device.kernel("conv1d_tiled", libs=("conv1d_input",), **consts, D=1, UP=1, IN_STRIDE=c_in,
                                  IN_OFFSET=0, ACC=False, OUT_SCALE=1.0, TRANSPOSED=True, J=taps, RPT=rpt, CPT=cpt,
                                  CK=ck)
        g.add(k, bindings, (-(-c_out // (16 * cpt)), -(-m_rows // (16 * rpt)), stride))
    else:
        k = await g.device.kernel("conv_transpose1d", libs=("conv1d_input",), **consts, DEPTHWISE=depthwise, WG=WG)
        g.add(k, bindings, _grid(out_rows * c_out, WG))
