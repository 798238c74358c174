"""Convolutions of Gemma 4's audio tower (shaders/conv2d_ln_relu.wgsl, depthwise_conv1d.wgsl)."""

from __future__ import annotations

from ..gpu import Graph, Tensor

from ._util import WG, rows as _rows
from .nn import _count, _grid


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
