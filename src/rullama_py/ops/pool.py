"""Spatial pooling of a vision tower's patch grid (shaders/avg_pool_2d.wgsl)."""

from __future__ import annotations

from ..gpu import Graph, Tensor

from ._util import WG, rows as _rows
from .nn import _grid


async def avg_pool_2d(g: Graph, x: Tensor, out: Tensor, grid: Tensor, *, d: int, k: int, scale: float = 1.0):
    """K x K average pooling of patches (Gemma 4's vision pooler, K = 3, scale = sqrt(d)).

    x: f32 [n_patches, d], row-major patch order (patch = py * pw + px); grid: u32 [2] = (pw, ph), written by
    the host for each image, both multiples of k; out: f32 [(ph / k) * (pw / k), d] with
    out[(py // k) * (pw / k) + px // k] = scale * the mean of that k x k block. Record once for a capacity:
    the dispatch covers every row of `out`, and rows past the image's (ph / k) * (pw / k) are not written.
    One dispatch."""
    in_rows, out_rows = _rows(x, d), _rows(out, d)
    kern = await g.device.kernel("avg_pool_2d", D=d, K=k, IN_ROWS=in_rows, OUT_ROWS=out_rows,
                                 MUL=float(scale) / (k * k), WG=WG)
    g.add(kern, [x, grid, out], _grid(out_rows * d, WG))
