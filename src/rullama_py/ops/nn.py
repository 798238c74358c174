"""Elementwise ops of the transformer block (shaders/gelu_mul.wgsl, add.wgsl, scale.wgsl, softcap.wgsl), the
vision tower's clamp.wgsl, standardize.wgsl, and the audio tower's glu.wgsl, silu.wgsl (both with
sigmoid_lib.wgsl) and bias_add.wgsl; Kokoro's gelu.wgsl (ALBERT) and durations.wgsl (the duration head, the
one op here that reads the Step length).

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


async def clamp(g: Graph, x: Tensor, limits: Tensor, out: Tensor | None = None, *, pair: int = 0):
    """out = min(max(x, limits[2 * pair]), limits[2 * pair + 1]) elementwise; in place when out is None.

    limits: f32 [4] read on the GPU at run time, (in_min, in_max, out_min, out_max) of a clippable linear (the
    Gemma 4 vision tower): pair 0 clamps its input, pair 1 its output, and one pipeline per shape serves every
    layer. A limit of +-inf or NaN means no limit on that side (values pass unchanged); FLT_MAX has the same
    effect on finite values."""
    if pair not in (0, 1):
        raise ValueError(f"pair {pair}: limits hold two (min, max) pairs")
    if _count(limits) < 4:
        raise ValueError(f"limits of shape {limits.shape} must hold 4 values")
    total = _count(x)
    if out is None or _same(out, x):
        k = await g.device.kernel("clamp", entry="inplace", TOTAL=total, PAIR=pair, WG=WG)
        g.add(k, [x, limits], _grid(total, WG))
    else:
        if _count(out) < total:
            raise ValueError(f"clamp output of shape {out.shape} is smaller than its input {x.shape}")
        k = await g.device.kernel("clamp", entry="main", TOTAL=total, PAIR=pair, WG=WG)
        g.add(k, [x, limits, out], _grid(total, WG))


async def standardize(g: Graph, x: Tensor, bias: Tensor, scale: Tensor, *, n: int):
    """x[r, c] = (x[r, c] - bias[c]) * scale[c] in place over rows of n; bias, scale f32 [n] (the Gemma 4 vision
    tower's v.std_bias and v.std_scale)."""
    total = _total(x, n, "standardize input")
    for t, what in ((bias, "bias"), (scale, "scale")):
        if _count(t) < n:
            raise ValueError(f"{what} of shape {t.shape} holds fewer than {n} values")
    k = await g.device.kernel("standardize", N=n, TOTAL=total, WG=WG)
    g.add(k, [x, bias, scale], _grid(total, WG))


async def glu(g: Graph, x: Tensor, out: Tensor, *, n: int):
    """out[r, i] = x[r, i] * sigmoid(x[r, n + i]) for x [rows, 2n], out [rows, n] (torch's glu(dim=-1): the first
    half times the sigmoid of the second; the audio tower's light conv). Finite for every finite input."""
    total = _total(out, n, "glu output")
    if _count(x) < 2 * total:
        raise ValueError(f"glu input {x.shape} must hold [rows, 2 * {n}] for an output of {out.shape}")
    k = await g.device.kernel("glu", libs=("sigmoid_lib",), N=n, TOTAL=total, WG=WG)
    g.add(k, [x, out], _grid(total, WG))


async def silu(g: Graph, x: Tensor, out: Tensor | None = None):
    """out = x * sigmoid(x) elementwise (the audio tower's activation); in place when out is None. Finite for
    every finite x, however large (silu(x) = x for large x, -0 or a tiny negative for very negative x)."""
    total = _count(x)
    if out is None or _same(out, x):
        k = await g.device.kernel("silu", libs=("sigmoid_lib",), entry="inplace", TOTAL=total, WG=WG)
        g.add(k, [x], _grid(total, WG))
    else:
        if _count(out) < total:
            raise ValueError(f"silu output of shape {out.shape} is smaller than its input {x.shape}")
        k = await g.device.kernel("silu", libs=("sigmoid_lib",), entry="main", TOTAL=total, WG=WG)
        g.add(k, [x, out], _grid(total, WG))


async def bias_add(g: Graph, x: Tensor, b: Tensor, *, n: int, b_offset: int = 0):
    """x[r, c] += b[b_offset + c] in place over rows of n; b f32 [b_offset + n or more] (the bias of a linear:
    the audio output projection; b_offset picks one bias out of a stacked vector, Kokoro's style terms)."""
    total = _total(x, n, "bias_add input")
    if _count(b) < b_offset + n:
        raise ValueError(f"bias of shape {b.shape} holds fewer than {b_offset} + {n} values")
    k = await g.device.kernel("bias_add", N=n, TOTAL=total, B_OFFSET=b_offset, WG=WG)
    g.add(k, [x, b], _grid(total, WG))


# ---- Kokoro: ALBERT's activation and the duration head -----------------------------------------------------------


async def gelu(g: Graph, x: Tensor, out: Tensor | None = None):
    """out = gelu_tanh(x) elementwise over every value of x (shaders/gelu.wgsl): transformers' gelu_new, ALBERT's
    activation, = torch's gelu(approximate="tanh"). In place when out is None or x."""
    total = _count(x)
    if out is None or _same(out, x):
        k = await g.device.kernel("gelu", entry="inplace", TOTAL=total, WG=WG)
        g.add(k, [x], _grid(total, WG))
    else:
        if _count(out) < total:
            raise ValueError(f"gelu output of shape {out.shape} is smaller than its input {x.shape}")
        k = await g.device.kernel("gelu", entry="main", TOTAL=total, WG=WG)
        g.add(k, [x, out], _grid(total, WG))


async def durations(g: Graph, logits: Tensor, speed: Tensor, out: Tensor, length: Tensor, *, bins: int = 50):
    """Kokoro's duration head after its Linear 512 -> bins (shaders/durations.wgsl, one dispatch):
    out[t] = max(1, round(sum_j sigmoid(logits[t, j]) / speed[0])) for t < length.n_tokens, 0 for the rows after,
    round taking ties to even (torch.round). logits: f32 [T_cap, bins]; speed: f32 [1], read at run time (1 is
    normal speed, 2 twice as fast); out: u32 [T_cap] (T_cap = out's size; logits holding at least T_cap rows);
    length: the Step uniform whose n_tokens is the token count."""
    rows = _count(out)
    if out.dtype != "uint32":
        raise ValueError(f"durations: output dtype {out.dtype}, expected uint32")
    if _count(logits) < rows * bins:
        raise ValueError(f"durations: logits of shape {logits.shape} hold fewer than {rows} rows of {bins}")
    if _count(speed) < 1:
        raise ValueError("durations: speed must hold one value")
    k = await g.device.kernel("durations", libs=("sigmoid_lib",), BINS=bins, ROWS=rows, WG=64)
    g.add(k, [logits, speed, length, out], _grid(rows, 64))
