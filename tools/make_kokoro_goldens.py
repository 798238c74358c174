"""Golden files for Kokoro-82M parity: the `kokoro` package's KModel (float32, CPU torch) on the real weights,
dequantised from the int8 ONNX by tools/convert_kokoro.py exactly as our GGUF is made.

For each case (phonemes, voice, speed) it records the phoneme ids, the style row, the predicted durations, the
F0 and noise curves (2F rows), the generator's input (decoder output, [2F, 512]) and the waveform, with the
harmonic source's noise either off (noise 0: a deterministic source) or equal to ours for a seed
(`ops.signal.source_noise`, fed to torch by replacing torch.randn_like inside kokoro.istftnet). The random
initial phase that SineGen draws never reaches the output (see ops/signal.py), so it is zeroed.

Needs a scratch environment with torch (CPU), kokoro==0.9.4 (installed with --no-deps; its `misaki` G2P import
is stubbed here since the ids are given), onnx and numpy:

    python tools/make_kokoro_goldens.py --onnx kokoro-v1.0.int8.onnx --voices VOICES_DIR \
        --out tests/fixtures/kokoro/goldens.npz
"""

from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "src"))

# (name, phonemes, voice, speed, noise seed or None for no noise). Phonemes as espeak-ng + Kokoro's
# post-processing give them (the G2P has its own goldens); lengths from a few to ~120 tokens.
CASES = [
    ("hello", "həlˈoʊ wˈɜːld.", "af_heart", 1.0, None),
    ("hello_noise", "həlˈoʊ wˈɜːld.", "af_heart", 1.0, 7),
    ("fox", "ðə kwˈɪk bɹˈaʊn fˈɑːks dʒˈʌmps ˌoʊvɚ ðə lˈeɪzi dˈɑːɡ.", "bm_george", 1.2, None),
    ("story", "wˈʌns əpˌɑːn ɐ tˈaɪm, ðɛɹ wʌz ɐ lˈɪɾəl hˈaʊs ɪnðə wˈʊdz, ænd ɪt hæd ɐ ɹˈɛd dˈɔːɹ!",
     "af_bella", 0.8, 3),
]


def stub_misaki():
    m = types.ModuleType("misaki")
    m.en, m.espeak = types.ModuleType("misaki.en"), types.ModuleType("misaki.espeak")
    m.en.MToken = object
    sys.modules.update({"misaki": m, "misaki.en": m.en, "misaki.espeak": m.espeak})


def build_kmodel(state: dict, config: dict):
    import tempfile

    import torch

    stub_misaki()
    from kokoro.model import KModel

    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "empty.pth"
        torch.save({}, empty)  # KModel's own loader is skipped: the weights are set below
        model = KModel(repo_id="hexgrad/Kokoro-82M", config=config, model=str(empty)).eval()
    params = dict(model.named_parameters())
    loaded = set()
    with torch.no_grad():
        for key, value in state.items():
            w = torch.from_numpy(np.array(value, np.float32))
            stem = key[: -len(".weight")] if key.endswith(".weight") else None
            g_key, v_key = f"{stem}.parametrizations.weight.original0", f"{stem}.parametrizations.weight.original1"
            if f"{stem}.weight_g" in params:  # torch.nn.utils.weight_norm (the older form some modules use)
                g_key, v_key = f"{stem}.weight_g", f"{stem}.weight_v"
            if stem is not None and g_key in params:
                # weight norm: W = g v / ||v|| with v = W and g = ||W|| (rows of zeros keep v finite, g = 0)
                norm = torch.linalg.vector_norm(w.reshape(w.shape[0], -1), dim=1)
                v = w.clone()
                v[norm == 0] = 1.0
                params[v_key].copy_(v)
                params[g_key].copy_(norm.reshape(params[g_key].shape))
                loaded.update((g_key, v_key))
            elif key in params:
                params[key].copy_(w)
                loaded.add(key)
    untouched = [k for k in params if k not in loaded and not k.endswith(("norm.weight", "norm.bias"))]
    if untouched:
        raise SystemExit(f"KModel parameters not set from the state dict: {untouched[:8]}")
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--onnx", required=True)
    ap.add_argument("--voices", required=True, help="folder of kokoro-js voices/*.bin")
    ap.add_argument("--out", default=str(ROOT / "tests/fixtures/kokoro/goldens.npz"))
    args = ap.parse_args()

    import torch

    import convert_kokoro
    from make_tiny_gemma4 import hide_torchvision

    hide_torchvision()  # a torchvision built for another torch breaks transformers' imports (ALBERT needs none)
    from rullama_py.ops.signal import source_noise

    torch.set_num_threads(2)
    state = convert_kokoro.state_dict_from_onnx(args.onnx)
    config = convert_kokoro.kokoro_config()
    model = build_kmodel(state, config)

    import kokoro.istftnet as ist

    class Noise:
        """torch inside kokoro.istftnet, with rand -> 0 and randn_like -> our noise (or 0)."""

        seed = None

        def __getattr__(self, name):
            return getattr(torch, name)

        @staticmethod
        def rand(*a, **k):
            return torch.zeros(*a, **k)

        def randn_like(self, x, **k):
            if self.seed is None or x.dim() != 3 or x.shape[-1] != 9:
                return torch.zeros_like(x)  # SineGen's noise, or the unused noise branch of SourceModuleHnNSF
            return torch.from_numpy(source_noise(self.seed, x.shape[1], 9).astype(np.float32))[None]

    noise = Noise()
    ist.torch = noise
    taps = {}
    model.decoder.generator.register_forward_pre_hook(lambda m, a: taps.update(gen_x=a[0], gen_f0=a[2]))
    model.predictor.register_forward_hook(lambda *a: None)
    out = {"cases": np.array(json.dumps([c[:4] + (c[4],) for c in CASES]))}
    vocab = config["vocab"]
    for name, phonemes, voice, speed, seed in CASES:
        ids = [vocab[p] for p in phonemes if p in vocab]
        pack = np.fromfile(Path(args.voices) / f"{voice}.bin", dtype="<f4").reshape(510, 256)
        style = pack[len(ids) - 1]
        noise.seed = seed
        taps.clear()
        f0n = {}
        h = model.predictor.F0_proj.register_forward_hook(lambda m, a, o: f0n.update(f0=o))
        h2 = model.predictor.N_proj.register_forward_hook(lambda m, a, o: f0n.update(n=o))
        with torch.no_grad():
            audio, dur = model.forward_with_tokens(torch.LongTensor([[0, *ids, 0]]), torch.from_numpy(style)[None], speed)
        h.remove()
        h2.remove()
        p = f"{name}."
        out[p + "ids"] = np.array([0, *ids, 0], np.uint32)
        out[p + "style"] = style.astype(np.float32)
        out[p + "durations"] = dur.numpy().astype(np.int64).reshape(-1)
        out[p + "f0"] = f0n["f0"].numpy().reshape(-1).astype(np.float32)
        out[p + "n"] = f0n["n"].numpy().reshape(-1).astype(np.float32)
        out[p + "gen_x"] = taps["gen_x"][0].numpy().T.astype(np.float32)  # time-major [2F, 512]
        out[p + "audio"] = audio.numpy().reshape(-1).astype(np.float32)
        print(f"{name}: {len(ids)} phonemes, {int(dur.sum())} frames, {audio.numel() / 24000:.2f} s, voice {voice}, "
              f"speed {speed}, noise seed {seed}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **out)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
