"""Elementwise ops of the transformer block (shaders/gelu_mul.wgsl, add.wgsl, scale.wgsl, softcap.wgsl).

Each is one dispatch over every element of its (row-major f32) tensors; row counts come from the tensors'
shapes, so a graph recorded for a prefill chunk processes all of its rows whatever step.n_tokens is (cheap
next to the matmuls, and it keeps these kernels free of the Step binding)."""

from __future__ import annotations

from ..gpu import Graph, Tensor

from ._util import WG


def _count(t: Tensor) -> int:
    n = 1
    for d in t.shape:
        n *= d
    return n


def _grid(threads: int, wg: int, limit: int = 32768) -> tuple[int, int]:
    """Workgroups (x, y) covering `threads` threads; kernels index (wid.y * nwg.x + wid.x) * WG + lid, so big
    arrays stay within the per-dimension limit of 65535."""
    n = max(1, -(-threads // wg))
    if n <= limit:
        return (n, 1)
    return (limit, -(-n // limit))


def _same(a: Tensor, b: Tensor) -> bool:
    return a is b or (len(a.parts) == 1 and len(b.parts) == 1 and a.buffer is b.buffer)


def _total(t: Tensor, n: int, what: str) -> int:
    total = _count(t)
    if total % n:
        raise ValueError(f"{what} of shape {t.shape} is not a multiple of rows of {n}")
    return total


async def gelu_mul(g: Graph, gate: Tensor, up: Tensor | None, out: Tensor, *, n: int, fused: bool = False):
    """out[r, i] = gelu_tanh(gate[r, i]) * up[r, i] over rows of n. fused=True: `gate` is [rows, 2n] with rows
    [gate | up] (one fused gate+up matmul) and `up` is ignored (pass None)."""
    total = _total(out, n, "gelu_mul output")
    if fused:
        if _count(gate) != 2 * total:
            raise ValueError(f"fused gelu_mul input {gate.shape} must hold [rows, 2 * {n}]")
        k = await g.device.kernel("gelu_mul", entry="fused", N=n, TOTAL=total, WG=WG)
        g.add(k, [gate, out], _grid(total, WG))
    else:
        k = await g.device.kernel("gelu_mul", entry="main", N=n, TOTAL=total, WG=WG)
        g.add(k, [gate, up, out], _grid(total, WG))


async def add(g: Graph, a: Tensor, b: Tensor, out: Tensor, *, n: int):
    """out = a + b over rows of n; out may be a or b (in place)."""
    total = _total(out, n, "add output")
    if _same(out, b):
        a, b = b, a
    if _same(out, a):
        k = await g.device.kernel("add", entry="inplace", TOTAL=total, WG=WG)
        g.add(k, [out, b], _grid(total, WG))
    else:
        k = await g.device.kernel("add", entry="main", TOTAL=total, WG=WG)
        g.add(k, [a, b, out], _grid(total, WG))


async def scale_inplace(g: Graph, x: Tensor, s):
    """x *= s, s a float or a 1-element f32 Tensor (read on the GPU at run time)."""
    total = _count(x)
    if isinstance(s, Tensor):
        k = await g.device.kernel("scale", entry="main", TOTAL=total, S=0.0, WG=WG)
        g.add(k, [x, s], _grid(total, WG))
    else:
        k = await g.device.kernel("scale", entry="by_const", TOTAL=total, S=float(s), WG=WG)
        g.add(k, [x], _grid(total, WG))


async def softcap(g: Graph, x: Tensor, *, cap: float, n: int | None = None):
    """x = cap * tanh(x / cap) in place (n, the row length, is only checked)."""
    total = _total(x, n, "softcap input") if n else _count(x)
    k = await g.device.kernel("softcap", TOTAL=total, CAP=float(cap), WG=WG)
    g.add(k, [x], _grid(total, WG))
