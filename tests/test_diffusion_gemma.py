"""DiffusionGemma on the GPU against transformers (tests/fixtures/diffusion_gemma_tiny*, made by
tools/make_tiny_diffusion_gemma.py from HF's DiffusionGemmaForBlockDiffusion in float64): the encoder's KV cache,
the decoder's logits without and with self-conditioning, the teacher-forced denoising steps (decoder and sampler),
the early stop on the model's own logits, and whole generations with the seeded generator.

Tolerances. Logits reach 14 here; the engine keeps K and V in f16 (about 5e-4 relative per value), and the measured
worst case against the float64 goldens is 0.006 (decoder) and 6e-4 on the cache; 0.03 and 2^-10 * max|K| leave
room for other GPUs' rounding and are far below what a real mistake gives (swapping the two halves' layer scalars
moves the logits by 10, dropping the self-conditioning norm by 14: the fixture's `mistakes` record). The sampler's
decisions are compared exactly wherever the oracle's margin (recorded with each decision) exceeds what that
logit error can move: draws whose u lies within 1e-3 of a token's CDF edge, and acceptances within 1e-3 of the
entropy bound, are the only ones allowed to differ.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from rullama_py.diffusion import Diffusion, DiffusionParams
from rullama_py.gguf_file import GGUFFile
from rullama_py.models.diffusion_gemma import DiffusionGemma
from rullama_py.tokenizer import Tokenizer

FIXTURES = Path(__file__).parent / "fixtures"
GGUF = FIXTURES / "diffusion_gemma_tiny.gguf"
ATOL = 0.03
MARGIN = 1e-3


@pytest.fixture(scope="module")
def oracle():
    return np.load(FIXTURES / "diffusion_gemma_tiny_oracle.npz")


async def _diffusion(device) -> Diffusion:
    return await Diffusion.load(GGUF, max_context=128, prefill_chunk=8, device=device)


async def _read(device, t, dtype=np.float32):
    return np.frombuffer(await device._read_buffer(t.buffer), dtype)


def softmax(x):
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


async def test_encoder_writes_the_kv_cache(device, oracle):
    diff = await _diffusion(device)
    m = diff.model
    prompt = oracle["prompt"].tolist()
    assert await m.encode(prompt, 0) == len(prompt)
    for l in range(m.cfg.n_layers):
        k, v, _ = m.kv[l]
        for cache, key in ((k, f"enc_k_{l}"), (v, f"enc_v_{l}")):
            got = (await _read(device, cache, np.float16)).reshape(cache.shape)[:, : len(prompt)]
            want = oracle[key]
            assert np.abs(got - want).max() <= 2.0**-10 * np.abs(want).max() + 1e-4, key


async def _decode(diff, oracle, canvas, probs=None, block=0):
    """The decoder over `canvas` after the oracle's prompt (and, for block b, the b canvases transformers
    finished before it); `probs` [C, V] is the self-conditioning input (the previous step's softmax(raw / t)),
    None for a first step."""
    m, dev = diff.model, diff.device
    context = oracle["gen_sequences"][: len(oracle["prompt"]) + block * m.canvas_length].tolist()
    await m.encode(context, 0)
    m.set_canvas_step(len(context))
    dev.write(m.decoder.ids.buffer, np.asarray(canvas, np.uint32))
    if probs is None:
        m.clear_self_conditioning()
    else:
        dev.write(m.logits.buffer, np.asarray(probs, np.float32))
    dev.submit(m.decoder.graph)
    return (await _read(dev, m.logits)).reshape(m.canvas_length, -1)


async def test_decoder_logits_without_and_with_self_conditioning(device, oracle):
    diff = await _diffusion(device)
    got = await _decode(diff, oracle, oracle["fwd_canvas"])
    np.testing.assert_allclose(got, oracle["fwd_logits_nosc"], atol=ATOL)
    sc = softmax(oracle["fwd_logits_nosc"] / float(oracle["fwd_sc_temperature"]))
    got = await _decode(diff, oracle, oracle["fwd_canvas"], sc)
    np.testing.assert_allclose(got, oracle["fwd_logits_sc"], atol=ATOL)
    assert (got.argmax(-1) == oracle["fwd_logits_sc"].argmax(-1)).all()


async def test_teacher_forced_steps(device, oracle):
    """At every step whose logits the oracle kept (each block's first two and last two): the decoder on the
    recorded canvas and self-conditioning input gives the recorded logits, and the sampler on the recorded logits
    and draws makes the recorded decisions: entropies, argmax, accepted positions, and the next canvas."""
    diff = await _diffusion(device)
    m, dn, dev = diff.model, diff.denoiser, diff.device
    at = oracle["step_raw_logits_at"].tolist()
    raw = dict(zip(at, oracle["step_raw_logits"]))
    block, temp = oracle["step_block"], oracle["step_temperature"].astype(np.float64)
    randint, C = oracle["step_randint"], m.canvas_length
    checked = 0
    for i in at:
        prev = i - 1 if oracle["step_has_sc"][i] else None
        if prev is None or prev in raw:
            probs = None if prev is None else softmax(raw[prev] / temp[prev])
            got = await _decode(diff, oracle, oracle["step_canvas_in"][i], probs, block=int(block[i]))
            np.testing.assert_allclose(got, raw[i], atol=ATOL, err_msg=f"step {i}")
            checked += 1
        # the sampler alone, on the recorded logits and draws
        dev.write(m.logits.buffer, raw[i].astype(np.float32))
        dn.write_noise(oracle["step_uniform"][i], randint[block[i] + i + 1])
        dn.set_step(temperature=float(temp[i]), entropy_bound=0.1, host_noise=True, new_canvas=True)
        rep = dn.parse(await dev.run(diff.sample_graph, dn.readback, dn.report_source))
        assert rep.argmax.tolist() == oracle["step_argmax"][i].tolist()
        assert rep.mean_entropy == pytest.approx(float(oracle["step_mean_entropy"][i]), abs=1e-5)
        firm = np.abs(oracle["step_bound_margin"][i]) > MARGIN
        assert (rep.accepted == oracle["step_accepted"][i])[firm].all(), f"step {i}"
        drawn = rep.accepted & firm & (oracle["step_sample_margin"][i] > MARGIN)
        assert (rep.canvas[drawn] == oracle["step_denoiser"][i][drawn]).all(), f"step {i}"
        renoised = ~rep.accepted & firm
        assert (rep.canvas[renoised] == randint[block[i] + i + 1][renoised]).all()
        if i + 1 < len(block) and block[i + 1] == block[i]:
            same = firm & (~rep.accepted | (oracle["step_sample_margin"][i] > MARGIN))
            assert (rep.canvas[same] == oracle["step_canvas_in"][i + 1][same]).all()
        assert C == rep.canvas.size
    assert checked == 6  # steps 0, 1, 47 (after 46), 48, 49, 95 (after 94)


async def test_early_stop_on_the_models_own_logits(device, oracle):
    """The oracle's confident run (temperatures 0.03 -> 0.02) stops its blocks after 10 and 17 steps: on the
    recorded logits of each block's last two steps, the sampler reports the last one stable (same argmax as the
    step before) with a mean entropy under 0.005, and the one before it not both, which is where transformers
    stopped. (A free-running replay of whole generations is not compared: the engine's f16 KV cache moves the
    logits by up to 0.006, which at t = 0.02 is 0.3 in the processed logits, and the recorded draws have CDF
    margins down to 1e-6; the decisions diverge within a few steps, as they would between two float formats.)"""
    diff = await _diffusion(device)
    m, dn, dev = diff.model, diff.denoiser, diff.device
    at = oracle["early_raw_logits_at"].tolist()
    raw = dict(zip(at, oracle["early_raw_logits"]))
    stop, temp, randint = oracle["early_stop"], oracle["early_temperature"], oracle["early_randint"]
    block = oracle["early_block"]
    stops = [i for i in range(len(stop)) if stop[i]]
    assert stops == [9, 26] and all(i - 1 in raw and i in raw for i in stops)
    for i in stops:
        for j, first in ((i - 1, True), (i, False)):
            dev.write(m.logits.buffer, raw[j].astype(np.float32))
            dn.write_noise(oracle["early_uniform"][j], randint[block[j] + j + 1])
            dn.set_step(temperature=float(temp[j]), entropy_bound=0.1, host_noise=True, new_canvas=first)
            rep = dn.parse(await dev.run(diff.sample_graph, dn.readback, dn.report_source))
            assert rep.argmax.tolist() == oracle["early_argmax"][j].tolist()
            assert rep.mean_entropy == pytest.approx(float(oracle["early_mean_entropy"][j]), abs=1e-6)
        assert rep.stable and rep.mean_entropy < 0.005  # transformers' stopping rule holds at step i
        prev_stable = (oracle["early_argmax"][i - 1] == oracle["early_argmax"][i - 2]).all()
        assert not (prev_stable and oracle["early_mean_entropy"][i - 1] < 0.005)  # and not one step earlier


async def test_free_running_generation(device, oracle):
    """A whole generation on the GPU with the seeded generator: two canvases of all their steps (random weights
    never get confident; 12 steps a canvas to keep the test short), 32 tokens of text, the same for the same seed
    and different for another; tokens per forward as transformers counts it."""
    diff = await _diffusion(device)

    async def run(seed, max_new_tokens=32):
        await diff.start(oracle["prompt"].tolist(), DiffusionParams(steps=12, max_new_tokens=max_new_tokens, seed=seed))
        return [st async for st in diff.steps()]

    steps = await run(7)
    output = list(diff.output)
    assert [(st.block, st.step) for st in steps] == [(b, k) for b in (0, 1) for k in range(1, 13)]
    assert steps[-1].done and not any(st.converged for st in steps)
    assert len(output) == 32 and diff.stats["tokens_per_forward"] == pytest.approx(32 / 24)
    assert steps[11].argmax.tolist() == output[:16] and steps[-1].argmax.tolist() == output[16:]
    assert diff.text == diff.tokenizer.decode(output)
    await run(7, 16)
    assert diff.output == output[:16]  # the same seed, the same first canvas
    await run(8, 16)
    assert diff.output != output[:16]


async def test_decoder_never_writes_the_prompt_cache(device, oracle):
    """The decoder stores its canvas K/V past the prompt; the prompt's entries stay as the encoder wrote them."""
    diff = await _diffusion(device)
    m = diff.model
    prompt = oracle["prompt"].tolist()
    await m.encode(prompt, 0)
    before = [(await _read(device, m.kv[l][0], np.float16)).copy() for l in range(m.cfg.n_layers)]
    await _decode(diff, oracle, oracle["fwd_canvas"])
    for l in range(m.cfg.n_layers):
        after = (await _read(device, m.kv[l][0], np.float16)).reshape(m.kv[l][0].shape)
        assert (after[:, : len(prompt)] == before[l].reshape(after.shape)[:, : len(prompt)]).all()


async def test_bad_input_is_a_sentence(device):
    from rullama_py.engine import DiffusionModelError, Engine
    from rullama_py.models.diffusion_gemma import NotDiffusionModelError
    from rullama_py.diffusion import ContextOverflowError

    with pytest.raises(DiffusionModelError, match="diffusion model"):
        await Engine.load(GGUF, max_context=64, device=device)
    with pytest.raises(NotDiffusionModelError, match="not a diffusion model"):
        await Diffusion.load(FIXTURES / "gemma4_tiny_moe_f32.gguf", device=device)
    diff = await _diffusion(device)
    with pytest.raises(ContextOverflowError, match="exceed the context"):
        await diff.start(list(range(3, 3 + 120)))  # 120 prompt tokens + a canvas of 16 > 128
    with pytest.raises(ContextOverflowError, match="cannot hold"):
        await Diffusion.load(GGUF, max_context=16, device=device)
