"""float64 numpy references of Kokoro-82M's ops (the `kokoro` package's torch modules), one section per op.
Layouts are time-major as on the GPU: a sequence of T rows of C channels is [T, C]."""

import numpy as np


# ---- LSTM (ops.lstm, shaders/lstm.wgsl) -----------------------------------------------------------------------
# torch.nn.LSTM(bidirectional=True), one layer, batch 1, h0 = c0 = 0, gate order i, f, g, o. The input
# projection x W_ih^T + b_ih + b_hh is done before (x_proj); these functions run the recurrence.


def lstm_sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, np.float64)))  # = 1 / (1 + exp(-z)), no overflow


def lstm_direction(x_proj, w_hh, h_feed=None):
    """One direction over the rows of x_proj [L, 4H] in the order it runs them (the backward direction gets its
    rows reversed), w_hh [4H, H] (torch's weight_hh_l0 or weight_hh_l0_reverse). Returns a dict of [L, ...]
    arrays: a [L, 4H] the pre-activations, i, f, g, o [L, H] the gates, c_prev, c [L, H] the cell before and
    after the step, h_prev, h [L, H] the hidden state before and after the step.

    h_feed [L, H] (teacher forcing): when given, step s takes h_prev = h_feed[s - 1] (zero at s = 0) instead of
    its own h of the step before; the cell c still runs its own recurrence from those gates. Fed the hidden
    states a kernel produced, every step is then one exact LSTM step from the kernel's previous state, so the
    kernel's error can be bounded step by step (tests/kernels/test_lstm.py)."""
    x_proj = np.asarray(x_proj, np.float64)
    w_hh = np.asarray(w_hh, np.float64)
    n, hidden = x_proj.shape[0], w_hh.shape[1]
    rec = {k: np.zeros((n, 4 * hidden if k == "a" else hidden)) for k in ("a", "i", "f", "g", "o", "c_prev", "c", "h_prev", "h")}
    h = np.zeros(hidden)
    c = np.zeros(hidden)
    for s in range(n):
        if h_feed is not None:
            h = np.asarray(h_feed[s - 1], np.float64) if s > 0 else np.zeros(hidden)
        a = x_proj[s] + w_hh @ h
        i, f, g, o = (a[q * hidden : (q + 1) * hidden] for q in range(4))
        i, f, g, o = lstm_sigmoid(i), lstm_sigmoid(f), np.tanh(g), lstm_sigmoid(o)
        rec["c_prev"][s], rec["h_prev"][s] = c, h
        c = f * c + i * g
        h = o * np.tanh(c)
        for k, v in (("a", a), ("i", i), ("f", f), ("g", g), ("o", o), ("c", c), ("h", h)):
            rec[k][s] = v
    return rec


def lstm_bidirectional(x_proj, w_hh, length):
    """torch.nn.LSTM(bidirectional=True) over the first `length` rows, from the input projection.

    x_proj [T, 8H]: row t = x_t [W_ih_fwd; W_ih_bwd]^T + (b_ih + b_hh) of each direction; columns q H .. (q + 1) H
    of the forward half (0 .. 4H) and of the backward half (4H .. 8H) are gate q = i, f, g, o.
    w_hh [2, 4H, H]: weight_hh_l0, weight_hh_l0_reverse.
    Returns [T, 2H]: row t < length = [forward h_t, backward h_t], the backward direction run from length - 1 down
    to 0 (torch on an unpadded sequence of that length, or packed with that length); rows >= length are 0."""
    x_proj = np.asarray(x_proj, np.float64)
    hidden = np.shape(w_hh)[2]
    n = min(int(length), x_proj.shape[0])
    out = np.zeros((x_proj.shape[0], 2 * hidden))
    out[:n, :hidden] = lstm_direction(x_proj[:n, : 4 * hidden], w_hh[0])["h"]
    out[:n, hidden:] = lstm_direction(x_proj[:n, 4 * hidden :][::-1], w_hh[1])["h"][::-1]
    return out


# ---- end of LSTM -----------------------------------------------------------------------------------------------


# ---- Normalisations and small ops (ops.layer_norm, instance_norm_coeffs, affine_act, gelu, durations, ------------
# gather_rows, broadcast_row; shaders/layer_norm.wgsl, instance_norm_coeffs.wgsl, affine_act.wgsl, gelu.wgsl,
# durations.wgsl, gather_rows.wgsl, broadcast_row.wgsl). Checked against the kokoro package's torch modules while
# writing (F.layer_norm, AdaLayerNorm, TextEncoder's LayerNorm + LeakyReLU, AdaIN1d, the Snake1d line of
# AdaINResBlock1, KModel's duration lines and its one-hot alignment matmuls); the tests pin the conventions by hand.


def layer_norm(x, *, eps, weight=None, bias=None, style=None, style_offset=0, act=None, slope=0.0):
    """torch.nn.functional.layer_norm over the last axis of x [rows, n] (biased variance), then (optional)
    * weight + bias, then AdaLayerNorm's (1 + gamma) y + beta with gamma = style[style_offset : style_offset + n]
    and beta the next n, then act "leaky" (y if y >= 0 else slope * y)."""
    x = np.asarray(x, np.float64)
    n = x.shape[-1]
    mean = x.mean(-1, keepdims=True)
    y = (x - mean) / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + eps)
    if weight is not None:
        y = y * np.asarray(weight, np.float64)
    if bias is not None:
        y = y + np.asarray(bias, np.float64)
    if style is not None:
        s = np.asarray(style, np.float64)
        y = (1.0 + s[style_offset : style_offset + n]) * y + s[style_offset + n : style_offset + 2 * n]
    if act == "leaky":
        y = np.where(y >= 0, y, float(slope) * y)
    elif act is not None:
        raise ValueError(f"act {act!r}")
    return y


def instance_norm_coeffs(x, length, *, eps=1e-5, style=None, style_offset=0):
    """AdaIN1d(x) = x * scale + shift per channel, [scale | shift] (2C), over the real rows x[:length] of x [T, C]:
    InstanceNorm1d without affine (biased variance over time), gamma = style[style_offset + c], beta =
    style[style_offset + C + c] (0 without style): scale = (1 + gamma) / sqrt(var + eps), shift = beta - mean scale.
    A length of 0 gives mean 0, var 0."""
    x = np.asarray(x, np.float64)
    c = x.shape[1]
    real = x[: int(length)]
    mean = real.mean(0) if len(real) else np.zeros(c)
    var = ((real - mean) ** 2).mean(0) if len(real) else np.zeros(c)
    gamma = beta = np.zeros(c)
    if style is not None:
        s = np.asarray(style, np.float64)
        gamma, beta = s[style_offset : style_offset + c], s[style_offset + c : style_offset + 2 * c]
    scale = (1.0 + gamma) / np.sqrt(var + eps)
    return np.concatenate([scale, beta - mean * scale])


def snake(u, alpha):
    """Kokoro's Snake1d (istftnet.AdaINResBlock1): u + (1 / alpha) sin(alpha u)^2, alpha per channel (last axis)."""
    u = np.asarray(u, np.float64)
    a = np.asarray(alpha, np.float64)
    return u + np.sin(a * u) ** 2 / a


def affine_act(x, coeffs, length, *, act=None, slope=0.0, alpha=None, rows=None):
    """[rows, C]: act(x[t] * coeffs[:C] + coeffs[C:]) for t < length, 0 after (rows default: x's)."""
    x = np.asarray(x, np.float64)
    c = x.shape[1]
    rows = x.shape[0] if rows is None else rows
    n = min(int(length), rows)
    k = np.asarray(coeffs, np.float64)
    u = x[:n] * k[:c] + k[c : 2 * c]
    if act == "leaky":
        u = np.where(u >= 0, u, float(slope) * u)
    elif act == "snake":
        u = snake(u, np.asarray(alpha, np.float64)[:c])
    elif act is not None:
        raise ValueError(f"act {act!r}")
    out = np.zeros((rows, c))
    out[:n] = u
    return out


def duration_sums(logits, speed):
    """sum_j sigmoid(logits[t, j]) / speed per row: what KModel.forward_with_tokens rounds."""
    z = np.asarray(logits, np.float64)
    return (0.5 * (1.0 + np.tanh(0.5 * z))).sum(-1) / float(speed)


def durations(logits, speed, length, rows=None):
    """KModel's pred_dur: round(duration_sums) with ties to even (torch.round, numpy's round), at least 1, for
    the first `length` rows; 0 for the rows after, up to `rows` (default: logits' rows). uint32."""
    logits = np.asarray(logits, np.float64)
    rows = logits.shape[0] if rows is None else rows
    n = min(int(length), rows)
    out = np.zeros(rows, np.uint32)
    out[:n] = np.maximum(1.0, np.round(duration_sums(logits[:n], speed)))
    return out


def alignment_index(durations):
    """The frame -> token map: torch.repeat_interleave(arange(T), durations), uint32 [sum(durations)]."""
    d = np.asarray(durations).astype(np.intp)  # np.repeat wants the platform's index type (32 bits in Pyodide)
    return np.repeat(np.arange(len(d)), d).astype(np.uint32)


def gather_rows(table, index, length, *, n, out, table_stride=None, table_offset=0, out_stride=None, out_offset=0):
    """The output buffer after ops.gather_rows, float64: out (the buffer before, [rows, out_stride] or flat) with
    columns [out_offset, out_offset + n) of row f = table row min(index[f], last row), columns [table_offset,
    table_offset + n), for f < length, and 0 for the rows after; rows = len(index)."""
    table_stride = n if table_stride is None else table_stride
    out_stride = n if out_stride is None else out_stride
    t = np.asarray(table, np.float64).reshape(-1)
    table_rows = (t.size - table_offset - n) // table_stride + 1
    buf = np.array(out, np.float64).reshape(-1)
    rows = len(index)
    for f in range(rows):
        dst = buf[f * out_stride + out_offset : f * out_stride + out_offset + n]
        if f < length:
            r = min(int(index[f]), table_rows - 1)
            dst[:] = t[r * table_stride + table_offset : r * table_stride + table_offset + n]
        else:
            dst[:] = 0.0
    return buf


def broadcast_row(vec, out, *, n, rows, out_stride, out_offset, vec_offset=0):
    """The output buffer (flat) after ops.broadcast_row: vec[vec_offset : vec_offset + n] in columns [out_offset,
    out_offset + n) of the first `rows` rows of stride out_stride."""
    buf = np.array(out, np.float64).reshape(-1)
    v = np.asarray(vec, np.float64).reshape(-1)[vec_offset : vec_offset + n]
    for r in range(rows):
        buf[r * out_stride + out_offset : r * out_stride + out_offset + n] = v
    return buf


# ---- end of normalisations and small ops ----------------------------------------------------------------------
