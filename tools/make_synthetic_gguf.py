"""Write a GGUF shaped exactly like Ollama's `gemma4:e2b` (Q4_K_M) text model, filled with random but valid data.

What it is for: GPU benchmarks and loader tests without the 7 GB download. Every text tensor has E2B's real name,
shape and Ollama Q4_K_M type (see docs of `tensor_specs` and `q4_k_m_type`), every `gemma4.*` metadata key carries
E2B's value, and the tokenizer section has E2B's vocabulary size with the special tokens at their real ids. The
weights are random quant blocks with small finite scales, so kernels see realistic value ranges (|w| < 0.13) and
the output is finite but meaningless. The vision and audio towers are not written (only their metadata keys are,
as in the real single-file blob), so the file is about 5.9 GB rather than 7.2 GB; 4.7 GB of it is the BF16
per-layer embedding table, which `--vocab` shrinks.

The file is written tensor by tensor in chunks of about 64 MB, so memory stays small and the full-size file takes
well under a minute on a machine with a fast disk:

    python tools/make_synthetic_gguf.py /tmp/gemma4-e2b-synthetic.gguf            # full size (~5.9 GB)
    python tools/make_synthetic_gguf.py /tmp/small.gguf --vocab 1024 --layers 10  # scaled down (~330 MB)

This module is also the single place that knows the Gemma 4 GGUF layout (metadata keys, tensor names including
26B-A4B's mixture of experts, the fake tokenizer, Ollama's Q4_K_M type rule); tools/make_tiny_gemma4.py imports
it. Needs only numpy and gguf.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as Q, GGUFValueType, GGUFWriter, LlamaFileType, TokenType

ARCH = "gemma4"


# --------------------------------------------------------------------------------------------------------------------
# Hyper-parameters


@dataclass(frozen=True)
class Gemma4Dims:
    """The text decoder's hyper-parameters, in the terms the GGUF metadata uses. Defaults are Gemma 4 E2B's."""

    n_layer: int = 35
    d_model: int = 1536
    n_head: int = 8
    n_kv_head: int = 1  # same on sliding and global layers for E2B/E4B, so the key is a scalar
    head_dim_swa: int = 256
    head_dim_full: int = 512
    n_ff: int = 6144
    double_wide_shared_ffn: bool = True  # E2B: the KV-shared layers have a 2x wider FFN (12288)
    swa_per_period: int = 4  # layer pattern: this many sliding layers, then one global layer, repeated
    n_kv_shared: int = 20  # the last n layers reuse the K/V of earlier layers
    ple_dim: int = 256  # per-layer-embedding width (embedding_length_per_layer_input)
    n_vocab: int = 262144
    sliding_window: int = 512
    context_length: int = 131072
    rope_base_full: float = 1e6
    rope_base_swa: float = 1e4
    partial_rotary_full: float = 0.25  # global layers rotate only the first quarter of the frequencies
    final_logit_softcap: float = 30.0
    rms_eps: float = 1e-6
    # 26B-A4B-style layers (all off for E2B/E4B):
    n_kv_head_full: int | None = None  # KV heads of the global layers when they differ (26B: 8 sliding, 2 global)
    k_eq_v: bool = False  # global layers have no attn_v: V is the K projection, RMS-normalised without a weight
    n_expert: int = 0  # > 0: every layer adds a routed mixture of experts next to its dense FFN
    n_expert_used: int = 0
    n_ff_exp: int = 0  # each expert's FFN width
    tower_keys: dict = field(default_factory=dict, compare=False)  # extra gemma4.vision.* / gemma4.audio.* keys

    @property
    def first_shared(self) -> int:
        return self.n_layer - self.n_kv_shared

    def is_swa(self, il: int) -> bool:
        return (il + 1) % (self.swa_per_period + 1) != 0

    def n_ff_layer(self, il: int) -> int:
        return self.n_ff * 2 if (self.double_wide_shared_ffn and il >= self.first_shared) else self.n_ff

    def head_dim(self, il: int) -> int:
        return self.head_dim_swa if self.is_swa(il) else self.head_dim_full

    def n_kv_head_layer(self, il: int) -> int:
        return self.n_kv_head if self.is_swa(il) or self.n_kv_head_full is None else self.n_kv_head_full

    def has_v_proj(self, il: int) -> bool:
        return self.is_swa(il) or not self.k_eq_v

    def check(self) -> None:
        """The constraints llama.cpp's loader asserts (and HF's config forces): the last layer is global, and the
        K/V donors of the shared layers are first_shared-2 (sliding) and first_shared-1 (global)."""
        assert not self.is_swa(self.n_layer - 1), "the last layer must be a global (full attention) layer"
        if self.n_kv_shared:
            fs = self.first_shared
            assert fs >= 2 and not self.is_swa(fs - 1) and self.is_swa(fs - 2), (
                f"first shared layer {fs} must follow a global layer that follows a sliding one (llama.cpp donor rule)")
        if self.n_expert:
            assert 0 < self.n_expert_used <= self.n_expert and self.n_ff_exp > 0, "expert count, used count, width"


E2B_TOWER_KEYS = {
    # Written by Ollama's converter next to the text keys in its single-file blob (gemma4.md section 2.1).
    "vision.block_count": 16, "vision.embedding_length": 768, "vision.attention.head_count": 12,
    "vision.feed_forward_length": 3072, "vision.patch_size": 16, "vision.num_channels": 3,
    "vision.projector.scale_factor": 3, "vision.attention.layer_norm_epsilon": 1e-6,
    "audio.block_count": 12, "audio.embedding_length": 1024, "audio.feed_forward_length": 4096,
    "audio.attention.head_count": 8, "audio.attention.layer_norm_epsilon": 1e-6, "audio.conv_kernel_size": 5,
}

E2B = Gemma4Dims(tower_keys=E2B_TOWER_KEYS)


def scaled_e2b(n_layer: int = 35, n_vocab: int = 262144, n_kv_shared: int | None = None) -> Gemma4Dims:
    """E2B with fewer layers and/or a smaller vocabulary; every per-layer shape stays E2B's. The default share of
    KV-shared layers keeps E2B's proportion (20 of 35) rounded to whole 5-layer periods."""
    assert n_layer % 5 == 0, "keep whole (4 sliding + 1 global) periods so the last layer is global"
    if n_kv_shared is None:
        n_kv_shared = n_layer - 5 * max(1, round(3 / 7 * n_layer / 5))
    dims = replace(E2B, n_layer=n_layer, n_vocab=n_vocab, n_kv_shared=n_kv_shared)
    dims.check()
    return dims


# --------------------------------------------------------------------------------------------------------------------
# Metadata


def add_u32_array(w: GGUFWriter, key: str, values) -> None:
    # GGUFWriter.add_array would type Python ints as INT32; Ollama and llama.cpp read these as UINT32 arrays.
    w.add_key_value(key, [int(v) for v in values], GGUFValueType.ARRAY, sub_type=GGUFValueType.UINT32)


def add_gemma4_metadata(w: GGUFWriter, dims: Gemma4Dims, arch: str = ARCH) -> None:
    """The `gemma4.*` keys in Ollama's single-file layout (gemma4.md section 2.1), spelled out one by one so the list
    can be checked against that table. `attention.head_count_kv` is a per-layer UINT32 array when the global layers
    have their own KV head count (26B-A4B), a scalar otherwise; MoE models add the three `expert_*` keys.

    arch "diffusion-gemma" writes the same text keys under its own prefix, without the two keys of E2B/E4B's
    per-layer embeddings and KV sharing (`shared_kv_layers`, `embedding_length_per_layer_input`), which Ollama's
    gemma4 converter writes even when they are 0."""
    dims.check()
    k = f"{arch}."
    w.add_uint32(k + "context_length", dims.context_length)
    w.add_uint32(k + "block_count", dims.n_layer)
    w.add_uint32(k + "embedding_length", dims.d_model)
    add_u32_array(w, k + "feed_forward_length", [dims.n_ff_layer(il) for il in range(dims.n_layer)])
    w.add_uint32(k + "attention.head_count", dims.n_head)
    if dims.n_kv_head_full is None or dims.n_kv_head_full == dims.n_kv_head:
        w.add_uint32(k + "attention.head_count_kv", dims.n_kv_head)
    else:
        add_u32_array(w, k + "attention.head_count_kv", [dims.n_kv_head_layer(il) for il in range(dims.n_layer)])
    w.add_uint32(k + "attention.key_length", dims.head_dim_full)
    w.add_uint32(k + "attention.value_length", dims.head_dim_full)
    w.add_uint32(k + "attention.key_length_swa", dims.head_dim_swa)
    w.add_uint32(k + "attention.value_length_swa", dims.head_dim_swa)
    w.add_float32(k + "attention.layer_norm_rms_epsilon", dims.rms_eps)
    w.add_uint32(k + "attention.sliding_window", dims.sliding_window)
    w.add_key_value(k + "attention.sliding_window_pattern", [dims.is_swa(il) for il in range(dims.n_layer)],
                    GGUFValueType.ARRAY, sub_type=GGUFValueType.BOOL)
    if arch == ARCH:
        w.add_uint32(k + "attention.shared_kv_layers", dims.n_kv_shared)
    w.add_float32(k + "rope.freq_base", dims.rope_base_full)
    w.add_float32(k + "rope.freq_base_swa", dims.rope_base_swa)
    # llama.cpp rotates all head_dim_full dims of the global layers and switches the upper 3/4 of the frequencies off
    # with rope_freqs (factor 1e30), because ggml's NeoX rope cannot skip the middle of a head (see rope_freq_factors).
    w.add_uint32(k + "rope.dimension_count", dims.head_dim_full)
    w.add_uint32(k + "rope.dimension_count_swa", dims.head_dim_swa)
    w.add_float32(k + "final_logit_softcapping", dims.final_logit_softcap)
    if arch == ARCH:
        w.add_uint32(k + "embedding_length_per_layer_input", dims.ple_dim)
    if dims.n_expert:
        w.add_uint32(k + "expert_count", dims.n_expert)
        w.add_uint32(k + "expert_used_count", dims.n_expert_used)
        w.add_uint32(k + "expert_feed_forward_length", dims.n_ff_exp)
    for key, value in dims.tower_keys.items():
        (w.add_float32 if isinstance(value, float) else w.add_uint32)(k + key, value)


def rope_freq_factors(dims: Gemma4Dims) -> np.ndarray:
    """rope_freqs.weight: one factor per frequency of the global layers' head. 1.0 = rotate; 1e30 makes the angle
    ~0, which is how llama.cpp expresses HF's 'proportional' rope (inv_freq = 0 past partial_rotary_factor)."""
    n_freq = dims.head_dim_full // 2
    n_rot = int(dims.head_dim_full * dims.partial_rotary_full / 2)
    return np.array([1.0] * n_rot + [1e30] * (n_freq - n_rot), dtype=np.float32)


# --------------------------------------------------------------------------------------------------------------------
# Tokenizer: a small fake vocabulary with Gemma 4's special tokens at their real ids


SPECIAL_TOKENS = {
    0: "<pad>", 1: "<eos>", 2: "<bos>", 3: "<unk>", 4: "<mask>",
    46: "<|tool>", 47: "<tool|>", 48: "<|tool_call>", 49: "<tool_call|>",
    50: "<|tool_response>", 51: "<tool_response|>", 52: '<|"|>',  # 50/51 are guesses (gemma4.md: unconfirmed)
    98: "<|think|>",  # guess as well
    100: "<|channel>", 101: "<channel|>", 105: "<|turn>", 106: "<turn|>",
    # Multimodal markers; they only exist when the vocabulary is real-sized.
    255999: "<|image>", 256000: "<|audio>", 258880: "<|image|>", 258881: "<|audio|>", 258882: "<image|>",
    258883: "<audio|>", 258884: "<|video|>",
}
# llama.cpp's converter marks these USER_DEFINED so they are rendered in the output (its chat parser reads them).
VISIBLE_SPECIALS = {"<|channel>", "<channel|>", "<|tool_call>", "<tool_call|>", "<|tool_response>",
                    "<tool_response|>", '<|"|>'}
NEWLINE_ID = 107
FIRST_BYTE_ID = 256  # <0x00>..<0xFF> occupy ids 256..511 (byte fallback)
WORDS = ["user", "model", "system", "▁the", "▁a", "▁is", "▁of", "▁and", "▁to", "▁in", "▁hello", "▁world",
         "▁Gemma", "▁model", "▁cat", "▁sat", "▁on", "▁mat", "▁what", "▁time", "▁it", "▁Hi", "▁there", "▁you",
         "ing", "ed", "."]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<|turn>{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
    "{{ message['content'] | trim }}<turn|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|turn>model\n{% endif %}")


@dataclass
class FakeVocab:
    tokens: list[str]
    scores: list[float]
    types: list[int]
    merges: list[str]

    def id(self, piece: str) -> int:
        return self.tokens.index(piece)


def fake_vocab(n_vocab: int, specials: dict[int, str] | None = None) -> FakeVocab:
    """BPE vocabulary shaped like Gemma 4's: specials at their real ids, '\\n' at 107, SentencePiece-style '▁'
    pieces built by a chain of merges (so a BPE tokenizer can really produce the words in WORDS), byte-fallback
    tokens, and for large vocabularies filler pieces '▁t<id>' up to n_vocab. `specials` (default SPECIAL_TOKENS)
    lets a small vocabulary hold tokens that really live past its end, e.g. the multimodal markers."""
    assert n_vocab >= 2 * FIRST_BYTE_ID, "the byte tokens need ids up to 511"
    tokens: list[str | None] = [None] * n_vocab
    types = [int(TokenType.NORMAL)] * n_vocab
    for i, s in (SPECIAL_TOKENS if specials is None else specials).items():
        if i < n_vocab:
            tokens[i] = s
            types[i] = int(TokenType.USER_DEFINED if s in VISIBLE_SPECIALS else TokenType.CONTROL)
    types[3] = int(TokenType.UNKNOWN)
    tokens[NEWLINE_ID] = "\n"
    for b in range(256):
        tokens[FIRST_BYTE_ID + b] = f"<0x{b:02X}>"
        types[FIRST_BYTE_ID + b] = int(TokenType.BYTE)

    # Characters first, then each word's left-to-right prefixes, each new prefix being one merge.
    pieces: list[str] = []
    merges: list[str] = []
    for ch in sorted({c for word in WORDS for c in word}):
        pieces.append(ch)
    for word in WORDS:
        for n in range(2, len(word) + 1):
            if word[:n] not in pieces:
                pieces.append(word[:n])
                merges.append(f"{word[:n - 1]} {word[n - 1]}")
    free = [i for i in range(NEWLINE_ID + 1, FIRST_BYTE_ID) if tokens[i] is None]
    assert len(pieces) <= len(free), "WORDS do not fit below the byte tokens"
    for i, p in zip(free, pieces):
        tokens[i] = p
    for i in range(n_vocab):
        if tokens[i] is None:
            # Below 512: Gemma-style reserved slots; above: filler words so random ids still detokenize to text.
            if i < 2 * FIRST_BYTE_ID:
                tokens[i], types[i] = f"<unused{i}>", int(TokenType.UNUSED)
            else:
                tokens[i] = f"▁t{i}"
    scores = [0.0 if types[i] != TokenType.NORMAL else -float(i) for i in range(n_vocab)]
    return FakeVocab(tokens, scores, types, merges)  # type: ignore[arg-type]


def add_tokenizer(w: GGUFWriter, vocab: FakeVocab, model: str = "gemma4") -> None:
    """tokenizer.ggml.* as llama.cpp's Gemma 4 converter writes them. Ollama's published blobs say model "llama"
    (its compat shim rewrites that to "gemma4" for llama.cpp); pass model="llama" to imitate a blob."""
    w.add_tokenizer_model(model)
    w.add_tokenizer_pre("gemma4")
    w.add_token_list(vocab.tokens)
    w.add_token_scores(vocab.scores)
    w.add_token_types(vocab.types)
    w.add_token_merges(vocab.merges)
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    w.add_unk_token_id(3)
    w.add_pad_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_space_prefix(False)
    w.add_chat_template(CHAT_TEMPLATE)


# --------------------------------------------------------------------------------------------------------------------
# Tensors


@dataclass(frozen=True)
class TensorSpec:
    name: str
    ne: tuple[int, ...]  # GGUF order: ne[0] is the contiguous (input) dimension
    # "matrix", "norm", "scalar", "rope_freqs", "ple" (per_layer_token_embd), "embd" (token_embd); MoE: "router"
    # (ffn_gate_inp), "router_scale" (ffn_gate_inp.scale), "experts" (3-D), "expert_scale" (ffn_down_exps.scale)
    kind: str
    layer: int = -1

    @property
    def shape(self) -> tuple[int, ...]:
        """numpy (row-major) shape, the reverse of ne."""
        return tuple(reversed(self.ne))


def tensor_specs(dims: Gemma4Dims) -> list[TensorSpec]:
    """Every text tensor of Ollama's Gemma 4 layout, in a fixed order. KV-shared layers have no attn_k, attn_v or
    attn_k_norm (HF does not create them and the converters write none); with k_eq_v, global layers have no attn_v.
    Models without per-layer embeddings (ple_dim 0, 26B-A4B) have no PLE tensors.

    MoE layers (n_expert > 0) add, next to the dense FFN, the names of Ollama's and llama.cpp's converters, with
    HF's values unchanged: ffn_gate_inp [E x D] (router.proj), ffn_gate_inp.scale [D] (router.scale),
    ffn_gate_up_exps, numpy [E, 2 n_ff_exp, D] (experts.gate_up_proj: each expert's gate rows, then its up rows),
    ffn_down_exps, numpy [E, D, n_ff_exp] (experts.down_proj), ffn_down_exps.scale [E] (router.per_expert_scale),
    and the norms pre_ffw_norm_2, post_ffw_norm_1, post_ffw_norm_2."""
    d, p, n_l = dims.d_model, dims.ple_dim, dims.n_layer
    specs = [TensorSpec("token_embd.weight", (d, dims.n_vocab), "embd")]
    if p:
        specs += [
            TensorSpec("per_layer_token_embd.weight", (n_l * p, dims.n_vocab), "ple"),
            TensorSpec("per_layer_model_proj.weight", (d, n_l * p), "matrix"),
            TensorSpec("per_layer_proj_norm.weight", (p,), "norm"),
        ]
    specs.append(TensorSpec("rope_freqs.weight", (dims.head_dim_full // 2,), "rope_freqs"))
    for il in range(n_l):
        hd, ff, b = dims.head_dim(il), dims.n_ff_layer(il), f"blk.{il}."
        n_kv = dims.n_kv_head_layer(il)
        shared = il >= dims.first_shared
        specs += [
            TensorSpec(b + "attn_norm.weight", (d,), "norm", il),
            TensorSpec(b + "attn_q.weight", (d, dims.n_head * hd), "matrix", il),
            TensorSpec(b + "attn_q_norm.weight", (hd,), "norm", il),
        ]
        if not shared:
            specs += [
                TensorSpec(b + "attn_k.weight", (d, n_kv * hd), "matrix", il),
                TensorSpec(b + "attn_k_norm.weight", (hd,), "norm", il),
            ]
            if dims.has_v_proj(il):
                specs.append(TensorSpec(b + "attn_v.weight", (d, n_kv * hd), "matrix", il))
        specs += [
            TensorSpec(b + "attn_output.weight", (dims.n_head * hd, d), "matrix", il),
            TensorSpec(b + "post_attention_norm.weight", (d,), "norm", il),
            TensorSpec(b + "ffn_norm.weight", (d,), "norm", il),
            TensorSpec(b + "ffn_gate.weight", (d, ff), "matrix", il),
            TensorSpec(b + "ffn_up.weight", (d, ff), "matrix", il),
            TensorSpec(b + "ffn_down.weight", (ff, d), "matrix", il),
        ]
        if dims.n_expert:
            e, ff_e = dims.n_expert, dims.n_ff_exp
            specs += [
                TensorSpec(b + "post_ffw_norm_1.weight", (d,), "norm", il),
                TensorSpec(b + "ffn_gate_inp.weight", (d, e), "router", il),
                TensorSpec(b + "ffn_gate_inp.scale", (d,), "router_scale", il),
                TensorSpec(b + "pre_ffw_norm_2.weight", (d,), "norm", il),
                TensorSpec(b + "ffn_gate_up_exps.weight", (d, 2 * ff_e, e), "experts", il),
                TensorSpec(b + "ffn_down_exps.weight", (ff_e, d, e), "experts", il),
                TensorSpec(b + "ffn_down_exps.scale", (e,), "expert_scale", il),
                TensorSpec(b + "post_ffw_norm_2.weight", (d,), "norm", il),
            ]
        specs.append(TensorSpec(b + "post_ffw_norm.weight", (d,), "norm", il))
        if p:
            specs += [
                TensorSpec(b + "inp_gate.weight", (d, p), "matrix", il),
                TensorSpec(b + "proj.weight", (p, d), "matrix", il),
                TensorSpec(b + "post_norm.weight", (d,), "norm", il),
            ]
        specs.append(TensorSpec(b + "layer_output_scale.weight", (1,), "scalar", il))
    specs.append(TensorSpec("output_norm.weight", (d,), "norm"))
    return specs


def use_more_bits(i: int, n: int) -> bool:
    """llama.cpp's (and Ollama's) Q4_K_M rule for which attn_v / ffn_down tensors get Q6_K: the first and last
    eighth of them, and every third one in between."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def q4_k_m_types(specs: list[TensorSpec]) -> dict[str, Q]:
    """Ollama's Q4_K_M choice per tensor (server/quantization.go, re-derived in recipes/gemma4-oracle/
    ollama_layout.py): 1-D tensors F32; the PLE table stays BF16 (Ollama never quantizes it); the tied embedding
    (which is also the LM head) Q6_K; attn_v and ffn_down Q6_K where use_more_bits says so, counted over the
    tensors that exist (attn_v only in non-shared layers); every other matrix Q4_K. A row length that is not a
    multiple of 256 falls back to Q5_0 / Q8_0 as in llama.cpp, and to BF16 if not even a multiple of 32.

    MoE tensors: the router ffn_gate_inp stays F32 (llama.cpp's converter writes it F32 and neither quantizer
    touches it), its two scale vectors are 1-D; ffn_gate_up_exps is Q4_K, and ffn_down_exps gets Q6_K in the layers
    where use_more_bits(layer, n_layer) holds (llama.cpp reads an expert tensor's layer from its name), Q4_K
    elsewhere. 26B-A4B's expert rows (704) and dense ffn_down rows (2112) are not multiples of 256, so there the
    fallback gives Q5_0 / Q8_0. (llama.cpp's extra rules for 8-expert models, from Mixtral, are not applied: the
    real model has 128 experts.)"""
    n_attn_v = sum(s.name.endswith("attn_v.weight") for s in specs)
    n_ffn_down = sum(s.name.endswith("ffn_down.weight") for s in specs)
    i_v = i_down = 0
    types: dict[str, Q] = {}
    for s in specs:
        if s.kind in ("norm", "scalar", "rope_freqs", "router", "router_scale", "expert_scale"):
            types[s.name] = Q.F32
            continue
        if s.kind == "ple":
            types[s.name] = Q.BF16
            continue
        t = Q.Q4_K
        if s.kind == "embd":
            t = Q.Q6_K
        elif s.name.endswith("attn_v.weight"):
            t = Q.Q6_K if use_more_bits(i_v, n_attn_v) else Q.Q4_K
            i_v += 1
        elif s.name.endswith("ffn_down.weight"):
            t = Q.Q6_K if use_more_bits(i_down, n_ffn_down) else Q.Q4_K
            i_down += 1
        elif s.name.endswith("ffn_down_exps.weight"):
            t = Q.Q6_K if use_more_bits(s.layer, n_ffn_down) else Q.Q4_K
        if s.ne[0] % 256:
            t = {Q.Q4_K: Q.Q5_0, Q.Q6_K: Q.Q8_0}[t]
        if s.ne[0] % 32:
            t = Q.BF16
        types[s.name] = t
    return types


def tensor_nbytes(ne: tuple[int, ...], qtype: Q) -> int:
    block, size = GGML_QUANT_SIZES[qtype]
    assert ne[0] % block == 0, (ne, qtype)
    return math.prod(ne) // block * size


# --------------------------------------------------------------------------------------------------------------------
# Random but valid data, generated a chunk of rows at a time


def random_bytes(rng: np.random.Generator, n: int) -> np.ndarray:
    """n random bytes straight from the bit generator (Generator.bytes is ~8x slower, which would make the
    full-size file take minutes)."""
    return rng.bit_generator.random_raw((n + 7) // 8).view(np.uint8)[:n]


def _f16_bytes(values: np.ndarray) -> np.ndarray:
    return values.astype(np.float16).view(np.uint8).reshape(-1, 2)


def random_q4_k(rng: np.random.Generator, n_blocks: int) -> np.ndarray:
    """Q4_K blocks: value = d*sc*q - dmin*m, one 6-bit (sc, m) pair per 32 values, 4-bit q from random bits.
    Each sub-block gets m = sc and dmin = 7.5*d, which centres it on zero (value = d*sc*(q - 7.5)), as a trained
    weight matrix is; d is a normal f16 in [1e-4, 2e-4], so |value| < 0.095 and the std is ~0.025, about
    1/sqrt(1536): matrices keep activations at unit scale instead of adding a large rank-one bias."""
    blocks = random_bytes(rng, n_blocks * 144).reshape(n_blocks, 144)
    d = rng.uniform(1e-4, 2e-4, n_blocks)
    blocks[:, 0:2] = _f16_bytes(d)
    blocks[:, 2:4] = _f16_bytes(7.5 * d)
    # The 12 scale bytes (block bytes 4-15) with m = sc, layout as in tools/make_tiny_gemma4.quantize_q4_k: the
    # first 4 keep their random bits (sc[0..3] and the top bits of sc[4..7]), the next 4 repeat them for the mins,
    # the last 4 hold the low nibble of sc[4..7] twice.
    blocks[:, 8:12] = blocks[:, 4:8]
    blocks[:, 12:16] = (blocks[:, 12:16] & 0x0F) * np.uint8(0x11)
    return blocks


def random_q6_k(rng: np.random.Generator, n_blocks: int) -> np.ndarray:
    """Q6_K blocks: value = d*scale*(q-32), q from random bits (symmetric, so centred); the int8 sub-block scales
    are random in [-32, 31] and d is a normal f16 in [6.2e-5, 9e-5], so |value| < 0.095 and the std is ~0.025."""
    blocks = random_bytes(rng, n_blocks * 210).reshape(n_blocks, 210)
    blocks[:, 192:208] = (blocks[:, 192:208].view(np.int8) >> 2).view(np.uint8)
    blocks[:, 208:210] = _f16_bytes(rng.uniform(6.2e-5, 9e-5, n_blocks))
    return blocks


def random_bf16(rng: np.random.Generator, n: int) -> np.ndarray:
    """BF16 bit patterns with random sign and mantissa and an exponent of 2^-11..2^-4 (|value| in [5e-4, 0.125)).
    Built from integers because drawing billions of normal floats would dominate the run time."""
    r = random_bytes(rng, n * 2).view(np.uint16)
    # Sign and mantissa bits stay random; three of the (otherwise discarded) exponent bits pick the exponent.
    exponent = np.uint16(116) + ((r >> np.uint16(7)) & np.uint16(7))  # biased exponent 116..123
    return ((r & np.uint16(0x807F)) | (exponent << np.uint16(7))).view(np.uint8)


def random_small_float(rng: np.random.Generator, n: int, qtype: Q) -> np.ndarray:
    """Fallback types (Q5_0, Q8_0, BF16 for odd row lengths): quantize small normal floats with gguf's own code."""
    from gguf import quants

    x = (rng.standard_normal(n) * 0.03).astype(np.float32)
    block = GGML_QUANT_SIZES[qtype][0]
    return quants.quantize(x.reshape(-1, block), qtype).reshape(-1).view(np.uint8)


def small_tensor_values(spec: TensorSpec, dims: Gemma4Dims, rng: np.random.Generator) -> np.ndarray:
    """Values of the F32 tensors: norm weights around 1, per-layer output scales in (0.8, 1), the exact rope
    frequency factors, and q/k norm weights in (0.1, 0.3). The last two keep the random model from being chaotic
    (with q/k weights near 1, q.k over 256 dims has a std of 16 and attention is one-hot, and 1e-3 of noise, e.g.
    llama.cpp's Q8 activations, changed the logits by ~6), so a GPU run can still be compared with the numpy
    reference at full E2B shapes."""
    if spec.kind == "rope_freqs":
        return rope_freq_factors(dims)
    if spec.kind == "scalar":
        return rng.uniform(0.8, 1.0, spec.ne).astype(np.float32)
    if spec.name.endswith(("attn_q_norm.weight", "attn_k_norm.weight")):
        return rng.uniform(0.1, 0.3, spec.ne).astype(np.float32)
    if spec.kind == "router":  # F32 in every file type: router logits of std ~1.5 over the experts
        return rng.normal(0.0, 1.5, tuple(reversed(spec.ne))).astype(np.float32)
    return rng.uniform(0.5, 1.5, spec.ne).astype(np.float32)


def random_chunks(spec: TensorSpec, qtype: Q, dims: Gemma4Dims, rng: np.random.Generator,
                  chunk_bytes: int = 64 << 20) -> Iterator[np.ndarray]:
    """The tensor's bytes, in chunks of whole rows of about chunk_bytes."""
    if qtype == Q.F32:
        yield small_tensor_values(spec, dims, rng).view(np.uint8)
        return
    block, size = GGML_QUANT_SIZES[qtype]
    row_bytes = spec.ne[0] // block * size
    n_rows = math.prod(spec.ne[1:])
    rows_per_chunk = max(1, chunk_bytes // row_bytes)
    for start in range(0, n_rows, rows_per_chunk):
        rows = min(rows_per_chunk, n_rows - start)
        n_blocks = rows * spec.ne[0] // block
        if qtype == Q.Q4_K:
            yield random_q4_k(rng, n_blocks).reshape(-1)
        elif qtype == Q.Q6_K:
            yield random_q6_k(rng, n_blocks).reshape(-1)
        elif qtype == Q.BF16:
            yield random_bf16(rng, rows * spec.ne[0])
        else:
            yield random_small_float(rng, rows * spec.ne[0], qtype)


# --------------------------------------------------------------------------------------------------------------------
# Writing


def write_gguf_streaming(path: str, add_metadata: Callable[[GGUFWriter], None],
                         tensors: list[tuple[str, tuple[int, ...], Q, Callable[[], Iterator[np.ndarray]]]],
                         arch: str = ARCH) -> int:
    """Write a GGUF whose tensor data comes from generators, so no tensor has to fit in memory at once.

    GGUFWriter lays out the header, metadata and tensor infos (offsets are the padded sizes declared here); the
    data is then appended tensor by tensor with the same alignment padding GGUFWriter would use.
    `tensors`: (name, ne, type, make_chunks); `arch` is general.architecture ("clip" for an mmproj). Returns the
    file size."""
    w = GGUFWriter(path, arch)
    add_metadata(w)
    for name, ne, qtype, _ in tensors:
        # A non-uint8 dtype tells GGUFWriter that the shape is the logical (element) shape, not a byte shape.
        w.add_tensor_info(name, tuple(reversed(ne)), np.dtype(np.float32), tensor_nbytes(ne, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    fout = w.fout[0]
    w.write_padding(fout, fout.tell())
    for name, ne, qtype, make_chunks in tensors:
        written = 0
        for chunk in make_chunks():
            chunk.tofile(fout)
            written += chunk.nbytes
        assert written == tensor_nbytes(ne, qtype), f"{name}: wrote {written} bytes"
        w.write_padding(fout, written)
    size = fout.tell()
    w.close()
    return size


def write_synthetic(path: str, dims: Gemma4Dims, seed: int = 0, tokenizer_model: str = "llama") -> int:
    specs = tensor_specs(dims)
    types = q4_k_m_types(specs)
    rng = np.random.default_rng(seed)
    vocab = fake_vocab(dims.n_vocab)

    def metadata(w: GGUFWriter) -> None:
        w.add_name("gemma4-e2b-synthetic")
        w.add_description(f"random weights with Gemma 4 E2B shapes and Ollama Q4_K_M types, seed {seed}")
        w.add_file_type(LlamaFileType.MOSTLY_Q4_K_M)
        w.add_quantization_version(2)
        add_gemma4_metadata(w, dims)
        add_tokenizer(w, vocab, model=tokenizer_model)

    entries = [(s.name, s.ne, types[s.name], lambda s=s: random_chunks(s, types[s.name], dims, rng)) for s in specs]
    return write_gguf_streaming(path, metadata, entries)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="output .gguf path")
    ap.add_argument("--vocab", type=int, default=262144,
                    help="vocabulary size (rows of token_embd and of the BF16 PLE table); default E2B's 262144")
    ap.add_argument("--layers", type=int, default=35, help="number of layers, a multiple of 5; default 35")
    ap.add_argument("--shared-kv-layers", type=int, default=None,
                    help="KV-shared layers at the end; default E2B's 20 of 35, scaled to --layers")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tokenizer-model", default="llama", choices=["llama", "gemma4"],
                    help='tokenizer.ggml.model: "llama" as in Ollama blobs (default) or "gemma4" as llama.cpp writes')
    args = ap.parse_args(argv)
    dims = scaled_e2b(args.layers, args.vocab, args.shared_kv_layers)
    t0 = time.time()
    size = write_synthetic(args.out, dims, args.seed, args.tokenizer_model)
    print(f"wrote {args.out}: {size / 1e9:.3f} GB, {dims.n_layer} layers, vocab {dims.n_vocab}, "
          f"{time.time() - t0:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
