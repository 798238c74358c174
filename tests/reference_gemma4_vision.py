"""Gemma 4's vision tower in plain numpy (float64), read straight from a GGUF (Ollama's monolithic blob or a
llama.cpp mmproj): the host-side oracle the GPU tower is compared against layer by layer, itself checked
against transformers' goldens in tests/test_gemma4_vision.py.

Written from gemma4.md section 3 and transformers' Gemma4VisionModel / Gemma4MultimodalEmbedder, never from
our kernels. The file's conventions:
- `v.patch_embd.weight` is HF's input_proj permuted to (d, channel, row, col): patches are flattened in that
  order (media.PreparedImage.patches), already holding 2 * pixel - 1.
- `v.position_embd.weight` is (2, P, d): the x table, then the y table.
- Clippable linears clamp their input and output with per-linear scalars `<linear>.{input,output}_{min,max}`
  (Ollama also packs them in `v.clamp_data`: 7 linears x 4 values per layer; both are read here).
- Norm weights are used as stored (x * w); q/k norms per head; v normalised without a weight.
- 2-D RoPE, theta 100: the first half of each head turns with the patch's x, the second with its y, each half
  NeoX-style (pairs i, i + head_dim / 4).
- Attention is bidirectional over the image's patches, scale 1.0.
- 3 x 3 average pooling over the patch grid, times sqrt(d); optional (x - std_bias) * std_scale; a weightless
  RMSNorm; `mm.input_projection`.
"""

from __future__ import annotations

import numpy as np
from gguf import GGUFReader, quants

from reference_gemma4 import gelu_tanh, rms_norm

LINEARS = ("attn_q", "attn_k", "attn_v", "attn_out", "ffn_gate", "ffn_up", "ffn_down")


def rope_2d(x, px, py, base=100.0):
    """x: [N, heads, hd]; px, py: [N]."""
    hd = x.shape[-1]
    half, q = hd // 2, hd // 4
    inv = base ** (-np.arange(q, dtype=np.float64) * 2.0 / half)
    out = []
    for part, pos in ((x[..., :half], px), (x[..., half:], py)):
        ang = (pos.astype(np.float64)[:, None] * inv)[:, None, :]
        cos, sin = np.cos(ang), np.sin(ang)
        a, b = part[..., :q], part[..., q:]
        out.append(np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1))
    return np.concatenate(out, axis=-1)


class GemmaVisionRef:
    def __init__(self, path):
        r = GGUFReader(str(path))
        self.t = {}
        for t in r.tensors:
            if t.name.startswith(("v.", "mm.")):
                a = quants.dequantize(t.data, t.tensor_type).astype(np.float64)
                self.t[t.name] = a.reshape(tuple(int(n) for n in reversed(t.shape.tolist())))
        arch = r.fields["general.architecture"].contents()
        prefix = "clip.vision." if arch == "clip" else f"{arch}.vision."

        def get(key, default=None):
            f = r.fields.get(prefix + key)
            return default if f is None else f.contents()

        self.n_layers = int(get("block_count"))
        self.d = int(get("embedding_length"))
        self.n_heads = int(get("attention.head_count"))
        self.pool = int(get("projector.scale_factor", 3))
        self.eps = float(get("attention.layer_norm_epsilon", 1e-6))

    def clamps(self, layer: int, lin: str):
        prefix = f"v.blk.{layer}.{lin}."
        names = [prefix + s for s in ("input_min", "input_max", "output_min", "output_max")]
        if all(n in self.t for n in names):
            return [float(self.t[n].reshape(-1)[0]) for n in names]
        if "v.clamp_data" in self.t:
            i = 4 * (7 * layer + LINEARS.index(lin))
            return [float(v) for v in self.t["v.clamp_data"].reshape(-1)[i: i + 4]]
        return None

    def linear(self, x, layer, lin):
        w = self.t[f"v.blk.{layer}.{lin}.weight"]
        c = self.clamps(layer, lin)
        if c is not None:
            x = np.clip(x, c[0], c[1])
        y = x @ w.T
        return np.clip(y, c[2], c[3]) if c is not None else y

    def encode(self, patches, positions, grid, trace=None):
        """patches [N, 3 p^2] (channel, row, col), positions [N, 2] (px, py), grid (pw, ph) -> [N / 9, text_d]."""
        d, nh, eps = self.d, self.n_heads, self.eps
        hd = d // nh
        px, py = positions[:, 0].astype(np.int64), positions[:, 1].astype(np.int64)
        wp = self.t["v.patch_embd.weight"].reshape(d, -1)
        table = self.t["v.position_embd.weight"]
        h = np.asarray(patches, np.float64) @ wp.T + table[0][px] + table[1][py]
        if trace is not None:
            trace["embed"] = h
        n = h.shape[0]
        for l in range(self.n_layers):
            b = f"v.blk.{l}."
            x = rms_norm(h, self.t[b + "ln1.weight"], eps)
            q = rms_norm(self.linear(x, l, "attn_q").reshape(n, nh, hd), self.t[b + "attn_q_norm.weight"], eps)
            k = rms_norm(self.linear(x, l, "attn_k").reshape(n, nh, hd), self.t[b + "attn_k_norm.weight"], eps)
            v = rms_norm(self.linear(x, l, "attn_v").reshape(n, nh, hd), None, eps)
            q, k = rope_2d(q, px, py), rope_2d(k, px, py)
            s = np.einsum("thd,shd->hts", q, k)
            p = np.exp(s - s.max(-1, keepdims=True))
            p /= p.sum(-1, keepdims=True)
            a = np.einsum("hts,shd->thd", p, v).reshape(n, d)
            h = h + rms_norm(self.linear(a, l, "attn_out"), self.t[b + "attn_post_norm.weight"], eps)
            x = rms_norm(h, self.t[b + "ln2.weight"], eps)
            g = gelu_tanh(self.linear(x, l, "ffn_gate")) * self.linear(x, l, "ffn_up")
            h = h + rms_norm(self.linear(g, l, "ffn_down"), self.t[b + "ffn_post_norm.weight"], eps)
            if trace is not None:
                trace.setdefault("layer_out", []).append(h)
        pw, ph = grid
        k = self.pool
        pooled = h.reshape(ph // k, k, pw // k, k, d).mean(axis=(1, 3)).reshape(-1, d) * np.sqrt(d)
        if "v.std_bias" in self.t:
            pooled = (pooled - self.t["v.std_bias"]) * self.t["v.std_scale"]
        if trace is not None:
            trace["pooled"] = pooled
        return rms_norm(pooled, None, eps) @ self.t["mm.input_projection.weight"].T
