"""The Gemma 4 MoE (26B-A4B-like) and DiffusionGemma fixtures are what tools/make_tiny_gemma4.py,
tools/make_tiny_diffusion_gemma.py and tests/fixtures/README.md say they are:

- gemma4_tiny_moe_*.gguf: Ollama's gemma4 keys with the MoE ones (expert_count, expert_used_count,
  expert_feed_forward_length, a per-layer head_count_kv), every tensor with its name, shape and type (no PLE
  tensors, no attn_v on global layers, the 3-D expert tensors, an F32 router);
- diffusion_gemma_tiny.gguf: the same layout under architecture "diffusion-gemma", plus the encoder's output scales,
  the self-conditioning MLP and the sampler's settings;
- the goldens are consistent with the files: in plain numpy, from the GGUF's weights and the stored residual after
  attention, each layer's dense FFN + routed experts + output scale gives the stored layer output, the router
  picks the stored experts, the tied head gives the stored logits; for DiffusionGemma also the self-conditioning
  input, layer 0's K/V and the global layer's V (= its K projection), and the sampler's recorded steps replay
  (acceptance rule, renoise, stop rule) from the stored draws.

These checks read only the fixtures; the torch/transformers environment that made them is not used (CI needs only
numpy, gguf and pytest). The attention half of the layers is left to the engine's end-to-end parity.
"""

from __future__ import annotations

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
import make_tiny_diffusion_gemma as dg  # noqa: E402  (torch is only imported inside its generator functions)
import make_tiny_gemma4 as tiny  # noqa: E402

# The goldens are float64 results stored as float32 and these checks recompute one layer (or one step) in float64
# from those float32 inputs: the inputs' rounding (2^-24 relative) passes through RMSNorms and matmuls that keep
# the scale, so outputs of magnitude up to ~14 agree to 9e-7 (measured). 2e-5 leaves a margin; every mistake tried
# below moves them by 0.1 or more.
ATOL = 2e-5


def load_npz(path: str) -> dict:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


class Weights:
    """A GGUF's tensors, dequantized to float64 in numpy (row-major, the reverse of ne) shape, on demand."""

    def __init__(self, path: str):
        self.reader = GGUFReader(path)
        self.tensors = {t.name: t for t in self.reader.tensors}
        self._cache: dict[str, np.ndarray] = {}

    def __call__(self, name: str) -> np.ndarray:
        if name not in self._cache:
            t = self.tensors[name]
            shape = tuple(reversed([int(n) for n in t.shape]))
            self._cache[name] = quants.dequantize(t.data, t.tensor_type).reshape(shape).astype(np.float64)
        return self._cache[name]

    def field(self, key: str):
        return self.reader.fields[key].contents()


def rms_norm(x, w=None, eps=1e-6):
    y = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)
    return y if w is None else y * w


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def route(w: Weights, il: int, r: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The router on the residual after attention r [T, D]: RMSNorm without weight, x ffn_gate_inp.scale /
    sqrt(D), ffn_gate_inp, softmax, the k largest, renormalised, x ffn_down_exps.scale. -> (ids, weights) [T, k]."""
    b = f"blk.{il}."
    x = rms_norm(r) * w(b + "ffn_gate_inp.scale") / np.sqrt(r.shape[-1])
    p = softmax(x @ w(b + "ffn_gate_inp.weight").T)
    ids = np.argsort(-p, axis=-1, kind="stable")[:, :k]
    top = np.take_along_axis(p, ids, -1)
    return ids, top / top.sum(-1, keepdims=True) * w(b + "ffn_down_exps.scale")[ids]


def ffn_half(w: Weights, il: int, r: np.ndarray, k: int, scale_name: str = "layer_output_scale.weight",
             swap_gate_up: bool = False) -> np.ndarray:
    """The second half of a 26B-A4B layer from the residual after attention r [T, D]: the dense FFN
    (ffn_norm, post_ffw_norm_1) plus the routed experts (pre_ffw_norm_2, post_ffw_norm_2), post_ffw_norm over the
    sum, the residual, x the layer's output scale."""
    b = f"blk.{il}."
    x1 = rms_norm(r, w(b + "ffn_norm.weight"))
    dense = (gelu_tanh(x1 @ w(b + "ffn_gate.weight").T) * (x1 @ w(b + "ffn_up.weight").T)) @ w(b + "ffn_down.weight").T
    ids, weights = route(w, il, r, k)
    x2 = rms_norm(r, w(b + "pre_ffw_norm_2.weight"))
    gate_up, down = w(b + "ffn_gate_up_exps.weight"), w(b + "ffn_down_exps.weight")  # [E, 2ff, D], [E, D, ff]
    moe = np.zeros_like(r)
    for t in range(len(r)):
        for e, g in zip(ids[t], weights[t]):
            gate, up = np.split(gate_up[e] @ x2[t], 2)  # each expert's gate rows, then its up rows
            if swap_gate_up:
                gate, up = up, gate
            moe[t] += g * (down[e] @ (gelu_tanh(gate) * up))
    mixed = rms_norm(dense, w(b + "post_ffw_norm_1.weight")) + rms_norm(moe, w(b + "post_ffw_norm_2.weight"))
    return (r + rms_norm(mixed, w(b + "post_ffw_norm.weight"))) * w(b + scale_name)


def head(w: Weights, final_norm: np.ndarray, cap: float = 30.0) -> np.ndarray:
    return cap * np.tanh(final_norm @ w("token_embd.weight").T / cap)


# --------------------------------------------------------------------------------------------------------------------
# The files


def test_fixture_files():
    """Every MoE config has its GGUF and npz, DiffusionGemma its GGUF and oracle; each under 1 MB, 4 MB together."""
    moe = {f for f in os.listdir(FIXTURES) if f.startswith("gemma4_tiny_moe_")}
    assert moe == {f"gemma4_tiny_{n}.{ext}" for n in tiny.MOE_CONFIGS for ext in ("gguf", "npz")}
    files = sorted(moe) + ["diffusion_gemma_tiny.gguf", "diffusion_gemma_tiny_oracle.npz"]
    sizes = [os.path.getsize(os.path.join(FIXTURES, f)) for f in files]
    assert max(sizes) < 1_000_000 and sum(sizes) < 4_000_000, dict(zip(files, sizes))


class MoeFixture:
    def __init__(self, name: str):
        self.cfg = tiny.MOE_CONFIGS[name]
        self.dims = self.cfg.dims
        path = os.path.join(FIXTURES, f"gemma4_tiny_{name}")
        self.w = Weights(path + ".gguf")
        self.gold = load_npz(path + ".npz")
        self.info = json.loads(str(self.gold["info"]))


_moe: dict[str, MoeFixture] = {}


@pytest.fixture(params=sorted(tiny.MOE_CONFIGS))
def fx(request) -> MoeFixture:
    if request.param not in _moe:
        _moe[request.param] = MoeFixture(request.param)
    return _moe[request.param]


def expected_keys(d: layout.Gemma4Dims, arch: str) -> dict[str, tuple[list, object]]:
    """gemma4's text keys for 26B-A4B-like layers: key -> (GGUF value types, value)."""
    u32, f32, k = [V.UINT32], [V.FLOAT32], arch + "."
    keys = {
        "block_count": (u32, d.n_layer), "context_length": (u32, d.context_length),
        "embedding_length": (u32, d.d_model),
        "feed_forward_length": ([V.ARRAY, V.UINT32], [d.n_ff] * d.n_layer),
        "attention.head_count": (u32, d.n_head),
        "attention.head_count_kv": ([V.ARRAY, V.UINT32], [d.n_kv_head if d.is_swa(i) else d.n_kv_head_full
                                                          for i in range(d.n_layer)]),
        "attention.key_length": (u32, d.head_dim_full), "attention.value_length": (u32, d.head_dim_full),
        "attention.key_length_swa": (u32, d.head_dim_swa), "attention.value_length_swa": (u32, d.head_dim_swa),
        "attention.layer_norm_rms_epsilon": (f32, pytest.approx(1e-6)),
        "attention.sliding_window": (u32, d.sliding_window),
        "attention.sliding_window_pattern": ([V.ARRAY, V.BOOL], [d.is_swa(i) for i in range(d.n_layer)]),
        "rope.freq_base": (f32, 1e6), "rope.freq_base_swa": (f32, 1e4),
        "rope.dimension_count": (u32, d.head_dim_full), "rope.dimension_count_swa": (u32, d.head_dim_swa),
        "final_logit_softcapping": (f32, 30.0),
        "expert_count": (u32, d.n_expert), "expert_used_count": (u32, d.n_expert_used),
        "expert_feed_forward_length": (u32, d.n_ff_exp),
    }
    if arch == "gemma4":  # Ollama's converter writes these even when 0
        keys.update({"attention.shared_kv_layers": (u32, 0), "embedding_length_per_layer_input": (u32, 0)})
    return {k + key: v for key, v in keys.items()}


def check_keys(w: Weights, dims: layout.Gemma4Dims, arch: str) -> None:
    assert w.field("general.architecture") == arch
    expected = expected_keys(dims, arch)
    for key, (types, value) in expected.items():
        assert key in w.reader.fields, key
        assert w.reader.fields[key].types == types, key
        assert w.field(key) == value, key
    model_keys = {k for k in w.reader.fields if k.startswith(arch + ".")}
    extra = {k for k in model_keys - set(expected) if not k.startswith(arch + ".diffusion.")}
    assert extra <= {arch + ".attention.causal"}, extra
    tokens = w.field("tokenizer.ggml.tokens")
    assert len(tokens) == dims.n_vocab and tokens[:3] == ["<pad>", "<eos>", "<bos>"]
    assert [w.field(f"tokenizer.ggml.{k}_token_id") for k in ("bos", "eos", "padding")] == [2, 1, 0]


def test_moe_metadata(fx):
    check_keys(fx.w, fx.dims, "gemma4")
    assert fx.w.field("general.file_type") == tiny.FILE_TYPE[fx.cfg.weights]


def test_moe_tensors(fx):
    """The names, shapes and types: no PLE, no attn_v on the global layers (V is the K projection), the MoE
    tensors with numpy shapes ffn_gate_inp [E, D], ffn_gate_up_exps [E, 2 ff_exp, D], ffn_down_exps [E, D, ff_exp];
    the router and all 1-D tensors F32."""
    d, w = fx.dims, fx.w
    specs = layout.tensor_specs(d)
    q4_k_m = layout.q4_k_m_types(specs)
    assert [t.name for t in w.reader.tensors] == [s.name for s in specs]
    for s in specs:
        t = w.tensors[s.name]
        assert tuple(int(n) for n in t.shape) == s.ne and t.tensor_type == tiny.weight_type(fx.cfg.weights, s, q4_k_m)
    assert not any(n.startswith(("per_layer_", "output.")) or n.endswith(("inp_gate.weight", "proj.weight"))
                   for n in w.tensors)
    E, D, ff = d.n_expert, d.d_model, d.n_ff_exp
    for il in range(d.n_layer):
        b = f"blk.{il}."
        assert (b + "attn_v.weight" in w.tensors) == d.is_swa(il)
        n_kv = d.n_kv_head if d.is_swa(il) else d.n_kv_head_full
        assert w(b + "attn_k.weight").shape == (n_kv * d.head_dim(il), D)
        assert w(b + "ffn_gate_inp.weight").shape == (E, D)
        assert w.tensors[b + "ffn_gate_inp.weight"].tensor_type == Q.F32
        assert w(b + "ffn_gate_up_exps.weight").shape == (E, 2 * ff, D)
        assert w(b + "ffn_down_exps.weight").shape == (E, D, ff)
        assert w(b + "ffn_gate_inp.scale").shape == (D,) and w(b + "ffn_down_exps.scale").shape == (E,)
        # randomised away from 1, so a (1 + w) or a missing scale shows
        for name in ("ffn_gate_inp.scale", "ffn_down_exps.scale", "pre_ffw_norm_2.weight", "post_ffw_norm_1.weight"):
            assert np.abs(w(b + name) - 1).max() > 0.2, name
    rope_freqs = w("rope_freqs.weight")
    n_rot = d.head_dim_full // 8
    assert (rope_freqs[:n_rot] == 1).all() and (rope_freqs[n_rot:] == np.float32(1e30)).all()


def test_moe_q4_k_types():
    """moe_q4_k follows the Q4_K_M rule on 26B's width ratios: Q4_K expert gate/up rows (d_model 256); the expert
    and dense down rows (64, 128 wide, like 26B's 704 and 2112) fall back to Q5_0 / Q8_0; Q6_K head and attn_v."""
    w = MoeFixture("moe_q4_k").w
    types = {n: t.tensor_type for n, t in w.tensors.items()}
    assert set(types.values()) == {Q.F32, Q.Q4_K, Q.Q6_K, Q.Q5_0, Q.Q8_0}
    assert types["token_embd.weight"] == Q.Q6_K and types["blk.0.attn_v.weight"] == Q.Q6_K
    assert [types[f"blk.{i}.ffn_gate_up_exps.weight"] for i in (0, 1)] == [Q.Q4_K, Q.Q4_K]
    assert [types[f"blk.{i}.ffn_down_exps.weight"] for i in (0, 1)] == [Q.Q5_0, Q.Q8_0]
    assert [types[f"blk.{i}.ffn_down.weight"] for i in (0, 1)] == [Q.Q5_0, Q.Q8_0]


def test_moe_goldens_shapes(fx):
    g, d = fx.gold, fx.dims
    T, L, K = len(g["tokens"]), d.n_layer, d.n_expert_used
    assert T == fx.cfg.n_tokens > d.sliding_window
    shapes = {"logits": (T, d.n_vocab), "decode_logits": (T, d.n_vocab), "embed": (T, d.d_model),
              "layer_out": (L, T, d.d_model), "final_norm": (T, d.d_model), "attn_residual": (L, T, d.d_model),
              "expert_weights": (L, T, K)}
    for key, shape in shapes.items():
        assert g[key].shape == shape and g[key].dtype == np.float32 and np.isfinite(g[key]).all(), key
        assert g[key].std() > 0.1, key
    assert "per_layer_inputs" not in g
    assert g["expert_ids"].shape == (L, T, K) and g["expert_ids"].dtype == np.int32
    assert 5 < np.abs(g["logits"]).max() < 30.0  # the soft-cap bends the larger logits
    np.testing.assert_allclose(g["decode_logits"], g["logits"], rtol=0, atol=1e-5)
    assert fx.info["versions"]["transformers"] == "5.23.0" and fx.info["hf_float32_same_experts"]


def test_moe_routing_is_not_degenerate(fx):
    """Every expert is chosen somewhere in every layer, k distinct experts per token, and the stored k-th and
    (k+1)-th router probabilities are never nearly tied (the seed was picked for that)."""
    ids = fx.gold["expert_ids"]
    for layer in ids:
        assert set(layer.reshape(-1)) == set(range(fx.dims.n_expert))
        assert all(len(set(row)) == len(row) for row in layer)
    assert fx.info["routing"]["expert_histogram"] == np.bincount(ids.reshape(-1)).tolist()
    assert fx.info["routing"]["min_topk_prob_gap"] > 1e-3


def test_moe_layers_from_gguf(fx):
    """From the stored residual after attention and the GGUF alone, numpy's router picks the stored experts with
    the stored weights, and the dense FFN + experts + output scale give the stored layer output. A gate/up mix-up
    in the packed expert tensor is caught."""
    g, k = fx.gold, fx.dims.n_expert_used
    for il in range(fx.dims.n_layer):
        r = g["attn_residual"][il].astype(np.float64)
        ids, weights = route(fx.w, il, r, k)
        assert np.array_equal(ids, g["expert_ids"][il]), f"layer {il}"
        np.testing.assert_allclose(weights, g["expert_weights"][il], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ffn_half(fx.w, il, r, k), g["layer_out"][il], rtol=0, atol=ATOL, err_msg=f"{il}")
    swapped = ffn_half(fx.w, 0, g["attn_residual"][0].astype(np.float64), k, swap_gate_up=True)
    assert np.abs(swapped - g["layer_out"][0]).max() > 0.1


def test_moe_embedding_and_head(fx):
    g, w, d = fx.gold, fx.w, fx.dims
    np.testing.assert_allclose(g["embed"], w("token_embd.weight")[g["tokens"]] * np.sqrt(d.d_model), rtol=1e-6,
                               atol=1e-6)
    final = rms_norm(g["layer_out"][-1].astype(np.float64), w("output_norm.weight"))
    np.testing.assert_allclose(final, g["final_norm"], rtol=0, atol=ATOL)
    np.testing.assert_allclose(head(w, g["final_norm"].astype(np.float64)), g["logits"], rtol=0, atol=ATOL)


# --------------------------------------------------------------------------------------------------------------------
# DiffusionGemma


@pytest.fixture(scope="module")
def dgf():
    w = Weights(os.path.join(FIXTURES, "diffusion_gemma_tiny.gguf"))
    o = load_npz(os.path.join(FIXTURES, "diffusion_gemma_tiny_oracle.npz"))
    return w, o, json.loads(str(o["info"]))


def test_diffusion_metadata(dgf):
    w, _, _ = dgf
    check_keys(w, dg.DIMS, "diffusion-gemma")
    k = "diffusion-gemma."
    assert w.reader.fields[k + "attention.causal"].types == [V.BOOL] and w.field(k + "attention.causal") is False
    diffusion = {key[len(k + "diffusion."):]: w.field(key)
                 for key in w.reader.fields if key.startswith(k + "diffusion.")}
    assert diffusion == {"canvas_length": 16, "eb_max_steps": 48, "eb_t_min": pytest.approx(0.4),
                         "eb_t_max": pytest.approx(0.8), "entropy_bound": pytest.approx(0.1),
                         "stability_threshold": 1, "confidence_threshold": pytest.approx(0.005)}
    assert not any(key.startswith("gemma4.") for key in w.reader.fields)


def test_diffusion_tensors(dgf):
    """Gemma 4's MoE names (the decoder's weights, which the encoder shares), each layer's enc_layer_output_scale
    after its layer_output_scale, the self-conditioning MLP; all F32; the two output scales differ."""
    w, _, _ = dgf
    d, specs = dg.DIMS, dg.tensor_specs()
    assert [t.name for t in w.reader.tensors] == [s.name for s in specs]
    for s in specs:
        t = w.tensors[s.name]
        assert tuple(int(n) for n in t.shape) == s.ne and t.tensor_type == Q.F32, s.name
    assert w("self_cond_gate.weight").shape == (d.n_ff, d.d_model) == w("self_cond_up.weight").shape
    assert w("self_cond_down.weight").shape == (d.d_model, d.n_ff)
    assert not any(f"blk.{i}.attn_v.weight" in w.tensors for i in range(d.n_layer) if not d.is_swa(i))
    enc = [float(w(f"blk.{i}.enc_layer_output_scale.weight")[0]) for i in range(d.n_layer)]
    dec = [float(w(f"blk.{i}.layer_output_scale.weight")[0]) for i in range(d.n_layer)]
    assert min(abs(a - b) for a, b in zip(enc, dec)) > 1e-3


def test_diffusion_oracle_arrays(dgf):
    _, o, info = dgf
    d, C, V_, P = dg.DIMS, dg.CANVAS, dg.VOCAB, len(o["prompt"])
    for il in range(d.n_layer):
        n_kv, hd = (d.n_kv_head, d.head_dim_swa) if d.is_swa(il) else (d.n_kv_head_full, d.head_dim_full)
        assert o[f"enc_k_{il}"].shape == o[f"enc_v_{il}"].shape == (n_kv, P, hd)
    shapes = {"fwd_logits_nosc": (C, V_), "fwd_logits_sc": (C, V_), "fwd_sc_soft": (C, d.d_model),
              "fwd_dec_inputs_sc": (C, d.d_model), "fwd_dec_inputs_nosc": (C, d.d_model),
              "fwd_final_norm_sc": (C, d.d_model), "fwd_dec_attn_residual": (d.n_layer, C, d.d_model),
              "fwd_dec_layer_out": (d.n_layer, C, d.d_model), "enc_attn_residual": (d.n_layer, P, d.d_model),
              "enc_layer_out": (d.n_layer, P, d.d_model)}
    for key, shape in shapes.items():
        assert o[key].shape == shape and o[key].dtype == np.float32 and np.isfinite(o[key]).all(), key
        assert o[key].std() > 0.1, key
    # self-conditioning matters: the logits with and without it differ by several units
    assert np.abs(o["fwd_logits_sc"] - o["fwd_logits_nosc"]).max() > 1.0
    for prefix in ("step_", "early_"):
        S = len(o[prefix + "block"])
        for key in ("canvas_in", "denoiser", "argmax"):
            assert o[prefix + key].shape == (S, C) and o[prefix + key].dtype == np.int32, key
        for key in ("entropy", "sample_margin", "bound_margin", "argmax_gap"):
            assert o[prefix + key].shape == (S, C) and o[prefix + key].dtype == np.float32, key
        assert o[prefix + "accepted"].dtype == bool and o[prefix + "uniform"].dtype == np.float64
        assert o[prefix + "randint"].shape == (S + dg.N_BLOCKS, C)
        assert o[prefix + "raw_logits"].shape == (len(o[prefix + "raw_logits_at"]), C, V_)
    assert info["versions"]["transformers"] == "5.23.0" and info["min_topk_prob_gap"] > 1e-4


def test_diffusion_self_conditioning_from_gguf(dgf):
    """soft = softmax(sc logits) @ E x sqrt(D); the decoder's input = RMSNorm without weight of
    E[canvas] x sqrt(D) + down(gelu(gate(n)) * up(n)), n = RMSNorm(soft) x self_cond_pre_norm. Without
    self-conditioning the MLP sees zeros and adds nothing, but the final norm still applies."""
    w, o, _ = dgf
    E, sqrt_d = w("token_embd.weight"), np.sqrt(dg.DIMS.d_model)
    x = E[o["fwd_canvas"]] * sqrt_d
    soft = softmax(o["fwd_logits_nosc"].astype(np.float64) / float(o["fwd_sc_temperature"])) @ E * sqrt_d
    np.testing.assert_allclose(soft, o["fwd_sc_soft"], rtol=0, atol=ATOL)
    n = rms_norm(soft, w("self_cond_pre_norm.weight"))
    sc = (gelu_tanh(n @ w("self_cond_gate.weight").T) * (n @ w("self_cond_up.weight").T)) @ w("self_cond_down.weight").T
    np.testing.assert_allclose(rms_norm(x + sc), o["fwd_dec_inputs_sc"], rtol=0, atol=ATOL)
    np.testing.assert_allclose(rms_norm(x), o["fwd_dec_inputs_nosc"], rtol=0, atol=ATOL)


def test_diffusion_layers_from_gguf(dgf):
    """Each layer's FFN/MoE half, for the decoder (self-conditioned pass) with layer_output_scale and for the
    encoder (the prompt) with enc_layer_output_scale; the decoder's head. Using the other side's scales fails."""
    w, o, _ = dgf
    d, k = dg.DIMS, dg.DIMS.n_expert_used
    for il in range(d.n_layer):
        for part, scale in (("fwd_dec_", "layer_output_scale.weight"), ("enc_", "enc_layer_output_scale.weight")):
            r = o[part + "attn_residual"][il].astype(np.float64)
            ids, _ = route(w, il, r, k)
            assert np.array_equal(ids, o[part + "expert_ids"][il]), (part, il)
            out = ffn_half(w, il, r, k, scale_name=scale)
            np.testing.assert_allclose(out, o[part + "layer_out"][il], rtol=0, atol=ATOL, err_msg=f"{part}{il}")
    wrong = ffn_half(w, 0, o["enc_attn_residual"][0].astype(np.float64), k, scale_name="layer_output_scale.weight")
    assert np.abs(wrong - o["enc_layer_out"][0]).max() > 0.1
    final = rms_norm(o["fwd_dec_layer_out"][-1].astype(np.float64), w("output_norm.weight"))
    np.testing.assert_allclose(final, o["fwd_final_norm_sc"], rtol=0, atol=ATOL)
    np.testing.assert_allclose(head(w, o["fwd_final_norm_sc"].astype(np.float64)), o["fwd_logits_sc"], rtol=0,
                               atol=ATOL)


def rope(x, pos, base, freq_factors=None):
    """NeoX rope over the whole head: x [T, heads, hd], pairs (i, i + hd/2); frequency i is
    base^(-2i/hd) / freq_factors[i]."""
    half = x.shape[-1] // 2
    inv_freq = base ** (-np.arange(half) * 2.0 / x.shape[-1])
    if freq_factors is not None:
        inv_freq = inv_freq / freq_factors
    a = pos[:, None, None] * inv_freq
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * np.cos(a) - x2 * np.sin(a), x2 * np.cos(a) + x1 * np.sin(a)], -1)


def test_diffusion_encoder_kv_from_gguf(dgf):
    """The encoder's cache: layer 0 (sliding) K = rope(k_norm(W_k x)), base 1e4; V = weightless RMSNorm of W_v x.
    The global layer has no attn_v: V = weightless RMSNorm of the K projection, K = rope with rope_freqs (1e30
    switches frequencies off), base 1e6. x is the layer's attn_norm input: the scaled embedding for layer 0, the
    previous layer's output for the global one."""
    w, o, _ = dgf
    d, prompt = dg.DIMS, o["prompt"]
    pos = np.arange(len(prompt), dtype=np.float64)

    def kv(il, h, base, freq_factors=None, v_weight="attn_v.weight"):
        b, hd = f"blk.{il}.", d.head_dim(il)
        x = rms_norm(h, w(b + "attn_norm.weight"))
        k_proj = (x @ w(b + "attn_k.weight").T).reshape(len(h), -1, hd)
        v_proj = k_proj if v_weight is None else (x @ w(b + v_weight).T).reshape(len(h), -1, hd)
        k = rope(rms_norm(k_proj, w(b + "attn_k_norm.weight")), pos, base, freq_factors)
        return k.transpose(1, 0, 2), rms_norm(v_proj).transpose(1, 0, 2)

    k0, v0 = kv(0, w("token_embd.weight")[prompt] * np.sqrt(d.d_model), 1e4)
    np.testing.assert_allclose(k0, o["enc_k_0"], rtol=0, atol=ATOL)
    np.testing.assert_allclose(v0, o["enc_v_0"], rtol=0, atol=ATOL)
    g = d.n_layer - 1
    assert not d.is_swa(g)
    k5, v5 = kv(g, o["enc_layer_out"][g - 1].astype(np.float64), 1e6, w("rope_freqs.weight"), v_weight=None)
    np.testing.assert_allclose(k5, o[f"enc_k_{g}"], rtol=0, atol=ATOL)
    np.testing.assert_allclose(v5, o[f"enc_v_{g}"], rtol=0, atol=ATOL)


def entropy(logits):
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    return -(np.exp(logp) * logp).sum(-1)


@pytest.mark.parametrize("prefix", ["step_", "early_"])
def test_diffusion_sampler_replays(dgf, prefix):
    """The recorded generate runs follow transformers' entropy-bound sampler, replayed in numpy from the npz:

    - steps count down from 48 in each block, t = t_min + (t_max - t_min) cur_step / 48, self-conditioning from
      the second step of a block on;
    - at the steps whose raw logits are stored: the entropies of softmax(raw / t), the argmax, and the denoiser's
      sample = the first token whose cumulative probability exceeds the stored uniform;
    - acceptance: sorted by entropy, a position is accepted iff the sum of the strictly lower entropies is at most
      the bound; the next canvas is the accepted samples over the step's renoise draw (a block's first canvas is
      its own draw);
    - stop: the argmax equals the previous step's (same block) and the mean entropy is below the threshold;
    - the output is each block's last argmax canvas after the prompt.
    Decisions whose stored margin is below 1e-5 are not asserted (none are in these runs except as noted)."""
    _, o, info = dgf
    g = {k[len(prefix):]: v for k, v in o.items() if k.startswith(prefix)}
    sampler = dg.SAMPLER if prefix == "step_" else info["early_sampler"]
    S, t_min, t_max = sampler["max_denoising_steps"], sampler["t_min"], sampler["t_max"]
    n = len(g["block"])
    starts = [i for i in range(n) if i == 0 or g["block"][i] != g["block"][i - 1]]
    assert len(starts) == dg.N_BLOCKS
    for i in range(n):
        first = i in starts
        assert g["cur_step"][i] == (S if first else g["cur_step"][i - 1] - 1) and g["has_sc"][i] == (not first)
    np.testing.assert_allclose(g["temperature"], t_min + (t_max - t_min) * g["cur_step"] / S, rtol=1e-6)

    for j, i in enumerate(g["raw_logits_at"]):
        proc = g["raw_logits"][j].astype(np.float64) / float(g["temperature"][i])
        np.testing.assert_allclose(entropy(proc), g["entropy"][i], rtol=1e-4, atol=1e-5)
        robust = g["argmax_gap"][i] > 1e-4
        assert np.array_equal(proc.argmax(-1)[robust], g["argmax"][i][robust])
        cdf = np.cumsum(softmax(proc), -1)
        sample = (cdf <= g["uniform"][i][:, None]).sum(-1)
        robust = g["sample_margin"][i] > 1e-5
        assert np.array_equal(sample[robust], g["denoiser"][i][robust])

    bound = sampler["entropy_bound"]
    for i in range(n):
        h = g["entropy"][i].astype(np.float64)
        order = np.argsort(h, kind="stable")
        lower = np.empty_like(h)
        lower[order] = np.cumsum(h[order]) - h[order]
        robust = np.abs(g["bound_margin"][i]) > 1e-5
        assert np.array_equal((lower <= bound)[robust], g["accepted"][i][robust]), i
        assert np.array_equal(g["bound_margin"][i] >= 0, g["accepted"][i])
        draw = g["randint"][g["block"][i] + i]  # one draw per block start and one per step, in order
        if i not in starts:
            draw = np.where(g["accepted"][i - 1], g["denoiser"][i - 1], draw)
        assert np.array_equal(g["canvas_in"][i], draw), i
        stable = i not in starts and np.array_equal(g["argmax"][i], g["argmax"][i - 1])
        assert g["stop"][i] == (stable and g["mean_entropy"][i] < sampler["confidence_threshold"]), i
    np.testing.assert_allclose(g["mean_entropy"], g["entropy"].astype(np.float64).mean(-1), rtol=1e-5, atol=1e-7)

    prompt = o["prompt"] if prefix == "step_" else o["early_prompt"]
    sequences = o["gen_sequences"] if prefix == "step_" else g["sequences"]
    ends = [s - 1 for s in starts[1:]] + [n - 1]
    assert np.array_equal(sequences, np.concatenate([prompt] + [g["argmax"][e] for e in ends]))
    if prefix == "step_":
        assert not g["stop"].any() and n == dg.N_BLOCKS * S  # random weights: never confident
    else:
        assert g["stop"][ends].all() and n < S  # both blocks stop early
