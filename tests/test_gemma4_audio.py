"""Gemma 4 audio on the GPU against transformers (goldens in tests/fixtures, made by
tools/make_tiny_gemma4_audio.py; the fixtures README says how to feed them): the soft tokens of clips shorter
than one attention chunk, of a few chunks and of a full 30 s block (and the rest of a longer clip, which
becomes a second block), and the logits at every position of chat prompts holding them; then the engine's own
path from the WAV file (features, expansion, splicing) and what a chat with audio keeps doing (prefix reuse,
cancel)."""

import json
from pathlib import Path

import numpy as np
import pytest

from reference_gemma4_audio import GemmaAudioRef
from rullama_py import media
from soft_blocks import soft_blocks
from rullama_py.engine import Cancelled, Engine, NoTowerError
from rullama_py.gguf_file import GGUFFile
from rullama_py.media import PreparedAudio, audio_soft_tokens
from rullama_py.models.gemma import Gemma
from rullama_py.models.gemma_audio import GemmaAudio
from rullama_py.sampling import SamplerParams

FIXTURES = Path(__file__).parent / "fixtures"
INPUTS = np.load(FIXTURES / "gemma4_tiny_audio_inputs.npz")
INFO = json.loads(str(INPUTS["info"]))
MODELS = {  # name -> (text GGUF, the file holding the tower)
    "f32": ("gemma4_tiny_audio_f32.gguf", "gemma4_tiny_audio_f32.gguf"),
    "q8_0": ("gemma4_tiny_audio_q8_0.gguf", "gemma4_tiny_audio_q8_0.mmproj.gguf"),
}
GOLDEN = {name: FIXTURES / f"gemma4_tiny_audio_{name}.npz" for name in MODELS}
# Soft tokens reach 12; the f32 tower lands within 3e-5 of the goldens (measured), a Q8_0 tower within a few
# 1e-3 of its own dequantised values; the wrong rel-shift, a missing soft cap or residual weight move them by
# >= 0.5 (fixtures README).
SOFT_ATOL = 0.02
LOGIT_ATOL = 0.05  # as the vision parity test: the f16 KV cache against float64 goldens


def prepared(name: str) -> PreparedAudio:
    f = INPUTS[f"{name}_features"]
    return PreparedAudio(f, audio_soft_tokens(len(f)), len(f) / 100)


async def _tower(device, model: str):
    text, tower = MODELS[model]
    gf = await GGUFFile.open(FIXTURES / text)
    m = await Gemma.load(gf, device, max_context=800, prefill_chunk=64)
    tf = gf if tower == text else await GGUFFile.open(FIXTURES / tower)
    return await GemmaAudio.load(tf, device, text_d_model=m.cfg.d_model), m


@pytest.mark.parametrize("model", [m for m in MODELS if GOLDEN[m].exists()])
async def test_soft_tokens(device, model):
    z = np.load(GOLDEN[model])
    tower, _ = await _tower(device, model)
    try:
        for name in INFO["n_soft"]:
            a = prepared(name)
            assert a.n_soft == INFO["n_soft"][name]
            got = (await device.read(await tower.encode(a)))[: a.n_soft]
            np.testing.assert_allclose(got, z[f"{name}_soft_tokens"], atol=SOFT_ATOL, err_msg=f"{model} {name}")
    finally:
        tower.release()


async def test_tower_matches_numpy_reference_on_the_fallback_kernels(device_fallback):
    """The q8_0 mmproj (llama.cpp's names) through the kernels devices without f16 and subgroups get."""
    path = FIXTURES / MODELS["q8_0"][1]
    gf = await GGUFFile.open(path)
    tower = await GemmaAudio.load(gf, device_fallback, text_d_model=gf.info("mm.a.input_projection.weight").n_rows)
    ref = GemmaAudioRef(path)
    try:
        for name in ("short", "medium"):
            a = prepared(name)
            got = (await device_fallback.read(await tower.encode(a)))[: a.n_soft]
            np.testing.assert_allclose(got, ref.encode(a.features), atol=SOFT_ATOL, err_msg=name)
    finally:
        tower.release()


@pytest.mark.parametrize("model", [m for m in MODELS if GOLDEN[m].exists()])
async def test_prompt_logits_at_every_position(device, model):
    """short and medium one token at a time (every soft row spliced alone into the decode run); the 30 s
    block through prefill chunks of 64 that cut through it, then the last tokens one at a time."""
    z = np.load(GOLDEN[model])
    soft_id = int(z["marker_ids"][list(z["marker_names"]).index("<|audio|>")])
    tower, m = await _tower(device, model)
    try:
        for case in ("short", "medium", "long") if model == "f32" else ("short", "medium"):  # q8_0: no long prompt
            toks, ref = z[f"{case}_tokens"].tolist(), z[f"{case}_logits"]
            rows = await tower.encode(prepared(case))
            soft = device.tensor(rows.shape, "float32", "soft")
            device.copy([(rows.buffer, 0, soft.buffer, 0, soft.nbytes)])
            blocks = soft_blocks(toks, [soft], soft_id)
            start = 0
            if case == "long":
                start = len(toks) - 4
                got = await m.forward(toks[:start], 0, blocks)
                np.testing.assert_allclose(got, ref[start - 1], atol=LOGIT_ATOL)
            for t in range(start, len(toks)):
                got = await m.forward([toks[t]], t, [(off - t, s, n) for off, s, n in blocks])
                np.testing.assert_allclose(got, ref[t], atol=LOGIT_ATOL, err_msg=f"{model} {case} position {t}")
                assert got.argmax() == ref[t].argmax()
    finally:
        tower.release()


async def _engine(model="f32") -> Engine:
    text, tower = MODELS[model]
    return await Engine.load(FIXTURES / text, mmproj=None if tower == text else FIXTURES / tower, max_context=900,
                             params=SamplerParams(temperature=0.0))


def _turn(audio, text):
    return {"role": "user", "content": [{"type": "audio", "audio": audio}, {"type": "text", "text": text}]}


async def test_engine_from_the_wav_file(device):
    """The WAV through media.prepare_audio: HF's features, the template's `<|audio>` block at the goldens'
    place, and the first greedy token equal to the model's with the goldens' soft tokens spliced into the
    engine's own prompt; a second turn reuses the clip's KV without the tower."""
    z = np.load(GOLDEN["f32"])
    soft_id = int(z["marker_ids"][list(z["marker_names"]).index("<|audio|>")])
    eng = await _engine()
    assert eng.has_audio and not eng.has_vision
    data = (FIXTURES / INFO["files"]["medium"]).read_bytes()
    (a,) = media.prepare_audio(data)
    np.testing.assert_allclose(a.features, INPUTS["medium_features"], atol=1e-4)
    events = []
    msgs = [_turn(data, "what is said here")]
    first = [t.id async for t in eng.chat(msgs, max_tokens=1, progress=events.append)]
    assert events[-1]["stage"] == "audio" and events[-1]["layer"] == events[-1]["layers"]
    golden = z["medium_tokens"].tolist()
    end = max(i for i, t in enumerate(golden) if t == soft_id) + 2
    assert eng.tokens[:end] == golden[:end]
    soft = device.upload(z["medium_soft_tokens"])
    logits = await eng.model.forward(eng.tokens, 0, soft_blocks(eng.tokens, [soft], soft_id))
    assert first == [int(logits.argmax())]
    eng.reset()
    reply = [t.id async for t in eng.chat(msgs, max_tokens=3)]
    msgs += [{"role": "assistant", "content": eng.tokenizer.decode(reply)}, {"role": "user", "content": "and"}]
    events.clear()
    [t async for t in eng.chat(msgs, max_tokens=2, progress=events.append)]
    assert events == []  # the clip's soft tokens stayed in the KV cache


async def test_a_long_clip_becomes_30_second_blocks_and_cancel_keeps_the_engine():
    """65 s of audio are three blocks (30, 30 and 5 s: 750, 750 and 125 soft tokens), each its own `<|audio>`
    block as llama.cpp encodes a long clip (transformers' processor would drop all past 30 s); a cancel in the
    second block raises Cancelled, and the conversation before it goes on."""
    eng = await Engine.load(FIXTURES / MODELS["f32"][0], max_context=2048, params=SamplerParams(temperature=0.0))
    rng = np.random.default_rng(3)
    samples = (rng.standard_normal(16000 * 65) * 0.05).astype(np.float32)
    before = [t.id async for t in eng.chat([{"role": "user", "content": "the cat"}], max_tokens=2)]
    context = list(eng.tokens)
    events = []

    def cancel_in_second_block(e):
        events.append(e)
        if e["index"] == 2 and e["layer"] == 1:
            eng.cancel()

    history = [{"role": "user", "content": "the cat"}, {"role": "assistant", "content": eng.tokenizer.decode(before)}]
    with pytest.raises(Cancelled):
        async for _ in eng.chat(history + [_turn(samples, "x")], max_tokens=2, progress=cancel_in_second_block):
            pass
    assert {e["count"] for e in events} == {3} and max(e["index"] for e in events) == 2
    assert eng.tokens == context[: len(eng.tokens)]
    [t async for t in eng.chat([_turn(samples, "x")], max_tokens=1)]
    assert [sp.n for sp in eng.spans] == [750, 750, 125]


async def test_models_without_an_audio_tower_say_so():
    eng = await Engine.load(FIXTURES / "gemma4_tiny_vision_f32.gguf", max_context=64)
    wav = (FIXTURES / INFO["files"]["short"]).read_bytes()
    with pytest.raises(NoTowerError, match="no audio tower"):
        async for _ in eng.chat([_turn(wav, "x")], max_tokens=1):
            pass
