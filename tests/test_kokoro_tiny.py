"""The tests' tiny Kokoro (tools/make_tiny_kokoro.py, built by tools/setup.sh into the cache): Kokoro-82M's
architecture with small widths read from the file's config, loaded through kokoro_gguf and Speaker, synthesised
natively in about a second per sentence.

What it must do for the tests that use it (the browser's speech scenario, the voice trainer's): its text side
agrees with a float64 numpy forward of the same weights (the durations exactly), it speaks with durations of 2
to 6 frames per phoneme, F0 in a voice's range, finite audio that is neither silent nor clipped, the same
samples for the same seed, and a spectrum that changes with the voice. And models/kokoro.py refuses, in a
sentence, configs it does not run and weights that do not match their config.
"""

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import require, run

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))

SENTENCE = "The quick brown fox jumps over the lazy dog."
SPOKEN = "The quick brown fox jumps."  # about 2 s of speech
SPOKEN_BY = (("af_heart", 0), ("af_heart", 1), ("am_adam", 0), ("bm_george", 0))  # (voice, noise seed)


def _path():
    from rullama_py import assets

    path = assets.kokoro_tiny_path()
    require(None if path.is_file() else f"{path} is missing (run tools/setup.sh)", "the tiny Kokoro tests")
    return path


@pytest.fixture(scope="module")
def speaker(device):
    from rullama_py.speaker import Speaker

    sp = run(Speaker.load(_path(), device=device))
    yield sp
    sp.release()


@pytest.fixture(scope="module")
def state():
    from rullama_py.gguf_file import GGUFFile
    from rullama_py.models import kokoro_gguf

    async def go():
        gf = await GGUFFile.open(_path())
        try:
            return kokoro_gguf.read_kokoro_config(gf), await kokoro_gguf.load_state(gf)
        finally:
            await gf.close()
    return run(go())


async def _utterances(speaker, text, voice, seed=0):
    return [u async for u in speaker.stream(text, voice, seed=seed)]


@pytest.fixture(scope="module")
def spoken(speaker):
    """SPOKEN read by each of SPOKEN_BY: {(voice, seed): (Utterance, F0 curve)}, F0 read back after each."""
    async def go():
        out = {}
        for voice, seed in SPOKEN_BY:
            [u] = await _utterances(speaker, SPOKEN, voice, seed)
            f0 = await speaker.model.device.read(speaker.model._run.bufs["f0"])
            out[voice, seed] = u, f0.reshape(-1)[: 2 * int(u.durations.sum())]
        return out
    return run(go())


def log_mel_signature(audio):
    """The voice trainer's timbre signature in float64 (ops/mel.py's definition): the mean over active frames of
    ln(mel power + 1e-8), 80 HTK bands of 1024-point frames every 256 samples, minus its own mean."""
    from rullama_py.ops.mel import HOP, N_FFT, THRESHOLD, mel_filterbank

    x = np.concatenate([np.zeros(N_FFT // 2), np.asarray(audio, np.float64), np.zeros(N_FFT // 2)])
    frames = np.lib.stride_tricks.sliding_window_view(x, N_FFT)[::HOP][: len(audio) // HOP + 1]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)
    power = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2
    logmel = np.log(power @ mel_filterbank().T + 1e-8)
    energy = logmel.mean(1)
    sig = logmel[energy >= energy.max() - THRESHOLD].mean(0)
    return sig - sig.mean()


def test_the_file_is_small_and_holds_four_real_voices(speaker, state):
    from rullama_py import assets

    cfg, weights = state
    assert assets.kokoro_tiny_path().stat().st_size < 8 << 20
    assert speaker.voices == ["af_heart", "am_adam", "bf_emma", "bm_george"]
    # the real vocabulary and time axis, small widths (Kokoro-82M: 768, 512, 1024, 512)
    assert cfg.vocab == speaker.vocab and len(cfg.vocab) > 100 and cfg.samples_per_frame == 600
    assert (cfg.albert_hidden_size, cfg.hidden_dim, cfg.decoder_hidden, cfg.upsample_initial_channel) == (64, 16, 128, 16)
    assert sum(v.size for v in weights.values()) < 3_000_000
    voices = np.fromfile(assets.kokoro_voices_dir() / "bf_emma.bin", "<f4").reshape(510, 256)
    np.testing.assert_array_equal(speaker.voice("bf_emma"), voices)  # copied as they are


async def test_text_side_matches_a_numpy_forward(speaker, state):
    """PL-BERT (2 heads, applied twice), the duration encoder and the duration head of the GPU graphs, recorded
    from the config's widths, against tools/make_tiny_kokoro.py's float64 numpy forward of the same weights."""
    from make_tiny_kokoro import duration_features

    from rullama_py import g2p

    cfg, weights = state
    model = speaker.model
    for voice in ("af_heart", "bm_george"):
        [(_, phonemes)] = [p async for p in g2p.iter_sentences(SENTENCE, speaker.lang_for(voice, None))]
        ids = [0, *g2p.tokenize(phonemes, speaker.vocab), 0]
        pack = speaker.voice(voice)
        dur = await model.align(ids, speaker.style_row(pack, len(ids) - 2))
        T = len(ids)
        logits = (await model.device.read(model._run.bufs["logits"])).reshape(model._run.tokens, -1)[1:T - 1]
        w = weights["predictor.duration_proj.linear_layer.weight"]
        b = weights["predictor.duration_proj.linear_layer.bias"]
        want = duration_features(weights, cfg, ids, pack) @ w.T + b
        err = np.abs(logits - want).max()
        assert err < 1e-3, f"{voice}: logits differ by {err}"
        want_dur = np.maximum(np.round((1 / (1 + np.exp(-want))).sum(1)), 1)
        np.testing.assert_array_equal(dur[1:-1], want_dur, err_msg=f"{voice}: durations differ")


def test_speech_shaped_output(spoken):
    """Durations of 2 to 6 frames per phoneme, F0 of a voice (so the harmonic source is voiced), finite audio
    whose level is speech's: neither silence nor clipping."""
    for (voice, _), (u, f0) in spoken.items():
        phonemes = u.durations[1:-1]
        assert phonemes.min() >= 2 and phonemes.max() <= 6 and 2.5 <= phonemes.mean() <= 5.0, np.bincount(phonemes)
        assert u.audio.shape == (600 * int(u.durations.sum()),) and np.isfinite(u.audio).all()
        peak, rms = np.abs(u.audio).max(), np.sqrt(np.mean(u.audio.astype(np.float64) ** 2))
        assert 0.05 < peak < 0.8 and 0.01 < rms < 0.2, (voice, peak, rms)
        assert 80 < f0.min() and f0.max() < 300, (voice, f0.min(), f0.max())


async def test_the_same_seed_gives_the_same_samples(speaker, spoken):
    again = await _utterances(speaker, SPOKEN, "af_heart", seed=0)
    first, other_seed = spoken["af_heart", 0][0], spoken["af_heart", 1][0]
    np.testing.assert_array_equal(again[0].audio, first.audio)
    np.testing.assert_array_equal(other_seed.durations, first.durations)  # the seed is the source's noise only
    assert not np.array_equal(other_seed.audio, first.audio)


def test_the_spectrum_changes_with_the_voice(spoken):
    """Two voices' mean log-mel spectra (the voice trainer's signature) differ far more than one voice's with
    two noise seeds (measured: 0.089 and 0.25 against 0.0017, mean squared difference)."""
    sig = {key: log_mel_signature(u.audio) for key, (u, _) in spoken.items()}
    msd = lambda a, b: float(np.mean((sig[a] - sig[b]) ** 2))  # noqa: E731
    same = msd(("af_heart", 0), ("af_heart", 1))
    for other in ("am_adam", "bm_george"):
        assert msd(("af_heart", 0), (other, 0)) > 10 * same + 0.02, (other, msd(("af_heart", 0), (other, 0)), same)


def test_configs_the_runner_does_not_support_are_sentences(device, state):
    from rullama_py.models.kokoro import Kokoro, KokoroError
    from rullama_py.models.kokoro_gguf import KokoroConfig

    cfg, weights = state
    for change, words in ((dict(style_dim=64), "style_dim 64"),
                          (dict(upsample_rates=(8, 5)), r"upsampling rates \[8, 5\]"),
                          (dict(hop=4), "hop 4"),
                          (dict(albert_n_heads=3), "3 attention heads")):
        with pytest.raises(KokoroError, match=words):
            run(Kokoro.load(device, weights, dataclasses.replace(cfg, **change)))
    # the tiny weights with Kokoro-82M's config: the first tensor that disagrees is named
    with pytest.raises(KokoroError, match=r"bert.embeddings.word_embeddings.weight has shape \[178, 32\]"):
        run(Kokoro.load(device, weights, KokoroConfig()))


def test_speaker_load_names_the_file_when_the_config_is_not_supported(device, tmp_path, state):
    from convert_kokoro import write_gguf
    from make_tiny_kokoro import VOICES

    from rullama_py.models.kokoro_gguf import KokoroLoadError
    from rullama_py.speaker import Speaker

    cfg, weights = state
    # a header that says ALBERT has 3 heads over its 64 channels (the tensors' shapes do not depend on it)
    bad = write_gguf(weights, dataclasses.replace(cfg, albert_n_heads=3),
                     {v: np.zeros((510, 256), np.float32) for v in VOICES[:1]}, tmp_path / "three-heads.gguf", "f32")
    with pytest.raises(KokoroLoadError, match="three-heads.gguf: this Kokoro runner does not support 3 attention"):
        run(Speaker.load(bad, device=device))
