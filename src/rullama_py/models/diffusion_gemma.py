"""DiffusionGemma (`google/diffusiongemma-26B-A4B-it`) on the GPU: Gemma 4 26B-A4B layers run two ways.

- The encoder runs over the prompt (and later over each finished canvas) like a causal Gemma prefill: it writes
  the KV cache and computes nothing else (its last hidden state is unused).
- The decoder runs over a canvas of `canvas_length` tokens at the positions after the cache, every canvas token
  seeing every cached key and every other canvas token (bidirectional; on sliding layers only the last
  window - 1 cached keys, as transformers' sliding cache keeps them). Its K/V go to the cache slots of the
  canvas positions, past everything the encoder wrote, so the encoder's cache is never changed by it; the next
  encoder run writes the finished canvas there.
- Both halves share every weight but the per-layer output scalars: `layer_output_scale` is the decoder's and
  `enc_layer_output_scale` the encoder's.
- Self-conditioning (decoder only, before layer 0): the previous step's token distribution p, as an expected
  embedding soft = (p @ E) * sqrt(d), goes through a small GeGLU MLP and is added to the canvas embedding, then
  normalised (RMSNorm without weight; applied on the first step too, where p is all zeros and the MLP gives 0).
  p is the sampler's softmax(logits / t) of the previous step, which ops.denoise writes in place of the logits:
  the decoder reads it at its start, before its head overwrites that buffer with the new logits.

The GGUF layout (tools/make_tiny_diffusion_gemma.py writes it): architecture `diffusion-gemma`, Gemma 4's keys
and MoE tensor names, `diffusion.*` sampler keys (config.DiffusionConfig), `blk.N.enc_layer_output_scale`, and
`self_cond_pre_norm`, `self_cond_gate`, `self_cond_up`, `self_cond_down`. The sampler that drives the decoder is
rullama_py/diffusion.py.
"""

from __future__ import annotations

from .. import ops
from ..config import ModelConfig
from ..gguf_file import GGUFFile
from ..gpu import Device, Tensor
from .gemma import ContextOverflowError, Gemma, ModelLoadError, Run, default_prefill_chunk

SELF_COND = ("self_cond_pre_norm.weight", "self_cond_gate.weight", "self_cond_up.weight", "self_cond_down.weight")


class NotDiffusionModelError(ModelLoadError):
    """A model that is not a DiffusionGemma was asked to diffuse."""


class DiffusionGemma(Gemma):
    """A loaded DiffusionGemma. Create with `await DiffusionGemma.load(gguf_file, device, ...)`; drive it with
    diffusion.Diffusion."""

    def __init__(self, cfg: ModelConfig, device: Device, gf: GGUFFile, max_context: int, prefill_chunk: int):
        super().__init__(cfg, device, gf, max_context, prefill_chunk)
        self.canvas_length = cfg.diffusion.canvas_length
        # The decoder's [canvas, vocab] logits; the sampler turns them into probabilities in place, which the
        # next decoder run reads for self-conditioning.
        self.logits = device.tensor((self.canvas_length, cfg.vocab_size), "float32", "canvas_logits")
        self.enc_scales: list[Tensor | None] = []

    @classmethod
    async def load(cls, gf: GGUFFile, device: Device, *, max_context: int = 4096, prefill_chunk: int | None = None,
                   progress=None) -> "DiffusionGemma":
        cfg = ModelConfig.from_metadata(gf.metadata)
        if cfg.diffusion is None:
            raise NotDiffusionModelError(
                f"{gf.source.name} is a {cfg.arch} model, not a diffusion model: chat with it instead")
        max_context = max(1, min(max_context, cfg.context_length or max_context))
        if max_context < cfg.diffusion.canvas_length + 1:
            raise ContextOverflowError(f"a context of {max_context} cannot hold a prompt and a canvas of "
                                       f"{cfg.diffusion.canvas_length} tokens")
        m = cls(cfg, device, gf, max_context, min(prefill_chunk or default_prefill_chunk(device), max_context))
        await m._upload(progress)
        m.enc_scales = [m.w.get(f"blk.{l}.enc_layer_output_scale.weight") for l in range(cfg.n_layers)]
        m._alloc_kv()
        m.encoder = await m._record_encoder(m.prefill_chunk)
        m.decoder = await m._record_decoder()
        return m

    def _wanted(self) -> set:
        return super()._wanted() | set(SELF_COND)

    def _layer_scalars(self) -> tuple:
        return ("layer_output_scale.weight", "enc_layer_output_scale.weight")

    def _alloc_kv(self) -> None:
        # Every layer keeps the whole context: the canvas reads keys before it on sliding layers too, and the
        # encoder of the next canvas overwrites the decoder's canvas slots; no ring buffers to reason about.
        c = self.cfg
        for l in range(c.n_layers):
            k, v = ops.kv_cache(self.device, n_kv_heads=c.n_kv_heads[l], head_dim=c.head_dim[l],
                                slots=self.max_context, label=f"kv{l}")
            self.kv[l] = (k, v, self.max_context)

    # -- the two passes ------------------------------------------------------------------------------------
    async def _record_encoder(self, cap: int) -> Run:
        """Causal layers over up to `cap` prompt tokens with the encoder's output scalars; writes the cache."""
        c = self.cfg
        run = Run(cap, self.device.tensor((cap,), "uint32", f"enc_ids[{cap}]"), self.device.graph(),
                  bufs=self._buffers(cap))
        g, b = run.graph, run.bufs
        await ops.embed(g, self.w["token_embd.weight"], run.ids, b["h"], n_tokens=cap, scale=c.embed_scale)
        await self._layers(g, b, cap, out_scales=self.enc_scales)
        return run

    async def _record_decoder(self) -> Run:
        """Self-conditioning, bidirectional layers with the decoder's scalars, and the head over every canvas
        token: self.logits = softcap(E @ norm(h)) [canvas, vocab]."""
        c, dev, C = self.cfg, self.device, self.canvas_length
        d, eps = c.d_model, c.norm_eps
        run = Run(C, dev.tensor((C,), "uint32", "canvas_ids"), dev.graph(), bufs=self._buffers(C))
        g, b = run.graph, run.bufs
        h, x, o = b["h"], b["x"], b["o"]
        E, w = self.w["token_embd.weight"], self.w
        sc_ff = w["self_cond_gate.weight"].shape[0]
        gate, up, act = (dev.tensor((C, sc_ff), "float32", f"self_cond_{n}") for n in ("gate", "up", "act"))
        # x = E[canvas] * sqrt(d) + MLP(rms_norm(p @ E * sqrt(d)) * w_pre); h = rms_norm_noweight(x)
        await ops.embed(g, E, run.ids, x, n_tokens=C, scale=c.embed_scale)
        await ops.mix_rows(g, self.logits, E, o, n_rows=C, scale=c.embed_scale)
        await ops.rms_norm(g, o, w["self_cond_pre_norm.weight"], h, n=d, eps=eps)
        await ops.matmul(g, w["self_cond_gate.weight"], h, gate, n_tokens=C)
        await ops.matmul(g, w["self_cond_up.weight"], h, up, n_tokens=C)
        await ops.gelu_mul(g, gate, up, act, n=sc_ff)
        await ops.matmul(g, w["self_cond_down.weight"], act, x, n_tokens=C, accumulate=True)
        await ops.rms_norm(g, x, None, h, n=d, eps=eps)
        await self._layers(g, b, C, out_scales=[L.out_scale for L in self.layers], causal=False,
                           final_norm=w["output_norm.weight"])
        await ops.matmul(g, E, x, self.logits, n_tokens=C)  # x = output_norm(h) for every canvas row
        if c.final_logit_softcap:
            await ops.softcap(g, self.logits, cap=c.final_logit_softcap)
        return run

    # -- running -------------------------------------------------------------------------------------------
    async def encode(self, ids, pos: int) -> int:
        """Run the encoder over `ids` at positions pos.. (in prefill chunks), writing their K/V; returns the
        position after them."""
        ids = list(ids)
        if pos + len(ids) + self.canvas_length > self.max_context:
            raise ContextOverflowError(
                f"{pos + len(ids)} tokens and a canvas of {self.canvas_length} exceed the context of "
                f"{self.max_context}")
        for start in range(0, len(ids), self.encoder.capacity):
            chunk = ids[start: start + self.encoder.capacity]
            await self.write_inputs(self.encoder, chunk, pos)
            self.write_step(pos, len(chunk))
            self.device.submit(self.encoder.graph)
            pos += len(chunk)
        return pos

    def set_canvas_step(self, pos: int) -> None:
        """Point the decoder at the canvas positions pos..pos + canvas_length - 1."""
        if pos + self.canvas_length > self.max_context:
            raise ContextOverflowError(f"a canvas at position {pos} runs past the context of {self.max_context}")
        self.write_step(pos, self.canvas_length)

    def clear_self_conditioning(self) -> None:
        """Zero the probabilities the next decoder run reads: the first step of a canvas has no previous step."""
        self.device.clear(self.logits)

    def decoder_dispatches(self) -> int:
        return len(self.decoder.graph)
