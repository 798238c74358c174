"""Engine decode paths: the sampler's greedy fast path against the full sampler, and decoding a step ahead
(Engine.decode_ahead) against the plain loop, on the tiny Gemma 4 fixtures. The 26B-A4B layout (moe_f32) has
no per-layer embeddings, so it decodes ahead; E2B (e2b_f32) reads a per-layer-embedding row on the host per
token and keeps the plain loop, unless it is loaded with its table on the GPU (ple_on_gpu).

Every comparison is exact: the same kernels run in the same order on the same inputs whichever path is taken
(the fast path's argmax picks what the full sampler picks, see tests/kernels/test_sample_argmax.py), so tokens,
RNG counters and GPU histories must be identical, not close."""

from pathlib import Path

import numpy as np
import pytest

from rullama_py.engine import Engine
from rullama_py.sampling import SamplerParams

FIX = Path(__file__).parent / "fixtures"
PROMPT = [2, 455, 391, 353, 280, 292, 212, 222, 204, 252]  # greedy on moe_f32: 302 x 7, then 205 ...
MORE = [105, 300, 301, 106, 107, 105, 304]
GREEDY = SamplerParams(temperature=0.0, seed=1)  # a seed, so that every run's random stream starts the same
SEEDED = SamplerParams(temperature=1.5, top_k=0, top_p=1.0, min_p=0.0, seed=11)
PENALISED = SamplerParams(temperature=0.9, top_k=40, top_p=0.95, repetition_penalty=1.5, repetition_last_n=16, seed=5)
PENALISED_GREEDY = SamplerParams(temperature=0.0, repetition_penalty=1.8, repetition_last_n=8)


def _load(device, name, **kwargs):
    return Engine.load(str(FIX / f"gemma4_tiny_{name}.gguf"), device=device, max_context=48, prefill_chunk=8,
                       params=GREEDY, **kwargs)


@pytest.fixture(scope="module")
def moe(device):
    from conftest import run

    return run(_load(device, "moe_f32"))


@pytest.fixture(scope="module")
def e2b(device):
    from conftest import run

    return run(_load(device, "e2b_f32"))


@pytest.fixture(scope="module")
def e2b_gpu(device):
    from conftest import run

    return run(_load(device, "e2b_f32", ple_on_gpu=True))


@pytest.fixture(scope="module")
def engines(moe, e2b):
    return {"moe": moe, "e2b": e2b}


def fresh(eng, *, fast=True, ahead=None):
    """The engine as loaded, whatever an earlier test switched: paths, parameters, an empty context."""
    eng.greedy_fast_path = fast
    eng.decode_ahead = (not eng.model.host_ple_rows) if ahead is None else ahead
    eng.set_params(GREEDY)
    eng.reset()
    return eng


async def _ids(agen):
    return [t.id async for t in agen if t.id >= 0]


async def state(eng, settle=False) -> dict:
    """What a later call can see: the context, the pending token, the random stream, the GPU history and the
    decode input on the GPU (the next step feeds it), and the steps in flight. After direct step() calls a step
    decoded ahead is in flight: `settle` undoes it first, as every Engine method does."""
    if settle:
        eng.settle()
    dec = await eng.device.read(eng.model.decode.ids, np.uint32)
    return {"in_flight": len(eng._submitted), "tokens": list(eng.tokens), "next_token": eng.next_token,
            "rng": eng.sampler.rng_words(), "history": (await eng.sampler.history()).tolist(),
            "decode_input": int(dec[0]), "finish": eng.stats.finish_reason, "generated": eng.stats.generated_tokens}


def consistent(s: dict) -> bool:
    """The invariant the engine keeps between calls: the GPU history is the end of the context plus the pending
    token, which also sits in the decode input."""
    return s["history"] == (s["tokens"] + [s["next_token"]])[-256:] and s["decode_input"] == s["next_token"]


async def both_ways(eng, scenario, settle=False):
    """Run `scenario(eng)` with decode_ahead off, then on; (results, states) of each. `settle`: the scenario
    ends with direct step() calls, which leave a step ahead in flight."""
    out = []
    for ahead in (False, True):
        fresh(eng, ahead=ahead)
        got = await scenario(eng)
        out.append((got, await state(eng, settle)))
    return out


# -- the greedy fast path ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["moe", "e2b"])
async def test_fast_path_equals_full_sampler(name, engines):
    """Greedy generation with the argmax graph equals the full sampler's token for token, from several prompts
    (a random tiny model repeats itself, so each prompt adds a few distinct tokens), with the same history."""
    eng = fresh(engines[name])
    assert eng.sample_graph is eng.greedy_sample_graph
    assert [d.kernel for d in eng.sample_graph.dispatches] == ["sample_argmax"] * 2
    rng = np.random.default_rng(4)
    prompts = [PROMPT] + [[2] + rng.integers(200, 500, 9).tolist() for _ in range(4)]
    runs = {}
    for fast in (True, False):
        eng.greedy_fast_path = fast
        assert (eng.sample_graph is eng.greedy_sample_graph) == fast
        runs[fast] = []
        for p in prompts:
            toks = await _ids(eng.generate(p, max_tokens=8, stop_ids=()))
            runs[fast].append((toks, await state(eng)))
    assert runs[True] == runs[False]
    assert len({t for toks, _ in runs[True] for t in toks}) >= 5
    assert all(consistent(s) for _, s in runs[True])


@pytest.mark.parametrize("name", ["moe", "e2b"])
async def test_params_switch_mid_generation(name, engines):
    """greedy -> penalised sampling -> greedy -> penalised greedy -> greedy, by direct step() calls: the fast path
    appends to the GPU history as the full sampler does, so the penalty after it sees the same history and the
    tokens are the same with the fast path on or off, and with decoding ahead on or off."""
    eng = engines[name]

    async def scenario(e):
        await _ids(e.generate(PROMPT, max_tokens=1, stop_ids=()))
        toks = [await e.step() for _ in range(4)]
        e.set_params(PENALISED)
        toks += [await e.step() for _ in range(5)]
        e.set_params(GREEDY)
        toks += [await e.step() for _ in range(4)]
        e.set_params(PENALISED_GREEDY)  # greedy, but the penalty needs the full sampler
        assert e.sample_graph is e.full_sample_graph
        toks += [await e.step() for _ in range(4)]
        e.set_params(GREEDY)
        toks += [await e.step() for _ in range(3)]
        return toks

    results = []
    aheads = (False, True) if eng.config.ple_dim == 0 else (False,)
    for fast in (True, False):
        for ahead in aheads:
            fresh(eng, fast=fast, ahead=ahead)
            results.append((await scenario(eng), await state(eng, settle=True)))
    for r in results[1:]:
        assert r[0] == results[0][0]
        assert r[1] == results[0][1]
    toks, s = results[0]
    # One draw per token whatever the path: seed 1 for the prompt's token and 4 steps; seed 5 restarts the stream
    # (5 steps); seed 1 again restarts it (4), PENALISED_GREEDY keeps it (4), and GREEDY, seed 1 as before, too (3).
    assert consistent(s) and s["rng"] == (1, 11)
    assert len(set(toks)) >= 3


# -- decoding ahead -------------------------------------------------------------------------------------------
async def test_ple_on_gpu_decodes_ahead_with_the_same_tokens(e2b, e2b_gpu):
    """E2B with its per-layer-embedding table on the GPU decodes ahead by default; with decoding ahead off and
    on it gives the tokens and the state of the engine that reads each row on the host, exactly (the gathered
    rows are the host's, bit for bit: test_gemma4_parity), through greedy and penalised sampling."""
    assert e2b_gpu._decode_ahead and not e2b._decode_ahead  # as loaded

    async def scenario(e):
        toks = await _ids(e.generate(PROMPT, max_tokens=6, stop_ids=()))
        toks += [await e.step() for _ in range(4)]
        e.set_params(PENALISED)
        toks += [await e.step() for _ in range(5)]
        return toks

    fresh(e2b)
    want = (await scenario(e2b), await state(e2b, settle=True))
    for ahead in (False, True):
        fresh(e2b_gpu, ahead=ahead)
        assert (await scenario(e2b_gpu), await state(e2b_gpu, settle=True)) == want
    assert consistent(want[1]) and len(set(want[0])) >= 3


async def test_prompt_chunk_encoded_ahead(moe):
    """A prompt's last prefill chunk is submitted as the command buffer encoded while the previous one ran (or
    at load), and the next one is encoded while it runs: one encode per short prompt, none on the way to its
    first token. The tokens equal those of a buffer encoded on the spot, for greedy and seeded sampling, and a
    switch of sampler (the buffer names the sampler graph it holds) re-encodes rather than sampling wrongly."""
    eng = fresh(moe)
    calls = []
    encode = eng.device.encode

    def counting(*args, **kw):
        calls.append(1)
        return encode(*args, **kw)

    eng.device.encode = counting
    short = PROMPT[:6]  # one prefill chunk (8 tokens)
    try:
        got = {}
        await eng.feed(short)  # leaves a buffer encoded for the greedy sampler
        for ahead in (True, False):
            counts = []
            for params in (GREEDY, SEEDED, GREEDY):
                eng.set_params(params)
                eng.reset()
                if not ahead:
                    eng._prefill_encoded = None
                calls.clear()
                got.setdefault(ahead, []).append(await eng.feed(short))
                counts.append(len(calls))
            # Encoded ahead for the greedy sampler, then for the full one (SEEDED), which the last greedy prompt
            # cannot use; without the buffer ahead every prompt encodes twice (its own, the next one's).
            assert counts == ([1, 2, 2] if ahead else [2, 2, 2]), (ahead, counts)
        assert got[True] == got[False]
    finally:
        eng.device.encode = encode


def test_decode_ahead_by_model(moe, e2b):
    fresh(moe), fresh(e2b)
    assert moe.decode_ahead and not e2b.decode_ahead
    with pytest.raises(ValueError, match="per-layer-embedding row"):
        e2b.decode_ahead = True
    assert not e2b.decode_ahead


async def test_the_step_ahead_runs(moe):
    """With decode_ahead the next step is on the GPU when step() returns: the decode input already holds the
    token the next call returns. Undoing it puts the pending token back."""
    fresh(moe).set_params(SEEDED)
    await _ids(moe.generate(PROMPT, max_tokens=1, stop_ids=()))
    first = await moe.step()
    assert len(moe._submitted) == 1
    ahead = int((await moe.device.read(moe.model.decode.ids, np.uint32))[0])
    assert ahead == await moe.step()
    assert moe.next_token == ahead and moe.tokens[-1] == first
    moe.settle()
    assert consistent(await state(moe)) and not moe._submitted
    moe.decode_ahead = False
    await moe.step()
    assert not moe._submitted


@pytest.mark.parametrize("params", ["greedy", "seeded", "penalised"])
async def test_stop_at_max_tokens(moe, params):
    """Stopped by max_tokens: the same tokens and the same state after; the following turn continues the same;
    and (greedy) it equals a fresh engine fed the whole history."""
    p = {"greedy": GREEDY, "seeded": SEEDED, "penalised": PENALISED}[params]

    async def scenario(e):
        e.set_params(p)
        first = await _ids(e.generate(PROMPT, max_tokens=7, stop_ids=()))
        mid = await state(e)
        second = await _ids(e.generate(MORE, max_tokens=6, stop_ids=(), continue_context=True))
        return first, mid, second

    (plain, s0), (ahead, s1) = await both_ways(moe, scenario)
    assert plain == ahead and s0 == s1
    assert plain[1]["finish"] == "length" and len(plain[0]) == 7 and consistent(plain[1]) and consistent(s1)
    if params == "greedy":
        history = plain[1]["tokens"] + [plain[1]["next_token"]] + MORE
        moe.reset()
        assert await _ids(moe.generate(history, max_tokens=6, stop_ids=())) == plain[2]


@pytest.mark.parametrize("params", ["greedy", "penalised"])
async def test_stop_at_end_token(moe, params):
    """Stopped by an end token in the middle of a run, where the step ahead is always on the GPU: undone (the
    repetition penalty of the next turn reads the repaired history), so the state and the next turn are those
    of the plain loop."""
    p = GREEDY if params == "greedy" else PENALISED
    fresh(moe, ahead=False).set_params(p)
    free = await _ids(moe.generate(PROMPT, max_tokens=12, stop_ids=()))
    stop = next(t for i, t in enumerate(free) if i >= 3 and t not in free[:i])  # first seen after 3 tokens

    async def scenario(e):
        e.set_params(p)
        first = await _ids(e.generate(PROMPT, max_tokens=12, stop_ids=[stop]))
        mid = await state(e)
        second = await _ids(e.generate(MORE, max_tokens=5, stop_ids=(), continue_context=True))
        return first, mid, second

    (plain, s0), (ahead, s1) = await both_ways(moe, scenario)
    assert plain == ahead and s0 == s1
    assert plain[1]["finish"] == "stop" and plain[0] == free[: free.index(stop)] and consistent(plain[1])


async def test_stop_at_full_context(moe):
    async def scenario(e):
        e.set_params(SEEDED)
        return await _ids(e.generate(PROMPT, max_tokens=100, stop_ids=()))

    (plain, s0), (ahead, s1) = await both_ways(moe, scenario)
    assert plain == ahead and s0 == s1
    assert s0["finish"] == "context" and len(s0["tokens"]) + 1 == moe.max_context and consistent(s1)


async def test_cancel_mid_stream(moe):
    async def scenario(e):
        e.set_params(PENALISED)
        out = []
        async for t in e.generate(PROMPT, max_tokens=20, stop_ids=()):
            if t.id >= 0:
                out.append(t.id)
            if len(out) == 4:
                e.cancel()
        return out

    (plain, s0), (ahead, s1) = await both_ways(moe, scenario)
    assert plain == ahead and len(plain) == 4 and s0 == s1
    assert s0["finish"] == "cancelled" and consistent(s1)


async def test_abandoned_stream_then_other_calls(moe):
    """A caller that stops iterating leaves the step ahead on the GPU (the generator is not closed yet); the next
    call undoes it before it reads or changes anything."""
    async def scenario(e):
        e.set_params(PENALISED)
        agen = e.generate(PROMPT, max_tokens=20, stop_ids=())
        got = [(await agen.__anext__()).id for _ in range(5)]
        assert bool(e._submitted) == e.decode_ahead
        blob = await e.save_state()  # undoes it first
        blob_tokens = (list(e.tokens), e.next_token)
        more = await _ids(e.generate(MORE, max_tokens=4, stop_ids=(), continue_context=True))
        await agen.aclose()
        return got, blob_tokens, more, len(blob)

    (plain, s0), (ahead, s1) = await both_ways(moe, scenario)
    assert plain == ahead and s0 == s1 and consistent(s1)


async def test_chat_continues_after_a_stop(moe):
    async def scenario(e):
        e.set_params(PENALISED)
        msgs = [{"role": "user", "content": "ab"}]
        first = await _ids(e.chat(msgs, max_tokens=3))
        n = e.stats.prompt_tokens
        reply = e.tokenizer.decode(e.tokens[n:] + [e.next_token])
        msgs += [{"role": "assistant", "content": reply}, {"role": "user", "content": "ba"}]
        second = await _ids(e.chat(msgs, max_tokens=5))
        return first, second, e.stats.prompt_tokens

    (plain, s0), (ahead, s1) = await both_ways(moe, scenario)
    assert plain == ahead and s0 == s1 and consistent(s1)
    assert 1 <= len(plain[0]) <= 3 and plain[2] < len(s0["tokens"])  # the second turn reused the cached prefix


async def test_save_restore_after_a_run_ahead(moe):
    async def scenario(e):
        e.set_params(PENALISED)
        first = await _ids(e.generate(PROMPT, max_tokens=6, stop_ids=()))
        blob = await e.save_state()
        sampler_state = await e.sampler.state()
        cont = [await e.step() for _ in range(8)]
        e.reset()
        await _ids(e.generate([2, 300], max_tokens=3, stop_ids=()))
        await e.restore_state(blob)
        assert consistent(await state(e))
        again = [await e.step() for _ in range(8)]
        assert again == cont
        return first, sampler_state, cont

    (plain, s0), (ahead, s1) = await both_ways(moe, scenario, settle=True)
    assert plain == ahead and s0 == s1 and consistent(s1)


async def test_sampler_changed_behind_the_engine(moe):
    """Parameters set on the sampler itself, not through Engine.set_params, still apply from the next token on:
    the step ahead ran with the old ones, so step() undoes it. Whether the new ones restart the random stream
    (another seed) or not (seed None), it is then where the plain loop has it."""
    async def scenario(e):
        e.set_params(GREEDY)
        await _ids(e.generate(PROMPT, max_tokens=1, stop_ids=()))
        toks = [await e.step() for _ in range(3)]
        e.sampler.set_params(SEEDED)  # a new seed: the stream restarts
        toks += [await e.step() for _ in range(4)]
        e.sampler.set_params(PENALISED_GREEDY)  # no seed: the stream goes on
        toks += [await e.step() for _ in range(3)]
        e.sampler.set_params(SamplerParams(temperature=1.0, top_k=5, seed=None))
        toks += [await e.step() for _ in range(4)]
        return toks

    (plain, s0), (ahead, s1) = await both_ways(moe, scenario, settle=True)
    assert plain == ahead and s0 == s1 and consistent(s1)


async def test_host_times_count_each_step(moe):
    from rullama_py.engine import HostTimes

    fresh(moe).set_params(SEEDED)
    await _ids(moe.generate(PROMPT, max_tokens=1, stop_ids=()))
    moe.host_times = HostTimes()
    for _ in range(6):
        await moe.step()
    h = moe.host_times
    assert h.steps == 6 and h.ple_read == 0.0
    assert 0 < h.encode and 0 < h.write and 0 < h.submit
    assert h.encode + h.write + h.submit <= h.host <= h.wall


async def test_decode_ahead_with_the_hardware_wait(moe):
    """The readback wait a hardware GPU gets (Device.spin_wait: a poll loop that returns when this step's buffer
    is mapped, while the step ahead may still run), forced here: the same tokens and state as the plain loop."""
    dev = moe.device
    saved = getattr(dev, "_spin_wait", None)
    dev._spin_wait = True
    try:
        async def scenario(e):
            e.set_params(PENALISED)
            return await _ids(e.generate(PROMPT, max_tokens=10, stop_ids=()))

        (plain, s0), (ahead, s1) = await both_ways(moe, scenario)
    finally:
        dev._spin_wait = saved
    assert plain == ahead and len(plain) == 10 and s0 == s1 and consistent(s1)
