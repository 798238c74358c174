"""The Gemma 4 test fixtures and the synthetic E2B writer.

- tests/fixtures/gemma4_tiny_*.gguf are what tools/make_tiny_gemma4.py says they are: Ollama's metadata keys with
  the right value types, every tensor with the right name, shape and type, the fake tokenizer.
- The .npz goldens are consistent: shapes agree with the GGUF, and the KV-cache decode logits equal the prefill ones.
- tests/reference_gemma4.py, reading only the GGUF, reproduces HF's logits and per-layer activations, by full
  prefill and by incremental decode; and the fixtures are sensitive to the details a port gets wrong.
- tools/make_synthetic_gguf.py plans E2B's exact tensor table and writes a valid (scaled-down) file.

CI needs only numpy, gguf and pytest: the torch/transformers environment that made the goldens is not used here.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import sys

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q, GGUFReader, GGUFValueType as V, quants

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "fixtures")
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tools"))

import make_synthetic_gguf as layout  # noqa: E402
import make_tiny_gemma4 as tiny  # noqa: E402  (torch is only imported inside its generator functions)
import reference_gemma4  # noqa: E402

# The goldens are float64 HF results stored as float32, and the reference computes in float64, so the two agree to
# float32 rounding of the logits (measured: <= 9.4e-7 at |logit| <= 26). 1e-5 keeps a 10x margin; HF's own
# float32 run lands 7e-6 .. 2.3e-5 from the goldens (hf_float32_max_abs_diff in each .npz).
REF_ATOL = 1e-5


class Fixture:
    def __init__(self, name: str):
        self.name = name
        self.cfg = tiny.CONFIGS[name]
        self.dims = self.cfg.dims
        self.path = os.path.join(FIXTURES, f"gemma4_tiny_{name}.gguf")
        self.reader = GGUFReader(self.path)
        with np.load(self.path[:-5] + ".npz") as z:
            self.gold = {k: z[k] for k in z.files}
        self.info = json.loads(str(self.gold["info"]))
        self._model = None

    @property
    def model(self) -> reference_gemma4.Gemma4:
        if self._model is None:
            self._model = reference_gemma4.Gemma4(self.path)
        return self._model

    def field(self, key: str):
        return self.reader.fields[key].contents()


_fixtures: dict[str, Fixture] = {}


@pytest.fixture(params=sorted(tiny.CONFIGS))
def fx(request) -> Fixture:
    if request.param not in _fixtures:
        _fixtures[request.param] = Fixture(request.param)
    return _fixtures[request.param]


def test_fixture_set_is_complete():
    # made by make_tiny_gemma4_vision.py / _audio.py, and the MoE configs (tests/test_fixtures_moe.py checks those)
    towers = ("gemma4_tiny_vision_", "gemma4_tiny_audio_", "gemma4_tiny_moe_")
    files = {f for f in os.listdir(FIXTURES) if f.startswith("gemma4_tiny_") and not f.startswith(towers)}
    assert files == {f"gemma4_tiny_{n}.{ext}" for n in tiny.CONFIGS for ext in ("gguf", "npz")}
    for f in files:
        assert os.path.getsize(os.path.join(FIXTURES, f)) < 2_000_000, f


# --------------------------------------------------------------------------------------------------------------------
# The GGUF files


def expected_keys(d: layout.Gemma4Dims) -> dict[str, tuple[list, object]]:
    """gemma4.md section 2.1's key table: key -> (GGUF value types, value)."""
    u32, f32 = [V.UINT32], [V.FLOAT32]
    return {
        "gemma4.block_count": (u32, d.n_layer),
        "gemma4.context_length": (u32, d.context_length),
        "gemma4.embedding_length": (u32, d.d_model),
        "gemma4.feed_forward_length": ([V.ARRAY, V.UINT32], [d.n_ff_layer(i) for i in range(d.n_layer)]),
        "gemma4.attention.head_count": (u32, d.n_head),
        "gemma4.attention.head_count_kv": (u32, d.n_kv_head),
        "gemma4.attention.key_length": (u32, d.head_dim_full),
        "gemma4.attention.value_length": (u32, d.head_dim_full),
        "gemma4.attention.key_length_swa": (u32, d.head_dim_swa),
        "gemma4.attention.value_length_swa": (u32, d.head_dim_swa),
        "gemma4.attention.layer_norm_rms_epsilon": (f32, pytest.approx(1e-6)),
        "gemma4.attention.sliding_window": (u32, d.sliding_window),
        "gemma4.attention.sliding_window_pattern": ([V.ARRAY, V.BOOL], [d.is_swa(i) for i in range(d.n_layer)]),
        "gemma4.attention.shared_kv_layers": (u32, d.n_kv_shared),
        "gemma4.rope.freq_base": (f32, 1e6),
        "gemma4.rope.freq_base_swa": (f32, 1e4),
        "gemma4.rope.dimension_count": (u32, d.head_dim_full),
        "gemma4.rope.dimension_count_swa": (u32, d.head_dim_swa),
        "gemma4.final_logit_softcapping": (f32, 30.0),
        "gemma4.embedding_length_per_layer_input": (u32, d.ple_dim),
    }


def check_metadata(reader: GGUFReader, dims: layout.Gemma4Dims):
    assert reader.fields["general.architecture"].contents() == "gemma4"
    for key, (types, value) in expected_keys(dims).items():
        assert key in reader.fields, key
        assert reader.fields[key].types == types, key
        assert reader.fields[key].contents() == value, key


def check_tensors(reader: GGUFReader, dims: layout.Gemma4Dims, types: dict[str, Q]):
    specs = layout.tensor_specs(dims)
    got = {t.name: t for t in reader.tensors}
    assert set(got) == {s.name for s in specs}
    for s in specs:
        t = got[s.name]
        assert tuple(int(n) for n in t.shape) == s.ne, s.name
        assert t.tensor_type == types[s.name], s.name


def test_metadata(fx):
    check_metadata(fx.reader, fx.dims)
    assert fx.field("general.file_type") == tiny.FILE_TYPE[fx.cfg.weights]
    # The llama.cpp donor rule holds: the first shared layer follows a global layer that follows a sliding one.
    fs = fx.dims.first_shared
    pattern = fx.field("gemma4.attention.sliding_window_pattern")
    assert pattern[fs - 1] is False and pattern[fs - 2] is True


def test_tensors(fx):
    specs = layout.tensor_specs(fx.dims)
    q4_k_m = layout.q4_k_m_types(specs)
    check_tensors(fx.reader, fx.dims, {s.name: tiny.weight_type(fx.cfg.weights, s, q4_k_m) for s in specs})
    rope_freqs = fx.model.w("rope_freqs.weight")
    n_rot = int(fx.dims.head_dim_full * 0.25 / 2)
    assert (rope_freqs[:n_rot] == 1).all() and (rope_freqs[n_rot:] == np.float32(1e30)).all()


def test_weight_types_are_exercised():
    """Between them the fixtures cover every type the engine must load for Ollama's E2B/E4B tags."""
    seen = set()
    for name in tiny.CONFIGS:
        seen |= {t.tensor_type for t in GGUFReader(os.path.join(FIXTURES, f"gemma4_tiny_{name}.gguf")).tensors}
    assert seen == {Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_K, Q.Q6_K, Q.Q5_0}


def test_tokenizer(fx):
    tokens = fx.field("tokenizer.ggml.tokens")
    assert fx.field("tokenizer.ggml.model") == "gemma4"
    assert len(tokens) == len(fx.field("tokenizer.ggml.scores")) == len(fx.field("tokenizer.ggml.token_type"))
    assert len(tokens) == fx.dims.n_vocab
    assert [tokens[i] for i in (0, 1, 2, 3, 105, 106, 107)] == ["<pad>", "<eos>", "<bos>", "<unk>", "<|turn>",
                                                                 "<turn|>", "\n"]
    assert (fx.field("tokenizer.ggml.bos_token_id"), fx.field("tokenizer.ggml.eos_token_id")) == (2, 1)
    assert tokens[256] == "<0x00>" and tokens[511] == "<0xFF>"
    # every merge joins two existing pieces into a third
    vocab = set(tokens)
    for merge in fx.field("tokenizer.ggml.merges"):
        a, b = merge.split(" ")
        assert a in vocab and b in vocab and a + b in vocab, merge


# --------------------------------------------------------------------------------------------------------------------
# The goldens


def test_npz_shapes(fx):
    g, d = fx.gold, fx.dims
    T = len(g["tokens"])
    assert T == fx.cfg.n_tokens > d.sliding_window, "the prompt must run past the sliding window"
    assert g["tokens"].dtype == np.int32 and g["tokens"].min() >= 0 and g["tokens"].max() < d.n_vocab
    assert int(g["decode_prefix"]) == fx.info["decode_prefix"] == fx.cfg.decode_prefix
    shapes = {"logits": (T, d.n_vocab), "decode_logits": (T, d.n_vocab), "embed": (T, d.d_model),
              "per_layer_inputs": (T, d.n_layer, d.ple_dim), "layer_out": (d.n_layer, T, d.d_model),
              "final_norm": (T, d.d_model)}
    for key, shape in shapes.items():
        assert g[key].shape == shape and g[key].dtype == np.float32, key
        assert np.isfinite(g[key]).all(), key
    assert np.abs(g["logits"]).max() < 30.0  # soft-capped
    assert fx.info["versions"]["transformers"] == "5.23.0"


def test_decode_goldens_match_prefill(fx):
    """HF through its KV cache (one token at a time, sliding layers keeping only window-1 keys) and HF's full
    prefill agree: in float64 they are equal to float32 storage rounding."""
    np.testing.assert_allclose(fx.gold["decode_logits"], fx.gold["logits"], rtol=0, atol=REF_ATOL)


# --------------------------------------------------------------------------------------------------------------------
# The numpy reference against HF


def test_reference_prefill(fx):
    trace = {}
    logits = fx.model.forward(fx.gold["tokens"], trace=trace)
    np.testing.assert_allclose(logits, fx.gold["logits"], rtol=0, atol=REF_ATOL)
    np.testing.assert_allclose(trace["embed"], fx.gold["embed"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(trace["per_layer_inputs"], fx.gold["per_layer_inputs"], rtol=1e-6, atol=1e-6)
    for il, x in enumerate(trace["layer_out"]):
        np.testing.assert_allclose(x, fx.gold["layer_out"][il], rtol=0, atol=REF_ATOL, err_msg=f"layer {il}")
    np.testing.assert_allclose(trace["final_norm"], fx.gold["final_norm"], rtol=0, atol=REF_ATOL)


def test_reference_decode(fx):
    """The reference's incremental path (prefill a few tokens, then one at a time) against HF's KV-cache decode."""
    tokens, prefix = fx.gold["tokens"], int(fx.gold["decode_prefix"])
    cache = fx.model.new_cache()
    steps = [fx.model.forward(tokens[:prefix], cache)]
    steps += [fx.model.forward(tokens[t:t + 1], cache) for t in range(prefix, len(tokens))]
    assert cache.length == len(tokens)
    np.testing.assert_allclose(np.concatenate(steps), fx.gold["decode_logits"], rtol=0, atol=REF_ATOL)


def _mutate(model: reference_gemma4.Gemma4, what: str) -> None:
    c = model.cfg
    if what == "no sliding window":
        c.window = 1 << 30
    elif what == "no rope freq factors":
        model._cache["rope_freqs.weight"] = np.ones(c.head_dim // 2)
    elif what == "sliding rope base 1e6":
        c.rope_base_swa = 1e6
    elif what == "no soft-cap":
        c.softcap = 1e9
    elif what == "(1+w) norms":
        for t in model.reader.tensors:
            if t.name.endswith("norm.weight"):
                model._cache[t.name] = 1.0 + model.w(t.name)
    elif what == "no layer_output_scale":
        for il in range(c.n_layer):
            model._cache[f"blk.{il}.layer_output_scale.weight"] = np.ones(1)
    elif what == "no PLE":
        model.per_layer_inputs = lambda tokens, x: np.zeros((len(tokens), c.n_layer, c.ple_dim))


@pytest.mark.parametrize("what", ["no sliding window", "no rope freq factors", "sliding rope base 1e6", "no soft-cap",
                                  "(1+w) norms", "no layer_output_scale", "no PLE"])
def test_fixtures_catch_mistakes(fx, what):
    """Each classic porting mistake moves the logits far outside any sane tolerance (measured: 0.54 to 23; 1e-3 of
    relative noise in every matmul moves them by 0.03 to 0.25), so the fixtures cannot pass an engine that makes
    it. The subtlest is ignoring rope_freqs: the prompts are short, so the slow frequencies it wrongly turns on
    have rotated little."""
    fx.model.forward(fx.gold["tokens"][:1])  # dequantizes every weight once, into fx.model's cache
    model = copy.copy(fx.model)  # shares the reader; its own config and weight cache to mutate
    model.cfg, model._cache = dataclasses.replace(fx.model.cfg), dict(fx.model._cache)
    _mutate(model, what)
    assert np.abs(model.forward(fx.gold["tokens"]) - fx.gold["logits"]).max() > 0.3


# --------------------------------------------------------------------------------------------------------------------
# Generators


@pytest.mark.parametrize("qtype", [Q.Q4_K, Q.Q6_K])
def test_k_quantizers_round_trip(qtype):
    """make_tiny_gemma4's Q4_K / Q6_K packers against gguf's dequantizer: bit-layout mistakes would show up as
    errors of order 1, not the few percent of 4/6-bit rounding; zero blocks stay zero."""
    rng = np.random.default_rng(0)
    x = rng.normal(0, 0.05, (16, 512)).astype(np.float32)
    x[3, :256] = 0
    x[5] = np.abs(x[5])
    data, values = tiny.roundtrip(x, qtype)  # asserts the error bound itself
    assert data.shape == (16, 2 * {Q.Q4_K: 144, Q.Q6_K: 210}[qtype]) and data.dtype == np.uint8
    assert (values[3, :256] == 0).all()


def test_e2b_plan():
    """The full-size synthetic plan: E2B's tensor table (gemma4.md section 2.1) and the Ollama Q4_K_M file size."""
    specs = {s.name: s for s in layout.tensor_specs(layout.E2B)}
    types = layout.q4_k_m_types(list(specs.values()))
    ne = {n: s.ne for n, s in specs.items()}
    assert ne["token_embd.weight"] == (1536, 262144) and types["token_embd.weight"] == Q.Q6_K
    assert ne["per_layer_token_embd.weight"] == (8960, 262144) and types["per_layer_token_embd.weight"] == Q.BF16
    assert ne["per_layer_model_proj.weight"] == (1536, 8960) and types["per_layer_model_proj.weight"] == Q.Q4_K
    assert ne["rope_freqs.weight"] == (256,)
    assert ne["blk.0.attn_q.weight"] == (1536, 2048) and ne["blk.4.attn_q.weight"] == (1536, 4096)
    assert ne["blk.0.attn_k.weight"] == (1536, 256) and ne["blk.14.attn_v.weight"] == (1536, 512)
    assert "blk.15.attn_k.weight" not in ne and "blk.15.attn_k_norm.weight" not in ne
    assert ne["blk.4.attn_output.weight"] == (4096, 1536) and ne["blk.4.attn_k_norm.weight"] == (512,)
    assert ne["blk.14.ffn_gate.weight"] == (1536, 6144) and ne["blk.15.ffn_down.weight"] == (12288, 1536)
    assert ne["blk.0.inp_gate.weight"] == (1536, 256) and ne["blk.0.proj.weight"] == (256, 1536)
    assert ne["blk.34.layer_output_scale.weight"] == (1,)
    assert len(specs) == 541
    assert sum(t == Q.Q6_K for t in types.values()) == 25  # the tied head, 7 attn_v, 17 ffn_down
    total = sum(layout.tensor_nbytes(s.ne, types[n]) for n, s in specs.items())
    assert 6.14e9 < total < 6.16e9  # recipes' estimate: 4698 MB PLE + 1124 MB blocks + 330 MB head


def test_synthetic_small(tmp_path):
    """A 10-layer E2B (5 of them KV-shared) with a 512-token vocabulary: about 320 MB, a couple of seconds."""
    dims = layout.scaled_e2b(n_layer=10, n_vocab=512)
    path = str(tmp_path / "e2b-small.gguf")
    size = layout.write_synthetic(path, dims, seed=1)
    assert size == os.path.getsize(path)
    r = GGUFReader(path)
    check_metadata(r, dims)
    assert r.fields["gemma4.vision.block_count"].contents() == 16  # the towers' keys are there, not their tensors
    assert r.fields["tokenizer.ggml.model"].contents() == "llama"  # as in Ollama's blobs
    specs = layout.tensor_specs(dims)
    check_tensors(r, dims, layout.q4_k_m_types(specs))
    by_name = {t.name: t for t in r.tensors}
    for name in ["token_embd.weight", "per_layer_token_embd.weight", "blk.0.attn_q.weight", "blk.0.attn_v.weight",
                 "blk.9.ffn_down.weight", "blk.9.layer_output_scale.weight", "output_norm.weight"]:
        t = by_name[name]
        x = quants.dequantize(t.data[:64], t.tensor_type)
        assert np.isfinite(x).all() and np.abs(x).max() < 1.6 and (x.size == 1 or x.std() > 0), name
    ple = quants.dequantize(by_name["per_layer_token_embd.weight"].data[:8], Q.BF16)
    assert 0.02 < ple.std() < 0.06
    # Random k-quant blocks are centred like trained weights, with a std near 1/sqrt(d_model), so the random model
    # is not chaotic (see make_synthetic_gguf.random_q4_k).
    for name in ["blk.0.attn_q.weight", "blk.0.ffn_down.weight"]:
        w = quants.dequantize(by_name[name].data[:64], by_name[name].tensor_type)
        assert abs(w.mean()) < 1e-3 and 0.02 < w.std() < 0.03 and np.abs(w.reshape(-1, 32).mean(-1)).max() < 0.03
