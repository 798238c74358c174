"""GPU sampler (rullama_py.sampling) against the numpy reference (tests/reference_sampling.py).

These also run in Pyodide on SwiftShader, where each new pipeline takes seconds to compile: they stick to
three vocabulary sizes (1000: one stage-1 list; 10290: six lists, the last one shorter; 262144: Gemma's).
test_sampling_native.py holds the native-only rest (more sizes, the statistical test)."""

import dataclasses
import math
import zlib
from pathlib import Path

import numpy as np
import pytest

import reference_sampling as ref
from rullama_py import gpu
from rullama_py.sampling import CAND, Sampler, SamplerParams

pytestmark = pytest.mark.pyodide

REAL_VOCAB = 262144  # Gemma 3 / Gemma 4


class Rig:
    """A sampler recorded once into a graph over uploaded logits; draw() runs it and reads back the id."""

    def __init__(self, device, sampler, logits, graph, step, out):
        self.device, self.sampler, self.logits_t, self.graph, self.step, self.out = device, sampler, logits, graph, step, out
        self.readback = gpu.Readback(device, 4)

    @classmethod
    async def make(cls, device, logits, params, max_history=64, softcap=None, rows=1, row=0):
        logits = np.asarray(logits, np.float32)
        vocab = logits.shape[-1]
        s = await Sampler.create(device, vocab, params, max_history=max_history, softcap=softcap)
        lt = device.upload(logits.reshape(rows, vocab))
        step = device.tensor((8,), "uint32", usage=gpu.UNIFORM)
        out = device.tensor((1,), "uint32")
        g = device.graph()
        await s.record(g, lt, step, out, row=row)
        return cls(device, s, lt, g, step, out)

    def set_logits(self, logits):
        self.device.write(self.logits_t.buffer, np.asarray(logits, np.float32))

    async def draw(self) -> int:
        self.sampler.prepare(self.step)
        raw = await self.device.run(self.graph, self.readback, (self.out.buffer, 0, 4))
        return int(np.frombuffer(raw, np.uint32)[0])

    async def draws(self, n):
        return [await self.draw() for _ in range(n)]


def expected_run(logits, params, n, seed, history=(), softcap=None, max_history=64, counter0=0):
    """The reference's tokens for n consecutive draws, each appended to the history like the GPU does."""
    hist = list(history)
    out = []
    for c in range(n):
        t = ref.sample(logits, params, hist, seed, counter0 + c, softcap, max_history)
        out.append(t)
        hist.append(t)
    return out


def p(**kw) -> SamplerParams:
    base = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0, repetition_last_n=16, seed=0)
    base.update(kw)
    return SamplerParams(**base)


# -- greedy ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("vocab", [1000, 10290, REAL_VOCAB])
async def test_greedy_is_exact_argmax(device, vocab):
    rng = np.random.default_rng(vocab)
    ties = rng.integers(-4, 4, vocab).astype(np.float32)  # many exact ties, incl. the maximum
    spread = rng.standard_normal(vocab).astype(np.float32) * 4
    spread[rng.choice(vocab, min(5, vocab), replace=False)] = spread.max()  # the max tied in several slices
    masked = np.full(vocab, -np.inf, np.float32)
    masked[rng.choice(vocab, 3, replace=False)] = [-1.0, -0.5, -2.0]
    rig = await Rig.make(device, ties, p(temperature=0.0))
    for logits in (ties, spread, masked, np.zeros(vocab, np.float32)):
        rig.set_logits(logits)
        assert await rig.draw() == int(np.argmax(logits))


async def test_greedy_negative_zero_ties_positive_zero(device):
    logits = np.full(1000, -1.0, np.float32)
    logits[[700, 20, 400]] = [0.0, -0.0, 0.0]
    rig = await Rig.make(device, logits, p(temperature=0.0))
    assert await rig.draw() == 20 == int(np.argmax(logits))


# -- same tokens as the reference ------------------------------------------------------------------------------
COMBOS = {
    "top_k": p(top_k=10),
    "top_p": p(top_p=0.8),
    "min_p": p(min_p=0.1, temperature=1.3),
    "temperature": p(temperature=0.5),
    "penalty": p(top_k=20, repetition_penalty=1.5, repetition_last_n=8),
    "combined": p(temperature=0.7, top_k=40, top_p=0.95, min_p=0.05, repetition_penalty=1.1, repetition_last_n=16),
    "temperature_first": p(temperature=0.6, top_p=0.9, min_p=0.02, temperature_first=True),
    "all_candidates": p(temperature=2.0),
    "top_k_1": p(top_k=1),
    "tiny_temperature": p(temperature=1e-35, top_p=0.5),
}


def peaked_logits(rng, vocab):
    """LM-like: a long normal tail plus a few strong tokens scattered over the vocabulary."""
    x = rng.standard_normal(vocab).astype(np.float32) * 2.0
    x[rng.choice(vocab, min(30, vocab), replace=False)] += rng.uniform(4, 9, min(30, vocab)).astype(np.float32)
    return x


async def check_against_reference(device, combo, vocab, seeds=(0, 1, 12345, 2**32 - 1), n=6):
    rng = np.random.default_rng(zlib.crc32(f"{combo}-{vocab}".encode()))
    logits = peaked_logits(rng, vocab)
    history = rng.integers(0, vocab, 5).tolist()
    params = COMBOS[combo]
    rig = await Rig.make(device, logits, params, max_history=32)
    for seed in seeds:
        rig.sampler.set_params(dataclasses.replace(params, seed=seed))
        rig.sampler.reset(seed)
        rig.sampler.set_history(history)
        got = await rig.draws(n)
        assert got == expected_run(logits, params, n, seed, history, max_history=32), f"seed {seed}"


@pytest.mark.parametrize("combo", list(COMBOS))
async def test_matches_reference(device, combo):
    await check_against_reference(device, combo, 1000)


@pytest.mark.parametrize("combo", ["penalty", "combined", "temperature_first"])
async def test_matches_reference_six_lists(device, combo):
    await check_against_reference(device, combo, 10290, seeds=(3, 2**31), n=4)


async def test_softcap_matches_reference(device):
    rng = np.random.default_rng(7)
    logits = peaked_logits(rng, 1000) * 8  # well into the cap's non-linear range
    params = p(temperature=0.9, top_k=50, top_p=0.9, repetition_penalty=1.2)
    rig = await Rig.make(device, logits, params, softcap=30.0)
    got = await rig.draws(8)
    assert got == expected_run(logits, params, 8, 0, softcap=30.0)
    rig.sampler.set_params(p(temperature=0.0, seed=0))
    assert await rig.draw() == int(np.argmax(ref.process(logits, p(), softcap=30.0)))


async def test_real_vocab_matches_reference(device):
    rng = np.random.default_rng(262144)
    logits = peaked_logits(rng, REAL_VOCAB)
    params = p(temperature=0.8, top_k=64, top_p=0.95, min_p=0.01, repetition_penalty=1.3, repetition_last_n=32, seed=99)
    rig = await Rig.make(device, logits, params, softcap=30.0)
    history = [int(i) for i in np.argsort(-logits)[:3]]  # penalise three of the strongest tokens
    rig.sampler.set_history(history)
    got = await rig.draws(4)
    assert got == expected_run(logits, params, 4, 99, history, softcap=30.0)


async def test_logits_row(device):
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((3, 1000)).astype(np.float32)
    rig = await Rig.make(device, logits, p(temperature=0.0), rows=3, row=2)
    assert await rig.draw() == int(np.argmax(logits[2]))


# -- the exact fallback when one slice holds many of the top candidates ----------------------------------------
async def crowded_case(device, case):
    """all_equal: every value tied (ids decide). one_list: 300 strong tokens that all belong to stage 1's
    workgroup 5, so stage 2 must take its exact fallback. id_runs: strong tokens in runs of consecutive ids,
    as LM vocabularies have them, which the interleaved partition spreads out."""
    vocab = REAL_VOCAB
    rng = np.random.default_rng(11)
    logits = rng.standard_normal(vocab).astype(np.float32)
    if case == "all_equal":
        logits[:] = 0.0
    elif case == "one_list":
        logits[5 + 128 * np.arange(300)] += 6.0
    else:
        logits[70000:70400] += 6.0
        logits[:2048] += 3.0
    params = p(temperature=1.0, seed=5)
    rig = await Rig.make(device, logits, params)
    got = await rig.draws(2)
    assert got == expected_run(logits, params, 2, 5)
    assert await uses_fallback(device, rig.sampler) == (case == "one_list")
    rig.sampler.set_params(p(temperature=0.0, seed=5))
    assert await rig.draw() == int(np.argmax(logits))


async def test_crowded_list_fallback(device):
    await crowded_case(device, "one_list")


async def uses_fallback(device, s) -> bool:
    """Did stage 2 take its exact fallback: does some list hold a non-head >= the KTOT-th largest head?"""
    cand = (await device.read(s.cand_buf, np.uint32)).reshape(s.nslice, CAND, 2).astype(np.uint64)
    keys = (cand[..., 0] << np.uint64(32)) | cand[..., 1]
    thr = np.sort(keys[:, : s.heads].reshape(-1))[::-1][s.ktot - 1]
    return s.heads < CAND and bool((keys[:, s.heads] >= thr).any())


async def test_heads_suffice_for_lm_like_logits(device):
    rig = await Rig.make(device, peaked_logits(np.random.default_rng(1), REAL_VOCAB), p(temperature=0.0))
    await rig.draw()
    assert not await uses_fallback(device, rig.sampler)
    golden = np.load(Path(__file__).resolve().parent.parent / "goldens/gemma3_270m_llamacpp_logits.npz")
    for case in golden.files:  # real Gemma 3 270M logits: likely tokens cluster at low ids
        logits = golden[case].astype(np.float32)
        rig.set_logits(logits)
        assert await rig.draw() == int(np.argmax(logits))
        assert not await uses_fallback(device, rig.sampler)


# -- stage 1's candidate lists -------------------------------------------------------------------------------
@pytest.mark.parametrize("vocab", [10290])
async def test_stage1_candidate_lists(device, vocab):
    rng = np.random.default_rng(vocab + 1)
    logits = rng.integers(-20, 20, vocab).astype(np.float32)  # with ties
    rig = await Rig.make(device, logits, p(temperature=0.0))
    await rig.draw()
    s = rig.sampler
    cand = (await device.read(s.cand_buf, np.uint32)).reshape(s.nslice, CAND, 2)
    for w in range(s.nslice):
        own = np.arange(w, vocab, s.nslice)  # stage 1's workgroup w owns ids w, w + nslice, ...
        vals, order = ref.top_candidates(logits[own])
        ids = own[order]
        k = ids.size
        got_ids = ~cand[w, :k, 1]
        assert (cand[w, k:] == 0).all()
        np.testing.assert_array_equal(np.sort(got_ids), np.sort(ids))
        if k > s.heads:
            np.testing.assert_array_equal(np.sort(got_ids[: s.heads]), np.sort(ids[: s.heads]))
            assert got_ids[s.heads] == ids[s.heads]


# -- seeds, history, state -------------------------------------------------------------------------------------
async def test_seed_reproducible_and_distinct(device):
    logits = np.zeros(1000, np.float32)  # flat: 256 equally likely candidates
    rig = await Rig.make(device, logits, p(seed=42))
    a = await rig.draws(10)
    rig.sampler.reset()
    assert await rig.draws(10) == a
    rig.sampler.set_params(p(seed=43))
    b = await rig.draws(10)
    assert b != a
    assert a == expected_run(logits, p(), 10, 42)
    assert set(a) <= set(range(CAND))


async def test_history_on_gpu_and_penalty(device):
    logits = np.full(1000, -5.0, np.float32)
    logits[[5, 7, 9]] = [10.0, 9.0, 8.5]
    params = p(temperature=0.0, repetition_penalty=2.0, repetition_last_n=2)
    rig = await Rig.make(device, logits, params, max_history=4)
    got = await rig.draws(6)
    # 5 (10), then 5 -> 5.0 so 7 (9), then 7 -> 4.5 and 5 -> 5.0 so 9, ... with a window of 2.
    assert got == expected_run(logits, params, 6, 0, max_history=4)
    assert got[:3] == [5, 7, 9]
    np.testing.assert_array_equal(await rig.sampler.history(), got[-4:])  # ring of 4 wrapped


async def test_state_round_trip(device):
    rng = np.random.default_rng(8)
    logits = peaked_logits(rng, 1000)
    params = p(temperature=1.0, top_k=30, repetition_penalty=1.3, repetition_last_n=6, seed=77)
    rig = await Rig.make(device, logits, params, max_history=6)
    rig.sampler.set_history([1, 2, 3])
    first = await rig.draws(5)
    snap = await rig.sampler.state()
    after = await rig.draws(7)
    rig.sampler.reset(seed=1)
    await rig.draws(3)
    rig.sampler.set_state(snap)
    assert rig.sampler.rng_words() == (77, 5)
    assert await rig.draws(7) == after
    assert first + after == expected_run(logits, params, 12, 77, [1, 2, 3], max_history=6)
    with pytest.raises(ValueError, match="vocabulary"):
        other = await Sampler.create(device, 10290, params, max_history=6)
        other.set_state(snap)
    with pytest.raises(ValueError, match="sampler state"):
        rig.sampler.set_state(b"nonsense")


# -- validation ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "field,value,message",
    [
        ("temperature", -0.1, "temperature"),
        ("temperature", float("nan"), "temperature"),
        ("top_k", CAND + 1, "top_k"),
        ("top_k", -1, "top_k"),
        ("top_k", 2.5, "top_k"),
        ("top_p", 0.0, "top_p"),
        ("top_p", 1.01, "top_p"),
        ("min_p", -0.01, "min_p"),
        ("min_p", 1.5, "min_p"),
        ("repetition_penalty", 0.0, "repetition_penalty"),
        ("repetition_penalty", float("inf"), "repetition_penalty"),
        ("repetition_penalty", 1e-9, "repetition_penalty"),
        ("repetition_last_n", -2, "repetition_last_n"),
        ("seed", -1, "seed"),
        ("seed", 2**32, "seed"),
        ("seed", "7", "seed"),
        ("temperature_first", 1, "temperature_first"),
    ],
)
def test_invalid_params(field, value, message):
    with pytest.raises(ValueError, match=message):
        SamplerParams(**{field: value})


async def test_invalid_sampler_arguments(device):
    s = await Sampler.create(device, 1000, p(), max_history=16)
    with pytest.raises(ValueError, match="max_history"):
        s.set_params(p(repetition_last_n=17))
    with pytest.raises(ValueError, match="vocab_size"):
        await Sampler.create(device, 0, p())
    with pytest.raises(ValueError, match="softcap"):
        await Sampler.create(device, 1000, p(), softcap=-30.0)
    with pytest.raises(ValueError, match="history tokens"):
        s.set_history([1, 1000])
    with pytest.raises(ValueError, match="logits"):
        await s.record(device.graph(), device.tensor((999,)), device.tensor((8,), "uint32", usage=gpu.UNIFORM), device.tensor((1,), "uint32"))
