"""The Gemma 4 audio fixtures (tests/fixtures/gemma4_tiny_audio_*) are what tools/make_tiny_gemma4_audio.py and
tests/fixtures/README.md say they are:

- the GGUF files: Ollama's monolithic layout (gemma4.audio.* keys, Ollama's a.* / mm.a.* names, per-linear clamp
  scalars) and llama.cpp's pair (a text-only GGUF plus an mmproj, architecture "clip", projector gemma4a, the
  names of gguf-py's MMPROJ table), with the right shapes, types and data transforms (softplus per_dim_scale,
  squeezed conv_dw);
- every tensor holds exactly the values HF held when the goldens were computed (a sha256 of each, in the npz);
- the tokenizer has the audio markers, the prompts are built from them, the inputs are consistent (the n_soft
  rule, HF's 30 s truncation);
- tests/reference_gemma4_audio.py, reading only the GGUF, plus tests/reference_gemma4.py for the text model,
  reproduces HF's soft tokens, the tower's intermediates and the logits; and the fixtures are sensitive to the
  mistakes a port makes.

CI needs only numpy, gguf and pytest; the torch/transformers environment that made the goldens is not used here.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import wave

import numpy as np
import pytest
from gguf import MODEL_ARCH, MODEL_TENSORS, TENSOR_NAMES, GGMLQuantizationType as Q, GGUFReader, GGUFValueType as V
from gguf import quants

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "fixtures")
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tools"))

import make_synthetic_gguf as layout  # noqa: E402
import make_tiny_gemma4 as tiny  # noqa: E402
import make_tiny_gemma4_audio as aud  # noqa: E402  (torch is only imported inside its generator functions)
import reference_gemma4  # noqa: E402
from reference_gemma4_audio import MISTAKES, GemmaAudioRef  # noqa: E402

# float64 references against float64 goldens stored as float32 (|soft tokens| <= ~12, |logits| <= ~16; the
# intermediates reach ~60): measured 5e-7 / 1e-6.
REF_ATOL = 1e-5


def load_npz(path: str) -> dict:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


INPUTS = load_npz(os.path.join(FIXTURES, aud.PREFIX + "inputs.npz"))
INPUTS_INFO = json.loads(str(INPUTS["info"]))
NAMES = list(aud.CLIPS) + ["long_rest"]  # every input the tower sees


class SplicedGemma4(reference_gemma4.Gemma4):
    """tests/reference_gemma4.py's text model with audio soft tokens spliced in, as HF's Gemma4Model does: at the
    `<|audio|>` positions the input embedding is the soft token itself (no sqrt(d_model)), and the PLE
    token-identity row is token 0's (the pad id); the PLE context term sees the spliced embedding."""

    audio_token = aud.MARKERS["<|audio|>"]
    mistakes: set = set()
    soft: np.ndarray | None = None

    def rows(self, name, ids):
        ids = np.asarray(ids)
        mask = ids == self.audio_token
        if name == "per_layer_token_embd.weight" and "PLE row of <|audio|>" not in self.mistakes:
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


class Model:
    def __init__(self, name: str):
        self.name = name
        self.cfg = aud.CONFIGS[name]
        base = os.path.join(FIXTURES, aud.PREFIX + name)
        self.text_path = base + ".gguf"
        self.audio_path = base + ".gguf" if self.cfg.layout == "ollama" else base + ".mmproj.gguf"
        self.text = GGUFReader(self.text_path)
        self.audio = self.text if self.audio_path == self.text_path else GGUFReader(self.audio_path)
        self.gold = load_npz(base + ".npz")
        self.info = json.loads(str(self.gold["info"]))
        self.specs = aud.audio_specs(self.cfg.audio, self.cfg.text.d_model)
        self._ref = self._lm = None
        self._soft: dict[str, np.ndarray] = {}

    @property
    def ref(self) -> GemmaAudioRef:
        if self._ref is None:
            self._ref = GemmaAudioRef(self.audio_path)
        return self._ref

    @property
    def lm(self) -> SplicedGemma4:
        if self._lm is None:
            self._lm = SplicedGemma4(self.text_path)
        return self._lm

    def soft(self, name: str) -> np.ndarray:
        if name not in self._soft:
            self._soft[name] = self.ref.encode(INPUTS[f"{name}_features"])
        return self._soft[name]


_models: dict[str, Model] = {}


def get_model(name: str) -> Model:
    if name not in _models:
        _models[name] = Model(name)
    return _models[name]


@pytest.fixture(params=sorted(aud.CONFIGS))
def m(request) -> Model:
    return get_model(request.param)


def field(reader: GGUFReader, key: str):
    return reader.fields[key].contents()


def sha(values: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(values, dtype=np.float32).tobytes()).hexdigest()[:16]


def values_of(t) -> np.ndarray:
    return quants.dequantize(t.data, t.tensor_type).reshape(tuple(int(n) for n in reversed(t.shape)))


# --------------------------------------------------------------------------------------------------------------------
# Files, metadata, tensors


def test_file_set():
    files = {f for f in os.listdir(FIXTURES) if f.startswith(aud.PREFIX)}
    expected = {aud.PREFIX + "inputs.npz"}
    for name, cfg in aud.CONFIGS.items():
        expected |= {f"{aud.PREFIX}{name}.gguf", f"{aud.PREFIX}{name}.npz"}
        if cfg.layout == "llamacpp":
            expected.add(f"{aud.PREFIX}{name}.mmproj.gguf")
    assert files == expected
    total = 0
    for f in files | set(aud.CLIP_FILES.values()):
        size = os.path.getsize(os.path.join(FIXTURES, f))
        assert size < 2_500_000, f
        total += size
    assert total < 7_000_000


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
    tower_keys = {k for k in r.fields if k.startswith(("gemma4.audio.", "gemma4.vision."))}
    if m.cfg.layout == "ollama":
        a = m.cfg.audio
        # What Ollama's converter writes (convert_gemma4.go KV): no head_dim, channels, output_proj_dims, mel bins
        want = {"gemma4.audio.block_count": a.n_layer, "gemma4.audio.embedding_length": a.d,
                "gemma4.audio.feed_forward_length": 4 * a.d, "gemma4.audio.attention.head_count": a.n_head,
                "gemma4.audio.conv_kernel_size": 5}
        assert tower_keys == set(want) | {"gemma4.audio.attention.layer_norm_epsilon"}
        for key, value in want.items():
            assert r.fields[key].types == [V.UINT32] and field(r, key) == value, key
        eps = r.fields["gemma4.audio.attention.layer_norm_epsilon"]
        assert eps.types == [V.FLOAT32] and eps.contents() == pytest.approx(1e-6)
    else:
        assert not tower_keys, "llama.cpp's text GGUF has no tower keys"
        assert not any(t.name.startswith(("a.", "mm.", "v.")) for t in r.tensors)


def test_mmproj_metadata():
    for name, cfg in aud.CONFIGS.items():
        if cfg.layout != "llamacpp":
            continue
        r, a = get_model(name).audio, cfg.audio
        assert field(r, "general.architecture") == "clip" and field(r, "general.type") == "mmproj"
        assert field(r, "general.file_type") == tiny.FILE_TYPE[cfg.weights]
        assert field(r, "clip.has_audio_encoder") is True
        assert "clip.has_vision_encoder" not in r.fields and not any(k.startswith("clip.vision.") for k in r.fields)
        # llama.cpp's converter writes the per-modality key; clip.cpp reads clip.projector_type first, then this.
        assert field(r, "clip.audio.projector_type") == "gemma4a" and "clip.projector_type" not in r.fields
        u32 = {"projection_dim": cfg.text.d_model, "embedding_length": a.d, "feed_forward_length": 4 * a.d,
               "block_count": a.n_layer, "attention.head_count": a.n_head, "num_mel_bins": 128}
        for key, value in u32.items():
            assert r.fields["clip.audio." + key].types == [V.UINT32] and field(r, "clip.audio." + key) == value
        assert field(r, "clip.audio.attention.layer_norm_epsilon") == pytest.approx(1e-6)
        assert not any(k.startswith("tokenizer.") for k in r.fields)


def test_tensor_table(m):
    """Every tensor with its name, shape and type, in the layout's names."""
    want = {s.name: (s.ne, tiny.weight_type(m.cfg.weights, s, {})) for s in layout.tensor_specs(m.cfg.text)}
    awant = {s.gguf_name(m.cfg.layout): (s.ne, aud.audio_type(m.cfg, s)) for s in m.specs}
    assert len(awant) == len(m.specs)
    readers = [(m.text, want), (m.audio, awant)] if m.audio is not m.text else [(m.text, want | awant)]
    for reader, table in readers:
        got = {t.name: (tuple(int(n) for n in t.shape), t.tensor_type) for t in reader.tensors}
        assert got == table
    a, L = m.cfg.audio, m.cfg.audio.n_layer
    n_clamp = L * len(aud.CLIPPED) * 4
    assert sum(s.kind == "clamp" for s in m.specs) == n_clamp
    if m.cfg.layout == "ollama":
        assert set(awant) >= {"a.conv1d.0.weight", "a.conv1d.1.norm.weight", "a.pre_encode.out.weight",
                              "mm.a.fc.weight", "mm.a.fc.bias", "mm.a.input_projection.weight",
                              "a.blk.0.linear_pos.weight", "a.blk.1.layer_pre_norm.weight", "a.blk.0.ln1.weight"}
        assert {t for _, t in awant.values()} == {Q.F32}
    else:
        mmproj_names = {TENSOR_NAMES[t] for t in MODEL_TENSORS[MODEL_ARCH.MMPROJ]}
        for s in m.specs:
            base = s.lc_name.rsplit(".", 1)[0]  # without .weight / .bias / .input_min ...
            generic = ".".join("{bid}" if part.isdecimal() else part for part in base.split("."))
            assert generic in mmproj_names, s.lc_name
        # llama.cpp's converter types: convs, the SSCP linear and conv_dw F32; the other matrices Q8_0
        assert awant["a.input_projection.weight"] == ((a.sscp_in, a.d), Q.F32)
        assert awant["a.blk.0.conv_dw.weight"] == ((5, a.d), Q.F32)
        assert awant["a.conv1d.1.weight"] == ((3, 3, 128, a.c1), Q.F32)
        for n in ("a.pre_encode.out.weight", "mm.a.input_projection.weight", "a.blk.1.attn_k_rel.weight",
                  "a.blk.0.ffn_up_1.weight", "a.blk.1.conv_pw1.weight", "a.blk.0.attn_out.weight"):
            assert awant[n][1] == Q.Q8_0, n
        assert awant["a.pre_encode.out.bias"] == ((a.out,), Q.F32)
    assert awant[aud.audio_specs(a, 1)[0].gguf_name(m.cfg.layout)][0] == (3, 3, 1, 128)


def test_tensors_hold_the_goldens_values(m):
    """Dequantised, every tensor is bit for bit what HF held when the goldens were computed (per_dim_scale: the
    stored softplus value; HF's parameter is its inverse)."""
    hashes = m.info["tensor_sha256_16"]
    to_ollama = {s.gguf_name(m.cfg.layout): s.name for s in m.specs}
    seen = set()
    for reader in {id(m.text): m.text, id(m.audio): m.audio}.values():
        for t in reader.tensors:
            name = to_ollama.get(t.name, t.name)
            assert sha(values_of(t)) == hashes[name], t.name
            seen.add(name)
    assert seen == set(hashes)


def test_data_transforms(m):
    """per_dim_scale is stored after softplus (positive, away from HF's init 0.693); conv_dw is [d, K]."""
    t = {x.name: x for x in m.audio.tensors}
    for il in range(m.cfg.audio.n_layer):
        pds = values_of(t[f"a.blk.{il}.per_dim_scale.weight"])
        assert pds.shape == (m.cfg.audio.head_dim,) and (pds > 0.5).all() and pds.std() > 0.2
        assert values_of(t[f"a.blk.{il}.conv_dw.weight"]).shape == (m.cfg.audio.d, 5)


def test_clamp_scalars(m):
    t = {x.name: x for x in m.audio.tensors}
    for s in m.specs:
        if s.kind != "clamp" or not s.name.endswith("input_min"):
            continue
        base = s.gguf_name(m.cfg.layout).rsplit(".", 1)[0]
        lo_in, hi_in, lo_out, hi_out = (float(t[f"{base}.{x}"].data[0]) for x in aud.CLAMP_SUFFIXES)
        assert np.isfinite([lo_in, hi_in, lo_out, hi_out]).all() and lo_in < 0 < hi_in and lo_out < 0 < hi_out
    fractions = m.info["clip_fraction"]
    assert len(fractions) == m.cfg.audio.n_layer * len(aud.CLIPPED)
    assert sum(max(f) > 0 for f in fractions.values()) >= 15 and max(max(f) for f in fractions.values()) > 0.01
    assert m.info["no_clamp_soft_token_max_abs_diff"] > 0.3


def test_tokenizer_markers(m):
    tokens = field(m.text, "tokenizer.ggml.tokens")
    assert len(tokens) == aud.VOCAB and field(m.text, "tokenizer.ggml.model") == "gemma4"
    for s, i in aud.MARKERS.items():
        assert tokens[i] == s and tokens.count(s) == 1
    assert (tokens.index("<|audio>"), tokens.index("<|audio|>"), tokens.index("<audio|>")) == (21, 23, 25)
    types = field(m.text, "tokenizer.ggml.token_type")
    assert all(types[i] == 3 for i in aud.MARKERS.values())  # CONTROL
    assert [str(s) for s in m.gold["marker_names"]] == list(aud.MARKERS)
    assert m.gold["marker_ids"].tolist() == [tokens.index(s) for s in aud.MARKERS]


def test_inputs():
    info = INPUTS_INFO
    assert info["clips"] == list(aud.CLIPS)
    for name in NAMES:
        x, mask = INPUTS[f"{name}_features"], INPUTS[f"{name}_mask"]
        n_samples, n = info["n_samples"][name], len(x)
        assert x.dtype == np.float32 and x.shape == (n, 128) and np.isfinite(x).all()
        assert mask.dtype == bool and mask[:n].all() and not mask[n:].any() and len(mask) - n <= 1
        # F = (min(samples, 480000) - 161) // 160 + 1 frames; n_soft = ceil(ceil(F / 2) / 2)
        assert n == (min(n_samples, 480000) - 161) // 160 + 1
        assert info["n_soft"][name] == aud.n_soft_tokens(n_samples) == -(-(-(-n // 2)) // 2)
        assert x.min() >= np.log(1e-3) - 1e-6  # log(mel + 1e-3)
    for clip, rel in aud.CLIP_FILES.items():
        with wave.open(os.path.join(FIXTURES, rel)) as w:
            assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
            assert w.getnframes() == info["n_samples"][clip]
    assert info["n_soft"] == {"short": 8, "medium": 71, "long": 750, "long_rest": 63}
    assert info["n_samples"]["long"] > 480000 and len(INPUTS["long_features"]) == 2999  # HF keeps the first 30 s
    assert info["n_samples"]["long_rest"] == info["n_samples"]["long"] - 480000


def audio_spans(tokens: np.ndarray) -> list[tuple[int, int]]:
    """(start, length) of each run of <|audio|>, checking that <|audio>/<audio|> enclose it."""
    au = tokens == aud.MARKERS["<|audio|>"]
    starts = np.flatnonzero(au & ~np.r_[False, au[:-1]])
    spans = []
    for s in starts:
        n = int(np.argmin(au[s:])) if not au[s:].all() else len(tokens) - s
        assert tokens[s - 1] == aud.MARKERS["<|audio>"] and tokens[s + n] == aud.MARKERS["<audio|>"]
        spans.append((int(s), n))
    assert (tokens == aud.MARKERS["<|audio>"]).sum() == len(spans) == (tokens == aud.MARKERS["<audio|>"]).sum()
    return spans


def test_npz(m):
    g, d, a = m.gold, m.cfg.text.d_model, m.cfg.audio
    vocab = layout.fake_vocab(aud.VOCAB)
    head = [2, 105, vocab.id("user"), layout.NEWLINE_ID]
    tail = [106, layout.NEWLINE_ID, 105, vocab.id("model"), layout.NEWLINE_ID]
    for name in NAMES:
        s = g[f"{name}_soft_tokens"]
        assert s.shape == (INPUTS_INFO["n_soft"][name], d) and s.dtype == np.float32 and np.isfinite(s).all()
    assert m.info["prompt_clips"] == list(aud.PROMPT_CLIPS[m.name])
    for clip in m.info["prompt_clips"]:
        tokens, logits = g[f"{clip}_tokens"], g[f"{clip}_logits"]
        assert tokens.dtype == np.int32 and tokens[:4].tolist() == head and tokens[-5:].tolist() == tail
        assert logits.shape == (len(tokens), aud.VOCAB) and logits.dtype == np.float32
        assert np.isfinite(logits).all() and np.abs(logits).max() < 30
        assert [n for _, n in audio_spans(tokens)] == [INPUTS_INFO["n_soft"][clip]]
        assert audio_spans(tokens)[0][0] == 5  # <|audio> right after <bos><|turn>user\n
    assert m.info["versions"]["transformers"] == "5.23.0"
    n = INPUTS_INFO["n_soft"][m.info["debug_clip"]]
    f2 = -(-len(INPUTS[f"{m.info['debug_clip']}_features"]) // 2)
    assert g["debug_sscp_conv1"].shape == (n, 32, a.c1) and g["debug_sscp"].shape == (n, a.d) and f2 > n
    for k in ("ffn1", "attn", "lconv", "ffn2", "layer_out"):
        assert g[f"debug_{k}"].shape == (a.n_layer, n, a.d)
    assert g["debug_output_proj"].shape == (n, a.out)


# --------------------------------------------------------------------------------------------------------------------
# The numpy references against HF's goldens


def test_reference_tower(m):
    trace = {}
    clip = m.info["debug_clip"]
    soft = m.ref.encode(INPUTS[f"{clip}_features"], trace)
    for k in ("sscp_conv1", "sscp", "ffn1", "attn", "lconv", "ffn2", "layer_out", "output_proj"):
        np.testing.assert_allclose(trace[k], m.gold[f"debug_{k}"], rtol=1e-6, atol=REF_ATOL, err_msg=k)
    np.testing.assert_allclose(soft, m.gold[f"{clip}_soft_tokens"], rtol=0, atol=REF_ATOL)
    for name in NAMES:
        np.testing.assert_allclose(m.soft(name), m.gold[f"{name}_soft_tokens"], rtol=0, atol=REF_ATOL, err_msg=name)
    # attention: each query's 12 offsets, nothing before the clip's start
    p = trace["attn_probs"]
    assert p.shape == (m.cfg.audio.n_layer, m.cfg.audio.n_head, len(soft), 12)
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=0, atol=1e-12)
    assert (p[:, :, 0, 1:] == 0).all()


@pytest.mark.parametrize("clip", aud.CLIPS)
def test_reference_logits(m, clip):
    if clip not in m.info["prompt_clips"]:
        pytest.skip(f"the {m.name} goldens have no {clip} prompt")
    logits = m.lm.forward_with(m.gold[f"{clip}_tokens"], m.soft(clip))
    np.testing.assert_allclose(logits, m.gold[f"{clip}_logits"], rtol=0, atol=REF_ATOL)


TEXT_MISTAKES = ["soft tokens scaled by sqrt(d)", "PLE row of <|audio|>"]


@pytest.mark.parametrize("what", list(MISTAKES) + TEXT_MISTAKES)
def test_fixtures_catch_mistakes(m, what):
    """Each mistake a port can make in the tower or the splice moves the soft tokens or the logits far outside
    REF_ATOL (measured: see the README)."""
    clip = "medium"  # 71 tokens: several attention chunks
    if what in MISTAKES:
        ref = GemmaAudioRef.__new__(GemmaAudioRef)
        ref.__dict__.update(m.ref.__dict__)
        ref.mistakes = {what}
        soft = ref.encode(INPUTS[f"{clip}_features"])
        assert np.abs(soft - m.gold[f"{clip}_soft_tokens"]).max() > 0.05
    else:
        lm = SplicedGemma4.__new__(SplicedGemma4)
        lm.__dict__.update(m.lm.__dict__)
        lm.mistakes = {what}
        assert np.abs(lm.forward_with(m.gold[f"{clip}_tokens"], m.soft(clip)) - m.gold[f"{clip}_logits"]).max() > 0.05
