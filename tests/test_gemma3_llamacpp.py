"""Gemma 3 270M (real weights) against llama.cpp: greedy token ids and first-step logits.

Goldens: tests/goldens/gemma3_270m_llamacpp.{json,npz}, made by tools/make_gemma3_goldens.py with
llama-cpp-python 0.3.36. The prompt ids come from llama.cpp's tokenizer, so this tests the forward pass alone.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from rullama_py import assets
from rullama_py.gguf_file import GGUFFile
from rullama_py.models.gemma import Gemma

GOLDENS = Path(__file__).parent / "goldens"
CASES = json.loads((GOLDENS / "gemma3_270m_llamacpp.json").read_text())["cases"]
N_GREEDY = 32

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model(device):
    from conftest import run

    path = assets.default_model_path()
    if not path.exists():
        pytest.skip("the Gemma 3 270M GGUF is not installed (run tools/setup.sh)")
    gf = run(GGUFFile.open(path))
    return run(Gemma.load(gf, device, max_context=256, prefill_chunk=32))


@pytest.mark.parametrize("case", [0, 1, 2])
async def test_first_step_logits_match_llamacpp(model, case):
    ref = np.load(GOLDENS / "gemma3_270m_llamacpp_logits.npz")[f"case{case}"].astype(np.float32)
    got = await model.forward(CASES[case]["prompt_ids"], 0)
    assert got.shape == ref.shape
    # llama.cpp's CPU matmuls quantise activations to 8 bits (Q8_0/Q8_K) and the goldens are stored as f16,
    # while our kernels dequantise weights exactly and keep activations in f32. Measured: correlation
    # 0.9979-0.9996, max |diff| 0.8-1.7 at |logit| 20-32 (noise spread over the 262k tail), softmax KL
    # 1e-4..5e-3, identical top 10. A real mistake (a wrong norm, rope base or mask) gives KL > 0.5 and
    # a different top. The bounds below leave room for other GPUs' rounding.
    assert int(got.argmax()) == int(ref.argmax())
    assert np.corrcoef(got, ref)[0, 1] > 0.995
    assert np.abs(got - ref).max() < 0.1 * np.abs(ref).max()
    p = np.exp(ref - ref.max())
    p /= p.sum()
    log_q = got - got.max() - np.log(np.exp(got - got.max()).sum())
    kl = float((p * (np.log(p + 1e-30) - log_q)).sum())
    assert kl < 0.02, kl
    assert len(set(np.argsort(ref)[-10:]) & set(np.argsort(got)[-10:])) >= 9


# Greedy decoding is judged step by step with llama.cpp's own tokens fed back (teacher forcing): at every step
# our argmax must be llama.cpp's token, except at near-ties, where llama.cpp's 8-bit activation noise
# (measured std 0.15-0.3 of the logits) decides. Measured: cases 2 and 3-in-part agree everywhere; the
# disagreements are at margins 0.013 (case 0, step 15), 0.05 and 0.60 (case 1, flat logits near 0), 0.11
# (case 3) and 0.20 (case 4). With every step agreeing, teacher forcing equals free-running greedy, so case 2
# checks that 32 free-running greedy tokens reproduce llama.cpp's exactly.
TIE_MARGIN = 0.75
EXACT_CASES = {2}


@pytest.mark.parametrize("case", range(len(CASES)))
async def test_greedy_matches_llamacpp(model, case):
    c = CASES[case]
    want = c["greedy_ids"][:N_GREEDY]
    ids = list(c["prompt_ids"])
    logits = await model.forward(ids, 0)
    pos, mismatches = len(ids), []
    for i, tok in enumerate(want):
        ours = int(logits.argmax())
        if ours != tok:
            mismatches.append((i, ours, tok, float(logits[ours] - logits[tok])))
        logits = await model.forward([tok], pos)
        pos += 1
    if case in EXACT_CASES:
        assert mismatches == []
    assert len(mismatches) <= max(1, len(want) // 10), mismatches
    assert all(margin < TIE_MARGIN for *_, margin in mismatches), mismatches
