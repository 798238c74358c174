"""Gemma 4's vision tower on the GPU: a ViT that turns an image's 16 x 16 patches into soft tokens, rows of the
text model's embedding width that the engine splices into the prompt in place of the `<|image|>` tokens.

    tower = await GemmaVision.load(gguf_file, device, text_d_model=1536)   # Ollama blob or llama.cpp mmproj
    soft = await tower.encode(media.prepare_image(png_bytes, budget=280))  # f32 [n_soft, text_d_model]

The forward pass (gemma4.md section 3; transformers' Gemma4VisionModel + Gemma4MultimodalEmbedder):

    h = W_patch @ patch + pos_x[px] + pos_y[py]              # patches already hold 2 (pixel / 255) - 1
    per layer (sandwich norms, bidirectional attention over every patch, attention scale 1.0):
        x = RMSNorm(h; ln1)
        q, k = RMSNorm_head(clip(Wq x); q_norm), RMSNorm_head(clip(Wk x); k_norm);  v = RMSNorm_head(clip(Wv x))
        q, k = rope_2d(q, k; px, py, theta 100)
        h += RMSNorm(clip(Wo softmax(q k^T) v); attn_post_norm)
        h += RMSNorm(clip(W_down gelu_tanh(clip(W_gate x')) * clip(W_up x')); ffn_post_norm),  x' = RMSNorm(h; ln2)
    s = avg_pool_3x3(h) * sqrt(d)  [then (s - std_bias) * std_scale when the file has them]
    soft = W_proj RMSNorm_noweight(s)

clip(W x) is a "clippable linear": the input clamped to [input_min, input_max], the product clamped to
[output_min, output_max], with per-linear scalars from the file (llama.cpp: `<linear>.input_min` ... tensors;
Ollama also packs them all into `v.clamp_data`). Linears whose bounds are infinite get no clamp dispatch.

One recorded graph per patch capacity (a soft-token budget times 9) serves every image of that budget: the
patch count, the grid and the positions are written at run time (the Step uniform's n_tokens is the patch count,
so attention only reads real patches; rows past it compute garbage that nothing reads). The graph is split
per layer so that encode() can report progress and stop between layers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .. import ops
from ..config import VisionConfig
from ..gguf_file import GGUFFile
from ..gpu import UNIFORM, Device, Tensor
from .tower import Cancelled, Tower, TowerLoadError, check_tensors, step_bytes  # noqa: F401 (re-exported)

LINEARS = ("attn_q", "attn_k", "attn_v", "attn_out", "ffn_gate", "ffn_up", "ffn_down")  # v.clamp_data order
ROPE_THETA = 100.0
VisionLoadError = TowerLoadError


@dataclass
class TowerRun:
    """Buffers and per-layer graphs for images of up to `capacity` patches."""

    capacity: int
    step: Tensor  # Step uniform: pos 0, n_tokens = n_kv = patch count
    patches: Tensor  # f32 [cap, 3 p^2]
    pos_x: Tensor  # u32 [cap]: px, the x table's row
    pos_y: Tensor  # u32 [cap]: P + py, the y table's row (the table is (2P, d))
    positions: Tensor  # u32 [cap, 2]: (px, py) for rope_2d
    grid: Tensor  # u32 [2]: (pw, ph)
    out: Tensor  # f32 [cap / k^2, text_d]
    graphs: list  # prologue, one per layer, epilogue
    bufs: dict = field(default_factory=dict)

    def tensors(self) -> list:
        return [self.step, self.patches, self.pos_x, self.pos_y, self.positions, self.grid, self.out,
                *self.bufs.values()]


def tensor_names(c: VisionConfig) -> list[str]:
    """Every tensor the tower needs (clamp scalars and std_bias/std_scale are optional)."""
    names = ["v.patch_embd.weight", "v.position_embd.weight", "mm.input_projection.weight"]
    for l in range(c.n_layers):
        names += [f"v.blk.{l}.{s}.weight" for s in ("ln1", "attn_q_norm", "attn_k_norm", "attn_post_norm", "ln2",
                                                    "ffn_post_norm", *LINEARS)]
    return names


def vision_config_from(gf: GGUFFile) -> VisionConfig | None:
    """The vision tower's configuration from a model file (`<arch>.vision.*`) or an mmproj (`clip.vision.*`)."""
    from ..config import vision_config

    return vision_config(gf.metadata)


class GemmaVision(Tower):
    """A loaded vision tower. Create with `await GemmaVision.load(gguf_file, device, text_d_model=...)`."""

    what = "image"

    def __init__(self, cfg: VisionConfig, device: Device, gf: GGUFFile, text_d_model: int):
        super().__init__(device, gf, text_d_model)
        self.cfg = cfg
        self.head_dim = cfg.d_model // cfg.n_heads
        self.std: tuple | None = None

    # -- loading -------------------------------------------------------------------------------------------
    @classmethod
    async def load(cls, gf: GGUFFile, device: Device, *, text_d_model: int, progress=None) -> "GemmaVision":
        t = cls(cls.validate(gf, text_d_model), device, gf, text_d_model)
        c = t.cfg

        def matrix_shape(name, info):  # (d, 3, p, p) as a d x 3p^2 matrix: (channel, row, col) columns
            return (c.d_model, info.n_elements // c.d_model) if name == "v.patch_embd.weight" else None

        await t.upload(tensor_names(c), progress, matrix_shape)
        t.n_positions = gf.info("v.position_embd.weight").n_rows // 2
        packed = {}
        if "v.clamp_data" in gf:
            data = await gf.tensor("v.clamp_data")
            packed = {f"v.blk.{l}.{lin}.weight": data[4 * (7 * l + i):][:4]
                      for l in range(c.n_layers) for i, lin in enumerate(LINEARS)}
        weights = [f"v.blk.{l}.{lin}.weight" for l in range(c.n_layers) for lin in LINEARS]
        # The projector is a plain linear in transformers; llama.cpp clamps it only when its scalars exist.
        await t.load_clamps(weights + ["mm.input_projection.weight"], packed)
        if "v.std_bias" in gf and "v.std_scale" in gf:
            t.std = (device.upload((await gf.tensor("v.std_bias")).astype(np.float32), label="v.std_bias"),
                     device.upload((await gf.tensor("v.std_scale")).astype(np.float32), label="v.std_scale"))
            t._extra += list(t.std)
        return t

    @staticmethod
    def validate(gf: GGUFFile, text_d_model: int) -> VisionConfig:
        """The tower's configuration, after checking (from the header alone, so at model load) that every
        tensor is there, of a supported type and shape, and that the projection fits the text model."""
        c = vision_config_from(gf)
        name = gf.source.name
        if c is None:
            raise VisionLoadError(f"{name} has no vision tower")
        check_tensors(gf, tensor_names(c), "vision tower")
        hd = c.d_model // max(c.n_heads, 1)
        if c.n_heads < 1 or c.d_model % c.n_heads or hd % 8 or (hd // 8) & (hd // 8 - 1):
            raise VisionLoadError(f"{name}: vision head size {c.d_model}/{c.n_heads} is not supported "
                                  "(8 times a power of two)")
        proj = gf.info("mm.input_projection.weight")
        if proj.shape[-1] != c.d_model:
            raise VisionLoadError(f"{name}: the vision projection takes {proj.shape[-1]} inputs but the tower is "
                                  f"{c.d_model} wide")
        if proj.n_rows != text_d_model:
            raise VisionLoadError(f"{name}: the vision projector outputs width {proj.n_rows}, but the text model's "
                                  f"width is {text_d_model}: this mmproj belongs to another model")
        patch = gf.info("v.patch_embd.weight")
        if patch.n_elements != c.d_model * 3 * c.patch_size ** 2:
            raise VisionLoadError(f"{name}: v.patch_embd.weight has shape {patch.shape}; expected "
                                  f"{c.d_model} x 3 x {c.patch_size} x {c.patch_size}")
        return c

    # -- the forward pass ----------------------------------------------------------------------------------
    async def _record(self, cap: int) -> TowerRun:
        c, dev = self.cfg, self.device
        d, hd, nh, k = c.d_model, self.head_dim, c.n_heads, c.projector_scale_factor
        T = lambda *shape, name: dev.tensor(shape, "float32", f"vision.{name}[{cap}]")  # noqa: E731
        n_soft = cap // (k * k)
        run = TowerRun(
            capacity=cap,
            step=dev.tensor((8,), "uint32", "vision.step", usage=UNIFORM),
            patches=T(cap, 3 * c.patch_size ** 2, name="patches"),
            pos_x=dev.tensor((cap,), "uint32", f"vision.pos_x[{cap}]"),
            pos_y=dev.tensor((cap,), "uint32", f"vision.pos_y[{cap}]"),
            positions=dev.tensor((cap, 2), "uint32", f"vision.positions[{cap}]"),
            grid=dev.tensor((2,), "uint32", "vision.grid"),
            out=T(n_soft, self.text_d_model, name="out"),
            graphs=[],
        )
        b = run.bufs
        for name in ("h", "x", "xc", "q_lin", "q", "k_lin", "k", "v_lin", "v", "attn", "o"):
            b[name] = T(cap, d, name=name)
        b["gate"], b["up"], b["act"] = (T(cap, c.ffn_dim, name=n) for n in ("gate", "up", "act"))
        b["kc"], b["vc"] = ops.kv_cache(dev, n_kv_heads=nh, head_dim=hd, slots=cap, label=f"vision.kv[{cap}]")
        b["pooled"], b["pooled_n"] = T(n_soft, d, name="pooled"), T(n_soft, d, name="pooled_n")
        h, x, xc, o = b["h"], b["x"], b["xc"], b["o"]
        eps = c.norm_eps
        lin = self.linear

        # prologue: patch embedding and the learned 2-D position table
        g = dev.graph()
        await ops.matmul(g, self.w["v.patch_embd.weight"], run.patches, h, n_tokens=cap)
        for ids in (run.pos_x, run.pos_y):
            await ops.embed(g, self.w["v.position_embd.weight"], ids, h, n_tokens=cap, accumulate=True)
        run.graphs.append(g)

        for l in range(c.n_layers):
            p = f"v.blk.{l}."
            w = lambda name: self.w[p + name + ".weight"]  # noqa: E731
            g = dev.graph()
            await ops.rms_norm(g, h, w("ln1"), x, n=d, eps=eps)
            await lin(g, p + "attn_q.weight", x, b["q_lin"], xc, cap)
            await lin(g, p + "attn_k.weight", x, b["k_lin"], xc, cap)
            await lin(g, p + "attn_v.weight", x, b["v_lin"], xc, cap)
            await ops.rms_norm(g, b["q_lin"], w("attn_q_norm"), b["q"], n=hd, eps=eps)
            await ops.rms_norm(g, b["k_lin"], w("attn_k_norm"), b["k"], n=hd, eps=eps)
            await ops.rms_norm(g, b["v_lin"], None, b["v"], n=hd, eps=eps)
            await ops.rope_2d(g, b["q"], run.positions, n_heads=nh, head_dim=hd, base=ROPE_THETA)
            await ops.rope_2d(g, b["k"], run.positions, n_heads=nh, head_dim=hd, base=ROPE_THETA)
            await ops.kv_store(g, b["k"], b["v"], b["kc"], b["vc"], run.step, n_kv_heads=nh, head_dim=hd, max_ctx=cap)
            await ops.attention(g, b["q"], b["kc"], b["vc"], b["attn"], run.step, n_heads=nh, n_kv_heads=nh,
                                head_dim=hd, scale=1.0, window=0, max_ctx=cap, causal=False)
            await lin(g, p + "attn_out.weight", b["attn"], o, xc, cap)
            await ops.rms_norm(g, o, w("attn_post_norm"), h, n=d, eps=eps, accumulate=True)
            await ops.rms_norm(g, h, w("ln2"), x, n=d, eps=eps)
            await lin(g, p + "ffn_gate.weight", x, b["gate"], xc, cap)
            await lin(g, p + "ffn_up.weight", x, b["up"], xc, cap)
            await ops.gelu_mul(g, b["gate"], b["up"], b["act"], n=c.ffn_dim)
            await lin(g, p + "ffn_down.weight", b["act"], o, b["gate"], cap)
            await ops.rms_norm(g, o, w("ffn_post_norm"), h, n=d, eps=eps, accumulate=True)
            run.graphs.append(g)

        # epilogue: 3x3 average pooling, sqrt(d) scale, optional standardisation, weightless norm, projection
        g = dev.graph()
        await ops.avg_pool_2d(g, h, b["pooled"], run.grid, d=d, k=k, scale=math.sqrt(d))
        if self.std is not None:
            await ops.standardize(g, b["pooled"], self.std[0], self.std[1], n=d)
        await ops.rms_norm(g, b["pooled"], None, b["pooled_n"], n=d, eps=eps)
        await lin(g, "mm.input_projection.weight", b["pooled_n"], run.out, b["pooled"], n_soft)
        run.graphs.append(g)
        return run

    def run_tensors(self, run) -> list:
        return run.tensors()

    async def run_for(self, n_patches: int, budget: int | None = None) -> TowerRun:
        """The recorded run for images of `budget` soft tokens (default: the smallest standard budget that
        holds n_patches), recorded on first use."""
        k2 = self.cfg.projector_scale_factor ** 2
        if budget is None:
            from ..media import SOFT_TOKEN_BUDGETS

            budget = next((b for b in SOFT_TOKEN_BUDGETS if b * k2 >= n_patches), -(-n_patches // k2))
        cap = budget * k2
        if n_patches > cap:
            raise ValueError(f"{n_patches} patches do not fit a budget of {budget} soft tokens")
        run = self._runs.get(cap)
        if run is None:
            run = self._runs[cap] = await self._record(cap)
        return run

    async def encode(self, image, *, budget: int | None = None, on_layer=None, cancelled=None) -> Tensor:
        """Soft tokens of a media.PreparedImage: a view [n_soft, text_d_model] of the run's output buffer (valid
        until the next encode with the same budget: copy it to keep it). `on_layer(done, total)` is called
        after each layer; `cancelled()` is checked between layers and raises Cancelled. Without either, all
        layers go in one submit."""
        c, dev = self.cfg, self.device
        n = int(image.patches.shape[0])
        pw, ph = image.grid
        k = c.projector_scale_factor
        if pw % k or ph % k or pw * ph != n:
            raise ValueError(f"image grid {pw} x {ph} does not match {n} patches in blocks of {k}")
        if max(pw, ph) > self.n_positions:
            raise ValueError(f"image grid {pw} x {ph} exceeds the tower's {self.n_positions} positions per side")
        if image.patches.shape[1] != 3 * c.patch_size ** 2:
            raise ValueError(f"patches of {image.patches.shape[1]} values; this tower takes {3 * c.patch_size ** 2}")
        run = await self.run_for(n, budget)
        pos = np.asarray(image.positions, np.uint32)
        dev.write(run.patches.buffer, np.ascontiguousarray(image.patches, np.float32))
        dev.write(run.pos_x.buffer, pos[:, 0].copy())
        dev.write(run.pos_y.buffer, pos[:, 1] + np.uint32(self.n_positions))
        dev.write(run.positions.buffer, pos)
        dev.write(run.grid.buffer, np.array([pw, ph], np.uint32))
        dev.write(run.step.buffer, step_bytes(n))
        await self.run_graphs(run.graphs, n_layers=c.n_layers, on_layer=on_layer, cancelled=cancelled)
        return run.out.view((image.n_soft, self.text_d_model))
