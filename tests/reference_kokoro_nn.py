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


# ---- Conv1d and ConvTranspose1d (ops.conv1d, ops.conv_transpose1d; shaders/conv1d_*.wgsl, conv_transpose1d.wgsl) --
# torch.nn.functional.conv1d / conv_transpose1d, batch 1, time-major, with what the ops fold in around them: an
# input transform (instance norm + AdaIN as a per-channel scale and shift, LeakyReLU or Snake1d), nearest
# upsampling of the input, an accumulated and scaled output, strided column windows of the input and output
# buffers, a real length below the capacity, and ReflectionPad1d((1, 0)) after the transposed conv.


def conv1d_input(x, *, in_affine=None, in_act=None, slope=0.0, alpha=None):
    """The input transform of the conv ops on real input rows x [n, C]: u = x * in_affine[c] + in_affine[C + c]
    when in_affine [2C] is given, then in_act "leaky" (u if u >= 0 else slope * u) or "snake"
    (u + sin(alpha[c] * u)^2 / alpha[c], Kokoro's Snake1d, alpha [C])."""
    u = np.asarray(x, np.float64)
    c = u.shape[1]
    if in_affine is not None:
        aff = np.asarray(in_affine, np.float64)
        u = u * aff[:c] + aff[c : 2 * c]
    if in_act == "leaky":
        u = np.where(u >= 0, u, float(slope) * u)
    elif in_act == "snake":
        a = np.asarray(alpha, np.float64)[:c]
        u = u + np.sin(a * u) ** 2 / a
    elif in_act is not None:
        raise ValueError(f"in_act {in_act!r}")
    return u


def _conv_input_rows(x, length, c_in, in_stride, in_offset):
    """Real rows of columns [in_offset, in_offset + c_in) of the buffer x (flat or [rows, in_stride])."""
    in_stride = c_in if in_stride is None else in_stride
    x = np.asarray(x, np.float64).reshape(-1, in_stride)
    n = min(int(length), x.shape[0])
    return x[:n, in_offset : in_offset + c_in]


def _conv_output(out, out_rows, out_stride, c_out):
    out_stride = c_out if out_stride is None else out_stride
    if out is None:
        return np.zeros((out_rows, out_stride))
    return np.array(out, np.float64).reshape(-1, out_stride)


def conv1d_out_len(length, *, kernel, stride=1, dilation=1, padding=0, upsample=1):
    """(length * upsample + 2 padding - dilation (kernel - 1) - 1) // stride + 1, or 0 when that is not positive."""
    span = int(length) * upsample + 2 * padding - dilation * (kernel - 1) - 1
    return span // stride + 1 if span >= 0 else 0


def conv1d_ref(x, w, bias, length, *, c_in, c_out, kernel, stride=1, dilation=1, padding=0, upsample=1,
               in_affine=None, in_act=None, slope=0.0, alpha=None, accumulate=False, out_scale=1.0,
               in_stride=None, in_offset=0, out=None, out_rows=None, out_stride=None, out_offset=0):
    """The output buffer [out_rows, out_stride] as ops.conv1d leaves it, float64.

    x: the input buffer, [in_rows, in_stride] (or flat), the op reading columns [in_offset, in_offset + c_in) of
    its first `length` rows (rows at or past `length` are absent, seen as zero padding). The input seen by the
    conv is those rows transformed (conv1d_input), each repeated `upsample` times (nearest upsampling), padded
    with `padding` zero rows on each side. w: (c_out, c_in, kernel), torch's Conv1d weight; bias [c_out] or None.
    out: the buffer before the op (for accumulate and for the columns the op does not write; zeros of
    [out_rows, out_stride] when None). For t < out_len (conv1d_out_len), o < c_out:
        out[t, out_offset + o] = out_scale * ((out[t, out_offset + o] if accumulate) + bias[o]
                                              + sum_{k, i} w[o, i, k] * seen[t * stride + k * dilation, i])
    and for out_len <= t < out_rows the same columns are 0."""
    u = conv1d_input(_conv_input_rows(x, length, c_in, in_stride, in_offset), in_affine=in_affine, in_act=in_act,
                     slope=slope, alpha=alpha)
    n = u.shape[0] * upsample
    seen = np.zeros((n + 2 * padding, c_in))
    seen[padding : padding + n] = np.repeat(u, upsample, axis=0)
    buf = _conv_output(out, out_rows, out_stride, c_out)
    n_out = min(conv1d_out_len(u.shape[0], kernel=kernel, stride=stride, dilation=dilation, padding=padding,
                               upsample=upsample), buf.shape[0])
    w = np.asarray(w, np.float64).reshape(c_out, c_in, kernel)
    y = np.zeros((n_out, c_out))
    for k in range(kernel):
        rows = seen[k * dilation : k * dilation + (n_out - 1) * stride + 1 : stride] if n_out else seen[:0]
        y += rows @ w[:, :, k].T
    if bias is not None:
        y += np.asarray(bias, np.float64)[:c_out]
    cols = slice(out_offset, out_offset + c_out)
    if accumulate:
        y += buf[:n_out, cols]
    buf[:n_out, cols] = out_scale * y
    buf[n_out:, cols] = 0.0
    return buf


def conv_transpose1d_out_len(length, *, kernel, stride, padding=0, output_padding=0, reflect_pad_left=0):
    """(length - 1) stride - 2 padding + (kernel - 1) + output_padding + 1 + reflect_pad_left; 0 for length 0
    (or when the transposed conv alone would have no rows)."""
    n = (int(length) - 1) * stride - 2 * padding + kernel - 1 + output_padding + 1 if length > 0 else 0
    return n + reflect_pad_left if n > 0 else 0


def conv_transpose1d_ref(x, w, bias, length, *, c_in, c_out, kernel, stride, padding=0, output_padding=0,
                         groups=1, in_affine=None, in_act=None, slope=0.0, reflect_pad_left=0, out=None,
                         out_rows=None, out_stride=None, out_offset=0):
    """The output buffer [out_rows, out_stride] as ops.conv_transpose1d leaves it, float64.

    x [in_rows, c_in] (or flat): its first `length` rows are the input, transformed as in conv1d_input (affine,
    "leaky"). w: torch's ConvTranspose1d weight (c_in, c_out // groups, kernel); groups is 1 or
    c_in = c_out (depthwise). torch's semantics: the unpadded output row q (q < L = (length - 1) stride -
    2 padding + kernel + output_padding) is
        y[q, o] = bias[o] + sum_{m, k: m stride + k = q + padding} sum_i u[m, i] w[i, o, k]     (groups 1)
        y[q, c] = bias[c] + sum_{m, k: m stride + k = q + padding} u[m, c] w[c, 0, k]           (depthwise)
    reflect_pad_left 1 (torch.nn.ReflectionPad1d((1, 0)) after it): out row 0 = y row 1, out row r = y row r - 1
    (y rows at or past L count as 0). Columns [out_offset, out_offset + c_out) of rows from the output length to
    out_rows are 0."""
    u = conv1d_input(_conv_input_rows(x, length, c_in, c_in, 0), in_affine=in_affine, in_act=in_act, slope=slope)
    n = u.shape[0]
    w = np.asarray(w, np.float64).reshape(c_in, c_out // groups, kernel)
    full = np.zeros(((n - 1) * stride + kernel + max(output_padding, 0) + 1 if n else 0, c_out))
    for m in range(n):
        for k in range(kernel):
            full[m * stride + k] += u[m] @ w[:, :, k] if groups == 1 else u[m] * w[:, 0, k]
    n_y = conv_transpose1d_out_len(n, kernel=kernel, stride=stride, padding=padding, output_padding=output_padding)
    y = np.zeros((n_y + 1, c_out))  # one spare zero row for the reflection of a 1-row y
    y[:n_y] = full[padding : padding + n_y]
    if bias is not None:
        y[:n_y] += np.asarray(bias, np.float64)[:c_out]
    if reflect_pad_left:
        y = np.concatenate([y[1:2], y])
    buf = _conv_output(out, out_rows, out_stride, c_out)
    n_out = min(conv_transpose1d_out_len(n, kernel=kernel, stride=stride, padding=padding,
                                         output_padding=output_padding, reflect_pad_left=reflect_pad_left),
                buf.shape[0])
    cols = slice(out_offset, out_offset + c_out)
    buf[:n_out, cols] = y[:n_out]
    buf[n_out:, cols] = 0.0
    return buf


# ---- end of Conv1d and ConvTranspose1d ------------------------------------------------------------------------


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
