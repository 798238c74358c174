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

Weights come from `kokoro_gguf.load_state` keyed like KModel's state dict (weight norm folded).
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
STYLE_DIM = 128
HIDDEN = 512  # predictor / text encoder width (config hidden_dim)
LSTM_H = 256
MAX_TOKENS = 512  # PL-BERT's position table (ids include the two 0 pads)
SQRT_HALF = 1.0 / math.sqrt(2.0)
# The first recording's capacity: most sentences fit, so that the next sentences reuse its pipelines and buffers
# rather than recording (and on some devices compiling) again. Frames are not known before the text run;
# English speech runs at about 3 to 5 frames per phoneme.
MIN_TOKENS = 64
MIN_FRAMES = 256
FRAMES_PER_TOKEN_GUESS = 5


class KokoroError(RuntimeError):
    """The Kokoro model cannot run this input (too many tokens, too many frames for the device)."""


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
    """Kokoro-82M on one GPU device. `await Kokoro.load(device, state)` then `await model.synthesize(ids, style)`."""

    def __init__(self, device: Device, state: dict):
        self.device = device
        self.state = state
        self.w: dict[str, Tensor] = {}
        self.pros = Affines()  # affines of s_pros = style[128:]
        self.dec = Affines()  # affines of s_dec = style[:128]
        self._run: KokoroRun | None = None
        self._tensors: list[Tensor] = []

    # -- loading -------------------------------------------------------------------------------------------
    @classmethod
    async def load(cls, device: Device, state: dict) -> "Kokoro":
        model = cls(device, state)
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
            self.pros.add(prefix, wih[:, HIDDEN:], bias)
            wih = wih[:, :HIDDEN]
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
        for p in range(3):
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
        for i in (0, 2, 4):
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
        for i in range(3):
            for k in ("0.weight", "0.bias", "1.gamma", "1.beta"):
                self._up(f"text_encoder.cnn.{i}.{k}", s[f"text_encoder.cnn.{i}.{k}"])
        self._load_lstm("text_encoder.lstm", style_in=False)

        # decoder
        for k in ("F0_conv", "N_conv", "asr_res.0"):
            self._up(f"decoder.{k}.weight", s[f"decoder.{k}.weight"])
            self._up(f"decoder.{k}.bias", s[f"decoder.{k}.bias"])
        self._load_adain_block("decoder.encode", self.dec)
        for i in range(4):
            self._load_adain_block(f"decoder.decode.{i}", self.dec)
        gen = "decoder.generator"
        self._up(f"{gen}.m_source.l_linear.weight", s[f"{gen}.m_source.l_linear.weight"].reshape(-1))
        self._up(f"{gen}.m_source.l_linear.bias", s[f"{gen}.m_source.l_linear.bias"])
        for i in range(2):
            for k in (f"ups.{i}", f"noise_convs.{i}"):
                self._up(f"{gen}.{k}.weight", s[f"{gen}.{k}.weight"])
                self._up(f"{gen}.{k}.bias", s[f"{gen}.{k}.bias"])
            self._load_resblock1(f"{gen}.noise_res.{i}")
        for j in range(6):
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
        """out [rows, 512] = BiLSTM(x [rows, in]) over the real rows; style-fed LSTMs take their bias (with the
        style term) from pros_affine."""
        xw = xw.view((rows, 8 * LSTM_H))
        await ops.matmul(g, self.w[prefix + ".w_ih"], x, xw, n_tokens=rows)
        if prefix in self.pros.offset:
            await ops.bias_add(g, xw, self.pros_affine, n=8 * LSTM_H, b_offset=self.pros.offset[prefix])
        else:
            await ops.bias_add(g, xw, self.w[prefix + ".bias"], n=8 * LSTM_H)
        await ops.lstm(g, xw, self.w[prefix + ".w_hh"], out, length, hidden=LSTM_H)

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
                         length: Tensor, *, channels: int, kernel: int, in_place: bool) -> None:
        """AdaINResBlock1 over x [rows, channels]: for each dilation d of (1, 3, 5):
        x = x + conv2(snake2(AdaIN2(conv1_d(snake1(AdaIN1(x)))))).

        in_place: the result replaces x (acc is x). Otherwise the result goes to acc and x is left as it was
        (the generator averages three resblocks of the same input): the first pair reads x and writes acc."""
        off = self.dec.offset
        src = x
        for p, d in enumerate((1, 3, 5)):
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
        steps = {k: dev.tensor((8,), "uint32", f"kokoro.step.{k}", usage=UNIFORM)
                 for k in ("T", "F", "2F", "20F", "120F", "600F")}
        run = KokoroRun(tokens, frames, steps)
        Tc, Fc = tokens, frames
        B = lambda name, rows, cols, dtype="float32": self._buf(run, name, rows, cols, dtype)  # noqa: E731
        # one scratch for every instance norm of the run (its dispatches run in order): sized for the largest
        shapes = ((Fc, 1090), (2 * Fc, HIDDEN), (20 * Fc, 256), (120 * Fc + 1, 128))
        self._scratch = B("in_scratch", max(ops.instance_norm_scratch_size(r, c) for r, c in shapes), 1)
        ids, pos = B("ids", Tc, 1, "uint32"), B("pos", Tc, 1, "uint32")
        dev.write(pos.buffer, np.arange(Tc, dtype=np.uint32))
        h, x768 = B("h", Tc, 768), B("x768", Tc, 768)
        q, k, v, attn = (B(n, Tc, 768) for n in ("q", "k", "v", "attn"))
        ffn = B("ffn", Tc, 2048)
        e128 = B("e128", Tc, 128)
        d512, t512, xw = B("d512", Tc, HIDDEN), B("t512", Tc, HIDDEN), B("xw", max(Tc, Fc), 8 * LSTM_H)
        tenc = B("t_en", Tc, HIDDEN)
        logits = B("logits", Tc, 50)
        dur = B("durations", Tc, 1, "uint32")
        L = steps
        al = "bert.encoder.albert_layer_groups.0.albert_layers.0"
        g = dev.graph()

        # the prosody half's affines, once per sentence (the decoder half's open the audio run)
        await ops.matmul(g, self.w["pros_affine.weight"], self.style_pros, self.pros_affine, n_tokens=1)
        await ops.bias_add(g, self.pros_affine, self.w["pros_affine.bias"], n=self.pros.rows)

        # PL-BERT
        await ops.embed(g, self.w["bert.word"], ids, e128, n_tokens=Tc)
        await ops.embed(g, self.w["bert.pos"], pos, e128, n_tokens=Tc, accumulate=True)
        await ops.layer_norm(g, e128, e128, n=128, eps=1e-12, weight=self.w["bert.embeddings.LayerNorm.weight"],
                             bias=self.w["bert.embeddings.LayerNorm.bias"])
        await self._linear(g, "bert.encoder.embedding_hidden_mapping_in", e128, h, Tc, n_out=768)
        for _ in range(12):  # ALBERT: the same layer 12 times
            await self._linear(g, f"{al}.attention.query", h, q, Tc, n_out=768)
            await self._linear(g, f"{al}.attention.key", h, k, Tc, n_out=768)
            await self._linear(g, f"{al}.attention.value", h, v, Tc, n_out=768)
            await ops.self_attention(g, q, k, v, attn, L["T"], n_heads=12, head_dim=64, scale=0.125)
            await self._linear(g, f"{al}.attention.dense", attn, x768, Tc, n_out=768)
            await ops.add(g, x768, h, x768, n=768)
            await ops.layer_norm(g, x768, h, n=768, eps=1e-12, weight=self.w[f"{al}.attention.LayerNorm.weight"],
                                 bias=self.w[f"{al}.attention.LayerNorm.bias"])
            await self._linear(g, f"{al}.ffn", h, ffn, Tc, n_out=2048)
            await ops.gelu(g, ffn, ffn)
            await self._linear(g, f"{al}.ffn_output", ffn, x768, Tc, n_out=768)
            await ops.add(g, x768, h, x768, n=768)
            await ops.layer_norm(g, x768, h, n=768, eps=1e-12, weight=self.w[f"{al}.full_layer_layer_norm.weight"],
                                 bias=self.w[f"{al}.full_layer_layer_norm.bias"])
        await self._linear(g, "bert_encoder", h, d512, Tc, n_out=HIDDEN)

        # duration encoder: 3 x (BiLSTM over [d; s], AdaLayerNorm), then the duration BiLSTM and head
        for i in (0, 2, 4):
            await self._bilstm(g, f"predictor.text_encoder.lstms.{i}", d512, xw, t512, L["T"], Tc)
            await ops.layer_norm(g, t512, d512, n=HIDDEN, eps=1e-5, style=self.pros_affine,
                                 style_offset=self.pros.offset[f"predictor.text_encoder.lstms.{i + 1}.fc"])
        await self._bilstm(g, "predictor.lstm", d512, xw, t512, L["T"], Tc)
        await self._linear(g, "predictor.duration_proj", t512, logits, Tc, n_out=50)
        await ops.durations(g, logits, self.speed, dur, L["T"], bins=50)

        # text encoder
        te = "text_encoder"
        await ops.embed(g, self.w[f"{te}.embedding.weight"], ids, t512, n_tokens=Tc)
        for i in range(3):
            await ops.conv1d(g, t512, self.w[f"{te}.cnn.{i}.0.weight"], self.w[f"{te}.cnn.{i}.0.bias"], tenc, L["T"],
                             c_in=HIDDEN, c_out=HIDDEN, kernel=5, padding=2)
            await ops.layer_norm(g, tenc, t512, n=HIDDEN, eps=1e-5, weight=self.w[f"{te}.cnn.{i}.1.gamma"],
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
        en, xF = B("en", Fc, HIDDEN), B("xF", Fc, HIDDEN)
        coeffs = B("coeffs", 1, 2 * 1090)
        F0c = 2 * Fc
        a512, b512 = B("a512", F0c, HIDDEN), B("b512", F0c, HIDDEN)
        pooled = B("pooled", F0c, 1090)
        t256 = B("t256", F0c, 256)
        f0, n_curve = B("f0", F0c, 1), B("n_curve", F0c, 1)
        # prosody: the shared BiLSTM over the frames of [d; s]
        await ops.gather_rows(g, d512, index, en, L["F"], n=HIDDEN)
        await self._bilstm(g, "predictor.shared", en, xw, xF, L["F"], Fc)
        for branch, curve in (("F0", f0), ("N", n_curve)):
            p = f"predictor.{branch}"
            # block 0 (512 -> 512) from xF (kept for the other branch); block 1 upsamples to 2F rows (512 -> 256)
            a, b = a512.view((Fc, HIDDEN)), b512.view((Fc, HIDDEN))
            await self._adain_resblk(g, f"{p}.0", self.pros, self.pros_affine, xF, a, b, coeffs, None,
                                     L["F"], L["F"], c_in=HIDDEN, c_out=HIDDEN)
            x256 = b512.view((F0c, 256))
            await self._adain_resblk(g, f"{p}.1", self.pros, self.pros_affine, a, x256, t256, coeffs,
                                     pooled.view((F0c, HIDDEN)),
                                     L["F"], L["2F"], c_in=HIDDEN, c_out=256, upsample=True)
            await self._adain_resblk(g, f"{p}.2", self.pros, self.pros_affine, x256, x256, t256, coeffs, None,
                                     L["2F"], L["2F"], c_in=256, c_out=256)
            await ops.conv1d(g, x256, self.w[f"{p}_proj.weight"], self.w[f"{p}_proj.bias"], curve, L["2F"], c_in=256,
                             c_out=1, kernel=1)

        # decoder: [asr; F0; N] -> encode -> 3 x decode with [x; asr_res; F0; N] -> decode.3 (up to 2F rows)
        x514, xa, xb = B("x514", Fc, 514), B("x1090a", Fc, 1090), B("x1090b", Fc, 1090)
        await ops.gather_rows(g, tenc, index, x514, L["F"], n=HIDDEN, out_stride=514)
        for buf, stride, col in ((x514, 514, 512), (xa, 1090, 1088), (xb, 1090, 1088)):
            for name, curve, c in (("F0_conv", f0, col), ("N_conv", n_curve, col + 1)):
                await ops.conv1d(g, curve, self.w[f"decoder.{name}.weight"], self.w[f"decoder.{name}.bias"], buf,
                                 L["2F"], c_in=1, c_out=1, kernel=3, stride=2, padding=1, out_stride=stride,
                                 out_offset=c)
        for buf in (xa, xb):
            await ops.conv1d(g, x514, self.w["decoder.asr_res.0.weight"], self.w["decoder.asr_res.0.bias"], buf,
                             L["F"], c_in=HIDDEN, c_out=64, kernel=1, in_stride=514, out_stride=1090, out_offset=1024)
        t1024 = B("t1024", Fc, 1024)
        await self._adain_resblk(g, "decoder.encode", self.dec, self.dec_affine, x514, xa, t1024, coeffs, None,
                                 L["F"], L["F"], c_in=514, c_out=1024, out_stride=1090)
        src, dst = xa, xb
        for i in range(3):
            await self._adain_resblk(g, f"decoder.decode.{i}", self.dec, self.dec_affine, src, dst, t1024, coeffs,
                                     None, L["F"], L["F"], c_in=1090, c_out=1024, out_stride=1090)
            src, dst = dst, src
        gen_in = a512  # [2F, 512]
        t512F = B("t512_2F", F0c, HIDDEN)
        await self._adain_resblk(g, "decoder.decode.3", self.dec, self.dec_affine, src, gen_in, t512F, coeffs,
                                 pooled, L["F"], L["2F"], c_in=1090, c_out=HIDDEN, upsample=True)

        run.decoder_graph = g

        # generator
        g = dev.graph()
        gen = "decoder.generator"
        n120 = 120 * Fc + 1
        har_src = B("har_src", SAMPLES_PER_FRAME * Fc, 1)
        har = B("har", n120, 22)
        await ops.harmonic_source(g, f0, self.w[f"{gen}.m_source.l_linear.weight"],
                                  self.w[f"{gen}.m_source.l_linear.bias"], har_src, L["2F"], self.source_params)
        await ops.stft(g, har_src, har, L["600F"], n_fft=20, hop=5)
        big = n120 * 128  # the largest activation: 120F + 1 rows of 128 (= 20F rows of 256 * 3 + 128)
        xg, acc, acc2, tmp = (B(n, big, 1) for n in ("gen_x", "gen_acc", "gen_acc2", "gen_tmp"))
        for i, (ch, rows, L_out, L_in) in enumerate(((256, 20 * Fc, L["20F"], L["2F"]),
                                                     (128, n120, L["120F"], L["20F"]))):
            V = lambda t: t.view((rows, ch))  # noqa: E731
            src_in = gen_in if i == 0 else acc.view((20 * Fc, 256))
            c_in = HIDDEN if i == 0 else 256
            # the source branch: noise conv of the harmonic spectrum, then its resblock in place
            if i == 0:
                await ops.conv1d(g, har, self.w[f"{gen}.noise_convs.0.weight"], self.w[f"{gen}.noise_convs.0.bias"],
                                 V(tmp), L["120F"], c_in=22, c_out=ch, kernel=12, stride=6, padding=3)
            else:
                await ops.conv1d(g, har, self.w[f"{gen}.noise_convs.1.weight"], self.w[f"{gen}.noise_convs.1.bias"],
                                 V(tmp), L["120F"], c_in=22, c_out=ch, kernel=1)
            await self._resblock1(g, f"{gen}.noise_res.{i}", V(tmp), V(tmp), V(acc2), coeffs, L_out, channels=ch,
                                  kernel=7 if i == 0 else 11, in_place=True)
            # x = ups(leaky(x, 0.1)) (+ reflection pad of 1 on the left at the last stage) + source
            k_up, s_up = (20, 10) if i == 0 else (12, 6)
            await ops.conv_transpose1d(g, src_in, self.w[f"{gen}.ups.{i}.weight"], self.w[f"{gen}.ups.{i}.bias"],
                                       V(xg), L_in, c_in=c_in, c_out=ch, kernel=k_up, stride=s_up,
                                       padding=(k_up - s_up) // 2, in_act="leaky", slope=0.1,
                                       reflect_pad_left=1 if i == 1 else 0)
            await ops.add(g, V(xg), V(tmp), V(xg), n=ch)
            # mean of three resblocks (kernels 3, 7, 11) of x
            for j, kern in enumerate((3, 7, 11)):
                target = V(acc) if j == 0 else V(acc2)
                await self._resblock1(g, f"{gen}.resblocks.{3 * i + j}", V(xg), target, V(tmp), coeffs, L_out,
                                      channels=ch, kernel=kern, in_place=False)
                if j:
                    await ops.add(g, V(acc), V(acc2), V(acc), n=ch)
            await ops.scale_inplace(g, V(acc), 1.0 / 3.0)
        spec = B("spec", n120, 22)
        await ops.conv1d(g, acc.view((n120, 128)), self.w[f"{gen}.conv_post.weight"], self.w[f"{gen}.conv_post.bias"],
                         spec, L["120F"], c_in=128, c_out=22, kernel=7, padding=3, in_act="leaky", slope=0.01)
        audio = B("audio", SAMPLES_PER_FRAME * Fc, 1)
        await ops.istft(g, spec, audio, L["120F"], n_fft=20, hop=5)
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
        self._run = await self._record(min(Tc, MAX_TOKENS), Fc)
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
        if T > MAX_TOKENS:
            raise KokoroError(f"{T - 2} phonemes in one sentence; Kokoro reads at most {MAX_TOKENS - 2}")
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
        index = np.repeat(np.arange(T, dtype=np.uint32), dur)
        dev.write(run.bufs["index"].buffer, index)
        for name, n in (("F", F), ("2F", 2 * F), ("20F", 20 * F), ("120F", 120 * F + 1), ("600F", 600 * F)):
            dev.write(run.steps[name].buffer, _step(n))
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
