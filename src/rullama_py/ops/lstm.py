"""Kokoro's bidirectional LSTMs (torch.nn.LSTM(bidirectional=True), one layer, hidden 256): the recurrence of
both directions in one dispatch (shaders/lstm.wgsl). The input projection is an ordinary matmul before it."""

from __future__ import annotations

import numpy as np

from ..gpu import Graph, Tensor

from ._util import rows as _rows
from .nn import _count

_MAX_WG = 256  # WebGPU's default limit on invocations per workgroup


def lstm_weights(w_hh_fwd, w_hh_bwd) -> np.ndarray:
    """The recurrent weights in the layout ops.lstm reads: f32 [2, H, H, 4] with
    out[d, k, j, q] = w_hh_d[q H + j, k], from torch's weight_hh_l0 (d = 0) and weight_hh_l0_reverse (d = 1), each
    [4H, H] with gate blocks i, f, g, o. A unit j's four gate weights for one k are one vec4, and for a fixed k
    neighbouring units are neighbouring vec4s (the kernel's threads, one per unit, then read adjacent memory)."""
    w = np.stack([np.asarray(w_hh_fwd, np.float32), np.asarray(w_hh_bwd, np.float32)])
    if w.ndim != 3 or w.shape[1] != 4 * w.shape[2]:
        raise ValueError(f"lstm_weights: expected two [4H, H] matrices, got {w.shape[1:]}")
    hidden = w.shape[2]
    return np.ascontiguousarray(w.reshape(2, 4, hidden, hidden).transpose(0, 3, 2, 1))


def lstm_workgroup(hidden: int) -> int:
    """Threads per direction: one per hidden unit, rounded up to a multiple of 32 (a SIMD width), at most 256
    (then each thread takes ceil(hidden / 256) units)."""
    return min(_MAX_WG, -(-hidden // 32) * 32)


async def lstm(g: Graph, xw: Tensor, w_hh: Tensor, out: Tensor, length: Tensor, *, hidden: int,
               out_stride: int | None = None, out_offset: int = 0):
    """The recurrence of a bidirectional single-layer LSTM (torch.nn.LSTM(bidirectional=True), h0 = c0 = 0), both
    directions in one dispatch (one workgroup each, looping over time inside the kernel).

    xw: f32 [T_cap, 8H] (H = hidden), the input projection done before: row t = x_t [W_ih_fwd; W_ih_bwd]^T plus
    b_ih + b_hh of each direction; columns q H .. (q + 1) H - 1 of the forward half (0 .. 4H - 1) and of the
    backward half (4H .. 8H - 1) are gate q in torch's order i, f, g, o.
    w_hh: f32 [2, H, H, 4], lstm_weights(weight_hh_l0, weight_hh_l0_reverse): w_hh[d, k, j, q] = W_hh_d[q H + j, k].
    length: the Step uniform (shaders/common.wgsl); L = min(n_tokens, T_cap) is the real length of xw.
    out: f32 [out_rows, out_stride] (out_stride defaults to 2H, out_rows >= T_cap): for t < L,
    out[t, out_offset + 0 .. H - 1] = forward h_t (t = 0 .. L - 1) and out[t, out_offset + H .. 2H - 1] = backward
    h_t, the backward direction run from t = L - 1 down to 0 (torch on the unpadded sequence of length L). Rows
    L .. out_rows - 1 of those 2H columns are written as 0.0; other columns of `out` are left as they are (the
    model writes the style vector next to the LSTM outputs). Rows of xw at or past L are never read.

    Per step each thread owns a hidden unit (ceil(H / 256) units past 256), computes its four gate sums over h
    (in workgroup memory) from W_hh read from global memory (1 MiB per direction at H = 256, L2-resident on a
    GPU) and keeps its cell in registers."""
    if hidden < 1:
        raise ValueError(f"lstm: hidden {hidden}")
    stride = 2 * hidden if out_stride is None else int(out_stride)
    if out_offset < 0 or out_offset + 2 * hidden > stride:
        raise ValueError(f"lstm: columns {out_offset} .. {out_offset + 2 * hidden} do not fit rows of {stride}")
    in_rows, out_rows = _rows(xw, 8 * hidden), _rows(out, stride)
    if out_rows < in_rows:
        raise ValueError(f"lstm: output {out.shape} holds fewer rows than the input's capacity {in_rows}")
    if _count(w_hh) != 8 * hidden * hidden:
        raise ValueError(f"lstm: w_hh of shape {w_hh.shape} is not [2, {hidden}, {hidden}, 4]")
    wg = lstm_workgroup(hidden)
    k = await g.device.kernel("lstm", libs=("sigmoid_lib",), H=hidden, WG=wg, UPT=-(-hidden // wg), IN_ROWS=in_rows,
                              OUT_ROWS=out_rows, STRIDE=stride, OFF=int(out_offset))
    g.add(k, [xw, w_hh, length, out], (2,))
