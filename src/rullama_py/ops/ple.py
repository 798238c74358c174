"""Gemma 4 per-layer embeddings (shaders/ple_gate.wgsl, or the matrix-vector kernel's gate epilogue)."""

from __future__ import annotations

from ..gpu import Graph, Tensor

from ._util import WG


async def ple_gate(g: Graph, gate: Tensor, ple: Tensor, out: Tensor, *, layer: int, n_layers: int, dim: int):
    """out[t] = gelu_tanh(gate[t]) * ple[t, layer]: gate [T, dim], ple [T, n_layers * dim], out [T, dim]."""
    tokens = gate.shape[0]
    k = await g.device.kernel("ple_gate", D=dim, LAYER=layer, N_LAYERS=n_layers, MAXT=tokens, WG=WG)
    g.add(k, [gate, ple, out], -(-(tokens * dim) // WG))


async def ple_input(g: Graph, w_gate: Tensor, h: Tensor | None, ple: Tensor, out: Tensor, *, n_tokens: int,
                    layer: int, n_layers: int, dim: int, scratch: Tensor | None, step: Tensor | None = None,
                    prologue=None) -> None:
    """out[t] = gelu_tanh(W_gate h[t]) * ple[t, layer], the per-layer input gated by the stream (gemma4.md 1.2):
    w_gate [dim, d], h [T, d], ple [T, n_layers * dim], out [T, dim]. One token: one matrix-vector dispatch with
    the gate as its epilogue; more: the product into scratch [T, dim], then ple_gate. step as in ops.matmul.
    prologue (one token, h None): the stream formed in the product's prologue (ops.matmul.StreamNorm)."""
    from .matmul import matmul, matvec_gelu_gate

    if prologue is not None or (n_tokens == 1 and w_gate.shape[1] % 8 == 0):
        await matvec_gelu_gate(g, w_gate, h, ple, out, gate_offset=layer * dim, prologue=prologue)
        return
    await matmul(g, w_gate, h, scratch, n_tokens=n_tokens, step=step)
    await ple_gate(g, scratch, ple, out, layer=layer, n_layers=n_layers, dim=dim)
