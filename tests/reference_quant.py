"""numpy references of the weight ops (rullama_py.ops.matmul), and random GGUF weights to feed them.

Dequantisation is gguf-py's own (gguf.quants.dequantize), never our kernels' logic; products are float64."""

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, quants

TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q5_0", "q4_k", "q5_k", "q6_k")

# Byte offsets of the f16 fields of each block, and of the 12 packed 6-bit K-quant scales.
_F16_FIELDS = {"q8_0": (0,), "q4_0": (0,), "q5_0": (0,), "q4_k": (0, 2), "q5_k": (0, 2), "q6_k": (208,)}


def gtype(qt: str) -> GGMLQuantizationType:
    return GGMLQuantizationType[qt.upper()]


def row_bytes(qt: str, cols: int) -> int:
    blk, size = GGML_QUANT_SIZES[gtype(qt)]
    assert cols % blk == 0
    return cols // blk * size


def random_weight(qt: str, rows: int, cols: int, rng) -> np.ndarray:
    """Raw GGUF bytes [rows, row_bytes] (uint8) of a random weight of type `qt`.

    Quantised types are random blocks rather than quantised data: every bit of every quant, high-bit plane
    and packed scale is random, so each decode path sees all bit patterns; only the f16 block scales are set
    to small finite values (random bits would include inf/NaN), with both signs for d."""
    if qt in ("f32", "f16"):
        return np.ascontiguousarray(rng.standard_normal((rows, cols)).astype(qt.replace("f", "float"))).view(np.uint8)
    if qt == "bf16":
        return quants.quantize(rng.standard_normal((rows, cols)).astype(np.float32), gtype(qt)).view(np.uint8)
    blk, size = GGML_QUANT_SIZES[gtype(qt)]
    n_blocks = rows * cols // blk
    b = rng.integers(0, 256, (n_blocks, size), dtype=np.uint8)
    for i, off in enumerate(_F16_FIELDS[qt]):
        # d in +-[0.5, 1.5] * 2^-7 keeps |w| around 1 whatever the scales; dmin (K types) is positive.
        mag = rng.uniform(0.5, 1.5, n_blocks) * (2.0**-7 if qt != "q6_k" else 2.0**-11)
        sign = rng.choice([-1.0, 1.0], n_blocks) if i == 0 else 1.0
        b[:, off : off + 2] = (mag * sign).astype(np.float16).view(np.uint8).reshape(n_blocks, 2)
    return b.reshape(rows, cols // blk * size)


def dequantize(raw: np.ndarray, qt: str, cols: int) -> np.ndarray:
    """The weight matrix [rows, cols] as float64, decoded by gguf-py."""
    raw = np.ascontiguousarray(raw).view(np.uint8).reshape(-1, row_bytes(qt, cols))
    if qt == "f32":
        w = raw.view(np.float32)
    elif qt == "f16":
        w = raw.view(np.float16)
    else:
        w = quants.dequantize(raw, gtype(qt))
    return w.reshape(-1, cols).astype(np.float64)


def matmul(w: np.ndarray, x: np.ndarray, out0=None, scale: float = 1.0) -> np.ndarray:
    """out[t, r] = scale * sum_c w[r, c] x[t, c] (+ out0), in float64."""
    y = scale * (np.asarray(x, np.float64) @ np.asarray(w, np.float64).T)
    return y if out0 is None else y + out0


def matmul_tolerance(w: np.ndarray, x: np.ndarray, out0=None, scale: float = 1.0) -> np.ndarray:
    """A bound on |kernel - reference| for each output of `matmul`.

    The kernel decodes each weight with at most 2 f32 roundings (d*scale, then the multiply-add: relative
    2u, u = 2^-24) and sums K products in f32 in some order; any summation order of K terms errs by at most
    (K - 1) u sum|terms|, and each product adds u. Summed: (K + 3) u * sum_c |w x|, plus u for the scale
    and the accumulated output. This worst case is rigorous; typical errors are ~sqrt(K) smaller."""
    u = 2.0**-24
    k = w.shape[1]
    bound = (k + 4) * u * abs(scale) * (np.abs(np.asarray(x, np.float64)) @ np.abs(np.asarray(w, np.float64)).T)
    if out0 is not None:
        bound = bound + 2 * u * np.abs(out0)
    return bound + 1e-30


def embed(table: np.ndarray, ids, scale: float = 1.0) -> np.ndarray:
    """out[t] = scale * table[ids[t]], float64."""
    return scale * np.asarray(table, np.float64)[np.asarray(ids, np.int64)]
