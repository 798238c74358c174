"""What Gemma 4's vision and audio towers share: weights uploaded from their GGUF (a model file or an mmproj),
"clippable" linears, one recorded run per input capacity split into per-layer graphs, and an encode loop
that can report progress and stop between layers.

A clippable linear (transformers' Gemma4ClippableLinear) clamps its input to [input_min, input_max],
multiplies, and clamps the product to [output_min, output_max], with four scalars per linear that llama.cpp
stores as `<linear>.input_min` ... tensors (Ollama's blobs too; Ollama also packs the vision ones into
`v.clamp_data`). Bounds that are infinite or +-FLT_MAX mean "no clamp" and cost no dispatch.
"""

from __future__ import annotations

import struct

import numpy as np

from .. import ops
from ..gguf_file import GGUFFile
from ..gpu import Device, Graph, Tensor
from ..ops.matmul import QUANT_TYPES

CLAMP_KEYS = ("input_min", "input_max", "output_min", "output_max")
_NO_BOUND = 3.0e38  # FLT_MAX and infinity both mean "no clamp"


class TowerLoadError(RuntimeError):
    """A tower's tensors are missing, of an unsupported type or shape, or do not fit the text model."""


class Cancelled(Exception):
    """An encode was stopped between layers (Engine.cancel())."""


def check_tensors(gf: GGUFFile, names, what: str) -> None:
    """Every tensor in `names` exists and has a type the kernels read."""
    missing = [n for n in names if n not in gf]
    if missing:
        raise TowerLoadError(f"{gf.source.name}: the {what} lacks tensors {', '.join(missing[:6])}"
                             + (" ..." if len(missing) > 6 else ""))
    for n in names:
        info = gf.info(n)
        if info.type_name not in QUANT_TYPES:
            raise TowerLoadError(f"{gf.source.name}: tensor {n} has type {info.type_name.upper()}, which rullama-py "
                                 f"does not support (supported: {', '.join(t.upper() for t in QUANT_TYPES)})")


def step_bytes(n_tokens: int) -> bytes:
    """A Step uniform (shaders/common.wgsl) for a tower run over n_tokens rows from position 0."""
    return struct.pack("<8I", 0, n_tokens, n_tokens, 0, 0, 0, 0, 0)


class Tower:
    """Base of GemmaVision and GemmaAudio: `self.w` holds the uploaded weights by GGUF name, `self.clamps`
    the bounds of each clippable linear by its weight's name, `self._runs` the recorded runs by capacity."""

    what = "tower"

    def __init__(self, device: Device, gf: GGUFFile, text_d_model: int):
        self.device = device
        self.gguf = gf
        self.text_d_model = text_d_model
        self.w: dict[str, Tensor] = {}
        self.clamps: dict[str, Tensor] = {}
        self._runs: dict = {}
        self._extra: list[Tensor] = []  # other buffers to free with the tower

    # -- loading -------------------------------------------------------------------------------------------
    async def upload(self, names, progress=None, matrix_shape=None) -> None:
        """Upload tensors by name: 1-D F32 as plain arrays, the rest as (rows, row length) matrices kept in
        their GGUF type. `matrix_shape(name, info)` may give another (rows, cols) view of a tensor."""
        gf, dev = self.gguf, self.device
        names = list(names)
        total = sum(gf.info(n).nbytes for n in names)
        done = 0
        for name in names:
            info = gf.info(name)
            raw = await gf.tensor_bytes(name)
            shape = matrix_shape(name, info) if matrix_shape else None
            if shape is None and info.type_name == "f32" and len(info.shape) == 1:
                self.w[name] = dev.upload(np.frombuffer(raw, np.float32), label=name)
            else:
                rows, cols = shape or (info.n_rows, info.shape[-1])
                self.w[name] = dev.upload_rows(raw, rows, info.nbytes // rows, (rows, cols), info.type_name, name)
            del raw
            done += info.nbytes
            if progress is not None:
                progress(done, total, name)

    async def load_clamps(self, weights, packed=None) -> None:
        """Bounds for each clippable linear (weight names ending in .weight): the per-linear scalars, else
        `packed[name]` (4 values), else none."""
        for wname in weights:
            vals = await self.clamp_values(wname[: -len(".weight")], (packed or {}).get(wname))
            if vals is not None:
                self.clamps[wname] = self.device.upload(vals, label=wname + ".clamp")

    async def clamp_values(self, prefix: str, packed) -> np.ndarray | None:
        gf = self.gguf
        keys = [f"{prefix}.{s}" for s in CLAMP_KEYS]
        if all(k in gf for k in keys):
            vals = [float((await gf.tensor(k)).reshape(-1)[0]) for k in keys]
        elif packed is not None and len(packed) == 4:
            vals = [float(v) for v in packed]
        else:
            return None
        if vals[0] <= -_NO_BOUND and vals[1] >= _NO_BOUND and vals[2] <= -_NO_BOUND and vals[3] >= _NO_BOUND:
            return None
        if vals[0] > vals[1] or vals[2] > vals[3]:
            raise TowerLoadError(f"{gf.source.name}: {prefix} has clamp bounds {vals} with min above max")
        return np.array(vals, np.float32)

    # -- recording -----------------------------------------------------------------------------------------
    async def linear(self, g: Graph, name: str, x: Tensor, out: Tensor, scratch: Tensor, n_tokens: int,
                     accumulate: bool = False) -> None:
        """out = clip(W x) for the weight `name` (its clamps, if any): clamp the input into `scratch`,
        multiply, clamp the product in place."""
        bounds = self.clamps.get(name)
        if bounds is not None:
            await ops.clamp(g, x, bounds, scratch.view(x.shape), pair=0)
            x = scratch.view(x.shape)
        await ops.matmul(g, self.w[name], x, out, n_tokens=n_tokens, accumulate=accumulate and bounds is None)
        if bounds is not None:
            if accumulate:
                raise ValueError(f"{name}: a clamped product cannot accumulate into its output")
            await ops.clamp(g, out, bounds, pair=1)

    # -- running -------------------------------------------------------------------------------------------
    async def run_graphs(self, graphs, *, n_layers: int, on_layer=None, cancelled=None) -> None:
        """Submit a run's graphs (prologue, one per layer, epilogue). With `on_layer(done, total)` or
        `cancelled()`, each layer waits for the GPU, reports, and the loop stops with Cancelled when asked;
        without, everything goes in one submit."""
        dev = self.device
        if on_layer is None and cancelled is None:
            dev.submit(graphs)
            return
        dev.submit(graphs[0])
        for i, g in enumerate(graphs[1:-1]):
            if cancelled is not None and cancelled():
                raise Cancelled(f"{self.what} encoding was cancelled")
            dev.submit(g)
            await dev.sync()
            if on_layer is not None:
                on_layer(i + 1, n_layers)
        if cancelled is not None and cancelled():
            raise Cancelled(f"{self.what} encoding was cancelled")
        dev.submit(graphs[-1])

    def run_tensors(self, run) -> list:
        return []

    def release(self) -> None:
        """Free the tower's GPU memory (weights and recorded runs). The object is unusable afterwards."""
        seen = set()
        tensors = [*self.w.values(), *self.clamps.values(), *self._extra]
        for run in self._runs.values():
            tensors += self.run_tensors(run)
        for t in tensors:
            for buf, _, _ in t.parts:
                if id(buf) not in seen:
                    seen.add(id(buf))
                    buf.destroy()
        self.w.clear()
        self.clamps.clear()
        self._extra.clear()
        self._runs.clear()
