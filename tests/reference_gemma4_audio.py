"""Gemma 4's audio tower (a USM-style Conformer) in plain numpy, float64, read straight from a GGUF: Ollama's
monolithic blob (`gemma4.audio.*`, Ollama's tensor names) or a llama.cpp mmproj (`clip.audio.*`, projector
"gemma4a", llama.cpp's names). The host-side oracle the GPU tower is compared against, layer by layer; checked
against transformers' goldens in tests/test_fixtures_audio.py.

Written from gemma4.md section 4 and transformers' Gemma4AudioModel / Gemma4MultimodalEmbedder, never from our
kernels. Usage:

    ref = GemmaAudioRef("tests/fixtures/gemma4_tiny_audio_f32.gguf")
    trace = {}
    soft = ref.encode(features, trace)   # features [T, 128] (HF's log-mel frames, valid ones only) -> [n, d_model]

`trace` receives every intermediate under the names the goldens use (`debug_<name>` in the npz): sscp_conv0,
sscp_conv1 ([time, freq, channel]), sscp, then per layer ffn1, attn, lconv, ffn2, layer_out ([L, n, d] once
stacked), output_proj, soft_tokens; plus `attn_probs` per layer ([heads, n, 12], key offsets 0..11 back).

The file's conventions (both layouts hold the same values; only some names differ, see NAMES):
- Every weight is used as stored: norms as x * w (no 1 + w). Linear weights are GGUF ne [in, out], numpy
  [out, in]: y = x @ W.T.
- a.conv1d.0 / a.conv1d.1: ne [3, 3, in, out] = numpy [out, in, kt, kf]: HF's Conv2d weight, kernel over
  (time, frequency), stride 2 on both, zero padding 1 on all four sides, no bias. Each conv is followed by a
  LayerNorm over the channels (mean and variance, weight a.conv1d.N.norm, no bias, eps 1e-6), then ReLU.
- The SSCP linear (Ollama a.pre_encode.out, llama.cpp a.input_projection) takes the flattened
  [time, freq * channel] map: column f * C1 + c, channel fastest. No bias.
- per_dim_scale holds softplus(HF's parameter) already (both converters apply it): multiply, do not softplus.
- conv_dw: ne [K, d] = numpy [d, K]: a causal depthwise conv: y[t, c] = sum_j w[c, j] x[t - (K-1) + j, c],
  x = 0 before the start.
- The output projection (Ollama mm.a.fc, llama.cpp a.pre_encode.out) has a bias; then a weightless RMSNorm and
  mm.a.input_projection (no bias) give the soft tokens.
- Clippable linears (ffn_up, ffn_down, attn_q/k/v/out, conv_pw1/2, and the _1 FFN pair) clamp their input to
  [input_min, input_max] and their output to [output_min, output_max] (the 1-element tensors
  `<linear>.input_min` etc., next to `<linear>.weight`); missing scalars mean no clamp.
- Constants of the architecture, not in the file: residual weight 0.5 of the FFNs, chunk 12 / 11 past keys,
  soft-cap 50, q scale 1/sqrt(head_dim)/ln 2, k scale ln(1 + e)/ln 2, sinusoid max timescale 1e4, eps 1e-6.
"""

from __future__ import annotations

import math

import numpy as np
from gguf import GGUFReader, quants

EPS = 1e-6
RESIDUAL_WEIGHT = 0.5
CHUNK = 12  # a query sees itself and the 11 keys before it (HF: chunk 12, context_left 13, context_right 0)
MAX_PAST = 12  # sinusoid positions 0..12 (position 12 is computed by HF but always masked)
SOFTCAP = 50.0
CLIPPED = ("ffn_up", "ffn_down", "attn_q", "attn_k", "attn_v", "attn_out", "conv_pw1", "conv_pw2", "ffn_up_1",
           "ffn_down_1")

# Role -> (Ollama name, llama.cpp name). "{i}" is the block index. Ollama's ln1 / ln2 / layer_pre_norm are
# llama.cpp's attn_pre_norm / attn_post_norm / ln2: the same name "ln2" means different tensors in the two layouts.
NAMES = {
    "conv0": ("a.conv1d.0.weight", "a.conv1d.0.weight"),
    "conv0_norm": ("a.conv1d.0.norm.weight", "a.conv1d.0.norm.weight"),
    "conv1": ("a.conv1d.1.weight", "a.conv1d.1.weight"),
    "conv1_norm": ("a.conv1d.1.norm.weight", "a.conv1d.1.norm.weight"),
    "sscp_proj": ("a.pre_encode.out", "a.input_projection"),
    "out_proj": ("mm.a.fc", "a.pre_encode.out"),
    "mm_proj": ("mm.a.input_projection.weight", "mm.a.input_projection.weight"),
    "ffn_norm": ("a.blk.{i}.ffn_norm.weight", "a.blk.{i}.ffn_norm.weight"),
    "ffn_up": ("a.blk.{i}.ffn_up", "a.blk.{i}.ffn_up"),
    "ffn_down": ("a.blk.{i}.ffn_down", "a.blk.{i}.ffn_down"),
    "ffn_post_norm": ("a.blk.{i}.ffn_post_norm.weight", "a.blk.{i}.ffn_post_norm.weight"),
    "attn_pre_norm": ("a.blk.{i}.ln1.weight", "a.blk.{i}.attn_pre_norm.weight"),
    "attn_q": ("a.blk.{i}.attn_q", "a.blk.{i}.attn_q"),
    "attn_k": ("a.blk.{i}.attn_k", "a.blk.{i}.attn_k"),
    "attn_v": ("a.blk.{i}.attn_v", "a.blk.{i}.attn_v"),
    "attn_out": ("a.blk.{i}.attn_out", "a.blk.{i}.attn_out"),
    "attn_k_rel": ("a.blk.{i}.linear_pos.weight", "a.blk.{i}.attn_k_rel.weight"),
    "per_dim_scale": ("a.blk.{i}.per_dim_scale.weight", "a.blk.{i}.per_dim_scale.weight"),
    "attn_post_norm": ("a.blk.{i}.ln2.weight", "a.blk.{i}.attn_post_norm.weight"),
    "conv_norm": ("a.blk.{i}.conv_norm.weight", "a.blk.{i}.conv_norm.weight"),
    "conv_pw1": ("a.blk.{i}.conv_pw1", "a.blk.{i}.conv_pw1"),
    "conv_dw": ("a.blk.{i}.conv_dw.weight", "a.blk.{i}.conv_dw.weight"),
    "norm_conv": ("a.blk.{i}.norm_conv.weight", "a.blk.{i}.norm_conv.weight"),
    "conv_pw2": ("a.blk.{i}.conv_pw2", "a.blk.{i}.conv_pw2"),
    "ffn_norm_1": ("a.blk.{i}.ffn_norm_1.weight", "a.blk.{i}.ffn_norm_1.weight"),
    "ffn_up_1": ("a.blk.{i}.ffn_up_1", "a.blk.{i}.ffn_up_1"),
    "ffn_down_1": ("a.blk.{i}.ffn_down_1", "a.blk.{i}.ffn_down_1"),
    "ffn_post_norm_1": ("a.blk.{i}.ffn_post_norm_1.weight", "a.blk.{i}.ffn_post_norm_1.weight"),
    "block_out_norm": ("a.blk.{i}.layer_pre_norm.weight", "a.blk.{i}.ln2.weight"),
}

# Deliberate mistakes, for measuring how far each moves the output (tests/test_fixtures_audio.py).
MISTAKES = ("rel-shift reversed", "no softcap", "conv not causal", "glu halves swapped", "ffn residual 1",
            "no clamps", "per_dim_scale softplus twice", "sees future keys", "sscp flatten channel-major",
            "no k scale", "ln2 of the other layout")


def rms_norm(x, w=None, eps=EPS):
    y = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)
    return y * w if w is not None else y


def layer_norm(x, w, eps=EPS):
    """LayerNorm over the last axis, with weight, without bias (HF nn.LayerNorm(bias=False))."""
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w


def silu(x):
    return x / (1.0 + np.exp(-x))


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def conv2d_s2(x, w):
    """x [C_in, T, F], w [C_out, C_in, 3, 3] -> [C_out, ceil(T/2), ceil(F/2)]: stride 2, zero padding 1."""
    c_in, t, f = x.shape
    to, fo = (t - 1) // 2 + 1, (f - 1) // 2 + 1
    xp = np.zeros((c_in, 2 * to + 2, 2 * fo + 2))
    xp[:, 1:t + 1, 1:f + 1] = x
    out = np.zeros((w.shape[0], to, fo))
    for i in range(3):
        for j in range(3):
            patch = xp[:, i:i + 2 * to:2, j:j + 2 * fo:2]  # [C_in, to, fo]: input (2 t' + i - 1, 2 f' + j - 1)
            out += np.einsum("oc,ctf->otf", w[:, :, i, j], patch)
    return out


def sinusoids(n_pos: int, d: int) -> np.ndarray:
    """[n_pos, d]: row p = [sin(p * inv), cos(p * inv)], inv_i = exp(-i ln(1e4) / (d/2 - 1)), i < d/2."""
    n = d // 2
    inv = np.exp(-np.arange(n) * (math.log(1e4) / max(n - 1, 1)))
    ang = np.arange(n_pos)[:, None] * inv[None, :]
    return np.concatenate([np.sin(ang), np.cos(ang)], axis=-1)


class GemmaAudioRef:
    def __init__(self, path):
        r = GGUFReader(str(path))
        arch = r.fields["general.architecture"].contents()
        self.layout = "ollama" if arch == "gemma4" else "llamacpp"
        if arch == "clip":
            assert r.fields["clip.audio.projector_type"].contents() == "gemma4a"
        prefix = "gemma4.audio." if arch == "gemma4" else "clip.audio."

        def get(key, default=None):
            f = r.fields.get(prefix + key)
            return default if f is None else f.contents()

        self.n_layer = int(get("block_count"))
        self.d = int(get("embedding_length"))
        self.n_head = int(get("attention.head_count"))
        self.eps = float(get("attention.layer_norm_epsilon", EPS))
        self.t = {}
        for t in r.tensors:
            if t.name.startswith(("a.", "mm.a.")):
                x = quants.dequantize(t.data, t.tensor_type).astype(np.float64)
                self.t[t.name] = x.reshape(tuple(int(n) for n in reversed(t.shape.tolist())))
        self.head_dim = self.d // self.n_head
        self.mistakes: set[str] = set()  # names from MISTAKES, to measure what a port's error does

    # ----------------------------------------------------------------------------------------------------------------
    # tensors

    def name(self, role: str, i: int = 0) -> str:
        if "ln2 of the other layout" in self.mistakes and role in ("attn_post_norm", "block_out_norm"):
            # Ollama's ln2 is the post-attention norm, llama.cpp's the block output norm: reading a file with the
            # other layout's table swaps the two.
            role = {"attn_post_norm": "block_out_norm", "block_out_norm": "attn_post_norm"}[role]
        ollama, llamacpp = NAMES[role]
        return (ollama if self.layout == "ollama" else llamacpp).format(i=i)

    def w(self, role: str, i: int = 0) -> np.ndarray:
        return self.t[self.name(role, i)]

    def linear(self, x, role: str, i: int = 0):
        """A (clippable) linear: clamp input, matmul (+ bias if any), clamp output."""
        base = self.name(role, i)
        bounds = [self.t.get(f"{base}.{s}") for s in ("input_min", "input_max", "output_min", "output_max")]
        clamp = all(b is not None for b in bounds) and "no clamps" not in self.mistakes
        if clamp:
            x = np.clip(x, bounds[0][0], bounds[1][0])
        y = x @ self.t[base + ".weight"].T
        if base + ".bias" in self.t:
            y = y + self.t[base + ".bias"]
        return np.clip(y, bounds[2][0], bounds[3][0]) if clamp else y

    # ----------------------------------------------------------------------------------------------------------------
    # the tower

    def sscp(self, features, trace):
        """Log-mel [T, 128] -> [T', d]: two (conv 3x3 stride 2 pad 1, LayerNorm over channels, ReLU), flatten
        (time, freq * channel), linear."""
        x = np.asarray(features, np.float64)[None]  # [1, T, 128]: channel, time, frequency
        for k in (0, 1):
            x = conv2d_s2(x, self.w(f"conv{k}"))
            x = layer_norm(x.transpose(1, 2, 0), self.w(f"conv{k}_norm"), self.eps)  # [T, F, C]
            x = np.maximum(x, 0.0)
            trace[f"sscp_conv{k}"] = x
            x = x.transpose(2, 0, 1)  # back to [C, T, F]
        c, t, f = x.shape
        if "sscp flatten channel-major" in self.mistakes:
            flat = x.transpose(1, 0, 2).reshape(t, c * f)
        else:
            flat = x.transpose(1, 2, 0).reshape(t, f * c)  # column f * C + c
        return self.linear(flat, "sscp_proj")

    def ffn(self, x, i, suffix=""):
        """Half-step FFN: x + 0.5 * postRMS(down(silu(up(preRMS(x)))))."""
        h = rms_norm(x, self.w("ffn_norm" + suffix, i), self.eps)
        h = self.linear(silu(self.linear(h, "ffn_up" + suffix, i)), "ffn_down" + suffix, i)
        h = rms_norm(h, self.w("ffn_post_norm" + suffix, i), self.eps)
        return x + (1.0 if "ffn residual 1" in self.mistakes else RESIDUAL_WEIGHT) * h

    def attention(self, x, i, trace):
        """Chunked local self-attention with a Transformer-XL relative-position term, written per query: query t
        attends to keys s = t - o for offsets o = 0..11 with s >= 0 (itself and 11 past frames; nothing after it).

            q = W_q x * (1/sqrt(hd) / ln 2) * per_dim_scale      (per_dim_scale stored after softplus)
            k = W_k x * ln(1 + e) / ln 2
            r_o = W_pos sinusoid(o)                                (o = t - s, the distance back)
            score(t, s) = q_t . k_s + q_t . r_(t-s)                per head
            score = 50 tanh(score / 50); masked keys -1e9; softmax over the 12 offsets; sum of p v_s; W_out.

        HF computes the same in 12-frame blocks against 24-key windows (12 past + the block) and a padded-and-
        reshaped 'rel-shift' of q . r over sinusoid positions 12..0; unrolled, its entry (query i, window key j)
        is q . r at position 12 + i - j, the distance: exactly the formula above."""
        n, H, hd = len(x), self.n_head, self.head_dim
        h = rms_norm(x, self.w("attn_pre_norm", i), self.eps)
        pds = self.w("per_dim_scale", i)
        if "per_dim_scale softplus twice" in self.mistakes:
            pds = np.log1p(np.exp(pds))
        q = self.linear(h, "attn_q", i).reshape(n, H, hd) * (1.0 / math.sqrt(hd) / math.log(2)) * pds
        k = self.linear(h, "attn_k", i).reshape(n, H, hd)
        if "no k scale" not in self.mistakes:
            k = k * (math.log(1 + math.e) / math.log(2))
        v = self.linear(h, "attn_v", i).reshape(n, H, hd)
        r = (sinusoids(MAX_PAST + 1, self.d) @ self.w("attn_k_rel", i).T).reshape(MAX_PAST + 1, H, hd)
        if "rel-shift reversed" in self.mistakes:
            r = r[::-1]  # position 12 - o instead of o
        span = CHUNK * 2 - 1 if "sees future keys" in self.mistakes else CHUNK
        offsets = np.arange(span) - (span - CHUNK)  # o = t - s; negative = a future key (mistake only)
        s_idx = np.arange(n)[:, None] - offsets[None, :]  # [n, span] key index of each (query, offset)
        valid = (s_idx >= 0) & (s_idx < n)
        ks, vs = k[np.clip(s_idx, 0, n - 1)], v[np.clip(s_idx, 0, n - 1)]  # [n, span, H, hd]
        content = np.einsum("thd,tohd->hto", q, ks)
        rel = np.einsum("thd,ohd->hto", q, r[np.abs(offsets)])
        scores = content + rel
        if "no softcap" not in self.mistakes:
            scores = SOFTCAP * np.tanh(scores / SOFTCAP)
        scores = np.where(valid[None], scores, -1e9)
        p = np.exp(scores - scores.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        trace.setdefault("attn_probs", []).append(p)
        a = np.einsum("hto,tohd->thd", p, vs).reshape(n, H * hd)
        a = rms_norm(self.linear(a, "attn_out", i), self.w("attn_post_norm", i), self.eps)
        return x + a

    def light_conv(self, x, i):
        """x + W_pw2 silu(RMS(causal_dwconv(GLU(W_pw1 RMS(x))))); GLU = first half * sigmoid(second half)."""
        h = self.linear(rms_norm(x, self.w("conv_norm", i), self.eps), "conv_pw1", i)
        a, g = h[:, :self.d], h[:, self.d:]
        if "glu halves swapped" in self.mistakes:
            a, g = g, a
        h = a * sigmoid(g)
        w = self.w("conv_dw", i)  # [d, K]
        K = w.shape[1]
        if "conv not causal" in self.mistakes:
            hp = np.concatenate([np.zeros((K // 2, self.d)), h, np.zeros((K // 2, self.d))])  # centred, 'same'
        else:
            hp = np.concatenate([np.zeros((K - 1, self.d)), h])  # left pad K-1: causal
        h = sum(hp[j:j + len(h)] * w[:, j] for j in range(K))
        h = silu(rms_norm(h, self.w("norm_conv", i), self.eps))
        return x + self.linear(h, "conv_pw2", i)

    def encode(self, features, trace: dict | None = None) -> np.ndarray:
        """features [T, 128] (HF's log-mel frames, padding frames removed) -> soft tokens [n, d_model],
        n = ceil(ceil(T / 2) / 2)."""
        tr: dict = {} if trace is None else trace
        x = self.sscp(features, tr)
        tr["sscp"] = x
        for key in ("ffn1", "attn", "lconv", "ffn2", "layer_out"):
            tr[key] = []
        for i in range(self.n_layer):
            x = self.ffn(x, i)
            tr["ffn1"].append(x)
            x = self.attention(x, i, tr)
            tr["attn"].append(x)
            x = self.light_conv(x, i)
            tr["lconv"].append(x)
            x = self.ffn(x, i, "_1")
            tr["ffn2"].append(x)
            x = rms_norm(x, self.w("block_out_norm", i), self.eps)
            tr["layer_out"].append(x)
        for key in ("ffn1", "attn", "lconv", "ffn2", "layer_out", "attn_probs"):
            tr[key] = np.stack(tr[key])
        y = self.linear(x, "out_proj")
        tr["output_proj"] = y
        soft = rms_norm(y, None, self.eps) @ self.w("mm_proj").T
        tr["soft_tokens"] = soft
        return soft
