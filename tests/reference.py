"""numpy references of the ops in rullama_py.ops, one function per kernel. Written from the models' papers and
reference implementations (transformers, llama.cpp), never from our kernels' output."""

import numpy as np


def rms_norm(x, w=None, eps=1e-6, add_one=False):
    x = x.astype(np.float64)
    y = x / np.sqrt((x * x).mean(-1, keepdims=True) + eps)
    if w is not None:
        y = y * ((1.0 + w) if add_one else w)
    return y.astype(np.float32)
