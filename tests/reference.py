"""numpy references of the ops in rullama_py.ops, one function per kernel. Written from the models' papers and
reference implementations (transformers, llama.cpp), never from our kernels' output."""

import numpy as np


def rms_norm(x, w=None, eps=1e-6, add_one=False):
    x = x.astype(np.float64)
    y = x / np.sqrt((x * x).mean(-1, keepdims=True) + eps)
    if w is not None:
        y = y * ((1.0 + w) if add_one else w)
    return y.astype(np.float32)


def stream_norm(s, d, wd, wx=None, scale=None, eps=1e-6):
    """ops.StreamNorm in float64: the new stream s' = (s + rms_norm(d) * wd) * scale and the product's input
    x = rms_norm(s') * wx (x = s' without wx)."""
    d = d.astype(np.float64)
    s_new = s.astype(np.float64) + d / np.sqrt((d * d).mean(-1, keepdims=True) + eps) * wd
    if scale is not None:
        s_new = s_new * float(scale)
    if wx is None:
        return s_new, s_new
    return s_new, s_new / np.sqrt((s_new * s_new).mean(-1, keepdims=True) + eps) * wx
