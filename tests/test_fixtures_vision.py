"""The Gemma 4 vision fixtures (tests/fixtures/gemma4_tiny_vision_*) are what tools/make_tiny_gemma4_vision.py
and tests/fixtures/README.md say they are:

- the GGUF files: Ollama's monolithic layout (gemma4.vision.* keys, v.* / mm.* tensors, per-linear clamp scalars
  and the packed v.clamp_data) and llama.cpp's pair (a text-only GGUF plus an mmproj, architecture "clip",
  projector gemma4v), with the tensor names of gguf-py's MMPROJ table, the right shapes and types;
- every tensor holds exactly the values HF held when the goldens were computed (a sha256 of each, in the npz);
- the tokenizer has the multimodal markers, the prompts are built from them, the image inputs are consistent;
- a plain numpy Gemma 4 vision tower written here from the model description (gemma4.md section 3), reading only
  the GGUF, plus tests/reference_gemma4.py for the text model, reproduces HF's soft tokens, the tower's
  intermediates and the logits; and the fixtures are sensitive to the mistakes a port makes.

CI needs only numpy, gguf and pytest; the torch/transformers environment that made the goldens is not used here.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys

import numpy as np
import pytest
from gguf import (MODEL_ARCH, MODEL_TENSORS, TENSOR_NAMES, GGMLQuantizationType as Q, GGUFReader,
                  GGUFValueType as V, quants)

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "fixtures")
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tools"))

import make_synthetic_gguf as layout  # noqa: E402
import make_tiny_gemma4 as tiny  # noqa: E402
import make_tiny_gemma4_vision as vis  # noqa: E402  (torch is only imported inside its generator functions)
import reference_gemma4  # noqa: E402
from reference_gemma4 import gelu_tanh, rms_norm, rope  # noqa: E402

# float64 references against float64 goldens stored as float32 (|soft tokens| <= ~12, |logits| <= 30).
REF_ATOL = 1e-5


def load_npz(path: str) -> dict:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


INPUTS = load_npz(os.path.join(FIXTURES, vis.PREFIX + "inputs.npz"))
INPUTS_INFO = json.loads(str(INPUTS["info"]))


def pixel_values(name: str) -> np.ndarray:
    """The processor's exact float32 pixel_values of input `name`, [N, 768]."""
    return INPUTS[f"{name}_pixels_u8"].astype(np.float32) / np.float32(255)


# --------------------------------------------------------------------------------------------------------------------
# A numpy Gemma 4 vision tower, straight from the GGUF


class VisionTower:
    """Gemma 4's vision tower and projector (gemma4.md section 3, HF's Gemma4VisionModel + embed_vision) in
    float64, from the v.* / mm.* tensors of either layout. The conventions of the files, spelled out:

    - v.patch_embd is ne [p, p, 3, d], i.e. numpy [d, channel, row, col]; a patch row of pixel_values is in
      (row, col, channel) order, so the matrix is the tensor transposed to [d, row, col, channel].
    - v.position_embd is ne [d, P, 2], numpy [2, P, d]: table 0 is indexed by the patch's x, table 1 by its y.
    - Every linear of a block clamps its input to [input_min, input_max] and its output to
      [output_min, output_max] (the 1-element tensors v.blk.N.<linear>.<bound>).
    - Attention is bidirectional, scale 1.0; q and k are RMS-normed per head with attn_q_norm / attn_k_norm, v
      without a weight. 2D rope with base 100: the first half of each head rotates with x, the second with y,
      each NeoX-style (pairs i, i + head_dim/4).
    - Pooling averages 3 x 3 blocks of patches (soft token (x // 3) + (gw / 3) (y // 3)), then multiplies by
      sqrt(d); if the file has v.std_bias / v.std_scale, then (pooled - std_bias) * std_scale. The projector is
      RMSNorm without weight, then mm.input_projection."""

    def __init__(self, path: str):
        self.reader = GGUFReader(path)
        arch = self.reader.fields["general.architecture"].contents()
        pre = "gemma4.vision." if arch == "gemma4" else "clip.vision."

        def get(key):
            return self.reader.fields[pre + key].contents()

        self.n_layer, self.d = get("block_count"), get("embedding_length")
        self.n_head, self.n_ff = get("attention.head_count"), get("feed_forward_length")
        self.patch, self.pool = get("patch_size"), get("projector.scale_factor")
        self.eps = get("attention.layer_norm_epsilon")
        self.head_dim = self.d // self.n_head
        self.tensors = {t.name: t for t in self.reader.tensors}
        self.cache: dict[str, np.ndarray] = {}
        self.mistakes: set[str] = set()

    def w(self, name: str) -> np.ndarray:
        if name not in self.cache:
            t = self.tensors[name]
            x = quants.dequantize(t.data, t.tensor_type)
            self.cache[name] = x.reshape(tuple(int(n) for n in reversed(t.shape))).astype(np.float64)
        return self.cache[name]

    def linear(self, x: np.ndarray, name: str) -> np.ndarray:
        lo_in, hi_in, lo_out, hi_out = (float(self.w(f"{name}.{s}")[0]) for s in vis.CLAMP_SUFFIXES)
        if "no clamps" in self.mistakes:
            lo_in = lo_out = -np.inf
            hi_in = hi_out = np.inf
        y = np.clip(x, lo_in, hi_in) @ self.w(f"{name}.weight").T
        return np.clip(y, lo_out, hi_out)

    def rope2d(self, x: np.ndarray, pos: np.ndarray) -> np.ndarray:
        half = self.head_dim // 2
        px, py = (pos[:, 1], pos[:, 0]) if "rope x/y swapped" in self.mistakes else (pos[:, 0], pos[:, 1])
        return np.concatenate([rope(x[..., :half], px, half, 100.0), rope(x[..., half:], py, half, 100.0)], -1)

    def forward(self, pixel_values: np.ndarray, positions: np.ndarray, trace: dict | None = None) -> np.ndarray:
        """pixel_values [N, 3 p^2] (the processor's, in [0, 1]), positions [N, 2] (x, y) -> soft tokens
        [N / pool^2, d_model]."""
        trace = trace if trace is not None else {}
        n, d, p = len(pixel_values), self.d, self.patch
        w_patch = self.w("v.patch_embd.weight")  # [d, channel, row, col]
        if "patch_embd not permuted" in self.mistakes:
            w_patch = w_patch.reshape(d, -1)
        else:
            w_patch = w_patch.transpose(0, 2, 3, 1).reshape(d, 3 * p * p)
        x = (2.0 * (pixel_values.astype(np.float64) - 0.5)) @ w_patch.T
        trace["patch_embd"] = x
        table = self.w("v.position_embd.weight")  # [2, P, d]
        xs, ys = positions[:, 0], positions[:, 1]
        if "position tables swapped" in self.mistakes:
            xs, ys = ys, xs
        x = x + table[0][xs] + table[1][ys]
        trace["inputs_embeds"], trace["layer_out"] = x, []
        H, hd = self.n_head, self.head_dim
        for il in range(self.n_layer):
            b = f"v.blk.{il}."
            h = rms_norm(x, self.w(b + "ln1.weight"), self.eps)
            q = rms_norm(self.linear(h, b + "attn_q").reshape(n, H, hd), self.w(b + "attn_q_norm.weight"), self.eps)
            k = rms_norm(self.linear(h, b + "attn_k").reshape(n, H, hd), self.w(b + "attn_k_norm.weight"), self.eps)
            v = self.linear(h, b + "attn_v").reshape(n, H, hd)
            if "no v norm" not in self.mistakes:
                v = rms_norm(v, None, self.eps)
            q, k = self.rope2d(q, positions), self.rope2d(k, positions)
            s = q.transpose(1, 0, 2) @ k.transpose(1, 2, 0)  # [H, N, N], scale 1.0, no mask
            s = np.exp(s - s.max(-1, keepdims=True))
            a = ((s / s.sum(-1, keepdims=True)) @ v.transpose(1, 0, 2)).transpose(1, 0, 2).reshape(n, H * hd)
            x = x + rms_norm(self.linear(a, b + "attn_out"), self.w(b + "attn_post_norm.weight"), self.eps)
            h = rms_norm(x, self.w(b + "ln2.weight"), self.eps)
            f = gelu_tanh(self.linear(h, b + "ffn_gate")) * self.linear(h, b + "ffn_up")
            x = x + rms_norm(self.linear(f, b + "ffn_down"), self.w(b + "ffn_post_norm.weight"), self.eps)
            trace["layer_out"].append(x)
        k = self.pool
        gw, gh = int(xs.max()) + 1, int(ys.max()) + 1
        stride = gh // k if "pooling stride from the height" in self.mistakes else gw // k
        idx = positions[:, 0] // k + stride * (positions[:, 1] // k)
        pooled = np.zeros((gw * gh // k ** 2, d))
        np.add.at(pooled, idx, x / k ** 2)
        if "pooling without sqrt(d)" not in self.mistakes:
            pooled = pooled * np.sqrt(d)
        if "v.std_bias" in self.tensors and "no standardize" not in self.mistakes:
            pooled = (pooled - self.w("v.std_bias")) * self.w("v.std_scale")
        trace["pooled"] = pooled
        return rms_norm(pooled, None, self.eps) @ self.w("mm.input_projection.weight").T


class SplicedGemma4(reference_gemma4.Gemma4):
    """tests/reference_gemma4.py's text model with soft tokens spliced in, as HF's Gemma4Model does: at the
    `<|image|>` positions the input embedding is the soft token itself (no sqrt(d_model)), and the PLE
    token-identity row is token 0's (the pad id); the PLE context term sees the spliced embedding."""

    image_token = vis.MARKERS["<|image|>"]
    mistakes: set = set()
    soft: np.ndarray | None = None

    def rows(self, name, ids):
        ids = np.asarray(ids)
        mask = ids == self.image_token
        if name == "per_layer_token_embd.weight" and "PLE row of <|image|>" not in self.mistakes:
            return super().rows(name, np.where(mask, 0, ids))
        x = super().rows(name, ids)
        if name == "token_embd.weight":
            assert self.soft is not None and mask.sum() == len(self.soft)
            scale = 1.0 if "soft tokens scaled by sqrt(d)" in self.mistakes else 1.0 / np.sqrt(self.cfg.d_model)
            x[mask] = self.soft * scale  # forward() multiplies every row by sqrt(d_model)
        return x

    def forward_with(self, tokens: np.ndarray, soft: np.ndarray) -> np.ndarray:
        self.soft = soft
        try:
            return self.forward(tokens)
        finally:
            self.soft = None


# --------------------------------------------------------------------------------------------------------------------
# Fixtures


class Model:
    def __init__(self, name: str):
        self.name = name
        self.cfg = vis.CONFIGS[name]
        base = os.path.join(FIXTURES, vis.PREFIX + name)
        self.text_path = base + ".gguf"
        self.vision_path = base + ".gguf" if self.cfg.layout == "ollama" else base + ".mmproj.gguf"
        self.text = GGUFReader(self.text_path)
        self.vision = self.text if self.vision_path == self.text_path else GGUFReader(self.vision_path)
        self.gold = load_npz(base + ".npz")
        self.info = json.loads(str(self.gold["info"]))
        self._tower = self._lm = None
        self._soft: dict[str, np.ndarray] = {}

    @property
    def tower(self) -> VisionTower:
        if self._tower is None:
            self._tower = VisionTower(self.vision_path)
        return self._tower

    @property
    def lm(self) -> SplicedGemma4:
        if self._lm is None:
            self._lm = SplicedGemma4(self.text_path)
        return self._lm

    def soft(self, name: str, tower: VisionTower | None = None) -> np.ndarray:
        """The reference tower's soft tokens for input `name` (memoised for the unmodified tower)."""
        if tower is not None:
            return tower.forward(pixel_values(name), INPUTS[f"{name}_positions"])
        if name not in self._soft:
            self._soft[name] = self.tower.forward(pixel_values(name), INPUTS[f"{name}_positions"])
        return self._soft[name]

    def pair_soft(self, tower: VisionTower | None = None) -> np.ndarray:
        return np.concatenate([self.soft(n, tower) for n in self.info["pair"]])


_models: dict[str, Model] = {}


def get_model(name: str) -> Model:
    if name not in _models:
        _models[name] = Model(name)
    return _models[name]


@pytest.fixture(params=sorted(vis.CONFIGS))
def m(request) -> Model:
    return get_model(request.param)


def field(reader: GGUFReader, key: str):
    return reader.fields[key].contents()


def sha(values: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(values, dtype=np.float32).tobytes()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------------------------------
# Files, metadata, tensors


def test_file_set():
    files = {f for f in os.listdir(FIXTURES) if f.startswith(vis.PREFIX)}
    expected = {vis.PREFIX + "inputs.npz"}
    for name, cfg in vis.CONFIGS.items():
        expected |= {f"{vis.PREFIX}{name}.gguf", f"{vis.PREFIX}{name}.npz"}
        if cfg.layout == "llamacpp":
            expected.add(f"{vis.PREFIX}{name}.mmproj.gguf")
    assert files == expected
    for f in files:
        assert os.path.getsize(os.path.join(FIXTURES, f)) < 2_500_000, f


def test_text_metadata(m):
    r, d = m.text, m.cfg.text
    assert field(r, "general.architecture") == "gemma4"
    assert field(r, "general.file_type") == tiny.FILE_TYPE[m.cfg.weights]
    expected = {"block_count": d.n_layer, "embedding_length": d.d_model, "attention.head_count": d.n_head,
                "attention.head_count_kv": d.n_kv_head, "attention.key_length": d.head_dim_full,
                "attention.key_length_swa": d.head_dim_swa, "attention.sliding_window": d.sliding_window,
                "attention.shared_kv_layers": d.n_kv_shared, "embedding_length_per_layer_input": d.ple_dim,
                "feed_forward_length": [d.n_ff_layer(i) for i in range(d.n_layer)],
                "attention.sliding_window_pattern": [d.is_swa(i) for i in range(d.n_layer)]}
    for key, value in expected.items():
        assert field(r, "gemma4." + key) == value, key
    vision_keys = {k for k in r.fields if k.startswith("gemma4.vision.")}
    if m.cfg.layout == "ollama":
        v = m.cfg.vision
        want = {"gemma4.vision.block_count": v.n_layer, "gemma4.vision.embedding_length": v.d,
                "gemma4.vision.attention.head_count": v.n_head, "gemma4.vision.feed_forward_length": v.n_ff,
                "gemma4.vision.patch_size": 16, "gemma4.vision.num_channels": 3,
                "gemma4.vision.projector.scale_factor": 3}
        assert vision_keys == set(want) | {"gemma4.vision.attention.layer_norm_epsilon"}
        for key, value in want.items():
            assert r.fields[key].types == [V.UINT32] and field(r, key) == value, key
        eps = r.fields["gemma4.vision.attention.layer_norm_epsilon"]
        assert eps.types == [V.FLOAT32] and eps.contents() == pytest.approx(1e-6)
    else:
        assert not vision_keys, "llama.cpp's text GGUF has no vision keys"
        assert not any(t.name.startswith(("v.", "mm.")) for t in r.tensors)


def test_mmproj_metadata():
    for name, cfg in vis.CONFIGS.items():
        if cfg.layout != "llamacpp":
            continue
        r, v = get_model(name).vision, cfg.vision
        assert field(r, "general.architecture") == "clip" and field(r, "general.type") == "mmproj"
        assert field(r, "general.file_type") == tiny.FILE_TYPE[cfg.weights]
        assert field(r, "clip.has_vision_encoder") is True
        assert "clip.has_audio_encoder" not in r.fields
        # llama.cpp's converter writes the per-modality key; clip.cpp reads clip.projector_type first, then this.
        assert field(r, "clip.vision.projector_type") == "gemma4v" and "clip.projector_type" not in r.fields
        u32 = {"projection_dim": cfg.text.d_model, "image_size": 224, "patch_size": 16, "embedding_length": v.d,
               "feed_forward_length": v.n_ff, "block_count": v.n_layer, "attention.head_count": v.n_head,
               "projector.scale_factor": 3}
        for key, value in u32.items():
            assert r.fields["clip.vision." + key].types == [V.UINT32] and field(r, "clip.vision." + key) == value
        assert field(r, "clip.vision.attention.layer_norm_epsilon") == pytest.approx(1e-6)
        assert field(r, "clip.vision.image_mean") == [0.0, 0.0, 0.0]
        assert field(r, "clip.vision.image_std") == [1.0, 1.0, 1.0]
        assert not any(k.startswith("tokenizer.") for k in r.fields)


def test_tensor_table(m):
    """Every tensor with its name, shape and type; the vision names are those of gguf-py's MMPROJ table."""
    text_specs = layout.tensor_specs(m.cfg.text)
    vspecs = vis.vision_specs(m.cfg.vision, m.cfg.text.d_model)
    want = {s.name: (s.ne, tiny.weight_type(m.cfg.weights, s, {})) for s in text_specs}
    vwant = {s.name: (s.ne, vis.vision_type(m.cfg, s)) for s in vspecs}
    n_clamp = (m.cfg.vision.n_layer * len(vis.CLIPPED) + 1) * 4
    if m.cfg.layout == "ollama":
        vwant["v.clamp_data"] = ((n_clamp,), Q.F32)
    readers = [(m.text, want), (m.vision, vwant)] if m.vision is not m.text else [(m.text, want | vwant)]
    for reader, table in readers:
        got = {t.name: (tuple(int(n) for n in t.shape), t.tensor_type) for t in reader.tensors}
        assert got == table
    mmproj_names = {TENSOR_NAMES[t] for t in MODEL_TENSORS[MODEL_ARCH.MMPROJ]}
    for s in vspecs:
        base = s.name.rsplit(".", 1)[0] if s.kind == "clamp" else s.name.removesuffix(".weight")
        generic = base if s.layer < 0 else base.replace(f".{s.layer}.", ".{bid}.", 1)
        assert generic in mmproj_names, s.name
    assert vwant["v.patch_embd.weight"][1] == (Q.F16 if m.cfg.layout == "ollama" else Q.F32)
    if m.cfg.weights == "q8_0":
        assert {t for n, (_, t) in vwant.items() if n.endswith(("attn_q.weight", "ffn_down.weight"))} == {Q.Q8_0}
        assert vwant["mm.input_projection.weight"][1] == Q.Q8_0
    assert ("v.std_bias" in vwant) == ("v.std_scale" in vwant) == m.cfg.vision.standardize
    if m.cfg.vision.standardize:
        assert vwant["v.std_bias"] == vwant["v.std_scale"] == ((m.cfg.vision.d,), Q.F32)


def test_tensors_hold_the_goldens_values(m):
    """Dequantised, every tensor is bit for bit what HF held when the goldens were computed."""
    hashes = m.info["tensor_sha256_16"]
    seen = set()
    for reader in {id(m.text): m.text, id(m.vision): m.vision}.values():
        for t in reader.tensors:
            values = quants.dequantize(t.data, t.tensor_type).reshape(tuple(int(n) for n in reversed(t.shape)))
            assert sha(values) == hashes[t.name], t.name
            seen.add(t.name)
    assert seen == set(hashes) - ({"v.clamp_data"} if m.cfg.layout != "ollama" else set())


def test_clamp_scalars_and_clamp_data(m):
    v = m.cfg.vision
    tensors = {t.name: t for t in m.vision.tensors}
    rows = []
    for il in range(v.n_layer):
        for linear, _ in vis.CLIPPED:
            b = f"v.blk.{il}.{linear}."
            lo_in, hi_in, lo_out, hi_out = (float(tensors[b + s].data[0]) for s in vis.CLAMP_SUFFIXES)
            assert np.isfinite([lo_in, hi_in, lo_out, hi_out]).all() and lo_in < 0 < hi_in and lo_out < 0 < hi_out
            rows.append([lo_in, hi_in, lo_out, hi_out])
    if m.cfg.layout == "ollama":
        # Ollama's layout: per layer, per linear (q, k, v, out, gate, up, down), (in_min, in_max, out_min, out_max);
        # then the projector's 4, zero because HF's embed_vision projection has no clamp.
        data = tensors["v.clamp_data"].data
        assert data.dtype == np.float32
        np.testing.assert_array_equal(data, np.array(rows + [[0, 0, 0, 0]], np.float32).reshape(-1))
    else:
        assert "v.clamp_data" not in tensors
    # Clamps really clip: most linears have at least one bound inside the range the test images reach.
    fractions = m.info["clip_fraction"]
    assert sum(max(f) > 0 for f in fractions.values()) >= 15 and max(max(f) for f in fractions.values()) > 0.01
    assert m.info["no_clamp_soft_token_max_abs_diff"] > 0.3


def test_tokenizer_markers(m):
    tokens = field(m.text, "tokenizer.ggml.tokens")
    assert len(tokens) == vis.VOCAB and field(m.text, "tokenizer.ggml.model") == "gemma4"
    for s, i in vis.MARKERS.items():
        assert tokens[i] == s and tokens.count(s) == 1
    types = field(m.text, "tokenizer.ggml.token_type")
    assert all(types[i] == 3 for i in vis.MARKERS.values())  # CONTROL
    assert [str(s) for s in m.gold["marker_names"]] == list(vis.MARKERS)
    assert m.gold["marker_ids"].tolist() == [tokens.index(s) for s in vis.MARKERS]
    assert m.info["markers"] == vis.MARKERS


def test_inputs():
    info = INPUTS_INFO
    assert info["inputs"] == vis.INPUTS and info["cases"] == vis.CASES
    n_pos = min(get_model(n).cfg.vision.n_pos for n in vis.CONFIGS)
    for name in vis.INPUTS:
        budget = int(name.rsplit("_", 1)[1])
        gh, gw = INPUTS[f"{name}_grid"].tolist()
        u8, pos = INPUTS[f"{name}_pixels_u8"], INPUTS[f"{name}_positions"]
        n = gh * gw
        assert gh % 3 == 0 and gw % 3 == 0 and n <= 9 * budget and max(gh, gw) <= n_pos
        assert u8.shape == (n, 768) and u8.dtype == np.uint8 and pos.shape == (n, 2) and pos.dtype == np.int32
        np.testing.assert_array_equal(pos, np.stack([np.arange(n) % gw, np.arange(n) // gw], -1))
        assert u8.std() > 20  # a photograph, not a blank
    # The portrait photo is taller than wide once its EXIF orientation is applied, the landscape one wider.
    assert INPUTS["portrait_70_grid"][0] > INPUTS["portrait_70_grid"][1]
    assert INPUTS["landscape_70_grid"][0] < INPUTS["landscape_70_grid"][1]
    assert info["pair"] == [f"{k}_{vis.PAIR_BUDGET}" for k in vis.PAIR]
    assert len({tuple(INPUTS[f"{n}_grid"]) for n in info["pair"]}) == 2


def image_spans(tokens: np.ndarray) -> list[tuple[int, int]]:
    """(start, length) of each run of <|image|>, checking that <|image>/<image|> enclose it."""
    img = tokens == vis.MARKERS["<|image|>"]
    starts = np.flatnonzero(img & ~np.r_[False, img[:-1]])
    spans = []
    for s in starts:
        n = int(np.argmin(img[s:])) if not img[s:].all() else len(tokens) - s
        assert tokens[s - 1] == vis.MARKERS["<|image>"] and tokens[s + n] == vis.MARKERS["<image|>"]
        spans.append((int(s), n))
    assert (tokens == vis.MARKERS["<|image>"]).sum() == len(spans) == (tokens == vis.MARKERS["<image|>"]).sum()
    return spans


def test_npz(m):
    g, d = m.gold, m.cfg.text.d_model
    vocab = layout.fake_vocab(vis.VOCAB)
    head = [2, 105, vocab.id("user"), layout.NEWLINE_ID]
    tail = [106, layout.NEWLINE_ID, 105, vocab.id("model"), layout.NEWLINE_ID]
    for name in vis.INPUTS:
        gh, gw = INPUTS[f"{name}_grid"].tolist()
        s = g[f"{name}_soft_tokens"]
        assert s.shape == (gh * gw // 9, d) and s.dtype == np.float32 and np.isfinite(s).all()
    for case in vis.CASES + ["pair"]:
        tokens, logits = g[f"{case}_tokens"], g[f"{case}_logits"]
        assert tokens.dtype == np.int32 and tokens[:4].tolist() == head and tokens[-5:].tolist() == tail
        assert logits.shape == (len(tokens), vis.VOCAB) and logits.dtype == np.float32
        assert np.isfinite(logits).all() and np.abs(logits).max() < 30
        spans = image_spans(tokens)
        names = [case] if case != "pair" else m.info["pair"]
        assert [n for _, n in spans] == [len(g[f"{x}_soft_tokens"]) for x in names]
    assert m.info["versions"]["transformers"] == "5.23.0"
    n = INPUTS[f"{m.info['debug_case']}_pixels_u8"].shape[0]
    dv = m.cfg.vision.d
    assert g["debug_patch_embd"].shape == g["debug_inputs_embeds"].shape == (n, dv)
    assert g["debug_layer_out"].shape == (m.cfg.vision.n_layer, n, dv) and g["debug_pooled"].shape == (n // 9, dv)


# --------------------------------------------------------------------------------------------------------------------
# The numpy references against HF's goldens


def test_reference_tower(m):
    trace = {}
    case = m.info["debug_case"]
    soft = m.tower.forward(pixel_values(case), INPUTS[f"{case}_positions"], trace)
    for k in ("patch_embd", "inputs_embeds", "pooled"):  # pooled reaches 68 (x sqrt(d)): float32 rounding 4e-6
        np.testing.assert_allclose(trace[k], m.gold[f"debug_{k}"], rtol=1e-6, atol=REF_ATOL, err_msg=k)
    for il, x in enumerate(trace["layer_out"]):
        np.testing.assert_allclose(x, m.gold["debug_layer_out"][il], rtol=0, atol=REF_ATOL, err_msg=f"layer {il}")
    np.testing.assert_allclose(soft, m.gold[f"{case}_soft_tokens"], rtol=0, atol=REF_ATOL)
    for name in vis.INPUTS:
        np.testing.assert_allclose(m.soft(name), m.gold[f"{name}_soft_tokens"], rtol=0, atol=REF_ATOL, err_msg=name)


@pytest.mark.parametrize("case", vis.CASES + ["pair"])
def test_reference_logits(m, case):
    soft = m.pair_soft() if case == "pair" else m.soft(case)
    logits = m.lm.forward_with(m.gold[f"{case}_tokens"], soft)
    np.testing.assert_allclose(logits, m.gold[f"{case}_logits"], rtol=0, atol=REF_ATOL)


TOWER_MISTAKES = ["no clamps", "patch_embd not permuted", "position tables swapped", "rope x/y swapped", "no v norm",
                  "pooling stride from the height", "no standardize", "pooling without sqrt(d)"]
STANDARDIZE_ONLY = {"no standardize", "pooling without sqrt(d)"}  # without std_bias the RMSNorm cancels sqrt(d)
TEXT_MISTAKES = ["soft tokens scaled by sqrt(d)", "PLE row of <|image|>"]


@pytest.mark.parametrize("what", TOWER_MISTAKES + TEXT_MISTAKES)
def test_fixtures_catch_mistakes(m, what):
    """Each mistake a port can make in the tower or the splice moves the soft tokens or the logits far outside
    REF_ATOL (measured: see the README)."""
    case = "landscape_140"  # a grid that is not square and longer than the text's windows
    tokens = m.gold[f"{case}_tokens"]
    if what in STANDARDIZE_ONLY and not m.cfg.vision.standardize:
        pytest.skip("this model's tower does not standardize")
    if what in TOWER_MISTAKES:
        tower = VisionTower(m.vision_path)
        tower.cache = m.tower.cache  # the dequantised weights (mistakes never write to them)
        tower.mistakes = {what}
        soft = m.soft(case, tower)
        assert np.abs(soft - m.gold[f"{case}_soft_tokens"]).max() > 0.05
    else:
        soft = m.soft(case)
        lm = SplicedGemma4.__new__(SplicedGemma4)
        lm.__dict__.update(m.lm.__dict__)
        lm.mistakes = {what}
        assert np.abs(lm.forward_with(tokens, soft) - m.gold[f"{case}_logits"]).max() > 0.05
