"""Build the audio fixtures (tests/fixtures/audio/) and their Gemma 4 log-mel goldens
(tests/goldens/gemma4_audio.npz) from transformers' own `Gemma4AudioFeatureExtractor`.

The goldens check features, not decoding or resampling: each clip is decoded and resampled to 16 kHz by
rullama_py.media itself (decode_wav, then resample: scipy's resample_poly), and that 16 kHz signal is what
transformers' feature extractor is given (as float32, in a list: a bare 1-D array makes it fail). The tests
decode and resample again, natively and in Pyodide, and compare with transformers' unmasked frames.

Needs numpy, scipy, transformers and torch, which the project's test environment does not have; run it from a
scratch venv outside the repo (`wavs` also needs Debian's espeak-ng on PATH):

    python -m venv ../scratch/hf-venv
    ../scratch/hf-venv/bin/pip install torch==2.13.0 transformers==5.23.0 scipy
    ../scratch/hf-venv/bin/python tools/make_audio_goldens.py wavs   # (re)write tests/fixtures/audio/
    ../scratch/hf-venv/bin/python tools/make_audio_goldens.py        # write the goldens

The goldens store, for each clip in CLIPS:
  <clip>/features   float32 [frames, 128]  transformers' input_features where input_features_mask is True
  <clip>/n_frames   int32  all frames transformers made (masked ones included: its padding to 128 samples)
  <clip>/n_soft     int32  Gemma4Processor's rule (replace_audio_token: the mask halved twice, summed)
  <clip>/n16k       int32  samples after resampling to 16 kHz
  <clip>/head       float32 [HEAD]  the first HEAD resampled samples (resampling checked in every runtime)
  tower/samples     int32 [k]  16 kHz lengths given to a tiny random Gemma4AudioModel (transformers)
  tower/n_soft      int32 [k]  its output attention_mask.sum() for each
  tower/trim_diff   float64  max |tower output| difference at the valid positions between transformers'
                    padded, masked features and rullama's unmasked frames alone (the tower masks padded
                    frames before each convolution and attends only to the past, so this is ~0)
  info              str  JSON: versions, command
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AUDIO = os.path.join(ROOT, "tests", "fixtures", "audio")
FORMATS = os.path.join(AUDIO, "formats")
GOLDENS = os.path.join(ROOT, "tests", "goldens", "gemma4_audio.npz")
HEAD = 2000

# clip -> (espeak-ng voice, text, rate of the file, seconds kept); None voice: a synthetic signal.
SPEECH = {
    "speech_22k.wav": ("en-us", "The quick brown fox jumps over the lazy dog.", 22050, 2.5),
    "speech_48k.wav": ("en-gb+f3", "Please turn on the kitchen lights.", 48000, 1.6),
    "speech_8k.wav": ("en-us+m3", "What time is it in Tokyo right now?", 8000, 2.0),
    "speech_16k.wav": ("en-gb-scotland", "Seven, eight, nine, ten.", 16000, 1.6),
}
SYNTH = {"music_44k.wav": (44100, 1.5), "noise_48k.wav": (48000, 1.0)}
CLIPS = tuple(SPEECH) + tuple(SYNTH)


def _media():
    """rullama_py.media from the working tree (only numpy is needed to import it)."""
    spec = importlib.util.spec_from_file_location("rullama_media", os.path.join(ROOT, "src", "rullama_py", "media.py"))
    if spec.name not in sys.modules:
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod  # dataclasses look their module up there
        spec.loader.exec_module(mod)
    return sys.modules[spec.name]


# --- WAV writing (numpy + struct) ----------------------------------------------------------------------------

GUID_TAIL = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"


def chunk(cid: bytes, body: bytes) -> bytes:
    return cid + struct.pack("<I", len(body)) + body + (b"\x00" if len(body) & 1 else b"")


def fmt_chunk(tag: int, channels: int, rate: int, bits: int, *, width: int | None = None,
              extensible: bool = False, valid_bits: int | None = None, mask: int = 0) -> bytes:
    width = width or (bits + 7) // 8
    align = channels * width
    if not extensible:
        body = struct.pack("<HHIIHH", tag, channels, rate, rate * align, align, bits)
        if tag != 1:
            body += struct.pack("<H", 0)  # cbSize, as non-PCM formats carry it
        return chunk(b"fmt ", body)
    body = struct.pack("<HHIIHH", 0xFFFE, channels, rate, rate * align, align, 8 * width)
    body += struct.pack("<HHI", 22, valid_bits or bits, mask) + struct.pack("<H", tag) + GUID_TAIL
    return chunk(b"fmt ", body)


def riff(*chunks: bytes) -> bytes:
    body = b"WAVE" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def pcm_bytes(x: np.ndarray, width: int) -> bytes:
    """float [n] or [n, c] in [-1, 1) -> little-endian integer PCM of `width` bytes (8-bit unsigned)."""
    if width == 1:
        return (np.clip(np.round(x * 128) + 128, 0, 255)).astype(np.uint8).tobytes()
    full = 1 << (8 * width - 1)
    v = np.clip(np.round(x * full), -full, full - 1).astype(np.int64)
    if width == 3:
        u = (v & 0xFFFFFF).astype(np.uint32).reshape(-1)
        return np.stack([u & 0xFF, (u >> 8) & 0xFF, (u >> 16) & 0xFF], axis=1).astype(np.uint8).tobytes()
    return v.astype({2: "<i2", 4: "<i4"}[width]).tobytes()


def g711(x: np.ndarray, mu: bool) -> bytes:
    """16-bit-scaled float -> G.711 bytes, by nearest decoded value (the inverse of the decoding table)."""
    b = np.arange(256)
    if mu:
        u = ~b & 0xFF
        t = (((u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4)
        table = np.where(u & 0x80, 0x84 - t, t - 0x84)
    else:
        a = b ^ 0x55
        seg = (a & 0x70) >> 4
        t = (a & 0x0F) << 4
        t = np.where(seg == 0, t + 8, np.where(seg == 1, t + 0x108, (t + 0x108) << np.maximum(seg - 1, 0)))
        table = np.where(a & 0x80, t, -t)
    v = np.round(x.reshape(-1) * 32768)
    order = np.argsort(table, kind="stable")
    sorted_t = table[order]
    i = np.clip(np.searchsorted(sorted_t, v), 1, 255)
    nearer = np.where(np.abs(sorted_t[i - 1] - v) <= np.abs(sorted_t[i] - v), i - 1, i)
    return order[nearer].astype(np.uint8).tobytes()


def espeak(voice: str, text: str) -> tuple[np.ndarray, int]:
    exe = shutil.which("espeak-ng")
    if exe is None:
        sys.exit("espeak-ng is not installed (Debian: apt-get install espeak-ng)")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "out.wav")
        subprocess.run([exe, "-v", voice, "-s", "165", "-w", path, text], check=True)
        data = open(path, "rb").read()
    wav, rate = _media().decode_wav(data)
    return wav.astype(np.float64), rate


def make_wavs() -> None:
    from scipy.signal import resample_poly

    os.makedirs(FORMATS, exist_ok=True)
    sixteen = None
    for name, (voice, text, rate, seconds) in SPEECH.items():
        x, r = espeak(voice, text)
        if rate != r:
            g = np.gcd(rate, r)
            x = resample_poly(x, rate // g, r // g)
        x = x[: int(seconds * rate)]
        x = 0.9 * x / max(1e-9, np.abs(x).max())  # the same loudness for each
        open(os.path.join(AUDIO, name), "wb").write(riff(fmt_chunk(1, 1, rate, 16), chunk(b"data", pcm_bytes(x, 2))))
        if rate == 16000:
            sixteen = np.frombuffer(pcm_bytes(x, 2), "<i2") / 32768.0
    rng = np.random.default_rng(20261202)
    rate, seconds = SYNTH["music_44k.wav"]
    t = np.arange(int(rate * seconds)) / rate
    music = np.zeros_like(t)
    for i, f0 in enumerate((261.63, 329.63, 392.0, 523.25, 392.0, 329.63)):  # C E G C G E, plucked
        t0 = i * 0.25
        on = t >= t0
        env = np.where(on, np.exp(-(t - t0) * 6.0), 0.0)
        for h in range(1, 7):
            music += env * (0.5**h) * np.sin(2 * np.pi * f0 * h * (t - t0) + rng.uniform(0, 2 * np.pi))
    music += 0.3 * np.sin(2 * np.pi * 65.41 * t) * np.minimum(1.0, t * 8)  # a held bass C
    music = 0.8 * music / np.abs(music).max()
    open(os.path.join(AUDIO, "music_44k.wav"), "wb").write(
        riff(fmt_chunk(1, 1, rate, 16), chunk(b"data", pcm_bytes(music, 2))))
    rate, seconds = SYNTH["noise_48k.wav"]
    t = np.arange(int(rate * seconds)) / rate
    pink = np.cumsum(rng.standard_normal(t.size)) * 0.002
    pink -= np.convolve(pink, np.ones(480) / 480, mode="same")  # a drifting, reddish noise
    chirp = 0.3 * np.sin(2 * np.pi * (100 * t + 0.5 * 11000 * t**2))  # 100 Hz to 11.1 kHz (above 8 kHz too)
    noise = pink + chirp + 0.05 * rng.standard_normal(t.size)
    noise[: rate // 10] = 0.0  # 0.1 s of digital silence: log(0 + 0.001) frames
    noise = 0.9 * noise / np.abs(noise).max()
    open(os.path.join(AUDIO, "noise_48k.wav"), "wb").write(
        riff(fmt_chunk(1, 1, rate, 16), chunk(b"data", pcm_bytes(noise, 2))))
    make_formats(sixteen[int(0.45 * 16000):int(0.60 * 16000)])


def make_formats(x: np.ndarray) -> None:
    """Every WAV layout decode_wav reads, from one 16-bit recording (x holds int16 / 32768 values, so every
    container of 16 bits or more holds it exactly)."""
    r = 16000
    stereo = np.stack([x, 0.5 * x], axis=1)  # mono average: 0.75 x
    six = np.stack([x, -x, 0.5 * x, 0.25 * x, x, 0.25 * x], axis=1)  # mono average: x / 3 (5.1 order)
    f = {
        "pcm_u8.wav": riff(fmt_chunk(1, 1, r, 8), chunk(b"data", pcm_bytes(x, 1))),
        "pcm_s16.wav": riff(fmt_chunk(1, 1, r, 16), chunk(b"data", pcm_bytes(x, 2))),
        "pcm_s24.wav": riff(fmt_chunk(1, 1, r, 24), chunk(b"data", pcm_bytes(x, 3))),
        "pcm_s32.wav": riff(fmt_chunk(1, 1, r, 32), chunk(b"data", pcm_bytes(x, 4))),
        "float32.wav": riff(fmt_chunk(3, 1, r, 32), chunk(b"fact", struct.pack("<I", x.size)),
                            chunk(b"data", x.astype("<f4").tobytes())),
        "float64.wav": riff(fmt_chunk(3, 1, r, 64), chunk(b"fact", struct.pack("<I", x.size)),
                            chunk(b"data", x.astype("<f8").tobytes())),
        "mulaw.wav": riff(fmt_chunk(7, 1, r, 8), chunk(b"fact", struct.pack("<I", x.size)), chunk(b"data", g711(x, True))),
        "alaw.wav": riff(fmt_chunk(6, 1, r, 8), chunk(b"fact", struct.pack("<I", x.size)), chunk(b"data", g711(x, False))),
        "pcm_s16_stereo.wav": riff(fmt_chunk(1, 2, r, 16), chunk(b"data", pcm_bytes(stereo, 2))),
        "ext_pcm_s24_stereo.wav": riff(fmt_chunk(1, 2, r, 24, extensible=True, mask=0x3),
                                       chunk(b"data", pcm_bytes(stereo, 3))),
        "ext_pcm_s20in24.wav": riff(fmt_chunk(1, 1, r, 24, extensible=True, valid_bits=20, mask=0x4),
                                    chunk(b"data", pcm_bytes(x, 3))),
        "ext_float32_6ch.wav": riff(fmt_chunk(3, 6, r, 32, extensible=True, mask=0x3F),
                                    chunk(b"data", six.astype("<f4").tobytes())),
        "ext_pcm_s16_44k.wav": riff(fmt_chunk(1, 1, 44100, 16, extensible=True, mask=0x4),
                                    chunk(b"data", pcm_bytes(x, 2))),  # the same samples, said to be 44.1 kHz
        # Odd-sized chunks with their pad byte, a LIST before fmt, junk between, a chunk after the data.
        "chunks_odd.wav": riff(chunk(b"LIST", b"INFOINAM" + struct.pack("<I", 5) + b"test\x00"),
                               fmt_chunk(1, 1, r, 16), chunk(b"junk", b"odd"), chunk(b"data", pcm_bytes(x, 2)),
                               chunk(b"id3 ", b"abcde")),
    }
    for name, data in f.items():
        open(os.path.join(FORMATS, name), "wb").write(data)


# --- goldens ------------------------------------------------------------------------------------------------

def tiny_tower():
    import torch
    from transformers import Gemma4AudioConfig
    from transformers.models.gemma4.modeling_gemma4 import Gemma4AudioModel

    torch.manual_seed(0)
    cfg = Gemma4AudioConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            subsampling_conv_channels=[128, 4], output_proj_dims=48)
    return Gemma4AudioModel(cfg).eval()


def main() -> None:
    # transformers imports torchvision whenever it is installed, and a torchvision built for another torch fails
    # inside that import ("operator torchvision::nms does not exist"); nothing here needs it.
    sys.modules.setdefault("torchvision", None)
    import scipy
    import torch
    import transformers
    from transformers.models.gemma4.feature_extraction_gemma4 import Gemma4AudioFeatureExtractor
    from transformers.models.gemma4.processing_gemma4 import Gemma4Processor

    media = _media()
    fe = Gemma4AudioFeatureExtractor()
    out: dict[str, np.ndarray] = {}

    def extract(x: np.ndarray):
        o = fe([x], return_tensors="np")
        return o["input_features"][0], o["input_features_mask"][0]

    class _Proc:  # Gemma4Processor.replace_audio_token needs only self.boa/eoa/audio tokens
        boa_token, eoa_token, audio_token = "<", ">", "a"

    for clip in CLIPS:
        wav, rate = media.decode_wav(open(os.path.join(AUDIO, clip), "rb").read(), clip)
        x = media.resample(wav, rate)
        feats, mask = extract(x)
        n = int(mask.sum())
        assert mask[:n].all() and not mask[n:].any()
        text = Gemma4Processor.replace_audio_token(_Proc(), {"input_features_mask": [mask]}, 0)
        mine = media.log_mel(x)
        print(f"{clip}: {rate} Hz, {x.size} samples at 16 kHz, {n} of {len(mask)} frames, "
              f"n_soft {text.count('a')}, ours max |diff| {np.abs(mine - feats[mask]).max():.3g}")
        out[f"{clip}/features"] = feats[mask].astype(np.float32)
        out[f"{clip}/n_frames"] = np.int32(len(mask))
        out[f"{clip}/n_soft"] = np.int32(text.count("a"))
        out[f"{clip}/n16k"] = np.int32(x.size)
        out[f"{clip}/head"] = x[:HEAD].astype(np.float32)

    # The soft-token count the tower gives, for the lengths the chunking test uses and odd ones.
    tower = tiny_tower()
    rng = np.random.default_rng(1)
    lengths = [480000, 80000, 16000, 161, 320, 321, 481, 16000 + 128 * 3 + 5, 47768, 123457]
    counts, trim = [], 0.0
    for n in lengths:
        x = (0.1 * rng.standard_normal(n)).astype(np.float32)
        feats, mask = extract(x)
        with torch.no_grad():
            o = tower(torch.from_numpy(feats[None]), torch.from_numpy(mask[None]), return_dict=True)
            k = int(o.attention_mask.sum())
            mine = media.log_mel(x)
            o2 = tower(torch.from_numpy(mine[None]), torch.ones(1, len(mine), dtype=torch.bool), return_dict=True)
        assert int(o2.attention_mask.sum()) == k == media.audio_soft_tokens(len(mine)), (n, k)
        d = (o.last_hidden_state[0, :k] - o2.last_hidden_state[0, :k]).abs().max().item() if k else 0.0
        trim = max(trim, d)
        counts.append(k)
        print(f"tower: {n} samples, {len(mine)} frames -> {k} soft tokens; trimmed vs padded max |diff| {d:.3g}")
    out["tower/samples"] = np.array(lengths, np.int32)
    out["tower/n_soft"] = np.array(counts, np.int32)
    out["tower/trim_diff"] = np.float64(trim)
    out["info"] = np.array(json.dumps({
        "transformers": transformers.__version__, "torch": torch.__version__, "numpy": np.__version__,
        "scipy": scipy.__version__, "extractor": "Gemma4AudioFeatureExtractor()", "tool": "tools/make_audio_goldens.py",
    }))
    np.savez_compressed(GOLDENS, **out)
    print(f"wrote {os.path.relpath(GOLDENS, ROOT)}: {os.path.getsize(GOLDENS)} bytes")


if __name__ == "__main__":
    if sys.argv[1:] == ["wavs"]:
        make_wavs()
    elif sys.argv[1:]:
        sys.exit(__doc__)
    main()
