"""Normalisation ops (shaders/rms_norm.wgsl)."""

from __future__ import annotations

from ..gpu import Graph, Tensor

from ._util import WG, rows as _rows


async def rms_norm(g: Graph, x: Tensor, w: Tensor | None, out: Tensor, *, n: int, eps: float, add_one: bool = False,
                   accumulate: bool = False, scale: Tensor | None = None):
    """out = x * rsqrt(mean(x^2) + eps) * w over rows of `n` (w None: no weight; add_one: (1 + w)).
    accumulate: out += that instead (post-norm fused with the residual add). scale (1-element tensor): the
    result is multiplied by scale[0], e.g. out = (out + that) * layer_output_scale (Gemma 4)."""
    rows = _rows(x, n)
    limit = g.device.limits["max-compute-workgroups-per-dimension"]
    grid = (rows, 1) if rows <= limit else (limit, -(-rows // limit))
    # One workgroup per row; short rows (per-head norms of 64 or fewer) take one lane per element.
    k = await g.device.kernel("rms_norm", N=n, EPS=eps, HAS_WEIGHT=w is not None, ADD_ONE=add_one,
                              ACCUMULATE=accumulate, HAS_SCALE=scale is not None, WG=64 if n <= 64 else WG,
                              GRID_X=grid[0] if grid[1] > 1 else 0, ROWS=rows if grid[1] > 1 else 0)
    g.add(k, [x, w if w is not None else x, out, scale if scale is not None else x], grid)
