"""Native-only GPU sampler tests: the statistical test (1200 draws) and extra vocabulary sizes, which would take
minutes in Pyodide on SwiftShader (every vocabulary size compiles its own pipelines there, seconds each).
The shared helpers and the Pyodide-marked tests are in test_sampling.py."""

import math
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # test_sampling, also when loaded by path
import reference_sampling as ref  # noqa: E402
from test_sampling import (  # noqa: E402
    CAND,
    Rig,
    check_against_reference,
    crowded_case,
    expected_run,
    p,
    peaked_logits,
)


@pytest.mark.parametrize("vocab", [100, 2148])
async def test_greedy_is_exact_argmax_small_vocabularies(device, vocab):
    """100: fewer tokens than candidates. 2148: two stage-1 lists of 1074."""
    rng = np.random.default_rng(vocab)
    rig = await Rig.make(device, np.zeros(vocab, np.float32), p(temperature=0.0))
    for logits in (rng.integers(-4, 4, vocab).astype(np.float32), rng.standard_normal(vocab).astype(np.float32)):
        rig.set_logits(logits)
        assert await rig.draw() == int(np.argmax(logits))


@pytest.mark.parametrize("vocab", [100, 2148])
async def test_matches_reference_small_vocabularies(device, vocab):
    rng = np.random.default_rng(vocab + 7)
    logits = peaked_logits(rng, vocab)
    params = p(temperature=0.9, top_k=50, top_p=0.9, min_p=0.02, repetition_penalty=1.2, seed=3)
    rig = await Rig.make(device, logits, params)
    assert await rig.draws(8) == expected_run(logits, params, 8, 3)
    if vocab < CAND:  # top_k = 0 keeps every token
        rig.sampler.set_params(p(temperature=5.0, seed=4))
        got = await rig.draws(40)
        assert got == expected_run(logits, p(temperature=5.0), 40, 4, history=[*expected_run(logits, params, 8, 3)])


@pytest.mark.parametrize("case", ["all_equal", "id_runs"])
async def test_crowded_and_tied_candidates(device, case):
    await crowded_case(device, case)


@pytest.mark.parametrize("combo", ["top_k", "top_p", "min_p", "all_candidates"])
async def test_matches_reference_six_lists_more(device, combo):
    await check_against_reference(device, combo, 10290, seeds=(0, 12345), n=4)


# -- statistics ----------------------------------------------------------------------------------------------
def chi2_critical(df: int, z: float = 3.0902) -> float:
    """Upper 0.1% point of the chi-square distribution (Wilson-Hilferty approximation)."""
    a = 2.0 / (9.0 * df)
    return df * (1.0 - a + z * math.sqrt(a)) ** 3


async def test_frequencies_match_filtered_distribution(device):
    rng = np.random.default_rng(5)
    logits = peaked_logits(rng, 1000)
    params = p(temperature=0.8, top_k=12, top_p=0.97, seed=2024)
    ids, probs = ref.distribution(logits, params)
    assert 4 <= ids.size <= 12
    rig = await Rig.make(device, logits, params)
    n = 1200
    got = np.array(await rig.draws(n))
    assert np.isin(got, ids).all(), "drew a token outside the filtered set"
    counts = np.array([(got == t).sum() for t in ids])
    expected = probs * n
    # Merge rare categories (expected < 5) so that the chi-square approximation holds.
    order = np.argsort(expected)
    obs_m, exp_m, acc_o, acc_e = [], [], 0, 0.0
    for j in order:
        acc_o, acc_e = acc_o + counts[j], acc_e + expected[j]
        if acc_e >= 5:
            obs_m.append(acc_o), exp_m.append(acc_e)
            acc_o, acc_e = 0, 0.0
    if acc_e:
        obs_m[-1] += acc_o
        exp_m[-1] += acc_e
    obs_m, exp_m = np.array(obs_m), np.array(exp_m)
    chi2 = float(((obs_m - exp_m) ** 2 / exp_m).sum())
    assert chi2 < chi2_critical(len(obs_m) - 1), (chi2, counts, expected)


def test_rng_is_uniform():
    u = np.array([ref.rand01(7, c) for c in range(20000)], np.float64)
    assert 0.0 <= u.min() and u.max() < 1.0
    hist = np.histogram(u, bins=20, range=(0, 1))[0]
    chi2 = float(((hist - 1000) ** 2 / 1000).sum())
    assert chi2 < chi2_critical(19)
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 0.03
