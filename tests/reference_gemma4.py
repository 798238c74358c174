"""Gemma 4 (E2B/E4B) text decoder in plain numpy, read straight from a GGUF: the host-side oracle that the GPU
model is compared against, layer by layer.

Written from the model description (gemma4.md section 1.2) and HF transformers' modeling_gemma4.py, never from
our kernels. It reads the GGUF the way llama.cpp does, so the file's conventions are spelled out here:

- Norm weights are used as stored: RMSNorm(x) * w. Gemma 4 has no Gemma-3-style (1 + w), and the converters
  store HF's w unchanged (llama.cpp's Gemma4Model.norm_shift is 0).
- The embedding scale sqrt(d_model), the PLE scales sqrt(ple_dim), 1/sqrt(d_model) and 1/sqrt(2), and the
  attention scale 1.0 are not in the file; they are constants of the architecture.
- v is RMS-normalised without a weight; q and k with attn_q_norm / attn_k_norm, per head.
- RoPE is NeoX-style (pairs i, i + n_rot/2). Global layers rotate rope.dimension_count dims with base
  rope.freq_base and divide each frequency by rope_freqs[i]; the 1e30 factors switch frequencies off, which is
  HF's "proportional" rope. Sliding layers use dimension_count_swa and freq_base_swa without factors.
- Layers from first_shared = block_count - shared_kv_layers on compute no K/V: they attend over the cache of
  the last earlier layer of the same kind (sliding or global).
- layer_output_scale multiplies the whole residual stream at the end of each layer.
- The LM head is token_embd (tied), followed by the final soft-cap.

Usage:
    model = Gemma4("tests/fixtures/gemma4_tiny_e2b_f32.gguf")
    logits = model.forward(tokens)                 # [T, vocab], a fresh cache
    cache = model.new_cache()
    model.forward(tokens[:5], cache); model.forward(tokens[5:6], cache)   # incremental, same result
    trace = {}; model.forward(tokens, trace=trace)  # trace["blk.3.attn"], trace["layer_out"], ...
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gguf import GGUFReader, quants


# --------------------------------------------------------------------------------------------------------------------
# The building blocks


def rms_norm(x, w=None, eps=1e-6):
    y = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)
    return y * w if w is not None else y


def gelu_tanh(x):
    # HF "gelu_pytorch_tanh", ggml's gelu
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


def rope(x, pos, n_rot, base, freq_factors=None):
    """NeoX rotation of the first n_rot dims of each head. x: [T, heads, head_dim], pos: [T]."""
    half = n_rot // 2
    inv_freq = base ** (-np.arange(half, dtype=np.float64) * 2.0 / n_rot)
    if freq_factors is not None:
        inv_freq = inv_freq / freq_factors[:half]
    angles = (pos[:, None].astype(np.float64) * inv_freq)[:, None, :]  # [T, 1, half]
    cos, sin = np.cos(angles).astype(x.dtype), np.sin(angles).astype(x.dtype)
    x1, x2, rest = x[..., :half], x[..., half:n_rot], x[..., n_rot:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], axis=-1)


def attention(q, k, v, q_pos, window=None):
    """Causal attention with scale 1.0 (the q/k norms replace 1/sqrt(head_dim)).
    q: [T, H, hd]; k, v: [S, Hkv, hd] for positions 0..S-1; query head h reads kv head h // (H / Hkv).
    A sliding layer lets query p see key j iff p - j < window."""
    n_rep = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, n_rep, axis=1), np.repeat(v, n_rep, axis=1)
    scores = np.einsum("thd,shd->hts", q, k)
    dist = q_pos[:, None] - np.arange(k.shape[0])[None, :]
    allowed = dist >= 0
    if window is not None:
        allowed &= dist < window
    scores = np.where(allowed[None], scores, -np.inf)
    scores = scores - scores.max(-1, keepdims=True)
    p = np.exp(scores)
    p /= p.sum(-1, keepdims=True)
    return np.einsum("hts,shd->thd", p, v)


# --------------------------------------------------------------------------------------------------------------------
# The model


@dataclass
class Config:
    n_layer: int
    d_model: int
    n_head: int
    n_kv_head: int
    head_dim: int  # global layers
    head_dim_swa: int
    n_ff: list[int]
    is_swa: list[bool]
    n_kv_shared: int
    window: int
    ple_dim: int
    n_rot: int
    n_rot_swa: int
    rope_base: float
    rope_base_swa: float
    softcap: float
    eps: float
    n_vocab: int

    @classmethod
    def from_gguf(cls, r: GGUFReader) -> "Config":
        arch = r.fields["general.architecture"].contents()
        assert arch == "gemma4", arch

        def get(key):
            return r.fields[f"gemma4.{key}"].contents()

        n_layer = get("block_count")
        n_ff = get("feed_forward_length")
        n_kv = get("attention.head_count_kv")
        assert not isinstance(n_kv, list), "per-layer kv head counts (26B/31B) are not handled here"
        return cls(
            n_layer=n_layer, d_model=get("embedding_length"), n_head=get("attention.head_count"), n_kv_head=n_kv,
            head_dim=get("attention.key_length"), head_dim_swa=get("attention.key_length_swa"),
            n_ff=n_ff if isinstance(n_ff, list) else [n_ff] * n_layer,
            is_swa=get("attention.sliding_window_pattern"), n_kv_shared=get("attention.shared_kv_layers"),
            window=get("attention.sliding_window"), ple_dim=get("embedding_length_per_layer_input"),
            n_rot=get("rope.dimension_count"), n_rot_swa=get("rope.dimension_count_swa"),
            rope_base=get("rope.freq_base"), rope_base_swa=get("rope.freq_base_swa"),
            softcap=get("final_logit_softcapping"), eps=get("attention.layer_norm_rms_epsilon"),
            n_vocab=len(r.fields["tokenizer.ggml.tokens"].data))

    @property
    def first_shared(self) -> int:
        return self.n_layer - self.n_kv_shared

    def kv_source(self, il: int) -> int:
        """The layer whose K/V cache layer il attends over: itself, or for a KV-shared layer the last non-shared
        layer of the same kind (HF's rule; llama.cpp hard-codes first_shared-2 / -1, which agrees for E2B/E4B)."""
        if il < self.first_shared:
            return il
        return max(j for j in range(self.first_shared) if self.is_swa[j] == self.is_swa[il])


class Cache:
    """Full K/V history of every layer that computes K/V (no ring buffer: the sliding mask does the windowing)."""

    def __init__(self, n_layer: int):
        self.k: list = [None] * n_layer
        self.v: list = [None] * n_layer
        self.length = 0

    def append(self, il, k, v):
        self.k[il] = k if self.k[il] is None else np.concatenate([self.k[il], k])
        self.v[il] = v if self.v[il] is None else np.concatenate([self.v[il], v])


class Gemma4:
    def __init__(self, path: str, dtype=np.float64):
        self.reader = GGUFReader(path)
        self.cfg = Config.from_gguf(self.reader)
        self.dtype = dtype
        self.tensors = {t.name: t for t in self.reader.tensors}
        self._cache: dict[str, np.ndarray] = {}

    def w(self, name: str) -> np.ndarray:
        """A tensor dequantized to self.dtype, in numpy order ([ne1, ne0]: a matrix is [out, in])."""
        if name not in self._cache:
            t = self.tensors[name]
            x = quants.dequantize(t.data, t.tensor_type)
            self._cache[name] = x.reshape(tuple(int(n) for n in reversed(t.shape))).astype(self.dtype)
        return self._cache[name]

    def rows(self, name: str, ids) -> np.ndarray:
        """Rows of a table (embedding lookup) without dequantizing all of it: quant blocks never cross rows."""
        t = self.tensors[name]
        return quants.dequantize(t.data[np.asarray(ids)], t.tensor_type).astype(self.dtype)

    def new_cache(self) -> Cache:
        return Cache(self.cfg.n_layer)

    def per_layer_inputs(self, tokens, x):
        """PLE: the token's own per-layer row (x sqrt(ple_dim)) plus a projection of its embedding (normalised),
        averaged with 1/sqrt(2). -> [T, n_layer, ple_dim]"""
        c = self.cfg
        T = len(tokens)
        ple_id = self.rows("per_layer_token_embd.weight", tokens).reshape(T, c.n_layer, c.ple_dim)
        ple_id = ple_id * np.sqrt(c.ple_dim)
        ple_cx = (x @ self.w("per_layer_model_proj.weight").T) / np.sqrt(c.d_model)
        ple_cx = rms_norm(ple_cx.reshape(T, c.n_layer, c.ple_dim), self.w("per_layer_proj_norm.weight"), c.eps)
        return (ple_cx + ple_id) / np.sqrt(2.0)

    def forward(self, tokens, cache: Cache | None = None, trace: dict | None = None) -> np.ndarray:
        """Logits [T, vocab] for `tokens`, which continue whatever `cache` holds (positions cache.length...)."""
        c = self.cfg
        tokens = np.asarray(tokens, dtype=np.int64)
        T = len(tokens)
        cache = cache if cache is not None else self.new_cache()
        pos = cache.length + np.arange(T)
        trace = trace if trace is not None else {}

        x = self.rows("token_embd.weight", tokens) * np.sqrt(c.d_model).astype(self.dtype)
        ple = self.per_layer_inputs(tokens, x)
        trace["embed"], trace["per_layer_inputs"], trace["layer_out"] = x, ple, []

        for il in range(c.n_layer):
            b = f"blk.{il}."
            swa = c.is_swa[il]
            hd = c.head_dim_swa if swa else c.head_dim
            if swa:
                rot = dict(n_rot=c.n_rot_swa, base=c.rope_base_swa)
            else:
                rot = dict(n_rot=c.n_rot, base=c.rope_base, freq_factors=self.w("rope_freqs.weight"))

            # attention
            h = rms_norm(x, self.w(b + "attn_norm.weight"), c.eps)
            q = rms_norm((h @ self.w(b + "attn_q.weight").T).reshape(T, c.n_head, hd), self.w(b + "attn_q_norm.weight"), c.eps)
            q = rope(q, pos, **rot)
            if il < c.first_shared:
                k = (h @ self.w(b + "attn_k.weight").T).reshape(T, c.n_kv_head, hd)
                k = rope(rms_norm(k, self.w(b + "attn_k_norm.weight"), c.eps), pos, **rot)
                v = rms_norm((h @ self.w(b + "attn_v.weight").T).reshape(T, c.n_kv_head, hd), None, c.eps)
                cache.append(il, k, v)
                trace[b + "k"], trace[b + "v"] = k, v
            src = c.kv_source(il)
            a = attention(q, cache.k[src], cache.v[src], pos, c.window if swa else None).reshape(T, c.n_head * hd)
            trace[b + "q"], trace[b + "attn"] = q, a
            x = x + rms_norm(a @ self.w(b + "attn_output.weight").T, self.w(b + "post_attention_norm.weight"), c.eps)
            trace[b + "after_attn"] = x

            # GeGLU feed-forward
            h = rms_norm(x, self.w(b + "ffn_norm.weight"), c.eps)
            f = gelu_tanh(h @ self.w(b + "ffn_gate.weight").T) * (h @ self.w(b + "ffn_up.weight").T)
            x = x + rms_norm(f @ self.w(b + "ffn_down.weight").T, self.w(b + "post_ffw_norm.weight"), c.eps)
            trace[b + "after_ffn"] = x

            # per-layer input: gated by the (un-normalised) residual stream
            g = gelu_tanh(x @ self.w(b + "inp_gate.weight").T) * ple[:, il]
            x = x + rms_norm(g @ self.w(b + "proj.weight").T, self.w(b + "post_norm.weight"), c.eps)
            trace[b + "after_ple"] = x

            x = x * self.w(b + "layer_output_scale.weight")
            trace["layer_out"].append(x)

        cache.length += T
        x = rms_norm(x, self.w("output_norm.weight"), c.eps)
        trace["final_norm"] = x
        logits = x @ self.w("token_embd.weight").T
        return c.softcap * np.tanh(logits / c.softcap)
