"""The Kokoro GGUF: tools/convert_kokoro.py writes it, rullama_py.models.kokoro_gguf reads it back.

Small models (a KokoroConfig with tiny widths and random weights) check the round trip for every tensor type,
the metadata, the extras, and every error sentence. The name table is checked against two oracles: digests of
kokoro 0.9.4's KModel state dict (keys and torch shapes, weight norm folded) and of the tensor names and shapes
TTS.cpp's own converter (py-gguf/tts_encoders/kokoro_gguf_encoder.py) writes for Kokoro-82M v1.0, plus the
metadata values that converter wrote. The real files the setup makes (kokoro-v1.0-f16/f32.gguf, from the int8
ONNX, config.json and the kokoro-js voicepacks in the cache) are checked last: config, vocabulary, every KModel
key, voices byte for byte, the F32 file equal to the ONNX's dequantised weights and the F16 file within F16
rounding of it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from conftest import require
from rullama_py import assets
from rullama_py.gguf_file import GGUFError, GGUFFile
from rullama_py.models import kokoro_gguf as kg
from rullama_py.models.kokoro_gguf import KokoroConfig, KokoroLoadError

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import convert_kokoro as ck  # noqa: E402

FIXTURES = Path(__file__).resolve().parent / "fixtures"

# sha256 of the sorted lines "<key> [<torch shape>]" of kokoro 0.9.4's KModel(config=Kokoro-82M v1.0).state_dict()
# with weight norm folded (weight_g/weight_v -> weight, the shape of weight_v): 599 keys, 81,777,868 values.
KMODEL_KEYS_SHA256 = "39afe72f35895dbabe0dfaa7ed32b05943f76471d043def96aba38f02fc4e2a9"
KMODEL_N_KEYS = 599
KMODEL_N_VALUES = 81_777_868
# sha256 of the sorted lines "<name> [<numpy shape>]" of the 747 tensors (voices left out) that TTS.cpp's
# converter (mmwillet/TTS.cpp @724d97f) wrote for Kokoro-82M v1.0.
TTSCPP_TENSORS_SHA256 = "06692a96598f113b4a31ab47b9dae73b85448978b5bad140e6d6ae2d95dc4bdf"
TTSCPP_N_TENSORS = 747
# x . cos(0.7 k) (x flattened, float64) of tensors in the F32 file TTS.cpp's converter wrote from the same
# weights (the int8 ONNX's, loaded into KModel): where its gates, gamma/beta halves and the swapped ALBERT norm
# names put which numbers. Weight-normed tensors are left out (TTS.cpp recomputes g * v / ||v||).
TTSCPP_PROJECTIONS = [
    ("kokoro.text_encoder.lstm.0.weights.2", 25.82285648581164),
    ("kokoro.text_encoder.lstm.0.weights.7", 1.204759259684895),
    ("kokoro.text_encoder.lstm.0.reverse_biases.4", 0.2351185542411911),
    ("kokoro.duration_predictor.layers.2.lstm.0.reverse_weights.1", -2.4455161299355304),
    ("kokoro.duration_predictor.shared_lstm.0.biases.6", -0.5084553819382053),
    ("kokoro.duration_predictor.duration_lstm.0.weights.5", 5.970042592616135),
    ("kokoro.duration_predictor.layers.1.beta_bias", 0.41793711362805125),
    ("kokoro.duration_predictor.layers.5.gamma_weight", 12.452440033351474),
    ("kokoro.decoder.decoder_blocks.3.norm2_beta_weight", -7.301888310665267),
    ("kokoro.duration_predictor.f0_blocks.1.norm1_gamma_bias", -1.8247250924612592),
    ("kokoro.decoder.generator.resblocks.4.1.gamma2_weight", 14.2751736862877),
    ("kokoro.decoder.generator.noise_blocks.1.resblock.2.beta1_bias", 0.6584134808599501),
    ("kokoro.decoder.generator.resblocks.2.0.alpha2", 2.6977260925700106),
    ("kokoro.albert.token_type_embd", 0.3032952215876899),
    ("kokoro.albert.layer.0.ffn_norm", 0.5726945529995618),
    ("kokoro.albert.layer.0.attn_norm_bias", -0.18265216986425825),
    ("kokoro.albert.layer.0.o", 9.857047854226142),
    ("kokoro.decoder.generator.m_source_weight", -0.6890824285793284),
    ("kokoro.duration_predictor.f0_proj_kernel", -0.4603468068503778),
    ("kokoro.decoder.generator.noise_blocks.0.conv_weight", -2.5326958266178785),
]


def _ttscpp_metadata() -> dict:
    """The metadata TTS.cpp's converter wrote for Kokoro-82M v1.0 (general.*, the tokens and voices left out)."""
    g = "kokoro.decoder.generator"
    meta = {
        f"{g}.hop": 5, f"{g}.kernels": 3, f"{g}.layers": 4, f"{g}.n_fft": 20, f"{g}.padding": 3,
        f"{g}.up_sampling_factor": 600, f"{g}.upsamples": 2,
        f"{g}.noise_blocks.0.stride": 6, f"{g}.noise_blocks.0.padding": 3,
        f"{g}.noise_blocks.1.stride": 1, f"{g}.noise_blocks.1.padding": 0,
        f"{g}.up_convs.0.padding": 5, f"{g}.up_convs.0.stride": 10,
        f"{g}.up_convs.1.padding": 3, f"{g}.up_convs.1.stride": 6,
        "kokoro.decoder_start_token_id": 0,
        "kokoro.duration_predictor.albert.attn_heads": 12, "kokoro.duration_predictor.albert.context_length": 512,
        "kokoro.duration_predictor.albert.hidden_size": 768, "kokoro.duration_predictor.albert.layers": 1,
        "kokoro.duration_predictor.albert.recurrence": 12, "kokoro.duration_predictor.f0_n_blocks": 3,
        "kokoro.duration_predictor.hidden_size": 512, "kokoro.duration_predictor.layers": 3,
        "kokoro.text_encoder.layers": 3, "phonemizer.phoneme_type": 1, "phonemizer.type": 1,
        "tokenizer.ggml.eos_token_id": 0, "tokenizer.ggml.padding_token_id": 0,
    }
    for i, k in enumerate((7, 11)):
        for j, d in enumerate((1, 3, 5)):
            meta[f"{g}.noise_blocks.{i}.res_block.{j}.dilation"] = d
            meta[f"{g}.noise_blocks.{i}.res_block.{j}.padding"] = (k * d - d) // 2
    for i in range(6):
        k = (3, 7, 11)[i % 3]
        for j, d in enumerate((1, 3, 5)):
            meta[f"{g}.res_blocks.{i}.{j}.dilation"] = d
            meta[f"{g}.res_blocks.{i}.{j}.padding"] = (k * d - d) // 2
    return meta


# ---------------------------------------------------------------------------------------------------------
# Small models


def tiny_config() -> KokoroConfig:
    """Every structure of Kokoro at toy widths; some rows a multiple of 32 (Q8_0), some not. Phoneme ids with gaps."""
    tokens = ("", ";", "a", "", "b", "ˈ", "", "ə", "", "", "ɹ", "ʊ")
    return KokoroConfig(
        tokens=tokens, n_token=len(tokens),
        albert_hidden_size=32, albert_n_heads=2, albert_n_layers=3, albert_intermediate_size=64,
        albert_embedding_size=8, albert_context_length=16,
        hidden_dim=32, style_dim=32, n_layer=2, max_dur=6, text_encoder_kernel_size=3,
        decoder_hidden=16, asr_res_channels=4,
        upsample_rates=(2, 3), upsample_kernel_sizes=(4, 6), upsample_initial_channel=16,
        resblock_kernel_sizes=(3, 5), resblock_dilation_sizes=((1, 3, 5), (1, 2, 3)),
        n_fft=4, hop=2,
    )


def random_state(cfg: KokoroConfig, seed: int = 0, implied_as_kmodel: bool = True) -> dict[str, np.ndarray]:
    """Random weights over several magnitudes (F16 subnormals and large values included); the implied tensors
    at the values the layout implies unless `implied_as_kmodel` is False."""
    rng = np.random.default_rng(seed)
    out = {}
    for key, p in kg.kokoro_tensor_names(cfg).items():
        if p.kind == "implied" and implied_as_kmodel:
            out[key] = np.full(p.shape, p.fill, np.float32)
            continue
        scale = 10.0 ** rng.uniform(-6, 2, size=p.shape)
        out[key] = (rng.standard_normal(p.shape) * scale).astype(np.float32)
    return out


def random_voices(n_rows=510, names=("af_test", "bm_other")) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {n: rng.standard_normal((n_rows, 256)).astype(np.float32) for n in names}


async def _open(path) -> GGUFFile:
    return await GGUFFile.open(path)


async def _load(path, **kw):
    gf = await _open(path)
    try:
        return kg.read_kokoro_config(gf), await kg.load_state(gf, **kw), await kg.voices(gf), gf
    finally:
        await gf.close()


def _f16_bound(x: np.ndarray) -> np.ndarray:
    """Round-to-nearest F16: half an ulp, 2^-11 relative for normal values, 2^-25 absolute for subnormals."""
    return np.maximum(np.abs(x.astype(np.float64)) * 2.0**-11, 2.0**-25)


def _q8_0_bound(x: np.ndarray) -> np.ndarray:
    """Q8_0 of one row, per 32-value block: d = max|x| / 127 stored as F16 (dh, within 2^-11 d), q = round(x / d),
    value dh * q. |x - dh q| <= |x - d q| + |d - dh| |q| <= d / 2 + 127 * 2^-11 * d (q is at most 127)."""
    blocks = np.abs(x.astype(np.float64)).reshape(-1, 32)
    d = blocks.max(axis=1, keepdims=True) / 127
    # (1 + 1e-6): q is rounded from x * (1 / d) in f32. 2^-25: F16's absolute step below 2^-14.
    bound = (d / 2 + 127 * np.maximum(d * 2.0**-11, 2.0**-25)) * (1 + 1e-6)
    return np.broadcast_to(bound, blocks.shape).reshape(x.shape)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    cfg = tiny_config()
    state = random_state(cfg)
    voices = random_voices()
    d = tmp_path_factory.mktemp("kokoro")
    files = {t: ck.write_gguf(state, cfg, voices, d / f"tiny-{t}.gguf", t) for t in ("f32", "f16", "q8_0")}
    return cfg, state, voices, files


async def test_round_trip_f32_is_exact(tiny):
    cfg, state, voices, files = tiny
    got_cfg, got, got_voices, _ = await _load(files["f32"])
    assert set(got) == set(state)
    for k, v in state.items():
        assert got[k].dtype == np.float32 and got[k].shape == v.shape, k
        assert np.array_equal(got[k], v), k
    assert set(got_voices) == set(voices)
    for n, v in voices.items():
        assert np.array_equal(got_voices[n], v), n
    assert got_cfg == cfg
    assert got_cfg.voices == tuple(sorted(voices))


@pytest.mark.parametrize("ftype", ["f16", "q8_0"])
async def test_round_trip_within_type_rounding(tiny, ftype):
    """Each GGUF tensor comes back within the rounding of the type the converter chose for it, and the types
    are the documented ones (F32: biases, norms, embeddings, alphas, gamma/beta; Q8_0 only for TTS.cpp's
    quantisable matrices with rows a multiple of 32)."""
    cfg, state, voices, files = tiny
    gf = await _open(files[ftype])
    try:
        got = await kg.load_state(gf)
        types = {n: i.ggml_type for n, i in gf.tensors.items()}
        written = {n: await gf.tensor(n) for n in gf.tensors}
    finally:
        await gf.close()
    seen = set()
    for name, value in ck.gguf_tensors(state, cfg):
        want = ck.tensor_type(name, value.shape, ftype)
        assert types[name] == want, name
        seen.add(want)
        back = written[name].astype(np.float64)
        err = np.abs(back - value)
        if want == Q.F32:
            assert np.array_equal(back, value), name
        elif want == Q.F16:
            assert np.all(err <= _f16_bound(value)), name
        else:
            assert np.all(err <= _q8_0_bound(value)), name
    assert seen == ({Q.F32, Q.F16} if ftype == "f16" else {Q.F32, Q.F16, Q.Q8_0})
    assert set(got) == set(state)
    for k in ("bert.encoder.albert_layer_groups.0.albert_layers.0.attention.query.weight",
              "decoder.generator.ups.1.weight", "predictor.F0.1.norm1.fc.weight"):
        assert got[k].shape == state[k].shape
    # The type rule on names TTS.cpp's F16 conversion knows.
    assert types["kokoro.decoder.generator.conv_post_weight"] == Q.F16
    assert types["kokoro.decoder.generator.resblocks.0.0.gamma1_weight"] == Q.F32
    assert types["kokoro.albert.token_embd"] == Q.F32
    assert types["kokoro.voice_tensors.af_test"] == Q.F32


async def test_extras_keep_what_the_layout_cannot(tmp_path):
    """Implied tensors with other values and the token type table's other rows go to kokoro.extra.<key>; a
    state with the implied values and row 1 zero writes no extra (the file is exactly TTS.cpp's set)."""
    cfg = tiny_config()
    state = random_state(cfg, implied_as_kmodel=False)
    path = ck.write_gguf(state, cfg, random_voices(), tmp_path / "x.gguf", "f32")
    _, got, _, _ = await _load(path)
    for k in state:
        assert np.array_equal(got[k], state[k]), k

    plain = random_state(cfg)
    plain["bert.embeddings.token_type_embeddings.weight"][1:] = 0
    path = ck.write_gguf(plain, cfg, random_voices(), tmp_path / "plain.gguf", "f32")
    gf = await _open(path)
    try:
        assert not [n for n in gf.tensors if n.startswith(kg.EXTRA_PREFIX)]
        got = await kg.load_state(gf)
    finally:
        await gf.close()
    for k in plain:
        assert np.array_equal(got[k], plain[k]), k


async def test_metadata(tiny):
    cfg, _, voices, files = tiny
    gf = await _open(files["f16"])
    m = gf.metadata
    await gf.close()
    assert m["general.architecture"] == "kokoro"
    assert m["general.file_type"] == gguf.LlamaFileType.MOSTLY_F16
    assert m["tokenizer.ggml.tokens"] == list(cfg.tokens)
    assert m["kokoro.tokenizer.vocab_size"] == cfg.n_token
    assert m["kokoro.voices"] == sorted(voices)
    g = "kokoro.decoder.generator"
    assert m[f"{g}.up_sampling_factor"] == 2 * 2 * 3 * 2 == cfg.samples_per_frame
    assert [m[f"{g}.up_convs.{i}.stride"] for i in range(2)] == [2, 3]
    assert [m[f"{g}.up_convs.{i}.padding"] for i in range(2)] == [1, 1]  # (k - u) // 2
    # stride prod(upsample_rates[1:]), padding (stride + 1) // 2
    assert (m[f"{g}.noise_blocks.0.stride"], m[f"{g}.noise_blocks.0.padding"]) == (3, 2)
    assert (m[f"{g}.noise_blocks.1.stride"], m[f"{g}.noise_blocks.1.padding"]) == (1, 0)
    assert m[f"{g}.res_blocks.3.2.dilation"] == 3 and m[f"{g}.res_blocks.3.2.padding"] == 6  # kernel 5, dilation 3
    assert m[f"{g}.resblock_dilation_sizes"] == [1, 3, 5, 1, 2, 3]
    assert kg.read_kokoro_config(m) == cfg


def test_kmodel_config_round_trip():
    """config.json (what KModel(config=...) takes) from a KokoroConfig and back; it does not carry the widths
    KModel hard-codes or takes from HF's ALBERT defaults, so those are the v1.0 ones here."""
    cfg = dataclasses.replace(tiny_config(), albert_embedding_size=128, decoder_hidden=1024, asr_res_channels=64)
    d = cfg.kmodel_config()
    assert KokoroConfig.from_kmodel_config(d) == cfg
    assert d["vocab"] == {t: i for i, t in enumerate(cfg.tokens) if t}


def test_name_table_is_kmodels():
    """Every KModel key of Kokoro-82M v1.0 with its torch shape: the digest of kokoro 0.9.4's own state dict."""
    table = kg.GGUF_NAME
    lines = "".join(f"{k} {list(p.shape)}\n" for k, p in sorted(table.items()))
    assert len(table) == KMODEL_N_KEYS
    assert sum(math.prod(p.shape) for p in table.values()) == KMODEL_N_VALUES
    assert hashlib.sha256(lines.encode()).hexdigest() == KMODEL_KEYS_SHA256, (
        "the name table no longer matches KModel's state dict (tools/convert_kokoro.py --check-kmodel lists the "
        "differences)")


def test_name_table_is_ttscpps():
    """The GGUF names and shapes are exactly those TTS.cpp's converter writes (our extras aside), and every GGUF
    name is used once."""
    names = [n for p in kg.GGUF_NAME.values() if p.kind != "implied" for n in p.parts]
    assert len(names) == len(set(names)) == TTSCPP_N_TENSORS
    lines = sorted(f"{n} {list(p.part_shape())}" for p in kg.GGUF_NAME.values() if p.kind != "implied" for n in p.parts)
    assert hashlib.sha256("".join(l + "\n" for l in lines).encode()).hexdigest() == TTSCPP_TENSORS_SHA256


def test_metadata_matches_ttscpps():
    ours = {k: v for k, _, v in kg.config_metadata(KokoroConfig())}
    for k, v in _ttscpp_metadata().items():
        assert ours.get(k) == v, k


def test_reads_ttscpp_metadata_alone():
    """A TTS.cpp file has none of our keys: its own keys and the v1.0 values give the same config."""
    meta = dict(_ttscpp_metadata())
    v10 = KokoroConfig(tokens=tiny_config().tokens, n_token=12)
    meta.update({"general.architecture": "kokoro", "tokenizer.ggml.tokens": list(v10.tokens)})
    assert kg.read_kokoro_config(meta) == v10


async def test_load_state_subset_and_progress(tiny):
    cfg, state, _, files = tiny
    keys = ["predictor.shared.weight_ih_l0", "bert.pooler.weight", "decoder.generator.conv_post.bias"]
    calls = []
    gf = await _open(files["q8_0"])
    try:
        got = await kg.load_state(gf, keys=keys, progress=lambda *a: calls.append(a))
        one = await kg.voice(gf, "bm_other")
    finally:
        await gf.close()
    assert list(got) == keys
    assert np.array_equal(got["bert.pooler.weight"], state["bert.pooler.weight"])
    assert calls and calls[-1][0] == calls[-1][1] and len(calls) == 4 + 1  # four gate tensors, one bias
    assert one.shape == (510, 256)


# ---------------------------------------------------------------------------------------------------------
# Errors


def _write_raw(path: Path, cfg: KokoroConfig, tensors, arch="kokoro", meta=True) -> Path:
    w = gguf.GGUFWriter(str(path), arch=arch)
    if meta:
        for key, vtype, value in kg.config_metadata(cfg):
            if isinstance(value, list):
                w.add_key_value(key, value, gguf.GGUFValueType.ARRAY, sub_type=vtype)
            else:
                w.add_key_value(key, value, vtype)
    for name, arr in tensors:
        w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


async def _load_error(path) -> str:
    gf = await _open(path)
    try:
        with pytest.raises(KokoroLoadError) as e:
            kg.read_kokoro_config(gf)
            await kg.load_state(gf)
        return str(e.value)
    finally:
        await gf.close()


async def test_other_architecture(tmp_path):
    msg = await _load_error(FIXTURES / "gemma4_tiny_audio_f32.gguf")
    assert "gemma4_tiny_audio_f32.gguf is not a Kokoro text-to-speech model" in msg and "'gemma4'" in msg
    path = _write_raw(tmp_path / "none.gguf", tiny_config(), [("w", np.zeros(4, np.float32))], arch="", meta=False)
    assert "its GGUF header names no general.architecture, not 'kokoro'" in await _load_error(path)


async def test_missing_tensor(tmp_path):
    cfg = tiny_config()
    tensors = [t for t in ck.gguf_tensors(random_state(cfg), cfg) if t[0] != "kokoro.albert.layer.0.q"]
    msg = await _load_error(_write_raw(tmp_path / "m.gguf", cfg, tensors))
    assert "lacks tensor 'kokoro.albert.layer.0.q'" in msg
    assert "bert.encoder.albert_layer_groups.0.albert_layers.0.attention.query.weight" in msg
    assert "damaged or not a Kokoro-82M GGUF" in msg


async def test_misshapen_tensor(tmp_path):
    cfg = tiny_config()
    name = "kokoro.decoder.generator.ups.0.weight"
    tensors = [(n, a[:-1] if n == name else a) for n, a in ck.gguf_tensors(random_state(cfg), cfg)]
    msg = await _load_error(_write_raw(tmp_path / "s.gguf", cfg, tensors))
    assert f"'{name}' (KModel decoder.generator.ups.0.weight) has shape [15, 8, 4], expected [16, 8, 4]" in msg


async def test_non_finite_tensor(tmp_path):
    cfg = tiny_config()
    tensors = ck.gguf_tensors(random_state(cfg), cfg)
    for n, a in tensors:
        if n == "kokoro.text_encoder.layers.1.weight":
            a.reshape(-1)[3] = np.nan
    msg = await _load_error(_write_raw(tmp_path / "n.gguf", cfg, tensors))
    assert "'kokoro.text_encoder.layers.1.weight'" in msg and "NaN or infinite" in msg


async def test_no_vocabulary(tmp_path):
    path = _write_raw(tmp_path / "v.gguf", tiny_config(), [("w", np.zeros(4, np.float32))], meta=False)
    assert "the phoneme vocabulary (tokenizer.ggml.tokens) is missing" in await _load_error(path)


def test_damaged_metadata():
    meta = {k: v for k, _, v in kg.config_metadata(tiny_config())}
    meta["general.architecture"] = "kokoro"
    bad = dict(meta, **{"kokoro.duration_predictor.layers": 1_000_000_000})
    with pytest.raises(KokoroLoadError, match="1000000000 n_layer .* the header is damaged"):
        kg.read_kokoro_config(bad)
    bad = dict(meta, **{"kokoro.style_dim": [1, 2]})
    with pytest.raises(KokoroLoadError, match=r"kokoro.style_dim = \[1, 2\] is not an integer"):
        kg.read_kokoro_config(bad)
    bad = dict(meta, **{"kokoro.tokenizer.vocab_size": 13})
    with pytest.raises(KokoroLoadError, match="vocabulary has 12 entries but kokoro.tokenizer.vocab_size is 13"):
        kg.read_kokoro_config(bad)


async def test_truncated_file(tiny, tmp_path):
    """A file cut short: the reader names it when the header is read (data past the end, or the header itself)."""
    data = tiny[3]["f16"].read_bytes()
    for keep in (len(data) - 100, len(data) // 2, 1000):
        p = tmp_path / f"cut{keep}.gguf"
        p.write_bytes(data[:keep])
        with pytest.raises(GGUFError) as e:
            await GGUFFile.open(p)
        assert "truncated" in str(e.value) and p.name in str(e.value)


async def test_unknown_voice(tiny):
    gf = await _open(tiny[3]["f32"])
    try:
        with pytest.raises(KokoroLoadError, match="has no voice 'zz_none' \\(voices: af_test, bm_other\\)"):
            await kg.voice(gf, "zz_none")
    finally:
        await gf.close()


# ---------------------------------------------------------------------------------------------------------
# The real files of the setup


def _cached(path: Path, what: str) -> Path:
    require(None if path.exists() else f"{path} is missing (run tools/setup.sh or python -m rullama_py.assets)", what)
    return path


@pytest.fixture(scope="module")
def real_f32():
    path = _cached(assets.kokoro_model_path("f32"), "the Kokoro GGUF tests")
    return path, *_real(path)


def _real(path):
    from conftest import run

    return run(_load(path))


async def test_real_metadata_and_vocabulary(real_f32):
    path, cfg, state, voices, gf = real_f32
    config = json.loads(_cached(assets.kokoro_config_path(), "the Kokoro GGUF tests").read_text(encoding="utf-8"))
    assert cfg.kmodel_config() == config
    assert len(cfg.tokens) == 178 and cfg.tokens[0] == ""
    assert sum(1 for t in cfg.tokens if t) == len(config["vocab"]) == 114  # 64 ids no phoneme uses
    assert cfg.vocab == config["vocab"]
    assert gf.metadata["general.file_type"] == gguf.LlamaFileType.ALL_F32
    assert len(voices) == 54 and cfg.voices == tuple(sorted(assets.KOKORO_VOICE_SHA256))


async def test_real_every_kmodel_key(real_f32):
    _, _, state, _, _ = real_f32
    assert set(state) == set(kg.GGUF_NAME)
    for k, p in kg.GGUF_NAME.items():
        assert state[k].shape == p.shape and state[k].dtype == np.float32, k


async def test_real_voices_are_the_voicepacks():
    """Each voice tensor's bytes are exactly the kokoro-js voices/<name>.bin file (in both files)."""
    voices_dir = _cached(assets.kokoro_voices_dir(), "the Kokoro voice tests")
    for kind in ("f16", "f32"):
        gf = await _open(_cached(assets.kokoro_model_path(kind), "the Kokoro voice tests"))
        try:
            assert sorted(kg._voice_names(gf)) == sorted(assets.KOKORO_VOICE_SHA256)
            for name in assets.KOKORO_VOICE_SHA256:
                info = gf.info(kg.VOICE_PREFIX + name)
                assert info.type_name == "f32" and info.shape == (510, 256)
                assert bytes(await gf.tensor_bytes(info.name)) == (voices_dir / f"{name}.bin").read_bytes(), name
        finally:
            await gf.close()


async def test_real_f32_is_the_onnx_weights(real_f32):
    """The F32 file holds exactly what state_dict_from_onnx dequantises from the cached int8 ONNX."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        require("the onnx package is missing (the `convert` extra)", "the Kokoro converter test")
    onnx_path = _cached(assets.kokoro_onnx_path(), "the Kokoro converter test")
    _, _, state, _, _ = real_f32
    want = ck.state_dict_from_onnx(onnx_path)
    assert set(want) == set(state)
    for k in want:
        assert np.array_equal(state[k], want[k]), k


async def test_real_f16_within_f16_rounding(real_f32):
    _, _, state, _, _ = real_f32
    gf = await _open(_cached(assets.kokoro_model_path("f16"), "the Kokoro GGUF tests"))
    try:
        assert gf.metadata["general.file_type"] == gguf.LlamaFileType.MOSTLY_F16
        got = await kg.load_state(gf)
        types = {n: i.ggml_type for n, i in gf.tensors.items()}
    finally:
        await gf.close()
    f16 = total = 0
    for name, value in ck.gguf_tensors(state, KokoroConfig()):
        assert types[name] == ck.tensor_type(name, value.shape, "f16"), name
        total += value.size
        f16 += value.size if types[name] == Q.F16 else 0
    assert f16 / total > 0.9  # 91.8 %: the AdaIN gamma/beta matrices, embeddings and vectors stay F32
    for k, v in state.items():
        err = np.abs(got[k].astype(np.float64) - v)
        assert np.all(err <= _f16_bound(v)), k


async def test_real_tensors_hold_what_ttscpp_writes():
    """Each sampled tensor of our F32 file holds the numbers TTS.cpp's converter put under that name."""
    gf = await _open(_cached(assets.kokoro_model_path("f32"), "the Kokoro GGUF tests"))
    try:
        for name, want in TTSCPP_PROJECTIONS:
            x = (await gf.tensor(name)).astype(np.float64).reshape(-1)
            got = float(x @ np.cos(np.arange(x.size) * 0.7))
            assert got == pytest.approx(want, rel=1e-9, abs=1e-12), name
    finally:
        await gf.close()
