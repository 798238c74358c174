"""ModelConfig from GGUF metadata: Gemma 4 E2B/E4B/26B layouts from the reference tables, Gemma 3 rules
as llama.cpp applies them, a gemma4 header round-tripped through GGUFWriter, and the real Gemma 3 270M."""

from __future__ import annotations

import math

import gguf
import numpy as np
import pytest

from rullama_py.config import ConfigError, ModelConfig, UnsupportedModelError
from rullama_py.gguf_file import GGUFFile
from rullama_py.sources import BytesSource


def gemma4_e2b() -> dict:
    L = 35
    a = "gemma4."
    return {
        "general.architecture": "gemma4",
        a + "block_count": L,
        a + "embedding_length": 1536,
        a + "feed_forward_length": [6144] * 15 + [12288] * 20,
        a + "context_length": 131072,
        a + "attention.head_count": 8,
        a + "attention.head_count_kv": 1,
        a + "attention.key_length": 512,
        a + "attention.value_length": 512,
        a + "attention.key_length_swa": 256,
        a + "attention.value_length_swa": 256,
        a + "attention.layer_norm_rms_epsilon": 1e-6,
        a + "attention.sliding_window": 512,
        a + "attention.sliding_window_pattern": [(i + 1) % 5 != 0 for i in range(L)],
        a + "attention.shared_kv_layers": 20,
        a + "rope.freq_base": 1e6,
        a + "rope.dimension_count": 512,
        a + "rope.freq_base_swa": 1e4,
        a + "rope.dimension_count_swa": 256,
        a + "final_logit_softcapping": 30.0,
        a + "embedding_length_per_layer_input": 256,
        a + "vision.block_count": 16,
        a + "vision.embedding_length": 768,
        a + "vision.attention.head_count": 12,
        a + "vision.feed_forward_length": 3072,
        a + "vision.patch_size": 16,
        a + "vision.num_channels": 3,
        a + "vision.projector.scale_factor": 3,
        a + "vision.attention.layer_norm_epsilon": 1e-6,
        a + "audio.block_count": 12,
        a + "audio.embedding_length": 1024,
        a + "audio.feed_forward_length": 4096,
        a + "audio.attention.head_count": 8,
        a + "audio.attention.layer_norm_epsilon": 1e-6,
        a + "audio.conv_kernel_size": 5,
        "tokenizer.ggml.tokens": ["<pad>"] * 262144,
    }


def test_gemma4_e2b():
    c = ModelConfig.from_metadata(gemma4_e2b())
    assert c.arch == "gemma4" and c.n_layers == 35 and c.d_model == 1536 and c.vocab_size == 262144
    assert c.attn_scale == 1.0
    assert c.final_logit_softcap == 30.0 and c.ple_dim == 256 and c.sliding_window == 512
    assert c.embed_scale == pytest.approx(math.sqrt(1536))
    glob = [i for i in range(35) if not c.is_sliding[i]]
    assert glob == [4, 9, 14, 19, 24, 29, 34]
    for l in range(35):
        s = c.is_sliding[l]
        assert c.head_dim[l] == c.value_dim[l] == (256 if s else 512)
        assert c.rope_base[l] == (1e4 if s else 1e6)
        assert c.rope_dim[l] == (256 if s else 512)
        assert c.n_heads[l] == 8 and c.n_kv_heads[l] == 1
        assert c.ffn_dim[l] == (6144 if l < 15 else 12288)
        assert c.rope_scale[l] == 1.0
    # KV sharing: layers 15..34 reuse layer 13 (sliding) or 14 (global).
    assert c.kv_donor[:15] == tuple(range(15))
    assert all(c.kv_donor[l] == (13 if c.is_sliding[l] else 14) for l in range(15, 35))
    assert c.has_kv == tuple(l < 15 for l in range(35))
    assert c.n_shared_kv_layers == 20
    v = c.vision
    assert (v.n_layers, v.d_model, v.n_heads, v.ffn_dim, v.patch_size, v.num_channels) == (16, 768, 12, 3072, 16, 3)
    assert v.projector_scale_factor == 3 and v.norm_eps == 1e-6
    a = c.audio
    assert (a.n_layers, a.d_model, a.ffn_dim, a.n_heads, a.conv_kernel_size) == (12, 1024, 4096, 8, 5)


def test_gemma4_e4b_donors():
    m = gemma4_e2b()
    L = 42
    m.update({
        "gemma4.block_count": L,
        "gemma4.embedding_length": 2560,
        "gemma4.feed_forward_length": 10240,
        "gemma4.attention.head_count_kv": 2,
        "gemma4.attention.sliding_window_pattern": [(i + 1) % 6 != 0 for i in range(L)],
        "gemma4.attention.shared_kv_layers": 18,
    })
    c = ModelConfig.from_metadata(m)
    assert c.ffn_dim == (10240,) * L and c.n_kv_heads == (2,) * L
    assert all(c.kv_donor[l] == (22 if c.is_sliding[l] else 23) for l in range(24, L))
    assert c.kv_donor[:24] == tuple(range(24))


def test_gemma4_26b_per_layer_kv_heads():
    L = 30
    pattern = [(i + 1) % 6 != 0 for i in range(L)]
    m = gemma4_e2b()
    for k in [k for k in m if ".vision." in k or ".audio." in k or "per_layer" in k]:
        del m[k]
    m.update({
        "gemma4.block_count": L,
        "gemma4.embedding_length": 2816,
        "gemma4.feed_forward_length": 2112,
        "gemma4.attention.head_count": 16,
        "gemma4.attention.head_count_kv": [8 if s else 2 for s in pattern],
        "gemma4.attention.sliding_window_pattern": pattern,
        "gemma4.attention.shared_kv_layers": 0,
        "gemma4.attention.sliding_window": 1024,
    })
    c = ModelConfig.from_metadata(m)
    assert c.n_kv_heads == tuple(8 if s else 2 for s in pattern)
    assert c.kv_donor == tuple(range(L)) and c.ple_dim == 0
    assert c.vision is None and c.audio is None


def test_gemma4_errors():
    m = gemma4_e2b()
    del m["gemma4.attention.sliding_window_pattern"]
    with pytest.raises(ConfigError, match="sliding_window_pattern"):
        ModelConfig.from_metadata(m)
    m = gemma4_e2b()
    m["gemma4.feed_forward_length"] = [6144] * 34
    with pytest.raises(ConfigError, match="34 entries for 35 layers"):
        ModelConfig.from_metadata(m)
    m = gemma4_e2b()
    m["gemma4.attention.shared_kv_layers"] = 19  # n_kv = 16: sliding donor would be 14, a global layer
    with pytest.raises(UnsupportedModelError, match="KV sharing"):
        ModelConfig.from_metadata(m)
    m = gemma4_e2b()
    m["gemma4.attention.shared_kv_layers"] = 34
    with pytest.raises(UnsupportedModelError, match="own KV"):
        ModelConfig.from_metadata(m)
    m = gemma4_e2b()
    m["gemma4.attention.head_count_kv"] = 3
    with pytest.raises(ConfigError, match="cannot be grouped"):
        ModelConfig.from_metadata(m)


def gemma3(L=18, d=640, heads=4, kv=1, head_dim=256, **extra) -> dict:
    a = "gemma3."
    m = {
        "general.architecture": "gemma3",
        a + "block_count": L,
        a + "embedding_length": d,
        a + "feed_forward_length": 2048,
        a + "context_length": 32768,
        a + "attention.head_count": heads,
        a + "attention.head_count_kv": kv,
        a + "attention.key_length": head_dim,
        a + "attention.value_length": head_dim,
        a + "attention.layer_norm_rms_epsilon": 1e-6,
        a + "attention.sliding_window": 512,
        a + "rope.freq_base": 1e6,
    }
    m.update({a + k: v for k, v in extra.items()})
    return m


def test_gemma3_rules():
    c = ModelConfig.from_metadata(gemma3())
    assert c.is_sliding == tuple((i + 1) % 6 != 0 for i in range(18))
    assert [i for i in range(18) if not c.is_sliding[i]] == [5, 11, 17]
    assert c.rope_base == tuple(1e4 if s else 1e6 for s in c.is_sliding)
    assert c.attn_scale == 256**-0.5
    assert c.kv_donor == tuple(range(18)) and c.final_logit_softcap == 0.0 and c.ple_dim == 0
    assert c.vocab_size == 0 and c.vision is None


def test_gemma3_27b_scale_and_overrides():
    # llama.cpp: the 27B (62 layers) scales by (d_model / n_heads)^-0.5 = 168^-0.5, not head_dim^-0.5.
    c = ModelConfig.from_metadata(gemma3(L=62, d=5376, heads=32, kv=16, head_dim=128))
    assert c.attn_scale == pytest.approx(168**-0.5)
    c = ModelConfig.from_metadata(gemma3(L=26, d=1152, heads=4, head_dim=256))
    assert c.attn_scale == pytest.approx(256**-0.5)  # 1B: head_dim, although d/heads = 288
    c = ModelConfig.from_metadata(gemma3(**{"attention.query_pre_attn_scalar": 144}))
    assert c.attn_scale == pytest.approx(144**-0.5)


def test_gemma3_pattern_and_rope_options():
    c = ModelConfig.from_metadata(gemma3(**{"attention.sliding_window_pattern": 3}))
    assert c.is_sliding == tuple(i % 3 < 2 for i in range(18))
    pat = [i % 2 == 0 for i in range(18)]
    c = ModelConfig.from_metadata(gemma3(**{"attention.sliding_window_pattern": pat}))
    assert c.is_sliding == tuple(pat)
    m = gemma3()
    del m["gemma3.attention.sliding_window"]
    c = ModelConfig.from_metadata(m)
    assert c.is_sliding == (False,) * 18 and c.sliding_window == 0 and c.rope_base == (1e6,) * 18
    c = ModelConfig.from_metadata(gemma3(**{"rope.scaling.type": "linear", "rope.scaling.factor": 8.0}))
    assert c.rope_scale == tuple(1.0 if s else 0.125 for s in c.is_sliding)
    c = ModelConfig.from_metadata(gemma3(**{"rope.freq_base_swa": 5e3}))
    assert c.rope_base == tuple(5e3 if s else 1e6 for s in c.is_sliding)


def test_unsupported_and_missing():
    with pytest.raises(UnsupportedModelError, match="'llama'"):
        ModelConfig.from_metadata({"general.architecture": "llama"})
    with pytest.raises(UnsupportedModelError, match="None"):
        ModelConfig.from_metadata({})
    m = gemma3()
    del m["gemma3.block_count"]
    with pytest.raises(ConfigError, match="'gemma3.block_count'"):
        ModelConfig.from_metadata(m)
    with pytest.raises(ConfigError, match="single value"):
        ModelConfig.from_metadata(gemma3(**{"embedding_length": [640, 640]}))
    with pytest.raises(ConfigError, match="positive"):
        ModelConfig.from_metadata(gemma3(**{"attention.head_count": 0}))
    assert issubclass(ConfigError, ValueError)


async def test_gemma4_header_through_gguf_writer(tmp_path):
    """The same keys written with GGUFWriter's own typed adders: bool arrays, u32 arrays, f32 scalars."""
    L = 35
    pattern = [(i + 1) % 5 != 0 for i in range(L)]
    p = tmp_path / "g4.gguf"
    w = gguf.GGUFWriter(str(p), arch="gemma4")
    w.add_block_count(L)
    w.add_embedding_length(1536)
    w.add_feed_forward_length([6144] * 15 + [12288] * 20)
    w.add_context_length(131072)
    w.add_head_count(8)
    w.add_head_count_kv(1)
    w.add_key_length(512)
    w.add_value_length(512)
    w.add_key_length_swa(256)
    w.add_value_length_swa(256)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_sliding_window(512)
    w.add_sliding_window_pattern(pattern)
    w.add_shared_kv_layers(20)
    w.add_rope_freq_base(1e6)
    w.add_rope_dimension_count(512)
    w.add_rope_freq_base_swa(1e4)
    w.add_rope_dimension_count_swa(256)
    w.add_final_logit_softcapping(30.0)
    w.add_embedding_length_per_layer_input(256)
    w.add_tensor("output_norm.weight", np.ones(1536, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    gf = await GGUFFile.open(BytesSource(p.read_bytes()))
    assert gf.metadata["gemma4.attention.sliding_window_pattern"] == pattern
    c = ModelConfig.from_metadata(gf.metadata)
    ref = ModelConfig.from_metadata(gemma4_e2b())
    for f in ("is_sliding", "head_dim", "n_kv_heads", "ffn_dim", "rope_base", "rope_dim", "kv_donor"):
        assert getattr(c, f) == getattr(ref, f), f
    assert c.final_logit_softcap == 30.0 and c.norm_eps == pytest.approx(1e-6)


@pytest.mark.slow
async def test_real_gemma3_270m():
    from rullama_py.assets import default_model_path, is_default_model_ready

    p = default_model_path()
    if not is_default_model_ready(p):
        pytest.skip(f"the real Gemma 3 270M GGUF is not in the cache ({p}); run `python -m rullama_py.assets`")
    async with await GGUFFile.open(p) as gf:
        c = ModelConfig.from_metadata(gf.metadata)
        assert (c.n_layers, c.d_model, c.vocab_size, c.sliding_window) == (18, 640, 262144, 512)
        assert c.n_heads == (4,) * 18 and c.n_kv_heads == (1,) * 18 and c.head_dim == (256,) * 18
        assert c.ffn_dim == (2048,) * 18
        assert [i for i in range(18) if not c.is_sliding[i]] == [5, 11, 17]
        assert c.rope_base == tuple(1e4 if s else 1e6 for s in c.is_sliding)
        assert c.attn_scale == 1 / 16
        # The tensor shapes agree with the derived sizes.
        for l in range(c.n_layers):
            assert gf.tensors[f"blk.{l}.attn_q.weight"].shape == (c.n_heads[l] * c.head_dim[l], c.d_model)
            assert gf.tensors[f"blk.{l}.attn_k.weight"].shape == (c.n_kv_heads[l] * c.head_dim[l], c.d_model)
            assert gf.tensors[f"blk.{l}.ffn_up.weight"].shape == (c.ffn_dim[l], c.d_model)
        assert gf.tensors["token_embd.weight"].shape == (c.vocab_size, c.d_model)
        assert isinstance(gf.metadata["tokenizer.ggml.scores"], np.ndarray)
