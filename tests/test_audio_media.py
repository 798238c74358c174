"""rullama_py.media audio: WAV decoding, resampling, and Gemma 4 log-mel features against transformers.

The goldens (tests/goldens/gemma4_audio.npz, from tools/make_audio_goldens.py) hold transformers'
Gemma4AudioFeatureExtractor output for the clips in tests/fixtures/audio, computed on the 16 kHz signal that
rullama_py.media's own decode_wav + resample made of each clip, so features and resampling are checked
separately: the features against transformers, the resampling against scipy and against the native
resampled samples stored with the goldens. Nothing here imports transformers or torch; the tests marked
`pyodide` run again inside Pyodide (tests/test_in_pyodide.py) with Pyodide's numpy and scipy.
"""

from __future__ import annotations

import math
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest

from rullama_py import media
from rullama_py.media import (
    CHUNK_SECONDS,
    MAX_AUDIO_SECONDS,
    SAMPLE_RATE,
    MediaError,
    PreparedAudio,
    audio_frames,
    audio_soft_tokens,
    decode_wav,
    load_resampler,
    log_mel,
    prepare_audio,
    resample,
)

pyodide = pytest.mark.pyodide

HERE = Path(__file__).resolve().parent
AUDIO = HERE / "fixtures" / "audio"
FORMATS = AUDIO / "formats"
GOLDENS = HERE / "goldens" / "gemma4_audio.npz"

# clip -> its sample rate; see tests/fixtures/README.md (audio)
CLIPS = {
    "speech_22k.wav": 22050,
    "speech_48k.wav": 48000,
    "speech_8k.wav": 8000,
    "speech_16k.wav": 16000,
    "music_44k.wav": 44100,
    "noise_48k.wav": 48000,
}
FEATURE_TOL = 1e-4  # |ours - transformers| on log-mel values; measured 4.8e-7 (one float32 rounding)
RESAMPLE_TOL = 1e-6  # |ours - the native resampled samples|, and |ours - scipy.signal.resample_poly|

_cache: dict = {}


def _goldens():
    if "g" not in _cache:
        with np.load(GOLDENS) as z:
            _cache["g"] = {k: z[k] for k in z.files}
    return _cache["g"]


def _read(path: Path) -> bytes:
    return path.read_bytes()


# --- WAV writing for the bad-input tests ------------------------------------------------------------------

def _chunk(cid: bytes, body: bytes) -> bytes:
    return cid + struct.pack("<I", len(body)) + body + (b"\x00" if len(body) & 1 else b"")


def _fmt(tag=1, channels=1, rate=16000, bits=16, align=None, extra=b"") -> bytes:
    align = channels * ((bits + 7) // 8) if align is None else align
    return _chunk(b"fmt ", struct.pack("<HHIIHH", tag, channels, rate, rate * align, align, bits) + extra)


def _ext(sub: int, channels=1, rate=16000, bits=16, tail=b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"):
    extra = struct.pack("<HHI", 22, bits, 0) + struct.pack("<H", sub) + tail
    return _fmt(0xFFFE, channels, rate, bits, extra=extra)


def _wav(*chunks: bytes) -> bytes:
    body = b"WAVE" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _s16(x: np.ndarray) -> bytes:
    return np.clip(np.round(np.asarray(x) * 32768), -32768, 32767).astype("<i2").tobytes()


def _sentence(e: MediaError, name: str) -> str:
    msg = str(e)
    assert name in msg and msg.endswith(".") and "\n" not in msg, msg
    for word in ("Traceback", "Error", "errno", "struct", "numpy", "scipy"):
        assert word not in msg, msg
    assert e.__cause__ is None and (e.__context__ is None or e.__suppress_context__), "an exception is chained"
    return msg


def _refuse(data, name: str, *words: str, decode: bool = True) -> str:
    """prepare_audio and (for bytes, unless decode is False) decode_wav refuse `data` with a sentence holding
    `words`."""
    fns = [lambda: prepare_audio(data, name)]
    if decode and not isinstance(data, np.ndarray):
        fns.append(lambda: decode_wav(data, name))
    msg = ""
    for fn in fns:
        with pytest.raises(MediaError) as info:
            fn()
        msg = _sentence(info.value, name)
        for w in words:
            assert w.lower() in msg.lower(), msg
    return msg


# --- features against transformers ------------------------------------------------------------------------

@pyodide
@pytest.mark.parametrize("clip", list(CLIPS))
async def test_features_match_transformers(clip):
    await load_resampler()
    g = _goldens()
    data = _read(AUDIO / clip)
    wav, rate = decode_wav(data, clip)
    assert rate == CLIPS[clip] and wav.dtype == np.float32 and wav.ndim == 1
    x = resample(wav, rate)
    assert x.dtype == np.float32 and x.size == int(g[f"{clip}/n16k"]) == math.ceil(wav.size * SAMPLE_RATE / rate)
    head = g[f"{clip}/head"]
    assert np.abs(x[: head.size] - head).max() <= RESAMPLE_TOL
    feats = log_mel(x)
    want = g[f"{clip}/features"]
    assert feats.dtype == np.float32 and feats.shape == want.shape == (audio_frames(x.size), 128)
    assert np.abs(feats - want).max() <= FEATURE_TOL
    assert audio_soft_tokens(len(feats)) == int(g[f"{clip}/n_soft"])
    (piece,) = prepare_audio(data, clip)
    assert isinstance(piece, PreparedAudio)
    np.testing.assert_array_equal(piece.features, feats)
    assert piece.n_soft == int(g[f"{clip}/n_soft"]) and piece.seconds == pytest.approx(x.size / SAMPLE_RATE)


@pyodide
def test_features_from_a_float_array_at_16k():
    g = _goldens()
    x = decode_wav(_read(AUDIO / "speech_16k.wav"))[0]
    (piece,) = prepare_audio(x.astype(np.float64))  # the browser's float samples; float64 is taken too
    assert np.abs(piece.features - g["speech_16k.wav/features"]).max() <= FEATURE_TOL


@pyodide
def test_log_mel_frames_and_silence():
    assert audio_frames(0) == audio_frames(160) == 0
    assert (audio_frames(161), audio_frames(320), audio_frames(321), audio_frames(16000)) == (1, 1, 2, 99)
    assert log_mel(np.zeros(160, np.float32)).shape == (0, 128)
    silent = log_mel(np.zeros(1600, np.float32))
    assert silent.shape == (9, 128) and np.all(silent == np.float32(np.log(1e-3)))
    with pytest.raises(ValueError):
        log_mel(np.zeros((2, 1600), np.float32))


@pyodide
def test_mel_filters_are_htk_triangles():
    fb = media._mel_filters()
    assert fb.shape == (257, 128) and fb.min() == 0.0 and fb.max() <= 1.0
    peaks = np.argmax(fb, axis=0)
    assert np.all(np.diff(peaks) >= 0) and peaks[-1] <= 256
    # HTK mel centres: 700 (10^(m / 2595) - 1) for m evenly spaced up to mel(8000)
    centres = 700.0 * (10 ** (np.linspace(0, 2595 * math.log10(1 + 8000 / 700), 130)[1:-1] / 2595) - 1)
    assert np.all(np.abs(peaks * 31.25 - centres) <= 31.25)


# --- resampling -------------------------------------------------------------------------------------------

@pyodide
@pytest.mark.parametrize("rate", [8000, 11025, 22050, 32000, 44100, 48000, 96000, 12345])
async def test_resample_is_scipy_resample_poly(rate):
    await load_resampler()
    from scipy.signal import resample_poly

    rng = np.random.default_rng(rate)
    x = (0.3 * rng.standard_normal(rate // 4 + 7)).astype(np.float32)
    y = resample(x, rate)
    g = math.gcd(rate, SAMPLE_RATE)
    ref = resample_poly(x.astype(np.float64), SAMPLE_RATE // g, rate // g)
    assert y.dtype == np.float32 and y.shape == ref.shape == (math.ceil(x.size * SAMPLE_RATE / rate),)
    assert np.abs(y - ref).max() <= RESAMPLE_TOL


@pyodide
async def test_resample_keeps_a_tone_and_removes_what_16k_cannot_hold():
    await load_resampler()
    rate = 44100
    t = np.arange(rate) / rate
    y = resample(np.sin(2 * np.pi * 1000 * t).astype(np.float32), rate)
    want = np.sin(2 * np.pi * 1000 * np.arange(y.size) / SAMPLE_RATE)
    inner = slice(800, -800)  # away from the filter's edges
    assert np.abs(y[inner] - want[inner]).max() < 2e-3
    high = resample(np.sin(2 * np.pi * 10000 * t).astype(np.float32), rate)  # above 8 kHz: filtered out
    assert np.sqrt(np.mean(high[inner].astype(np.float64) ** 2)) < 1e-2


@pyodide
def test_resample_same_rate_and_edges():
    x = np.linspace(-1, 1, 100).astype(np.float64)
    y = resample(x, SAMPLE_RATE)
    assert y.dtype == np.float32 and np.array_equal(y, x.astype(np.float32)) and y is not x
    assert resample(np.zeros(0, np.float32), 44100).shape == (0,)
    with pytest.raises(ValueError):
        resample(x, 0)
    with pytest.raises(ValueError):
        resample(x.reshape(10, 10), 8000)


# --- WAV formats ------------------------------------------------------------------------------------------

def _source() -> np.ndarray:
    """The recording every format file was written from: int16 / 32768 values."""
    return np.frombuffer(_read(FORMATS / "pcm_s16.wav")[44:], "<i2") / 32768.0


def _g711(mu: bool) -> np.ndarray:
    """The G.711 bytes of a file decoded with the standard library's audioop (removed in Python 3.13)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop")
    raw = _read(FORMATS / ("mulaw.wav" if mu else "alaw.wav"))
    data = raw[raw.index(b"data") + 8:]
    lin = (audioop.ulaw2lin if mu else audioop.alaw2lin)(data, 2)
    return np.frombuffer(lin, "<i2") / 32768.0


# file -> (rate, expected mono signal from the source x, tolerance)
FORMAT_CASES = {
    "pcm_u8.wav": (16000, lambda x: x, 0.5 / 128 + 1e-7),
    "pcm_s16.wav": (16000, lambda x: x, 0.0),
    "pcm_s24.wav": (16000, lambda x: x, 0.0),
    "pcm_s32.wav": (16000, lambda x: x, 0.0),
    "float32.wav": (16000, lambda x: x, 0.0),
    "float64.wav": (16000, lambda x: x, 0.0),
    "mulaw.wav": (16000, lambda x: _g711(True), 0.0),
    "alaw.wav": (16000, lambda x: _g711(False), 0.0),
    "pcm_s16_stereo.wav": (16000, lambda x: (x + np.round(0.5 * x * 32768) / 32768) / 2, 1e-7),
    "ext_pcm_s24_stereo.wav": (16000, lambda x: 0.75 * x, 1e-7),
    "ext_pcm_s20in24.wav": (16000, lambda x: x, 0.0),
    "ext_float32_6ch.wav": (16000, lambda x: x / 3, 1e-7),
    "ext_pcm_s16_44k.wav": (44100, lambda x: x, 0.0),
    "chunks_odd.wav": (16000, lambda x: x, 0.0),
}


@pyodide
@pytest.mark.parametrize("name", list(FORMAT_CASES))
def test_wav_formats(name):
    rate, expect, tol = FORMAT_CASES[name]
    x = _source()
    wav, r = decode_wav(_read(FORMATS / name), name)
    want = expect(x)
    assert r == rate and wav.dtype == np.float32 and wav.shape == want.shape
    assert np.abs(wav - want).max() <= tol
    if name.startswith("mulaw") or name.startswith("alaw"):
        assert np.abs(wav - x).max() < 0.01  # G.711 keeps about 13 bits near zero, 7 at full scale


def test_wav_formats_against_scipy_io():
    """An independent reader, natively: scipy.io.wavfile (PCM, float, extensible; not G.711). It returns 24-bit
    samples in the top bytes of int32, so int32 is scaled by 2**31 for both."""
    from scipy.io import wavfile

    for name in FORMAT_CASES:
        if name in ("mulaw.wav", "alaw.wav"):
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy warns about chunks it does not know
            rate, a = wavfile.read(FORMATS / name)
        if a.dtype == np.uint8:
            f = (a.astype(np.float64) - 128) / 128
        elif a.dtype.kind == "i":
            f = a.astype(np.float64) / {2: 2.0**15, 4: 2.0**31}[a.dtype.itemsize]
        else:
            f = a.astype(np.float64)
        mono = f.mean(axis=1) if f.ndim == 2 else f
        wav, r = decode_wav(_read(FORMATS / name), name)
        assert r == rate, name
        assert np.abs(wav - mono).max() <= 1e-7, name


@pyodide
def test_bytes_like_inputs():
    data = _read(FORMATS / "pcm_s16.wav")
    ref = decode_wav(data)[0]
    for d in (bytearray(data), memoryview(data)):
        np.testing.assert_array_equal(decode_wav(d)[0], ref)
    with pytest.raises(TypeError):
        decode_wav("speech.wav")
    with pytest.raises(TypeError):
        prepare_audio([0.0, 0.1])
    with pytest.raises(TypeError):
        prepare_audio(np.zeros((2, 16000), np.float32))


@pyodide
def test_data_chunk_longer_than_the_file_reads_what_is_there():
    x = _source()
    data = _read(FORMATS / "pcm_s16.wav")
    cut = data[: 44 + 2 * 1000 + 1]  # 1000 samples and one byte of the next
    wav, _ = decode_wav(cut, "cut.wav")
    np.testing.assert_array_equal(wav, x[:1000].astype(np.float32))
    streamed = data[:40] + struct.pack("<I", 0xFFFFFFFF) + data[44:]  # a stream written without a final size
    np.testing.assert_array_equal(decode_wav(streamed)[0], x.astype(np.float32))
    stereo = _read(FORMATS / "pcm_s16_stereo.wav")
    assert decode_wav(stereo[: 44 + 4 * 10 + 3])[0].size == 10  # whole frames only


# --- chunking ---------------------------------------------------------------------------------------------

@pyodide
def test_65_seconds_make_three_pieces():
    g = _goldens()
    rng = np.random.default_rng(65)
    n = 65 * SAMPLE_RATE
    x = (0.1 * np.sin(2 * np.pi * 220 * np.arange(n) / SAMPLE_RATE) + 0.01 * rng.standard_normal(n)).astype(np.float32)
    pieces = prepare_audio(x, "long")
    assert [p.seconds for p in pieces] == [30.0, 30.0, 5.0]
    assert [p.n_soft for p in pieces] == [750, 750, 125]
    assert [p.features.shape for p in pieces] == [(2999, 128), (2999, 128), (499, 128)]
    step = CHUNK_SECONDS * SAMPLE_RATE
    # each piece is its own clip, with its own padding at the start
    np.testing.assert_array_equal(pieces[1].features[:99], log_mel(x[step:step + SAMPLE_RATE]))
    np.testing.assert_array_equal(pieces[2].features, log_mel(x[2 * step:]))
    # the tower's own count (transformers' Gemma4AudioModel, tiny config) for these lengths
    tower = dict(zip(g["tower/samples"].tolist(), g["tower/n_soft"].tolist()))
    assert tower[30 * SAMPLE_RATE] == 750 and tower[5 * SAMPLE_RATE] == 125
    # 16 kHz WAV bytes are cut the same way
    wav_pieces = prepare_audio(_wav(_fmt(), _chunk(b"data", _s16(x[: step + SAMPLE_RATE // 2]))), "long.wav")
    assert [(p.seconds, p.n_soft) for p in wav_pieces] == [(30.0, 750), (0.5, 13)]


@pyodide
def test_soft_tokens_equal_the_tower_output_length():
    g = _goldens()
    assert audio_soft_tokens(99) == 25 and audio_soft_tokens(0) == 0 and audio_soft_tokens(1) == 1
    for n, k in zip(g["tower/samples"].tolist(), g["tower/n_soft"].tolist()):
        assert audio_soft_tokens(audio_frames(n)) == k, n
    assert float(g["tower/trim_diff"]) < 1e-5  # the masked frames transformers adds change nothing


@pyodide
def test_a_last_piece_too_short_for_a_frame_is_dropped(monkeypatch):
    monkeypatch.setattr(media, "CHUNK_SECONDS", 1)
    x = np.full(SAMPLE_RATE + 160, 0.1, np.float32)
    assert [p.n_soft for p in prepare_audio(x)] == [25]
    x = np.full(2 * SAMPLE_RATE + 161, 0.1, np.float32)
    pieces = prepare_audio(x)
    assert [p.n_soft for p in pieces] == [25, 25, 1] and pieces[2].features.shape == (1, 128)


# --- bad input --------------------------------------------------------------------------------------------

@pyodide
def test_empty():
    _refuse(b"", "a.wav", "empty")
    _refuse(_wav(_fmt(), _chunk(b"data", b"")), "a.wav", "no audio")
    _refuse(np.zeros(0, np.float32), "mic", "no audio")
    _refuse(_wav(_fmt(), _chunk(b"data", _s16(np.zeros(100)))), "tiny.wav", "too short", "6 ms", decode=False)
    _refuse(np.zeros(100, np.float32), "mic", "too short")


@pyodide
@pytest.mark.parametrize("keep", [4, 11, 12, 20, 30, 36, 43])
def test_truncated_header(keep):
    data = _read(FORMATS / "pcm_s16.wav")
    msg = _refuse(data[:keep], "clip.wav", "damaged")
    assert "incomplete" in msg or "cut short" in msg or keep == 4


@pyodide
def test_missing_chunks():
    _refuse(_wav(_chunk(b"data", _s16(np.zeros(400)))), "nofmt.wav", "no WAV format chunk")
    _refuse(_wav(_fmt(), _chunk(b"LIST", b"INFO")), "nodata.wav", "no audio data")
    _refuse(_wav(_fmt(bits=16)[:20]), "short.wav", "cut short")


@pyodide
@pytest.mark.parametrize("tag, codec", [
    (0x0002, "ADPCM"), (0x0011, "IMA ADPCM"), (0x0055, "MP3 in WAV"), (0x0050, "MPEG"), (0x0031, "GSM"),
    (0x0161, "Windows Media Audio"), (0x1234, "0x1234"),
])
def test_compressed_codecs_are_named(tag, codec):
    data = _wav(_fmt(tag=tag, bits=4, align=256), _chunk(b"data", b"\x00" * 1024))
    _refuse(data, "voice.wav", codec, "not supported", "PCM")
    ext = _wav(_ext(tag), _chunk(b"data", b"\x00" * 1024))
    _refuse(ext, "voice.wav", codec)


@pyodide
def test_unknown_extensible_guid():
    data = _wav(_ext(1, tail=b"\x11" * 14), _chunk(b"data", b"\x00" * 64))
    _refuse(data, "amb.wav", "sub-format")


@pyodide
def test_zero_channels_or_rate():
    _refuse(_wav(_fmt(channels=0, align=2), _chunk(b"data", b"\x00" * 64)), "z.wav", "0 channels")
    _refuse(_wav(_fmt(rate=0), _chunk(b"data", b"\x00" * 64)), "z.wav", "0 Hz")
    _refuse(_wav(_fmt(rate=200), _chunk(b"data", b"\x00" * 64)), "z.wav", "200 Hz", "1000 Hz")
    _refuse(_wav(_fmt(rate=1_000_000), _chunk(b"data", b"\x00" * 64)), "z.wav", "1000000 Hz")


@pyodide
def test_unsupported_sample_layouts():
    _refuse(_wav(_fmt(bits=40), _chunk(b"data", b"\x00" * 80)), "w.wav", "40-bit integer PCM")
    _refuse(_wav(_fmt(tag=3, bits=16), _chunk(b"data", b"\x00" * 80)), "w.wav", "16-bit floating-point")
    _refuse(_wav(_fmt(channels=2, align=3), _chunk(b"data", b"\x00" * 81)), "w.wav", "block size")
    nan = _wav(_fmt(tag=3, bits=32), _chunk(b"data", np.array([0.0, np.nan, 0.5] * 200, "<f4").tobytes()))
    _refuse(nan, "n.wav", "not numbers")
    _refuse(np.array([0.0, np.inf] * 1000, np.float32), "mic", "not numbers")


@pyodide
def test_too_long_is_refused_from_the_header(monkeypatch):
    seconds = MAX_AUDIO_SECONDS + 1
    rate = 8000
    data = _wav(_fmt(rate=rate, bits=8), _chunk(b"data", b"\x80" * int(seconds * rate)))

    def no_samples(*a, **k):
        raise AssertionError("samples were converted before the length was checked")

    monkeypatch.setattr(media, "_samples", no_samples)
    msg = _refuse(data, "lecture.wav", "too long", "10 min 1 s", "10 min")
    assert "at most 10 min" in msg
    _refuse(np.zeros(int(seconds * SAMPLE_RATE), np.float32), "mic", "too long", "10 min 1 s")
    _refuse(np.zeros(int((MAX_AUDIO_SECONDS + 0.3) * SAMPLE_RATE), np.float32), "mic", "600.3 s", "at most 10 min")


@pyodide
def test_text_renamed_wav():
    _refuse(b"Meeting notes\nTuesday: bring the slides.\n" * 20, "notes.wav", "not audio", "text", "WAV")


@pyodide
@pytest.mark.parametrize("head, what", [
    (b"ID3\x04\x00\x00\x00\x00\x00\x21" + b"\x00" * 200, "MP3"),
    (b"\xff\xfb\x90\x64" + b"\x00" * 200, "MP3"),
    (b"OggS\x00\x02" + b"\x00" * 200, "OGG"),
    (b"\x00\x00\x00\x20ftypM4A \x00\x00\x00\x00" + b"\x00" * 200, "M4A"),
    (b"fLaC\x00\x00\x00\x22" + b"\x00" * 200, "FLAC"),
    (b"\x1a\x45\xdf\xa3" + b"\x00" * 200, "WebM"),
    (b"\xff\xf1\x50\x80" + b"\x00" * 200, "AAC"),
])
def test_compressed_files_point_to_the_browser(head, what):
    _refuse(head, "song.mp3", what, "browser", "command line", "WAV")


@pyodide
def test_other_files():
    _refuse(b"RIFF\x00\x01\x00\x00AVI LIST" + b"\x00" * 100, "movie.wav", "not WAV audio")
    _refuse(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100, "pic.wav", "image")
    _refuse(b"%PDF-1.7\n" + b"\x00\xff" * 100, "doc.wav", "PDF")
    _refuse(b"FORM\x00\x00\x01\x00AIFFCOMM" + b"\x00" * 100, "a.aiff", "AIFF", "convert it to WAV")
    _refuse(bytes(range(7, 256)) * 3, "noise.bin", "not a WAV file")
    _refuse(b"RIFX" + b"\x00" * 100, "mac.wav", "big-endian")
    _refuse(b"RF64" + b"\x00" * 100, "big.wav", "RF64")


@pyodide
def test_damaged_files_raise_only_media_errors():
    """Every cut and a few hundred random byte changes of two small files: a MediaError or a decoded clip."""
    rng = np.random.default_rng(7)
    for name in ("pcm_s16_stereo.wav", "ext_pcm_s24_stereo.wav"):
        data = _read(FORMATS / name)[:400]
        cases = [data[:k] for k in range(0, 120)]
        for _ in range(300):
            b = bytearray(data)
            for i in rng.integers(0, 80, size=rng.integers(1, 4)):
                b[i] = int(rng.integers(0, 256))
            cases.append(bytes(b))
        for d in cases:
            try:
                wav, rate = decode_wav(d, "fuzz.wav")
            except MediaError as e:
                _sentence(e, "fuzz.wav")
            else:
                assert wav.dtype == np.float32 and wav.ndim == 1 and wav.size > 0 and rate > 0
