"""Gemma 4's audio tower on the GPU: a USM-style Conformer that turns 16 kHz speech (log-mel features, 10 ms
frames) into soft tokens, one per 40 ms, spliced into the prompt in place of the `<|audio|>` tokens.

    tower = await GemmaAudio.load(gguf_file, device, text_d_model=1536)     # Ollama blob or llama.cpp mmproj
    soft = await tower.encode(media.prepare_audio(wav_bytes)[0])           # f32 [n_soft, text_d_model]

The forward pass (gemma4.md section 4; transformers' Gemma4AudioModel + Gemma4MultimodalEmbedder):

    x = relu(LayerNorm_c(conv3x3/2(features)))  twice  (channels 1 -> c0 -> c1, frequency 128 -> 64 -> 32)
    h = W_in flatten(x)                                  # [T/4, f * c] -> [T/4, d]
    per block (macaron Conformer; clip() is a clippable linear, see tower.py):
        h += 0.5 * RMS(clip(W2 silu(clip(W1 RMS(h)))))                                 FFN 1
        h += RMS(clip(Wo local_attention(RMS(h))); attn_post_norm)                     chunked, relative positions
        h += clip(W_end silu(RMS(dwconv_causal(glu(clip(W_start RMS(h)))))))           light convolution
        h += 0.5 * RMS(clip(W2' silu(clip(W1' RMS(h)))))                               FFN 2
        h  = RMS(h; block output norm)
    soft = W_proj RMSNorm_noweight(W_out h + b_out)

transformers also clamps the stream to +-1e10 between these steps; finite activations never reach that, so
those clamps are left out. The residual weight 0.5 of the feed-forward blocks is folded into their post-norm
weights at load. The attention's relative-position keys do not depend on the input: they are computed here
once per layer (a sinusoidal table through `linear_pos`), and the per-dimension query scale likewise.

Tensor names differ between the two files a user has (gemma4.md section 2.1): Ollama's monolithic blob and
llama.cpp's mmproj. `LAYOUTS` maps this file's names (Ollama's) to llama.cpp's.

One recorded run per frame capacity (5, 10 or 30 s of audio) serves every clip up to it: the lengths of the
three stages (frames, after one convolution, after two) are three Step uniforms written per clip.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .. import ops
from ..config import AudioConfig
from ..gguf_file import GGUFFile
from ..gpu import UNIFORM, Device, Tensor
from .tower import Tower, TowerLoadError, check_tensors, step_bytes

# Facts of the architecture that the files do not store (transformers' Gemma4AudioConfig defaults, the same
# in every released model): chunked attention of 12 queries, 12 past keys (context_left 13) and none ahead,
# logits soft-capped at 50, feed-forward residual weight 0.5.
CHUNK, PAST, FUTURE = 12, 12, 0
SOFTCAP = 50.0
RESIDUAL_WEIGHT = 0.5
MEL_BINS = 128
CAPACITY_FRAMES = (512, 1024, 3072)  # runs for up to ~5, ~10 and 30 s (30 s of features is 3000 frames)

# Ollama's name -> llama.cpp's, where they differ (per block names after "a.blk.N.").
_LLAMACPP = {
    "a.pre_encode.out.weight": "a.input_projection.weight",
    "mm.a.fc.weight": "a.pre_encode.out.weight",
    "mm.a.fc.bias": "a.pre_encode.out.bias",
    "ln1": "attn_pre_norm",
    "linear_pos": "attn_k_rel",
    "ln2": "attn_post_norm",
    "layer_pre_norm": "ln2",
}
_BLOCK = ("ffn_norm", "ffn_up", "ffn_down", "ffn_post_norm", "ffn_norm_1", "ffn_up_1", "ffn_down_1",
          "ffn_post_norm_1", "ln1", "attn_q", "attn_k", "attn_v", "attn_out", "linear_pos", "per_dim_scale", "ln2",
          "conv_norm", "conv_pw1", "conv_dw", "norm_conv", "conv_pw2", "layer_pre_norm")
_CLIPPED = ("attn_q", "attn_k", "attn_v", "attn_out", "ffn_up", "ffn_down", "ffn_up_1", "ffn_down_1", "conv_pw1",
            "conv_pw2")


def layout(gf: GGUFFile) -> str:
    """"ollama" (mm.a.fc is the output projection) or "llama.cpp" (a.input_projection is the SSCP linear)."""
    return "llama.cpp" if "a.input_projection.weight" in gf else "ollama"


def file_name(gf: GGUFFile, name: str) -> str:
    """The name of tensor `name` (Ollama's spelling) in this file."""
    if layout(gf) == "ollama":
        return name
    if name in _LLAMACPP:
        return _LLAMACPP[name]
    if name.startswith("a.blk."):
        _, _, l, rest = name.split(".", 3)
        base, _, suffix = rest.partition(".")
        return f"a.blk.{l}.{_LLAMACPP.get(base, base)}.{suffix}"
    return name


def tensor_names(c: AudioConfig) -> list[str]:
    names = ["a.conv1d.0.weight", "a.conv1d.0.norm.weight", "a.conv1d.1.weight", "a.conv1d.1.norm.weight",
             "a.pre_encode.out.weight", "mm.a.fc.weight", "mm.a.fc.bias", "mm.a.input_projection.weight"]
    for l in range(c.n_layers):
        names += [f"a.blk.{l}.{s}.weight" for s in _BLOCK]
    return names


def audio_config_from(gf: GGUFFile) -> AudioConfig | None:
    from ..config import audio_config

    return audio_config(gf.metadata)


def relative_positions(d: int) -> np.ndarray:
    """transformers' Gemma4AudioRelPositionalEncoding: sin || cos of positions (CHUNK + PAST + FUTURE) // 2 down
    to 0 over d / 2 timescales from 1 to 1e4, float64 [P, d]."""
    n = d // 2
    inv = np.exp(np.arange(n) * -(math.log(1e4) / max(n - 1, 1)))
    pos = np.arange((CHUNK + PAST + FUTURE) // 2, -1, -1, dtype=np.float64)[:, None] * inv[None]
    return np.concatenate([np.sin(pos), np.cos(pos)], axis=-1)


@dataclass
class AudioRun:
    capacity: int  # frames
    steps: list  # Step uniforms: frames, after one convolution, after two
    features: Tensor  # f32 [cap, 128]
    out: Tensor  # f32 [cap / 4, text_d]
    graphs: list
    bufs: dict = field(default_factory=dict)

    def tensors(self) -> list:
        return [*self.steps, self.features, self.out, *self.bufs.values()]


class GemmaAudio(Tower):
    """A loaded audio tower. Create with `await GemmaAudio.load(gguf_file, device, text_d_model=...)`."""

    what = "audio"

    def __init__(self, cfg: AudioConfig, device: Device, gf: GGUFFile, text_d_model: int):
        super().__init__(device, gf, text_d_model)
        self.cfg = cfg
        self.head_dim = cfg.d_model // cfg.n_heads
        c0 = gf.info(file_name(gf, "a.conv1d.0.weight"))
        c1 = gf.info(file_name(gf, "a.conv1d.1.weight"))
        self.channels = (c0.shape[0], c1.shape[0])
        self.out_dim = gf.info(file_name(gf, "mm.a.fc.weight")).n_rows
        self.conv_kernel = gf.info(file_name(gf, "a.blk.0.conv_dw.weight")).shape[-1]  # (channels, kernel)

    def n(self, name: str) -> str:
        return file_name(self.gguf, name)

    # -- loading -------------------------------------------------------------------------------------------
    @classmethod
    async def load(cls, gf: GGUFFile, device: Device, *, text_d_model: int, progress=None) -> "GemmaAudio":
        t = cls(cls.validate(gf, text_d_model), device, gf, text_d_model)
        c, n = t.cfg, t.n
        names = [n(x) for x in tensor_names(c)]
        skip = {n(f"a.blk.{l}.{s}.weight") for l in range(c.n_layers) for s in ("linear_pos", "per_dim_scale")}
        skip |= {n(f"a.blk.{l}.{s}.weight") for l in range(c.n_layers) for s in ("ffn_post_norm", "ffn_post_norm_1")}

        convs = {n("a.conv1d.0.weight"), n("a.conv1d.1.weight")}

        def matrix_shape(name, info):  # (out channels, in channels, 3, 3) as one row per output channel
            return (info.shape[0], info.n_elements // info.shape[0]) if name in convs else None

        await t.upload([x for x in names if x not in skip], progress, matrix_shape)
        await t.load_clamps([n(f"a.blk.{l}.{s}.weight") for l in range(c.n_layers) for s in _CLIPPED])
        # Host-side constants per layer: relative-position keys, the query's per-dimension scale, and the
        # feed-forward post-norms times the residual weight.
        table = relative_positions(c.d_model)
        hd = t.head_dim
        for l in range(c.n_layers):
            p = f"a.blk.{l}."
            info = gf.info(n(p + "linear_pos.weight"))
            w_rel = (await gf.tensor(n(p + "linear_pos.weight"))).astype(np.float64).reshape(info.n_rows, -1)
            t.w[p + "rel_k"] = device.upload((table @ w_rel.T).astype(np.float32), label=p + "rel_k")
            pds = (await gf.tensor(n(p + "per_dim_scale.weight"))).astype(np.float64).reshape(-1)[:hd]
            t.w[p + "q_scale"] = device.upload((pds / math.sqrt(hd) / math.log(2)).astype(np.float32),
                                               label=p + "q_scale")
            for s in ("ffn_post_norm", "ffn_post_norm_1"):
                norm = (await gf.tensor(n(p + s + ".weight"))).astype(np.float32).reshape(-1)
                t.w[n(p + s + ".weight")] = device.upload(norm * np.float32(RESIDUAL_WEIGHT), label=p + s)
        return t

    @staticmethod
    def validate(gf: GGUFFile, text_d_model: int) -> AudioConfig:
        c = audio_config_from(gf)
        name = gf.source.name
        if c is None:
            raise TowerLoadError(f"{name} has no audio tower")
        check_tensors(gf, [file_name(gf, x) for x in tensor_names(c)], "audio tower")
        if c.n_heads < 1 or c.d_model % c.n_heads:
            raise TowerLoadError(f"{name}: audio width {c.d_model} is not a multiple of {c.n_heads} heads")
        proj = gf.info(file_name(gf, "mm.a.input_projection.weight"))
        if proj.n_rows != text_d_model:
            raise TowerLoadError(f"{name}: the audio projector outputs width {proj.n_rows}, but the text model's "
                                 f"width is {text_d_model}: this mmproj belongs to another model")
        c0 = gf.info(file_name(gf, "a.conv1d.0.weight"))
        if c0.n_elements != c0.shape[0] * 9:
            raise TowerLoadError(f"{name}: a.conv1d.0.weight has shape {c0.shape}; expected (channels, 1, 3, 3)")
        return c

    # -- the forward pass ----------------------------------------------------------------------------------
    async def _record(self, cap: int) -> AudioRun:
        c, dev, n = self.cfg, self.device, self.n
        d, hd, nh, eps = c.d_model, self.head_dim, c.n_heads, c.norm_eps
        c0, c1 = self.channels
        t1, t2 = (cap - 1) // 2 + 1, ((cap - 1) // 2) // 2 + 1
        f1, f2 = (MEL_BINS - 1) // 2 + 1, ((MEL_BINS - 1) // 2) // 2 + 1
        T = lambda *shape, name: dev.tensor(shape, "float32", f"audio.{name}[{cap}]")  # noqa: E731
        run = AudioRun(cap, [dev.tensor((8,), "uint32", f"audio.step{i}", usage=UNIFORM) for i in range(3)],
                       T(cap, MEL_BINS, name="features"), T(t2, self.text_d_model, name="out"), [])
        b = run.bufs
        b["s1"], b["s2"] = T(t1, f1, c0, name="sscp1"), T(t2, f2, c1, name="sscp2")
        for name in ("h", "x", "xc", "q", "k", "v", "attn", "o", "glu", "conv"):
            b[name] = T(t2, d, name=name)
        b["ff"], b["ffc"] = T(t2, max(c.ffn_dim, 2 * d), name="ff"), T(t2, max(c.ffn_dim, 2 * d), name="ffc")
        b["proj"], b["proj_n"] = T(t2, self.out_dim, name="proj"), T(t2, self.out_dim, name="proj_n")
        h, x, xc, o = b["h"], b["x"], b["xc"], b["o"]
        lin = self.linear

        # prologue: the two convolution stages and the input projection
        g = dev.graph()
        await ops.conv2d_ln_relu(g, run.features, self.w[n("a.conv1d.0.weight")], self.w[n("a.conv1d.0.norm.weight")],
                                 b["s1"], run.steps[0], f_in=MEL_BINS, c_in=1, c_out=c0, eps=eps)
        await ops.conv2d_ln_relu(g, b["s1"], self.w[n("a.conv1d.1.weight")], self.w[n("a.conv1d.1.norm.weight")],
                                 b["s2"], run.steps[1], f_in=f1, c_in=c0, c_out=c1, eps=eps)
        await ops.matmul(g, self.w[n("a.pre_encode.out.weight")], b["s2"].view((t2, f2 * c1)), h, n_tokens=t2)
        run.graphs.append(g)

        ff, ffc = b["ff"].view((t2, c.ffn_dim)), b["ffc"].view((t2, c.ffn_dim))
        wide, wide_c = b["ff"].view((t2, 2 * d)), b["ffc"].view((t2, 2 * d))
        for l in range(c.n_layers):
            p = f"a.blk.{l}."
            w = lambda s: self.w[n(p + s + ".weight")]  # noqa: E731
            W = lambda s: n(p + s + ".weight")  # noqa: E731
            g = dev.graph()
            await self._ffn(g, p, "", h, x, xc, ff, ffc, o, t2)
            # attention over chunks of 12 queries, each seeing itself and 12 past frames
            await ops.rms_norm(g, h, w("ln1"), x, n=d, eps=eps)
            await lin(g, W("attn_q"), x, b["q"], xc, t2)
            await lin(g, W("attn_k"), x, b["k"], xc, t2)
            await lin(g, W("attn_v"), x, b["v"], xc, t2)
            await ops.local_attention(g, b["q"], b["k"], b["v"], self.w[p + "rel_k"], self.w[p + "q_scale"], b["attn"],
                                      run.steps[2], n_heads=nh, head_dim=hd, chunk=CHUNK, past=PAST, future=FUTURE,
                                      k_scale=math.log(1 + math.e) / math.log(2), softcap=SOFTCAP)
            await lin(g, W("attn_out"), b["attn"], o, xc, t2)
            await ops.rms_norm(g, o, w("ln2"), h, n=d, eps=eps, accumulate=True)
            # light convolution module: GLU, causal depthwise convolution, norm, SiLU, back to the stream
            await ops.rms_norm(g, h, w("conv_norm"), x, n=d, eps=eps)
            await lin(g, W("conv_pw1"), x, wide, xc, t2)
            await ops.glu(g, wide, b["glu"], n=d)
            await ops.depthwise_conv1d(g, b["glu"], w("conv_dw"), b["conv"], channels=d, kernel=self.conv_kernel)
            await ops.rms_norm(g, b["conv"], w("norm_conv"), x, n=d, eps=eps)
            await ops.silu(g, x)
            await lin(g, W("conv_pw2"), x, o, wide_c, t2)
            await ops.add(g, h, o, h, n=d)
            await self._ffn(g, p, "_1", h, x, xc, ff, ffc, o, t2)
            # the block's output norm writes into the other stream buffer, which the next block reads
            await ops.rms_norm(g, h, w("layer_pre_norm"), x, n=d, eps=eps)
            run.graphs.append(g)
            h, x = x, h

        # epilogue: output projection (with bias), weightless norm, projection to the text width
        g = dev.graph()
        await ops.matmul(g, self.w[n("mm.a.fc.weight")], h, b["proj"], n_tokens=t2)
        await ops.bias_add(g, b["proj"], self.w[n("mm.a.fc.bias")], n=self.out_dim)
        await ops.rms_norm(g, b["proj"], None, b["proj_n"], n=self.out_dim, eps=eps)
        await ops.matmul(g, self.w[n("mm.a.input_projection.weight")], b["proj_n"], run.out, n_tokens=t2)
        run.graphs.append(g)
        return run

    async def _ffn(self, g, p, sfx, h, x, xc, ff, ffc, o, rows) -> None:
        """h += 0.5 * RMS(clip(W2 silu(clip(W1 RMS(h))))) (the 0.5 is in the post-norm's weight)."""
        c, n = self.cfg, self.n
        await ops.rms_norm(g, h, self.w[n(f"{p}ffn_norm{sfx}.weight")], x, n=c.d_model, eps=c.norm_eps)
        await self.linear(g, n(f"{p}ffn_up{sfx}.weight"), x, ff, xc, rows)
        await ops.silu(g, ff)
        await self.linear(g, n(f"{p}ffn_down{sfx}.weight"), ff, o, ffc, rows)
        await ops.rms_norm(g, o, self.w[n(f"{p}ffn_post_norm{sfx}.weight")], h, n=c.d_model, eps=c.norm_eps,
                           accumulate=True)

    def run_tensors(self, run) -> list:
        return run.tensors()

    async def run_for(self, frames: int) -> AudioRun:
        cap = next((f for f in CAPACITY_FRAMES if f >= frames), None)
        if cap is None:
            raise ValueError(f"{frames} frames are more than one 30 s block ({CAPACITY_FRAMES[-1]} frames)")
        run = self._runs.get(cap)
        if run is None:
            run = self._runs[cap] = await self._record(cap)
        return run

    async def encode(self, audio, *, on_layer=None, cancelled=None) -> Tensor:
        """Soft tokens of a media.PreparedAudio: a view [n_soft, text_d_model] of the run's output (valid until
        the next encode of the same capacity). Progress and cancel as GemmaVision.encode."""
        dev = self.device
        feats = np.ascontiguousarray(audio.features, np.float32)
        t0 = feats.shape[0]
        if feats.ndim != 2 or feats.shape[1] != MEL_BINS or t0 < 1:
            raise ValueError(f"audio features of shape {feats.shape}; expected [frames, {MEL_BINS}]")
        run = await self.run_for(t0)
        t1 = (t0 - 1) // 2 + 1
        t2 = (t1 - 1) // 2 + 1
        if t2 != audio.n_soft:
            raise ValueError(f"{t0} frames give {t2} soft tokens, not {audio.n_soft}")
        dev.write(run.features.buffer, feats)
        for step, n in zip(run.steps, (t0, t1, t2)):
            dev.write(step.buffer, step_bytes(n))
        await self.run_graphs(run.graphs, n_layers=self.cfg.n_layers, on_layer=on_layer, cancelled=cancelled)
        return run.out.view((t2, self.text_d_model))
