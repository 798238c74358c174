"""Kokoro-82M on the GPU against the `kokoro` package's KModel (float32 torch, CPU) on the same real weights:
tests/fixtures/kokoro/goldens.npz, made by tools/make_kokoro_goldens.py from the int8 ONNX the setup installs
(dequantised by tools/convert_kokoro.py exactly as the GGUF is made).

Checked per case (phonemes, voice, speed, and the harmonic source's noise: off, or our seeded noise fed to torch):
- predicted durations exactly equal (rounded sums of sigmoids: a different rounding means a different alignment,
  so this is the strict check of the text side: PL-BERT, the duration encoder, the LSTMs);
- the F0 and noise curves and the decoder output (the generator's input) within 1e-4 relative RMS (measured
  ~1e-6: f32 against f32 in another order);
- the waveform, for the cases with noise: SNR >= 30 dB against the reference from the F32 GGUF (the issue's bar).
  Without noise the source is a constant in unvoiced stretches and the STFT bins that carry no energy get
  phases from rounding noise (different in torch and here), which the generator's noise convolutions then read:
  the waveform of a noise-free case is not a well-posed comparison, so those cases stop at the decoder.

The generator is ~90 % of Kokoro's arithmetic and slow on a CPU Vulkan driver (minutes per second of speech on
lavapipe), so one short sentence goes all the way to the waveform and the others stop at the decoder. Seeds
(same seed, same noise; another seed, other noise) are checked on the source op (tests/kernels/test_signal.py).
"""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from conftest import require, run

GOLDENS = Path(__file__).parent / "fixtures" / "kokoro" / "goldens.npz"
WAVEFORM_CASE = "hello_noise"


def snr_db(got, want):
    n = min(len(got), len(want))
    err = got[:n] - want[:n]
    return 10 * np.log10(np.sum(want[:n] ** 2) / max(np.sum(err**2), 1e-30))


def rel_rms(got, want):
    got, want = np.asarray(got, np.float64).reshape(-1), np.asarray(want, np.float64).reshape(-1)
    return float(np.sqrt(np.mean((got - want) ** 2)) / max(np.sqrt(np.mean(want**2)), 1e-30))


def _model_path(kind):
    from rullama_py import assets

    path = assets.kokoro_model_path(kind)
    require(None if path.exists() else f"{path} is missing (run tools/setup.sh)", "the Kokoro parity tests")
    return path


@pytest.fixture(scope="module")
def goldens():
    g = np.load(GOLDENS)
    return g, json.loads(str(g["cases"]))


async def load_model(device, kind):
    from rullama_py.gguf_file import GGUFFile
    from rullama_py.models import kokoro_gguf
    from rullama_py.models.kokoro import Kokoro

    gf = await GGUFFile.open(_model_path(kind))
    try:
        state = await kokoro_gguf.load_state(gf)
    finally:
        await gf.close()
    return await Kokoro.load(device, state)


@pytest.fixture(scope="module")
def kokoro_f32(device):
    model = run(load_model(device, "f32"))
    yield model
    model.release()


async def check_case(model, g, case, *, full: bool):
    name, _, voice, speed, seed = case
    audio, dur = await model.synthesize(g[name + ".ids"], g[name + ".style"], speed=speed, seed=seed or 0,
                                        noise=0.0 if seed is None else 1.0, decoder_only=not full)
    np.testing.assert_array_equal(dur, g[name + ".durations"], err_msg=f"{name}: durations differ")
    bufs, read = model._run.bufs, model.device.read
    n2 = 2 * int(dur.sum())
    errs = {"f0": rel_rms((await read(bufs["f0"])).reshape(-1)[:n2], g[name + ".f0"]),
            "n": rel_rms((await read(bufs["n_curve"])).reshape(-1)[:n2], g[name + ".n"]),
            "decoder": rel_rms((await read(bufs["a512"])).reshape(-1, 512)[:n2], g[name + ".gen_x"])}
    print(f"{name} ({voice}, speed {speed}, noise seed {seed}): {int(dur.sum())} frames, rel rms "
          + ", ".join(f"{k} {v:.2e}" for k, v in errs.items()))
    assert max(errs.values()) < 1e-4, (name, errs)
    return audio


# Stopped at the decoder: another voice and speed (bm_george at 1.2) than the waveform case (af_heart at 1.0, which
# checks the same up to the decoder first). The goldens also hold "hello" (the waveform case's text and voice
# without noise) and "story" (af_bella, speed 0.8, 262 frames), passing at ~1e-6 too: left out for time. Since
# the waveform case checks every stage, this one runs only with RULLAMA_ORACLE_ALL=1 (a minute on lavapipe).
DECODER_CASES = ("fox",)


@pytest.mark.skipif(os.environ.get("RULLAMA_ORACLE_ALL") != "1",
                    reason="another voice and speed: RULLAMA_ORACLE_ALL=1 (the waveform case checks every stage)")
async def test_durations_prosody_decoder_match_kmodel(kokoro_f32, goldens):
    g, cases = goldens
    by_name = {c[0]: c for c in cases}
    for name in DECODER_CASES:  # fox first: its recording (the larger) then also serves the waveform case
        await check_case(kokoro_f32, g, by_name[name], full=False)


async def test_waveform_matches_kmodel(kokoro_f32, goldens):
    g, cases = goldens
    case = next(c for c in cases if c[0] == WAVEFORM_CASE)
    audio = await check_case(kokoro_f32, g, case, full=True)
    want = g[WAVEFORM_CASE + ".audio"]
    assert len(audio) == len(want) == 600 * int(g[WAVEFORM_CASE + ".durations"].sum())
    snr = snr_db(audio, want)
    print(f"{WAVEFORM_CASE}: {len(audio) / 24000:.2f} s, waveform SNR {snr:.1f} dB against KModel")
    assert snr >= 30.0, f"waveform SNR {snr:.1f} dB < 30 dB"
