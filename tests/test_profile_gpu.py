"""tools/profile_gpu.py: every dispatch of a recorded graph gets its own GPU time from timestamp queries, with
both methods (timestamps inside the passes, a pass per dispatch), on the tiny fixtures. Native only."""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from conftest import run

HERE = Path(__file__).resolve().parent
TINY = HERE / "fixtures" / "gemma4_tiny_q4_k_m.gguf"


def _tool():
    spec = importlib.util.spec_from_file_location("profile_gpu", HERE.parent / "tools" / "profile_gpu.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


profile_gpu = _tool()


@pytest.fixture(scope="module")
def tdev():
    """A device with the adapter's timestamp features (the test device has none: Device.open asks only for the
    kernels' features)."""
    dev = run(profile_gpu.open_device())
    if profile_gpu.TIMESTAMP not in profile_gpu.timestamp_features(dev):
        pytest.skip(f"{dev.info.get('device')} offers no timestamp-query: GPU time per dispatch cannot be measured")
    return dev


def _methods(dev) -> list[str]:
    have = profile_gpu.timestamp_features(dev)
    return [m for m in profile_gpu.METHODS if m != "inside-passes" or profile_gpu.INSIDE_PASSES in have]


@pytest.fixture(scope="module")
def tiny(tdev):
    from rullama_py.engine import Engine
    from rullama_py.sampling import SamplerParams

    eng = run(Engine.load(str(TINY), max_context=64, prefill_chunk=8, device=tdev,
                          params=SamplerParams(temperature=0.0), text_only=True))
    run(eng.feed([5, 6, 7, 8, 9, 10, 11, 12, 13, 14]))
    run(eng.step(ahead=False))
    return eng


def _check_covers(prof: dict, graphs) -> None:
    """The profile has one entry per dispatch, in the graphs' order, with a finite non-negative time, and the
    families add up to the dispatches."""
    recorded = [d for g in graphs for d in g.dispatches]
    got = prof["per_dispatch"]
    assert prof["dispatches"] == len(got) == len(recorded) > 0
    assert [p["kernel"] for p in got] == [d.kernel for d in recorded]
    assert [p["workgroups"] for p in got] == [list(d.workgroups) for d in recorded]
    us = np.array([p["us"] for p in got])
    assert np.isfinite(us).all() and (us >= 0).all() and us.sum() > 0
    assert sum(f["count"] for f in prof["families"]) == len(recorded)
    assert math.isclose(sum(f["total_us"] for f in prof["families"]), prof["sum_of_dispatches_us"], rel_tol=1e-9)
    assert math.isclose(sum(f["share"] for f in prof["families"]), 1.0, rel_tol=1e-9)
    assert prof["step_us"] > 0


@pytest.mark.parametrize("method", profile_gpu.METHODS)
async def test_the_profile_covers_every_dispatch_of_the_decode_step(tdev, tiny, method):
    if method not in _methods(tdev):
        pytest.skip(f"{tdev.info.get('device')} lacks {profile_gpu.INSIDE_PASSES}")
    m = tiny.model
    graphs = [m.decode.graph, tiny.sample_graph]
    pos = len(tiny.tokens)
    prof = await profile_gpu.profile_graphs(tdev, graphs, method=method, repeats=2,
                                            before_run=lambda: m.write_step(pos, 1))
    _check_covers(prof, graphs)
    assert prof["method"] == method
    assert prof["host_encode_us_per_dispatch"] > 0
    fams = {f["family"] for f in prof["families"]}
    assert any(f.startswith("matvec") and f.endswith("q4_k") for f in fams), fams  # the weights' type is named
    # a greedy engine's sampler is the argmax fast path (sampling.Sampler.record_greedy)
    sampler = "sample_argmax" if tiny.sampler.fast_greedy else "sample_select"
    assert "rms_norm" in fams and any(f.startswith(sampler) for f in fams), fams


@pytest.mark.parametrize("method", profile_gpu.METHODS)
async def test_more_timestamps_than_one_query_set_holds(tdev, method, monkeypatch):
    """Graphs larger than a query set (4096 timestamps in wgpu) spread over several; here sets of 32, with 40
    light dispatches and a heavy one in the second set, which keeps its own time."""
    from rullama_py import ops

    if method not in _methods(tdev):
        pytest.skip(f"{tdev.info.get('device')} lacks {profile_gpu.INSIDE_PASSES}")
    monkeypatch.setattr(profile_gpu, "MAX_QUERIES", 32)
    small = tdev.upload(np.ones(64, np.float32))
    big = tdev.upload(np.ones(1 << 22, np.float32))
    g = tdev.graph()
    for i in range(41):
        if i == 36:
            await ops.softcap(g, big, cap=30.0)
        else:
            await ops.scale_inplace(g, small, 1.0)
    times = await profile_gpu.time_dispatches(tdev, [g], method, 3)
    assert times.shape == (3, 41)
    assert np.isfinite(times).all() and (times >= 0).all()
    assert int(np.argmax(np.median(times, axis=0))) == 36, times


@pytest.mark.parametrize("method", profile_gpu.METHODS)
async def test_each_dispatch_gets_its_own_time(tdev, method):
    """A heavy dispatch between two light ones: the heavy one's time lands on it, not on a neighbour (a slot
    off by one would move it), with and without untimed warm-up runs before; the whole step (timed from its
    first dispatch) holds it. softcap over 4M values is thousands of times the work of a scale over 64."""
    from rullama_py import ops

    if method not in _methods(tdev):
        pytest.skip(f"{tdev.info.get('device')} lacks {profile_gpu.INSIDE_PASSES}")
    small = tdev.upload(np.ones(64, np.float32))
    big = tdev.upload(np.ones(1 << 22, np.float32))
    g = tdev.graph()
    await ops.scale_inplace(g, small, 0.5)
    await ops.softcap(g, big, cap=30.0)
    await ops.scale_inplace(g, small, 2.0)
    for warm in (0, 2):  # untimed runs first, in the same command buffer, move no slot
        med = np.median(await profile_gpu.time_dispatches(tdev, [g], method, 3, warm), axis=0)
        assert med[1] > 10 * max(med[0], med[2]), (warm, med)
        step = await profile_gpu.time_step(tdev, [g], 2, warm)
        assert len(step) == 2 and min(step) >= med[1] * 0.5, (warm, step, med)
    labels = profile_gpu.describe(tdev, [g])
    assert [x["family"] for x in labels] == ["scale by_const", "softcap", "scale by_const"]
    assert labels[0]["consts"]["S"] == 0.5 and labels[2]["consts"]["S"] == 2.0 and labels[1]["consts"]["CAP"] == 30.0


def test_families():
    f = profile_gpu.family
    assert f("matvec", ("quant/bytes", "quant/k_scales", "quant/q4_k", "matvec_x", "matvec_units", "matvec_lib")) \
        == "matvec q4_k"
    assert f("matvec", ("quant/bytes", "quant/q8_0", "workgroup_sum", "matvec_stream_norm", "matvec_units",
                        "matvec_lib")) == "matvec+norm q8_0"
    assert f("attention", (), "split") == "attention split"
    assert f("rms_norm") == "rms_norm"


def test_a_device_without_timestamps_is_named():
    class Stub:
        info = {"device": "SomeGPU"}

        class raw:
            features = {"shader-f16"}

    with pytest.raises(profile_gpu.ProfileError, match="SomeGPU offers no 'timestamp-query'"):
        profile_gpu.pick_method(Stub())

    Stub.raw.features = {"timestamp-query"}
    assert profile_gpu.pick_method(Stub()) == "pass-per-dispatch"
    with pytest.raises(profile_gpu.ProfileError, match="lacks 'timestamp-query-inside-passes'"):
        profile_gpu.pick_method(Stub(), "inside-passes")


def test_the_command_writes_decode_and_prefill(tdev, tmp_path, capsys, monkeypatch):
    async def same_device(disable_features=()):
        return tdev

    monkeypatch.setattr(profile_gpu, "open_device", same_device)
    out = tmp_path / "p.json"
    assert profile_gpu.main([str(TINY), "--prefill", "--depth", "9", "--ctx", "64", "--prefill-chunk", "8",
                             "--repeats", "1", "--ple-on-gpu", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "decode: " in text and "prefill chunk of 8 tokens: " in text
    prof = json.loads(out.read_text())
    assert prof["depth"] == 10  # 9 fed, 1 decode step before the profile
    assert prof["prefill"]["tokens"] == 8
    for part in ("decode", "prefill"):
        p = prof[part]
        assert p["dispatches"] == len(p["per_dispatch"]) == sum(f["count"] for f in p["families"])
    assert prof["command"].startswith("tools/profile_gpu.py ")
    # --ple-on-gpu: the step gathers its per-layer-embedding row on the GPU (an embed dispatch per table part)
    assert prof["ple_on_gpu"] is True
    kernels = [d["kernel"] for d in prof["decode"]["per_dispatch"]]
    assert kernels.count("embed") == 2, kernels  # the token embedding and the table's one part


def test_a_context_too_small_is_a_sentence(tdev, capsys, monkeypatch):
    async def same_device(disable_features=()):
        return tdev

    monkeypatch.setattr(profile_gpu, "open_device", same_device)
    assert profile_gpu.main([str(TINY), "--prefill", "--depth", "60", "--ctx", "64", "--prefill-chunk", "8"]) == 1
    err = capsys.readouterr().err
    assert "need a context of 69 tokens" in err and "--ctx 69" in err
