"""Kokoro-82M in one GGUF file: the tensor names, the metadata, and reading it back as KModel tensors.

    gf = await GGUFFile.open("kokoro-v1.0-f16.gguf")         # ours (tools/convert_kokoro.py) or TTS.cpp's
    cfg = read_kokoro_config(gf)                              # KokoroConfig: hyper-parameters and phoneme vocab
    state = await load_state(gf)                              # {KModel state-dict key: float32 array}
    packs = await voices(gf)                                  # {"af_heart": float32 [510, 256], ...}

The file layout is TTS.cpp's (mmwillet/TTS.cpp, py-gguf/tts_encoders/kokoro_gguf_encoder.py), so that a file
made by either tool is read the same way by both. The model code works in the key space of kokoro 0.9.4's
`KModel.state_dict()`, with weight norm folded: a weight-normed module's `weight_g`/`weight_v` pair is one
`<module>.weight` = g * v / ||v|| (norm over every dimension but 0). `load_state` is the only place that knows
the GGUF names; `kokoro_tensor_names(cfg)` (and `GGUF_NAME`, the same for Kokoro-82M v1.0) maps every KModel
key to its `Placement`.

Shapes. Every tensor is stored with its torch shape: gguf-py writes a numpy array of shape (a, b, c) as ggml
ne = [c, b, a], and `GGUFFile.tensor` gives back the numpy shape (a, b, c). So a Linear weight is [out, in]
(ne [in, out]), a Conv1d weight [out, in, k], a ConvTranspose1d weight [in, out, k], an LSTM gate matrix
[H, in]. Nothing is transposed.

How a KModel tensor is placed (Placement.kind):
- "whole": one GGUF tensor, same shape.
- "split": the KModel tensor is the concatenation along axis 0 of `parts`, each an equal share of its rows.
  AdaIN / AdaLayerNorm `fc` (Linear style -> 2C): parts (gamma, beta) = rows [0, C) and [C, 2C), weight and
  bias alike. LSTM matrices and biases (torch gate order i, f, g, o, H rows each): four parts, one per gate;
  TTS.cpp numbers them 2 * gate for the input side (`weight_ih`, `bias_ih`) and 2 * gate + 1 for the
  recurrent side (`weight_hh`, `bias_hh`), so `weights.0/2/4/6` are W_ii/W_if/W_ig/W_io and `weights.1/3/5/7`
  are W_hi/W_hf/W_hg/W_ho; `reverse_*` likewise for the backward direction.
- "row0": the GGUF tensor is row 0 only, 1-D (ALBERT's token type table [2, 128]: TTS.cpp keeps the row that
  type id 0 selects, the only one Kokoro uses). Our converter also writes the whole table as an extra (below);
  a TTS.cpp file gives the other rows as 0.
- "implied": not stored by the layout, because the value is fixed: the affine parameters of the InstanceNorm
  inside every AdaIN (weight 1, bias 0: Kokoro sets affine=True only to work around an old ONNX export bug, and
  the model computes (1 + gamma) * norm(x) + beta without them) and ALBERT's pooler (never used by Kokoro,
  absent from the int8 ONNX: zeros).
Extras: `kokoro.extra.<KModel key>` holds a KModel tensor whole, with its torch shape, where the layout above
would lose something: the token type table's other rows, or an implied tensor whose values are not the implied
ones. `load_state` prefers an extra over the layout's tensors, so `load_state(write_gguf(state)) == state`
for every state. TTS.cpp ignores these names.

The name table. `C` below is the block's channel count; indices run over what the config gives (v1.0 values
in brackets). Left: KModel key; right: GGUF name (prefix `kokoro.` left out), kind.

    PL-BERT (ALBERT; one shared layer, applied albert_n_layers times).
    L = bert.encoder.albert_layer_groups.0.albert_layers.0
    bert.embeddings.word_embeddings.weight [178, 128]       albert.token_embd
    bert.embeddings.position_embeddings.weight [512, 128]   albert.position_embd
    bert.embeddings.token_type_embeddings.weight [2, 128]   albert.token_type_embd [128]          row0
    bert.embeddings.LayerNorm.{weight,bias}                 albert.norm, albert.norm_bias
    bert.encoder.embedding_hidden_mapping_in.{weight,bias}  albert.embd [768, 128], albert.embd_bias
    L.attention.{query,key,value,dense}.weight [768, 768]   albert.layer.0.{q,k,v,o}
    L.attention.{query,key,value,dense}.bias                albert.layer.0.{q,k,v,o}_bias
    L.attention.LayerNorm.{weight,bias}                     albert.layer.0.ffn_norm, .ffn_norm_bias  (sic: TTS.cpp's)
    L.ffn.{weight,bias} [2048, 768]                         albert.layer.0.ffn, .ffn_bias
    L.ffn_output.{weight,bias} [768, 2048]                  albert.layer.0.ffn_out, .ffn_out_bias
    L.full_layer_layer_norm.{weight,bias}                   albert.layer.0.attn_norm, .attn_norm_bias  (sic)
    bert.pooler.{weight,bias}                               -                                       implied 0
    bert_encoder.{weight,bias} [512, 768]                   duration_predictor.encode, .encode_bias

    Prosody predictor (D = hidden_dim [512], S = style_dim [128]); LSTM(in, H) below means the eight tensors
    {weight_ih_l0 [4H, in], weight_hh_l0 [4H, H], bias_ih_l0, bias_hh_l0} and their _reverse, placed as
    P.0.weights.{0..7}, P.0.biases.{0..7}, P.0.reverse_weights.{0..7}, P.0.reverse_biases.{0..7} (split).
    predictor.text_encoder.lstms.{0,2,4}: LSTM(D+S, D/2)    duration_predictor.layers.{0,2,4}.lstm
    predictor.text_encoder.lstms.{1,3,5}.fc.weight [2D, S]  duration_predictor.layers.{i}.{gamma,beta}_weight   split
    predictor.text_encoder.lstms.{1,3,5}.fc.bias            duration_predictor.layers.{i}.{gamma,beta}_bias     split
    predictor.lstm: LSTM(D+S, D/2)                          duration_predictor.duration_lstm
    predictor.duration_proj.linear_layer.{weight,bias}      duration_predictor.duration_proj [50, 512], .._bias
    predictor.shared: LSTM(D+S, D/2)                        duration_predictor.shared_lstm
    predictor.F0.{0,1,2}.*  (AdainResBlk1d, below)          duration_predictor.f0_blocks.{i}.*
    predictor.N.{0,1,2}.*                                   duration_predictor.n_blocks.{i}.*
    predictor.F0_proj.{weight,bias} [1, 256, 1]             duration_predictor.f0_proj_kernel, .f0_proj_bias
    predictor.N_proj.{weight,bias}                          duration_predictor.n_proj_kernel, .n_proj_bias

    Text encoder
    text_encoder.embedding.weight [178, 512]                text_encoder.embedding_weight
    text_encoder.cnn.{0,1,2}.0.{weight,bias} [512, 512, 5]  text_encoder.layers.{i}.weight, .bias   (weight-norm folded)
    text_encoder.cnn.{0,1,2}.1.{gamma,beta}                 text_encoder.layers.{i}.gamma, .beta
    text_encoder.lstm: LSTM(512, 256)                       text_encoder.lstm

    Decoder (S = style_dim)
    decoder.encode.*  AdainResBlk1d(D+2 -> 1024)            decoder.encoder_block.*
    decoder.decode.{0,1,2,3}.*  (1090 -> 1024; 3: -> 512, upsampling)   decoder.decoder_blocks.{i}.*
    decoder.F0_conv.{weight,bias} [1, 1, 3]                 decoder.f0_conv_weight, .f0_conv_bias
    decoder.N_conv.{weight,bias}                            decoder.n_conv_weight, .n_conv_bias
    decoder.asr_res.0.{weight,bias} [64, 512, 1]            decoder.asr_conv_weight, .asr_conv_bias
    decoder.generator.m_source.l_linear.{weight,bias} [1, 9]    decoder.generator.m_source_weight, .m_source_bias
    decoder.generator.noise_convs.{0,1}.{weight,bias}       decoder.generator.noise_blocks.{i}.conv_weight, .conv_bias
    decoder.generator.noise_res.{0,1}.*  (AdaINResBlock1)   decoder.generator.noise_blocks.{i}.resblock.*
    decoder.generator.ups.{0,1}.{weight,bias} [512, 256, 20], [256, 128, 12]   decoder.generator.ups.{i}.weight, .bias
    decoder.generator.resblocks.{0..5}.*  (AdaINResBlock1)  decoder.generator.resblocks.{i}.*
    decoder.generator.conv_post.{weight,bias} [22, 128, 7]  decoder.generator.conv_post_weight, .conv_post_bias

    AdainResBlk1d(C_in -> C_out) at KModel prefix M, GGUF prefix B:
    M.conv1.{weight,bias} [C_out, C_in, 3]                  B.conv1_weight, B.conv1_bias
    M.conv2.{weight,bias} [C_out, C_out, 3]                 B.conv2_weight, B.conv2_bias
    M.norm1.fc.weight [2 C_in, S]                           B.norm1_gamma_weight, B.norm1_beta_weight   split
    M.norm1.fc.bias                                         B.norm1_gamma_bias, B.norm1_beta_bias       split
    M.norm2.fc.{weight,bias} [2 C_out, S]                   B.norm2_gamma_*, B.norm2_beta_*             split
    M.norm{1,2}.norm.{weight,bias}                          -                                           implied 1, 0
    M.conv1x1.weight [C_out, C_in, 1] (C_in != C_out only, no bias)   B.conv1x1_weight
    M.pool.{weight,bias} [C_in, 1, 3] (upsampling blocks only)        B.pool_weight, B.pool_bias

    AdaINResBlock1(C, k) at KModel prefix M, GGUF prefix R, j in 0, 1, 2 (dilations 1, 3, 5 on convs1):
    M.convs1.{j}.{weight,bias} [C, C, k]                    R.{j}.convs1_weight, R.{j}.convs1_bias
    M.convs2.{j}.{weight,bias} [C, C, k]                    R.{j}.convs2_weight, R.{j}.convs2_bias
    M.adain1.{j}.fc.weight [2C, S]                          R.{j}.gamma1_weight, R.{j}.beta1_weight     split
    M.adain1.{j}.fc.bias                                    R.{j}.gamma1_bias, R.{j}.beta1_bias         split
    M.adain2.{j}.fc.*                                       R.{j}.gamma2_*, R.{j}.beta2_*               split
    M.adain{1,2}.{j}.norm.{weight,bias} [C]                 -                                           implied 1, 0
    M.alpha1.{j}, M.alpha2.{j} [1, C, 1]                    R.{j}.alpha1, R.{j}.alpha2

    Voices: kokoro.voice_tensors.<name> float32 [510, 256] (row n - 1 is the style for n phonemes; columns
    0..127 the decoder's style, 128..255 the prosody predictor's), names listed in kokoro.voices.

Metadata (written by tools/convert_kokoro.py; `read_kokoro_config` reads it). TTS.cpp's keys:
    general.architecture = "kokoro"; tokenizer.ggml.tokens: the phoneme of each id, "" for unused ids (id 0 is
    the pad that starts and ends every sequence); tokenizer.ggml.padding_token_id = eos_token_id = 0;
    kokoro.decoder_start_token_id = 0; kokoro.tokenizer.vocab_size = n_token;
    kokoro.duration_predictor.albert.{context_length, layers (= 1: one shared layer), attn_heads, hidden_size,
    recurrence (= times the shared layer is applied)}; kokoro.duration_predictor.{hidden_size, layers,
    f0_n_blocks}; kokoro.text_encoder.layers; kokoro.decoder.generator.{up_sampling_factor (= audio samples per
    duration frame, 600), kernels, upsamples, layers (decoder blocks), padding (conv_post), n_fft, hop};
    kokoro.decoder.generator.noise_blocks.{i}.{stride, padding}, .noise_blocks.{i}.res_block.{j}.{padding,
    dilation}, .res_blocks.{i}.{j}.{padding, dilation}, .up_convs.{i}.{padding, stride};
    phonemizer.type = 1 (espeak), phonemizer.phoneme_type = 1 (IPA); kokoro.voices.
Ours, for what TTS.cpp hard-codes or leaves out (a TTS.cpp file lacks them: read as the v1.0 values):
    kokoro.style_dim; kokoro.n_mels; kokoro.dim_in; kokoro.max_conv_dim; kokoro.multispeaker (bool);
    kokoro.dropout (f32); kokoro.sample_rate; kokoro.duration_predictor.max_duration;
    kokoro.duration_predictor.albert.{intermediate_size, embedding_size, layer_norm_epsilon (f32), dropout (f32)};
    kokoro.text_encoder.kernel_size; kokoro.decoder.hidden_size (1024); kokoro.decoder.asr_res_channels (64);
    kokoro.decoder.generator.{upsample_rates, upsample_kernel_sizes, resblock_kernel_sizes (u32 arrays),
    resblock_dilation_sizes (u32 array, n_kernels rows of 3, row-major), upsample_initial_channel,
    harmonic_num}.
All integers are u32. With these, `KokoroConfig.kmodel_config()` rebuilds the model's config.json exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Iterable

import numpy as np
from gguf import GGUFValueType

from ..gguf_file import GGUFError, GGUFFile, dequantize_rows
from ..sources import SourceError

ARCHITECTURE = "kokoro"
VOICE_PREFIX = "kokoro.voice_tensors."
EXTRA_PREFIX = "kokoro.extra."
VOICE_SHAPE = (510, 256)

# Architecture constants of KModel (kokoro 0.9.4) that config.json does not carry.
_ALBERT_TYPE_VOCAB = 2  # HF AlbertConfig.type_vocab_size
_CONV_KERNEL = 3  # AdainResBlk1d's convolutions
_POOL_KERNEL = 3  # AdainResBlk1d's depthwise ConvTranspose1d (upsampling)
_DECODER_IN_EXTRA = 2  # F0 and N curves concatenated onto the decoder's input channels
_POST_KERNEL = 7  # Generator.conv_post
_NOISE_RES_KERNELS = (7, 11)  # Generator.noise_res: 7 for every stage but the last, 11 for the last
_NOISE_RES_DILATIONS = (1, 3, 5)
# Sanity bounds on metadata counts and widths (v1.0: at most 3 layers, widths up to 24000).
_MAX_COUNT = 64
_MAX_WIDTH = 1 << 20


class KokoroLoadError(ValueError):
    """A GGUF file that is not a usable Kokoro model: another architecture, a missing or misshapen tensor, bad
    metadata. The message is a sentence naming the file and the problem."""


@dataclass(frozen=True)
class KokoroConfig:
    """Kokoro's hyper-parameters and phoneme vocabulary. Defaults are Kokoro-82M v1.0's (hexgrad/Kokoro-82M
    config.json plus the HF ALBERT defaults KModel relies on)."""

    tokens: tuple[str, ...] = ()  # id -> phoneme; "" for ids no phoneme uses (id 0: the pad at both ends)
    n_token: int = 178
    # PL-BERT: an ALBERT with one shared layer applied albert_n_layers times.
    albert_hidden_size: int = 768
    albert_n_heads: int = 12
    albert_n_layers: int = 12
    albert_intermediate_size: int = 2048
    albert_embedding_size: int = 128
    albert_context_length: int = 512  # max_position_embeddings: the most tokens (pads included) per run
    albert_layer_norm_eps: float = 1e-12
    albert_dropout: float = 0.1
    # Prosody predictor and text encoder.
    hidden_dim: int = 512
    style_dim: int = 128
    n_layer: int = 3
    max_dur: int = 50
    text_encoder_kernel_size: int = 5
    # Unused by KModel but part of config.json (kept so that kmodel_config() rebuilds it).
    n_mels: int = 80
    dim_in: int = 64
    max_conv_dim: int = 512
    multispeaker: bool = True
    dropout: float = 0.2
    # Decoder: widths KModel hard-codes.
    decoder_hidden: int = 1024
    asr_res_channels: int = 64
    # iSTFTNet generator.
    upsample_rates: tuple[int, ...] = (10, 6)
    upsample_kernel_sizes: tuple[int, ...] = (20, 12)
    upsample_initial_channel: int = 512
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    n_fft: int = 20
    hop: int = 5
    sample_rate: int = 24000
    harmonic_num: int = 8
    voices: tuple[str, ...] = field(default=(), compare=False)

    @property
    def vocab(self) -> dict[str, int]:
        """phoneme -> id (the gaps left out), as config.json's "vocab"."""
        return {t: i for i, t in enumerate(self.tokens) if t}

    @property
    def samples_per_frame(self) -> int:
        """Audio samples per predicted duration frame (600 at 24 kHz: 25 ms). The last decoder block doubles
        the frame rate, the generator's upsampling convolutions multiply it by prod(upsample_rates), the iSTFT
        by hop."""
        return 2 * math.prod(self.upsample_rates) * self.hop

    @classmethod
    def from_kmodel_config(cls, config: dict, voices: Iterable[str] = ()) -> "KokoroConfig":
        """From the dict of hexgrad/Kokoro-82M's config.json (what KModel(config=...) takes)."""
        vocab = config["vocab"]
        n_token = int(config["n_token"])
        tokens = [""] * n_token
        for tok, i in vocab.items():
            if not 0 < int(i) < n_token:
                raise ValueError(f"config.json: vocab id {i} of {tok!r} is outside 1..{n_token - 1}")
            tokens[int(i)] = tok
        pl, ist = config["plbert"], config["istftnet"]
        return cls(
            tokens=tuple(tokens),
            n_token=n_token,
            albert_hidden_size=int(pl["hidden_size"]),
            albert_n_heads=int(pl["num_attention_heads"]),
            albert_n_layers=int(pl["num_hidden_layers"]),
            albert_intermediate_size=int(pl["intermediate_size"]),
            albert_context_length=int(pl["max_position_embeddings"]),
            albert_dropout=float(pl.get("dropout", 0.1)),
            hidden_dim=int(config["hidden_dim"]),
            style_dim=int(config["style_dim"]),
            n_layer=int(config["n_layer"]),
            max_dur=int(config["max_dur"]),
            text_encoder_kernel_size=int(config["text_encoder_kernel_size"]),
            n_mels=int(config["n_mels"]),
            dim_in=int(config["dim_in"]),
            max_conv_dim=int(config["max_conv_dim"]),
            multispeaker=bool(config["multispeaker"]),
            dropout=float(config["dropout"]),
            upsample_rates=tuple(int(x) for x in ist["upsample_rates"]),
            upsample_kernel_sizes=tuple(int(x) for x in ist["upsample_kernel_sizes"]),
            upsample_initial_channel=int(ist["upsample_initial_channel"]),
            resblock_kernel_sizes=tuple(int(x) for x in ist["resblock_kernel_sizes"]),
            resblock_dilation_sizes=tuple(tuple(int(d) for d in ds) for ds in ist["resblock_dilation_sizes"]),
            n_fft=int(ist["gen_istft_n_fft"]),
            hop=int(ist["gen_istft_hop_size"]),
            voices=tuple(voices),
        )

    def kmodel_config(self) -> dict:
        """The config.json dict KModel(config=...) takes (equal to hexgrad/Kokoro-82M's for v1.0)."""
        return {
            "istftnet": {
                "upsample_kernel_sizes": list(self.upsample_kernel_sizes),
                "upsample_rates": list(self.upsample_rates),
                "gen_istft_hop_size": self.hop,
                "gen_istft_n_fft": self.n_fft,
                "resblock_dilation_sizes": [list(d) for d in self.resblock_dilation_sizes],
                "resblock_kernel_sizes": list(self.resblock_kernel_sizes),
                "upsample_initial_channel": self.upsample_initial_channel,
            },
            "dim_in": self.dim_in,
            "dropout": self.dropout,
            "hidden_dim": self.hidden_dim,
            "max_conv_dim": self.max_conv_dim,
            "max_dur": self.max_dur,
            "multispeaker": self.multispeaker,
            "n_layer": self.n_layer,
            "n_mels": self.n_mels,
            "n_token": self.n_token,
            "style_dim": self.style_dim,
            "text_encoder_kernel_size": self.text_encoder_kernel_size,
            "plbert": {
                "hidden_size": self.albert_hidden_size,
                "num_attention_heads": self.albert_n_heads,
                "intermediate_size": self.albert_intermediate_size,
                "max_position_embeddings": self.albert_context_length,
                "num_hidden_layers": self.albert_n_layers,
                "dropout": self.albert_dropout,
            },
            "vocab": self.vocab,
        }


# ---------------------------------------------------------------------------------------------------------
# Metadata


def _f32(x: float) -> float:
    """A float stored as GGUF f32, read back as the shortest decimal that round-trips f32 (0.1, not 0.100000001)."""
    return float(np.format_float_positional(np.float32(x), unique=True))


def _generator_blocks(cfg: KokoroConfig):
    """(noise conv kernel, stride, padding) per upsampling stage, as Generator.__init__ builds them."""
    out = []
    for i in range(len(cfg.upsample_rates)):
        if i + 1 < len(cfg.upsample_rates):
            stride = math.prod(cfg.upsample_rates[i + 1 :])
            out.append((2 * stride, stride, (stride + 1) // 2))
        else:
            out.append((1, 1, 0))
    return out


def _same_padding(kernel: int, dilation: int) -> int:
    return (kernel * dilation - dilation) // 2


def config_metadata(cfg: KokoroConfig) -> list[tuple[str, GGUFValueType, object]]:
    """The `kokoro.*`, tokenizer and phonemizer keys for `cfg`, as (key, value type, value) in writing order.
    An array's type is that of its elements. (general.* keys are the writer's: architecture, file_type, ...)"""
    U32, F32, BOOL, STR = GGUFValueType.UINT32, GGUFValueType.FLOAT32, GGUFValueType.BOOL, GGUFValueType.STRING
    g = "kokoro.decoder.generator"
    kv = [
        ("tokenizer.ggml.tokens", STR, list(cfg.tokens)),
        ("tokenizer.ggml.padding_token_id", U32, 0),
        ("tokenizer.ggml.eos_token_id", U32, 0),
        ("kokoro.decoder_start_token_id", U32, 0),
        ("kokoro.tokenizer.vocab_size", U32, cfg.n_token),
        ("kokoro.duration_predictor.albert.context_length", U32, cfg.albert_context_length),
        ("kokoro.duration_predictor.albert.layers", U32, 1),
        ("kokoro.duration_predictor.albert.attn_heads", U32, cfg.albert_n_heads),
        ("kokoro.duration_predictor.albert.hidden_size", U32, cfg.albert_hidden_size),
        ("kokoro.duration_predictor.albert.recurrence", U32, cfg.albert_n_layers),
        ("kokoro.duration_predictor.albert.intermediate_size", U32, cfg.albert_intermediate_size),
        ("kokoro.duration_predictor.albert.embedding_size", U32, cfg.albert_embedding_size),
        ("kokoro.duration_predictor.albert.layer_norm_epsilon", F32, cfg.albert_layer_norm_eps),
        ("kokoro.duration_predictor.albert.dropout", F32, cfg.albert_dropout),
        ("kokoro.duration_predictor.hidden_size", U32, cfg.hidden_dim),
        ("kokoro.duration_predictor.layers", U32, cfg.n_layer),
        ("kokoro.duration_predictor.f0_n_blocks", U32, 3),
        ("kokoro.duration_predictor.max_duration", U32, cfg.max_dur),
        ("kokoro.text_encoder.layers", U32, cfg.n_layer),
        ("kokoro.text_encoder.kernel_size", U32, cfg.text_encoder_kernel_size),
        ("kokoro.style_dim", U32, cfg.style_dim),
        ("kokoro.n_mels", U32, cfg.n_mels),
        ("kokoro.dim_in", U32, cfg.dim_in),
        ("kokoro.max_conv_dim", U32, cfg.max_conv_dim),
        ("kokoro.multispeaker", BOOL, cfg.multispeaker),
        ("kokoro.dropout", F32, cfg.dropout),
        ("kokoro.sample_rate", U32, cfg.sample_rate),
        ("kokoro.decoder.hidden_size", U32, cfg.decoder_hidden),
        ("kokoro.decoder.asr_res_channels", U32, cfg.asr_res_channels),
        (f"{g}.up_sampling_factor", U32, cfg.samples_per_frame),
        (f"{g}.kernels", U32, len(cfg.resblock_kernel_sizes)),
        (f"{g}.upsamples", U32, len(cfg.upsample_rates)),
        (f"{g}.layers", U32, 4),
        (f"{g}.padding", U32, _POST_KERNEL // 2),
        (f"{g}.n_fft", U32, cfg.n_fft),
        (f"{g}.hop", U32, cfg.hop),
        (f"{g}.upsample_rates", U32, list(cfg.upsample_rates)),
        (f"{g}.upsample_kernel_sizes", U32, list(cfg.upsample_kernel_sizes)),
        (f"{g}.upsample_initial_channel", U32, cfg.upsample_initial_channel),
        (f"{g}.resblock_kernel_sizes", U32, list(cfg.resblock_kernel_sizes)),
        (f"{g}.resblock_dilation_sizes", U32, [d for ds in cfg.resblock_dilation_sizes for d in ds]),
        (f"{g}.harmonic_num", U32, cfg.harmonic_num),
    ]
    n_stages = len(cfg.upsample_rates)
    for i in range(n_stages):
        k = _NOISE_RES_KERNELS[0] if i + 1 < n_stages else _NOISE_RES_KERNELS[1]
        for j, d in enumerate(_NOISE_RES_DILATIONS):
            kv.append((f"{g}.noise_blocks.{i}.res_block.{j}.padding", U32, _same_padding(k, d)))
            kv.append((f"{g}.noise_blocks.{i}.res_block.{j}.dilation", U32, d))
    for i, (_, stride, padding) in enumerate(_generator_blocks(cfg)):
        kv.append((f"{g}.noise_blocks.{i}.stride", U32, stride))
        kv.append((f"{g}.noise_blocks.{i}.padding", U32, padding))
    for i in range(n_stages * len(cfg.resblock_kernel_sizes)):
        k = cfg.resblock_kernel_sizes[i % len(cfg.resblock_kernel_sizes)]
        ds = cfg.resblock_dilation_sizes[i % len(cfg.resblock_kernel_sizes)]
        for j, d in enumerate(ds):
            kv.append((f"{g}.res_blocks.{i}.{j}.padding", U32, _same_padding(k, d)))
            kv.append((f"{g}.res_blocks.{i}.{j}.dilation", U32, d))
    for i, (u, k) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes)):
        kv.append((f"{g}.up_convs.{i}.padding", U32, (k - u) // 2))
        kv.append((f"{g}.up_convs.{i}.stride", U32, u))
    kv += [
        ("phonemizer.type", U32, 1),  # TTS.cpp: 1 = espeak (the phonemes come from espeak-ng, as misaki's)
        ("phonemizer.phoneme_type", U32, 1),  # TTS.cpp: 1 = IPA
    ]
    if cfg.voices:  # (gguf-py cannot write an empty array)
        kv.append(("kokoro.voices", STR, list(cfg.voices)))
    return kv


def _source_name(gf) -> str:
    src = getattr(gf, "source", None)
    return getattr(src, "name", "<kokoro gguf>")


def read_kokoro_config(gf) -> KokoroConfig:
    """The hyper-parameters and vocabulary in a Kokoro GGUF's metadata (`gf`: a GGUFFile, or its metadata
    dict). Keys our converter adds and TTS.cpp does not write read as Kokoro-82M v1.0's values."""
    meta = gf.metadata if isinstance(gf, GGUFFile) else gf
    name = _source_name(gf)
    arch = meta.get("general.architecture")
    if arch != ARCHITECTURE:
        what = f"architecture {arch!r}" if arch else "no general.architecture"
        raise KokoroLoadError(
            f"{name} is not a Kokoro text-to-speech model: its GGUF header names {what}, not 'kokoro'"
        )
    tokens = meta.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
        raise KokoroLoadError(
            f"{name}: the phoneme vocabulary (tokenizer.ggml.tokens) is missing or not a list of strings"
        )
    d = KokoroConfig()
    g = "kokoro.decoder.generator"

    def get(key, default, kind=int):
        v = meta.get(key, default)
        try:
            if kind is bool:
                return bool(v)
            return kind(v)
        except (TypeError, ValueError):
            noun = "an integer" if kind is int else "a number"
            raise KokoroLoadError(f"{name}: metadata {key} = {v!r} is not {noun}") from None

    def get_list(key, default):
        v = meta.get(key)
        if v is None:
            return tuple(default)
        try:
            return tuple(int(x) for x in v)
        except (TypeError, ValueError):
            raise KokoroLoadError(f"{name}: metadata {key} = {v!r} is not a list of integers") from None

    n_kernels = get(f"{g}.kernels", len(d.resblock_kernel_sizes))
    n_stages = get(f"{g}.upsamples", len(d.upsample_rates))
    # TTS.cpp writes the upsampling strides and dilations per block only: rebuild the lists from those.
    rates_default = tuple(
        meta.get(f"{g}.up_convs.{i}.stride", d.upsample_rates[i] if i < len(d.upsample_rates) else 0)
        for i in range(n_stages)
    )
    dil_flat = meta.get(f"{g}.resblock_dilation_sizes")
    if dil_flat is None:
        dil = tuple(
            tuple(int(meta.get(f"{g}.res_blocks.{j}.{m}.dilation", d.resblock_dilation_sizes[0][m])) for m in range(3))
            for j in range(n_kernels)
        )
    else:
        dil_flat = [int(x) for x in dil_flat]
        if len(dil_flat) % max(n_kernels, 1):
            raise KokoroLoadError(
                f"{name}: {g}.resblock_dilation_sizes has {len(dil_flat)} values, not {n_kernels} rows"
            )
        w = len(dil_flat) // n_kernels
        dil = tuple(tuple(dil_flat[r * w : (r + 1) * w]) for r in range(n_kernels))
    cfg = KokoroConfig(
        tokens=tuple(tokens),
        n_token=get("kokoro.tokenizer.vocab_size", len(tokens)),
        albert_hidden_size=get("kokoro.duration_predictor.albert.hidden_size", d.albert_hidden_size),
        albert_n_heads=get("kokoro.duration_predictor.albert.attn_heads", d.albert_n_heads),
        albert_n_layers=get("kokoro.duration_predictor.albert.recurrence", d.albert_n_layers),
        albert_intermediate_size=get("kokoro.duration_predictor.albert.intermediate_size", d.albert_intermediate_size),
        albert_embedding_size=get("kokoro.duration_predictor.albert.embedding_size", d.albert_embedding_size),
        albert_context_length=get("kokoro.duration_predictor.albert.context_length", d.albert_context_length),
        albert_layer_norm_eps=_f32(
            get("kokoro.duration_predictor.albert.layer_norm_epsilon", d.albert_layer_norm_eps, float)
        ),
        albert_dropout=_f32(get("kokoro.duration_predictor.albert.dropout", d.albert_dropout, float)),
        hidden_dim=get("kokoro.duration_predictor.hidden_size", d.hidden_dim),
        style_dim=get("kokoro.style_dim", d.style_dim),
        n_layer=get("kokoro.duration_predictor.layers", d.n_layer),
        max_dur=get("kokoro.duration_predictor.max_duration", d.max_dur),
        text_encoder_kernel_size=get("kokoro.text_encoder.kernel_size", d.text_encoder_kernel_size),
        n_mels=get("kokoro.n_mels", d.n_mels),
        dim_in=get("kokoro.dim_in", d.dim_in),
        max_conv_dim=get("kokoro.max_conv_dim", d.max_conv_dim),
        multispeaker=get("kokoro.multispeaker", d.multispeaker, bool),
        dropout=_f32(get("kokoro.dropout", d.dropout, float)),
        decoder_hidden=get("kokoro.decoder.hidden_size", d.decoder_hidden),
        asr_res_channels=get("kokoro.decoder.asr_res_channels", d.asr_res_channels),
        upsample_rates=get_list(f"{g}.upsample_rates", rates_default),
        upsample_kernel_sizes=get_list(f"{g}.upsample_kernel_sizes", d.upsample_kernel_sizes),
        upsample_initial_channel=get(f"{g}.upsample_initial_channel", d.upsample_initial_channel),
        resblock_kernel_sizes=get_list(f"{g}.resblock_kernel_sizes", d.resblock_kernel_sizes),
        resblock_dilation_sizes=dil,
        n_fft=get(f"{g}.n_fft", d.n_fft),
        hop=get(f"{g}.hop", d.hop),
        sample_rate=get("kokoro.sample_rate", d.sample_rate),
        harmonic_num=get(f"{g}.harmonic_num", d.harmonic_num),
        voices=tuple(_voice_names(gf) if isinstance(gf, GGUFFile) else meta.get("kokoro.voices", ())),
    )
    # Bound what the name table will loop over, so that a damaged header fails here with a sentence.
    counts = {"n_layer": cfg.n_layer, "upsample stages": n_stages, "resblock kernels": n_kernels}
    for what, n in counts.items():
        if not 1 <= n <= _MAX_COUNT:
            raise KokoroLoadError(
                f"{name}: the metadata give {n} {what} (expected 1 to {_MAX_COUNT}): the header is damaged"
            )
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        if type(v) is int and not 0 <= v <= _MAX_WIDTH:
            raise KokoroLoadError(
                f"{name}: the metadata give {f.name} = {v} (expected 0 to {_MAX_WIDTH}): the header is damaged"
            )
    if len(cfg.tokens) != cfg.n_token:
        raise KokoroLoadError(
            f"{name}: the phoneme vocabulary has {len(cfg.tokens)} entries but kokoro.tokenizer.vocab_size is "
            f"{cfg.n_token}"
        )
    if n_stages != len(cfg.upsample_rates) or len(cfg.upsample_kernel_sizes) != len(cfg.upsample_rates):
        raise KokoroLoadError(
            f"{name}: the generator's upsampling metadata disagree ({g}.upsamples, upsample_rates, "
            "upsample_kernel_sizes)"
        )
    if n_kernels != len(cfg.resblock_kernel_sizes):
        raise KokoroLoadError(
            f"{name}: {g}.kernels = {n_kernels} but resblock_kernel_sizes has {len(cfg.resblock_kernel_sizes)} entries"
        )
    return cfg


# ---------------------------------------------------------------------------------------------------------
# The name table


@dataclass(frozen=True)
class Placement:
    """Where one KModel tensor lives in a Kokoro GGUF (see the module docstring for the kinds)."""

    shape: tuple[int, ...]  # the KModel (torch) shape
    kind: str  # "whole" | "split" | "row0" | "implied"
    parts: tuple[str, ...] = ()  # GGUF names: one for whole/row0, the axis-0 pieces in order for split
    fill: float = 0.0  # implied: the value of every element

    def part_shape(self) -> tuple[int, ...]:
        """Shape of each GGUF tensor in `parts`."""
        if self.kind == "split":
            return (self.shape[0] // len(self.parts),) + self.shape[1:]
        if self.kind == "row0":
            return self.shape[1:]
        return self.shape


def _whole(table, key, shape, name):
    table[key] = Placement(tuple(shape), "whole", (name,))


def _split(table, key, shape, names):
    table[key] = Placement(tuple(shape), "split", tuple(names))


def _implied(table, key, shape, value):
    table[key] = Placement(tuple(shape), "implied", (), float(value))


def _lstm(table, prefix, base, n_in, hidden):
    """nn.LSTM(n_in, hidden, bidirectional) at KModel `prefix`; TTS.cpp's per-gate tensors under GGUF `base`."""
    for rev, wname, bname in (("", "weights", "biases"), ("_reverse", "reverse_weights", "reverse_biases")):
        for side, n_cols, offset in (("ih", n_in, 0), ("hh", hidden, 1)):
            gates = [2 * gate + offset for gate in range(4)]  # torch gate order i, f, g, o
            names = [f"{base}.0.{wname}.{i}" for i in gates]
            _split(table, f"{prefix}.weight_{side}_l0{rev}", (4 * hidden, n_cols), names)
            _split(table, f"{prefix}.bias_{side}_l0{rev}", (4 * hidden,), [f"{base}.0.{bname}.{i}" for i in gates])


def _gamma_beta(table, key_prefix, channels, style_dim, gamma, beta):
    """An AdaIN/AdaLayerNorm fc (Linear style_dim -> 2C) split into its gamma and beta halves."""
    _split(table, f"{key_prefix}.weight", (2 * channels, style_dim), [gamma + "_weight", beta + "_weight"])
    _split(table, f"{key_prefix}.bias", (2 * channels,), [gamma + "_bias", beta + "_bias"])


def _adain_res_blk(table, m, b, c_in, c_out, style_dim, upsample):
    """istftnet.AdainResBlk1d(c_in, c_out) at KModel prefix `m`, GGUF prefix `b`."""
    _whole(table, f"{m}.conv1.weight", (c_out, c_in, _CONV_KERNEL), f"{b}.conv1_weight")
    _whole(table, f"{m}.conv1.bias", (c_out,), f"{b}.conv1_bias")
    _whole(table, f"{m}.conv2.weight", (c_out, c_out, _CONV_KERNEL), f"{b}.conv2_weight")
    _whole(table, f"{m}.conv2.bias", (c_out,), f"{b}.conv2_bias")
    for n, c in (("norm1", c_in), ("norm2", c_out)):
        _implied(table, f"{m}.{n}.norm.weight", (c,), 1.0)
        _implied(table, f"{m}.{n}.norm.bias", (c,), 0.0)
        _gamma_beta(table, f"{m}.{n}.fc", c, style_dim, f"{b}.{n}_gamma", f"{b}.{n}_beta")
    if c_in != c_out:
        _whole(table, f"{m}.conv1x1.weight", (c_out, c_in, 1), f"{b}.conv1x1_weight")
    if upsample:
        _whole(table, f"{m}.pool.weight", (c_in, 1, _POOL_KERNEL), f"{b}.pool_weight")
        _whole(table, f"{m}.pool.bias", (c_in,), f"{b}.pool_bias")


def _adain_resblock1(table, m, r, channels, kernel, style_dim):
    """istftnet.AdaINResBlock1(channels, kernel) at KModel prefix `m`, GGUF prefix `r`."""
    for j in range(3):
        for conv in ("convs1", "convs2"):
            _whole(table, f"{m}.{conv}.{j}.weight", (channels, channels, kernel), f"{r}.{j}.{conv}_weight")
            _whole(table, f"{m}.{conv}.{j}.bias", (channels,), f"{r}.{j}.{conv}_bias")
        for n in (1, 2):
            _implied(table, f"{m}.adain{n}.{j}.norm.weight", (channels,), 1.0)
            _implied(table, f"{m}.adain{n}.{j}.norm.bias", (channels,), 0.0)
            _gamma_beta(table, f"{m}.adain{n}.{j}.fc", channels, style_dim, f"{r}.{j}.gamma{n}", f"{r}.{j}.beta{n}")
        for n in (1, 2):
            _whole(table, f"{m}.alpha{n}.{j}", (1, channels, 1), f"{r}.{j}.alpha{n}")


def kokoro_tensor_names(cfg: KokoroConfig | None = None) -> dict[str, Placement]:
    """{KModel state-dict key (weight norm folded): Placement} for every tensor of the model `cfg` describes
    (default: Kokoro-82M v1.0), in KModel's module order."""
    cfg = cfg or KokoroConfig()
    t: dict[str, Placement] = {}
    S, D, E, H = cfg.style_dim, cfg.hidden_dim, cfg.albert_embedding_size, cfg.albert_hidden_size

    # PL-BERT
    a = "kokoro.albert"
    _whole(t, "bert.embeddings.word_embeddings.weight", (cfg.n_token, E), f"{a}.token_embd")
    _whole(t, "bert.embeddings.position_embeddings.weight", (cfg.albert_context_length, E), f"{a}.position_embd")
    token_types = Placement((_ALBERT_TYPE_VOCAB, E), "row0", (f"{a}.token_type_embd",))
    t["bert.embeddings.token_type_embeddings.weight"] = token_types
    _whole(t, "bert.embeddings.LayerNorm.weight", (E,), f"{a}.norm")
    _whole(t, "bert.embeddings.LayerNorm.bias", (E,), f"{a}.norm_bias")
    _whole(t, "bert.encoder.embedding_hidden_mapping_in.weight", (H, E), f"{a}.embd")
    _whole(t, "bert.encoder.embedding_hidden_mapping_in.bias", (H,), f"{a}.embd_bias")
    layer = "bert.encoder.albert_layer_groups.0.albert_layers.0"
    ffn = cfg.albert_intermediate_size
    for key, name, shape in (
        ("full_layer_layer_norm.weight", "attn_norm", (H,)),
        ("full_layer_layer_norm.bias", "attn_norm_bias", (H,)),
        ("attention.query.weight", "q", (H, H)),
        ("attention.query.bias", "q_bias", (H,)),
        ("attention.key.weight", "k", (H, H)),
        ("attention.key.bias", "k_bias", (H,)),
        ("attention.value.weight", "v", (H, H)),
        ("attention.value.bias", "v_bias", (H,)),
        ("attention.dense.weight", "o", (H, H)),
        ("attention.dense.bias", "o_bias", (H,)),
        ("attention.LayerNorm.weight", "ffn_norm", (H,)),
        ("attention.LayerNorm.bias", "ffn_norm_bias", (H,)),
        ("ffn.weight", "ffn", (ffn, H)),
        ("ffn.bias", "ffn_bias", (ffn,)),
        ("ffn_output.weight", "ffn_out", (H, ffn)),
        ("ffn_output.bias", "ffn_out_bias", (H,)),
    ):
        _whole(t, f"{layer}.{key}", shape, f"{a}.layer.0.{name}")
    _implied(t, "bert.pooler.weight", (H, H), 0.0)
    _implied(t, "bert.pooler.bias", (H,), 0.0)
    dp = "kokoro.duration_predictor"
    _whole(t, "bert_encoder.weight", (D, H), f"{dp}.encode")
    _whole(t, "bert_encoder.bias", (D,), f"{dp}.encode_bias")

    # Prosody predictor
    for i in range(cfg.n_layer):
        _lstm(t, f"predictor.text_encoder.lstms.{2 * i}", f"{dp}.layers.{2 * i}.lstm", D + S, D // 2)
        k = 2 * i + 1
        _gamma_beta(t, f"predictor.text_encoder.lstms.{k}.fc", D, S, f"{dp}.layers.{k}.gamma", f"{dp}.layers.{k}.beta")
    _lstm(t, "predictor.lstm", f"{dp}.duration_lstm", D + S, D // 2)
    _whole(t, "predictor.duration_proj.linear_layer.weight", (cfg.max_dur, D), f"{dp}.duration_proj")
    _whole(t, "predictor.duration_proj.linear_layer.bias", (cfg.max_dur,), f"{dp}.duration_proj_bias")
    _lstm(t, "predictor.shared", f"{dp}.shared_lstm", D + S, D // 2)
    for mod, base in (("F0", "f0_blocks"), ("N", "n_blocks")):
        _adain_res_blk(t, f"predictor.{mod}.0", f"{dp}.{base}.0", D, D, S, False)
        _adain_res_blk(t, f"predictor.{mod}.1", f"{dp}.{base}.1", D, D // 2, S, True)
        _adain_res_blk(t, f"predictor.{mod}.2", f"{dp}.{base}.2", D // 2, D // 2, S, False)
    for mod, name in (("F0_proj", "f0_proj"), ("N_proj", "n_proj")):
        _whole(t, f"predictor.{mod}.weight", (1, D // 2, 1), f"{dp}.{name}_kernel")
        _whole(t, f"predictor.{mod}.bias", (1,), f"{dp}.{name}_bias")

    # Text encoder
    te = "kokoro.text_encoder"
    _whole(t, "text_encoder.embedding.weight", (cfg.n_token, D), f"{te}.embedding_weight")
    for i in range(cfg.n_layer):
        _whole(t, f"text_encoder.cnn.{i}.0.weight", (D, D, cfg.text_encoder_kernel_size), f"{te}.layers.{i}.weight")
        _whole(t, f"text_encoder.cnn.{i}.0.bias", (D,), f"{te}.layers.{i}.bias")
        _whole(t, f"text_encoder.cnn.{i}.1.gamma", (D,), f"{te}.layers.{i}.gamma")
        _whole(t, f"text_encoder.cnn.{i}.1.beta", (D,), f"{te}.layers.{i}.beta")
    _lstm(t, "text_encoder.lstm", f"{te}.lstm", D, D // 2)

    # Decoder
    dec = "kokoro.decoder"
    hid, asr = cfg.decoder_hidden, cfg.asr_res_channels
    _adain_res_blk(t, "decoder.encode", f"{dec}.encoder_block", D + _DECODER_IN_EXTRA, hid, S, False)
    c_in = hid + _DECODER_IN_EXTRA + asr
    for i in range(4):
        last = i == 3
        _adain_res_blk(t, f"decoder.decode.{i}", f"{dec}.decoder_blocks.{i}", c_in, D if last else hid, S, last)
    for mod, name in (("F0_conv", "f0_conv"), ("N_conv", "n_conv")):
        _whole(t, f"decoder.{mod}.weight", (1, 1, 3), f"{dec}.{name}_weight")
        _whole(t, f"decoder.{mod}.bias", (1,), f"{dec}.{name}_bias")
    _whole(t, "decoder.asr_res.0.weight", (asr, D, 1), f"{dec}.asr_conv_weight")
    _whole(t, "decoder.asr_res.0.bias", (asr,), f"{dec}.asr_conv_bias")

    gen = f"{dec}.generator"
    _whole(t, "decoder.generator.m_source.l_linear.weight", (1, cfg.harmonic_num + 1), f"{gen}.m_source_weight")
    _whole(t, "decoder.generator.m_source.l_linear.bias", (1,), f"{gen}.m_source_bias")
    c0 = cfg.upsample_initial_channel
    n_stages = len(cfg.upsample_rates)
    for i, (kernel, _, _) in enumerate(_generator_blocks(cfg)):
        c = c0 // 2 ** (i + 1)
        nb = f"{gen}.noise_blocks.{i}"
        _whole(t, f"decoder.generator.noise_convs.{i}.weight", (c, cfg.n_fft + 2, kernel), f"{nb}.conv_weight")
        _whole(t, f"decoder.generator.noise_convs.{i}.bias", (c,), f"{nb}.conv_bias")
    for i in range(n_stages):
        c = c0 // 2 ** (i + 1)
        k = _NOISE_RES_KERNELS[0] if i + 1 < n_stages else _NOISE_RES_KERNELS[1]
        _adain_resblock1(t, f"decoder.generator.noise_res.{i}", f"{gen}.noise_blocks.{i}.resblock", c, k, S)
    for i, k in enumerate(cfg.upsample_kernel_sizes):
        c = c0 // 2**i
        _whole(t, f"decoder.generator.ups.{i}.weight", (c, c // 2, k), f"{gen}.ups.{i}.weight")
        _whole(t, f"decoder.generator.ups.{i}.bias", (c // 2,), f"{gen}.ups.{i}.bias")
    nk = len(cfg.resblock_kernel_sizes)
    for i in range(n_stages):
        c = c0 // 2 ** (i + 1)
        for j, k in enumerate(cfg.resblock_kernel_sizes):
            _adain_resblock1(t, f"decoder.generator.resblocks.{i * nk + j}", f"{gen}.resblocks.{i * nk + j}", c, k, S)
    c_last = c0 // 2**n_stages
    _whole(t, "decoder.generator.conv_post.weight", (cfg.n_fft + 2, c_last, _POST_KERNEL), f"{gen}.conv_post_weight")
    _whole(t, "decoder.generator.conv_post.bias", (cfg.n_fft + 2,), f"{gen}.conv_post_bias")
    return t


GGUF_NAME: dict[str, Placement] = kokoro_tensor_names()
"""The name table of Kokoro-82M v1.0: {KModel key: Placement}."""


# ---------------------------------------------------------------------------------------------------------
# Reading

# Tensor reads are merged into source reads of up to this many bytes (fewer HTTP requests for a URL), as long
# as the gap between neighbouring tensors is at most _READ_GAP bytes.
_READ_SPAN = 16 << 20
_READ_GAP = 1 << 16


async def _read_tensors(gf: GGUFFile, names: Iterable[str], progress=None) -> dict[str, np.ndarray]:
    """float32 arrays (numpy shapes) of tensors `names`, fetched in a few large reads. `progress(done_bytes,
    total_bytes, name)` is called after each tensor."""
    infos = sorted((gf.info(n) for n in set(names)), key=lambda i: i.offset)
    total = sum(i.nbytes for i in infos)
    done = 0
    out: dict[str, np.ndarray] = {}
    k = 0
    while k < len(infos):
        start = infos[k].offset
        end = start + infos[k].nbytes
        m = k + 1
        while (m < len(infos) and infos[m].offset - end <= _READ_GAP
               and infos[m].offset + infos[m].nbytes - start <= _READ_SPAN):
            end = max(end, infos[m].offset + infos[m].nbytes)
            m += 1
        try:
            raw = memoryview(await gf.source.read(start, end - start))
        except SourceError as e:
            what = f"tensors {infos[k].name!r}..{infos[m - 1].name!r}"
            raise GGUFError(f"{gf.source.name}: reading {what} failed: {e}") from e
        for info in infos[k:m]:
            piece = raw[info.offset - start : info.offset - start + info.nbytes]
            arr = dequantize_rows(piece, info.ggml_type, info.n_rows, info.row_bytes, info.shape[-1])
            out[info.name] = arr.reshape(info.shape)
            done += info.nbytes
            if progress is not None:
                progress(done, total, info.name)
        del raw
        k = m
    return out


async def load_state(gf: GGUFFile, keys: Iterable[str] | None = None, progress=None) -> dict[str, np.ndarray]:
    """Read a Kokoro GGUF (ours or TTS.cpp's) as {KModel state-dict key: float32 array in the torch shape}, with
    weight norm folded (`<module>.weight`), split gates and gamma|beta halves joined again, implied tensors
    filled in. `keys` limits it to those KModel keys (to load the model part by part). `progress(done_bytes,
    total_bytes, gguf_name)` is called after each GGUF tensor is read. Raises KokoroLoadError naming the file
    and the tensor when one is missing, misshapen or not finite."""
    cfg = read_kokoro_config(gf)
    name = _source_name(gf)
    table = kokoro_tensor_names(cfg)
    if keys is not None:
        keys = list(keys)
        unknown = [k for k in keys if k not in table]
        if unknown:
            raise KeyError(f"not KModel keys of this model: {unknown[:5]}")
        table = {k: table[k] for k in keys}

    wanted: dict[str, tuple[str, tuple[int, ...]]] = {}  # GGUF name -> (KModel key, expected shape)
    plan: dict[str, tuple[str, tuple[str, ...]]] = {}  # KModel key -> ("extra" | kind, GGUF names)
    for key, p in table.items():
        extra = EXTRA_PREFIX + key
        if extra in gf:
            plan[key] = ("extra", (extra,))
            wanted[extra] = (key, p.shape)
        elif p.kind == "implied":
            plan[key] = ("implied", ())
        else:
            plan[key] = (p.kind, p.parts)
            for part in p.parts:
                wanted[part] = (key, p.part_shape())
    missing = [(g, k) for g, (k, _) in wanted.items() if g not in gf]
    if missing:
        g, k = missing[0]
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise KokoroLoadError(
            f"{name} lacks tensor {g!r} (KModel {k}){more}: the file is damaged or not a Kokoro-82M GGUF"
        )
    for g, (k, shape) in wanted.items():
        got = gf.tensors[g].shape
        if tuple(got) != tuple(shape):
            raise KokoroLoadError(
                f"{name}: tensor {g!r} (KModel {k}) has shape {list(got)}, expected {list(shape)} for this model's "
                "hyper-parameters: the file is damaged or its metadata do not match its tensors"
            )
    data = await _read_tensors(gf, wanted, progress)

    state: dict[str, np.ndarray] = {}
    for key, (how, parts) in plan.items():
        p = table[key]
        if how == "implied":
            state[key] = np.full(p.shape, p.fill, dtype=np.float32)
            continue
        if how in ("extra", "whole"):
            arr = data[parts[0]]
        elif how == "split":
            arr = np.concatenate([data[n] for n in parts], axis=0)
        else:  # row0: a TTS.cpp file keeps only the row type id 0 selects; Kokoro never uses the others
            arr = np.zeros(p.shape, dtype=np.float32)
            arr[0] = data[parts[0]]
        if not np.isfinite(arr).all():
            raise KokoroLoadError(
                f"{name}: tensor {parts[0]!r} (KModel {key}) holds NaN or infinite values: the file is damaged"
            )
        state[key] = np.ascontiguousarray(arr, dtype=np.float32)
    return state


def _voice_names(gf: GGUFFile) -> list[str]:
    listed = gf.metadata.get("kokoro.voices")
    if isinstance(listed, list) and listed:
        return [str(v) for v in listed]
    return sorted(n[len(VOICE_PREFIX) :] for n in gf.tensors if n.startswith(VOICE_PREFIX))


async def voices(gf: GGUFFile, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """{voice name: float32 [510, 256]} for every voice in the file (or just `names`). Row n - 1 is the style
    vector for n phonemes; columns [0, 128) feed the decoder, [128, 256) the prosody predictor."""
    all_names = _voice_names(gf)
    names = all_names if names is None else list(names)
    src = _source_name(gf)
    for v in names:
        if VOICE_PREFIX + v not in gf:
            known = ", ".join(all_names[:8]) + (", ..." if len(all_names) > 8 else "")
            raise KokoroLoadError(f"{src} has no voice {v!r} (voices: {known or 'none'})")
        shape = gf.tensors[VOICE_PREFIX + v].shape
        if tuple(shape[-1:]) != VOICE_SHAPE[-1:] or len(shape) != 2:
            raise KokoroLoadError(f"{src}: voice {v!r} has shape {list(shape)}, expected [n, {VOICE_SHAPE[1]}]")
    data = await _read_tensors(gf, [VOICE_PREFIX + v for v in names])
    return {v: data[VOICE_PREFIX + v] for v in names}


async def voice(gf: GGUFFile, name: str) -> np.ndarray:
    """One voice pack, float32 [510, 256] (reads only that tensor)."""
    return (await voices(gf, [name]))[name]


__all__ = [
    "ARCHITECTURE",
    "EXTRA_PREFIX",
    "GGUF_NAME",
    "KokoroConfig",
    "KokoroLoadError",
    "Placement",
    "VOICE_PREFIX",
    "config_metadata",
    "kokoro_tensor_names",
    "load_state",
    "read_kokoro_config",
    "voice",
    "voices",
]
