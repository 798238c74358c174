"""A tiny Kokoro GGUF for fast tests: Kokoro-82M's architecture and time axis with small widths and
deterministic random weights, the real phoneme vocabulary, and four real voicepacks.

    python tools/make_tiny_kokoro.py                      # into the cache: rullama_py.assets.kokoro_tiny_path()
    python tools/make_tiny_kokoro.py --out tiny.gguf --type f32

tools/setup.sh runs it after the real Kokoro is fetched: it reads the setup's config.json (the vocabulary) and
voicepacks, and replaces the file only when its bytes change (the same inputs give the same bytes).

Why: the real model takes 30 to 60 s per second of audio on the software GPUs of the tests (lavapipe natively,
SwiftShader in Chromium). This one (2.1M weights, 4.7 MiB with its voices) keeps every kernel, stride, the
STFT and the 24 kHz output, with ALBERT 64 wide (2 heads, applied twice), hidden_dim 16, decoder 128 + 16, a
generator of 16 -> 8 -> 4 channels and two resblocks per stage: about 1 s per second of audio on lavapipe. The
generator's cost is set by its rows (24,000 a second at the last stage) times taps: the tiled convolution
computes 64 output channels whatever the layer has, so fewer than 16 channels (one thread per value) and fewer
resblock taps are what make it cheap.

Its weights are random but placed so that it behaves like a speech model, which is what the tests (and the
voice trainer's, which climb on its output) need:
- durations of 2 to 6 frames per phoneme: the duration head has two bins always on and four that read one
  direction of the duration LSTM's output with staggered thresholds; that direction is scaled and the
  thresholds centred on a few calibration sentences read by the four voices (`duration_features`, the
  duration path in numpy), so the phonemes spread over 2 .. 6 frames, about 3.5 to 4 on average;
- F0 in a voice's range (about 110 to 220 Hz): the F0 head's bias is F0_HZ and its weights are small, so the
  harmonic source is voiced throughout;
- finite, bounded audio (rms about 0.03, peaks about 0.2 to 0.3): every block normalises its input (AdaIN,
  LayerNorm), Snake's alphas are 1, and conv_post's log-magnitude channels sit near MAG_BIAS;
- the same audio on two devices to f32 rounding (the browser's page against native: 60 dB or more): the
  noise convolutions read the source's STFT magnitudes, not its phases (see tiny_state);
- output that changes with the voice: the style projections are scaled so that two stock voices' rows move
  AdaIN's gamma and beta by tenths, which changes the spectral envelope (the mean log-mel spectra of two voices
  differ 50 to 150 times more than those of one voice with two noise seeds), the pitch and the timing.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from convert_kokoro import kokoro_config, read_voices, write_gguf  # noqa: E402

from rullama_py.models.kokoro_gguf import KokoroConfig, kokoro_tensor_names  # noqa: E402

SEED = 20250
VOICES = ("af_heart", "am_adam", "bf_emma", "bm_george")  # American / British, female / male
WIDTHS = dict(
    albert_hidden_size=64, albert_n_heads=2, albert_n_layers=2, albert_intermediate_size=128,
    albert_embedding_size=32, hidden_dim=16, decoder_hidden=128, asr_res_channels=16, upsample_initial_channel=16,
    # two parallel resblocks per generator stage (v1.0: three, kernels 3, 7, 11): the generator is most of the time
    resblock_kernel_sizes=(3, 5), resblock_dilation_sizes=((1, 3, 5), (1, 3, 5)),
)
STYLE_GAIN = 0.25  # std of the AdaIN style projections' weights: gamma, beta ~ 0.25 |style| (a stock row: |s| ~ 1.8)
DURATION_STYLE_GAIN = 0.1  # the same for the duration encoder's AdaLayerNorms: the voice shifts the timing less
LSTM_STYLE_GAIN, LSTM_INPUT_GAIN = 0.2, 4.0  # the LSTMs fed [x; style]: x's columns up, the style's down
DURATION_ON, DURATION_VARIABLE = 2, 4  # bins always on, bins the LSTM output switches: 2 .. 6 frames
DURATION_SPREAD = 1.5  # rms over phonemes of the variable bins' logit (their thresholds are -1.5 .. 1.5)
DURATION_SHIFT = -0.7  # the typical logit below the middle threshold: about 3.5 frames per phoneme (87 ms)
F0_HZ, F0_SPREAD = 170.0, 30.0  # the F0 head: its bias, and the rms of its weighted sum (Hz)
MAG_BIAS, MAG_GAIN, PHASE_GAIN = -1.8, 0.25, 1.0  # conv_post: log-magnitudes near -1.8; phases spread wide
# Phonemes (espeak-ng IPA as g2p gives them) the duration head is calibrated on, with every voice in VOICES.
CALIBRATION = (
    "ðə kwˈɪk bɹˈaʊn fˈɑːks dʒˈʌmps ˌoʊvɚ ðə lˈeɪzi dˈɑːɡ.",
    "hˈɛloʊ ðˈɛɹ, hˌaʊ ɑːɹ juː tədˈeɪ?",
    "ɪt wʌz ɐ bɹˈaɪt kˈoʊld dˈeɪ ɪn ˈeɪpɹəl, ænd ðə klˈɑːks wɜː stɹˈaɪkɪŋ θˌɜːtˈiːn.",
)


def tiny_config(vocab_config: dict) -> KokoroConfig:
    """Kokoro-82M v1.0's config (the vocabulary and every time-axis setting) with the WIDTHS above."""
    base = KokoroConfig.from_kmodel_config(vocab_config)
    return KokoroConfig(**{**base.__dict__, **WIDTHS})


def _normal(rng, shape, std):
    return (rng.standard_normal(shape) * std).astype(np.float32)


def tiny_state(cfg: KokoroConfig, voices: dict[str, np.ndarray], seed: int = SEED) -> dict[str, np.ndarray]:
    """{KModel key: float32 array} for every tensor of `cfg`'s name table (see the module docstring); `voices`
    are the voicepacks the duration head is calibrated with."""
    rng = np.random.default_rng(seed)
    state = {}
    for key, place in kokoro_tensor_names(cfg).items():  # a fixed order: the same draws every run
        shape = place.shape
        if place.kind == "implied":
            state[key] = np.full(shape, place.fill, np.float32)
        elif key.endswith(".fc.weight"):  # AdaIN / AdaLayerNorm: style -> (gamma, beta)
            gain = DURATION_STYLE_GAIN if key.startswith("predictor.text_encoder.") else STYLE_GAIN
            state[key] = _normal(rng, shape, gain)
        elif key.endswith(".fc.bias"):
            state[key] = np.zeros(shape, np.float32)
        elif ".alpha" in key:  # Snake
            state[key] = np.ones(shape, np.float32)
        elif key.endswith(("LayerNorm.weight", "layer_norm.weight", ".gamma")):
            state[key] = np.ones(shape, np.float32)
        elif "_l0" in key:  # LSTM weights and biases: torch's init, uniform in +-1 / sqrt(H)
            h = shape[0] // 4
            state[key] = (rng.uniform(-1, 1, shape) / np.sqrt(h)).astype(np.float32)
        elif "embeddings" in key or key == "text_encoder.embedding.weight":
            state[key] = _normal(rng, shape, 0.1 if "position" in key else 1.0)
        elif len(shape) == 1 or key.endswith((".bias", ".beta")):
            state[key] = np.zeros(shape, np.float32)
        elif ".ups." in key or key.endswith("pool.weight"):  # ConvTranspose1d [in, out, k]: k / stride taps land
            stride = 2 if key.endswith("pool.weight") else cfg.upsample_rates[int(key.split(".ups.")[1][0])]
            fan_in = (shape[0] if shape[1] > 1 else 1) * shape[2] / stride  # (the pool is depthwise)
            state[key] = _normal(rng, shape, 1.0 / np.sqrt(fan_in))
        else:  # Linear [out, in], Conv1d [out, in, k]
            state[key] = _normal(rng, shape, 1.0 / np.sqrt(np.prod(shape[1:])))

    # the LSTMs fed [x; style]: random LSTMs of this width follow their bias and the voice more than their input;
    # x's columns up and the style's down make the phonemes set the timing and the pitch contour
    D = cfg.hidden_dim
    for key, value in state.items():
        if key.endswith(("weight_ih_l0", "weight_ih_l0_reverse")) and value.shape[1] == D + cfg.style_dim:
            value[:, :D] *= LSTM_INPUT_GAIN
            value[:, D:] *= LSTM_STYLE_GAIN
    # durations: the sum over bins of sigmoid(logit) = DURATION_ON bins always on + DURATION_VARIABLE bins that
    # read one direction u of the duration LSTM's output, with staggered thresholds: a phoneme's duration rises
    # smoothly with its projection on u, from DURATION_ON to DURATION_ON + DURATION_VARIABLE frames. u is scaled
    # and the thresholds centred on the calibration sentences, so the middle duration is the typical one.
    u = rng.standard_normal(D)
    z = np.concatenate([duration_features(state, cfg, _ids(cfg, text), voices[v]) @ u
                        for text in CALIBRATION for v in VOICES])
    scale = DURATION_SPREAD / z.std()
    w = state["predictor.duration_proj.linear_layer.weight"]
    b = np.full(w.shape[0], -12.0, np.float32)
    b[:DURATION_ON] = 12.0
    thresholds = np.linspace(-1.5, 1.5, DURATION_VARIABLE)
    b[DURATION_ON:DURATION_ON + DURATION_VARIABLE] = thresholds - z.mean() * scale + DURATION_SHIFT
    w[:] = 0.0
    u *= scale
    w[DURATION_ON:DURATION_ON + DURATION_VARIABLE] = u
    state["predictor.duration_proj.linear_layer.bias"] = b
    # F0 in Hz around F0_HZ; the N curve around 0
    wf = state["predictor.F0_proj.weight"]
    wf[:] = _normal(rng, wf.shape, F0_SPREAD / np.sqrt(wf.size))
    state["predictor.F0_proj.bias"][:] = F0_HZ
    # the decoder reads F0 (Hz) through a 3-tap conv: scaled to order 1 around 0
    state["decoder.F0_conv.weight"][:] = 1.0 / (3 * F0_HZ)
    state["decoder.F0_conv.bias"][:] = -1.0
    state["decoder.N_conv.weight"][:] = 1.0 / 3
    bins = cfg.n_fft // 2 + 1  # STFT bins: magnitude channels [0, bins), phase channels [bins, 2 bins)
    # the harmonic source: the fundamental strongest
    state["decoder.generator.m_source.l_linear.weight"][:] = 2.0 / np.arange(1, cfg.harmonic_num + 2)
    # the noise convolutions read the source's STFT magnitudes only. A phase is +-pi at random where a bin's
    # imaginary part is a rounding error of either sign (a few bins a sentence), and two devices round
    # differently: read with random weights, such a flip moves the audio far more than f32 rounding does
    # (lavapipe with and without shader-f16/subgroups: 22 dB apart with the phases read, 67 dB without; the
    # real model's trained weights keep the browser and native 79 dB apart)
    for i in range(len(cfg.upsample_rates)):
        state[f"decoder.generator.noise_convs.{i}.weight"][:, bins:] = 0.0
    # the last convolution: log-magnitudes near MAG_BIAS, varying by a fraction; phases spread over the circle
    post_w, post_b = state["decoder.generator.conv_post.weight"], state["decoder.generator.conv_post.bias"]
    post_w[:bins] *= MAG_GAIN
    post_w[bins:] *= PHASE_GAIN
    post_b[:bins] = MAG_BIAS
    return state


# -- the duration path in numpy (PL-BERT, bert_encoder, duration encoder, duration LSTM), for the calibration --

def _ids(cfg: KokoroConfig, phonemes: str) -> list[int]:
    vocab = cfg.vocab
    return [0, *(vocab[c] for c in phonemes if c in vocab), 0]


def _layer_norm(x, weight=None, bias=None, eps=1e-5):
    y = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps)
    return y * (1.0 if weight is None else weight) + (0.0 if bias is None else bias)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _bilstm(state, prefix: str, x: np.ndarray) -> np.ndarray:
    """torch.nn.LSTM(bidirectional=True) over x [T, in]: [T, 2H]."""
    out = []
    for rev in ("", "_reverse"):
        w_ih, w_hh = state[f"{prefix}.weight_ih_l0{rev}"], state[f"{prefix}.weight_hh_l0{rev}"]
        b = state[f"{prefix}.bias_ih_l0{rev}"] + state[f"{prefix}.bias_hh_l0{rev}"]
        H = w_hh.shape[1]
        h, c, hs = np.zeros(H), np.zeros(H), np.zeros((len(x), H))
        for t in (range(len(x) - 1, -1, -1) if rev else range(len(x))):
            z = w_ih @ x[t] + w_hh @ h + b
            c = _sigmoid(z[H:2 * H]) * c + _sigmoid(z[:H]) * np.tanh(z[2 * H:3 * H])
            h = _sigmoid(z[3 * H:]) * np.tanh(c)
            hs[t] = h
        out.append(hs)
    return np.concatenate(out, 1)


def duration_features(state, cfg: KokoroConfig, ids: list[int], voicepack: np.ndarray) -> np.ndarray:
    """The duration LSTM's output [T, D] for phoneme ids (pads included) read with a voicepack (its row for
    len(ids) - 2 phonemes), as KModel computes it (float64; dropout off)."""
    s = voicepack[len(ids) - 3, cfg.style_dim:].astype(np.float64)  # the prosody half
    T, al = len(ids), "bert.encoder.albert_layer_groups.0.albert_layers.0."
    x = (state["bert.embeddings.word_embeddings.weight"][ids] + state["bert.embeddings.position_embeddings.weight"][:T]
         + state["bert.embeddings.token_type_embeddings.weight"][0])
    x = _layer_norm(x, state["bert.embeddings.LayerNorm.weight"], state["bert.embeddings.LayerNorm.bias"], 1e-12)
    mapping = "bert.encoder.embedding_hidden_mapping_in"
    h = x @ state[mapping + ".weight"].T + state[mapping + ".bias"]
    lin = lambda name, v: v @ state[al + name + ".weight"].T + state[al + name + ".bias"]  # noqa: E731
    heads = cfg.albert_n_heads
    hd = cfg.albert_hidden_size // heads
    for _ in range(cfg.albert_n_layers):
        q, k, v = lin("attention.query", h), lin("attention.key", h), lin("attention.value", h)
        att = np.zeros_like(h)
        for i in range(heads):
            cols = slice(i * hd, (i + 1) * hd)
            scores = q[:, cols] @ k[:, cols].T / np.sqrt(hd)
            p = np.exp(scores - scores.max(1, keepdims=True))
            att[:, cols] = (p / p.sum(1, keepdims=True)) @ v[:, cols]
        h = _layer_norm(lin("attention.dense", att) + h, state[al + "attention.LayerNorm.weight"],
                        state[al + "attention.LayerNorm.bias"], 1e-12)
        f = lin("ffn", h)
        f = 0.5 * f * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (f + 0.044715 * f**3)))
        h = _layer_norm(lin("ffn_output", f) + h, state[al + "full_layer_layer_norm.weight"],
                        state[al + "full_layer_layer_norm.bias"], 1e-12)
    d = h @ state["bert_encoder.weight"].T + state["bert_encoder.bias"]
    D, style = cfg.hidden_dim, np.repeat(s[None], T, 0)
    for i in range(cfg.n_layer):
        o = _bilstm(state, f"predictor.text_encoder.lstms.{2 * i}", np.concatenate([d, style], 1))
        fc = f"predictor.text_encoder.lstms.{2 * i + 1}.fc"
        gb = state[fc + ".weight"] @ s + state[fc + ".bias"]
        d = (1.0 + gb[:D]) * _layer_norm(o) + gb[D:]
    return _bilstm(state, "predictor.lstm", np.concatenate([d, style], 1))[1:-1]  # the phonemes, not the pads


def build(out: Path, *, config_path=None, voices_dir=None, ftype: str = "f16") -> bool:
    """Write the tiny Kokoro to `out` unless a file with the same bytes is there. Returns True if written."""
    from rullama_py import assets

    cfg = tiny_config(kokoro_config(config_path))
    packs = read_voices(voices_dir or assets.kokoro_voices_dir())
    missing = [v for v in VOICES if v not in packs]
    if missing:
        raise SystemExit(f"make_tiny_kokoro: the voicepacks {missing} are not in {voices_dir} (run tools/setup.sh)")
    state = tiny_state(cfg, packs)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        made = write_gguf(state, cfg, {v: packs[v] for v in VOICES}, Path(tmp) / out.name, ftype)
        if out.is_file() and _sha256(out) == _sha256(made):
            return False
        os.replace(made, out)
    return True


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv=None) -> int:
    from rullama_py import assets

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=None, help="the GGUF to write (default: the cache's kokoro-tiny.gguf)")
    ap.add_argument("--config", default=None, help="Kokoro-82M's config.json (default: the setup's cached copy)")
    ap.add_argument("--voices", default=None, help="folder of <name>.bin voicepacks (default: the setup's)")
    ap.add_argument("--type", default="f16", choices=("f32", "f16"), help="tensor types (default f16)")
    args = ap.parse_args(argv)
    out = Path(args.out) if args.out else assets.kokoro_tiny_path()
    written = build(out, config_path=args.config, voices_dir=args.voices, ftype=args.type)
    size = out.stat().st_size / 2**20
    print(f"{out}: {'written' if written else 'up to date'} ({size:.2f} MiB, {args.type})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
