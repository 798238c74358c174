"""Build the tiny Gemma 4 fixtures with a vision tower: tests/fixtures/gemma4_tiny_vision_*.

Two small random Gemma 4 models, each a text decoder (as in tools/make_tiny_gemma4.py) plus a ViT
vision tower and its projector, with float64 goldens from Hugging Face transformers' Gemma4ForConditionalGeneration
run on exactly the values the GGUF files hold:

- `gemma4_tiny_vision_f32.gguf`: Ollama's monolithic layout, one file with the text model, the `gemma4.vision.*`
  keys, the `v.*` / `mm.*` tensors, the per-linear clamp scalars and Ollama's packed `v.clamp_data`. F32, except
  `v.patch_embd.weight`, which is F16 as Ollama stores it.
- `gemma4_tiny_vision_q8_0.gguf` + `gemma4_tiny_vision_q8_0.mmproj.gguf`: llama.cpp's pair, a text-only GGUF and an
  mmproj (architecture "clip", projector "gemma4v") with the tower's matrices in Q8_0; this tower standardizes its
  pooled features (v.std_bias, v.std_scale).
- `gemma4_tiny_vision_inputs.npz` (shared): the exact pixel_values / image_position_ids of HF's Gemma 4 image
  processor for a portrait and a landscape photo at token budgets 70 and 140, and a square one at 70.
- `gemma4_tiny_vision_<name>.npz`: the soft tokens after `embed_vision` for each input, chat prompts with one
  image (four cases) and with two (portrait + square) with HF's logits at every position, and the tower's
  intermediates for one image. tests/fixtures/README.md documents every key.

The weights are random but shaped so that every part matters (see make_tiny_gemma4.random_weights); the clamp
scalars of the clippable linears are finite and calibrated so that several of them really clip activations.
Quantised tensors are dequantised and loaded back into HF before anything is computed, so the goldens test the
engine, not the quantisation. The goldens are computed in float64 with HF's float32 spots lifted to float64
(make_tiny_gemma4.make_float64_exact plus the vision rope and the pooler, see make_vision_float64_exact) and
stored as float32.

Needs torch, transformers, gguf and Pillow (the project does not depend on torch, transformers or Pillow); run it
with the python of a scratch venv outside the repo (torch 2.13.0, transformers 5.23.0, gguf 0.19.0, Pillow):

    python tools/make_tiny_gemma4_vision.py          # the shared inputs and both models into tests/fixtures/
    python tools/make_tiny_gemma4_vision.py f32      # the inputs and just one model
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import types
from dataclasses import dataclass, field, replace

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_synthetic_gguf as layout  # noqa: E402  (the shared Gemma 4 GGUF layout and fake tokenizer)
import make_tiny_gemma4 as tiny  # noqa: E402  (text weights, quantisers, HF text config, float64 patches)
from gguf import GGMLQuantizationType as Q, GGUFWriter  # noqa: E402

FIXTURES = tiny.FIXTURES
VOCAB = tiny.VOCAB
PREFIX = "gemma4_tiny_vision_"

# The multimodal markers, at ids inside the 512-token vocabulary (the real model has them at 255999, 256000,
# 258880..258884). An engine finds them by their text in tokenizer.ggml.tokens; HF's config gets these ids.
MARKERS = {"<|image>": 20, "<|audio>": 21, "<|image|>": 22, "<|audio|>": 23, "<image|>": 24, "<audio|>": 25,
           "<|video|>": 26}
HF_MARKER_KEYS = {"boi_token_id": "<|image>", "image_token_id": "<|image|>", "eoi_token_id": "<image|>",
                  "boa_token_id": "<|audio>", "audio_token_id": "<|audio|>", "eoa_token_index": "<audio|>",
                  "video_token_id": "<|video|>"}

# Clippable linears in Ollama's v.clamp_data order, with their HF module names; then the 4 bounds of each.
CLIPPED = [("attn_q", "self_attn.q_proj"), ("attn_k", "self_attn.k_proj"), ("attn_v", "self_attn.v_proj"),
           ("attn_out", "self_attn.o_proj"), ("ffn_gate", "mlp.gate_proj"), ("ffn_up", "mlp.up_proj"),
           ("ffn_down", "mlp.down_proj")]
CLAMP_SUFFIXES = ("input_min", "input_max", "output_min", "output_max")
NORMS = [("ln1", "input_layernorm"), ("attn_post_norm", "post_attention_layernorm"),
         ("ln2", "pre_feedforward_layernorm"), ("ffn_post_norm", "post_feedforward_layernorm")]

IMAGE_FILES = {"portrait": "images/portrait_exif.jpg", "landscape": "images/landscape.jpg",
               "square": "images/photo.webp"}  # relative to tests/fixtures
BUDGETS = (70, 140)
CASES = [f"{img}_{b}" for b in BUDGETS for img in ("portrait", "landscape")]  # the single-image prompts
PAIR = ("portrait", "square")  # the two-image prompt: these two in this order, one processor call at PAIR_BUDGET
PAIR_BUDGET = 70
INPUTS = CASES + [f"square_{PAIR_BUDGET}"]  # every (image, budget) the tower sees
DEBUG_CASE = "landscape_70"  # the case whose tower intermediates are stored


@dataclass(frozen=True)
class VisionDims:
    """The tower's hyper-parameters (E2B: 16 layers, 768 wide, 12 heads x 64, FFN 3072, 10240 positions)."""

    n_layer: int = 3
    d: int = 64
    n_head: int = 4
    head_dim: int = 16
    n_ff: int = 128
    patch: int = 16
    pool: int = 3
    n_pos: int = 64  # position_embedding_size: the grids here are at most 42 patches on a side
    eps: float = 1e-6
    standardize: bool = False  # (pooled - v.std_bias) * v.std_scale before the projector (E2B: no, per HF's default)

    def ollama_keys(self) -> dict:
        """The gemma4.vision.* keys of Ollama's monolithic blob (without the `gemma4.` prefix), in its order."""
        return {"vision.block_count": self.n_layer, "vision.embedding_length": self.d,
                "vision.attention.head_count": self.n_head, "vision.feed_forward_length": self.n_ff,
                "vision.patch_size": self.patch, "vision.num_channels": 3,
                "vision.projector.scale_factor": self.pool, "vision.attention.layer_norm_epsilon": self.eps}


@dataclass(frozen=True)
class TinyVision:
    name: str
    text: layout.Gemma4Dims
    vision: VisionDims
    weights: str  # "f32" (Ollama types: F32, patch_embd F16) or "q8_0" (llama.cpp types, see vision_type)
    layout: str  # "ollama" (one file) or "llamacpp" (text GGUF + mmproj)
    seed: int


TEXT = layout.Gemma4Dims(n_vocab=VOCAB, context_length=2048)
CONFIGS = {c.name: c for c in [
    # (2 sliding + 1 global) x 2, the last 3 layers KV-shared with a double-wide FFN, MQA, PLE 8; window 8, so the
    # image's soft tokens span many windows. d_model 48: not the tower's 64, and sqrt(48) is not round.
    TinyVision("f32", replace(TEXT, n_layer=6, d_model=48, n_head=4, n_kv_head=1, head_dim_swa=16, head_dim_full=32,
                              n_ff=128, double_wide_shared_ffn=True, swa_per_period=2, n_kv_shared=3, ple_dim=8,
                              sliding_window=8, tower_keys=VisionDims().ollama_keys()),
               VisionDims(), "f32", "ollama", seed=21),
    # The same pattern at d_model 96, GQA 2, FFN 192, PLE 16, window 12; Q8_0 everywhere a row has 32k entries.
    # Its tower standardizes the pooled features (v.std_bias, v.std_scale), which also makes the pooler's sqrt(d)
    # matter (without standardize the projector's weightless RMSNorm cancels it).
    TinyVision("q8_0", replace(TEXT, n_layer=6, d_model=96, n_head=4, n_kv_head=2, head_dim_swa=32, head_dim_full=64,
                               n_ff=192, double_wide_shared_ffn=False, swa_per_period=2, n_kv_shared=3, ple_dim=16,
                               sliding_window=12),
               VisionDims(standardize=True), "q8_0", "llamacpp", seed=22),
]}


def fake_vocab() -> layout.FakeVocab:
    specials = {i: s for i, s in layout.SPECIAL_TOKENS.items() if i < VOCAB}
    specials.update({i: s for s, i in MARKERS.items()})
    return layout.fake_vocab(VOCAB, specials)


# --------------------------------------------------------------------------------------------------------------------
# The vision tensors


@dataclass(frozen=True)
class VSpec:
    name: str  # GGUF name
    ne: tuple[int, ...]
    kind: str  # "patch", "pos", "matrix", "norm", "qk_norm", "proj", "clamp", "std_bias", "std_scale"
    hf: str  # HF Gemma4ForConditionalGeneration state-dict key
    layer: int = -1

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(reversed(self.ne))


def vision_specs(v: VisionDims, d_model: int) -> list[VSpec]:
    """Every v.* / mm.* tensor (both layouts use the same names; v.clamp_data is written separately)."""
    tower = "model.vision_tower."
    specs = [VSpec("v.patch_embd.weight", (v.patch, v.patch, 3, v.d), "patch",
                   tower + "patch_embedder.input_proj.weight"),
             VSpec("v.position_embd.weight", (v.d, v.n_pos, 2), "pos",
                   tower + "patch_embedder.position_embedding_table")]
    qkv = v.n_head * v.head_dim
    ne = {"attn_q": (v.d, qkv), "attn_k": (v.d, qkv), "attn_v": (v.d, qkv), "attn_out": (qkv, v.d),
          "ffn_gate": (v.d, v.n_ff), "ffn_up": (v.d, v.n_ff), "ffn_down": (v.n_ff, v.d)}
    clipped = dict(CLIPPED)
    norms = dict(NORMS)
    for il in range(v.n_layer):
        b, h = f"v.blk.{il}.", f"{tower}encoder.layers.{il}."

        def matrix(n):
            return VSpec(f"{b}{n}.weight", ne[n], "matrix", f"{h}{clipped[n]}.linear.weight", il)

        def norm(n):
            return VSpec(f"{b}{n}.weight", (v.d,), "norm", f"{h}{norms[n]}.weight", il)

        specs += [norm("ln1"), matrix("attn_q"), matrix("attn_k"), matrix("attn_v"),
                  VSpec(b + "attn_q_norm.weight", (v.head_dim,), "qk_norm", h + "self_attn.q_norm.weight", il),
                  VSpec(b + "attn_k_norm.weight", (v.head_dim,), "qk_norm", h + "self_attn.k_norm.weight", il),
                  matrix("attn_out"), norm("attn_post_norm"), norm("ln2"), matrix("ffn_gate"), matrix("ffn_up"),
                  matrix("ffn_down"), norm("ffn_post_norm")]
        specs += [VSpec(f"{b}{n}.{s}", (1,), "clamp", f"{h}{m}.{s}", il) for n, m in CLIPPED for s in CLAMP_SUFFIXES]
    if v.standardize:
        specs += [VSpec("v.std_bias", (v.d,), "std_bias", tower + "std_bias"),
                  VSpec("v.std_scale", (v.d,), "std_scale", tower + "std_scale")]
    specs.append(VSpec("mm.input_projection.weight", (v.d, d_model), "proj",
                       "model.embed_vision.embedding_projection.weight"))
    return specs


def llamacpp_name(hf_key: str) -> str:
    """The name llama.cpp's converter (conversion/gemma.py, Gemma4VisionAudioModel.modify_tensors) gives an HF
    vision tensor: its renames, then gguf-py's MMPROJ tensor-name table. Used to check vision_specs."""
    import gguf

    name = hf_key.replace("model.vision_tower.encoder.", "vision_model.model.").replace(".linear.weight", ".weight")
    if name.endswith("position_embedding_table"):
        name += ".weight"
    table = gguf.get_tensor_name_map(gguf.MODEL_ARCH.MMPROJ, 128)
    mapped = table.get_name(name, try_suffixes=(".weight", ".bias", ".input_max", ".input_min", ".output_max",
                                                ".output_min"))
    assert mapped is not None, hf_key
    return mapped


def vision_type(cfg: TinyVision, spec: VSpec) -> Q:
    """Ollama's monolithic blob: patch_embd F16 (its im2col wants F16), everything else here F32 (Ollama itself
    stores the matrices F16). llama.cpp's converter at --outtype q8_0: patch_embd F32 (tensor_force_quant: F16 only
    for an F16 file), position_embd F32, 1-D tensors F32, every other matrix Q8_0."""
    if spec.kind in ("norm", "qk_norm", "clamp", "pos", "std_bias", "std_scale"):
        return Q.F32
    if cfg.weights == "f32":
        return Q.F16 if spec.kind == "patch" else Q.F32
    if spec.kind == "patch":
        return Q.F32
    assert spec.ne[0] % 32 == 0, spec
    return Q.Q8_0


def random_vision(spec: VSpec, v: VisionDims, rng: np.random.Generator) -> np.ndarray:
    """Like make_tiny_gemma4.random_weights: activations of unit scale, norm weights away from 1, attention that is
    neither uniform nor one-hot over ~1000 patches, soft tokens about as large as the text embeddings."""
    if spec.kind == "patch":
        return rng.normal(0, 2 / math.sqrt(3 * v.patch ** 2), spec.shape)  # pixels in [-1, 1] -> unit scale
    if spec.kind == "pos":
        return rng.normal(0, 0.5, spec.shape)
    if spec.kind in ("matrix",):
        return rng.normal(0, 1 / math.sqrt(spec.ne[0]), spec.shape)
    if spec.kind == "proj":
        return rng.normal(0, 3 / math.sqrt(spec.ne[0]), spec.shape)
    if spec.kind == "qk_norm":
        return rng.uniform(0.4, 0.9, spec.shape)
    if spec.kind == "norm":
        return rng.uniform(0.5, 1.5, spec.shape)
    if spec.kind == "std_bias":
        return rng.normal(0, 10.0, spec.shape)  # the pooled features (x sqrt(64)) have an rms of ~20
    if spec.kind == "std_scale":
        return rng.uniform(0.5, 2.0, spec.shape)
    raise ValueError(spec)


def patch_embd_to_hf(values: np.ndarray, v: VisionDims) -> np.ndarray:
    """GGUF v.patch_embd (numpy [d, channel, row, col]) -> HF input_proj.weight [d, row*col*channel]."""
    return values.reshape(v.d, 3, v.patch, v.patch).transpose(0, 2, 3, 1).reshape(v.d, -1)


def patch_embd_from_hf(w: np.ndarray, v: VisionDims) -> np.ndarray:
    """HF input_proj.weight [d, (row, col, channel)] -> numpy [d, channel, row, col] = GGUF ne [p, p, 3, d]
    (Ollama's reshapePatchEmbed and llama.cpp's permute(0, 3, 1, 2))."""
    return w.reshape(v.d, v.patch, v.patch, 3).transpose(0, 3, 1, 2)


# --------------------------------------------------------------------------------------------------------------------
# The HF model


def hf_model(cfg: TinyVision):
    from transformers import Gemma4Config, Gemma4ForConditionalGeneration, Gemma4VisionConfig

    v = cfg.vision
    vision = Gemma4VisionConfig(
        hidden_size=v.d, intermediate_size=v.n_ff, num_hidden_layers=v.n_layer, num_attention_heads=v.n_head,
        num_key_value_heads=v.n_head, head_dim=v.head_dim, patch_size=v.patch, pooling_kernel_size=v.pool,
        position_embedding_size=v.n_pos, use_clipped_linears=True, standardize=v.standardize, rms_norm_eps=v.eps,
        hidden_activation="gelu_pytorch_tanh", rope_parameters={"rope_type": "axial", "rope_theta": 100.0})
    markers = {k: MARKERS[s] for k, s in HF_MARKER_KEYS.items()}
    config = Gemma4Config(text_config=tiny.hf_config(cfg.text), vision_config=vision, audio_config=None,
                          tie_word_embeddings=True, **markers)
    config._attn_implementation = "sdpa"
    config.text_config._attn_implementation = "sdpa"
    config.vision_config._attn_implementation = "sdpa"  # SDPA keeps float64; eager runs its softmax in float32
    model = Gemma4ForConditionalGeneration(config).eval()
    assert model.model.audio_tower is None
    return model


def sha(values: np.ndarray) -> str:
    """Fingerprint of a tensor's float32 values in GGUF (numpy) layout; the test dequantises the GGUF and compares."""
    return hashlib.sha256(np.ascontiguousarray(values, dtype=np.float32).tobytes()).hexdigest()[:16]


@dataclass
class Built:
    model: object
    text: list  # [(TensorSpec, qtype, payload)]
    vision: list  # [(VSpec, qtype, payload)] without the clamp scalars
    clamps: dict = field(default_factory=dict)  # "v.blk.N.<linear>" -> [in_min, in_max, out_min, out_max] float32
    hashes: dict = field(default_factory=dict)  # GGUF name -> sha of the values HF holds


def build(cfg: TinyVision) -> Built:
    import torch

    text_dims, v = cfg.text, cfg.vision
    text_dims.check()
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    model = hf_model(cfg)
    state = model.state_dict()
    out = Built(model, [], [])
    loaded = set()

    def load(key, values):
        assert tuple(state[key].shape) == values.shape, (key, tuple(state[key].shape), values.shape)
        with torch.no_grad():
            state[key].copy_(torch.from_numpy(np.ascontiguousarray(values)))
        loaded.add(key)

    for spec in layout.tensor_specs(text_dims):
        qtype = tiny.weight_type(cfg.weights, spec, {})
        x = tiny.random_weights(spec, text_dims, rng).astype(np.float32)
        payload, values = tiny.roundtrip(x.reshape(-1, spec.ne[0]), qtype)
        out.text.append((spec, qtype, payload))
        out.hashes[spec.name] = sha(values)
        if spec.kind == "rope_freqs":
            continue
        load("model.language_model." + tiny.hf_name(spec.name).removeprefix("model."), values.reshape(spec.shape))

    for spec in vision_specs(v, text_dims.d_model):
        assert llamacpp_name(spec.hf) == spec.name, (spec.hf, llamacpp_name(spec.hf))
        if spec.kind == "clamp":
            continue  # set by calibrate_clamps
        qtype = vision_type(cfg, spec)
        x = random_vision(spec, v, rng).astype(np.float32)
        payload, values = tiny.roundtrip(x.reshape(-1, spec.ne[0]), qtype)
        out.vision.append((spec, qtype, payload))
        out.hashes[spec.name] = sha(values)
        values = values.reshape(spec.shape)
        if spec.kind == "patch":
            values = patch_embd_to_hf(values, v)
            assert np.array_equal(patch_embd_from_hf(values, v), payload.reshape(spec.shape).astype(np.float32))
        load(spec.hf, values)

    # Every HF weight comes from the GGUF except the clamp buffers (next) and the tied LM head.
    clamp_keys = {s.hf for s in vision_specs(v, text_dims.d_model) if s.kind == "clamp"}
    expected = {k for k in state if k != "lm_head.weight"} - clamp_keys
    assert loaded == expected, sorted(expected ^ loaded)
    assert torch.equal(model.lm_head.weight, model.model.language_model.embed_tokens.weight)
    return out


def clippable_linears(model) -> dict:
    """'v.blk.N.<linear>' -> HF's Gemma4ClippableLinear module."""
    layers = model.model.vision_tower.encoder.layers
    return {f"v.blk.{il}.{n}": layer.get_submodule(m) for il, layer in enumerate(layers) for n, m in CLIPPED}


def calibrate_clamps(built: Built, cfg: TinyVision, inputs: dict) -> None:
    """Give every clippable linear finite bounds: each of its 4 bounds is the extreme value seen on the test images
    (with the clamps off) times a factor drawn from U(0.5, 1.25). About half the bounds are therefore inside the
    range and really clip the outermost activations (up to a few per cent); the rest are finite but idle. The stored
    values are float32."""
    import torch

    model = built.model
    seen: dict[str, list] = {}
    hooks = []
    for name, mod in clippable_linears(model).items():
        def hook(m, args, out, name=name):
            x = args[0]
            r = [float(x.min()), float(x.max()), float(out.min()), float(out.max())]
            old = seen.get(name, r)
            seen[name] = [min(old[0], r[0]), max(old[1], r[1]), min(old[2], r[2]), max(old[3], r[3])]
        hooks.append(mod.register_forward_hook(hook))
    with torch.no_grad():
        for case in INPUTS:
            pv, pos = inputs[case]["pixel_values"], inputs[case]["positions"]
            model.model.get_image_features(torch.from_numpy(pv)[None], torch.from_numpy(pos.astype(np.int64))[None])
    for h in hooks:
        h.remove()
    rng = np.random.default_rng(1000 + cfg.seed)
    for name, mod in clippable_linears(model).items():
        lo_in, hi_in, lo_out, hi_out = seen[name]
        assert lo_in < 0 < hi_in and lo_out < 0 < hi_out, (name, seen[name])
        f = rng.uniform(0.5, 1.25, 4)
        bounds = np.array([lo_in * f[0], hi_in * f[1], lo_out * f[2], hi_out * f[3]], dtype=np.float32)
        built.clamps[name] = bounds
        with torch.no_grad():
            for s, b in zip(CLAMP_SUFFIXES, bounds):
                getattr(mod, s).fill_(float(b))
        for s, b in zip(CLAMP_SUFFIXES, bounds):
            built.hashes[f"{name}.{s}"] = sha(np.array([b]))
    built.hashes["v.clamp_data"] = sha(clamp_data(built.clamps, cfg.vision))


def clamp_data(clamps: dict, v: VisionDims) -> np.ndarray:
    """Ollama's packed v.clamp_data: per layer, per linear (attn_q, attn_k, attn_v, attn_out, ffn_gate, ffn_up,
    ffn_down), (in_min, in_max, out_min, out_max); then 4 floats for the projector, all 0 here because HF's
    embed_vision projection has no clamp (Ollama's converter leaves the slots it finds no scalars for at 0)."""
    rows = [clamps[f"v.blk.{il}.{n}"] for il in range(v.n_layer) for n, _ in CLIPPED]
    return np.concatenate(rows + [np.zeros(4, np.float32)]).astype(np.float32)


def make_vision_float64_exact(model) -> None:
    """The vision tower's float32 spots, beyond make_tiny_gemma4.make_float64_exact's RMSNorm patch (which covers
    the tower's norms too), recomputed in float64 with HF's own formulas:

    - Gemma4VisionRotaryEmbedding: inv_freq is a float32 buffer and forward casts positions and inv_freq to float32;
    - Gemma4VisionPooler: the averaging weights, the pooling matmul and the sqrt(d) scale run in float32.

    The pixel values are passed in as float64 (their float32 values, exactly), so 2 (x - 0.5) is exact too."""
    import torch
    from transformers.models.gemma4.modeling_gemma4 import Gemma4VisionPooler, Gemma4VisionRotaryEmbedding

    for module in model.modules():
        if isinstance(module, Gemma4VisionRotaryEmbedding):
            cfg = module.config
            spatial = cfg.head_dim // 2
            exponent = torch.arange(0, spatial, 2, dtype=torch.float64) / spatial
            inv = 1.0 / (cfg.rope_parameters["rope_theta"] ** exponent)
            assert torch.allclose(inv, module.inv_freq.to(torch.float64), rtol=1e-6, atol=0)
            assert module.attention_scaling == 1.0
            module.inv_freq64 = inv

            def rope_forward(self, x, position_ids):
                freqs = position_ids[..., None].to(torch.float64) * self.inv_freq64
                cos = self.recomposition_frequencies(freqs.cos())
                sin = self.recomposition_frequencies(freqs.sin())
                return cos.to(x.dtype), sin.to(x.dtype)

            module.forward = types.MethodType(rope_forward, module)
        if isinstance(module, Gemma4VisionPooler):
            def pooler_forward(self, hidden_states, pixel_position_ids, padding_positions, output_length=None):
                hidden_states = hidden_states.masked_fill(padding_positions.unsqueeze(-1), 0.0)
                if hidden_states.shape[1] != output_length:
                    # HF's _avg_pool_by_positions without its .float() casts
                    k = int((hidden_states.shape[1] // output_length) ** 0.5)
                    pos = pixel_position_ids.clamp(min=0)
                    max_x = pos[..., 0].max(dim=-1, keepdim=True)[0] + 1
                    idx = torch.div(pos, k, rounding_mode="floor")
                    idx = idx[..., 0] + (max_x // k) * idx[..., 1]
                    weights = torch.nn.functional.one_hot(idx.long(), output_length).to(hidden_states.dtype) / k ** 2
                    padding_positions = torch.logical_not((weights == 0).all(dim=1))
                    hidden_states = weights.transpose(1, 2) @ hidden_states
                return hidden_states * self.root_hidden_size, padding_positions

            # Same function as HF's: a 6 x 9 patch grid padded with 9 rows, pooled to 6 soft tokens.
            gx, gy = torch.meshgrid(torch.arange(9), torch.arange(6), indexing="xy")
            pos = torch.cat([torch.stack([gx, gy], -1).reshape(54, 2), torch.full((9, 2), -1)])[None]
            pad = (pos == -1).all(-1)
            h = torch.randn(1, 63, module.hidden_size, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
            want, want_mask = module.forward(h, pos, pad, output_length=7)
            module.forward = types.MethodType(pooler_forward, module)
            got, got_mask = module.forward(h, pos, pad, output_length=7)
            assert torch.equal(got_mask, want_mask) and torch.allclose(got, want.to(torch.float64), rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------------------------------------------------
# Images and prompts


def source_images() -> dict:
    """name -> (PIL RGB image, path relative to tests/fixtures): real photographs from tests/fixtures/images/ (see
    tools/make_image_goldens.py), opened the way transformers' load_image opens a file: Image.open, then
    ImageOps.exif_transpose (portrait_exif.jpg is stored 480 x 320 with EXIF orientation 6 and shows 320 x 480)."""
    from PIL import Image, ImageOps

    images = {}
    for kind, fname in IMAGE_FILES.items():
        with Image.open(os.path.join(FIXTURES, fname)) as im:
            images[kind] = (ImageOps.exif_transpose(im), fname)  # the processor converts to RGB
    assert images["portrait"][0].height > images["portrait"][0].width
    assert images["landscape"][0].width > images["landscape"][0].height
    return images


def preprocess(images: list, budget: int) -> dict:
    """HF's Gemma 4 image processor (the PIL backend) on a list of images at one budget; returns the padded batch
    as HF produces it and each image's unpadded patches and positions."""
    from transformers.models.gemma4.image_processing_pil_gemma4 import Gemma4ImageProcessorPil

    proc = Gemma4ImageProcessorPil(max_soft_tokens=budget)
    assert (proc.patch_size, proc.pooling_kernel_size, proc.do_normalize) == (16, 3, False)
    out = proc(images=images, return_tensors="np")
    pv, pos = out["pixel_values"], out["image_position_ids"]
    assert pv.dtype == np.float32 and pv.shape[1:] == (budget * 9, 768), pv.shape
    per_image = []
    for i in range(len(images)):
        real = (pos[i] != -1).all(-1)
        n = int(real.sum())
        assert real[:n].all() and not real[n:].any(), "padding is at the end"
        p, q = pv[i, :n], pos[i, :n].astype(np.int32)
        gw, gh = int(q[:, 0].max()) + 1, int(q[:, 1].max()) + 1
        # raster order over the grid, (x, y) positions: patch r is at x = r % gw, y = r // gw
        assert n == gw * gh and (q[:, 0] == np.arange(n) % gw).all() and (q[:, 1] == np.arange(n) // gw).all()
        assert gw % 3 == 0 and gh % 3 == 0 and out["num_soft_tokens_per_image"][i] == n // 9
        u8 = np.rint(p * 255).astype(np.uint8)
        # the processor's values are float32(k / 255) for the bytes k of the resized image
        assert np.array_equal(u8.astype(np.float32) / np.float32(255), p)
        assert np.array_equal((u8.astype(np.float64) / 255).astype(np.float32), p)
        per_image.append({"pixel_values": p, "pixels_u8": u8, "positions": q, "grid": (gh, gw), "n_soft": n // 9})
    return {"pixel_values": pv, "positions": pos, "images": per_image}


def image_span(n_soft: int) -> list[int]:
    return [MARKERS["<|image>"]] + [MARKERS["<|image|>"]] * n_soft + [MARKERS["<image|>"]]


def chat(vocab: layout.FakeVocab, parts: list) -> np.ndarray:
    """<bos><|turn>user\\n {parts} <turn|>\\n<|turn>model\\n; a part is a list of ids or a string of known words."""
    ids = [2, 105, vocab.id("user"), layout.NEWLINE_ID]
    for p in parts:
        ids += p if isinstance(p, list) else [vocab.id(w) for w in p.split(" ")]
    ids += [106, layout.NEWLINE_ID, 105, vocab.id("model"), layout.NEWLINE_ID]
    return np.array(ids, dtype=np.int32)


# --------------------------------------------------------------------------------------------------------------------
# Goldens


def run_case(model, dtype, ids: np.ndarray, pv: np.ndarray, pos: np.ndarray):
    """HF's full forward on one prompt: (logits [T, V], soft tokens [n_soft, d_model]) as float64 numpy."""
    import torch

    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(ids.astype(np.int64))[None],
                    pixel_values=torch.from_numpy(pv).to(dtype), image_position_ids=torch.from_numpy(pos),
                    use_cache=False)
    return out.logits[0].to(torch.float64).numpy(), out.image_hidden_states.to(torch.float64).numpy()


def tower_trace(model, pv: np.ndarray, pos: np.ndarray) -> dict:
    """The tower's intermediates for one image, run unpadded (float64)."""
    import torch

    tower = model.model.vision_tower
    got: dict = {"layer_out": []}
    hooks = [tower.patch_embedder.register_forward_hook(lambda m, a, o: got.__setitem__("inputs_embeds", o)),
             tower.patch_embedder.input_proj.register_forward_hook(lambda m, a, o: got.__setitem__("patch", o))]
    hooks += [layer.register_forward_hook(lambda m, a, o: got["layer_out"].append(o)) for layer in tower.encoder.layers]
    with torch.no_grad():
        x, p = torch.from_numpy(pv).to(torch.float64)[None], torch.from_numpy(pos.astype(np.int64))[None]
        pooled = tower(pixel_values=x, pixel_position_ids=p).last_hidden_state
        soft = model.model.embed_vision(inputs_embeds=pooled)
    for h in hooks:
        h.remove()

    def f(t):
        return t.detach().to(torch.float64).numpy()

    return {"patch_embd": f(got["patch"][0]), "inputs_embeds": f(got["inputs_embeds"][0]),
            "layer_out": np.stack([f(t[0]) for t in got["layer_out"]]), "pooled": f(pooled), "soft_tokens": f(soft)}


def clip_fractions(model, inputs: dict) -> dict:
    """Share of the values each clamp bound changes, over the real patches of all four cases (float64)."""
    import torch

    counts: dict[str, np.ndarray] = {}
    hooks = []
    for name, mod in clippable_linears(model).items():
        def hook(m, args, out, name=name):
            x = args[0]
            y = m.linear(torch.clamp(x, m.input_min, m.input_max))
            c = np.array([(x < m.input_min).sum(), (x > m.input_max).sum(), (y < m.output_min).sum(),
                          (y > m.output_max).sum(), x.numel(), y.numel()], dtype=np.float64)
            counts[name] = counts.get(name, 0) + c
        hooks.append(mod.register_forward_hook(hook))
    with torch.no_grad():
        for case in INPUTS:
            pv, pos = inputs[case]["pixel_values"], inputs[case]["positions"]
            model.model.get_image_features(torch.from_numpy(pv).to(torch.float64)[None],
                                           torch.from_numpy(pos.astype(np.int64))[None])
    for h in hooks:
        h.remove()
    return {name: [round(float(c[i] / c[4 + i // 2]), 5) for i in range(4)] for name, c in counts.items()}


# --------------------------------------------------------------------------------------------------------------------
# Writing


def one_chunk(payload):
    return lambda: iter([np.ascontiguousarray(payload).reshape(-1).view(np.uint8)])


def vision_entries(built: Built, cfg: TinyVision, with_clamp_data: bool) -> list:
    """(name, ne, type, chunks) for the v.* / mm.* tensors: the tower in vision_specs order with each layer's clamp
    scalars, then (Ollama only) v.clamp_data."""
    clamp_specs = {s.name: s for s in vision_specs(cfg.vision, cfg.text.d_model) if s.kind == "clamp"}
    entries = []
    by_layer: dict[int, list] = {}
    for name, spec in clamp_specs.items():
        base, suffix = name.rsplit(".", 1)
        value = np.array([built.clamps[base][CLAMP_SUFFIXES.index(suffix)]], np.float32)
        by_layer.setdefault(spec.layer, []).append((name, spec.ne, Q.F32, one_chunk(value)))
    last_of_layer = {}
    for i, (spec, _, _) in enumerate(built.vision):
        if spec.layer >= 0:
            last_of_layer[spec.layer] = i
    for i, (spec, qtype, payload) in enumerate(built.vision):
        entries.append((spec.name, spec.ne, qtype, one_chunk(payload)))
        if spec.layer >= 0 and last_of_layer[spec.layer] == i:
            entries += by_layer[spec.layer]
    if with_clamp_data:
        data = clamp_data(built.clamps, cfg.vision)
        entries.append(("v.clamp_data", (data.size,), Q.F32, one_chunk(data)))
    return entries


def write_files(built: Built, cfg: TinyVision, out_dir: str, info: dict, vocab: layout.FakeVocab) -> dict:
    """-> {file name: size}"""
    base = os.path.join(out_dir, PREFIX + cfg.name)
    text_entries = [(s.name, s.ne, qtype, one_chunk(p)) for s, qtype, p in built.text]
    file_type = tiny.FILE_TYPE[cfg.weights]
    sizes = {}

    def text_metadata(w: GGUFWriter, name: str) -> None:
        w.add_name(name)
        w.add_description(f"random tiny Gemma 4 test model with a vision tower: {json.dumps(info)}")
        w.add_file_type(file_type)
        if cfg.weights != "f32":
            w.add_quantization_version(2)
        layout.add_gemma4_metadata(w, cfg.text)
        layout.add_tokenizer(w, vocab, model="gemma4")

    if cfg.layout == "ollama":
        assert cfg.text.tower_keys == cfg.vision.ollama_keys()
        sizes[PREFIX + cfg.name + ".gguf"] = layout.write_gguf_streaming(
            base + ".gguf", lambda w: text_metadata(w, f"gemma4-tiny-vision-{cfg.name}"),
            text_entries + vision_entries(built, cfg, with_clamp_data=True))
        return sizes

    assert not cfg.text.tower_keys, "llama.cpp's text GGUF has no vision keys"
    sizes[PREFIX + cfg.name + ".gguf"] = layout.write_gguf_streaming(
        base + ".gguf", lambda w: text_metadata(w, f"gemma4-tiny-vision-{cfg.name}"), text_entries)

    v = cfg.vision

    def mmproj_metadata(w: GGUFWriter) -> None:
        # The keys llama.cpp's converter writes for Gemma 4 (MmprojModel.set_gguf_parameters and
        # Gemma4VisionAudioModel.set_gguf_parameters), vision only; plus projector.scale_factor, which clip.cpp
        # reads when present (default 3 for gemma4v).
        w.add_type("mmproj")
        w.add_name(f"gemma4-tiny-vision-{cfg.name}-mmproj")
        w.add_description(f"vision tower of gemma4-tiny-vision-{cfg.name}: {json.dumps(info)}")
        w.add_file_type(file_type)
        w.add_quantization_version(2)
        w.add_bool("clip.has_vision_encoder", True)
        w.add_uint32("clip.vision.projection_dim", cfg.text.d_model)
        w.add_uint32("clip.vision.image_size", 224)  # the converter's placeholder ("unused, but set")
        w.add_uint32("clip.vision.patch_size", v.patch)
        w.add_uint32("clip.vision.embedding_length", v.d)
        w.add_uint32("clip.vision.feed_forward_length", v.n_ff)
        w.add_uint32("clip.vision.block_count", v.n_layer)
        w.add_uint32("clip.vision.attention.head_count", v.n_head)
        w.add_array("clip.vision.image_mean", [0.0, 0.0, 0.0])
        w.add_array("clip.vision.image_std", [1.0, 1.0, 1.0])
        w.add_string("clip.vision.projector_type", "gemma4v")
        w.add_float32("clip.vision.attention.layer_norm_epsilon", v.eps)
        w.add_uint32("clip.vision.projector.scale_factor", v.pool)

    sizes[PREFIX + cfg.name + ".mmproj.gguf"] = layout.write_gguf_streaming(
        base + ".mmproj.gguf", mmproj_metadata, vision_entries(built, cfg, with_clamp_data=False), arch="clip")
    return sizes


def prepare_inputs(images: dict) -> tuple[dict, dict, dict]:
    """-> (unpadded inputs per INPUTS name, the padded processor batch per name, the pair's padded batch). Each
    image alone at each budget, and the pair's two images together (one processor call, one budget)."""
    inputs, padded = {}, {}
    for name in INPUTS:
        kind, b = name.rsplit("_", 1)
        p = preprocess([images[kind][0]], int(b))
        inputs[name], padded[name] = p["images"][0], p
    pair = preprocess([images[k][0] for k in PAIR], PAIR_BUDGET)
    for k, got in zip(PAIR, pair["images"]):
        assert np.array_equal(got["pixel_values"], inputs[f"{k}_{PAIR_BUDGET}"]["pixel_values"])
    return inputs, padded, pair


def write_inputs(path: str, images: dict, inputs: dict) -> int:
    from importlib.metadata import version

    info = {"inputs": INPUTS, "cases": CASES, "pair": [f"{k}_{PAIR_BUDGET}" for k in PAIR],
            "images": {k: f for k, (_, f) in images.items()},
            "processor": "transformers Gemma4ImageProcessorPil(max_soft_tokens=budget), patch 16, pooling 3, "
                         "bicubic; image opened with PIL.Image.open + ImageOps.exif_transpose",
            "pixel_values": "pixels_u8.astype(np.float32) / np.float32(255), exactly the processor's float32 values",
            "versions": {p: version(p) for p in ("transformers", "pillow", "numpy")},
            "command": "python tools/make_tiny_gemma4_vision.py"}
    arrays = {"info": np.array(json.dumps(info))}
    for name in INPUTS:
        x = inputs[name]
        arrays[f"{name}_pixels_u8"] = x["pixels_u8"]
        arrays[f"{name}_positions"] = x["positions"]
        arrays[f"{name}_grid"] = np.array(x["grid"], np.int32)
    np.savez_compressed(path, **arrays)
    return os.path.getsize(path)


def make(cfg: TinyVision, out_dir: str, images: dict) -> None:
    from importlib.metadata import version

    import torch

    vocab = fake_vocab()
    for s, i in MARKERS.items():
        assert vocab.tokens[i] == s
    built = build(cfg)
    model = built.model
    inputs, padded, pair = prepare_inputs(images)
    assert max(max(x["grid"]) for x in inputs.values()) <= cfg.vision.n_pos

    calibrate_clamps(built, cfg, inputs)

    prompts = {case: chat(vocab, [image_span(inputs[case]["n_soft"]), "▁what ▁is ▁the ▁cat"]) for case in CASES}
    prompts["pair"] = chat(vocab, [image_span(pair["images"][0]["n_soft"]), "▁and",
                                   image_span(pair["images"][1]["n_soft"]), "▁what ▁is ▁in ▁the ▁world"])
    for ids in prompts.values():
        assert set(ids.tolist()) & {MARKERS[s] for s in ("<|audio>", "<|audio|>", "<audio|>", "<|video|>")} == set()

    info = {
        "config": cfg.name, "weights": cfg.weights, "layout": cfg.layout, "seed": cfg.seed,
        "markers": MARKERS, "cases": CASES, "pair": [f"{k}_{PAIR_BUDGET}" for k in PAIR], "debug_case": DEBUG_CASE,
        "images": {k: f for k, (_, f) in images.items()},
        "goldens": "HF Gemma4ForConditionalGeneration, SDPA attention, float64 (make_float64_exact and "
                   "make_vision_float64_exact), stored as float32",
        "versions": {p: version(p) for p in ("torch", "transformers", "gguf", "numpy", "pillow")},
        "command": f"python tools/make_tiny_gemma4_vision.py {cfg.name}",
    }
    sizes = write_files(built, cfg, out_dir, info, vocab)

    def pv_pos(p):
        return p["pixel_values"], p["positions"]

    def run_all(dtype):
        got = {case: run_case(model, dtype, prompts[case], *pv_pos(padded[case])) for case in CASES}
        got["pair"] = run_case(model, dtype, prompts["pair"], *pv_pos(pair))
        return got

    # HF's stock float32 run first, to measure how far a correct float32 implementation lands from the goldens.
    gold32 = run_all(torch.float32)
    model = model.to(torch.float64)
    # make_float64_exact wants a Gemma4ForCausalLM: .modules() (all of them: the tower's RMSNorms too), .model (the
    # text model) and .config (the text config).
    tiny.make_float64_exact(types.SimpleNamespace(modules=model.modules, model=model.model.language_model,
                                                  config=model.config.text_config), cfg.text)
    make_vision_float64_exact(model)
    gold = run_all(torch.float64)

    # The tower on the unpadded patches (only the real ones) gives the soft tokens of HF's padded batch.
    traces = {name: tower_trace(model, inputs[name]["pixel_values"], inputs[name]["positions"]) for name in INPUTS}
    for case in CASES:
        assert np.abs(traces[case]["soft_tokens"] - gold[case][1]).max() < 1e-12, case
    pair_soft = np.concatenate([traces[f"{k}_{PAIR_BUDGET}"]["soft_tokens"] for k in PAIR])
    assert np.abs(gold["pair"][1] - pair_soft).max() < 1e-12

    # How much the clamps matter: the soft tokens with every bound removed.
    saved = {n: [getattr(m, s).clone() for s in CLAMP_SUFFIXES] for n, m in clippable_linears(model).items()}
    for m in clippable_linears(model).values():
        for s in CLAMP_SUFFIXES:
            getattr(m, s).fill_(math.inf if s.endswith("max") else -math.inf)
    unclamped = {n: tower_trace(model, inputs[n]["pixel_values"], inputs[n]["positions"])["soft_tokens"]
                 for n in INPUTS}
    for n, m in clippable_linears(model).items():
        for s, t in zip(CLAMP_SUFFIXES, saved[n]):
            getattr(m, s).copy_(t)
    info["clip_fraction"] = clip_fractions(model, inputs)
    info["no_clamp_soft_token_max_abs_diff"] = float(max(np.abs(unclamped[n] - traces[n]["soft_tokens"]).max()
                                                         for n in INPUTS))
    info["hf_float32_max_abs_diff"] = {
        "soft_tokens": float(max(np.abs(gold32[c][1] - gold[c][1]).max() for c in gold)),
        "logits": float(max(np.abs(gold32[c][0] - gold[c][0]).max() for c in gold)),
        "logits_per_case": {c: float(np.abs(gold32[c][0] - gold[c][0]).max()) for c in gold}}
    info["tensor_sha256_16"] = built.hashes

    def f32(x):
        return np.asarray(x, dtype=np.float32)

    arrays = {"info": np.array(json.dumps(info)), "marker_ids": np.array(list(MARKERS.values()), np.int32),
              "marker_names": np.array(list(MARKERS))}
    for name in INPUTS:
        arrays[f"{name}_soft_tokens"] = f32(traces[name]["soft_tokens"])
    for case in CASES:
        arrays[f"{case}_tokens"] = prompts[case]
        arrays[f"{case}_logits"] = f32(gold[case][0])
    arrays["pair_tokens"] = prompts["pair"]
    arrays["pair_logits"] = f32(gold["pair"][0])
    for k in ("patch_embd", "inputs_embeds", "layer_out", "pooled"):
        arrays[f"debug_{k}"] = f32(traces[DEBUG_CASE][k])
    npz = os.path.join(out_dir, PREFIX + cfg.name + ".npz")
    np.savez_compressed(npz, **arrays)
    sizes[os.path.basename(npz)] = os.path.getsize(npz)
    clipping = sum(any(f > 0 for f in fr) for fr in info["clip_fraction"].values())
    print(f"{cfg.name}: " + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in sizes.items())
          + f"; |logits| max {max(np.abs(g[0]).max() for g in gold.values()):.2f}, "
          f"HF float32 vs float64 {info['hf_float32_max_abs_diff']}, {clipping}/{len(info['clip_fraction'])} "
          f"linears clip, without clamps the soft tokens move by {info['no_clamp_soft_token_max_abs_diff']:.3g}")


def main(argv: list[str] | None = None) -> None:
    tiny.hide_torchvision()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help=f"configs to build (default all): {', '.join(CONFIGS)}")
    ap.add_argument("--out", default=FIXTURES, help="output folder (default tests/fixtures)")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    images = source_images()
    size = write_inputs(os.path.join(args.out, PREFIX + "inputs.npz"), images, prepare_inputs(images)[0])
    print(f"inputs: {PREFIX}inputs.npz {size / 1e6:.2f} MB")
    for name in args.names or CONFIGS:
        make(CONFIGS[name], args.out, images)


if __name__ == "__main__":
    main()
