"""Kokoro-82M (StyleTTS 2 with an iSTFTNet vocoder), the forward pass of the `kokoro` package's KModel as plain
code over `ops`.

One sentence of phoneme ids becomes 24 kHz audio in two GPU runs with one small readback between them:

    text run (T tokens):   PL-BERT (ALBERT, one layer applied 12 times) -> bert_encoder -> duration encoder
                           (3 x BiLSTM + AdaLayerNorm) -> BiLSTM -> duration head -> durations (read back);
                           the text encoder (embedding, 3 x conv + LayerNorm + LeakyReLU, BiLSTM) runs here too.
    host:                  frame -> token index from the durations (Kokoro's one-hot alignment is a gather).
    audio run (F frames):  prosody BiLSTM -> F0 and noise curves (AdaIN residual blocks, 2F rows) -> decoder
                           (AdaIN residual blocks, F -> 2F) -> iSTFTNet generator (harmonic source + STFT,
                           transposed convs to 20F and 120F + 1 rows, Snake resblocks) -> inverse STFT -> 600F
                           samples.

Layout: every activation is time-major f32 [rows, channels]. Runs are recorded once for a capacity (tokens,
frames) and reused for every shorter sentence: the real lengths live in six Step uniforms (tokens T, frames F,
2F, 20F, 120F + 1, 600F), which the ops read (see ops/conv.py for the length convention).

The style vector (256: the first 128 drive the decoder, the last 128 the prosody predictor) enters only through
per-channel affine parameters: every AdaIN / AdaLayerNorm `fc` and the style half of every 640-wide LSTM input.
All of those are two matrix-vector products per sentence (`pros_affine`, `dec_affine`), so a new style (a new
voice, or the voice trainer's candidate) costs two dispatches, and the 640-wide [hidden; style] concatenations
of the reference never exist: W_ih [x; s] = W_ih[:, :512] x + (W_ih[:, 512:] s + b), the second term a bias.

Weights come from `kokoro_gguf.load_state` keyed like KModel's state dict (weight norm folded); the widths come
from the file's `KokoroConfig` (the figures above are Kokoro-82M v1.0's: ALBERT 768 wide with 12 heads applied
12 times, hidden_dim 512, decoder 1024 + 64, generator 512 -> 256 -> 128 channels), so a smaller model of the
same architecture (the tests' tiny Kokoro) runs through the same code. What stays fixed is the time axis: 128
style values per half, 24 kHz, 600 samples per duration frame through upsampling rates 10 and 6 and an STFT of
20 with hop 5 (the Step uniforms above are named for it); `check_config` says so in a sentence otherwise.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field

import numpy as np

from .. import ops
from ..gpu import UNIFORM, Device, Graph, Tensor
from ..ops.signal import source_params, source_params_bytes

SAMPLE_RATE = 24000
SAMPLES_PER_FRAME = 600  # one duration frame = 25 ms
STYLE_DIM = 128  # each half of a voice row (voicepacks are [510, 2 * STYLE_DIM])
MAX_TOKENS = 512  # PL-BERT's position table in v1.0, and the most rows ops.self_attention takes (pads included)
# The time axis every config must keep (see check_config): the decoder doubles the frame rate, the generator's
# transposed convolutions upsample by 10 and 6 (kernels 20 and 12), the inverse STFT (n_fft 20) by its hop 5.
UPSAMPLE_RATES = (10, 6)
UPSAMPLE_KERNELS = (20, 12)
N_FFT = 20
HOP = 5
NOISE_RES_KERNELS = (7, 11)  # the generator's noise_res blocks (fixed by the architecture, not the config)
DECODER_BLOCKS = 4  # decoder.decode.0..3, the last upsampling
SQRT_HALF = 1.0 / math.sqrt(2.0)
# The first recording's capacity: most sentences fit, so that the next sentences reuse its pipelines and buffers
# rather than recording (and on some devices compiling) again. Frames are not known before the text run;
# English speech runs at about 3 to 5 frames per phoneme.
MIN_TOKENS = 64
MIN_FRAMES = 256
FRAMES_PER_TOKEN_GUESS = 5


class KokoroError(RuntimeError):
    """The Kokoro model cannot run this input (too many tokens, too many frames for the device), or these weights
    (a config this code does not support, a tensor whose shape does not match the config)."""


@dataclass(frozen=True)
class Widths:
    """Every width the graphs are recorded with, from a KokoroConfig (`check_config`); v1.0's in brackets."""

    embed: int  # ALBERT's embedding width [128]
    albert: int  # ALBERT's hidden width [768]
    heads: int  # ALBERT's attention heads [12]
    ffn: int  # ALBERT's intermediate width [2048]
    albert_repeats: int  # times the one shared ALBERT layer is applied [12]
    albert_eps: float  # ALBERT's LayerNorm epsilon [1e-12]
    hidden: int  # hidden_dim D: PL-BERT's projection, the predictor, the text encoder [512]
    bins: int  # duration bins (max_dur) [50]
    layers: int  # duration encoder LSTMs and text encoder convolutions (n_layer) [3]
    text_kernel: int  # the text encoder's convolution kernel [5]
    decoder: int  # the decoder blocks' width [1024]
    asr: int  # the decoder's asr_res channels [64]
    generator: tuple[int, int, int]  # the generator's channels: its input, after ups.0, after ups.1 [512, 256, 128]
    harmonics: int  # sines of the harmonic source, the fundamental included (harmonic_num + 1) [9]
    resblock_kernels: tuple[int, ...]  # the generator's three parallel resblocks per stage [3, 7, 11]
    resblock_dilations: tuple[tuple[int, ...], ...]  # their convs1 dilations [(1, 3, 5)] * 3
    max_tokens: int  # phoneme ids per sentence, the two pads included [512]

    @property
    def lstm(self) -> int:
        """Hidden units per direction of every BiLSTM (D / 2) [256]."""
        return self.hidden // 2

    @property
    def head_dim(self) -> int:
        return self.albert // self.heads

    @property
    def decoder_in(self) -> int:
        """decoder.encode's input: the text encoder's D channels, F0 and N [514]."""
        return self.hidden + 2

    @property
    def decoder_cat(self) -> int:
        """decode.0..3's input: [x (decoder); asr_res (asr); F0; N] [1090]."""
        return self.decoder + self.asr + 2

    @property
    def spec(self) -> int:
        """Magnitude and phase channels of the generator's STFT (n_fft / 2 + 1 each) [22]."""
        return N_FFT + 2


def check_config(cfg) -> Widths:
    """The widths of the model `cfg` (a kokoro_gguf.KokoroConfig) describes, or a KokoroError saying what this
    code does not run: the time axis (24 kHz, 600 samples per frame through the generator's two upsampling
    stages of 10 and 6 and an STFT of 20 with hop 5) and the 128 + 128 style values are fixed; every width is
    read from the config."""
    def no(what: str):
        return KokoroError(f"this Kokoro runner does not support {what}")

    if cfg.style_dim != STYLE_DIM:
        raise no(f"style_dim {cfg.style_dim}: voicepacks hold 2 x {STYLE_DIM} style values per row")
    if (cfg.sample_rate, cfg.n_fft, cfg.hop) != (SAMPLE_RATE, N_FFT, HOP):
        raise no(f"sample rate {cfg.sample_rate} with an STFT of {cfg.n_fft}, hop {cfg.hop}: it runs "
                 f"{SAMPLE_RATE} Hz with n_fft {N_FFT} and hop {HOP}")
    if tuple(cfg.upsample_rates) != UPSAMPLE_RATES or tuple(cfg.upsample_kernel_sizes) != UPSAMPLE_KERNELS:
        raise no(f"upsampling rates {list(cfg.upsample_rates)} with kernels {list(cfg.upsample_kernel_sizes)}: it "
                 f"runs rates {list(UPSAMPLE_RATES)} with kernels {list(UPSAMPLE_KERNELS)} ({SAMPLES_PER_FRAME} "
                 "samples per duration frame)")
    c0 = cfg.upsample_initial_channel
    if c0 != cfg.hidden_dim or c0 % 4:
        raise no(f"upsample_initial_channel {c0} with hidden_dim {cfg.hidden_dim}: the last decoder block writes "
                 "hidden_dim channels, which the generator reads and halves twice (equal, a multiple of 4)")
    if cfg.hidden_dim % 2 or cfg.hidden_dim < 2:
        raise no(f"hidden_dim {cfg.hidden_dim}: each BiLSTM direction has hidden_dim / 2 units")
    if cfg.albert_hidden_size % cfg.albert_n_heads or cfg.albert_hidden_size // cfg.albert_n_heads > 128:
        raise no(f"{cfg.albert_n_heads} attention heads over ALBERT's {cfg.albert_hidden_size} channels: heads "
                 "of equal width, at most 128 each")
    if cfg.text_encoder_kernel_size % 2 == 0:
        raise no(f"text_encoder_kernel_size {cfg.text_encoder_kernel_size}: an odd kernel (same padding)")
    if not 1 <= cfg.harmonic_num + 1 <= 16:
        raise no(f"harmonic_num {cfg.harmonic_num}: the harmonic source makes 1 to 16 sines")
    kernels, dilations = tuple(cfg.resblock_kernel_sizes), tuple(tuple(d) for d in cfg.resblock_dilation_sizes)
    if len(dilations) != len(kernels) or any(k % 2 == 0 for k in kernels) or any(len(d) != 3 for d in dilations):
        raise no(f"resblock kernels {list(kernels)} with dilations {[list(d) for d in dilations]}: odd kernels, "
                 "one row of three dilations per kernel")
    return Widths(
        embed=cfg.albert_embedding_size, albert=cfg.albert_hidden_size, heads=cfg.albert_n_heads,
        ffn=cfg.albert_intermediate_size, albert_repeats=cfg.albert_n_layers, albert_eps=cfg.albert_layer_norm_eps,
        hidden=cfg.hidden_dim, bins=cfg.max_dur, layers=cfg.n_layer, text_kernel=cfg.text_encoder_kernel_size,
        decoder=cfg.decoder_hidden, asr=cfg.asr_res_channels, generator=(c0, c0 // 2, c0 // 4),
        harmonics=cfg.harmonic_num + 1, resblock_kernels=kernels, resblock_dilations=dilations,
        max_tokens=min(cfg.albert_context_length, MAX_TOKENS),
    )


def _check_state(state: dict, cfg) -> None:
    """A KokoroError naming the first tensor of `state` that the config's name table wants and that is missing
    or of another shape (weights and config from two different models)."""
    from .kokoro_gguf import kokoro_tensor_names

    for key, place in kokoro_tensor_names(cfg).items():
        got = state.get(key)
        if got is None:
            if place.kind == "implied":
                continue  # never read here (InstanceNorm affines, ALBERT's pooler)
            raise KokoroError(f"the Kokoro weights lack {key} (shape {list(place.shape)} in this model's config)")
        if tuple(np.shape(got)) != tuple(place.shape):
            raise KokoroError(f"the Kokoro weight {key} has shape {list(np.shape(got))}, but this model's config "
                              f"gives {list(place.shape)}: the weights and the config are from different models")


def _bucket(n: int, lo: int) -> int:
    """Capacity for n: the next of lo * 2^k * {1, 1.25, 1.5, 1.75} (at most 25 % slack, few distinct graphs)."""
    cap = lo
    while True:
        for f in (1.0, 1.25, 1.5, 1.75):
            c = int(cap * f)
            if c >= n:
                return c
        cap *= 2


def _step(n: int) -> bytes:
    return struct.pack("<8I", 0, n, n, 0, 0, 0, 0, 0)


@dataclass
class KokoroRun:
    """Buffers and graphs recorded for a capacity of tokens and frames."""

    tokens: int
    frames: int
    steps: dict  # name -> Step uniform: "T", "F", "2F", "20F", "120F", "600F"
    bufs: dict = field(default_factory=dict)
    text_graph: Graph | None = None
    decoder_graph: Graph | None = None  # prosody (F0, noise curves) and decoder: the generator's input
    generator_graph: Graph | None = None


class Affines:
    """Row offsets into one stacked matrix of style-dependent parameters (fc layers of AdaIN/AdaLayerNorm and
    the style columns of LSTM inputs): rows are appended with `add` and read back by key."""

    def __init__(self):
        self.w: list[np.ndarray] = []
        self.b: list[np.ndarray] = []
        self.offset: dict[str, int] = {}
        self.rows = 0

    def add(self, key: str, w: np.ndarray, b: np.ndarray) -> None:
        self.offset[key] = self.rows
        self.w.append(np.asarray(w, np.float32))
        self.b.append(np.asarray(b, np.float32))
        self.rows += w.shape[0]

    def stacked(self) -> tuple[np.ndarray, np.ndarray]:
        return np.concatenate(self.w, 0), np.concatenate(self.b, 0)


class Kokoro:
    """Kokoro-82M (or a model of its architecture with other widths) on one GPU device.
    `await Kokoro.load(device, state, config)` then `await model.synthesize(ids, style)`."""

    def __init__(self, device: Device, state: dict, config=None):
        from .kokoro_gguf import KokoroConfig

        self.config = config if config is not None else KokoroConfig()
        self.dims = check_config(self.config)
        _check_state(state, self.config)
        self.device = device
        self.state = state
        self.w: dict[str, Tensor] = {}
        self.pros = Affines()  # affines of s_pros = style[128:]
        self.dec = Affines()  # affines of s_dec = style[:128]
        self._run: KokoroRun | None = None
        self._tensors: list[Tensor] = []
        self.aligned = 0  # counts `align` calls: a caller that keeps a sentence on the GPU sees if another replaced it

    # -- loading -------------------------------------------------------------------------------------------
    @classmethod
    async def load(cls, device: Device, state: dict, config=None) -> "Kokoro":
        """Upload `state` (kokoro_gguf.load_state's KModel tensors) to `device`. `config`: the file's KokoroConfig
        (kokoro_gguf.read_kokoro_config), which gives every width; None means Kokoro-82M v1.0's. Raises
        KokoroError for a config this code does not run or weights of other shapes than the config's."""
        model = cls(device, state, config)
        model._upload()
        return model

    def _up(self, name: str, array) -> Tensor:
        t = self.device.upload(np.ascontiguousarray(array, np.float32), label=name)
        self.w[name] = t
        self._tensors.append(t)
        return t

    def _load_lstm(self, prefix: str, style_in: bool) -> None:
        """One bidirectional LSTM: W_ih of both directions stacked [8H, in] (without the style columns, which go
        to the prosody affines as a bias together with b_ih + b_hh), W_hh [2, 4H, H]."""
        s = self.state
        wih = np.concatenate([s[f"{prefix}.weight_ih_l0"], s[f"{prefix}.weight_ih_l0_reverse"]], 0)
        bias = np.concatenate([s[f"{prefix}.bias_ih_l0"] + s[f"{prefix}.bias_hh_l0"],
                               s[f"{prefix}.bias_ih_l0_reverse"] + s[f"{prefix}.bias_hh_l0_reverse"]], 0)
        if style_in:
            D = self.dims.hidden
            self.pros.add(prefix, wih[:, D:], bias)
            wih = wih[:, :D]
        else:
            self._up(prefix + ".bias", bias)
        self._up(prefix + ".w_ih", wih)
        whh = np.stack([s[f"{prefix}.weight_hh_l0"], s[f"{prefix}.weight_hh_l0_reverse"]])
        relayout = getattr(ops, "lstm_weights", None)
        self._up(prefix + ".w_hh", relayout(whh[0], whh[1]) if relayout else whh)

    def _load_adain_block(self, prefix: str, aff: Affines) -> None:
        """AdainResBlk1d: norm1/norm2 fcs to the affines, convs (and pool, conv1x1) uploaded."""
        s = self.state
        for n in ("norm1", "norm2"):
            aff.add(f"{prefix}.{n}", s[f"{prefix}.{n}.fc.weight"], s[f"{prefix}.{n}.fc.bias"])
        for k in ("conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "conv1x1.weight", "pool.weight",
                  "pool.bias"):
            if f"{prefix}.{k}" in s:
                self._up(f"{prefix}.{k}", s[f"{prefix}.{k}"])

    def _load_resblock1(self, prefix: str) -> None:
        """AdaINResBlock1 (generator): three (adain1, snake, conv1 dilated, adain2, snake, conv2) pairs."""
        s = self.state
        for p in range(3):  # three pairs in every AdaINResBlock1 (a row of three dilations each)
            for n in ("adain1", "adain2"):
                self.dec.add(f"{prefix}.{n}.{p}", s[f"{prefix}.{n}.{p}.fc.weight"], s[f"{prefix}.{n}.{p}.fc.bias"])
            for c in ("convs1", "convs2"):
                self._up(f"{prefix}.{c}.{p}.weight", s[f"{prefix}.{c}.{p}.weight"])
                self._up(f"{prefix}.{c}.{p}.bias", s[f"{prefix}.{c}.{p}.bias"])
            for a in ("alpha1", "alpha2"):
                self._up(f"{prefix}.{a}.{p}", s[f"{prefix}.{a}.{p}"].reshape(-1))

    def _upload(self) -> None:
        s = self.state
        al = "bert.encoder.albert_layer_groups.0.albert_layers.0"
        # PL-BERT: token type 0 is folded into the position table (every token has type 0).
        self._up("bert.word", s["bert.embeddings.word_embeddings.weight"])
        self._up("bert.pos", s["bert.embeddings.position_embeddings.weight"]
                 + s["bert.embeddings.token_type_embeddings.weight"][0])
        for k in ("bert.embeddings.LayerNorm.weight", "bert.embeddings.LayerNorm.bias",
                  "bert.encoder.embedding_hidden_mapping_in.weight", "bert.encoder.embedding_hidden_mapping_in.bias",
                  "bert_encoder.weight", "bert_encoder.bias"):
            self._up(k, s[k])
        for k in ("attention.query", "attention.key", "attention.value", "attention.dense", "attention.LayerNorm",
                  "ffn", "ffn_output", "full_layer_layer_norm"):
            self._up(f"{al}.{k}.weight", s[f"{al}.{k}.weight"])
            self._up(f"{al}.{k}.bias", s[f"{al}.{k}.bias"])

        # prosody predictor
        for i in range(0, 2 * self.dims.layers, 2):
            self._load_lstm(f"predictor.text_encoder.lstms.{i}", style_in=True)
            fc = f"predictor.text_encoder.lstms.{i + 1}.fc"
            self.pros.add(fc, s[fc + ".weight"], s[fc + ".bias"])
        self._load_lstm("predictor.lstm", style_in=True)
        self._up("predictor.duration_proj.weight", s["predictor.duration_proj.linear_layer.weight"])
        self._up("predictor.duration_proj.bias", s["predictor.duration_proj.linear_layer.bias"])
        self._load_lstm("predictor.shared", style_in=True)
        for branch in ("F0", "N"):
            for i in range(3):
                self._load_adain_block(f"predictor.{branch}.{i}", self.pros)
            self._up(f"predictor.{branch}_proj.weight", s[f"predictor.{branch}_proj.weight"])
            self._up(f"predictor.{branch}_proj.bias", s[f"predictor.{branch}_proj.bias"])

        # text encoder
        self._up("text_encoder.embedding.weight", s["text_encoder.embedding.weight"])
        for i in range(self.dims.layers):
            for k in ("0.weight", "0.bias", "1.gamma", "1.beta"):
                self._up(f"text_encoder.cnn.{i}.{k}", s[f"text_encoder.cnn.{i}.{k}"])
        self._load_lstm("text_encoder.lstm", style_in=False)

        # decoder
        for k in ("F0_conv", "N_conv", "asr_res.0"):
            self._up(f"decoder.{k}.weight", s[f"decoder.{k}.weight"])
            self._up(f"decoder.{k}.bias", s[f"decoder.{k}.bias"])
        self._load_adain_block("decoder.encode", self.dec)
        for i in range(DECODER_BLOCKS):
            self._load_adain_block(f"decoder.decode.{i}", self.dec)
        gen = "decoder.generator"
        self._up(f"{gen}.m_source.l_linear.weight", s[f"{gen}.m_source.l_linear.weight"].reshape(-1))
        self._up(f"{gen}.m_source.l_linear.bias", s[f"{gen}.m_source.l_linear.bias"])
        for i in range(2):
            for k in (f"ups.{i}", f"noise_convs.{i}"):
                self._up(f"{gen}.{k}.weight", s[f"{gen}.{k}.weight"])
                self._up(f"{gen}.{k}.bias", s[f"{gen}.{k}.bias"])
            self._load_resblock1(f"{gen}.noise_res.{i}")
        for j in range(len(UPSAMPLE_RATES) * len(self.dims.resblock_kernels)):
            self._load_resblock1(f"{gen}.resblocks.{j}")
        self._up(f"{gen}.conv_post.weight", s[f"{gen}.conv_post.weight"])
        self._up(f"{gen}.conv_post.bias", s[f"{gen}.conv_post.bias"])

        for name, aff in (("pros", self.pros), ("dec", self.dec)):
            w, b = aff.stacked()
            self._up(f"{name}_affine.weight", w)
            self._up(f"{name}_affine.bias", b)
        dev = self.device
        # per-sentence inputs
        self.style_dec = dev.tensor((STYLE_DIM,), "float32", "kokoro.style_dec")
        self.style_pros = dev.tensor((STYLE_DIM,), "float32", "kokoro.style_pros")
        self.speed = dev.tensor((1,), "float32", "kokoro.speed")
        self.source_params = source_params(dev, label="kokoro.source_params")
        self.pros_affine = dev.tensor((self.pros.rows,), "float32", "kokoro.pros_affine")
        self.dec_affine = dev.tensor((self.dec.rows,), "float32", "kokoro.dec_affine")
        self._tensors += [self.style_dec, self.style_pros, self.speed, self.source_params, self.pros_affine,
                          self.dec_affine]
        self.state = None  # the numpy copies are no longer needed

    # -- recording -----------------------------------------------------------------------------------------
    def _buf(self, run: KokoroRun, name: str, rows: int, cols: int, dtype: str = "float32") -> Tensor:
        t = self.device.tensor((rows, cols), dtype, f"kokoro.{name}[{rows}]")
        run.bufs[name] = t
        return t

    async def _linear(self, g: Graph, name: str, x: Tensor, out: Tensor, rows: int, *, n_out: int,
                      bias: str | None = None) -> None:
        await ops.matmul(g, self.w[name + ".weight"], x, out, n_tokens=rows)
        await ops.bias_add(g, out, self.w[(bias or name) + ".bias"], n=n_out)

    async def _bilstm(self, g: Graph, prefix: str, x: Tensor, xw: Tensor, out: Tensor, length: Tensor,
                      rows: int) -> None:
        """out [rows, D] = BiLSTM(x [rows, in]) over the real rows (D / 2 units each way); style-fed LSTMs take
        their bias (with the style term) from pros_affine."""
        H = self.dims.lstm
        xw = xw.view((rows, 8 * H))
        await ops.matmul(g, self.w[prefix + ".w_ih"], x, xw, n_tokens=rows)
        if prefix in self.pros.offset:
            await ops.bias_add(g, xw, self.pros_affine, n=8 * H, b_offset=self.pros.offset[prefix])
        else:
            await ops.bias_add(g, xw, self.w[prefix + ".bias"], n=8 * H)
        await ops.lstm(g, xw, self.w[prefix + ".w_hh"], out, length, hidden=H)

    async def _adain_resblk(self, g: Graph, prefix: str, aff: Affines, affine: Tensor, x: Tensor, out: Tensor,
                            tmp: Tensor, coeffs: Tensor, pooled: Tensor | None, length: Tensor, out_length: Tensor,
                            *, c_in: int, c_out: int, upsample: bool = False, out_stride: int | None = None) -> None:
        """AdainResBlk1d: out = (conv2(leaky(AdaIN2(conv1(pool(leaky(AdaIN1(x))))))) + shortcut(x)) / sqrt(2).

        x [rows, c_in]; out [rows', out_stride] (its first c_out columns), rows' = 2 rows when upsampling. With an
        identity shortcut (c_in == c_out, no upsample) out may be x itself: conv2 then accumulates onto the input
        in place; else x is added afterwards. tmp holds conv1's output, pooled the pool's (upsampling only)."""
        w = lambda k: self.w[f"{prefix}.{k}"]  # noqa: E731
        await ops.instance_norm_coeffs(g, x, length, coeffs, channels=c_in, style=affine,
                                       style_offset=aff.offset[f"{prefix}.norm1"], scratch=self._scratch)
        if upsample:
            await ops.conv_transpose1d(g, x, w("pool.weight"), w("pool.bias"), pooled, length, c_in=c_in, c_out=c_in,
                                       kernel=3, stride=2, padding=1, output_padding=1, groups=c_in,
                                       in_affine=coeffs, in_act="leaky", slope=0.2)
            await ops.conv1d(g, pooled, w("conv1.weight"), w("conv1.bias"), tmp, out_length, c_in=c_in, c_out=c_out,
                             kernel=3, padding=1)
        else:
            await ops.conv1d(g, x, w("conv1.weight"), w("conv1.bias"), tmp, length, c_in=c_in, c_out=c_out, kernel=3,
                             padding=1, in_affine=coeffs, in_act="leaky", slope=0.2)
        # conv1's output is normalised with its own statistics: coeffs is free again
        await ops.instance_norm_coeffs(g, tmp, out_length, coeffs, channels=c_out, style=affine,
                                       style_offset=aff.offset[f"{prefix}.norm2"], scratch=self._scratch)
        learned = f"{prefix}.conv1x1.weight" in self.w
        if learned:
            await ops.conv1d(g, x, w("conv1x1.weight"), None, out, length, c_in=c_in, c_out=c_out, kernel=1,
                             upsample=2 if upsample else 1, out_stride=out_stride)
        in_place = learned or out is x
        await ops.conv1d(g, tmp, w("conv2.weight"), w("conv2.bias"), out, out_length, c_in=c_out, c_out=c_out, kernel=3,
                         padding=1, in_affine=coeffs, in_act="leaky", slope=0.2, accumulate=in_place,
                         out_scale=SQRT_HALF if in_place else 1.0, out_stride=out_stride)
        if not in_place:  # identity shortcut into another buffer: out = (conv2 + x) / sqrt(2)
            await ops.add(g, out, x, out, n=c_out)
            await ops.scale_inplace(g, out, SQRT_HALF)

    async def _resblock1(self, g: Graph, prefix: str, x: Tensor, acc: Tensor, tmp: Tensor, coeffs: Tensor,
                         length: Tensor, *, channels: int, kernel: int, dilations, in_place: bool) -> None:
        """AdaINResBlock1 over x [rows, channels]: for each dilation d of `dilations` (three: (1, 3, 5) in v1.0):
        x = x + conv2(snake2(AdaIN2(conv1_d(snake1(AdaIN1(x)))))).

        in_place: the result replaces x (acc is x). Otherwise the result goes to acc and x is left as it was
        (the generator averages three resblocks of the same input): the first pair reads x and writes acc."""
        off = self.dec.offset
        src = x
        for p, d in enumerate(dilations):
            await ops.instance_norm_coeffs(g, src, length, coeffs, channels=channels, style=self.dec_affine,
                                           style_offset=off[f"{prefix}.adain1.{p}"], scratch=self._scratch)
            await ops.conv1d(g, src, self.w[f"{prefix}.convs1.{p}.weight"], self.w[f"{prefix}.convs1.{p}.bias"], tmp,
                             length, c_in=channels, c_out=channels, kernel=kernel, dilation=d,
                             padding=d * (kernel - 1) // 2, in_affine=coeffs, in_act="snake",
                             alpha=self.w[f"{prefix}.alpha1.{p}"])
            await ops.instance_norm_coeffs(g, tmp, length, coeffs, channels=channels, style=self.dec_affine,
                                           style_offset=off[f"{prefix}.adain2.{p}"], scratch=self._scratch)
            first_copy = p == 0 and not in_place
            await ops.conv1d(g, tmp, self.w[f"{prefix}.convs2.{p}.weight"], self.w[f"{prefix}.convs2.{p}.bias"], acc,
                             length, c_in=channels, c_out=channels, kernel=kernel, padding=(kernel - 1) // 2,
                             in_affine=coeffs, in_act="snake", alpha=self.w[f"{prefix}.alpha2.{p}"],
                             accumulate=not first_copy)
            if first_copy:
                await ops.add(g, acc, x, acc, n=channels)
            src = acc

    async def _record(self, tokens: int, frames: int) -> KokoroRun:
        dev = self.device
        d = self.dims
        steps = {k: dev.tensor((8,), "uint32", f"kokoro.step.{k}", usage=UNIFORM)
                 for k in ("T", "F", "2F", "20F", "120F", "600F")}
        run = KokoroRun(tokens, frames, steps)
        Tc, Fc = tokens, frames
        D, A = d.hidden, d.albert  # v1.0: 512, 768
        c_gen, c_up0, c_up1 = d.generator  # v1.0: 512, 256, 128
        n120 = 120 * Fc + 1  # STFT frames of 600 F samples (hop 5): the generator's last stage
        B = lambda name, rows, cols, dtype="float32": self._buf(run, name, rows, cols, dtype)  # noqa: E731
        # one scratch for every instance norm of the run (its dispatches run in order): sized for the largest
        shapes = ((Fc, d.decoder_cat), (Fc, d.decoder), (2 * Fc, D), (20 * Fc, c_up0), (n120, c_up1))
        self._scratch = B("in_scratch", max(ops.instance_norm_scratch_size(r, c) for r, c in shapes), 1)
        ids, pos = B("ids", Tc, 1, "uint32"), B("pos", Tc, 1, "uint32")
        dev.write(pos.buffer, np.arange(Tc, dtype=np.uint32))
        # (buffer names are v1.0's widths: "d512" holds D columns, "x768" ALBERT's, and so on)
        h, x768 = B("h", Tc, A), B("x768", Tc, A)
        q, k, v, attn = (B(n, Tc, A) for n in ("q", "k", "v", "attn"))
        ffn = B("ffn", Tc, d.ffn)
        e128 = B("e128", Tc, d.embed)
        d512, t512, xw = B("d512", Tc, D), B("t512", Tc, D), B("xw", max(Tc, Fc), 8 * d.lstm)
        tenc = B("t_en", Tc, D)
        logits = B("logits", Tc, d.bins)
        dur = B("durations", Tc, 1, "uint32")
        L = steps
        al = "bert.encoder.albert_layer_groups.0.albert_layers.0"
        g = dev.graph()

        # the prosody half's affines, once per sentence (the decoder half's open the audio run)
        await ops.matmul(g, self.w["pros_affine.weight"], self.style_pros, self.pros_affine, n_tokens=1)
        await ops.bias_add(g, self.pros_affine, self.w["pros_affine.bias"], n=self.pros.rows)

        # PL-BERT
        eps = d.albert_eps
        await ops.embed(g, self.w["bert.word"], ids, e128, n_tokens=Tc)
        await ops.embed(g, self.w["bert.pos"], pos, e128, n_tokens=Tc, accumulate=True)
        await ops.layer_norm(g, e128, e128, n=d.embed, eps=eps, weight=self.w["bert.embeddings.LayerNorm.weight"],
                             bias=self.w["bert.embeddings.LayerNorm.bias"])
        await self._linear(g, "bert.encoder.embedding_hidden_mapping_in", e128, h, Tc, n_out=A)
        for _ in range(d.albert_repeats):  # ALBERT: the same layer again and again (12 times in v1.0)
            await self._linear(g, f"{al}.attention.query", h, q, Tc, n_out=A)
            await self._linear(g, f"{al}.attention.key", h, k, Tc, n_out=A)
            await self._linear(g, f"{al}.attention.value", h, v, Tc, n_out=A)
            await ops.self_attention(g, q, k, v, attn, L["T"], n_heads=d.heads, head_dim=d.head_dim,
                                     scale=1.0 / math.sqrt(d.head_dim))
            await self._linear(g, f"{al}.attention.dense", attn, x768, Tc, n_out=A)
            await ops.add(g, x768, h, x768, n=A)
            await ops.layer_norm(g, x768, h, n=A, eps=eps, weight=self.w[f"{al}.attention.LayerNorm.weight"],
                                 bias=self.w[f"{al}.attention.LayerNorm.bias"])
            await self._linear(g, f"{al}.ffn", h, ffn, Tc, n_out=d.ffn)
            await ops.gelu(g, ffn, ffn)
            await self._linear(g, f"{al}.ffn_output", ffn, x768, Tc, n_out=A)
            await ops.add(g, x768, h, x768, n=A)
            await ops.layer_norm(g, x768, h, n=A, eps=eps, weight=self.w[f"{al}.full_layer_layer_norm.weight"],
                                 bias=self.w[f"{al}.full_layer_layer_norm.bias"])
        await self._linear(g, "bert_encoder", h, d512, Tc, n_out=D)

        # duration encoder: n_layer x (BiLSTM over [d; s], AdaLayerNorm), then the duration BiLSTM and head
        for i in range(0, 2 * d.layers, 2):
            await self._bilstm(g, f"predictor.text_encoder.lstms.{i}", d512, xw, t512, L["T"], Tc)
            await ops.layer_norm(g, t512, d512, n=D, eps=1e-5, style=self.pros_affine,
                                 style_offset=self.pros.offset[f"predictor.text_encoder.lstms.{i + 1}.fc"])
        await self._bilstm(g, "predictor.lstm", d512, xw, t512, L["T"], Tc)
        await self._linear(g, "predictor.duration_proj", t512, logits, Tc, n_out=d.bins)
        await ops.durations(g, logits, self.speed, dur, L["T"], bins=d.bins)

        # text encoder
        te = "text_encoder"
        await ops.embed(g, self.w[f"{te}.embedding.weight"], ids, t512, n_tokens=Tc)
        for i in range(d.layers):
            await ops.conv1d(g, t512, self.w[f"{te}.cnn.{i}.0.weight"], self.w[f"{te}.cnn.{i}.0.bias"], tenc, L["T"],
                             c_in=D, c_out=D, kernel=d.text_kernel, padding=d.text_kernel // 2)
            await ops.layer_norm(g, tenc, t512, n=D, eps=1e-5, weight=self.w[f"{te}.cnn.{i}.1.gamma"],
                                 bias=self.w[f"{te}.cnn.{i}.1.beta"], act="leaky", slope=0.2)
        await self._bilstm(g, f"{te}.lstm", t512, xw, tenc, L["T"], Tc)
        run.text_graph = g

        # ---- audio run ----
        g = dev.graph()
        # the decoder half's affines here, not in the text run: the voice trainer changes only style_dec
        # between its candidates and reruns this graph alone
        await ops.matmul(g, self.w["dec_affine.weight"], self.style_dec, self.dec_affine, n_tokens=1)
        await ops.bias_add(g, self.dec_affine, self.w["dec_affine.bias"], n=self.dec.rows)
        index = B("index", Fc, 1, "uint32")
        en, xF = B("en", Fc, D), B("xF", Fc, D)
        widest_norm = max(d.decoder_cat, d.decoder_in, d.decoder, D, c_up0, c_up1)  # v1.0: 1090
        coeffs = B("coeffs", 1, 2 * widest_norm)
        F0c = 2 * Fc
        a512, b512 = B("a512", F0c, D), B("b512", F0c, D)
        pooled = B("pooled", F0c, max(d.decoder_cat, D))  # the upsampling blocks' pools: D, then decoder_cat wide
        half = D // 2  # the F0 / N branches' width after their upsampling block (v1.0: 256)
        t256 = B("t256", F0c, half)
        f0, n_curve = B("f0", F0c, 1), B("n_curve", F0c, 1)
        # prosody: the shared BiLSTM over the frames of [d; s]
        await ops.gather_rows(g, d512, index, en, L["F"], n=D)
        await self._bilstm(g, "predictor.shared", en, xw, xF, L["F"], Fc)
        for branch, curve in (("F0", f0), ("N", n_curve)):
            p = f"predictor.{branch}"
            # block 0 (D -> D) from xF (kept for the other branch); block 1 upsamples to 2F rows (D -> D / 2)
            a, b = a512.view((Fc, D)), b512.view((Fc, D))
            await self._adain_resblk(g, f"{p}.0", self.pros, self.pros_affine, xF, a, b, coeffs, None,
                                     L["F"], L["F"], c_in=D, c_out=D)
            x256 = b512.view((F0c, half))
            await self._adain_resblk(g, f"{p}.1", self.pros, self.pros_affine, a, x256, t256, coeffs,
                                     pooled.view((F0c, D)),
                                     L["F"], L["2F"], c_in=D, c_out=half, upsample=True)
            await self._adain_resblk(g, f"{p}.2", self.pros, self.pros_affine, x256, x256, t256, coeffs, None,
                                     L["2F"], L["2F"], c_in=half, c_out=half)
            await ops.conv1d(g, x256, self.w[f"{p}_proj.weight"], self.w[f"{p}_proj.bias"], curve, L["2F"],
                             c_in=half, c_out=1, kernel=1)

        # decoder: [asr; F0; N] -> encode -> 3 x decode with [x; asr_res; F0; N] -> decode.3 (up to 2F rows)
        c_in0, c_cat = d.decoder_in, d.decoder_cat  # v1.0: 514, 1090
        x514, xa, xb = B("x514", Fc, c_in0), B("x1090a", Fc, c_cat), B("x1090b", Fc, c_cat)
        await ops.gather_rows(g, tenc, index, x514, L["F"], n=D, out_stride=c_in0)
        for buf, stride, col in ((x514, c_in0, D), (xa, c_cat, c_cat - 2), (xb, c_cat, c_cat - 2)):
            for name, curve, c in (("F0_conv", f0, col), ("N_conv", n_curve, col + 1)):
                await ops.conv1d(g, curve, self.w[f"decoder.{name}.weight"], self.w[f"decoder.{name}.bias"], buf,
                                 L["2F"], c_in=1, c_out=1, kernel=3, stride=2, padding=1, out_stride=stride,
                                 out_offset=c)
        for buf in (xa, xb):
            await ops.conv1d(g, x514, self.w["decoder.asr_res.0.weight"], self.w["decoder.asr_res.0.bias"], buf,
                             L["F"], c_in=D, c_out=d.asr, kernel=1, in_stride=c_in0, out_stride=c_cat,
                             out_offset=d.decoder)
        t1024 = B("t1024", Fc, d.decoder)
        await self._adain_resblk(g, "decoder.encode", self.dec, self.dec_affine, x514, xa, t1024, coeffs, None,
                                 L["F"], L["F"], c_in=c_in0, c_out=d.decoder, out_stride=c_cat)
        src, dst = xa, xb
        for i in range(DECODER_BLOCKS - 1):
            await self._adain_resblk(g, f"decoder.decode.{i}", self.dec, self.dec_affine, src, dst, t1024, coeffs,
                                     None, L["F"], L["F"], c_in=c_cat, c_out=d.decoder, out_stride=c_cat)
            src, dst = dst, src
        gen_in = a512  # [2F, D]
        t512F = B("t512_2F", F0c, D)
        await self._adain_resblk(g, f"decoder.decode.{DECODER_BLOCKS - 1}", self.dec, self.dec_affine, src, gen_in,
                                 t512F, coeffs, pooled, L["F"], L["2F"], c_in=c_cat, c_out=D, upsample=True)

        run.decoder_graph = g

        # generator
        g = dev.graph()
        gen = "decoder.generator"
        har_src = B("har_src", SAMPLES_PER_FRAME * Fc, 1)
        har = B("har", n120, d.spec)
        await ops.harmonic_source(g, f0, self.w[f"{gen}.m_source.l_linear.weight"],
                                  self.w[f"{gen}.m_source.l_linear.bias"], har_src, L["2F"], self.source_params,
                                  harmonics=d.harmonics)
        await ops.stft(g, har_src, har, L["600F"], n_fft=N_FFT, hop=HOP)
        # the largest activation (v1.0: 120F + 1 rows of 128 = 20F rows of 256 * 3 + 128)
        big = max(20 * Fc * c_up0, n120 * c_up1)
        xg, acc, acc2, tmp = (B(n, big, 1) for n in ("gen_x", "gen_acc", "gen_acc2", "gen_tmp"))
        kernels, dilations = d.resblock_kernels, d.resblock_dilations
        (k_up0, k_up1), (s_up0, s_up1) = UPSAMPLE_KERNELS, UPSAMPLE_RATES
        for i, (ch, rows, L_out, L_in) in enumerate(((c_up0, 20 * Fc, L["20F"], L["2F"]),
                                                     (c_up1, n120, L["120F"], L["20F"]))):
            V = lambda t: t.view((rows, ch))  # noqa: E731
            src_in = gen_in if i == 0 else acc.view((20 * Fc, c_up0))
            c_in = c_gen if i == 0 else c_up0
            # the source branch: noise conv of the harmonic spectrum, then its resblock in place
            if i == 0:  # strided down to the first stage's rate: kernel 2 x, stride x = the second stage's rate
                await ops.conv1d(g, har, self.w[f"{gen}.noise_convs.0.weight"], self.w[f"{gen}.noise_convs.0.bias"],
                                 V(tmp), L["120F"], c_in=d.spec, c_out=ch, kernel=2 * s_up1, stride=s_up1,
                                 padding=(s_up1 + 1) // 2)
            else:
                await ops.conv1d(g, har, self.w[f"{gen}.noise_convs.1.weight"], self.w[f"{gen}.noise_convs.1.bias"],
                                 V(tmp), L["120F"], c_in=d.spec, c_out=ch, kernel=1)
            await self._resblock1(g, f"{gen}.noise_res.{i}", V(tmp), V(tmp), V(acc2), coeffs, L_out, channels=ch,
                                  kernel=NOISE_RES_KERNELS[i], dilations=(1, 3, 5), in_place=True)
            # x = ups(leaky(x, 0.1)) (+ reflection pad of 1 on the left at the last stage) + source
            k_up, s_up = (k_up0, s_up0) if i == 0 else (k_up1, s_up1)
            await ops.conv_transpose1d(g, src_in, self.w[f"{gen}.ups.{i}.weight"], self.w[f"{gen}.ups.{i}.bias"],
                                       V(xg), L_in, c_in=c_in, c_out=ch, kernel=k_up, stride=s_up,
                                       padding=(k_up - s_up) // 2, in_act="leaky", slope=0.1,
                                       reflect_pad_left=1 if i == 1 else 0)
            await ops.add(g, V(xg), V(tmp), V(xg), n=ch)
            # mean of the parallel resblocks (kernels 3, 7, 11 in v1.0) of x
            for j, (kern, dil) in enumerate(zip(kernels, dilations)):
                target = V(acc) if j == 0 else V(acc2)
                await self._resblock1(g, f"{gen}.resblocks.{len(kernels) * i + j}", V(xg), target, V(tmp), coeffs,
                                      L_out, channels=ch, kernel=kern, dilations=dil, in_place=False)
                if j:
                    await ops.add(g, V(acc), V(acc2), V(acc), n=ch)
            await ops.scale_inplace(g, V(acc), 1.0 / len(kernels))
        spec = B("spec", n120, d.spec)
        await ops.conv1d(g, acc.view((n120, c_up1)), self.w[f"{gen}.conv_post.weight"],
                         self.w[f"{gen}.conv_post.bias"], spec, L["120F"], c_in=c_up1, c_out=d.spec, kernel=7,
                         padding=3, in_act="leaky", slope=0.01)
        audio = B("audio", SAMPLES_PER_FRAME * Fc, 1)
        await ops.istft(g, spec, audio, L["120F"], n_fft=N_FFT, hop=HOP)
        run.generator_graph = g
        return run

    async def _get_run(self, tokens: int, frames: int) -> KokoroRun:
        """A recording that holds `tokens` and `frames`: the current one, else a new one at least as large
        (one recording at a time: a longer sentence replaces it, and every later sentence reuses it)."""
        r = self._run
        if r is not None and r.tokens >= tokens and r.frames >= frames:
            return r
        Tc = _bucket(max(tokens, MIN_TOKENS), 32)
        Fc = _bucket(max(frames, MIN_FRAMES), 64)
        if r is not None:
            Tc, Fc = max(Tc, r.tokens), max(Fc, r.frames)
            self._free_run(r)
        self._run = await self._record(min(Tc, self.dims.max_tokens), Fc)
        return self._run

    def _free_run(self, run: KokoroRun) -> None:
        seen = set()
        for t in [*run.bufs.values(), *run.steps.values()]:
            for buf, _, _ in t.parts:
                if id(buf) not in seen:
                    seen.add(id(buf))
                    buf.destroy()

    # -- running -------------------------------------------------------------------------------------------
    async def synthesize(self, ids, style, *, speed: float = 1.0, seed: int = 0, noise: float = 1.0,
                         max_frames: int = 0, decoder_only: bool = False, durations=None):
        """Audio (f32 numpy, 24 kHz) and the durations (frames per token) of one sentence.

        ids: phoneme ids WITH the leading and trailing 0 pads (at most 512); style: the 256 values of the
        voice row for this sentence (voicepack[len(phonemes) - 1]); seed and noise set the harmonic source's
        noise (noise 0: the deterministic source of the parity tests)."""
        dur = await self.align(ids, style, speed=speed, seed=seed, noise=noise, max_frames=max_frames,
                               durations=durations)
        if decoder_only:
            self.device.submit(self._run.decoder_graph)
            await self.device.sync()
            return None, dur
        audio = await self.device.read(self.submit_audio())
        return audio.reshape(-1)[: SAMPLES_PER_FRAME * int(dur.sum())].copy(), dur

    async def align(self, ids, style, *, speed: float = 1.0, seed: int = 0, noise: float = 1.0,
                    max_frames: int = 0, durations=None) -> np.ndarray:
        """The text run of one sentence and its alignment: writes the inputs, runs PL-BERT, the duration
        predictor and the text encoder, reads the durations back (T integers) and writes the frame -> token
        index and the frame counts the audio run reads. Returns the durations; `submit_audio` then makes the
        audio. `durations` (T positive counts) replaces the predicted ones (the voice trainer's fixed timing)."""
        ids = np.asarray(ids, np.uint32)
        T = len(ids)
        if T > self.dims.max_tokens:
            raise KokoroError(f"{T - 2} phonemes in one sentence; Kokoro reads at most {self.dims.max_tokens - 2}")
        if T < 3:
            raise KokoroError("nothing to say: the sentence has no phonemes")
        if not speed > 0:
            raise KokoroError(f"speed {speed} must be positive")
        style = np.asarray(style, np.float32).reshape(-1)
        if style.size != 2 * STYLE_DIM:
            raise KokoroError(f"a voice row has {2 * STYLE_DIM} values, not {style.size}")
        dev = self.device
        run = await self._get_run(T, int(FRAMES_PER_TOKEN_GUESS * T / speed))
        self._write_text_inputs(run, ids)
        dev.write(self.style_dec.buffer, style[:STYLE_DIM])
        dev.write(self.style_pros.buffer, style[STYLE_DIM:])
        dev.write(self.speed.buffer, np.array([speed], np.float32))
        dev.write(self.source_params.buffer, source_params_bytes(seed, noise))
        dev.submit(run.text_graph)
        dur = (await dev.read(run.bufs["durations"])).reshape(-1)[:T].astype(np.int64)
        if durations is not None:
            dur = np.asarray(durations, np.int64).reshape(-1)
            if dur.shape != (T,) or dur.min() < 1:
                raise KokoroError(f"durations: {T} positive frame counts expected")
        F = int(dur.sum())
        if max_frames and F > max_frames:
            raise KokoroError(f"the sentence would last {F * SAMPLES_PER_FRAME / SAMPLE_RATE:.1f} s; split it")
        if F > run.frames:  # a longer recording: its buffers start empty, so the text run is repeated into them
            run = await self._get_run(T, F)
            self._write_text_inputs(run, ids)
            dev.submit(run.text_graph)
        # the counts as the platform's index type: Pyodide's numpy (wasm32) does not cast int64 counts to it
        index = np.repeat(np.arange(T, dtype=np.uint32), dur.astype(np.intp))
        dev.write(run.bufs["index"].buffer, index)
        for name, n in (("F", F), ("2F", 2 * F), ("20F", 20 * F), ("120F", 120 * F + 1), ("600F", 600 * F)):
            dev.write(run.steps[name].buffer, _step(n))
        self.aligned += 1
        return dur

    def submit_audio(self) -> Tensor:
        """Submit the audio run (decoder and generator) of the sentence `align` prepared, with the style now in
        style_dec (and pros_affine): returns the audio tensor it writes, f32 [600 * frames capacity], whose real
        length is the `audio_length` Step uniform's n_tokens (600 F). Nothing is read back."""
        run = self._run
        self.device.submit(run.decoder_graph)
        self.device.submit(run.generator_graph)
        return run.bufs["audio"]

    @property
    def audio_length(self) -> Tensor:
        """The Step uniform holding the current sentence's real sample count (600 F)."""
        return self._run.steps["600F"]

    def rerun_text(self) -> None:
        """Submit the current sentence's text run again (after style_pros changed): the prosody affines, the
        duration encoder's output the prosody predictor reads, and the text encoder. The alignment written by
        `align` stays (the durations the new style predicts are computed and not used)."""
        self.device.submit(self._run.text_graph)

    def _write_text_inputs(self, run: KokoroRun, ids: np.ndarray) -> None:
        padded = np.zeros(run.tokens, np.uint32)
        padded[: len(ids)] = ids
        self.device.write(run.bufs["ids"].buffer, padded)
        self.device.write(run.steps["T"].buffer, _step(len(ids)))

    def release(self) -> None:
        if self._run is not None:
            self._free_run(self._run)
            self._run = None
        for t in self._tensors:
            for buf, _, _ in t.parts:
                buf.destroy()
        self._tensors.clear()
        self.w.clear()
