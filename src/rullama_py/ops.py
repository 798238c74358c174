"""Tensor ops: each records one kernel of shaders/ into a Graph. One op, one kernel, one numpy reference
(tests/reference.py). Ops are async only because compiling a pipeline is; recording is cheap and is done
once per graph, never per token.
"""

from __future__ import annotations

from .gpu import Graph, Tensor

WG = 256


def _rows(t: Tensor, n: int) -> int:
    total = 1
    for d in t.shape:
        total *= d
    if total % n:
        raise ValueError(f"{t.label or 'tensor'} of shape {t.shape} is not a multiple of rows of {n}")
    return total // n


async def rms_norm(g: Graph, x: Tensor, w: Tensor | None, out: Tensor, *, n: int, eps: float, add_one: bool = False):
    """out = x * rsqrt(mean(x^2) + eps) * w over rows of `n` (w None: no weight; add_one: (1 + w))."""
    k = await g.device.kernel("rms_norm", N=n, EPS=eps, HAS_WEIGHT=w is not None, ADD_ONE=add_one, WG=WG)
    g.add(k, [x, w if w is not None else x, out], _rows(x, n))
