"""Gemma 3 270M (real weights) against llama.cpp: greedy token ids and first-step logits.

Goldens: tests/goldens/gemma3_270m_llamacpp.{json,npz}, made by tools/make_gemma3_goldens.py with
llama-cpp-python 0.3.36. The prompt ids come from llama.cpp's tokenizer, so this tests the forward pass alone.
"""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from rullama_py import assets
from rullama_py.gguf_file import GGUFFile
from rullama_py.models.gemma import Gemma

GOLDENS = Path(__file__).parent / "goldens"
CASES = json.loads((GOLDENS / "gemma3_270m_llamacpp.json").read_text())["cases"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model(device):
    from conftest import run

    path = assets.default_model_path()
    if not path.exists():
        pytest.skip("the Gemma 3 270M GGUF is not installed (run tools/setup.sh)")
    gf = run(GGUFFile.open(path))
    return run(Gemma.load(gf, device, max_context=256, prefill_chunk=32))


# On lavapipe a prompt's prefill costs as much as several decode steps, so each case's prompt is read once:
# the greedy run below keeps the prompt's logits for the first-step comparison.
_prompt_logits: dict[int, np.ndarray] = {}


async def _read_prompt(model, case: int) -> np.ndarray:
    logits = await model.forward(CASES[case]["prompt_ids"], 0)
    _prompt_logits[case] = logits
    return logits


# Greedy decoding is judged step by step with llama.cpp's own tokens fed back (teacher forcing): at every step
# our argmax must be llama.cpp's token, except at near-ties, where llama.cpp's 8-bit activation noise
# (measured std 0.15-0.3 of the logits) decides. Measured over 32 steps of the goldens' five prompts: cases 2
# and 3-in-part agree everywhere; the disagreements are at margins 0.013 (case 0, step 15), 0.60 and 0.05
# (case 1, steps 8 and 10, flat logits near 0), 0.11 (case 3) and 0.20 (case 4). With every step agreeing,
# teacher forcing equals free-running greedy, so case 2 checks that free-running greedy tokens reproduce
# llama.cpp's exactly.
# A decode step costs seconds on lavapipe and a prefill several times that, so three prompts are run, one per
# kind, each as far as its measured near-ties: 0, plain prose, with the tightest near-tie (step 15, margin
# 0.013); 1, the chat template, with the widest (0.60) among flat logits; 2, code, the exact free-running case,
# over its first 16 steps (tests/test_gemma3_f32.py runs a code prompt free-running for 24 steps against the
# float32 oracle; 16 more steps here cost half a minute of CI). Cases 3 (chat template) and 4 (prose) are the
# same kinds with ties in between, through the same kernels and positions (all well under the 512-token
# sliding window).
TIE_MARGIN = 0.75
EXACT_CASES = {2}
# case -> llama.cpp tokens fed back; case 1 runs to 20, where the allowance of one disagreement in ten covers its two
# CI runs the exact case only (the float32 oracle's test judges greedy steps near ties); RULLAMA_ORACLE_ALL=1 all.
GREEDY_STEPS = {0: 16, 1: 20, 2: 16} if os.environ.get("RULLAMA_ORACLE_ALL") == "1" else {2: 16}


@pytest.mark.parametrize("case", list(GREEDY_STEPS))
async def test_greedy_matches_llamacpp(model, case):
    c = CASES[case]
    want = c["greedy_ids"][:GREEDY_STEPS[case]]
    logits = await _read_prompt(model, case)
    pos, mismatches = len(c["prompt_ids"]), []
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


@pytest.mark.parametrize("case", [0, 1, 2])
async def test_first_step_logits_match_llamacpp(model, case):
    ref = np.load(GOLDENS / "gemma3_270m_llamacpp_logits.npz")[f"case{case}"].astype(np.float32)
    got = _prompt_logits.get(case)
    if got is None:  # run alone (-k): read the prompt here
        got = await _read_prompt(model, case)
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
