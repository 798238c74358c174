"""Gemma 4 per-layer embeddings (shaders/ple_gate.wgsl)."""

from __future__ import annotations

from ..gpu import Graph, Tensor

from ._util import WG


async def ple_gate(g: Graph, gate: Tensor, ple: Tensor, out: Tensor, *, layer: int, n_layers: int, dim: int):
    """out[t] = gelu_tanh(gate[t]) * ple[t, layer]: gate [T, dim], ple [T, n_layers * dim], out [T, dim]."""
    tokens = gate.shape[0]
    k = await g.device.kernel("ple_gate", D=dim, LAYER=layer, N_LAYERS=n_layers, MAXT=tokens, WG=WG)
    g.add(k, [gate, ple, out], -(-(tokens * dim) // WG))
