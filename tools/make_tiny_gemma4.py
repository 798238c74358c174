"""Build the tiny random Gemma 4 fixtures: tests/fixtures/gemma4_tiny_<name>.gguf + .npz.

Each fixture is a small random Gemma 4 text model (E2B-, E4B- or 26B-A4B-like layer pattern, sliding window
smaller than the prompt) written as a GGUF in Ollama's single-file layout (the same metadata keys, tensor
names and fake tokenizer as tools/make_synthetic_gguf.py), plus goldens from Hugging Face transformers' own
Gemma 4 implementation run on exactly the weights the GGUF holds: quantized tensors are dequantized and loaded
back into the HF model before anything is computed, so the goldens test our engine, not the quantization.

The goldens are computed in float64 (with HF's few float32 spots lifted to float64 too, see make_float64_exact)
and stored as float32: the full-prefill logits, the logits of the same tokens fed through HF's KV cache one at a time after a
short prefill, and the intermediate activations (embedding, per-layer inputs, every layer's output, the final norm)
for layer-by-layer debugging. See tests/fixtures/README.md for the exact contents.

Needs torch and transformers, which the project does not depend on; run it from a scratch venv outside the repo
with torch==2.13.0 transformers==5.23.0 gguf==0.19.0 numpy:

    python tools/make_tiny_gemma4.py                      # all configs into tests/fixtures/
    python tools/make_tiny_gemma4.py e2b_f32 moe_q4_k     # some

The moe_* configs (MOE_CONFIGS) are Gemma 4 26B-A4B-like: no per-layer embeddings, no KV sharing, fewer KV heads
on the global layers, whose V is the K projection, and a routed mixture of experts in every layer.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, replace

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_synthetic_gguf as layout  # noqa: E402  (the shared Gemma 4 GGUF layout)
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as Q, GGUFWriter, LlamaFileType, quants  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "fixtures")
VOCAB = 512


@dataclass(frozen=True)
class Tiny:
    name: str
    dims: layout.Gemma4Dims
    weights: str  # "f32", "f16", "q8_0" or "q4_k_m": see weight_type()
    seed: int
    n_tokens: int
    decode_prefix: int = 5  # tokens prefilled into the KV cache before decoding one token at a time


TINY = layout.Gemma4Dims(n_vocab=VOCAB, context_length=2048)
CONFIGS = {c.name: c for c in [
    # E2B-like: (4 sliding + 1 global) x 2, the last 5 layers KV-shared with a 2x wider FFN, MQA, PLE 8.
    # d_model 48 so sqrt(d_model) is not a round number.
    Tiny("e2b_f32", replace(TINY, n_layer=10, d_model=48, n_head=4, n_kv_head=1, head_dim_swa=32, head_dim_full=64,
                            n_ff=64, double_wide_shared_ffn=True, swa_per_period=4, n_kv_shared=5, ple_dim=8,
                            sliding_window=8), "f32", seed=1, n_tokens=32),
    # E4B-like: (5 sliding + 1 global) x 2, last 6 shared, GQA 2 (4 q heads, 2 kv heads), no double-wide FFN.
    # Ollama q8_0-style types: Q8_0 matrices, BF16 PLE table (and BF16 for rows too short for Q8_0 blocks).
    Tiny("e4b_q8_0", replace(TINY, n_layer=12, d_model=96, n_head=4, n_kv_head=2, head_dim_swa=32, head_dim_full=64,
                             n_ff=128, double_wide_shared_ffn=False, swa_per_period=5, n_kv_shared=6, ple_dim=16,
                             sliding_window=12), "q8_0", seed=2, n_tokens=40),
    # (3 sliding + 1 global) x 2, last 4 shared, GQA 4 with head_dim 16 / 32, window 5, F16 matrices.
    Tiny("gqa4_f16", replace(TINY, n_layer=8, d_model=64, n_head=8, n_kv_head=2, head_dim_swa=16, head_dim_full=32,
                             n_ff=96, double_wide_shared_ffn=True, swa_per_period=3, n_kv_shared=4, ple_dim=8,
                             sliding_window=5), "f16", seed=3, n_tokens=24),
    # Ollama's Q4_K_M recipe (Q4_K, Q6_K, and the Q5_0 fallback for 32-wide rows) on a model whose rows are
    # multiples of 256: (1 sliding + 1 global) x 2, last 2 shared, 8 heads x 32 (global x 64), PLE 32.
    Tiny("q4_k_m", replace(TINY, n_layer=4, d_model=256, n_head=8, n_kv_head=1, head_dim_swa=32, head_dim_full=64,
                           n_ff=256, double_wide_shared_ffn=True, swa_per_period=1, n_kv_shared=2, ple_dim=32,
                           sliding_window=8), "q4_k_m", seed=4, n_tokens=32),
]}

# Gemma 4 26B-A4B-like layers: no PLE, no KV sharing, GQA with fewer KV heads on the global layers, whose V is the K
# projection (no attn_v), and a routed mixture of experts next to every layer's dense FFN. Kept apart from CONFIGS
# (whose fixtures tests/reference_gemma4.py reproduces); tests/test_fixtures_moe.py checks these.
MOE = replace(TINY, double_wide_shared_ffn=False, n_kv_shared=0, ple_dim=0, n_kv_head=2, n_kv_head_full=1,
              head_dim_swa=32, head_dim_full=64, k_eq_v=True)
MOE_CONFIGS = {c.name: c for c in [
    # 26B's 5:1 layer pattern, 8 experts top-2. d_model 32 keeps a float32 file under 1 MB (q/k heads are wider
    # than the model, which HF allows).
    Tiny("moe_f32", replace(MOE, n_layer=6, d_model=32, n_head=4, n_ff=32, swa_per_period=5, sliding_window=8,
                            n_expert=8, n_expert_used=2, n_ff_exp=16), "f32", seed=20, n_tokens=24),
    # Ollama's Q4_K_M recipe on 26B's width ratios: d_model 256 (K-quant rows), dense FFN d/2 and experts d/4 wide,
    # which (like 26B's 2112 and 704) are not multiples of 256, so ffn_down and ffn_down_exps fall back to
    # Q5_0 / Q8_0 while ffn_gate_up_exps is Q4_K. One sliding and one global layer, 8 experts top-3.
    Tiny("moe_q4_k", replace(MOE, n_layer=2, d_model=256, n_head=4, n_ff=128, swa_per_period=1, sliding_window=8,
                             n_expert=8, n_expert_used=3, n_ff_exp=64), "q4_k_m", seed=13, n_tokens=32),
]}
ALL_CONFIGS = {**CONFIGS, **MOE_CONFIGS}


# --------------------------------------------------------------------------------------------------------------------
# Quantizers the gguf package lacks (it can only dequantize k-quants). Simple min/max fits, not llama.cpp's
# iterative search: the goldens use the dequantized values, so only the block format has to be right, and
# `roundtrip` checks that against gguf's own dequantizer.


def _f16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16)


def quantize_q4_k(x: np.ndarray) -> np.ndarray:
    """[rows, n] float32 -> [rows, n/256*144] uint8. Block: d, dmin (f16), 8 (scale, min) pairs of 6 bits packed
    into 12 bytes, then 256 4-bit quants; value = d*sc*q - dmin*m, one (sc, m) per 32 values."""
    rows = x.shape[0]
    sub = x.reshape(-1, 8, 32).astype(np.float64)
    lo = np.minimum(sub.min(-1), 0.0)
    scale = (sub.max(-1) - lo) / 15.0
    d = _f16(scale.max(-1) / 63.0).astype(np.float64)
    dmin = _f16(-lo.min(-1) / 63.0).astype(np.float64)
    sc = np.clip(np.rint(np.divide(scale, d[:, None], out=np.zeros_like(scale), where=d[:, None] > 0)), 0, 63)
    m = np.clip(np.rint(np.divide(-lo, dmin[:, None], out=np.zeros_like(lo), where=dmin[:, None] > 0)), 0, 63)
    step = (d[:, None] * sc)[..., None]
    q = np.divide(sub + (dmin[:, None] * m)[..., None], step, out=np.zeros_like(sub), where=step > 0)
    q = np.clip(np.rint(q), 0, 15).astype(np.uint8)
    sc, m = sc.astype(np.uint8), m.astype(np.uint8)
    scales = np.empty((sub.shape[0], 12), np.uint8)
    # Bytes 0-3: low 6 bits of sc[0..3], top 2 bits = bits 4-5 of sc[4..7]; bytes 4-7 the same for the mins;
    # bytes 8-11: low nibbles of sc[4..7] | low nibbles of m[4..7] << 4 (see gguf.quants.Q4_K.get_scale_min).
    scales[:, 0:4] = sc[:, 0:4] | ((sc[:, 4:8] >> 4) << 6)
    scales[:, 4:8] = m[:, 0:4] | ((m[:, 4:8] >> 4) << 6)
    scales[:, 8:12] = (sc[:, 4:8] & 0x0F) | ((m[:, 4:8] & 0x0F) << 4)
    # 32 bytes per pair of sub-blocks: sub-block 2j in the low nibbles, 2j+1 in the high nibbles.
    qs = (q[:, 0::2, :] | (q[:, 1::2, :] << 4)).reshape(-1, 128)
    blocks = np.concatenate([_f16(d).view(np.uint8).reshape(-1, 2), _f16(dmin).view(np.uint8).reshape(-1, 2),
                             scales, qs], axis=1)
    return blocks.reshape(rows, -1)


def quantize_q6_k(x: np.ndarray) -> np.ndarray:
    """[rows, n] float32 -> [rows, n/256*210] uint8. Block: 128 bytes of low nibbles, 64 bytes of high 2-bit pairs,
    16 int8 scales (one per 16 values), f16 d; value = d*scale*(q-32)."""
    rows = x.shape[0]
    sub = x.reshape(-1, 16, 16).astype(np.float64)
    scale = np.abs(sub).max(-1) / 31.0
    d = _f16(scale.max(-1) / 127.0).astype(np.float64)
    sc = np.clip(np.rint(np.divide(scale, d[:, None], out=np.zeros_like(scale), where=d[:, None] > 0)), -128, 127)
    step = (d[:, None] * sc)[..., None]
    q = np.divide(sub, step, out=np.zeros_like(sub), where=step > 0)
    q = (np.clip(np.rint(q), -32, 31) + 32).astype(np.uint8).reshape(-1, 2, 128)  # two halves of 128 values
    # In each half, value r < 64 has its low nibble in byte r's low bits, value 64 + r in byte r's high bits;
    # the top 2 bits of value 32k + i sit at bit 2k of byte i (k = 0..3, i < 32).
    ql = (q[:, :, :64] & 0x0F) | ((q[:, :, 64:] & 0x0F) << 4)
    hi = (q >> 4).reshape(-1, 2, 4, 32)
    qh = hi[:, :, 0] | (hi[:, :, 1] << 2) | (hi[:, :, 2] << 4) | (hi[:, :, 3] << 6)
    blocks = np.concatenate([ql.reshape(-1, 128), qh.reshape(-1, 64), sc.astype(np.int8).view(np.uint8),
                             _f16(d).view(np.uint8).reshape(-1, 2)], axis=1)
    return blocks.reshape(rows, -1)


def quantize(x: np.ndarray, qtype: Q) -> np.ndarray:
    """float32 [rows, n] -> the GGUF payload: float32/float16 arrays, or uint8 [rows, row_bytes] for block types."""
    if qtype == Q.Q4_K:
        return quantize_q4_k(x)
    if qtype == Q.Q6_K:
        return quantize_q6_k(x)
    return quants.quantize(x, qtype)


def roundtrip(x: np.ndarray, qtype: Q) -> tuple[np.ndarray, np.ndarray]:
    """(payload, the float32 values a reader gets back from it, via gguf's dequantizer)."""
    data = quantize(x, qtype)
    values = quants.dequantize(data, qtype).reshape(x.shape).astype(np.float32)
    x64, v64 = x.astype(np.float64), values.astype(np.float64)  # rope_freqs holds 1e30
    err = np.sqrt(np.mean((v64 - x64) ** 2)) / (np.sqrt(np.mean(x64 ** 2)) + 1e-30)
    worst = {Q.F32: 0, Q.F16: 1e-3, Q.BF16: 5e-3, Q.Q8_0: 1e-2, Q.Q6_K: 4e-2, Q.Q5_0: 6e-2, Q.Q4_K: 0.12}[qtype]
    assert err <= worst, f"{qtype.name} round trip error {err:.3g}: the block packing is wrong"
    return data, values


def weight_type(policy: str, spec: layout.TensorSpec, q4_k_m: dict[str, Q]) -> Q:
    if spec.kind in ("norm", "scalar", "rope_freqs", "router_scale", "expert_scale"):
        return Q.F32  # every converter keeps 1-D tensors in F32
    if spec.kind == "router":
        return Q.F32  # llama.cpp's converter writes ffn_gate_inp in F32 and no quantizer touches it
    if policy == "f32":
        return Q.F32
    if policy == "f16":
        return Q.F16
    if policy == "q8_0":
        return Q.BF16 if spec.kind == "ple" or spec.ne[0] % 32 else Q.Q8_0
    return q4_k_m[spec.name]


FILE_TYPE = {"f32": LlamaFileType.ALL_F32, "f16": LlamaFileType.MOSTLY_F16, "q8_0": LlamaFileType.MOSTLY_Q8_0,
             "q4_k_m": LlamaFileType.MOSTLY_Q4_K_M}


# --------------------------------------------------------------------------------------------------------------------
# The HF model


def hf_config(dims: layout.Gemma4Dims):
    from transformers import Gemma4TextConfig

    return Gemma4TextConfig(
        vocab_size=dims.n_vocab, vocab_size_per_layer_input=dims.n_vocab,  # the text model looks PLE rows up by id
        hidden_size=dims.d_model, num_hidden_layers=dims.n_layer, intermediate_size=dims.n_ff,
        num_attention_heads=dims.n_head, num_key_value_heads=dims.n_kv_head, head_dim=dims.head_dim_swa,
        global_head_dim=dims.head_dim_full, layer_types=[
            "sliding_attention" if dims.is_swa(il) else "full_attention" for il in range(dims.n_layer)],
        sliding_window=dims.sliding_window, num_kv_shared_layers=dims.n_kv_shared,
        use_double_wide_mlp=dims.double_wide_shared_ffn, hidden_size_per_layer_input=dims.ple_dim,
        final_logit_softcapping=dims.final_logit_softcap, rms_norm_eps=dims.rms_eps,
        max_position_embeddings=dims.context_length, tie_word_embeddings=True,
        hidden_activation="gelu_pytorch_tanh", attention_k_eq_v=dims.k_eq_v, enable_moe_block=dims.n_expert > 0,
        **moe_config(dims),
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": dims.rope_base_swa},
            "full_attention": {"rope_type": "proportional", "partial_rotary_factor": dims.partial_rotary_full,
                               "rope_theta": dims.rope_base_full}},
        # SDPA (HF's default) keeps float64 throughout; the eager path runs its softmax in float32.
        attn_implementation="sdpa")


def moe_config(dims: layout.Gemma4Dims) -> dict:
    """The Gemma4TextConfig fields of 26B-A4B-style layers (none for E2B/E4B, so their configs stay as they were).
    HF gives the global layers their own KV head count only together with attention_k_eq_v."""
    extra = {}
    if dims.n_kv_head_full is not None:
        assert dims.k_eq_v, "HF reads num_global_key_value_heads only when attention_k_eq_v is set"
        extra["num_global_key_value_heads"] = dims.n_kv_head_full
    if dims.n_expert:
        extra.update(num_experts=dims.n_expert, top_k_experts=dims.n_expert_used,
                     moe_intermediate_size=dims.n_ff_exp)
    return extra


def hf_name(gguf_name: str) -> str:
    """GGUF tensor name -> HF Gemma4ForCausalLM state-dict key (llama.cpp's and Ollama's converters use the same
    map for the text model). layer_output_scale is HF's `layer_scalar` buffer."""
    top = {"token_embd.weight": "model.embed_tokens.weight",
           "per_layer_token_embd.weight": "model.embed_tokens_per_layer.weight",
           "per_layer_model_proj.weight": "model.per_layer_model_projection.weight",
           "per_layer_proj_norm.weight": "model.per_layer_projection_norm.weight",
           "output_norm.weight": "model.norm.weight"}
    if gguf_name in top:
        return top[gguf_name]
    _, il, rest = gguf_name.split(".", 2)
    per_layer = {"attn_norm.weight": "input_layernorm.weight", "attn_q.weight": "self_attn.q_proj.weight",
                 "attn_q_norm.weight": "self_attn.q_norm.weight", "attn_k.weight": "self_attn.k_proj.weight",
                 "attn_k_norm.weight": "self_attn.k_norm.weight", "attn_v.weight": "self_attn.v_proj.weight",
                 "attn_output.weight": "self_attn.o_proj.weight",
                 "post_attention_norm.weight": "post_attention_layernorm.weight",
                 "ffn_norm.weight": "pre_feedforward_layernorm.weight", "ffn_gate.weight": "mlp.gate_proj.weight",
                 "ffn_up.weight": "mlp.up_proj.weight", "ffn_down.weight": "mlp.down_proj.weight",
                 "post_ffw_norm.weight": "post_feedforward_layernorm.weight",
                 "inp_gate.weight": "per_layer_input_gate.weight", "proj.weight": "per_layer_projection.weight",
                 "post_norm.weight": "post_per_layer_input_norm.weight", "layer_output_scale.weight": "layer_scalar",
                 # MoE (26B-A4B), as Ollama's converter names them; llama.cpp's uses the same names
                 "ffn_gate_inp.weight": "router.proj.weight", "ffn_gate_inp.scale": "router.scale",
                 "ffn_down_exps.scale": "router.per_expert_scale", "ffn_gate_up_exps.weight": "experts.gate_up_proj",
                 "ffn_down_exps.weight": "experts.down_proj",
                 "pre_ffw_norm_2.weight": "pre_feedforward_layernorm_2.weight",
                 "post_ffw_norm_1.weight": "post_feedforward_layernorm_1.weight",
                 "post_ffw_norm_2.weight": "post_feedforward_layernorm_2.weight"}
    return f"model.layers.{il}.{per_layer[rest]}"


def random_weights(spec: layout.TensorSpec, dims: layout.Gemma4Dims, rng: np.random.Generator) -> np.ndarray:
    """Values that make every part of the forward pass matter, unlike HF's init (norm weights 1, scalars 1,
    embeddings std 0.02 give near-zero logits): logits of a few units so the soft-cap bends them, attention that is
    neither uniform nor one-hot, norm weights and layer scales away from 1 so a (1+w) or a missed scale shows.

    Two ranges are narrower than they could be, to keep these small models from being chaotic: sharper attention
    (q/k norm weights up to 0.8) or layer scales down to 0.4 made 1e-3 of relative noise in the matmuls (what an
    f16 KV cache or Q8 activations cause) move the logits by up to 2.5; with these ranges it is about 0.1, while
    every porting mistake in tests/test_fixtures.py still moves them by 0.5 or more."""
    shape = spec.shape
    if spec.kind == "embd":
        return rng.normal(0, 3.5 / np.sqrt(dims.d_model), shape)  # logit std ~3.5
    if spec.kind == "ple":
        return rng.normal(0, 1 / np.sqrt(dims.ple_dim), shape)  # x sqrt(ple_dim) in the model -> std ~1
    if spec.kind in ("matrix", "experts"):
        return rng.normal(0, 1 / np.sqrt(spec.ne[0]), shape)  # keeps activations at unit scale
    if spec.kind == "router":
        # The router's input has norm ~1 (RMSNorm without weight, x router.scale / sqrt(d_model)): logits of std
        # ~1.5 make the top-k choice differ from token to token without near-ties everywhere.
        return rng.normal(0, 1.5, shape)
    if spec.kind == "scalar":
        return rng.uniform(0.8, 1.0, shape)
    if spec.kind == "rope_freqs":
        return layout.rope_freq_factors(dims)
    if spec.name.endswith(("attn_q_norm.weight", "attn_k_norm.weight")):
        return rng.uniform(0.2, 0.5, shape)  # q.k = sum over head_dim of unit-rms products: keep softmax soft
    return rng.uniform(0.5, 1.5, shape)


def build(cfg: Tiny):
    """-> (GGUF entries [(spec, qtype, payload)], the HF model holding exactly the values the GGUF stores)."""
    import torch
    from transformers import Gemma4ForCausalLM

    dims = cfg.dims
    dims.check()
    specs = layout.tensor_specs(dims)
    q4_k_m = layout.q4_k_m_types(specs)
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    model = Gemma4ForCausalLM(hf_config(dims)).eval()
    if dims.n_expert:
        # HF's plain per-expert loop (its default, grouped_mm, computes the same function with other kernels)
        model.set_experts_implementation("eager")
    state = model.state_dict()
    expected = {k for k in state if k != "lm_head.weight"}  # tied to token_embd
    entries, loaded = [], set()
    for spec in specs:
        qtype = weight_type(cfg.weights, spec, q4_k_m)
        x = random_weights(spec, dims, rng).astype(np.float32)
        payload, values = roundtrip(x.reshape(-1, spec.ne[0]), qtype)
        entries.append((spec, qtype, payload))
        if spec.kind == "rope_freqs":
            continue  # llama.cpp's encoding of HF's proportional rope, which HF computes from the config
        key = hf_name(spec.name)
        assert tuple(state[key].shape) == spec.shape, (key, tuple(state[key].shape), spec)
        with torch.no_grad():
            state[key].copy_(torch.from_numpy(values.reshape(state[key].shape)))
        loaded.add(key)
    # Every HF weight comes from the GGUF and nothing is left over: tensor_specs matches HF's module tree.
    assert loaded == expected, (expected ^ loaded)
    assert torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)
    return entries, model


def make_float64_exact(model, dims: layout.Gemma4Dims) -> None:
    """Remove the three places where HF computes in float32 even when the model is float64, so the goldens are the
    exact function (to float64 rounding) rather than carrying ~1e-6 of float32 noise:

    - Gemma4RMSNorm casts its input to float32 (meant as an upcast from bf16; for float64 it is a downcast);
    - rope: inv_freq is built in float32 and forward casts positions and inv_freq to float32;
    - the embedding scales sqrt(d_model) and sqrt(ple_dim) are float32 buffers;
    - MoE layers (26B-A4B): the router's softmax (make_router_float64_exact).

    Each replacement computes HF's own formula in float64; the asserts against HF's values make sure that only
    the precision changes, not the function."""
    import types

    import torch
    from transformers.models.gemma4.modeling_gemma4 import Gemma4RMSNorm

    def rms_norm_forward(self, x):
        y = self._norm(x)  # HF: self._norm(x.float())
        return y * self.weight if self.with_scale else y

    for module in model.modules():
        if isinstance(module, Gemma4RMSNorm):
            module.forward = types.MethodType(rms_norm_forward, module)

    inner = model.model
    embeddings = [(inner.embed_tokens, dims.d_model ** 0.5)]
    if dims.ple_dim:
        embeddings.append((inner.embed_tokens_per_layer, dims.ple_dim ** 0.5))
    for emb, scale in embeddings:
        assert abs(float(emb.embed_scale) - scale) < 1e-6 * scale
        emb.embed_scale = torch.tensor(scale, dtype=torch.float64)
    for layer in inner.layers:
        if getattr(layer, "router", None) is not None:
            make_router_float64_exact(layer.router)

    make_rope_float64_exact(inner.rotary_emb, model.config.rope_parameters, dims)


def make_rope_float64_exact(rot, rope_parameters: dict, dims: layout.Gemma4Dims) -> None:
    """HF's text rope (Gemma 4's and DiffusionGemma's rotary modules) with inv_freq and the angles in float64: the
    same inv_freq formula (default rope over the sliding head, 'proportional' over the global one), asserted
    against HF's float32 buffers."""
    import types

    import torch

    for layer_type in rot.layer_types:
        params = rope_parameters[layer_type]
        hd = dims.head_dim_swa if layer_type == "sliding_attention" else dims.head_dim_full
        n_rot = hd // 2
        if params["rope_type"] == "proportional":
            # the same exponent over the whole global head_dim for the first partial*hd/2 frequencies, 0 after
            n_rot = int(params["partial_rotary_factor"] * hd // 2)
        inv_freq = torch.zeros(hd // 2, dtype=torch.float64)
        inv_freq[:n_rot] = params["rope_theta"] ** (-torch.arange(0, 2 * n_rot, 2, dtype=torch.float64) / hd)
        hf_inv_freq = getattr(rot, f"{layer_type}_inv_freq")
        assert torch.allclose(inv_freq, hf_inv_freq.to(torch.float64), rtol=1e-6, atol=0), layer_type
        assert getattr(rot, f"{layer_type}_attention_scaling") == 1.0
        setattr(rot, f"{layer_type}_inv_freq", inv_freq)

    def rope_forward(self, x, position_ids, layer_type):
        angles = position_ids[..., None].to(torch.float64) * getattr(self, f"{layer_type}_inv_freq")
        angles = torch.cat((angles, angles), dim=-1)  # NeoX / rotate_half layout: pairs (i, i + hd/2)
        return angles.cos().to(x.dtype), angles.sin().to(x.dtype)

    rot.forward = types.MethodType(rope_forward, rot)


def make_router_float64_exact(router) -> None:
    """The MoE router's softmax runs in float32 in HF (`dtype=torch.float32`, "for numerical stability"); this is
    the same router in the model's dtype: RMSNorm without weight, x router.scale x d_model^-0.5, the projection,
    softmax over the experts, the top k (largest first), renormalised to sum 1, x per_expert_scale of the chosen
    expert. Checked against HF's own forward on the first call: the same experts, weights to float32 rounding.
    Works for Gemma 4's and DiffusionGemma's routers (the same module)."""
    import types

    import torch

    hf_forward = router.forward
    checked = []

    def forward(self, hidden_states):
        x = self.norm(hidden_states) * self.scale * self.scalar_root_size
        probs = torch.softmax(self.proj(x), dim=-1)
        weights, index = torch.topk(probs, k=self.config.top_k_experts, dim=-1)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        weights = weights * self.per_expert_scale[index]
        if not checked:
            _, hf_weights, hf_index = hf_forward(hidden_states)
            assert torch.equal(index, hf_index), "float32 routing picks other experts: a near-tie, change the seed"
            assert torch.allclose(weights, hf_weights.to(weights.dtype), rtol=1e-5, atol=1e-6)
            checked.append(True)
        return probs, weights, index

    router.forward = types.MethodType(forward, router)


def prompt_tokens(cfg: Tiny, vocab: layout.FakeVocab) -> np.ndarray:
    """A chat-shaped start (<bos><|turn>user\\n ... <turn|>\\n<|turn>model\\n) with random ids in between and
    after, so all rows of the small vocabulary can appear."""
    rng = np.random.default_rng(1000 + cfg.seed)
    head = [2, 105, vocab.id("user"), layout.NEWLINE_ID]
    tail = [106, layout.NEWLINE_ID, 105, vocab.id("model"), layout.NEWLINE_ID]
    n_mid = (cfg.n_tokens - len(head) - len(tail)) // 2
    ids = (head + rng.integers(3, VOCAB, n_mid).tolist() + tail
           + rng.integers(3, VOCAB, cfg.n_tokens - n_mid - len(head) - len(tail)).tolist())
    return np.array(ids, dtype=np.int32)


def goldens(model, ids: np.ndarray, prefix: int) -> dict[str, np.ndarray]:
    import torch

    inner = model.model
    captured: dict[str, list] = {"layer_out": [], "final_norm": [], "router": []}
    hooks = [layer.register_forward_hook(lambda m, a, out: captured["layer_out"].append(out)) for layer in inner.layers]
    hooks.append(inner.norm.register_forward_hook(lambda m, a, out: captured["final_norm"].append(out)))
    routers = [layer.router for layer in inner.layers if getattr(layer, "router", None) is not None]
    hooks += [r.register_forward_hook(lambda m, a, out: captured["router"].append((a[0], out))) for r in routers]
    x = torch.from_numpy(ids.astype(np.int64))[None]
    with torch.no_grad():
        logits = model(input_ids=x, use_cache=False).logits[0]
        for h in hooks:
            h.remove()
        embed = inner.embed_tokens(x)
        if inner.hidden_size_per_layer_input:
            per_layer_inputs = inner.project_per_layer_inputs(embed, inner.get_per_layer_inputs(x))[0]

        # The same tokens through HF's KV cache: prefill `prefix` tokens, then one token per call. HF keeps only the
        # last sliding_window-1 keys of sliding layers in this cache, like a ring-buffer engine would.
        out = model(input_ids=x[:, :prefix], use_cache=True)
        cache, steps = out.past_key_values, [out.logits[0]]
        for t in range(prefix, x.shape[1]):
            out = model(input_ids=x[:, t:t + 1], past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            steps.append(out.logits[0])
        decode_logits = torch.cat(steps)

    def f32(t):
        return t.detach().to(torch.float32).numpy()

    gold = {
        "logits": f32(logits),
        "decode_logits": f32(decode_logits),
        "embed": f32(embed[0]),
        "layer_out": np.stack([f32(t[0]) for t in captured["layer_out"]]),
        "final_norm": f32(captured["final_norm"][0][0]),
    }
    if inner.hidden_size_per_layer_input:
        gold["per_layer_inputs"] = f32(per_layer_inputs)
    if routers:
        # the router's input is the residual stream after attention, the MoE's input its pre_ffw_norm_2
        gold["attn_residual"] = np.stack([f32(a) for a, _ in captured["router"]])
        gold["expert_ids"] = np.stack([out[2].numpy().astype(np.int32) for _, out in captured["router"]])
        gold["expert_weights"] = np.stack([f32(out[1]) for _, out in captured["router"]])
        gold["router_probs"] = np.stack([out[0].detach().to(torch.float64).numpy() for _, out in captured["router"]])
    return gold


def routing_summary(gold: dict, n_expert: int) -> dict:
    """How the prompt's tokens spread over the experts (counts over layers, tokens and slots) and the smallest gap
    between the k-th and (k+1)-th router probability: an engine whose router is off by less than that picks the
    same experts. Pops router_probs (float64, not stored)."""
    probs = gold.pop("router_probs")
    k = gold["expert_ids"].shape[-1]
    ranked = -np.sort(-probs, axis=-1)
    gap = ranked[..., k - 1] - ranked[..., k] if k < n_expert else np.full(ranked.shape[:-1], np.inf)
    histogram = np.bincount(gold["expert_ids"].reshape(-1), minlength=n_expert)
    return {"expert_histogram": histogram.tolist(),
            "expert_histogram_per_layer": [np.bincount(l.reshape(-1), minlength=n_expert).tolist()
                                           for l in gold["expert_ids"]],
            "min_topk_prob_gap": float(gap.min())}


def moe_mistakes(model, ids: np.ndarray) -> dict[str, float]:
    """How far each classic MoE porting mistake moves HF's full-prefill logits (float64): each is applied to a copy
    of the model. Recorded in info so a test tolerance can be judged against them."""
    import copy
    import types

    import torch

    x = torch.from_numpy(ids.astype(np.int64))[None]
    with torch.no_grad():
        base = model(input_ids=x, use_cache=False).logits[0]

    def unnormalised_router(self, hidden_states):
        h = self.norm(hidden_states) * self.scale * self.scalar_root_size
        probs = torch.softmax(self.proj(h), dim=-1)
        weights, index = torch.topk(probs, k=self.config.top_k_experts, dim=-1)
        return probs, weights * self.per_expert_scale[index], index

    def mutate(m, what):
        for layer in m.model.layers:
            r, e = layer.router, layer.experts
            if what == "gate and up halves swapped":
                gate, up = e.gate_up_proj.data.chunk(2, dim=1)
                e.gate_up_proj.data = torch.cat([up, gate], dim=1)
            elif what == "no per_expert_scale":
                r.per_expert_scale.data.fill_(1.0)
            elif what == "no router.scale":
                r.scale.data.fill_(1.0)
            elif what == "top-k weights not renormalised":
                r.forward = types.MethodType(unnormalised_router, r)
            elif what == "router reads the pre_ffw_norm_2 output":
                norm_2 = layer.pre_feedforward_layernorm_2
                r.forward = types.MethodType(lambda self, h, f=r.forward, n=norm_2: f(n(h)), r)
            elif what == "experts skipped":
                e.forward = types.MethodType(lambda self, h, idx, w: torch.zeros_like(h), e)
            elif what == "global V with k_norm and rope (as K)":
                attn = layer.self_attn
                if attn.v_proj is None:
                    attn.v_norm = copy.deepcopy(attn.k_norm)
            else:
                raise ValueError(what)

    result = {}
    for what in ["gate and up halves swapped", "no per_expert_scale", "no router.scale",
                 "top-k weights not renormalised", "router reads the pre_ffw_norm_2 output", "experts skipped",
                 "global V with k_norm and rope (as K)"]:
        m = copy.deepcopy(model)
        mutate(m, what)
        with torch.no_grad():
            result[what] = float((m(input_ids=x, use_cache=False).logits[0] - base).abs().max())
    return result


def make(cfg: Tiny, out_dir: str) -> None:
    from importlib.metadata import version

    import torch

    entries, model = build(cfg)
    vocab = layout.fake_vocab(VOCAB)
    base = os.path.join(out_dir, f"gemma4_tiny_{cfg.name}")
    info = {
        "config": cfg.name, "weights": cfg.weights, "seed": cfg.seed, "decode_prefix": cfg.decode_prefix,
        "goldens": "HF Gemma4ForCausalLM, SDPA attention, float64 (make_float64_exact), stored as float32",
        "versions": {p: version(p) for p in ("torch", "transformers", "gguf", "numpy")},
        "command": f"python tools/make_tiny_gemma4.py {cfg.name}",
    }

    def metadata(w: GGUFWriter) -> None:
        w.add_name(f"gemma4-tiny-{cfg.name}")
        w.add_description(f"random tiny Gemma 4 test model: {json.dumps(info)}")
        w.add_file_type(FILE_TYPE[cfg.weights])
        if cfg.weights != "f32":
            w.add_quantization_version(2)
        layout.add_gemma4_metadata(w, cfg.dims)
        layout.add_tokenizer(w, vocab, model="gemma4")

    def one_chunk(payload):
        return lambda: iter([np.ascontiguousarray(payload).reshape(-1).view(np.uint8)])

    size = layout.write_gguf_streaming(
        base + ".gguf", metadata, [(s.name, s.ne, qtype, one_chunk(p)) for s, qtype, p in entries])

    ids = prompt_tokens(cfg, vocab)
    # HF's stock float32 run first: it shows how far a correct float32 implementation lands from the goldens.
    gold32 = goldens(model, ids, cfg.decode_prefix)
    model = model.to(torch.float64)
    make_float64_exact(model, cfg.dims)
    gold = goldens(model, ids, cfg.decode_prefix)
    noise = {k: float(np.abs(gold32[k] - gold[k]).max()) for k in ("logits", "decode_logits")}
    info["hf_float32_max_abs_diff"] = noise
    info["decode_vs_prefill_max_abs_diff"] = float(np.abs(gold["decode_logits"] - gold["logits"]).max())
    if cfg.dims.n_expert:
        gold32.pop("router_probs")
        info["hf_float32_same_experts"] = bool(np.array_equal(gold32["expert_ids"], gold["expert_ids"]))
        info["routing"] = routing_summary(gold, cfg.dims.n_expert)
        info["mistakes_logits_max_abs_diff"] = moe_mistakes(model, ids)
        print(f"{cfg.name}: routing {info['routing']}, mistakes {info['mistakes_logits_max_abs_diff']}")
    np.savez_compressed(base + ".npz", tokens=ids, decode_prefix=np.int32(cfg.decode_prefix),
                        info=np.array(json.dumps(info)), **gold)
    print(f"{cfg.name}: {size / 1e6:.2f} MB gguf, {os.path.getsize(base + '.npz') / 1e6:.2f} MB npz, "
          f"|logits| max {np.abs(gold['logits']).max():.2f}, HF float32 vs float64 {noise}, "
          f"decode vs prefill {info['decode_vs_prefill_max_abs_diff']:.2e}")


def hide_torchvision() -> None:
    """Make transformers treat torchvision as absent. transformers imports torchvision whenever it is installed,
    even for a text model, and a torchvision built for another torch fails inside that import ("operator
    torchvision::nms does not exist"). Nothing here needs it: the image processor used is the PIL one."""
    sys.modules.setdefault("torchvision", None)


def main(argv: list[str] | None = None) -> None:
    hide_torchvision()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help=f"configs to build (default all): {', '.join(ALL_CONFIGS)}")
    ap.add_argument("--out", default=FIXTURES, help="output folder (default tests/fixtures)")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    for name in args.names or ALL_CONFIGS:
        make(ALL_CONFIGS[name], args.out)


if __name__ == "__main__":
    main()
