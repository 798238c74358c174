"""The sampler's greedy fast path (Sampler.record_greedy, shaders/sample_argmax.wgsl) against the numpy reference
(tests/reference_sampling.py: argmax) and against the full sampler's greedy token on the same device.

The result is an integer picked by comparisons, with no arithmetic except the optional soft-cap, so every check
is exact equality. The soft-cap's tanh may differ from numpy's in the last bit: the reference is used with it
only where that cannot change the winner (values far apart, or equal after the cap because tanh saturates),
while the full sampler, which caps with the same WGSL function, must agree everywhere.

Every test runs on the default device (the subgroup variant, shaders/sample_best.subgroups.wgsl, when it has
subgroups) and on the fallback device (the plain variant). They also run in Pyodide, where every vocabulary size
compiles its own pipelines (seconds each on SwiftShader): three sizes here (1000: one workgroup; 10290: six
partials, the last one short; 262144: Gemma's 128), more in test_sample_argmax_native.py."""

import numpy as np
import pytest

import reference_sampling as ref
from rullama_py import gpu
from rullama_py.sampling import Sampler, SamplerParams

pytestmark = pytest.mark.pyodide

REAL_VOCAB = 262144
F32_MAX = np.finfo(np.float32).max
POS_NAN = np.array([0x7FC00000], np.uint32).view(np.float32)[0]
NEG_NAN = np.array([0xFFC00000], np.uint32).view(np.float32)[0]
GREEDY = SamplerParams(temperature=0.0, repetition_penalty=1.0, repetition_last_n=4, seed=0)


class Both:
    """One sampler recorded twice over the same logits, as the engine records it: the full sampler's graph
    (`full`) and the greedy fast path's (`fast`). Each draw appends to the one GPU history."""

    def __init__(self, device, sampler, logits, graphs, step, out):
        self.device, self.sampler, self.logits_t, self.graphs, self.step, self.out = (
            device, sampler, logits, graphs, step, out)
        self.readback = gpu.Readback(device, 4)

    @classmethod
    async def make(cls, device, logits, params=GREEDY, softcap=None, rows=1, row=0, max_history=64, full=True):
        logits = np.asarray(logits, np.float32)
        vocab = logits.shape[-1]
        s = await Sampler.create(device, vocab, params, max_history=max_history, softcap=softcap)
        lt = device.upload(logits.reshape(rows, vocab))
        step = device.tensor((8,), "uint32", usage=gpu.UNIFORM)
        out = device.tensor((1,), "uint32")
        graphs = {"fast": device.graph()}
        await s.record_greedy(graphs["fast"], lt, out, row=row)
        if full:
            graphs["full"] = device.graph()
            await s.record(graphs["full"], lt, step, out, row=row)
        return cls(device, s, lt, graphs, step, out)

    def set_logits(self, logits):
        self.device.write(self.logits_t.buffer, np.asarray(logits, np.float32))

    async def draw(self, which="fast") -> int:
        self.sampler.prepare(self.step)
        raw = await self.device.run(self.graphs[which], self.readback, (self.out.buffer, 0, 4))
        return int(np.frombuffer(raw, np.uint32)[0])


def cases(vocab: int, seed: int) -> dict:
    """Logits that probe ties, ends of the vocabulary, infinities and NaN."""
    rng = np.random.default_rng(seed)
    out = {}
    out["ties"] = rng.integers(-4, 4, vocab).astype(np.float32)  # the maximum held by many ids
    x = rng.standard_normal(vocab).astype(np.float32)
    x[-1] = x.max() + 1.0
    out["max_last_id"] = x  # in the last partial, which is short when vocab is not a multiple of 2048
    y = rng.standard_normal(vocab).astype(np.float32)
    y[[vocab // 2, vocab - 1]] = y.max() + 1.0
    out["max_tied_with_last_id"] = y  # the lower id wins across partials
    z = rng.standard_normal(vocab).astype(np.float32)
    z[0] = z.max() + 0.5
    out["max_first_id"] = z
    m = np.full(vocab, -np.inf, np.float32)
    m[rng.choice(vocab, 3, replace=False)] = [-2.0, -0.5, -1.0]
    out["masked"] = m  # every token but three at -inf
    out["all_minus_inf"] = np.full(vocab, -np.inf, np.float32)  # id 0
    big = np.full(vocab, -F32_MAX, np.float32)
    big[rng.choice(vocab, 2, replace=False)] = -3.0e38
    out["large_negative"] = big
    zeros = np.full(vocab, -1.0, np.float32)
    zeros[[vocab - 1, vocab // 3]] = [0.0, -0.0]  # -0.0 ties +0.0: the lower id
    out["signed_zeros"] = zeros
    nan_hi = rng.standard_normal(vocab).astype(np.float32)
    nan_hi[[vocab // 4, vocab - 1]] = [np.inf, POS_NAN]
    out["nan_positive"] = nan_hi  # ranks above +inf, as in the full sampler
    nan_lo = np.full(vocab, -np.inf, np.float32)
    nan_lo[0] = NEG_NAN
    out["nan_negative"] = nan_lo  # ranks below -inf: the first -inf (id 1) wins
    return out


def expected_by_construction(name: str, x: np.ndarray) -> int | None:
    """The winner some cases are built to have, independently of the reference."""
    v = x.size
    return {"max_last_id": v - 1, "max_tied_with_last_id": v // 2, "max_first_id": 0, "all_minus_inf": 0,
            "signed_zeros": v // 3, "nan_positive": v - 1, "nan_negative": 1}.get(name)


async def check_cases(device, vocab, full: bool):
    both = await Both.make(device, np.zeros(vocab, np.float32), full=full)
    drawn = []
    for name, x in cases(vocab, vocab).items():
        both.set_logits(x)
        got = await both.draw("fast")
        want = ref.argmax(x)
        assert got == want, f"{name}: fast path {got}, reference {want}"
        built = expected_by_construction(name, x)
        assert built is None or want == built, f"{name}: the case is not what it says"
        drawn.append(got)
        if full:
            assert await both.draw("full") == got, f"{name}: the full sampler disagrees"
            drawn.append(got)
    # Each draw appended its token to the GPU history (the ring keeps the last 64).
    np.testing.assert_array_equal(await both.sampler.history(), drawn[-64:])


@pytest.mark.parametrize("vocab", [1000, 10290, pytest.param(REAL_VOCAB, marks=pytest.mark.native_only)])
async def test_argmax_matches_reference_and_full_sampler(device, vocab):
    await check_cases(device, vocab, full=True)


@pytest.mark.parametrize("vocab", [1000, 10290, REAL_VOCAB])
async def test_argmax_fallback_variant(device_fallback, vocab):
    await check_cases(device_fallback, vocab, full=False)


async def test_variants_are_the_ones_tested(device, device_fallback):
    """The default device compiles the subgroup variant when it has subgroups; the fallback never does."""
    consts = dict(V=1000, ROW_OFFSET=0, WG=256, ITEMS=8, PART=2048, NPART=1)
    libs = ("sample_lib", "sample_best")
    src = device.kernel_source("sample_argmax", libs=libs, entry="partials", **consts)
    assert ("subgroupMax" in src) == device.has_subgroups
    assert "subgroupMax" not in device_fallback.kernel_source("sample_argmax", libs=libs, entry="partials", **consts)


@pytest.mark.parametrize("which", ["device", "device_fallback"])
async def test_softcap_like_the_full_sampler(device, device_fallback, which):
    """The cap is applied, not skipped: 600 (id 9) and 500 (id 3) both cap to exactly 30 (tanh saturates), so the
    lower id wins, where the raw argmax would be 9. Adjacent floats near 20 may or may not round to one capped
    value: whatever they do, the fast path must pick what the full sampler picks."""
    dev = device if which == "device" else device_fallback
    vocab = 1000
    rng = np.random.default_rng(30)
    x = rng.standard_normal(vocab).astype(np.float32) * 8
    x[[3, 9]] = [500.0, 600.0]
    both = await Both.make(dev, x, softcap=30.0)
    assert await both.draw("fast") == ref.argmax(x, softcap=30.0) == 3 != int(np.argmax(x))
    assert await both.draw("full") == 3
    spread = rng.standard_normal(vocab).astype(np.float32) * 40  # well into the cap's non-linear range
    both.set_logits(spread)
    assert await both.draw("fast") == await both.draw("full") == ref.argmax(spread, softcap=30.0)
    for lo in (2, 700):  # the larger raw value at id 5; its lower neighbour float at a lower or higher id
        near = np.full(vocab, -1.0, np.float32)
        near[5] = np.float32(20.0)
        near[lo] = np.nextafter(np.float32(20.0), np.float32(0.0))
        both.set_logits(near)
        assert await both.draw("fast") == await both.draw("full") in (5, lo)


@pytest.mark.parametrize("which", ["device", "device_fallback"])
async def test_logits_row(device, device_fallback, which):
    dev = device if which == "device" else device_fallback
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 1000)).astype(np.float32)
    x[1, 999] = 50.0  # a larger value in the row before: must not be seen
    both = await Both.make(dev, x, rows=3, row=2, full=False)
    assert await both.draw() == ref.argmax(x[2])


async def test_history_then_penalised_sampling(device):
    """Fast greedy draws append to the history exactly as the full path's: a switch to the repetition penalty
    afterwards penalises them. Also the counter advances per draw, as with the full path."""
    logits = np.full(1000, -5.0, np.float32)
    logits[[5, 7, 9]] = [10.0, 9.0, 8.5]
    both = await Both.make(device, logits, max_history=4)
    both.sampler.set_history([1, 2, 3])
    assert [await both.draw("fast") for _ in range(2)] == [5, 5]
    np.testing.assert_array_equal(await both.sampler.history(), [2, 3, 5, 5])  # the ring of 4 wrapped
    assert both.sampler.rng_words() == (0, 2)
    penalised = SamplerParams(temperature=0.0, repetition_penalty=2.0, repetition_last_n=2, seed=0)
    both.sampler.set_params(penalised)
    assert not both.sampler.fast_greedy
    got = await both.draw("full")  # 5 -> 5.0 now: 7 (9.0) wins
    assert got == ref.sample(logits, penalised, [2, 3, 5, 5], 0, 2, None, 4) == 7
    both.sampler.set_params(GREEDY)
    assert both.sampler.fast_greedy and await both.draw("fast") == 5
    np.testing.assert_array_equal(await both.sampler.history(), [5, 5, 7, 5])


@pytest.mark.parametrize(
    "params,fast",
    [
        (dict(temperature=0.0), True),
        (dict(temperature=0.0, repetition_penalty=1.3), False),
        (dict(temperature=0.0, repetition_penalty=1.3, repetition_last_n=0), True),  # no window: no penalty
        (dict(temperature=0.0, repetition_penalty=0.5, repetition_last_n=-1), False),
        (dict(temperature=0.5), False),
        (dict(temperature=1e-30), False),  # tiny, not greedy: exact ties are drawn at random
        (dict(temperature=0.0, top_k=1, top_p=0.5, min_p=0.3), True),  # filters cannot change an argmax
    ],
)
async def test_fast_greedy(device, params, fast):
    s = await Sampler.create(device, 1000, SamplerParams(**params), max_history=64)
    assert s.fast_greedy is fast


async def test_record_greedy_refuses_bad_arguments(device):
    s = await Sampler.create(device, 1000, GREEDY)
    out = device.tensor((1,), "uint32")
    with pytest.raises(ValueError, match="logits"):
        await s.record_greedy(device.graph(), device.tensor((999,)), out)
    with pytest.raises(ValueError, match="logits"):
        await s.record_greedy(device.graph(), device.tensor((2, 1000)), out, row=2)
    with pytest.raises(ValueError, match="logits"):
        await s.record_greedy(device.graph(), device.tensor((1000,), "float16"), out)
    with pytest.raises(ValueError, match="out_token"):
        await s.record_greedy(device.graph(), device.tensor((1000,)), device.tensor((1,), "float16"))
