"""Tokenizer tests: token ids and decoded text equal llama.cpp's on every golden case (goldens written by
tools/make_tokenizer_goldens.py with llama-cpp-python 0.3.36), round trips, the streaming decoder, special
tokens, and load/encode speed."""

from __future__ import annotations

import random
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizer_fixtures import gemma3_metadata, gemma4bpe_metadata, golden, golden_bytes

from rullama_py.tokenizer import (
    ATTR_CONTROL,
    ATTR_UNUSED,
    ATTR_USER_DEFINED,
    StreamDecoder,
    Tokenizer,
    TokenizerError,
    clean_spaces,
)

VOCABS = ["gemma3", "gemma4bpe"]


@pytest.fixture(scope="session")
def metas(tmp_path_factory):
    def get(name):
        if name == "gemma3":
            return gemma3_metadata()
        return gemma4bpe_metadata(tmp_path_factory.mktemp("gemma4bpe"))

    return get


@pytest.fixture(scope="session")
def tokenizers(metas):
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = Tokenizer.from_gguf_metadata(metas(name))
        return cache[name]

    return get


@pytest.fixture(params=VOCABS)
def vocab(request, tokenizers):
    return request.param, tokenizers(request.param), golden(f"tokenizer_{request.param}.json")


# ----------------------------------------------------------------------------- llama.cpp goldens


def test_goldens_encode(vocab):
    name, tok, g = vocab
    assert len(g["cases"]) >= 200
    bad = []
    for c in g["cases"]:
        ids = tok.encode(c["text"], add_bos=None if c["add_special"] else False, parse_special=c["parse_special"])
        if ids != c["ids"]:
            bad.append((c["text"][:60], c["add_special"], c["parse_special"], ids[:20], c["ids"][:20]))
    assert not bad, f"{len(bad)}/{len(g['cases'])} {name} encodings differ from llama.cpp, first: {bad[:3]}"


def test_goldens_detokenize(vocab):
    name, tok, g = vocab
    bad = []
    for c in g["cases"]:
        if tok.decode_bytes(c["ids"]) != golden_bytes(c["detok"]):
            bad.append(("plain", c["text"][:60]))
        if tok.decode_bytes(c["ids"], remove_special=True, unparse_special=True) != golden_bytes(c["detok_special"]):
            bad.append(("special", c["text"][:60]))
    for d in g["decode"]:
        got = tok.decode_bytes(d["ids"], d["remove_special"], d["unparse_special"])
        if got != golden_bytes(d):
            bad.append(("ids", d["ids"], got, golden_bytes(d)))
    assert not bad, f"{len(bad)} {name} detokenizations differ from llama.cpp, first: {bad[:3]}"


def test_goldens_eog_and_vocab(vocab):
    name, tok, g = vocab
    assert tok.vocab_size == g["n_vocab"] == 262144
    assert sorted(tok.eog_ids) == g["eog_ids"]
    assert (tok.bos_id, tok.eos_id, tok.unk_id, tok.pad_id) == (2, 1, 3, 0)
    assert tok.add_bos and not tok.add_eos
    assert tok.kind == ("spm" if name == "gemma3" else "bpe")


# ----------------------------------------------------------------------------- round trips and streaming


def _texts(g):
    return sorted({c["text"] for c in g["cases"]})


def test_roundtrip(vocab):
    """decode(encode(s)) == s. For Gemma 4's BPE vocab llama.cpp's detokenizer also applies clean_spaces
    (" ." -> "."), so the default decode equals clean_spaces(s) and decode(clean_spaces=False) equals s.
    Gemma's vocabs have no space prefix, so no leading space is added or removed. Input U+2581 (the
    SentencePiece space mark) is indistinguishable from a space once tokenized and comes back as one."""
    name, tok, g = vocab
    for source in _texts(g):
        text = source.replace("\u2581", " ")
        raw = text.encode("utf-8")
        ids = tok.encode(source)
        expect = clean_spaces(raw) if tok.clean_spaces else raw
        assert tok.decode_bytes(ids, remove_special=True) == expect, source
        assert tok.decode(ids, remove_special=True, clean_spaces=False) == text
        # parse_special: control tokens come back only when asked to render them.
        ids = tok.encode(source, add_bos=False, parse_special=True)
        assert tok.decode(ids, unparse_special=True, clean_spaces=False) == text


def _stream(tok, ids, **kw):
    sd = StreamDecoder(tok, **kw)
    chunks = [sd.push(t) for t in ids]
    return chunks, sd.flush()


def test_stream_equals_decode(vocab):
    name, tok, g = vocab
    seqs = [(c["ids"], False, False) for c in g["cases"]] + [(c["ids"], True, True) for c in g["cases"]]
    seqs += [(d["ids"], d["remove_special"], d["unparse_special"]) for d in g["decode"]]
    for ids, rs, us in seqs:
        for clean in (None, False):
            chunks, tail = _stream(tok, ids, remove_special=rs, unparse_special=us, clean_spaces=clean)
            assert "".join(chunks) + tail == tok.decode(ids, rs, us, clean_spaces=clean), ids


def test_stream_holds_partial_utf8(vocab):
    """An emoji spelled as byte tokens comes out whole, once its last byte arrives."""
    name, tok, g = vocab
    ids = [tok.token_to_id(f"<0x{b:02X}>") for b in "😀é".encode()]
    chunks, tail = _stream(tok, ids)
    assert chunks == ["", "", "", "😀", "", "é"] and tail == ""
    # A broken sequence becomes U+FFFD once it is known to be broken, like the full decode.
    ids = [tok.token_to_id(f"<0x{b:02X}>") for b in b"\xf0\x9f" + b"A"]
    chunks, tail = _stream(tok, ids)
    assert "".join(chunks) + tail == tok.decode(ids) == "\ufffdA"


def test_stream_emoji_zwj_sequence(vocab):
    name, tok, g = vocab
    text = "family 👨‍👩‍👧‍👦 flag 🇯🇵 skin 👍🏽 done."
    ids = tok.encode(text, add_bos=False)
    chunks, tail = _stream(tok, ids)
    assert "".join(chunks) + tail == text
    for ch in chunks:
        ch.encode("utf-8")  # every chunk is whole characters (no lone surrogates, no U+FFFD)
        assert "\ufffd" not in ch


def _tiny_bpe_tokenizer() -> Tokenizer:
    """A small Gemma-4-style vocab whose pieces exercise clean_spaces: spaces, apostrophes, punctuation."""
    pieces = ["<pad>", "<eos>", "<bos>", "<unk>", "<ctl>"] + [f"<0x{b:02X}>" for b in range(256)]
    words = ["▁", "'", ".", ",", "!", "?", "s", "m", "r", "e", "v", "t", "d", "l", "x", "▁'", "▁.", "'s", "▁'s",
             "re", "ve", "▁'re", "é", "中", "▁x", "ll"]
    tokens = pieces + words
    types = [3, 3, 3, 2, 3] + [6] * 256 + [1] * len(words)
    return Tokenizer(kind="bpe", tokens=tokens, scores=None, token_types=types, merges=["▁ '"],
                     special_ids={"bos": 2, "eos": 1, "unk": 3, "pad": 0}, add_bos=True, add_eos=False,
                     add_space_prefix=False, clean_spaces=True, escape_whitespace=True)


_TINY = _tiny_bpe_tokenizer()
_TINY_WORDS = list(range(261, _TINY.vocab_size))
_TINY_UTF8 = [5 + b for b in "é😀".encode()]


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.one_of(st.sampled_from(_TINY_WORDS), st.sampled_from(_TINY_UTF8), st.integers(0, 286)), max_size=30),
    st.booleans(),
    st.booleans(),
)
def test_stream_clean_spaces_property(ids, remove_special, unparse_special):
    tok = _TINY
    chunks, tail = _stream(tok, ids, remove_special=remove_special, unparse_special=unparse_special)
    assert "".join(chunks) + tail == tok.decode(ids, remove_special, unparse_special)


def test_clean_spaces_rules():
    # llama.cpp's three passes, including its quirks (" 't" and " 'd" keep the space).
    assert clean_spaces(b"a . b , c ! d ?") == b"a. b, c! d?"
    assert clean_spaces(b"He said ' hi ' to me") == b"He said'hi'to me"
    assert clean_spaces(b"a ' ' b") == b"a'' b"  # non-overlapping, left to right
    assert (clean_spaces(b"it 's we 're they 've I 'm I 'll don 't he 'd")
            == b"it's we're they've I'm I 'll don 't he 'd")
    assert clean_spaces(b"  .") == b" ."


# ----------------------------------------------------------------------------- special tokens and rules


def test_special_token_parsing(tokenizers):
    tok = tokenizers("gemma3")
    sot, eot = tok.token_to_id("<start_of_turn>"), tok.token_to_id("<end_of_turn>")
    assert (sot, eot) == (105, 106)
    text = "<start_of_turn>user\nhi<end_of_turn>"
    assert tok.encode(text, add_bos=False, parse_special=True) == [105, 2364, 107, 2202, 106]
    plain = tok.encode(text, add_bos=False)
    assert sot not in plain and eot not in plain
    # User-defined tokens are matched even without parse_special; control ones only with it.
    soi = tok.token_to_id("<start_of_image>")
    assert tok.token_attr(soi) & ATTR_USER_DEFINED and tok.encode("a<start_of_image>b", add_bos=False)[1] == soi
    unused = tok.token_to_id("<unused0>")
    assert tok.token_attr(unused) & ATTR_CONTROL and tok.token_attr(unused) & ATTR_UNUSED
    assert unused not in tok.encode("<unused0>", add_bos=False)
    assert tok.encode("<unused0>", add_bos=False, parse_special=True) == [unused]
    # Whitespace runs are user-defined tokens in Gemma 3's GGUF.
    assert tok.encode("a  b", add_bos=False) == [tok.token_to_id("a"), tok.token_to_id("  "), tok.token_to_id("b")]
    # Control tokens are hidden in output unless unparsed; "</s>" is made an end-of-generation token.
    assert tok.decode([2, 105, 2364, 106]) == "user"
    assert tok.decode([2, 105, 2364, 106], unparse_special=True) == "<bos><start_of_turn>user<end_of_turn>"
    assert (tok.decode([2, 105, 2364, 106], remove_special=True, unparse_special=True)
            == "<start_of_turn>user<end_of_turn>")
    assert tok.is_eog(1) and tok.is_eog(106) and tok.is_eog(tok.token_to_id("</s>")) and not tok.is_eog(105)
    assert tok.eot_id == 106


def test_bos_rules(metas):
    meta = dict(metas("gemma3"))
    tok = Tokenizer.from_gguf_metadata(meta)
    assert tok.encode("hi")[0] == 2 and tok.encode("hi", add_bos=False)[0] != 2
    assert tok.encode("") == [2] and tok.encode("", add_bos=False) == []
    assert tok.encode("hi", add_eos=True)[-1] == 1
    meta["tokenizer.ggml.add_bos_token"] = False
    assert Tokenizer.from_gguf_metadata(meta).encode("hi")[0] != 2  # SPM honours the file


def test_gemma4_layouts(tokenizers, metas):
    """llama.cpp forces BOS for Gemma 4 whatever the file says, and Ollama's blobs ("llama" + merges + pre
    gemma4) tokenize exactly like llama.cpp's "gemma4" files."""
    tok = tokenizers("gemma4bpe")
    meta = dict(metas("gemma4bpe"))
    meta["tokenizer.ggml.add_bos_token"] = False
    assert Tokenizer.from_gguf_metadata(meta).add_bos
    meta["tokenizer.ggml.model"] = "llama"
    ollama = Tokenizer.from_gguf_metadata(meta)
    assert ollama.kind == "bpe"
    g = golden("tokenizer_gemma4bpe.json")
    for c in g["cases"][::7]:
        assert ollama.encode(c["text"], None if c["add_special"] else False, c["parse_special"]) == c["ids"]
    # Newline runs that are tokens stay whole (llama.cpp's Gemma 4 rule); longer ones merge by rank.
    nl = tok.encode("\n" * 3, add_bos=False)
    assert nl == [tok.token_to_id("\n\n\n")]
    assert tok.decode(tok.encode("\n" * 40, add_bos=False)) == "\n" * 40


def test_unsupported_model():
    with pytest.raises(TokenizerError):
        Tokenizer.from_gguf_metadata({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["a"]})
    with pytest.raises(TokenizerError):
        Tokenizer.from_gguf_metadata({"tokenizer.ggml.model": "gemma4", "tokenizer.ggml.tokens": ["a"]})


def test_bytes_tokens_accepted():
    """gguf-py hands over token texts as bytes; they are decoded (invalid UTF-8 kept as surrogate escapes)."""
    tokens = [b"<pad>", b"<eos>", b"<bos>", b"<unk>"] + [f"<0x{b:02X}>".encode() for b in range(256)]
    tokens.append(b"\xe2\x96\x81a")
    tok = Tokenizer.from_gguf_metadata({
        "tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [3, 3, 3, 2] + [6] * 256 + [1], "tokenizer.ggml.add_space_prefix": False,
        "tokenizer.ggml.bos_token_id": 2, "tokenizer.ggml.eos_token_id": 1,
    })
    assert tok.encode(" a", add_bos=False) == [260]
    assert tok.encode("b", add_bos=False) == [4 + ord("b")]


# ----------------------------------------------------------------------------- speed


def test_load_and_encode_speed(vocab, metas, capsys):
    """A 262,144-token vocab must load well under a second (Pyodide is 3-5x slower than CPython), and a few
    KB of text must encode quickly. Bounds are loose (shared CI machines); timings are printed."""
    name, tok, g = vocab
    meta = metas(name)
    t0 = time.perf_counter()
    fresh = Tokenizer.from_gguf_metadata(meta)
    t_load = time.perf_counter() - t0
    text = max(_texts(g), key=len)  # ~2.3 KB mixed-script text
    t0 = time.perf_counter()
    ids = fresh.encode(text)  # includes building the merge table for BPE
    t_first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(3):
        fresh.encode(text)
    t_enc = (time.perf_counter() - t0) / 3
    with capsys.disabled():
        print(f"\n[{name}] load {t_load * 1e3:.0f} ms, first encode {t_first * 1e3:.0f} ms, "
              f"encode {len(text.encode())} B -> {len(ids)} ids {t_enc * 1e3:.1f} ms")
    assert t_load < 2.0
    assert t_first < 4.0
    assert t_enc < 0.5


def test_random_text_matches_reference_rules(tokenizers):
    """Cheap self-consistency on random mixed text: SPM/BPE output only ids that decode back to the text."""
    rng = random.Random(7)
    alphabet = "ab é中😀 \n\t.,'<>/s" + "".join(chr(c) for c in range(0x400, 0x410))
    for name in VOCABS:
        try:
            tok = tokenizers(name)
        except pytest.skip.Exception:
            continue
        for _ in range(200):
            s = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))
            ids = tok.encode(s, add_bos=False)
            assert tok.decode(ids, clean_spaces=False) == s
            assert np.all(np.asarray(ids, dtype=np.int64) < tok.vocab_size)
