"""Native-only checks of the greedy fast path (shaders/sample_argmax.wgsl): more vocabulary sizes, each of which
would compile its own pipelines in Pyodide (seconds each on SwiftShader). The shared helpers and the
Pyodide-marked tests are in test_sample_argmax.py."""

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # test_sample_argmax, also when loaded by path
import reference_sampling as ref  # noqa: E402
from test_sample_argmax import Both, POS_NAN, check_cases  # noqa: E402


@pytest.mark.parametrize("vocab", [100, 2048, 2049, 6143])
@pytest.mark.parametrize("which", ["device", "device_fallback"])
async def test_argmax_more_vocabularies(device, device_fallback, which, vocab):
    """100: fewer tokens than invocations. 2048: one whole workgroup. 2049: a second workgroup holding one token.
    6143: three workgroups, the last one token short."""
    await check_cases(device if which == "device" else device_fallback, vocab, full=which == "device")


@pytest.mark.parametrize("which", ["device", "device_fallback"])
async def test_argmax_vocabulary_of_one(device, device_fallback, which):
    both = await Both.make(device if which == "device" else device_fallback, np.zeros(1, np.float32))
    for x in (-np.inf, 3.0, POS_NAN):
        both.set_logits(np.array([x], np.float32))
        assert await both.draw("fast") == await both.draw("full") == ref.argmax(np.array([x], np.float32)) == 0
