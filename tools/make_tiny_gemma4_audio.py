"""Build the tiny Gemma 4 fixtures with an audio tower: tests/fixtures/gemma4_tiny_audio_*.

Two small random Gemma 4 models, each a text decoder (as in tools/make_tiny_gemma4.py) plus a Conformer audio
tower (SSCP subsampling, chunked local attention with relative positions, light conv, two half-step FFNs) and its
projector, with float64 goldens from Hugging Face transformers' Gemma4ForConditionalGeneration run on exactly the
values the GGUF files hold. The structure follows tools/make_tiny_gemma4_vision.py, whose helpers it imports.

- `gemma4_tiny_audio_f32.gguf`: Ollama's monolithic layout, one file with the text model, the `gemma4.audio.*`
  keys, the `a.*` / `mm.a.*` tensors with Ollama's names and the per-linear clamp scalars. All F32.
- `gemma4_tiny_audio_q8_0.gguf` + `gemma4_tiny_audio_q8_0.mmproj.gguf`: llama.cpp's pair, a text-only GGUF and an
  mmproj (architecture "clip", audio projector "gemma4a") with llama.cpp's audio names (several differ from
  Ollama's: see AUDIO_NAMES) and its converter's types (Q8_0 matrices; convs, the SSCP linear, norms F32).
- `gemma4_tiny_audio_inputs.npz` (shared): HF's exact log-mel features and masks for the clips (real speech
  recorded with espeak-ng, tests/fixtures/audio/tower_*.wav, and a >30 s clip of speech and noise built here).
- `gemma4_tiny_audio_<name>.npz`: the soft tokens after `embed_audio` for each clip, chat prompts holding one
  clip with HF's logits at every position, and the tower's intermediates for one clip.
  tests/fixtures/README.md documents every key.

The weights are random but shaped so that every part matters: norm weights away from 1, per_dim_scale away from
HF's init, attention logits large enough for the 50 soft-cap to bend them, a relative-position term as large as
the content term, and finite clamp bounds calibrated so that most clippable linears really clip. Quantised
tensors are dequantised and loaded back into HF before anything is computed. The goldens are computed in float64
(make_tiny_gemma4.make_float64_exact plus the audio tower's float32 spots, see make_audio_float64_exact) and
stored as float32.

Needs torch, transformers, gguf and scipy (the project depends on none but gguf); run it with the python of a
scratch venv outside the repo (torch 2.13.0, transformers 5.23.0, gguf 0.19.0):

    python tools/make_tiny_gemma4_audio.py              # the shared inputs and both models into tests/fixtures/
    python tools/make_tiny_gemma4_audio.py f32          # the inputs and just one model
    python tools/make_tiny_gemma4_audio.py --record     # (re)record tests/fixtures/audio/tower_*.wav (espeak-ng)
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import subprocess
import sys
import tempfile
import types
import wave
from dataclasses import dataclass, field, replace

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_synthetic_gguf as layout  # noqa: E402  (the shared Gemma 4 GGUF layout and fake tokenizer)
import make_tiny_gemma4 as tiny  # noqa: E402  (text weights, quantisers, HF text config, float64 patches)
import make_tiny_gemma4_vision as vis  # noqa: E402  (markers, vocabulary, prompts, hashing, writing helpers)
from gguf import GGMLQuantizationType as Q, GGUFWriter  # noqa: E402

FIXTURES = tiny.FIXTURES
VOCAB = tiny.VOCAB
PREFIX = "gemma4_tiny_audio_"
MARKERS = vis.MARKERS  # the same ids as the vision fixtures: <|audio> 21, <|audio|> 23, <audio|> 25
SAMPLE_RATE = 16000

# The clippable linears of a Conformer block: Ollama's leaf name, llama.cpp's leaf name, HF module.
CLIPPED = [("ffn_up", "ffn_up", "feed_forward1.ffw_layer_1"), ("ffn_down", "ffn_down", "feed_forward1.ffw_layer_2"),
           ("attn_q", "attn_q", "self_attn.q_proj"), ("attn_k", "attn_k", "self_attn.k_proj"),
           ("attn_v", "attn_v", "self_attn.v_proj"), ("attn_out", "attn_out", "self_attn.post"),
           ("conv_pw1", "conv_pw1", "lconv1d.linear_start"), ("conv_pw2", "conv_pw2", "lconv1d.linear_end"),
           ("ffn_up_1", "ffn_up_1", "feed_forward2.ffw_layer_1"),
           ("ffn_down_1", "ffn_down_1", "feed_forward2.ffw_layer_2")]
CLAMP_SUFFIXES = vis.CLAMP_SUFFIXES
SILU_FED = (".ffn_down", ".ffn_down_1", ".conv_pw2")  # their input is a SiLU output (>= -0.278)
# The block's norms: Ollama's leaf name, llama.cpp's leaf name, HF module. Note ln2: Ollama's post-attention norm,
# llama.cpp's block output norm.
NORMS = [("ffn_norm", "ffn_norm", "feed_forward1.pre_layer_norm"),
         ("ffn_post_norm", "ffn_post_norm", "feed_forward1.post_layer_norm"),
         ("ln1", "attn_pre_norm", "norm_pre_attn"), ("ln2", "attn_post_norm", "norm_post_attn"),
         ("conv_norm", "conv_norm", "lconv1d.pre_layer_norm"), ("norm_conv", "norm_conv", "lconv1d.conv_norm"),
         ("ffn_norm_1", "ffn_norm_1", "feed_forward2.pre_layer_norm"),
         ("ffn_post_norm_1", "ffn_post_norm_1", "feed_forward2.post_layer_norm"),
         ("layer_pre_norm", "ln2", "norm_out")]

# The clips (tests/fixtures/audio/, 16 kHz mono 16-bit; recorded by record_clips) and the long one built from them.
CLIP_FILES = {"short": "audio/tower_yes.wav", "medium": "audio/tower_cat.wav"}
CLIP_TEXT = {"short": "yes", "medium": "what time is it? the cat sat on the mat."}
SHORT_SAMPLES = 4800  # 0.3 s: 29 mel frames, 8 soft tokens, less than one 12-token attention chunk
LONG_SECONDS = 32.5  # longer than the 30 s (480000 samples) HF's feature extractor keeps
CLIPS = ("short", "medium", "long")
PROMPT_CLIPS = {"f32": CLIPS, "q8_0": ("short", "medium")}  # whose chat prompt (with logits) each npz holds
DEBUG_CLIP = "medium"  # the clip whose tower intermediates are stored
MAX_SAMPLES = 480000  # Gemma4AudioFeatureExtractor's max_length (truncation=True): the first 30 s


@dataclass(frozen=True)
class AudioDims:
    """The tower's hyper-parameters (E2B: 12 layers, 1024 wide, 8 heads x 128, FFN 4096, SSCP channels
    [128, 32], output_proj 1536, conv kernel 5, chunk 12, context left 13, right 0, logit cap 50)."""

    n_layer: int = 2
    d: int = 48
    n_head: int = 3
    c1: int = 8  # second SSCP conv's channels (the first must stay 128: HF sizes the SSCP linear as 128//4 * c1)
    out: int = 80  # output_proj_dims
    kernel: int = 5
    eps: float = 1e-6
    n_mel: int = 128
    c0: int = 128
    chunk: int = 12
    context_left: int = 13
    logit_cap: float = 50.0

    @property
    def head_dim(self) -> int:
        return self.d // self.n_head

    @property
    def n_ff(self) -> int:
        return 4 * self.d

    @property
    def sscp_in(self) -> int:
        return (self.n_mel // 4) * self.c1

    def ollama_keys(self) -> dict:
        """The gemma4.audio.* keys of Ollama's monolithic blob (without `gemma4.`), in its converter's order."""
        return {"audio.block_count": self.n_layer, "audio.embedding_length": self.d,
                "audio.feed_forward_length": self.n_ff, "audio.attention.head_count": self.n_head,
                "audio.attention.layer_norm_epsilon": self.eps, "audio.conv_kernel_size": self.kernel}


@dataclass(frozen=True)
class TinyAudio:
    name: str
    text: layout.Gemma4Dims
    audio: AudioDims
    weights: str  # "f32" (every tensor F32) or "q8_0" (llama.cpp's converter types, see audio_type)
    layout: str  # "ollama" (one file) or "llamacpp" (text GGUF + mmproj)
    seed: int


CONFIGS = {c.name: c for c in [
    # The text models of the vision fixtures (tools/make_tiny_gemma4_vision.py) with other seeds.
    # Tower: 2 layers, d 48 = 3 heads x 16, FFN 192, SSCP [128, 8] (linear 256 -> 48), output_proj 80, d_model 48.
    TinyAudio("f32", replace(vis.CONFIGS["f32"].text, tower_keys=AudioDims().ollama_keys()), AudioDims(), "f32",
              "ollama", seed=31),
    # Tower: 2 layers, d 64 = 2 heads x 32, FFN 256, SSCP [128, 4] (linear 128 -> 64), output_proj 128, d_model 96.
    # Every quantised row has a multiple of 32 entries.
    TinyAudio("q8_0", vis.CONFIGS["q8_0"].text, AudioDims(d=64, n_head=2, c1=4, out=128), "q8_0", "llamacpp",
              seed=32),
]}


# --------------------------------------------------------------------------------------------------------------------
# The audio tensors


@dataclass(frozen=True)
class ASpec:
    name: str  # Ollama's GGUF name
    lc_name: str  # llama.cpp's GGUF name
    ne: tuple[int, ...]
    kind: str  # "conv0", "conv1", "ln", "matrix", "norm", "pos", "pds", "dw", "bias", "proj", "clamp"
    hf: str  # HF Gemma4ForConditionalGeneration state-dict key
    layer: int = -1

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(reversed(self.ne))

    def gguf_name(self, layout_: str) -> str:
        return self.name if layout_ == "ollama" else self.lc_name


def audio_specs(a: AudioDims, d_model: int) -> list[ASpec]:
    """Every a.* / mm.a.* tensor, with both layouts' names, in the order written."""
    t = "model.audio_tower."
    sscp = t + "subsample_conv_projection."
    specs = [ASpec("a.conv1d.0.weight", "a.conv1d.0.weight", (3, 3, 1, a.c0), "conv0", sscp + "layer0.conv.weight"),
             ASpec("a.conv1d.0.norm.weight", "a.conv1d.0.norm.weight", (a.c0,), "ln", sscp + "layer0.norm.weight"),
             ASpec("a.conv1d.1.weight", "a.conv1d.1.weight", (3, 3, a.c0, a.c1), "conv1", sscp + "layer1.conv.weight"),
             ASpec("a.conv1d.1.norm.weight", "a.conv1d.1.norm.weight", (a.c1,), "ln", sscp + "layer1.norm.weight"),
             ASpec("a.pre_encode.out.weight", "a.input_projection.weight", (a.sscp_in, a.d), "matrix",
                   sscp + "input_proj_linear.weight")]
    ne = {"ffn_up": (a.d, a.n_ff), "ffn_down": (a.n_ff, a.d), "attn_q": (a.d, a.d), "attn_k": (a.d, a.d),
          "attn_v": (a.d, a.d), "attn_out": (a.d, a.d), "conv_pw1": (a.d, 2 * a.d), "conv_pw2": (a.d, a.d)}
    ne["ffn_up_1"], ne["ffn_down_1"] = ne["ffn_up"], ne["ffn_down"]
    clipped = {o: (lc, hf) for o, lc, hf in CLIPPED}
    norms = {o: (lc, hf) for o, lc, hf in NORMS}
    for il in range(a.n_layer):
        b, h = f"a.blk.{il}.", f"{t}layers.{il}."

        def matrix(n):
            lc, hf = clipped[n]
            return ASpec(f"{b}{n}.weight", f"{b}{lc}.weight", ne[n], "matrix", f"{h}{hf}.linear.weight", il)

        def norm(n):
            lc, hf = norms[n]
            return ASpec(f"{b}{n}.weight", f"{b}{lc}.weight", (a.d,), "norm", f"{h}{hf}.weight", il)

        specs += [norm("ffn_norm"), matrix("ffn_up"), matrix("ffn_down"), norm("ffn_post_norm"),
                  norm("ln1"), matrix("attn_q"), matrix("attn_k"), matrix("attn_v"), matrix("attn_out"),
                  ASpec(b + "linear_pos.weight", b + "attn_k_rel.weight", (a.d, a.d), "pos",
                        h + "self_attn.relative_k_proj.weight", il),
                  ASpec(b + "per_dim_scale.weight", b + "per_dim_scale.weight", (a.head_dim,), "pds",
                        h + "self_attn.per_dim_scale", il),
                  norm("ln2"), norm("conv_norm"), matrix("conv_pw1"),
                  ASpec(b + "conv_dw.weight", b + "conv_dw.weight", (a.kernel, a.d), "dw",
                        h + "lconv1d.depthwise_conv1d.weight", il),
                  norm("norm_conv"), matrix("conv_pw2"),
                  norm("ffn_norm_1"), matrix("ffn_up_1"), matrix("ffn_down_1"), norm("ffn_post_norm_1"),
                  norm("layer_pre_norm")]
        specs += [ASpec(f"{b}{o}.{s}", f"{b}{lc}.{s}", (1,), "clamp", f"{h}{hf}.{s}", il)
                  for o, lc, hf in CLIPPED for s in CLAMP_SUFFIXES]
    specs += [ASpec("mm.a.fc.weight", "a.pre_encode.out.weight", (a.d, a.out), "matrix", t + "output_proj.weight"),
              ASpec("mm.a.fc.bias", "a.pre_encode.out.bias", (a.out,), "bias", t + "output_proj.bias"),
              ASpec("mm.a.input_projection.weight", "mm.a.input_projection.weight", (a.out, d_model), "proj",
                    "model.embed_audio.embedding_projection.weight")]
    return specs


# Ollama's converter (convert/convert_gemma4.go, gemma4Model.Replacements), the entries that touch the audio tower,
# restated: a strings.Replacer, so at each position of the HF name the first listed pattern that matches wins.
OLLAMA_AUDIO_REPLACEMENTS = [
    (".linear.weight", ".weight"), (".linear.bias", ".bias"),
    ("model.audio_tower.subsample_conv_projection.layer0.conv", "a.conv1d.0"),
    ("model.audio_tower.subsample_conv_projection.layer0.norm", "a.conv1d.0.norm"),
    ("model.audio_tower.subsample_conv_projection.layer1.conv", "a.conv1d.1"),
    ("model.audio_tower.subsample_conv_projection.layer1.norm", "a.conv1d.1.norm"),
    ("model.audio_tower.subsample_conv_projection.input_proj_linear", "a.pre_encode.out"),
    ("model.audio_tower.layers", "a.blk"),
    ("self_attn.relative_k_proj", "linear_pos"), ("self_attn.per_dim_scale", "per_dim_scale"),
    ("self_attn.q_proj", "attn_q"), ("self_attn.k_proj", "attn_k"), ("self_attn.v_proj", "attn_v"),
    ("norm_post_attn", "ln2"), ("norm_pre_attn", "ln1"), ("self_attn.post", "attn_out"),
    ("feed_forward1.pre_layer_norm", "ffn_norm"), ("feed_forward1.post_layer_norm", "ffn_post_norm"),
    ("feed_forward1.ffw_layer_1", "ffn_up"), ("feed_forward1.ffw_layer_2", "ffn_down"),
    ("feed_forward2.pre_layer_norm", "ffn_norm_1"), ("feed_forward2.post_layer_norm", "ffn_post_norm_1"),
    ("feed_forward2.ffw_layer_1", "ffn_up_1"), ("feed_forward2.ffw_layer_2", "ffn_down_1"),
    ("lconv1d.depthwise_conv1d", "conv_dw"), ("lconv1d.pre_layer_norm", "conv_norm"),
    ("lconv1d.conv_norm", "norm_conv"), ("lconv1d.linear_start", "conv_pw1"), ("lconv1d.linear_end", "conv_pw2"),
    ("norm_out", "layer_pre_norm"),
    ("model.embed_audio.embedding_projection", "mm.a.input_projection"),
    ("model.audio_tower.output_proj", "mm.a.fc"),
]


def ollama_name(hf_key: str) -> str:
    """The name Ollama's converter gives an HF audio tensor: the replacements above, then per_dim_scale gets a
    `.weight` suffix (and its values softplus, see softplus32)."""
    out, i = [], 0
    while i < len(hf_key):
        for old, new in OLLAMA_AUDIO_REPLACEMENTS:
            if hf_key.startswith(old, i):
                out.append(new)
                i += len(old)
                break
        else:
            out.append(hf_key[i])
            i += 1
    name = "".join(out)
    if name.startswith("a.blk.") and name.endswith("per_dim_scale"):
        name += ".weight"
    return name


def llamacpp_name(hf_key: str) -> str:
    """The name llama.cpp's converter (conversion/gemma.py, Gemma4VisionAudioModel.modify_tensors) gives an HF
    audio tensor: its renames, then gguf-py's MMPROJ tensor-name table."""
    import gguf

    name = hf_key.replace("model.audio_tower.", "conformer.").replace(".linear.", ".")
    if name.endswith(("per_dim_key_scale", "per_dim_scale")):
        name += ".weight"
    table = gguf.get_tensor_name_map(gguf.MODEL_ARCH.MMPROJ, 128)
    mapped = table.get_name(name, try_suffixes=(".weight", ".bias", ".input_max", ".input_min", ".output_max",
                                                ".output_min"))
    assert mapped is not None, hf_key
    return mapped


def audio_type(cfg: TinyAudio, spec: ASpec) -> Q:
    """`f32`: everything F32 (Ollama itself stores the matrices F16/BF16 and keeps a.conv1d.*, *.conv_dw.*, *.bias
    and 1-D tensors F32, reader.go tensorBase.Kind). llama.cpp's converter at --outtype q8_0: 1-D tensors F32;
    Gemma4VisionAudioModel.tensor_force_quant keeps F32 every audio tensor whose HF name contains ".conv", or
    "_conv" and ".weight": the SSCP convs, the SSCP linear (subsample_conv_projection.input_proj_linear) and
    conv_dw; every other matrix Q8_0 (linear_pos / attn_k_rel, output_proj, the projector included)."""
    if cfg.weights == "f32" or spec.kind in ("conv0", "conv1", "ln", "norm", "pds", "dw", "bias", "clamp"):
        return Q.F32
    if ".conv" in spec.hf or ("_conv" in spec.hf and ".weight" in spec.hf):
        return Q.F32
    assert spec.ne[0] % 32 == 0, spec
    return Q.Q8_0


def softplus32(raw: np.ndarray) -> np.ndarray:
    """per_dim_scale as both converters store it: float32(softplus(raw)) (Ollama: float32(log(1 + exp(x))) in
    float64; llama.cpp: torch softplus in float32; the same float32 here for the values used)."""
    return np.log1p(np.exp(raw.astype(np.float64))).astype(np.float32)


def random_audio(spec: ASpec, a: AudioDims, rng: np.random.Generator) -> np.ndarray:
    """Activations of unit scale, norm weights away from 1, attention logits up to a few tens (so the soft-cap
    bends them) with a relative-position term of the same size, soft tokens about as large as the text
    embeddings. `pds` returns the stored (softplus) value."""
    if spec.kind == "conv0":
        return rng.normal(0, 1 / 3, spec.shape)  # LayerNorm follows: only the direction matters
    if spec.kind == "conv1":
        return rng.normal(0, 1 / math.sqrt(9 * a.c0), spec.shape)
    if spec.kind == "ln":
        return rng.uniform(0.5, 1.5, spec.shape)
    if spec.kind == "norm":
        return rng.uniform(0.5, 1.5, spec.shape)
    if spec.kind == "matrix":
        # q and k a little larger than unit scale: attention logits of std ~8 reach the range where the soft-cap
        # bends them (larger made the tower chaotic: 1e-3 of noise in the weights moved the soft tokens by 0.3)
        scale = 1.2 if spec.hf.endswith(("q_proj.linear.weight", "k_proj.linear.weight")) else 1.0
        return rng.normal(0, scale / math.sqrt(spec.ne[0]), spec.shape)
    if spec.kind == "pos":
        # the sinusoids have an rms of 1/sqrt(2): a relative term about as large as the content term
        return rng.normal(0, 3.2 / math.sqrt(spec.ne[0]), spec.shape)
    if spec.kind == "pds":
        return rng.uniform(0.6, 2.0, spec.shape)  # softplus values (HF's init, raw 0, would be 0.693 everywhere)
    if spec.kind == "dw":
        return rng.normal(0, 1 / math.sqrt(a.kernel), spec.shape)
    if spec.kind == "bias":
        return rng.normal(0, 0.5, spec.shape)
    if spec.kind == "proj":
        return rng.normal(0, 3 / math.sqrt(spec.ne[0]), spec.shape)
    raise ValueError(spec)


def to_hf(spec: ASpec, values: np.ndarray) -> np.ndarray:
    """GGUF values (numpy layout) -> the HF parameter. Only two differ: conv_dw ([C, K] -> [C, 1, K]) and
    per_dim_scale (softplus -> raw, float32 here; the float64 run sets the float64 inverse, see set_raw_pds)."""
    if spec.kind == "dw":
        return values[:, None, :]
    if spec.kind == "pds":
        return np.log(np.expm1(values.astype(np.float64))).astype(np.float32)
    return values


# --------------------------------------------------------------------------------------------------------------------
# The HF model


def hf_model(cfg: TinyAudio):
    from transformers import Gemma4AudioConfig, Gemma4Config, Gemma4ForConditionalGeneration

    a = cfg.audio
    audio = Gemma4AudioConfig(
        hidden_size=a.d, num_hidden_layers=a.n_layer, num_attention_heads=a.n_head,
        subsampling_conv_channels=[a.c0, a.c1], conv_kernel_size=a.kernel, residual_weight=0.5,
        attention_chunk_size=a.chunk, attention_context_left=a.context_left, attention_context_right=0,
        attention_logit_cap=a.logit_cap, attention_invalid_logits_value=-1e9, use_clipped_linears=True,
        rms_norm_eps=a.eps, gradient_clipping=1e10, output_proj_dims=a.out, hidden_act="silu")
    markers = {k: MARKERS[s] for k, s in vis.HF_MARKER_KEYS.items()}
    config = Gemma4Config(text_config=tiny.hf_config(cfg.text), vision_config=None, audio_config=audio,
                          tie_word_embeddings=True, **markers)
    config._attn_implementation = "sdpa"
    config.text_config._attn_implementation = "sdpa"  # SDPA keeps float64; eager runs its softmax in float32
    config.audio_config._attn_implementation = "eager"  # the tower's own chunked attention (it supports nothing else)
    model = Gemma4ForConditionalGeneration(config).eval()
    assert model.model.vision_tower is None and model.model.audio_tower is not None
    return model


@dataclass
class Built:
    model: object
    text: list  # [(TensorSpec, qtype, payload)]
    audio: list  # [(ASpec, qtype, payload)] without the clamp scalars
    clamps: dict = field(default_factory=dict)  # "a.blk.N.<ollama linear>" -> [in_min, in_max, out_min, out_max]
    hashes: dict = field(default_factory=dict)  # Ollama GGUF name -> sha of the values (see info)


def build(cfg: TinyAudio) -> Built:
    import torch

    text_dims, a = cfg.text, cfg.audio
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
        out.hashes[spec.name] = vis.sha(values)
        if spec.kind == "rope_freqs":
            continue
        load("model.language_model." + tiny.hf_name(spec.name).removeprefix("model."), values.reshape(spec.shape))

    for spec in audio_specs(a, text_dims.d_model):
        assert ollama_name(spec.hf) == spec.name, (spec.hf, ollama_name(spec.hf), spec.name)
        assert llamacpp_name(spec.hf) == spec.lc_name, (spec.hf, llamacpp_name(spec.hf), spec.lc_name)
        if spec.kind == "clamp":
            continue  # set by calibrate_clamps
        qtype = audio_type(cfg, spec)
        x = random_audio(spec, a, rng).astype(np.float32)
        payload, values = tiny.roundtrip(x.reshape(-1, spec.ne[0]), qtype)
        out.audio.append((spec, qtype, payload))
        out.hashes[spec.name] = vis.sha(values)
        load(spec.hf, to_hf(spec, values.reshape(spec.shape)))

    clamp_keys = {s.hf for s in audio_specs(a, text_dims.d_model) if s.kind == "clamp"}
    expected = {k for k in state if k != "lm_head.weight"} - clamp_keys
    assert loaded == expected, sorted(expected ^ loaded)
    assert torch.equal(model.lm_head.weight, model.model.language_model.embed_tokens.weight)
    return out


def clippable_linears(model) -> dict:
    """'a.blk.N.<Ollama linear>' -> HF's Gemma4ClippableLinear module."""
    layers = model.model.audio_tower.layers
    return {f"a.blk.{il}.{o}": layer.get_submodule(hf) for il, layer in enumerate(layers) for o, _, hf in CLIPPED}


def tower_run(model, features: np.ndarray, dtype):
    """HF's audio tower + embed_audio on one unpadded clip: (soft tokens [n, d_model], output mask)."""
    import torch

    x = torch.from_numpy(features).to(dtype)[None]
    mask = torch.ones(x.shape[:2], dtype=torch.bool)
    with torch.no_grad():
        out = model.model.get_audio_features(x, mask, return_dict=True)
    assert bool(out.attention_mask.all())
    return out.pooler_output[0]


def calibrate_clamps(built: Built, cfg: TinyAudio, inputs: dict) -> None:
    """Every clippable linear gets finite bounds: each of its 4 bounds is the extreme value seen on the clips (with
    the clamps off) times a factor from U(0.5, 1.25), so about half of them clip the outermost activations; except
    the input_min of the linears fed by SiLU (ffn_down, ffn_down_1, conv_pw2), U(1.0, 1.25): SiLU's minimum
    (-0.278) is flat, so a bound above it would cut a dense band (up to a third of the values). The stored values
    are float32."""
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
    for clip in CLIPS:
        tower_run(model, inputs[clip]["features"], torch.float32)
    for h in hooks:
        h.remove()
    rng = np.random.default_rng(1000 + cfg.seed)
    for name, mod in clippable_linears(model).items():
        lo_in, hi_in, lo_out, hi_out = seen[name]
        assert lo_in < 0 < hi_in and lo_out < 0 < hi_out, (name, seen[name])
        f = rng.uniform(0.5, 1.25, 4)
        if name.endswith(SILU_FED):
            f[0] = 1.0 + (f[0] - 0.5) / 3  # U(1.0, 1.25), from the same draw
        bounds = np.array([lo_in * f[0], hi_in * f[1], lo_out * f[2], hi_out * f[3]], dtype=np.float32)
        built.clamps[name] = bounds
        with torch.no_grad():
            for s, b in zip(CLAMP_SUFFIXES, bounds):
                getattr(mod, s).fill_(float(b))
        for s, b in zip(CLAMP_SUFFIXES, bounds):
            built.hashes[f"{name}.{s}"] = vis.sha(np.array([b]))


def make_audio_float64_exact(model, cfg: TinyAudio) -> None:
    """The audio tower's float32 spots, beyond make_tiny_gemma4.make_float64_exact's RMSNorm patch (which covers the
    tower's RMSNorms and embed_audio's), recomputed in float64 with HF's own formulas:

    - Gemma4AudioRelPositionalEncoding: inv_timescales is a float32 buffer (sinusoids computed in float32);
    - Gemma4AudioAttention.forward: q, k, v are cast with .float() and the softmax runs in float32;
    - per_dim_scale: its float64 value is the float64 inverse softplus of the stored (float32) softplus value, so
      that HF's softplus gives back exactly what the GGUF holds.

    Each replacement is asserted against HF's own module in float32 first."""
    import torch
    import torch.nn.functional as F
    from transformers.models.gemma4.modeling_gemma4 import (Gemma4AudioAttention,
                                                            Gemma4AudioRelPositionalEncoding)

    def rel_pos_forward(self, hidden_states):
        position_ids = torch.arange(self.context_size // 2, -1, -1, dtype=torch.float64)[:, None]
        scaled_time = position_ids * self.inv_timescales64
        return torch.cat([torch.sin(scaled_time), torch.cos(scaled_time)], dim=-1).to(hidden_states.dtype)

    def attention_forward(self, hidden_states, position_embeddings, attention_mask=None):
        # HF's Gemma4AudioAttention.forward without the .float() casts and the float32 softmax
        batch_size, seq_length, _ = hidden_states.shape
        hidden_shape = (batch_size, seq_length, self.num_heads, self.head_dim)
        query_states = self.q_proj(hidden_states).view(hidden_shape)
        key_states = self.k_proj(hidden_states).view(hidden_shape)
        value_states = self.v_proj(hidden_states).view(hidden_shape)
        query_states = query_states * self.q_scale * F.softplus(self.per_dim_scale)
        key_states = key_states * self.k_scale
        query_states = self._convert_to_block(query_states)
        key_states = self._extract_block_context(key_states)
        value_states = self._extract_block_context(value_states)
        num_blocks = query_states.shape[1]
        relative_key_states = self.relative_k_proj(position_embeddings)
        relative_key_states = relative_key_states.view(-1, self.num_heads, self.head_dim).to(query_states.dtype)
        queries = query_states.permute(0, 3, 1, 2, 4)
        matrix_ac = queries @ key_states.permute(0, 3, 1, 4, 2)
        queries_flat = queries.reshape(batch_size, self.num_heads, -1, self.head_dim)
        matrix_bd = queries_flat @ relative_key_states.permute(1, 2, 0)
        matrix_bd = matrix_bd.reshape(batch_size, self.num_heads, num_blocks, self.chunk_size, -1)
        matrix_bd = self._rel_shift(matrix_bd)
        softcap = self.softcap.to(hidden_states.dtype)
        attn_weights = torch.tanh((matrix_ac + matrix_bd) / softcap) * softcap
        if attention_mask is not None:
            attn_weights = attn_weights.masked_fill(attention_mask != 0, self.config.attention_invalid_logits_value)
        attn_weights = F.softmax(attn_weights, dim=-1)
        attn_output = attn_weights @ value_states.permute(0, 3, 1, 2, 4)
        attn_output = attn_output.permute(0, 2, 3, 1, 4).reshape(batch_size, num_blocks * self.chunk_size, -1)
        attn_output = attn_output[:, :seq_length].contiguous()
        return self.post(attn_output), attn_weights

    tower = model.model.audio_tower
    gen = torch.Generator().manual_seed(0)
    for module in tower.modules():
        if isinstance(module, Gemma4AudioRelPositionalEncoding):
            n = module.hidden_size // 2
            inc = math.log(10000.0) / max(n - 1, 1)
            module.inv_timescales64 = torch.exp(torch.arange(n, dtype=torch.float64) * -inc)[None]
            h = torch.zeros(1, 3, module.hidden_size)
            want = module.forward(h).to(torch.float64)
            module.forward = types.MethodType(rel_pos_forward, module)
            got = module.forward(h.to(torch.float64))
            assert got.shape == (module.context_size // 2 + 1, module.hidden_size)
            assert torch.allclose(got, want, rtol=0, atol=2e-6), float((got - want).abs().max())
        if isinstance(module, Gemma4AudioAttention):
            assert module.chunk_size == 12 and module.max_past_horizon == 12 and module.max_future_horizon == 0
            assert abs(float(module.softcap) - cfg.audio.logit_cap) == 0
            # HF's forward on a float32 copy of the module and the float64 one on the same input
            x = torch.randn(1, 30, cfg.audio.d, dtype=torch.float64, generator=gen)
            pos = tower.rel_pos_enc(x)
            mask = (torch.rand(1, 1, 3, 12, 24, generator=gen) < 0.3).to(torch.float64) * -1e30
            mask[..., 12] = 0  # every query keeps one key
            want, _ = Gemma4AudioAttention.forward(copy.deepcopy(module).float(), x.float(), pos.float(),
                                                   mask.float())
            got, _ = attention_forward(module, x, pos, mask)
            assert torch.allclose(got, want.to(torch.float64), rtol=1e-4, atol=1e-4), float((got - want).abs().max())
            module.forward = types.MethodType(attention_forward, module)
    set_raw_pds(model)


def set_raw_pds(model) -> None:
    """per_dim_scale (float64) = log(expm1(s)) for the stored float32 softplus value s, so that softplus gives s."""
    import torch

    for layer in model.model.audio_tower.layers:
        p = layer.self_attn.per_dim_scale
        s = torch.from_numpy(softplus32(p.detach().to(torch.float32).numpy()).astype(np.float64))
        with torch.no_grad():
            p.copy_(torch.log(torch.expm1(s)))
        assert torch.allclose(torch.nn.functional.softplus(p), s, rtol=1e-15, atol=0)


# --------------------------------------------------------------------------------------------------------------------
# Clips and features


def read_wav(path: str) -> np.ndarray:
    """16 kHz mono 16-bit WAV -> float32 samples in [-1, 1) (int16 / 32768, as soundfile / librosa read them)."""
    with wave.open(path) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (SAMPLE_RATE, 1, 2), path
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return data.astype(np.float32) / np.float32(32768)


def write_wav(path: str, samples_i16: np.ndarray) -> None:
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(samples_i16.astype("<i2").tobytes())


def record_clips() -> None:
    """(Re)record tests/fixtures/audio/tower_*.wav: espeak-ng (en-us, 150 words/min) at its 22050 Hz, resampled to
    16 kHz with scipy.signal.resample_poly(320, 441), silence trimmed (|x| < 0.01 at the ends), peak-normalised to
    0.5; the short clip is cut to exactly SHORT_SAMPLES."""
    from scipy.signal import resample_poly

    os.makedirs(os.path.join(FIXTURES, "audio"), exist_ok=True)
    for clip, rel in CLIP_FILES.items():
        with tempfile.TemporaryDirectory() as tmp:
            raw = os.path.join(tmp, "x.wav")
            subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", raw, CLIP_TEXT[clip]], check=True)
            with wave.open(raw) as w:
                assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 22050)
                x = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64) / 32768
        x = resample_poly(x, 320, 441)
        loud = np.flatnonzero(np.abs(x) > 0.01)
        x = x[loud[0]:loud[-1] + 1]
        if clip == "short":
            x = x[:SHORT_SAMPLES]
            assert len(x) == SHORT_SAMPLES
        x = 0.5 * x / np.abs(x).max()
        write_wav(os.path.join(FIXTURES, rel), np.round(x * 32767))


def long_clip(speech: dict) -> np.ndarray:
    """The >30 s clip: the medium and short speech clips and bursts of noise, in turn, with varying gains, under a
    faint noise floor, separated by gaps of digital silence (0.5 to 1.3 s: about a third of the clip; such frames
    are log(1e-3) in every bin and keep the file small), to LONG_SECONDS (float32). numpy default_rng(7): Gaussian
    noise, std 0.1 for the bursts and 0.01 for the floor."""
    rng = np.random.default_rng(7)
    n = int(LONG_SECONDS * SAMPLE_RATE)
    x = np.zeros(n)
    pos, k = 1600, 0
    while pos < n:
        seg = [speech["medium"], speech["short"], rng.normal(0, 0.1, 12000)][k % 3] * (0.6 + 0.4 * (k % 4) / 3)
        end = min(n, pos + len(seg))
        x[pos:end] += seg[:end - pos] + rng.normal(0, 0.01, end - pos)
        pos = end + 8000 + 3200 * (k % 5)
        k += 1
    return np.clip(x, -1, 1).astype(np.float32)


def source_clips() -> dict:
    """clip -> float32 samples (what transformers' feature extractor is given)."""
    speech = {clip: read_wav(os.path.join(FIXTURES, rel)) for clip, rel in CLIP_FILES.items()}
    assert len(speech["short"]) == SHORT_SAMPLES and 2.0 < len(speech["medium"]) / SAMPLE_RATE < 3.0
    return {"short": speech["short"], "medium": speech["medium"], "long": long_clip(speech)}


def n_soft_tokens(n_samples: int) -> int:
    """The soft-token count of a clip: F = (min(n, 480000) - 161) // 160 + 1 mel frames, then two stride-2 convs
    (ceil(F / 2) twice); the same as HF's processor (_compute_audio_num_tokens, capped at 750)."""
    f = (min(n_samples, MAX_SAMPLES) + 160 - 321) // 160 + 1
    for _ in range(2):
        f = (f - 1) // 2 + 1
    return f


def features(samples: np.ndarray) -> dict:
    """HF's Gemma4AudioFeatureExtractor (defaults: 480000-sample truncation, padding to a multiple of 128 samples)
    on one clip: the padded batch HF's model gets, and the unpadded frames."""
    from transformers.models.gemma4.feature_extraction_gemma4 import Gemma4AudioFeatureExtractor

    fe = Gemma4AudioFeatureExtractor()
    assert (fe.frame_length, fe.hop_length, fe.fft_length, fe.feature_size) == (320, 160, 512, 128)
    out = fe([samples], return_tensors="np")
    x, mask = out["input_features"][0], out["input_features_mask"][0]
    assert x.dtype == np.float32 and mask.dtype == bool
    n = int(mask.sum())
    assert mask[:n].all() and not mask[n:].any() and not x[n:].any(), "padding frames are at the end and zero"
    assert n == (min(len(samples), MAX_SAMPLES) - 161) // 160 + 1
    return {"features": x[:n], "mask": mask, "padded": x, "n_soft": n_soft_tokens(len(samples)),
            "n_samples": len(samples)}


def prepare_inputs(clips: dict) -> dict:
    inputs = {clip: features(x) for clip, x in clips.items()}
    # The part of the long clip HF's extractor drops (llama.cpp would encode it as a second 30 s piece).
    inputs["long_rest"] = features(clips["long"][MAX_SAMPLES:])
    # HF truncates: the long clip's features are exactly those of its first 480000 samples
    assert np.array_equal(inputs["long"]["features"], features(clips["long"][:MAX_SAMPLES])["features"])
    return inputs


def audio_span(n_soft: int) -> list[int]:
    return [MARKERS["<|audio>"]] + [MARKERS["<|audio|>"]] * n_soft + [MARKERS["<audio|>"]]


# --------------------------------------------------------------------------------------------------------------------
# Goldens


def run_case(model, dtype, ids: np.ndarray, inp: dict):
    """HF's full forward on one prompt with the padded features and mask: (logits [T, V], spliced soft tokens)."""
    import torch

    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(ids.astype(np.int64))[None],
                    input_features=torch.from_numpy(inp["padded"]).to(dtype)[None],
                    input_features_mask=torch.from_numpy(inp["mask"])[None], use_cache=False)
    return out.logits[0].to(torch.float64).numpy(), out.audio_hidden_states.to(torch.float64).numpy()


def tower_trace(model, feats: np.ndarray) -> dict:
    """The tower's intermediates for one unpadded clip (float64), each as the reference names them."""
    import torch

    tower = model.model.audio_tower
    got: dict = {k: [] for k in ("ffn1", "attn", "lconv", "ffn2", "layer_out")}
    sscp = tower.subsample_conv_projection
    hooks = [sscp.layer0.register_forward_hook(lambda m, a, o: got.__setitem__("sscp_conv0", o[0])),
             sscp.layer1.register_forward_hook(lambda m, a, o: got.__setitem__("sscp_conv1", o[0])),
             sscp.register_forward_hook(lambda m, a, o: got.__setitem__("sscp", o[0])),
             tower.output_proj.register_forward_hook(lambda m, a, o: got.__setitem__("output_proj", o))]
    for layer in tower.layers:
        hooks += [layer.feed_forward1.register_forward_hook(lambda m, a, o: got["ffn1"].append(o.clone())),
                  layer.lconv1d.register_forward_pre_hook(lambda m, a: got["attn"].append(a[0].clone())),
                  layer.lconv1d.register_forward_hook(lambda m, a, o: got["lconv"].append(o.clone())),
                  layer.feed_forward2.register_forward_hook(lambda m, a, o: got["ffn2"].append(o.clone())),
                  layer.register_forward_hook(lambda m, a, o: got["layer_out"].append(o.clone()))]
    soft = tower_run(model, feats, torch.float64)
    for h in hooks:
        h.remove()

    def f(t):
        return t.detach().to(torch.float64).numpy()

    trace = {k: np.stack([f(t[0]) for t in got[k]]) for k in ("ffn1", "attn", "lconv", "ffn2", "layer_out")}
    trace["sscp_conv0"] = f(got["sscp_conv0"][0]).transpose(1, 2, 0)  # [channel, time, freq] -> [time, freq, channel]
    trace["sscp_conv1"] = f(got["sscp_conv1"][0]).transpose(1, 2, 0)
    trace["sscp"] = f(got["sscp"][0])
    trace["output_proj"] = f(got["output_proj"][0])
    trace["soft_tokens"] = f(soft)
    return trace


def clip_fractions(model, inputs: dict) -> dict:
    """Share of the values each clamp bound changes, over all clips (float64)."""
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
    for clip in CLIPS:
        tower_run(model, inputs[clip]["features"], torch.float64)
    for h in hooks:
        h.remove()
    return {name: [round(float(c[i] / c[4 + i // 2]), 5) for i in range(4)] for name, c in counts.items()}


def check_attention_mask(model, inp: dict) -> None:
    """The blocked mask HF's tower builds is what the reference assumes: query t sees keys t-11 .. t (float mask,
    0 = allowed), none of the 11 keys after it, nothing before the clip's start."""
    import torch

    seen = {}
    attn = model.model.audio_tower.layers[0].self_attn
    h = attn.register_forward_hook(lambda m, a, k, o: seen.__setitem__("mask", k["attention_mask"]), with_kwargs=True)
    tower_run(model, inp["features"], torch.float64)
    h.remove()
    mask = seen["mask"][0, 0].numpy() != 0  # [blocks, 12, 24], True = masked
    n = inp["n_soft"]
    for b in range(mask.shape[0]):
        for i in range(12):
            t = 12 * b + i
            if t >= n:
                continue
            keys = 12 * b - 12 + np.arange(24)
            allowed = (t - keys >= 0) & (t - keys < 12) & (keys >= 0) & (keys < n)
            assert np.array_equal(~mask[b, i], allowed), (b, i)


# --------------------------------------------------------------------------------------------------------------------
# Writing


def audio_entries(built: Built, cfg: TinyAudio) -> list:
    """(name, ne, type, chunks) for the a.* / mm.a.* tensors in audio_specs order, each layer's clamp scalars after
    its tensors, with the layout's names."""
    specs = audio_specs(cfg.audio, cfg.text.d_model)
    by_layer: dict[int, list] = {}
    for spec in specs:
        if spec.kind == "clamp":
            base, suffix = spec.name.rsplit(".", 1)
            value = np.array([built.clamps[base][CLAMP_SUFFIXES.index(suffix)]], np.float32)
            by_layer.setdefault(spec.layer, []).append((spec.gguf_name(cfg.layout), spec.ne, Q.F32,
                                                        vis.one_chunk(value)))
    last_of_layer = {}
    for i, (spec, _, _) in enumerate(built.audio):
        if spec.layer >= 0:
            last_of_layer[spec.layer] = i
    entries = []
    for i, (spec, qtype, payload) in enumerate(built.audio):
        entries.append((spec.gguf_name(cfg.layout), spec.ne, qtype, vis.one_chunk(payload)))
        if spec.layer >= 0 and last_of_layer[spec.layer] == i:
            entries += by_layer[spec.layer]
    return entries


def write_files(built: Built, cfg: TinyAudio, out_dir: str, info: dict, vocab: layout.FakeVocab) -> dict:
    """-> {file name: size}"""
    base = os.path.join(out_dir, PREFIX + cfg.name)
    text_entries = [(s.name, s.ne, qtype, vis.one_chunk(p)) for s, qtype, p in built.text]
    file_type = tiny.FILE_TYPE[cfg.weights]
    sizes = {}

    def text_metadata(w: GGUFWriter, name: str) -> None:
        w.add_name(name)
        w.add_description(f"random tiny Gemma 4 test model with an audio tower: {json.dumps(info)}")
        w.add_file_type(file_type)
        if cfg.weights != "f32":
            w.add_quantization_version(2)
        layout.add_gemma4_metadata(w, cfg.text)
        layout.add_tokenizer(w, vocab, model="gemma4")

    if cfg.layout == "ollama":
        assert cfg.text.tower_keys == cfg.audio.ollama_keys()
        sizes[PREFIX + cfg.name + ".gguf"] = layout.write_gguf_streaming(
            base + ".gguf", lambda w: text_metadata(w, f"gemma4-tiny-audio-{cfg.name}"),
            text_entries + audio_entries(built, cfg))
        return sizes

    assert not cfg.text.tower_keys, "llama.cpp's text GGUF has no tower keys"
    sizes[PREFIX + cfg.name + ".gguf"] = layout.write_gguf_streaming(
        base + ".gguf", lambda w: text_metadata(w, f"gemma4-tiny-audio-{cfg.name}"), text_entries)

    a = cfg.audio

    def mmproj_metadata(w: GGUFWriter) -> None:
        # The audio keys llama.cpp's converter writes for Gemma 4 (MmprojModel.set_gguf_parameters and
        # Gemma4VisionAudioModel.set_gguf_parameters). The real converter always writes the vision tower too
        # (it asserts a vision_config); this mmproj has the audio tower only, as clip.cpp allows.
        w.add_type("mmproj")
        w.add_name(f"gemma4-tiny-audio-{cfg.name}-mmproj")
        w.add_description(f"audio tower of gemma4-tiny-audio-{cfg.name}: {json.dumps(info)}")
        w.add_file_type(file_type)
        w.add_quantization_version(2)
        w.add_bool("clip.has_audio_encoder", True)
        w.add_uint32("clip.audio.projection_dim", cfg.text.d_model)
        w.add_uint32("clip.audio.embedding_length", a.d)
        w.add_uint32("clip.audio.feed_forward_length", a.n_ff)
        w.add_uint32("clip.audio.block_count", a.n_layer)
        w.add_uint32("clip.audio.attention.head_count", a.n_head)
        w.add_string("clip.audio.projector_type", "gemma4a")
        w.add_uint32("clip.audio.num_mel_bins", a.n_mel)
        w.add_float32("clip.audio.attention.layer_norm_epsilon", a.eps)

    sizes[PREFIX + cfg.name + ".mmproj.gguf"] = layout.write_gguf_streaming(
        base + ".mmproj.gguf", mmproj_metadata, audio_entries(built, cfg), arch="clip")
    return sizes


def write_inputs(path: str, clips: dict, inputs: dict) -> int:
    from importlib.metadata import version

    info = {"clips": list(CLIPS), "files": CLIP_FILES, "text": CLIP_TEXT,
            "n_samples": {k: int(v["n_samples"]) for k, v in inputs.items()},
            "n_soft": {k: int(v["n_soft"]) for k, v in inputs.items()},
            "long": f"long_clip(): {LONG_SECONDS} s of the two speech clips, noise bursts and a noise floor "
                    "(numpy default_rng(7)); HF's extractor keeps its first 480000 samples (30 s)",
            "long_rest": "the long clip's samples 480000.. (what HF drops; llama.cpp encodes it as a second piece)",
            "extractor": "transformers Gemma4AudioFeatureExtractor() defaults, called as fe([samples]) on float32 "
                         "samples int16 / 32768",
            "versions": {p: version(p) for p in ("transformers", "numpy")},
            "command": "python tools/make_tiny_gemma4_audio.py"}
    arrays = {"info": np.array(json.dumps(info))}
    for name, x in inputs.items():
        arrays[f"{name}_features"] = x["features"]
        arrays[f"{name}_mask"] = x["mask"]
    np.savez_compressed(path, **arrays)
    return os.path.getsize(path)


def make(cfg: TinyAudio, out_dir: str, clips: dict, inputs: dict) -> None:
    from importlib.metadata import version

    import torch

    vocab = vis.fake_vocab()
    for s, i in MARKERS.items():
        assert vocab.tokens[i] == s
    built = build(cfg)
    model = built.model
    calibrate_clamps(built, cfg, inputs)

    prompt_clips = PROMPT_CLIPS[cfg.name]
    prompts = {clip: vis.chat(vocab, [audio_span(inputs[clip]["n_soft"]), "▁what ▁is ▁it"])
               for clip in prompt_clips}
    for ids in prompts.values():
        assert set(ids.tolist()) & {MARKERS[s] for s in ("<|image>", "<|image|>", "<image|>", "<|video|>")} == set()

    info = {
        "config": cfg.name, "weights": cfg.weights, "layout": cfg.layout, "seed": cfg.seed, "markers": MARKERS,
        "clips": list(CLIPS), "prompt_clips": list(prompt_clips), "debug_clip": DEBUG_CLIP,
        "goldens": "HF Gemma4ForConditionalGeneration, float64 (make_float64_exact and make_audio_float64_exact), "
                   "stored as float32",
        "versions": {p: version(p) for p in ("torch", "transformers", "gguf", "numpy")},
        "command": f"python tools/make_tiny_gemma4_audio.py {cfg.name}",
    }
    sizes = write_files(built, cfg, out_dir, info, vocab)

    def run_all(dtype):
        return {clip: run_case(model, dtype, prompts[clip], inputs[clip]) for clip in prompt_clips}

    gold32 = run_all(torch.float32)
    soft32 = {clip: tower_run(model, inputs[clip]["features"], torch.float32).numpy() for clip in CLIPS}
    model = model.to(torch.float64)
    tiny.make_float64_exact(types.SimpleNamespace(modules=model.modules, model=model.model.language_model,
                                                  config=model.config.text_config), cfg.text)
    make_audio_float64_exact(model, cfg)
    gold = run_all(torch.float64)
    check_attention_mask(model, inputs["medium"])

    names = list(CLIPS) + ["long_rest"]
    traces = {name: tower_trace(model, inputs[name]["features"]) for name in names}
    for clip in prompt_clips:
        assert np.abs(traces[clip]["soft_tokens"] - gold[clip][1]).max() < 1e-12, clip
    for name in names:
        assert traces[name]["soft_tokens"].shape == (inputs[name]["n_soft"], cfg.text.d_model)

    # How much the clamps matter: the soft tokens with every bound removed.
    saved = {n: [getattr(m, s).clone() for s in CLAMP_SUFFIXES] for n, m in clippable_linears(model).items()}
    for m in clippable_linears(model).values():
        for s in CLAMP_SUFFIXES:
            getattr(m, s).fill_(math.inf if s.endswith("max") else -math.inf)
    unclamped = {c: tower_run(model, inputs[c]["features"], torch.float64).numpy() for c in CLIPS}
    for n, m in clippable_linears(model).items():
        for s, t in zip(CLAMP_SUFFIXES, saved[n]):
            getattr(m, s).copy_(t)
    info["clip_fraction"] = clip_fractions(model, inputs)
    info["no_clamp_soft_token_max_abs_diff"] = float(max(np.abs(unclamped[c] - traces[c]["soft_tokens"]).max()
                                                         for c in CLIPS))
    info["hf_float32_max_abs_diff"] = {
        "soft_tokens": float(max(np.abs(soft32[c] - traces[c]["soft_tokens"]).max() for c in CLIPS)),
        "soft_tokens_per_clip": {c: float(np.abs(soft32[c] - traces[c]["soft_tokens"]).max()) for c in CLIPS},
        "logits": float(max(np.abs(gold32[c][0] - gold[c][0]).max() for c in gold)),
        "logits_per_clip": {c: float(np.abs(gold32[c][0] - gold[c][0]).max()) for c in gold}}
    info["tensor_sha256_16"] = built.hashes
    info["tensor_sha256_16_note"] = ("keyed by Ollama's names (llama.cpp's: map with the README table); "
                                     "per_dim_scale: the stored softplus values")

    def f32(x):
        return np.asarray(x, dtype=np.float32)

    arrays = {"info": np.array(json.dumps(info)), "marker_ids": np.array(list(MARKERS.values()), np.int32),
              "marker_names": np.array(list(MARKERS))}
    for name in names:
        arrays[f"{name}_soft_tokens"] = f32(traces[name]["soft_tokens"])
    for clip in prompt_clips:
        arrays[f"{clip}_tokens"] = prompts[clip]
        arrays[f"{clip}_logits"] = f32(gold[clip][0])
    for k in ("sscp_conv1", "sscp", "ffn1", "attn", "lconv", "ffn2", "layer_out", "output_proj"):
        arrays[f"debug_{k}"] = f32(traces[DEBUG_CLIP][k])
    npz = os.path.join(out_dir, PREFIX + cfg.name + ".npz")
    np.savez_compressed(npz, **arrays)
    sizes[os.path.basename(npz)] = os.path.getsize(npz)
    clipping = sum(any(f > 0 for f in fr) for fr in info["clip_fraction"].values())
    print(f"{cfg.name}: " + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in sizes.items())
          + f"; |logits| max {max(np.abs(g[0]).max() for g in gold.values()):.2f}, |soft| max "
          f"{max(np.abs(t['soft_tokens']).max() for t in traces.values()):.2f}, HF float32 vs float64 "
          f"{info['hf_float32_max_abs_diff']}, {clipping}/{len(info['clip_fraction'])} linears clip, without "
          f"clamps the soft tokens move by {info['no_clamp_soft_token_max_abs_diff']:.3g}")


def main(argv: list[str] | None = None) -> None:
    tiny.hide_torchvision()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help=f"configs to build (default all): {', '.join(CONFIGS)}")
    ap.add_argument("--out", default=FIXTURES, help="output folder (default tests/fixtures)")
    ap.add_argument("--record", action="store_true", help="record the speech clips with espeak-ng first")
    args = ap.parse_args(argv)
    if args.record:
        record_clips()
    os.makedirs(args.out, exist_ok=True)
    clips = source_clips()
    inputs = prepare_inputs(clips)
    size = write_inputs(os.path.join(args.out, PREFIX + "inputs.npz"), clips, inputs)
    print(f"inputs: {PREFIX}inputs.npz {size / 1e6:.2f} MB; n_soft {({k: v['n_soft'] for k, v in inputs.items()})}")
    for name in args.names or CONFIGS:
        make(CONFIGS[name], args.out, clips, inputs)


if __name__ == "__main__":
    main()
