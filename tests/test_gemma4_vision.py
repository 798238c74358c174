"""Gemma 4 vision on the GPU against transformers (goldens in tests/fixtures, made by
tools/make_tiny_gemma4_vision.py; the fixtures README says how to feed them): the soft tokens of five images
(portrait and landscape at budgets 70 and 140, and a square one), and the logits at every position of a chat
prompt holding an image, and of one holding two, for Ollama's monolithic F32 file and for a llama.cpp Q8_0
model + mmproj pair. The engine's own path (preprocessing from the image file, prompt expansion, splicing)
must reproduce the same prompt and reply."""

import json
from pathlib import Path

import numpy as np
import pytest

from rullama_py import media
from soft_blocks import soft_blocks
from rullama_py.engine import Engine
from rullama_py.gguf_file import GGUFFile
from rullama_py.media import PreparedImage
from rullama_py.models.gemma import Gemma
from rullama_py.models.gemma_vision import GemmaVision
from rullama_py.sampling import SamplerParams

FIXTURES = Path(__file__).parent / "fixtures"
INPUTS = np.load(FIXTURES / "gemma4_tiny_vision_inputs.npz")
NAMES = ["portrait_70", "landscape_70", "portrait_140", "landscape_140", "square_70"]
CASES = ["portrait_70", "landscape_70", "portrait_140", "landscape_140"]
MODELS = {  # name -> (text GGUF, the file holding the tower)
    "f32": ("gemma4_tiny_vision_f32.gguf", "gemma4_tiny_vision_f32.gguf"),
    "q8_0": ("gemma4_tiny_vision_q8_0.gguf", "gemma4_tiny_vision_q8_0.mmproj.gguf"),
}
IMAGE_FILES = {"portrait": "portrait_exif.jpg", "landscape": "landscape.jpg", "square": "photo.webp"}
# Soft tokens reach 12. The measured worst case is 4e-3 (the f16 K/V of the tower's attention and F16 patch
# weights); 1e-3 relative noise in every tower matmul moves them by 0.008 and a real mistake by >= 0.8.
SOFT_ATOL = 0.03
# Logits reach 21; as for the text parity tests (test_gemma4_parity.ATOL): the f16 KV cache against float64
# goldens; the soft tokens' own error adds at most 0.01 more (fixtures README). A mistake moves them >= 9.
LOGIT_ATOL = 0.05


def prepared(name: str) -> PreparedImage:
    """HF's exact pixel values for input `name`, in the layout media.PreparedImage uses: columns (channel,
    row, col) instead of HF's (row, col, channel), and 2 * pixel - 1 folded in."""
    u8 = INPUTS[f"{name}_pixels_u8"]
    gh, gw = (int(v) for v in INPUTS[f"{name}_grid"])
    pixels = u8.astype(np.float32) / np.float32(255)
    patches = (2 * pixels - 1).reshape(-1, 16, 16, 3).transpose(0, 3, 1, 2).reshape(len(u8), -1)
    pos = INPUTS[f"{name}_positions"].astype(np.uint32)
    return PreparedImage(np.ascontiguousarray(patches, np.float32), pos, (gw, gh), len(u8) // 9,
                         (16 * gh, 16 * gw), (16 * gh, 16 * gw))


async def _tower(device, model: str) -> tuple[GemmaVision, Gemma]:
    text, tower = MODELS[model]
    gf = await GGUFFile.open(FIXTURES / text)
    m = await Gemma.load(gf, device, max_context=160, prefill_chunk=16)
    tf = gf if tower == text else await GGUFFile.open(FIXTURES / tower)
    return await GemmaVision.load(tf, device, text_d_model=m.cfg.d_model), m


@pytest.mark.parametrize("model", list(MODELS))
async def test_soft_tokens(device, model):
    z = np.load(FIXTURES / f"gemma4_tiny_vision_{model}.npz")
    tower, _ = await _tower(device, model)
    try:
        for name in NAMES:
            img = prepared(name)
            budget = int(name.rsplit("_", 1)[1])
            got = (await device.read(await tower.encode(img, budget=budget)))[: img.n_soft]
            want = z[f"{name}_soft_tokens"]
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, atol=SOFT_ATOL, err_msg=f"{model} {name}")
    finally:
        tower.release()


async def _soft(device, tower, names) -> list:
    """Each image's soft tokens in a buffer of its own (the tower's output buffer is reused per budget)."""
    out = []
    for name in names:
        img = prepared(name)
        rows = await tower.encode(img, budget=int(name.rsplit("_", 1)[1]))
        t = device.tensor((img.n_soft, rows.shape[1]), "float32", f"soft.{name}")
        device.copy([(rows.buffer, 0, t.buffer, 0, t.nbytes)])
        out.append(t)
    return out


def _shift(blocks, start: int) -> list:
    return [(off - start, t, n) for off, t, n in blocks]


@pytest.mark.parametrize("model", list(MODELS))
async def test_prompt_logits_at_every_position(device, model):
    """Each case's prompt one token at a time (the decode run: every image row spliced alone), and the
    two-image prompt as prefill chunks that cut through the images, then the last tokens one at a time."""
    z = np.load(FIXTURES / f"gemma4_tiny_vision_{model}.npz")
    info = json.loads(str(z["info"]))
    image_id = int(z["marker_ids"][list(z["marker_names"]).index("<|image|>")])
    tower, m = await _tower(device, model)
    try:
        for case in CASES[:2] if model == "q8_0" else CASES:
            toks, ref = z[f"{case}_tokens"].tolist(), z[f"{case}_logits"]
            blocks = soft_blocks(toks, await _soft(device, tower, [case]), image_id)
            for t, tok in enumerate(toks):
                got = await m.forward([tok], t, _shift(blocks, t))
                np.testing.assert_allclose(got, ref[t], atol=LOGIT_ATOL, err_msg=f"{model} {case} position {t}")
                assert got.argmax() == ref[t].argmax()
        toks, ref = z["pair_tokens"].tolist(), z["pair_logits"]
        blocks = soft_blocks(toks, await _soft(device, tower, info["pair"]), image_id)
        split = len(toks) - 5
        got = await m.forward(toks[:split], 0, blocks)  # chunks of 16 straddle both images
        np.testing.assert_allclose(got, ref[split - 1], atol=LOGIT_ATOL)
        for t in range(split, len(toks)):
            got = await m.forward([toks[t]], t)
            np.testing.assert_allclose(got, ref[t], atol=LOGIT_ATOL, err_msg=f"{model} pair position {t}")
    finally:
        tower.release()


async def test_long_prefill_run_splices_images(device):
    """The two-image prompt through a long prefill run (61 tokens) while more than a chunk (16) remains, then the
    prefill run: images cut by both kinds of run give the goldens' logits (a hardware GPU's 512 and 256)."""
    z = np.load(FIXTURES / "gemma4_tiny_vision_f32.npz")
    info = json.loads(str(z["info"]))
    image_id = int(z["marker_ids"][list(z["marker_names"]).index("<|image|>")])
    text, tower_file = MODELS["f32"]
    gf = await GGUFFile.open(FIXTURES / text)
    m = await Gemma.load(gf, device, max_context=160, prefill_chunk=16, long_prefill_chunk=61)
    tf = gf if tower_file == text else await GGUFFile.open(FIXTURES / tower_file)
    tower = await GemmaVision.load(tf, device, text_d_model=m.cfg.d_model)
    try:
        toks, ref = z["pair_tokens"].tolist(), z["pair_logits"]
        blocks = soft_blocks(toks, await _soft(device, tower, info["pair"]), image_id)
        split = len(toks) - 5  # 138: runs of 61, 61, then 16
        assert [m.run_for(n).capacity for n in (split, split - 61, split - 122)] == [61, 61, 16]
        got = await m.forward(toks[:split], 0, blocks)
        np.testing.assert_allclose(got, ref[split - 1], atol=LOGIT_ATOL)
    finally:
        tower.release()


@pytest.mark.parametrize("model,case", [("f32", "landscape_140"), ("q8_0", "portrait_70")])
async def test_engine_from_the_image_file(device, model, case):
    """From the JPEG through media.prepare_image, the chat template's expansion and the engine's splicing: the
    pixels are HF's, the prompt up to the image block is the goldens', and the greedy first token is what the
    model gives with the goldens' soft tokens spliced into the engine's own prompt (the goldens' text part is
    tokenised differently from a trimmed chat message, so the prompts differ after the image)."""
    z = np.load(FIXTURES / f"gemma4_tiny_vision_{model}.npz")
    image_id = int(z["marker_ids"][list(z["marker_names"]).index("<|image|>")])
    text, tower = MODELS[model]
    eng = await Engine.load(FIXTURES / text, mmproj=None if tower == text else FIXTURES / tower, max_context=160,
                            params=SamplerParams(temperature=0.0), device=device)
    eng.image_tokens = int(case.rsplit("_", 1)[1])
    data = (FIXTURES / "images" / IMAGE_FILES[case.split("_")[0]]).read_bytes()
    img = media.prepare_image(data, budget=eng.image_tokens)
    np.testing.assert_allclose(img.patches, prepared(case).patches, atol=1e-6)  # native Pillow: HF's pixels
    msgs = [{"role": "user", "content": [{"type": "image", "image": data}, {"type": "text", "text": "what is the cat"}]}]
    first = [t.id async for t in eng.chat(msgs, max_tokens=1)]
    golden = z[f"{case}_tokens"].tolist()
    image_end = max(i for i, t in enumerate(golden) if t == image_id) + 2  # through <image|>
    assert eng.tokens[:image_end] == golden[:image_end]
    soft = device.upload(z[f"{case}_soft_tokens"])
    logits = await eng.model.forward(eng.tokens, 0, soft_blocks(eng.tokens, [soft], image_id))
    assert first == [int(logits.argmax())]
