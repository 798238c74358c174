"""Row selection (shaders/select_row.wgsl)."""

from __future__ import annotations

from ..gpu import Graph, Tensor

from ._util import WG


async def select_row(g: Graph, x: Tensor, step: Tensor, out: Tensor, *, n: int):
    """out[0] = x[step.n_tokens - 1] for rows of n: the last real token of a run (a prefill chunk)."""
    k = await g.device.kernel("select_row", N=n, WG=WG)
    g.add(k, [x, step, out], -(-n // WG))
