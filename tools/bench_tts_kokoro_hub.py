"""Lay out the real Kokoro-82M int8 ONNX as the Hugging Face repo that kokoro-js 1.2.1 asks transformers.js for
(onnx-community/Kokoro-82M-v1.0-ONNX), so that tools/bench_tts_browser.mjs can serve it from localhost with
remote models disabled. Nothing is fetched from a model hub.

    python tools/bench_tts_kokoro_hub.py --onnx kokoro-v1.0.int8.onnx --kokoro-config config.json --out DIR

writes, under DIR/onnx-community/Kokoro-82M-v1.0-ONNX/:
- onnx/model_quantized.onnx: the file kokoro-js reads for dtype "q8". A copy of --onnx (the kokoro-onnx export,
  sha256 6e742170...06cb) in which only two value names change, because transformers.js feeds the graph by the
  names kokoro-js uses and kokoro-js reads the output by name: graph input `tokens` -> `input_ids` and graph
  output `audio` -> `waveform`, in the graph's input/output lists and in every node input/output that names them.
  Every initializer (the weights), node, attribute and the other inputs (`style` [1, 256] f32, `speed` [1] f32)
  are untouched; the script checks that the initializers serialise to the same bytes as in the source.
- config.json: Kokoro's config (from --kokoro-config, e.g. the config.json inside PyPI kokoro-onnx) with
  `model_type: style_text_to_speech_2`, which is how transformers.js picks StyleTextToSpeech2Model.
- tokenizer.json, tokenizer_config.json: Kokoro's phoneme vocabulary as a tokenizer that transformers.js
  3.x runs (it has no WordLevel model, so WordPiece with an empty continuing-subword prefix over single
  characters): a Replace normalizer deletes every character outside the vocabulary (Kokoro's KModel drops
  them too), a Split pre-tokenizer on the empty regex cuts the phonemes into characters, and a
  TemplateProcessing post-processor puts id 0 (`$`) at both ends, so ids = [0, vocab[c] for c in phonemes, 0]
  exactly as KModel builds them; model_max_length 512 (510 phonemes + the two pads; past that transformers.js
  cuts the end pad too, as it would with the hub's tokenizer: kokoro-js is given sentences, far shorter).
- bench_tts_hub.json: what was done (source sha256, renames, the copy's sha256), read back to skip a rebuild.

Needs the `onnx` package (tools/bench_tts_browser.mjs makes a scratch venv with it under .bench/).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path

REPO_ID = "onnx-community/Kokoro-82M-v1.0-ONNX"
MODEL_FILE = "onnx/model_quantized.onnx"  # transformers.js: dtype "q8" -> suffix "_quantized"
KOKORO_ONNX_SHA256 = "6e742170d309016e5891a994e1ce1559c702a2ccd0075e67ef7157974f6406cb"
RENAMES = {"tokens": "input_ids", "audio": "waveform"}  # kokoro-onnx's names -> kokoro-js's names
PAD = "$"  # Kokoro's id 0: the pad put before and after the phonemes
MAX_LENGTH = 512
LAYOUT_VERSION = 2  # bump when the files written here change, so that an old layout is rebuilt


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(4 << 20):
            h.update(block)
    return h.hexdigest()


def _rename_in_graph(graph, renames: dict[str, str]) -> int:
    """Rename values in `graph` and its subgraphs (none in this export, but a rename must not miss one)."""
    import onnx

    count = 0
    for vi in (*graph.input, *graph.output, *graph.value_info):
        if vi.name in renames:
            vi.name = renames[vi.name]
            count += 1
    for node in graph.node:
        for names in (node.input, node.output):
            for i, name in enumerate(names):
                if name in renames:
                    names[i] = renames[name]
                    count += 1
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                count += _rename_in_graph(attr.g, renames)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                count += sum(_rename_in_graph(g, renames) for g in attr.graphs)
    return count


def renamed_model(src: Path, dst: Path) -> dict:
    """Write `src` to `dst` with RENAMES applied; return a record of the change."""
    import onnx

    model = onnx.load(str(src))
    g = model.graph
    before = hashlib.sha256(b"".join(t.SerializeToString() for t in g.initializer)).hexdigest()
    inputs, outputs = [i.name for i in g.input], [o.name for o in g.output]
    if inputs != ["tokens", "style", "speed"] or outputs != ["audio"]:
        raise SystemExit(f"{src}: expected inputs tokens/style/speed and output audio, found {inputs} -> {outputs}")
    taken = {n for node in g.node for n in (*node.input, *node.output)} | {t.name for t in g.initializer}
    clash = sorted(set(RENAMES.values()) & taken)
    if clash:
        raise SystemExit(f"{src}: the graph already uses {clash}; renaming would merge values")
    count = _rename_in_graph(g, RENAMES)
    after = hashlib.sha256(b"".join(t.SerializeToString() for t in g.initializer)).hexdigest()
    assert after == before, "initializers changed"
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    onnx.save(model, str(tmp))
    os.replace(tmp, dst)
    return {"renamed": RENAMES, "references_renamed": count, "inputs": [i.name for i in g.input],
            "outputs": [o.name for o in g.output], "initializers": len(g.initializer),
            "initializers_sha256": after}


def tokenizer_files(vocab: dict[str, int]) -> tuple[dict, dict]:
    """tokenizer.json and tokenizer_config.json for transformers.js over Kokoro's character vocabulary."""
    if vocab.get(PAD) is not None or 0 in vocab.values():
        raise SystemExit("Kokoro's vocab was expected to leave id 0 to the pad")
    if any(len(c) != 1 for c in vocab):
        raise SystemExit("Kokoro's vocab was expected to hold single characters")
    full = {PAD: 0, **vocab}
    # \uXXXX for every character: valid inside a JS 'u'-flag class (where needless escapes are errors) and in
    # the tokenizers library's regex alike, whatever the character (quotes, brackets, combining tilde).
    outside = "[^" + "".join(f"\\u{ord(c):04x}" for c in full if c != PAD) + "]"
    pad = {"SpecialToken": {"id": PAD, "type_id": 0}}
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        # No added tokens: a "$" in the input would otherwise become id 0 inside the sequence, where KModel
        # drops it as it drops every character outside the vocabulary.
        "added_tokens": [],
        "normalizer": {"type": "Replace", "pattern": {"Regex": outside}, "content": ""},
        "pre_tokenizer": {"type": "Split", "pattern": {"Regex": ""}, "behavior": "Isolated", "invert": False},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [pad, {"Sequence": {"id": "A", "type_id": 0}}, pad],
            "pair": [pad, {"Sequence": {"id": "A", "type_id": 0}}, pad, {"Sequence": {"id": "B", "type_id": 1}}, pad],
            "special_tokens": {PAD: {"id": PAD, "ids": [0], "tokens": [PAD]}},
        },
        "decoder": None,
        "model": {"type": "WordPiece", "unk_token": PAD, "continuing_subword_prefix": "",
                  "max_input_chars_per_word": 100, "vocab": full},
    }
    config = {"model_max_length": MAX_LENGTH, "pad_token": PAD, "unk_token": PAD, "clean_up_tokenization_spaces": False}
    return tokenizer, config


def build(onnx_path: Path, kokoro_config: Path, out: Path) -> dict:
    repo = out / REPO_ID
    record_path = repo / "bench_tts_hub.json"
    source_sha = sha256_file(onnx_path)
    if source_sha != KOKORO_ONNX_SHA256:
        raise SystemExit(f"{onnx_path}: sha256 {source_sha}, expected {KOKORO_ONNX_SHA256} (kokoro-v1.0.int8.onnx)")
    cfg = json.loads(kokoro_config.read_text())
    try:
        record = json.loads(record_path.read_text())
        if (record.get("layout_version") == LAYOUT_VERSION and record.get("source_sha256") == source_sha
                and record.get("config") == cfg and (repo / MODEL_FILE).stat().st_size == record["model_size"]):
            return record
    except (OSError, ValueError, KeyError):
        pass
    change = renamed_model(onnx_path, repo / MODEL_FILE)
    tokenizer, tok_config = tokenizer_files(cfg["vocab"])
    (repo / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False, indent=1))
    (repo / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=1))
    hf_config = {"model_type": "style_text_to_speech_2", "architectures": ["StyleTextToSpeech2Model"], **cfg}
    (repo / "config.json").write_text(json.dumps(hf_config, ensure_ascii=False, indent=1))
    record = {"layout_version": LAYOUT_VERSION, "repo_id": REPO_ID, "source": str(onnx_path),
              "source_sha256": source_sha, "model_file": MODEL_FILE, "model_size": (repo / MODEL_FILE).stat().st_size,
              "model_sha256": sha256_file(repo / MODEL_FILE), "change": change, "config": cfg}
    record_path.write_text(json.dumps(record, ensure_ascii=False, indent=1))
    return record


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--onnx", required=True, type=Path, help="kokoro-v1.0.int8.onnx")
    ap.add_argument("--kokoro-config", required=True, type=Path, help="Kokoro's config.json (with its vocab)")
    ap.add_argument("--out", required=True, type=Path, help="the local model root (transformers.js localModelPath)")
    args = ap.parse_args()
    record = build(args.onnx, args.kokoro_config, args.out)
    print(json.dumps({k: v for k, v in record.items() if k != "config"}))


if __name__ == "__main__":
    main()
