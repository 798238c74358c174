"""Small helpers shared by the op modules."""

from ..gpu import Tensor

WG = 256  # default workgroup size: a multiple of every GPU's SIMD width, within WebGPU's 256 minimum limit


def rows(t: Tensor, n: int) -> int:
    """How many rows of `n` elements tensor `t` holds."""
    total = 1
    for d in t.shape:
        total *= d
    if total % n:
        raise ValueError(f"{t.label or 'tensor'} of shape {t.shape} is not a multiple of rows of {n}")
    return total // n
