"""Engine: streaming generation, stop rules, snapshots, errors. Uses the tiny Gemma 4 fixtures (fast); the
real-model checks are in test_gemma3_llamacpp.py."""

import asyncio
import gc
from pathlib import Path

import numpy as np
import pytest

from rullama_py.engine import ContextOverflowError, Engine, NoTowerError, SnapshotError
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


async def test_q8_0_kv_cache_snapshots_and_memory(engine, device):
    """An engine with a q8_0 KV cache: its caches take 36 bytes a 32-value block (f16: 64), its snapshot
    continues exactly, and a snapshot of the f16 engine (same model and context, another KV layout) is refused."""
    q8 = await _engine(device, kv_cache_type="q8_0")
    assert q8.model.kv_cache_type == "q8_0" and engine.model.kv_cache_type == "f16"
    for (k8, v8, slots8), (k16, v16, slots16) in zip(q8.model.kv.values(), engine.model.kv.values()):
        assert slots8 == slots16 and k8.shape == k16.shape
        assert k8.nbytes * 64 == k16.nbytes * 36 and v8.nbytes * 64 == v16.nbytes * 36
    assert q8.layout_hash() != engine.layout_hash()
    q8.set_params(SamplerParams(temperature=0.9, top_k=40, seed=3))
    await _collect(q8.generate(PROMPT, max_tokens=5, stop_ids=()))
    blob = await q8.save_state()
    cont = [await q8.step() for _ in range(6)]
    q8.reset()
    await q8.restore_state(blob)
    assert [await q8.step() for _ in range(6)] == cont
    await _collect(engine.generate(PROMPT, max_tokens=2, stop_ids=()))
    with pytest.raises(SnapshotError, match="KV layout"):
        await q8.restore_state(await engine.save_state())


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


# -- GPU memory and the memory modes ----------------------------------------------------------------------------

VISION = FIX / "gemma4_tiny_vision_f32.gguf"
PHOTO = (FIX / "images" / "landscape.jpg").read_bytes()


async def _settled(device) -> int:
    """The device's allocated bytes once Python dropped what it no longer holds: the result of the last await
    is freed when the task next yields, cycles when collected."""
    await asyncio.sleep(0)
    gc.collect()
    return device.allocated_bytes


def _reachable_bytes(eng) -> int:
    from rullama_py.webapp import _buffers_of

    return sum(b.size for b in _buffers_of(eng))


def _kv_bytes(cfg, ctx: int, chunk: int) -> int:
    """The KV cache from the configuration: per layer that keeps K/V, K and V of n_kv_heads x slots x head_dim
    f16 values; a sliding layer's ring holds the window plus a prefill chunk, a global layer the context."""
    total = 0
    for l in range(cfg.n_layers):
        if cfg.has_kv[l]:
            slots = min(ctx, cfg.sliding_window + chunk - 1) if cfg.is_sliding[l] else ctx
            total += 2 * cfg.n_kv_heads[l] * slots * cfg.head_dim[l] * 2
    return total


async def test_gpu_memory_counts_buffers_until_destroyed_or_dropped(device):
    """allocated_bytes follows every buffer made through the device (sizes rounded up to whole words) until it
    is destroyed or dropped, each counted out once; peak_bytes keeps the most held at once."""
    await device.sync()
    base = await _settled(device)
    device.reset_peak()
    a = device.tensor((1000,), "float32")
    b = device.upload(np.arange(5, dtype=np.uint8))  # 5 bytes take 8
    assert await _settled(device) == base + 4000 + 8 and device.peak_bytes == base + 4008
    a.buffer.destroy()
    assert device.allocated_bytes == base + 8
    del a  # destroyed, then collected: not counted out twice
    assert await _settled(device) == base + 8
    del b  # dropped without destroy: the backend frees it, so it is counted out too
    assert await _settled(device) == base and device.peak_bytes == base + 4008
    assert device.reset_peak() == base + 4008 and device.peak_bytes == base
    assert device.memory() == {"allocated_bytes": base, "peak_bytes": base, "buffers": device.live_buffers}


async def test_max_context_grows_the_kv_cache_and_nothing_else_of_the_model(device):
    """Loading at a longer context costs exactly the longer KV cache among the model's buffers; the device counts
    every one of them, in and out. (Its total grows a little more with the context: attention keeps its split
    scratch per device, shared by the models on it, and sized by the context.)"""
    base = await _settled(device)
    short = await Engine.load(VISION, device=device, max_context=64, prefill_chunk=8)
    after_short = await _settled(device)
    long = await Engine.load(VISION, device=device, max_context=256, prefill_chunk=8)
    after_long = await _settled(device)
    cfg = short.config
    assert _kv_bytes(cfg, 64, 8) == short.model.kv_cache_bytes
    kv_growth = _kv_bytes(cfg, 256, 8) - _kv_bytes(cfg, 64, 8)
    assert kv_growth > 0 and _reachable_bytes(long) - _reachable_bytes(short) == kv_growth
    held = _reachable_bytes(short) + _reachable_bytes(long)
    assert after_short - base >= _reachable_bytes(short) and after_long - after_short >= _reachable_bytes(long)
    del short, long
    assert await _settled(device) == after_long - held  # both models' buffers counted out, to the byte


async def test_text_only_never_uploads_the_towers_and_says_so():
    """text_only: the model's own buffers only, and an image is refused with a sentence that names the text-only
    load, with nothing allocated; text chat works as before and allocates nothing either."""
    # A first load at these settings makes the device's own scratch, so the second one counts the model only.
    dev = (await Engine.load(VISION, max_context=64, prefill_chunk=8)).device
    await dev.sync()
    base = await _settled(dev)
    eng = await Engine.load(VISION, device=dev, max_context=64, prefill_chunk=8, text_only=True,
                            params=SamplerParams(temperature=0.0))
    loaded = await _settled(dev)
    assert eng.text_only and eng.towers_left_out == ("image",) and not eng.has_vision
    assert loaded - base == _reachable_bytes(eng)
    msg = {"role": "user", "content": [{"type": "image", "image": PHOTO}, {"type": "text", "text": "the cat"}]}
    with pytest.raises(NoTowerError, match="loaded text-only, without its vision tower, so it cannot read images"):
        await _collect(eng.chat([msg], max_tokens=2))
    assert await _settled(dev) == loaded and eng.towers_loaded == []
    text = await _collect(eng.chat([{"role": "user", "content": "the cat"}], max_tokens=3))
    assert len(text) == eng.stats.generated_tokens and await _settled(dev) == loaded


async def test_towers_freed_after_each_turn_load_again_with_the_same_reply():
    """release_towers_after_turn: the turn that reads an image ends with the device back where the loaded model
    left it, and the next image builds the tower again, to the same greedy reply as with the tower kept."""
    eng = await Engine.load(VISION, max_context=256, prefill_chunk=8, params=SamplerParams(temperature=0.0))
    eng.image_tokens = 70
    dev = eng.device
    await dev.sync()
    loaded = await _settled(dev)
    msg = {"role": "user", "content": [{"type": "image", "image": PHOTO}, {"type": "text", "text": "the cat"}]}

    kept = await _collect(eng.chat([msg], max_tokens=4))  # the default: the tower stays for the next image
    with_tower = await _settled(dev)
    assert eng.towers_loaded == ["image"] and eng.memory()["towers"] == ["image"]
    assert with_tower - loaded == _reachable_bytes(eng._towers["image"]) > 0

    eng.release_towers_after_turn = True
    for turn in range(2):  # the kept tower read it, then freed; then one built again for it, and freed
        eng.reset()
        dev.reset_peak()
        assert await _collect(eng.chat([msg], max_tokens=4)) == kept, turn
        assert eng.towers_loaded == [] and await _settled(dev) == loaded, turn
        assert dev.peak_bytes >= with_tower, turn
