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
