"""The block-diffusion driver (rullama_py.diffusion) on constructed logits: the stopping rule, the step cap and the
entropy budget, with the sampler's kernels on the GPU and a stand-in decoder that writes fixed logits.

transformers' tiny random DiffusionGemma never gets confident enough to stop early (every canvas runs all its
steps), so the early-stop branch is checked here on its own, as the seed system's tests did: a near one-hot
"model" converges and stops after two steps (the first step is never stable), uniform logits run to the cap, and
the entropy budget cuts the least confident position. The expected values come from the sampler's definition
(reference notes), computed here in float64, not from the engine.
"""

from pathlib import Path

import numpy as np
import pytest

from rullama_py import ops
from rullama_py.config import DiffusionConfig
from rullama_py.diffusion import Diffusion, DiffusionError, DiffusionParams
from rullama_py.gpu import Device, Graph
from rullama_py.tokenizer import Tokenizer
from rullama_py.gguf_file import GGUFFile

FIXTURES = Path(__file__).parent / "fixtures"
C, V = 8, 512


class _Cfg:
    vocab_size = V
    diffusion = DiffusionConfig(canvas_length=C, max_steps=48)


class _Run:
    def __init__(self, device: Device):
        self.ids = device.tensor((C,), "uint32", "canvas")
        self.graph = Graph(device)
        self.capacity = C


class StandIn:
    """What Diffusion needs of a DiffusionGemma, with a 'decoder' that copies fixed logits into the logits buffer
    (the sampler turns them into probabilities in place each step) and an encoder that only counts positions."""

    def __init__(self, device: Device, logits: np.ndarray):
        self.device, self.cfg, self.canvas_length, self.max_context = device, _Cfg(), C, 4096
        self.fixed = device.upload(logits.astype(np.float32), label="fixed")
        self.zeros = device.upload(np.zeros_like(logits, np.float32), label="zeros")
        self.logits = device.tensor((C, V), "float32", "logits")
        self.decoder = _Run(device)
        self.encoded = []

    async def record(self):
        await ops.add(self.decoder.graph, self.fixed, self.zeros, self.logits, n=V)

    async def encode(self, ids, pos):
        self.encoded.append(list(ids))
        return pos + len(ids)

    def set_canvas_step(self, pos):
        self.canvas_pos = pos

    def clear_self_conditioning(self):
        self.device.clear(self.logits)


async def _diffusion(device, logits) -> Diffusion:
    gf = await GGUFFile.open(FIXTURES / "gemma4_tiny_e2b_f32.gguf")  # a 512-token Gemma 4 vocabulary
    model = StandIn(device, logits)
    await model.record()
    diff = Diffusion(model, Tokenizer.from_gguf_metadata(gf.metadata))
    diff.eos_ids = frozenset()  # the constructed canvases may hold any token
    await diff._record_sampler()
    return diff


def entropy(logits, t):
    x = np.asarray(logits, np.float64) / t
    p = np.exp(x - x.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return -(p * np.log(np.where(p > 0, p, 1))).sum(-1)


async def test_near_one_hot_converges_after_two_steps(device):
    hot = (np.arange(C) * 37 + 11) % V
    logits = np.zeros((C, V))
    logits[np.arange(C), hot] = 30.0  # entropy at t <= 0.8: about 1e-13 nats
    diff = await _diffusion(device, logits)
    await diff.start("hi", DiffusionParams(max_new_tokens=C, seed=3))
    steps = [s async for s in diff.steps()]
    assert len(steps) == 2  # the first step is never stable; the second is stable and confident
    first, second = steps
    assert not first.stable and not first.block_done
    assert second.stable and second.converged and second.block_done and second.done
    assert second.mean_entropy < 0.005
    assert second.argmax.tolist() == hot.tolist() and first.accepted.all()  # every position under the bound
    assert diff.output == hot.tolist() and diff.stats["forwards"] == 2


async def test_uniform_logits_run_to_the_cap(device):
    diff = await _diffusion(device, np.zeros((C, V)))
    await diff.start("hi", DiffusionParams(steps=5, max_new_tokens=C, seed=4))
    steps = [s async for s in diff.steps()]
    assert [s.step for s in steps] == [1, 2, 3, 4, 5]
    assert steps[-1].block_done and not steps[-1].converged and steps[-1].done
    for s in steps:
        assert abs(s.mean_entropy - np.log(V)) < 1e-4  # ln 512 = 6.238 at every temperature
        assert s.n_accepted == 1  # only the lowest (all tied: the first position) fits under the bound
    # the temperatures fall linearly from t_max (cur_step = S) to t_min + (t_max - t_min) / S
    assert [round(s.temperature, 6) for s in steps] == [round(0.4 + 0.4 * k / 5, 6) for k in (5, 4, 3, 2, 1)]


async def test_entropy_budget_cuts_the_least_confident_position(device):
    """Positions 0-3 get entropies e0 < e1 < e2 < e3 with e0 + e1 <= 0.1 < e0 + e1 + e2: positions 0, 1 and 2
    are accepted (the sum of the entropies strictly before each is within the bound), 3 is not, nor is any
    uniform position."""
    logits = np.zeros((C, V))
    for c, margin in enumerate((14.0, 11.0, 8.5, 7.0)):
        logits[c, c + 1] = margin  # one favourite token, the rest flat
    t = 0.8  # the first step's temperature (cur_step = S)
    h = entropy(logits, t)
    order = np.argsort(h, kind="stable")
    before = np.concatenate([[0.0], np.cumsum(h[order])[:-1]])
    want = np.zeros(C, bool)
    want[order[before <= 0.1]] = True
    assert want.tolist() == [True, True, True, False, False, False, False, False]  # the construction holds
    assert min(abs(before - 0.1)) > 1e-3  # no position near the bound
    diff = await _diffusion(device, logits)
    await diff.start("hi", DiffusionParams(steps=4, max_new_tokens=C, seed=5))
    s = await diff.step()
    assert s.temperature == pytest.approx(t)
    assert s.accepted.tolist() == want.tolist() and s.n_accepted == 3
    assert s.mean_entropy == pytest.approx(h.mean(), abs=1e-4)
    assert s.argmax[:4].tolist() == [1, 2, 3, 4]


async def test_settings_out_of_range_are_sentences(device):
    diff = await _diffusion(device, np.zeros((C, V)))
    for bad, words in ((dict(steps=0), "steps must be"), (dict(steps=5000), "steps must be"),
                       (dict(t_min=0.9, t_max=0.5), "temperatures"), (dict(max_new_tokens=0), "max_new_tokens"),
                       (dict(entropy_bound=-1.0), "entropy_bound")):
        with pytest.raises(DiffusionError, match=words):
            await diff.start("hi", DiffusionParams(**bad))
    with pytest.raises(DiffusionError, match="start"):
        await diff.step()  # nothing started


async def test_cancel_ends_after_the_current_step(device):
    diff = await _diffusion(device, np.zeros((C, V)))
    await diff.start("hi", DiffusionParams(steps=10, max_new_tokens=4 * C, seed=6))
    await diff.step()
    diff.cancel()
    s = await diff.step()
    assert s.done and s.block_done and diff.finished and len(diff.output) == C
