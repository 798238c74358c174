"""Our Kokoro against the shipped model itself: onnxruntime on the int8 ONNX (the PyPI kokoro-onnx export the
setup installs), log-mel correlation over several sentences and voices.

    python tools/compare_kokoro_onnx.py [--kokoro FILE.gguf] [--onnx kokoro-v1.0.int8.onnx] [--json out.json]
        [--out DIR]        # also write both WAVs per case, to listen to

Needs `onnxruntime` (not a project dependency: `pip install onnxruntime` in the environment that runs this).
Each case: the sentence's phonemes (g2p.py, as `rullama say` makes them), the voice's row for that length, speed
1; the ONNX graph's inputs are (tokens, style, speed) and its output the 24 kHz waveform. Ours: Speaker with the
same phonemes and style. The two differ by construction: the ONNX holds int8 weights (ours are their F16
dequantisation) and its harmonic source draws its own random noise and initial phases, so the waveforms are not
sample-comparable; the log-mel spectrograms (80 bands, 1024/256 frames, ln(power + 1e-5)) are. Durations can
differ by a frame where a rounded sum sits near .5 (int8 against F16 weights), which shifts what follows, so
each clip's length is reported for both. Reported: the correlation frame by frame over the shorter length, and
after dynamic time warping (the timing taken out). The issue's bar: correlation >= 0.99.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from rullama_py import assets, g2p  # noqa: E402
from rullama_py.media import encode_wav  # noqa: E402
from rullama_py.ops.mel import mel_filterbank  # noqa: E402
from rullama_py.speaker import Speaker  # noqa: E402

CASES = [
    ("af_heart", "Hello there, how are you today?"),
    ("bm_george", "The quick brown fox jumps over the lazy dog."),
    ("af_bella", "On March 3rd, 2024, the museum opened at 9:30 a.m. and charged $12.50 for a ticket."),
    ("am_michael", "Why is the sky blue? Because air scatters short wavelengths of sunlight more than long ones."),
    ("bf_emma", "She said, \"I'll be there in five minutes,\" but she arrived an hour later."),
]


def log_mel(x: np.ndarray) -> np.ndarray:
    fb = mel_filterbank()
    w = np.hanning(1025)[:-1]
    fr = np.lib.stride_tricks.sliding_window_view(np.pad(np.asarray(x, np.float64), 512), 1024)[::256] * w
    return np.log(np.abs(np.fft.rfft(fr, axis=-1)) ** 2 @ fb.T + 1e-5)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Frame by frame over the shorter length: a duration that differs by one frame shifts everything after it."""
    n = min(len(a), len(b))
    la, lb = log_mel(a[:n]), log_mel(b[:n])
    return float(np.corrcoef(la.reshape(-1), lb.reshape(-1))[0, 1])


def aligned_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """After dynamic time warping of the two log-mel spectrograms (Euclidean frame distance, steps (1,0), (0,1),
    (1,1)): the comparison with the timing taken out, since the int8 model's rounded durations can differ from the
    F16 model's by a frame here and there."""
    la, lb = log_mel(a), log_mel(b)
    cost = np.sqrt(((la[:, None, :] - lb[None, :, :]) ** 2).sum(-1))
    n, m = cost.shape
    acc = np.full((n + 1, m + 1), np.inf)
    acc[0, 0] = 0.0
    for i in range(1, n + 1):
        row, prev = acc[i], acc[i - 1]
        for j in range(1, m + 1):
            row[j] = cost[i - 1, j - 1] + min(prev[j], row[j - 1], prev[j - 1])
    i, j, path = n, m, []
    while i > 0 and j > 0:
        path.append((i - 1, j - 1))
        k = int(np.argmin((acc[i - 1, j - 1], acc[i - 1, j], acc[i, j - 1])))
        i, j = (i - 1, j - 1) if k == 0 else (i - 1, j) if k == 1 else (i, j - 1)
    ia, ib = np.array(path).T
    return float(np.corrcoef(la[ia].reshape(-1), lb[ib].reshape(-1))[0, 1])


async def compare(args) -> dict:
    import onnxruntime as ort

    onnx_path = args.onnx or assets.cache_dir() / "kokoro-v1.0.int8.onnx"
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    session = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    speaker = await Speaker.load(args.kokoro)
    out = {"kokoro": Path(str(args.kokoro or assets.kokoro_model_path())).name, "onnx": Path(str(onnx_path)).name,
           "cases": []}
    for voice, text in CASES:
        ps = await g2p.phonemize(text, g2p.lang_for_voice(voice))
        ids = g2p.tokenize(ps, speaker.vocab)
        style = speaker.style_row(speaker.voice(voice), len(ids))
        feed = dict(zip(names, (np.array([[0, *ids, 0]], np.int64), style[None].astype(np.float32),
                                np.array([1.0], np.float32))))
        want = session.run(None, feed)[0].reshape(-1)
        u = await speaker.synthesize_phonemes(ps, voice, seed=0)
        got = u.audio
        c = correlation(got, want)
        ca = aligned_correlation(got, want)
        case = dict(voice=voice, text=text, phonemes=len(ids), ours_s=round(len(got) / 24000, 3),
                    onnx_s=round(len(want) / 24000, 3), logmel_correlation=round(c, 4),
                    logmel_correlation_aligned=round(ca, 4))
        out["cases"].append(case)
        print(json.dumps(case), flush=True)
        if args.out:
            d = Path(args.out)
            d.mkdir(parents=True, exist_ok=True)
            (d / f"{voice}-ours.wav").write_bytes(encode_wav(got, 24000))
            (d / f"{voice}-onnx.wav").write_bytes(encode_wav(want, 24000))
    out["min_correlation"] = min(c["logmel_correlation"] for c in out["cases"])
    out["min_correlation_aligned"] = min(c["logmel_correlation_aligned"] for c in out["cases"])
    speaker.release()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kokoro", default=None, help="our Kokoro GGUF (default: the setup's F16 file)")
    ap.add_argument("--onnx", default=None, help="the int8 ONNX (default: the setup's copy)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    ap.add_argument("--out", default=None, help="a folder for the WAVs")
    args = ap.parse_args()
    out = asyncio.run(compare(args))
    print(f"minimum log-mel correlation: {out['min_correlation']} frame by frame, "
          f"{out['min_correlation_aligned']} after time warping")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
