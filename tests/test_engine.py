"""Engine: streaming generation, stop rules, snapshots, errors. Uses the tiny Gemma 4 fixtures (fast); the
real-model checks are in test_gemma3_llamacpp.py."""

from pathlib import Path

import numpy as np
import pytest

from rullama_py.engine import ContextOverflowError, Engine, SnapshotError
from rullama_py.sampling import SamplerParams

FIX = Path(__file__).parent / "fixtures"
PROMPT = [2, 105, 300, 301, 302, 303, 106, 107, 105, 304]


async def _engine(device, name="e2b_f32", **kw):
    kw.setdefault("params", SamplerParams(temperature=0.0))
    return await Engine.load(str(FIX / f"gemma4_tiny_{name}.gguf"), device=device, max_context=48, prefill_chunk=8, **kw)


@pytest.fixture(scope="module")
def engine(device):
    from conftest import run

    return run(_engine(device))


async def _collect(agen):
    return [t.id async for t in agen if t.id >= 0]


async def test_greedy_equals_argmax_of_logits(engine):
    got = await _collect(engine.generate(PROMPT, max_tokens=12, stop_ids=()))
    # the same chain through the model's plain forward with a host argmax
    m = engine.model
    logits = await m.forward(PROMPT, 0)
    want, pos = [], len(PROMPT)
    for _ in range(12):
        want.append(int(np.argmax(logits)))
        logits = await m.forward([want[-1]], pos)
        pos += 1
    assert got == want
    assert engine.stats.finish_reason == "length" and engine.stats.generated_tokens == 12


async def test_snapshot_restore_continues_exactly(engine):
    engine.set_params(SamplerParams(temperature=0.9, top_k=40, top_p=0.95, seed=7))
    first = await _collect(engine.generate(PROMPT, max_tokens=6, stop_ids=()))
    blob = await engine.save_state()
    cont = [await engine.step() for _ in range(8)]
    engine.reset()
    await _collect(engine.generate([2, 300], max_tokens=3, stop_ids=()))  # something else in between
    await engine.restore_state(blob)
    again = [await engine.step() for _ in range(8)]
    assert again == cont
    assert len(first) == 6
    engine.set_params(SamplerParams(temperature=0.0))


async def test_seeded_sampling_is_reproducible(engine):
    runs = []
    for seed in (1, 1, 2):
        engine.set_params(SamplerParams(temperature=1.5, top_k=0, top_p=1.0, min_p=0.0, seed=seed))
        runs.append(await _collect(engine.generate(PROMPT, max_tokens=16, stop_ids=())))
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]
    engine.set_params(SamplerParams(temperature=0.0))


async def test_snapshot_from_another_model_is_refused(engine, device):
    other = await _engine(device, "gqa4_f16")
    await _collect(other.generate(PROMPT, max_tokens=2, stop_ids=()))
    blob = await other.save_state()
    before = list(engine.tokens)
    with pytest.raises(SnapshotError, match="another model"):
        await engine.restore_state(blob)
    assert engine.tokens == before  # nothing changed
    good = await engine.save_state()
    for bad, msg in ((b"junk" + good[4:], "magic"), (good[:100], "truncated|short|bytes"), (good + b"x", "trailing")):
        with pytest.raises(SnapshotError, match=msg):
            await engine.restore_state(bad)


async def test_stop_on_end_of_turn(engine):
    # make <turn|> the only allowed continuation: stop_ids = every token id, so the first sampled one stops
    out = await _collect(engine.generate(PROMPT, max_tokens=5, stop_ids=range(engine.config.vocab_size)))
    assert out == [] and engine.stats.finish_reason == "stop"


async def test_context_overflow_is_named(engine):
    with pytest.raises(ContextOverflowError, match="context of 48"):
        await _collect(engine.generate(list(range(2, 60)), max_tokens=1))
    out = await _collect(engine.generate(PROMPT, max_tokens=100, stop_ids=()))
    assert engine.stats.finish_reason == "context" and len(engine.tokens) + 1 == 48 and len(out) == 48 - len(PROMPT)


async def test_chat_reuses_the_cached_prefix(engine):
    msgs = [{"role": "user", "content": "ab"}]
    await _collect(engine.chat(msgs, max_tokens=3))
    n_first = engine.stats.prompt_tokens
    reply = engine.tokenizer.decode(engine.tokens[n_first:] + [engine.next_token])
    msgs += [{"role": "assistant", "content": reply}, {"role": "user", "content": "ba"}]
    await _collect(engine.chat(msgs, max_tokens=2))
    assert engine.stats.prompt_tokens < len(engine.chat_template.render(msgs))


async def test_mixture_of_experts_model_chats(device):
    """A 26B-A4B-layout file (tiny: 8 experts, top 3, Q4_K experts) through the engine: greedy generation with the
    GPU sampler equals the argmax chain of the model's forward pass (which tests/test_gemma4_parity.py checks
    against transformers), and a chat turn streams text."""
    eng = await _engine(device, "moe_q4_k")
    assert eng.config.n_experts == 8 and eng.config.n_experts_used == 3
    got = await _collect(eng.generate(PROMPT, max_tokens=6, stop_ids=()))
    m = eng.model
    logits = await m.forward(PROMPT, 0)
    want, pos = [], len(PROMPT)
    for _ in range(6):
        want.append(int(np.argmax(logits)))
        logits = await m.forward([want[-1]], pos)
        pos += 1
    assert got == want
    eng.reset()
    text = "".join([t.text async for t in eng.chat([{"role": "user", "content": "hello"}], max_tokens=4)])
    assert eng.stats.generated_tokens >= 1 and eng.stats.finish_reason in ("stop", "length") and isinstance(text, str)
