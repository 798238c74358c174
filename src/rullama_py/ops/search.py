"""The voice trainer's gradient-free search on the GPU (shaders/style_perturb.wgsl): a candidate voice is the
best offset so far plus seeded Gaussian noise, written straight into the style inputs Kokoro reads, so a step
uploads nothing but a 16-byte uniform.

    params = search_params(device)                         # SearchParams uniform, rewritten per candidate
    device.write(params.buffer, search_params_bytes(seed, counter, slot, step))
    await style_perturb(g, params, base, best, scale, cand, style_dec, style_pros)
"""

from __future__ import annotations

import struct

import numpy as np

from ..gpu import UNIFORM, Device, Graph, Tensor
from .nn import _count
from .signal import _pcg_hash

SEARCH_PARAMS_BYTES = 16


def search_params_bytes(seed: int, counter: int, slot: int = 0, step: float = 0.0) -> bytes:
    """struct SearchParams { seed: u32, counter: u32, slot: u32, step: f32 }: the noise stream (seed) and draw
    (counter), the candidate's slot in a population, and the step size (0: the best itself)."""
    return struct.pack("<3If", int(seed) & 0xFFFFFFFF, int(counter) & 0xFFFFFFFF, int(slot), float(step))


def search_params(device: Device, label: str = "search_params") -> Tensor:
    t = device.tensor((SEARCH_PARAMS_BYTES // 4,), "uint32", label, usage=UNIFORM)
    device.write(t.buffer, search_params_bytes(0, 0))
    return t


def search_noise(seed: int, counter: int, dim: int = 256) -> np.ndarray:
    """The standard normals style_perturb draws for (seed, counter), f32 [dim], as the kernel computes them
    (counter-based: draw k = counter * dim + i; see the shader), here in float64 then rounded: the GPU's are within
    a few 1e-7 relative (its log and cosine are shaders/signal_lib.wgsl's)."""
    with np.errstate(over="ignore"):
        k = (np.uint32(int(counter) & 0xFFFFFFFF) * np.uint32(dim) + np.arange(dim, dtype=np.uint32)).astype(np.uint32)
        s = np.uint32(int(seed) & 0xFFFFFFFF)
        h1 = _pcg_hash(_pcg_hash(k ^ _pcg_hash(np.array([s], np.uint32))[0]) + s)
        h2 = _pcg_hash(h1)
    u1 = ((h1 >> np.uint32(8)).astype(np.float64) + 1.0) / 16777216.0
    u2 = (h2 >> np.uint32(8)).astype(np.float64) / 16777216.0
    return (np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)).astype(np.float32)


async def style_perturb(g: Graph, params: Tensor, base: Tensor, best: Tensor, scale: Tensor, cand: Tensor,
                        style_dec: Tensor, style_pros: Tensor):
    """cand[slot] = best + step * scale * search_noise(seed, counter); style = base + cand[slot], its first half to
    style_dec and its second to style_pros (Kokoro's decoder and prosody inputs). params: SearchParams uniform.

    base, best, scale: f32 [DIM] (the start voice's row, the best offset so far, the per-dimension step scale:
    0 where a dimension is not trained); cand: f32 [SLOTS, DIM]; style_dec, style_pros: f32 [DIM / 2]. One
    dispatch of DIM threads."""
    dim = _count(base)
    if dim % 2 or not 2 <= dim <= 256 or _count(best) != dim or _count(scale) != dim:
        raise ValueError(f"style_perturb: base {base.shape}, best {best.shape}, scale {scale.shape}: "
                         "one even length up to 256")
    slots = _count(cand) // dim
    if slots < 1 or _count(style_dec) < dim // 2 or _count(style_pros) < dim // 2:
        raise ValueError(f"style_perturb: cand {cand.shape}, style halves {style_dec.shape} {style_pros.shape}")
    if params.nbytes < SEARCH_PARAMS_BYTES:
        raise ValueError(f"style_perturb: params hold {params.nbytes} bytes, need {SEARCH_PARAMS_BYTES}")
    k = await g.device.kernel("style_perturb", libs=("signal_lib",), DIM=dim, SLOTS=slots)
    g.add(k, [params, base, best, scale, cand, style_dec, style_pros], 1)
