"""Build the tiny DiffusionGemma fixture: tests/fixtures/diffusion_gemma_tiny.gguf + diffusion_gemma_tiny_oracle.npz.

DiffusionGemma (google/diffusiongemma-26B-A4B-it) is a block text-diffusion model on Gemma 4 26B-A4B's MoE layers.
An encoder (causal, the prompt's KV cache) and a decoder (bidirectional over that cache plus a canvas of tokens)
share every weight except the per-layer output scale; the decoder's input goes through a self-conditioning MLP fed
with the softmax of the previous step's logits, and generation is transformers' entropy-bound sampler. This script
builds a small random one in transformers' own implementation (DiffusionGemmaForBlockDiffusion), writes it as a GGUF
(architecture "diffusion-gemma": the Gemma 4 MoE layout of tools/make_synthetic_gguf.py, plus the encoder's
output scales and the self-conditioning tensors), and records what an engine must reproduce: the encoder's KV
cache, decoder logits with and without self-conditioning, and two runs of model.generate whose random draws
(the uniform canvases and the categorical samples) come from numpy and are stored, so they can be replayed.

The forward passes run in float64 with HF's float32 spots lifted (see make_float64_exact) and are stored as
float32; tests/fixtures/README.md lists the arrays. Needs torch and transformers, which the project does not
depend on; run it from a scratch venv with torch==2.13.0 transformers==5.23.0 gguf==0.19.0:

    python tools/make_tiny_diffusion_gemma.py            # into tests/fixtures/
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_synthetic_gguf as layout  # noqa: E402  (the shared Gemma 4 GGUF layout and fake tokenizer)
import make_tiny_gemma4 as tiny  # noqa: E402  (weights, quantisers, float64 patches)
from gguf import GGMLQuantizationType as Q, GGUFValueType, GGUFWriter, LlamaFileType  # noqa: E402

ARCH = "diffusion-gemma"
VOCAB = 512
# 26B-A4B's layer kinds at a tiny size: 5 sliding layers and a global one, GQA (sliding 4 q / 2 kv heads of 16,
# global 4 / 1 of 32, whose V is the K projection), a dense FFN and 4 experts top-2 in every layer. The window is
# longer than anything generated here (prompt + 2 canvases = 42): HF's decoder attends to its cached prompt without a
# window, but its DynamicCache keeps only the last window-1 keys of sliding layers, which would make longer contexts
# depend on that cache's size rather than on the model.
DIMS = replace(tiny.MOE, n_vocab=VOCAB, context_length=2048, n_layer=6, d_model=64, n_head=4, head_dim_swa=16,
               head_dim_full=32, n_ff=32, swa_per_period=5, sliding_window=64, n_expert=4, n_expert_used=2,
               n_ff_exp=16)
CANVAS = 16
# transformers' generation defaults (DiffusionGemmaGenerationConfig._get_default_generation_params), written into
# the GGUF as the model's sampler settings.
SAMPLER = {"max_denoising_steps": 48, "t_min": 0.4, "t_max": 0.8, "entropy_bound": 0.1, "stability_threshold": 1,
           "confidence_threshold": 0.005}
SEED = 1
SC_TEMPERATURE = 0.7  # the forward-pass check feeds logits / 0.7 as self-conditioning, as generate feeds raw / t
N_BLOCKS = 2  # canvases generated in each run
EARLY_SEED = 13
EARLY_SAMPLER = {**SAMPLER, "t_min": 0.02, "t_max": 0.03}


# --------------------------------------------------------------------------------------------------------------------
# The GGUF layout: Gemma 4's MoE tensors for the shared (decoder) weights, plus what DiffusionGemma adds


def tensor_specs(dims: layout.Gemma4Dims = DIMS) -> list[layout.TensorSpec]:
    """Gemma 4's MoE layout (layer_output_scale = the decoder's layer_scalar), with each layer's
    enc_layer_output_scale (the encoder's layer_scalar, which HF does not tie) right after its layer_output_scale,
    and the self-conditioning MLP at the end: self_cond_pre_norm [D], self_cond_gate / self_cond_up [ff x D],
    self_cond_down [D x ff] (numpy shapes; ff is feed_forward_length, the dense FFN's width, as in HF)."""
    d, ff = dims.d_model, dims.n_ff
    specs = []
    for s in layout.tensor_specs(dims):
        specs.append(s)
        if s.name.endswith(".layer_output_scale.weight"):
            specs.append(layout.TensorSpec(f"blk.{s.layer}.enc_layer_output_scale.weight", (1,), "scalar", s.layer))
    specs += [
        layout.TensorSpec("self_cond_pre_norm.weight", (d,), "norm"),
        layout.TensorSpec("self_cond_gate.weight", (d, ff), "matrix"),
        layout.TensorSpec("self_cond_up.weight", (d, ff), "matrix"),
        layout.TensorSpec("self_cond_down.weight", (ff, d), "matrix"),
    ]
    return specs


def hf_name(gguf_name: str) -> str:
    """GGUF tensor name -> DiffusionGemmaForBlockDiffusion state-dict key. The encoder's text weights are the
    decoder's (tied), so every shared tensor maps to the decoder's copy; only the encoder's layer_scalar is its own."""
    top = {"token_embd.weight": "model.decoder.embed_tokens.weight", "output_norm.weight": "model.decoder.norm.weight",
           "self_cond_pre_norm.weight": "model.decoder.self_conditioning.pre_norm.weight",
           "self_cond_gate.weight": "model.decoder.self_conditioning.gate_proj.weight",
           "self_cond_up.weight": "model.decoder.self_conditioning.up_proj.weight",
           "self_cond_down.weight": "model.decoder.self_conditioning.down_proj.weight"}
    if gguf_name in top:
        return top[gguf_name]
    _, il, rest = gguf_name.split(".", 2)
    if rest == "enc_layer_output_scale.weight":
        return f"model.encoder.language_model.layers.{il}.layer_scalar"
    return tiny.hf_name(gguf_name).replace("model.layers.", "model.decoder.layers.", 1)


def add_metadata(w: GGUFWriter, dims: layout.Gemma4Dims, description: str) -> None:
    """gemma4's text keys under the "diffusion-gemma." prefix, the sampler's settings under ".diffusion.", and
    attention.causal false (as in the published 26B-A4B GGUF; the encoder is causal all the same)."""
    k = f"{ARCH}."
    w.add_name("diffusion-gemma-tiny")
    w.add_description(description)
    w.add_file_type(LlamaFileType.ALL_F32)
    layout.add_gemma4_metadata(w, dims, arch=ARCH)
    w.add_key_value(k + "attention.causal", False, GGUFValueType.BOOL)
    w.add_uint32(k + "diffusion.canvas_length", CANVAS)
    w.add_uint32(k + "diffusion.eb_max_steps", SAMPLER["max_denoising_steps"])
    w.add_float32(k + "diffusion.eb_t_min", SAMPLER["t_min"])
    w.add_float32(k + "diffusion.eb_t_max", SAMPLER["t_max"])
    w.add_float32(k + "diffusion.entropy_bound", SAMPLER["entropy_bound"])
    w.add_uint32(k + "diffusion.stability_threshold", SAMPLER["stability_threshold"])
    w.add_float32(k + "diffusion.confidence_threshold", SAMPLER["confidence_threshold"])
    layout.add_tokenizer(w, layout.fake_vocab(VOCAB), model="gemma4")


# --------------------------------------------------------------------------------------------------------------------
# The HF model


def hf_config(dims: layout.Gemma4Dims):
    from transformers import DiffusionGemmaConfig

    text = {
        "vocab_size": dims.n_vocab, "hidden_size": dims.d_model, "intermediate_size": dims.n_ff,
        "num_hidden_layers": dims.n_layer, "num_attention_heads": dims.n_head, "num_key_value_heads": dims.n_kv_head,
        "head_dim": dims.head_dim_swa, "global_head_dim": dims.head_dim_full,
        "num_global_key_value_heads": dims.n_kv_head_full, "sliding_window": dims.sliding_window,
        "layer_types": ["sliding_attention" if dims.is_swa(il) else "full_attention" for il in range(dims.n_layer)],
        "num_experts": dims.n_expert, "top_k_experts": dims.n_expert_used, "moe_intermediate_size": dims.n_ff_exp,
        "max_position_embeddings": dims.context_length, "rms_norm_eps": dims.rms_eps,
        "final_logit_softcapping": dims.final_logit_softcap, "hidden_activation": "gelu_pytorch_tanh",
        "rope_parameters": {
            "sliding_attention": {"rope_type": "default", "rope_theta": dims.rope_base_swa},
            "full_attention": {"rope_type": "proportional", "partial_rotary_factor": dims.partial_rotary_full,
                               "rope_theta": dims.rope_base_full}},
        "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2,
    }
    # The (required) vision tower is a minimal one and stays out of the GGUF: this is a text fixture.
    vision = {"model_type": "gemma4_vision", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
              "num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 16, "patch_size": 4,
              "position_embedding_size": 64}
    return DiffusionGemmaConfig(text_config=text, vision_config=vision, canvas_length=CANVAS,
                                boi_token_id=VOCAB - 4, eoi_token_id=VOCAB - 3, image_token_id=VOCAB - 2)


def build(seed: int):
    """-> (GGUF entries [(spec, payload)], DiffusionGemmaForBlockDiffusion holding exactly the GGUF's values)."""
    import torch
    from transformers import DiffusionGemmaForBlockDiffusion

    DIMS.check()
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    model = DiffusionGemmaForBlockDiffusion._from_config(hf_config(DIMS), attn_implementation="sdpa",
                                                         dtype=torch.float32).eval()
    # HF's plain per-expert loop (its default, grouped_mm, computes the same function with other kernels)
    model.set_experts_implementation("eager")
    state = model.state_dict()
    entries, loaded = [], set()
    for spec in tensor_specs():
        x = tiny.random_weights(spec, DIMS, rng).astype(np.float32)
        entries.append((spec, x))
        if spec.kind == "rope_freqs":
            continue  # llama.cpp's encoding of HF's proportional rope, which HF computes from the config
        key = hf_name(spec.name)
        assert tuple(state[key].shape) == spec.shape, (key, tuple(state[key].shape), spec)
        with torch.no_grad():
            state[key].copy_(torch.from_numpy(x.reshape(state[key].shape)))
        loaded.add(key)
    # Every text weight came from the GGUF: the decoder's directly, the encoder's through HF's ties (the same
    # tensors), the LM head is the embedding; the vision tower is not part of the fixture.
    encoder, decoder = "model.encoder.language_model.", "model.decoder."
    for key, value in state.items():
        if key in loaded or key.startswith(("model.encoder.vision_tower.", "model.encoder.embed_vision.")):
            continue
        twin = {"lm_head.weight": decoder + "embed_tokens.weight"}.get(key, key.replace(encoder, decoder, 1))
        assert twin in loaded and key != twin, f"{key} is not in the GGUF"
        assert value.data_ptr() == state[twin].data_ptr(), f"{key} is not tied to {twin}"
    return entries, model


def make_float64_exact(model) -> None:
    """HF's float32 spots in a float64 DiffusionGemma, each replaced by the same formula in float64 (asserted
    against HF's values where it runs), so the stored arrays are the exact function:

    - DiffusionGemmaRMSNorm casts to float32; the text rope builds inv_freq and angles in float32
      (make_tiny_gemma4's patches); the routers' softmax is float32 (make_router_float64_exact);
    - the embedding scale sqrt(d_model) is a float32 buffer;
    - self-conditioning takes softmax(logits) in float32 before the soft embedding;
    - the LM head casts its output to float32 before the soft-cap.

    The last two are hooks around HF's modules, set up by DecoderTrace."""
    import types

    import torch
    from transformers.models.diffusion_gemma.modeling_diffusion_gemma import DiffusionGemmaRMSNorm

    def rms_norm_forward(self, x):
        y = self._norm(x)  # HF: self._norm(x.float())
        return y * self.weight if self.with_scale else y

    for module in model.modules():
        if isinstance(module, DiffusionGemmaRMSNorm):
            module.forward = types.MethodType(rms_norm_forward, module)
    text, decoder = model.model.encoder.language_model, model.model.decoder
    for part in (text, decoder):
        assert float(part.embed_tokens.embed_scale) == DIMS.d_model ** 0.5  # 8: exact in float32 too
        part.embed_tokens.embed_scale = torch.tensor(DIMS.d_model ** 0.5, dtype=torch.float64)
        tiny.make_rope_float64_exact(part.rotary_emb, model.config.text_config.rope_parameters, DIMS)
        for layer in part.layers:
            tiny.make_router_float64_exact(layer.router)


class DecoderTrace:
    """Wraps model.forward (which generate calls too) so every decoder pass leaves its inputs and a trace behind in
    `last`: "canvas", "sc_logits", "soft", "dec_inputs", "final_norm", "logits", and per layer "route" (the router's
    input, i.e. the residual after attention, the chosen experts, the router's probabilities) and "layers" (the
    layer's output). With
    exact=True (a float64 model) the self-conditioning soft embedding and the logits are recomputed in float64
    (see make_float64_exact), each asserted against HF's float32 value."""

    def __init__(self, model, exact: bool):
        import torch

        decoder = model.model.decoder
        embed = decoder.embed_tokens
        cap = model.config.text_config.final_logit_softcapping
        self.model, self.last = model, {}
        last = self.last

        def self_conditioning_pre_hook(module, args):
            inputs_embeds, soft = args
            if last["sc_logits"] is not None:
                sc = last["sc_logits"].to(inputs_embeds.dtype)
                ours = torch.softmax(sc, dim=-1) @ embed.weight * embed.embed_scale
                # HF's float32 softmax of logits / t errs by ~|logit| x 2^-24 relative per probability
                tol = 1e-5 + float(sc.abs().max()) * 2.0 ** -21 * float((embed.weight * embed.embed_scale).abs().max())
                assert torch.allclose(ours, soft, rtol=0, atol=tol), float((ours - soft).abs().max())
                soft = ours if exact else soft
            last["soft"] = soft
            return inputs_embeds, soft

        def keep(key, il=None):
            def hook(module, args, out):
                if il is None:
                    last[key] = out
                else:
                    last.setdefault(key, {})[il] = (args[0], out[2], out[0]) if key == "route" else out
            return hook

        self.hooks = [decoder.self_conditioning.register_forward_pre_hook(self_conditioning_pre_hook),
                      decoder.self_conditioning.register_forward_hook(keep("dec_inputs")),
                      decoder.norm.register_forward_hook(keep("final_norm"))]
        for il, layer in enumerate(decoder.layers):
            self.hooks += [layer.router.register_forward_hook(keep("route", il)),
                           layer.register_forward_hook(keep("layers", il))]

        hf_forward = model.forward

        def forward(*args, **kwargs):
            last.clear()
            last["sc_logits"] = kwargs.get("self_conditioning_logits")
            out = hf_forward(*args, **kwargs)
            if kwargs.get("decoder_input_ids") is not None:
                last["canvas"] = kwargs["decoder_input_ids"].clone()
                if exact:
                    logits = cap * torch.tanh(model.lm_head(last["final_norm"]) / cap)
                    assert torch.allclose(logits.to(out.logits.dtype), out.logits, rtol=0, atol=1e-4)
                    out.logits = logits
                last["logits"] = out.logits
            return out

        model.forward = forward

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()
        del self.model.forward


def trace_arrays(last: dict, n_layer: int) -> dict:
    """The decoder pass's trace as stacked numpy arrays: [L, C, D] residuals after attention and after each layer,
    [L, C, k] expert ids."""
    return {
        "attn_residual": np.stack([last["route"][il][0].detach().numpy() for il in range(n_layer)]),
        "layer_out": np.stack([last["layers"][il][0].detach().numpy() for il in range(n_layer)]),
        "expert_ids": np.stack([last["route"][il][1].numpy() for il in range(n_layer)]).astype(np.int32),
    }


# --------------------------------------------------------------------------------------------------------------------
# The forward passes


def prompt_tokens(vocab: layout.FakeVocab, n_random: int, seed: int) -> np.ndarray:
    """<bos><|turn>user\\n, random ids, <turn|>\\n<|turn>model\\n."""
    rng = np.random.default_rng(seed)
    ids = ([2, 105, vocab.id("user"), layout.NEWLINE_ID] + rng.integers(3, VOCAB, n_random).tolist()
           + [106, layout.NEWLINE_ID, 105, vocab.id("model"), layout.NEWLINE_ID])
    return np.array(ids, dtype=np.int32)


def forward_passes(model, trace: DecoderTrace, prompt: np.ndarray, canvas: np.ndarray) -> dict[str, np.ndarray]:
    """Encoder over the prompt (positions 0..P-1) into a fresh cache; the decoder over `canvas` (positions P..P+C-1)
    without self-conditioning, then with logits / SC_TEMPERATURE of that pass as the self-conditioning input."""
    import torch
    from transformers import DynamicCache

    text, last = model.model.encoder.language_model, trace.last
    n_layer, p = DIMS.n_layer, len(prompt)
    enc: dict = {"attn_residual": {}, "layer_out": {}, "expert_ids": {}}

    def keep_route(il):
        def hook(module, args, out):
            enc["attn_residual"][il], enc["expert_ids"][il], enc.setdefault("probs", {})[il] = args[0], out[2], out[0]
        return hook

    def keep_layer(il):
        def hook(module, args, out):
            enc["layer_out"][il] = out
        return hook

    hooks = []
    for il, layer in enumerate(text.layers):
        hooks += [layer.router.register_forward_hook(keep_route(il)), layer.register_forward_hook(keep_layer(il))]
    x = torch.from_numpy(prompt.astype(np.int64))[None]
    c = torch.from_numpy(canvas.astype(np.int64))[None]
    positions = torch.arange(p, p + CANVAS)[None]
    rec: dict[str, np.ndarray] = {}
    with torch.no_grad():
        cache = DynamicCache(config=model.config.get_text_config())
        model.model.encoder(input_ids=x, past_key_values=cache, position_ids=torch.arange(p)[None])
        for h in hooks:
            h.remove()
        for il in range(n_layer):
            # [n_kv, P, head_dim]: K after k_norm and rope, V after the weightless v_norm (global: the K projection)
            rec[f"enc_k_{il}"] = cache.layers[il].keys[0].numpy()
            rec[f"enc_v_{il}"] = cache.layers[il].values[0].numpy()
        rec["enc_attn_residual"] = np.stack([enc["attn_residual"][il].numpy() for il in range(n_layer)])
        rec["enc_layer_out"] = np.stack([enc["layer_out"][il][0].numpy() for il in range(n_layer)])
        rec["enc_expert_ids"] = np.stack([enc["expert_ids"][il].numpy() for il in range(n_layer)]).astype(np.int32)

        nosc = model(decoder_input_ids=c, past_key_values=cache, decoder_position_ids=positions).logits
        rec["fwd_logits_nosc"] = nosc[0].numpy()
        rec["fwd_dec_inputs_nosc"] = last["dec_inputs"][0].numpy()
        sc = model(decoder_input_ids=c, past_key_values=cache, decoder_position_ids=positions,
                   self_conditioning_logits=nosc / SC_TEMPERATURE).logits
        assert cache.get_seq_length() == p, "the decoder must only read the cache"
        rec["fwd_logits_sc"] = sc[0].numpy()
        rec["fwd_sc_soft"] = last["soft"][0].numpy()
        rec["fwd_dec_inputs_sc"] = last["dec_inputs"][0].numpy()
        rec["fwd_final_norm_sc"] = last["final_norm"][0].numpy()
        for key, value in trace_arrays(last, n_layer).items():
            rec[f"fwd_dec_{key}"] = value
    probs = [enc["probs"][il] for il in range(n_layer)] + [last["route"][il][2] for il in range(n_layer)]
    ranked = np.sort(np.concatenate([p.detach().to(torch.float64).numpy() for p in probs]), axis=-1)[:, ::-1]
    rec["min_topk_prob_gap"] = float((ranked[:, DIMS.n_expert_used - 1] - ranked[:, DIMS.n_expert_used]).min())
    return rec


# --------------------------------------------------------------------------------------------------------------------
# model.generate with replayable draws


class Draws:
    """Stands in for torch.randint (the uniform canvases: the first canvas of each block and every renoise canvas)
    and torch.multinomial (the denoiser's categorical samples) during generate, drawing from numpy and keeping
    every draw. A categorical sample is the first token whose cumulative probability (float64 cumsum of the
    probabilities generate passes, itself float32 softmax(logits / t)) exceeds u, a float64 uniform."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.canvases: list[np.ndarray] = []
        self.uniforms: list[np.ndarray] = []

    def randint(self, *, low=0, high, size, device=None):
        import torch

        x = self.rng.integers(low, high, size=size, dtype=np.int64)
        self.canvases.append(x[0].copy())
        return torch.from_numpy(x)

    def multinomial(self, probs, num_samples):
        import torch

        assert num_samples == 1 and probs.ndim == 2
        u = self.rng.random(probs.shape[0])
        self.uniforms.append(u.copy())
        cdf = torch.cumsum(probs.to(torch.float64), dim=-1)
        index = torch.searchsorted(cdf, torch.from_numpy(u)[:, None], right=True)
        return index.clamp_max(probs.shape[-1] - 1)


def generate(model, trace: DecoderTrace, prompt: np.ndarray, seed: int, sampler: dict) -> tuple[dict, dict]:
    """model.generate(prompt, max_new_tokens=N_BLOCKS * CANVAS) with the sampler settings `sampler` (SAMPLER's
    keys), recording every denoising step: the canvas in, the raw logits (after the soft-cap, before the
    temperature), the processed logits, the denoiser's samples, the accepted positions, the argmax canvas and the
    stop decision. The sampler and the stopping rule are generate's own, wrapped to watch them.
    Returns (per-step records, the run's outputs and draws)."""
    import torch
    from transformers.models.diffusion_gemma.generation_diffusion_gemma import EntropyBoundSamplerConfig

    draws = Draws(seed)
    last, steps = trace.last, []
    make_sampler, make_stopping = model._prepare_sampler, model._prepare_diffusion_stopping_criteria

    def prepare_sampler(config):
        s = make_sampler(config)
        accept = s.accept_canvas

        def accept_canvas(current_canvas, denoiser_canvas, logits, cur_step):
            out = accept(current_canvas, denoiser_canvas, logits, cur_step)
            steps.append({"cur_step": int(cur_step), "canvas_in": last["canvas"][0].clone(),
                          "has_sc": last["sc_logits"] is not None, "raw": last["logits"][0].clone(),
                          "proc": logits[0].clone(), "denoiser": denoiser_canvas[0].clone(),
                          "accepted": s.accepted_token_mask[0].clone()})
            return out

        s.accept_canvas = accept_canvas
        return s

    def prepare_stopping(config):
        criteria = make_stopping(config)
        decide = criteria.__call__

        class Recorded:
            def __call__(self, argmax_canvas, logits, **kwargs):
                stop = decide(argmax_canvas, logits, **kwargs)
                steps[-1].update(argmax=argmax_canvas[0].clone(), stop=bool(stop.all()))
                return stop

            def reset(self):
                criteria.reset()

        return Recorded()

    settings = {k: v for k, v in sampler.items() if k != "entropy_bound"}
    settings["sampler_config"] = EntropyBoundSamplerConfig(entropy_bound=sampler["entropy_bound"])
    saved = torch.randint, torch.multinomial
    model._prepare_sampler, model._prepare_diffusion_stopping_criteria = prepare_sampler, prepare_stopping
    torch.randint, torch.multinomial = draws.randint, draws.multinomial
    try:
        with torch.no_grad():
            out = model.generate(torch.from_numpy(prompt.astype(np.int64))[None], max_new_tokens=N_BLOCKS * CANVAS,
                                 return_dict_in_generate=True, **settings)
    finally:
        torch.randint, torch.multinomial = saved
        del model._prepare_sampler, model._prepare_diffusion_stopping_criteria
    assert len(draws.uniforms) == len(steps) and all(len(u) == CANVAS for u in draws.uniforms)
    return steps, {"sequences": out.sequences[0].numpy(), "tokens_per_forward": out.tokens_per_forward.numpy(),
                   "uniforms": np.stack(draws.uniforms), "canvases": np.stack(draws.canvases)}


def step_arrays(steps: list[dict], run: dict, sampler: dict, prefix: str, keep_logits) -> dict[str, np.ndarray]:
    """The per-step record as arrays under `prefix` (see tests/fixtures/README.md), plus the margins of every
    discrete decision, computed in float64 from the processed logits: how far u is from the edges of the sampled
    token's CDF interval, how far each position's sum of lower entropies is from the bound (>= 0: accepted), and
    the gap between the two largest logits. Raw logits are kept for the steps keep_logits(block, i, n) picks."""
    import torch

    s_max, t_min, t_max = sampler["max_denoising_steps"], sampler["t_min"], sampler["t_max"]
    block, b = [], -1
    for st in steps:
        b += st["cur_step"] == s_max
        block.append(b)
    rec = {"block": np.array(block, np.int32), "cur_step": np.array([st["cur_step"] for st in steps], np.int32),
           "has_sc": np.array([st["has_sc"] for st in steps]), "stop": np.array([st["stop"] for st in steps])}
    # generate's temperature is float32: cur_step is an int32 tensor, so cur_step / S and t are float32 tensors
    rec["temperature"] = np.array([float(t_min + (t_max - t_min) * (torch.tensor(c, dtype=torch.int32) / s_max))
                                   for c in rec["cur_step"]], np.float32)
    entropy, sample_margin, bound_margin, argmax_gap = [], [], [], []
    for st, t, u in zip(steps, rec["temperature"].astype(np.float64), run["uniforms"]):
        raw, proc = st["raw"].to(torch.float64), st["proc"].to(torch.float64)
        assert torch.allclose(proc, raw / t, rtol=1e-12, atol=0), "processed logits are raw / t"
        logp = torch.log_softmax(proc, dim=-1)
        h = -(logp.exp() * logp).sum(-1)
        entropy.append(h)
        cdf = torch.cumsum(logp.exp(), dim=-1).numpy()
        tok = st["denoiser"].numpy()
        lo = np.where(tok > 0, cdf[np.arange(CANVAS), np.maximum(tok - 1, 0)], 0.0)
        sample_margin.append(np.minimum(u - lo, cdf[np.arange(CANVAS), tok] - u))
        order = torch.argsort(h)
        lower = torch.cumsum(h[order], 0) - h[order]
        margin = torch.empty_like(h)
        margin[order] = sampler["entropy_bound"] - lower
        assert torch.equal(margin >= 0, st["accepted"]), "acceptance is: sum of lower entropies <= bound"
        bound_margin.append(margin)
        top2 = torch.topk(proc, 2, dim=-1).values
        argmax_gap.append(top2[:, 0] - top2[:, 1])
        assert torch.equal(torch.argmax(proc, -1), st["argmax"])
    rec.update(
        canvas_in=np.stack([st["canvas_in"].numpy() for st in steps]).astype(np.int32),
        entropy=torch.stack(entropy).numpy().astype(np.float32),
        mean_entropy=torch.stack(entropy).mean(-1).numpy(),  # float64: what the stop rule compares
        denoiser=np.stack([st["denoiser"].numpy() for st in steps]).astype(np.int32),
        accepted=np.stack([st["accepted"].numpy() for st in steps]),
        argmax=np.stack([st["argmax"].numpy() for st in steps]).astype(np.int32),
        uniform=run["uniforms"], randint=run["canvases"].astype(np.int32),
        sample_margin=np.stack(sample_margin).astype(np.float32),
        bound_margin=torch.stack(bound_margin).numpy().astype(np.float32),
        argmax_gap=torch.stack(argmax_gap).numpy().astype(np.float32),
        sequences=run["sequences"].astype(np.int32), tokens_per_forward=run["tokens_per_forward"].astype(np.float32))
    n_in_block = np.bincount(rec["block"])
    kept = [i for i, (bl, st) in enumerate(zip(rec["block"], rec["cur_step"]))
            if keep_logits(bl, s_max - st, n_in_block[bl])]
    rec["raw_logits_at"] = np.array(kept, np.int32)
    rec["raw_logits"] = np.stack([steps[i]["raw"].numpy() for i in kept]).astype(np.float32)
    return {f"{prefix}{k}": v for k, v in rec.items()}


def check_replay(rec: dict, prefix: str) -> None:
    """The recorded run is self-consistent. torch.randint is called once per block (its first canvas) and once
    per step (the renoise canvas, drawn before the stop decision), so step i of block b reads canvas number
    b + i: at a block's first step that is the block's initial canvas, later the previous step's renoise canvas,
    whose positions that step did not accept are replaced."""
    g = {k[len(prefix):]: v for k, v in rec.items() if k.startswith(prefix)}
    n_steps, n_blocks = len(g["block"]), int(g["block"][-1]) + 1
    assert len(g["randint"]) == n_blocks + n_steps
    for i in range(n_steps):
        draw = g["randint"][g["block"][i] + i]
        if i > 0 and g["block"][i] == g["block"][i - 1]:
            draw = np.where(g["accepted"][i - 1], g["denoiser"][i - 1], draw)
        assert np.array_equal(g["canvas_in"][i], draw), f"step {i}"


# --------------------------------------------------------------------------------------------------------------------


def make(out_dir: str) -> None:
    from importlib.metadata import version

    import torch

    entries, model = build(SEED)
    vocab = layout.fake_vocab(VOCAB)
    gguf_path = os.path.join(out_dir, "diffusion_gemma_tiny.gguf")
    info = {"seed": SEED, "canvas_length": CANVAS, "sampler": SAMPLER,
            "goldens": "HF DiffusionGemmaForBlockDiffusion, SDPA attention, float64 (make_float64_exact), "
                       "stored as float32",
            "versions": {p: version(p) for p in ("torch", "transformers", "gguf", "numpy")},
            "command": "python tools/make_tiny_diffusion_gemma.py"}
    size = layout.write_gguf_streaming(
        gguf_path, lambda w: add_metadata(w, DIMS, f"random tiny DiffusionGemma test model: {json.dumps(info)}"),
        [(s.name, s.ne, Q.F32, (lambda x=x: iter([x.reshape(-1).view(np.uint8)]))) for s, x in entries],
        arch=ARCH)

    prompt = prompt_tokens(vocab, 5, 1000 + SEED)
    canvas = np.random.default_rng(2000 + SEED).integers(0, VOCAB, CANVAS).astype(np.int32)

    trace32 = DecoderTrace(model, exact=False)
    fwd32 = forward_passes(model, trace32, prompt, canvas)
    trace32.remove()
    model = model.to(torch.float64)
    make_float64_exact(model)
    trace = DecoderTrace(model, exact=True)
    rec = {"prompt": prompt, "fwd_canvas": canvas, "fwd_sc_temperature": np.float32(SC_TEMPERATURE)}
    rec.update(forward_passes(model, trace, prompt, canvas))
    info["min_topk_prob_gap"] = rec.pop("min_topk_prob_gap")
    fwd32.pop("min_topk_prob_gap")
    info["hf_float32_max_abs_diff"] = {k: float(np.abs(fwd32[k] - rec[k]).max())
                                       for k in ("fwd_logits_nosc", "fwd_logits_sc", "enc_k_5", "enc_v_5")}
    info["mistakes_logits_sc_max_abs_diff"] = mistakes(model, prompt, canvas, rec["fwd_logits_sc"])

    # The reference run: transformers' defaults. Raw logits are kept for each block's first two steps (the first
    # without self-conditioning) and last two, enough to check single decoder passes step by step.
    steps, run = generate(model, trace, prompt, SEED + 1, SAMPLER)
    rec.update(step_arrays(steps, run, SAMPLER, "step_", lambda block, i, n: i < 2 or i >= n - 2))
    rec["gen_sequences"], rec["gen_tokens_per_forward"] = rec.pop("step_sequences"), rec.pop("step_tokens_per_forward")
    check_replay(rec, "step_")
    assert not rec["step_stop"].any() and 1 not in rec["gen_sequences"][len(prompt):], "expected: no stop, no eos"

    # The early-stop run: with random weights the defaults never make the canvas confident (mean entropy < 0.005),
    # so this run lowers the temperature schedule; the stop rule (argmax stable for one step and mean entropy
    # below the threshold) and everything else keep their defaults. Both blocks stop early.
    early_prompt = prompt_tokens(vocab, 3, 3000 + EARLY_SEED)
    steps, run = generate(model, trace, early_prompt, EARLY_SEED, EARLY_SAMPLER)
    rec["early_prompt"] = early_prompt
    rec.update(step_arrays(steps, run, EARLY_SAMPLER, "early_", lambda block, i, n: i >= n - 2))
    check_replay(rec, "early_")
    assert rec["early_stop"].sum() == N_BLOCKS, "expected: every block stops early"
    info["early_sampler"] = EARLY_SAMPLER
    info["early_seed"] = EARLY_SEED
    info["stop_margin"] = float(np.abs(rec["early_mean_entropy"][rec["early_stop"]]
                                       - EARLY_SAMPLER["confidence_threshold"]).min())

    for key, value in list(rec.items()):
        if isinstance(value, np.ndarray) and value.dtype == np.float64 and not key.endswith("_uniform"):
            rec[key] = value.astype(np.float32)
    oracle_path = os.path.join(out_dir, "diffusion_gemma_tiny_oracle.npz")
    np.savez_compressed(oracle_path, info=np.array(json.dumps(info)), **rec)
    print(f"{size / 1e6:.2f} MB gguf, {os.path.getsize(oracle_path) / 1e6:.2f} MB oracle, info {info}")
    for prefix in ("step_", "early_"):
        print(prefix, "steps per block", np.bincount(rec[prefix + "block"]).tolist(),
              "accepted", rec[prefix + "accepted"].sum(-1).tolist())
        print(prefix, "mean entropy", np.round(rec[prefix + "mean_entropy"], 4).tolist())
        print(prefix, "min margins: sample %.3g, bound %.3g, argmax %.3g" % (
            rec[prefix + "sample_margin"].min(), np.abs(rec[prefix + "bound_margin"]).min(),
            rec[prefix + "argmax_gap"].min()))
    print("sequences", rec["gen_sequences"].tolist(), rec["early_sequences"].tolist())


def mistakes(model, prompt: np.ndarray, canvas: np.ndarray, logits_sc: np.ndarray) -> dict:
    """How far some DiffusionGemma porting mistakes move the self-conditioned forward logits (fwd_logits_sc), each
    applied to the model in place and undone."""
    import torch
    from transformers import DynamicCache

    def self_conditioned(sc_temperature=SC_TEMPERATURE):
        p, x = len(prompt), torch.from_numpy(prompt.astype(np.int64))[None]
        c, positions = torch.from_numpy(canvas.astype(np.int64))[None], torch.arange(p, p + CANVAS)[None]
        with torch.no_grad():
            cache = DynamicCache(config=model.config.get_text_config())
            model.model.encoder(input_ids=x, past_key_values=cache, position_ids=torch.arange(p)[None])
            nosc = model(decoder_input_ids=c, past_key_values=cache, decoder_position_ids=positions).logits
            return model(decoder_input_ids=c, past_key_values=cache, decoder_position_ids=positions,
                         self_conditioning_logits=nosc / sc_temperature).logits[0].numpy()

    def swap_layer_scales():
        for e, d in zip(model.model.encoder.language_model.layers, model.model.decoder.layers):
            scale = e.layer_scalar.clone()
            e.layer_scalar.copy_(d.layer_scalar)
            d.layer_scalar.copy_(scale)

    result = {}
    swap_layer_scales()
    result["encoder and decoder layer scales swapped"] = float(np.abs(self_conditioned() - logits_sc).max())
    swap_layer_scales()
    # (Scaling the soft embedding, e.g. forgetting its sqrt(d_model), changes nothing: self_cond_pre_norm is an
    # RMSNorm. Skipping the weightless norm after the sum does.)
    hook = model.model.decoder.self_conditioning.post_norm.register_forward_hook(lambda m, args, out: args[0])
    result["no norm after the self-conditioning sum"] = float(np.abs(self_conditioned() - logits_sc).max())
    hook.remove()
    result["self-conditioning on raw logits (no / t)"] = float(np.abs(self_conditioned(1.0) - logits_sc).max())
    assert np.array_equal(self_conditioned(), logits_sc), "the model is restored"
    return result


def main(argv: list[str] | None = None) -> None:
    tiny.hide_torchvision()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=tiny.FIXTURES, help="output folder (default tests/fixtures)")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    make(args.out)


if __name__ == "__main__":
    main()
