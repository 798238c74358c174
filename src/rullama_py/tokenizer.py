"""Gemma tokenizers, token-for-token equal to llama.cpp's (the version vendored by llama-cpp-python 0.3.36).

Two vocab kinds come out of GGUF files:

* ``tokenizer.ggml.model = "llama"`` (Gemma 3): llama.cpp's SPM tokenizer. Spaces become U+2581, the text is
  split into code points, and adjacent pieces are merged greedily by the *score* of the merged piece (highest
  first, leftmost on ties). A final piece that is not in the vocab falls back to ``<0xXX>`` byte tokens.
* ``tokenizer.ggml.model = "gemma4"`` (llama.cpp's Gemma 4 files), or ``"llama"`` with merges and a Gemma 4
  pre-tokenizer / architecture (Ollama's Gemma 4 blobs, which Ollama's llama.cpp fork re-labels as gemma4):
  BPE with ranked merges over SentencePiece-style text. Spaces become U+2581, the only pre-split is into runs
  of newline / non-newline, merges are applied by rank (lowest first, leftmost on ties), and a final piece
  that is not in the vocab falls back to ``<0xXX>`` byte tokens.

Both first cut the text at special tokens the way llama.cpp's ``tokenizer_st_partition`` does: the vocab's
control, user-defined and unknown tokens, longest text first, each one splitting every remaining raw-text
fragment at all of its occurrences. Control and unknown tokens take part only with ``parse_special=True``;
user-defined ones (Gemma's whitespace runs, HTML tags, ``<start_of_image>``...) always do.

Decoding follows ``llama_detokenize``: control/unknown tokens render only with ``unparse_special``,
user-defined ones render their raw text, normal ones with U+2581 turned back into spaces, byte tokens as
their byte; then, for the BPE kind only, llama.cpp's ``clean_spaces`` pass (" ." -> ".", " 's" -> "'s", ...).
`StreamDecoder` produces exactly the same text incrementally.

Loading is built to be cheap for 262,144 tokens and 514,906 merges (Pyodide runs Python 3-5x slower than
CPython): the token and merge tables are plain dicts built by ``dict(zip(...))`` in C, and the merge table is
keyed by the GGUF merge string itself (``"left right"``), which needs no per-merge Python work at all.
"""

from __future__ import annotations

import codecs
import gc
import heapq
import re
from contextlib import contextmanager
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

__all__ = ["Tokenizer", "StreamDecoder", "TokenizerError"]

# GGUF token types (tokenizer.ggml.token_type values).
TYPE_UNDEFINED, TYPE_NORMAL, TYPE_UNKNOWN, TYPE_CONTROL, TYPE_USER_DEFINED, TYPE_UNUSED, TYPE_BYTE = range(7)

# llama.cpp token attributes (bit flags); the GGUF type maps to one of them and load-time fix-ups OR in more.
ATTR_UNDEFINED = 0
ATTR_UNKNOWN = 1 << 0
ATTR_UNUSED = 1 << 1
ATTR_NORMAL = 1 << 2
ATTR_CONTROL = 1 << 3
ATTR_USER_DEFINED = 1 << 4
ATTR_BYTE = 1 << 5

_TYPE_TO_ATTR = np.array(
    [ATTR_UNDEFINED, ATTR_NORMAL, ATTR_UNKNOWN, ATTR_CONTROL, ATTR_USER_DEFINED, ATTR_UNUSED, ATTR_BYTE],
    dtype=np.int32,
)
_SPECIAL_ATTRS = ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN  # tokens matched in raw text
_HIDDEN_ATTRS = ATTR_CONTROL | ATTR_UNKNOWN  # rendered only when asked to unparse specials

SPACE_MARK = "\u2581"  # SentencePiece's visible space

# llama.cpp finds some special tokens by their text (its GGUFs do not always say which token ends a turn).
# Every token found this way is forced to be a control token. The tables below are the texts llama.cpp
# checks; only the first match of each role is used, except for end-of-generation where all matches count.
_EOT_TEXTS = (
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>", "<EOT>",
    "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>", "<end_of_utterance>",
)
_EOM_TEXTS = ("<|eom_id|>",)
_FIM_TEXTS = {
    "fim_pre": ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>",
                "<|code_prefix|>", "<|prefix|>"),
    "fim_suf": ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>",
                "<|code_suffix|>", "<|suffix|>"),
    "fim_mid": ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>",
                "<|code_middle|>", "<|middle|>"),
    "fim_pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "fim_rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "fim_sep": ("<|file_sep|>",),
}
_EOG_TEXTS = (
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<｜end▁of▁sentence｜>", "[e~[",
)
# gpt-oss channel markers that llama.cpp always renders (kept for parity; absent from Gemma vocabs).
_ALWAYS_RENDERED = ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>")

_KEY = "tokenizer.ggml."
_ID_KEYS = {  # role -> GGUF key suffix; the deprecated prefix/suffix/middle keys alias the FIM ones
    "bos": "bos_token_id", "eos": "eos_token_id", "eot": "eot_token_id", "eom": "eom_token_id",
    "unk": "unknown_token_id", "sep": "seperator_token_id", "pad": "padding_token_id",
    "mask": "mask_token_id", "fim_pre": "fim_pre_token_id", "fim_suf": "fim_suf_token_id",
    "fim_mid": "fim_mid_token_id", "fim_pad": "fim_pad_token_id", "fim_rep": "fim_rep_token_id",
    "fim_sep": "fim_sep_token_id",
}
_DEPRECATED_ID_KEYS = {"fim_pre": "prefix_token_id", "fim_suf": "suffix_token_id", "fim_mid": "middle_token_id"}

_NEWLINE_RUNS = re.compile(r"[^\n]+|\n+")  # llama.cpp's only pre-split for Gemma 4: runs of \n vs the rest

# llama.cpp's clean_spaces passes (BPE vocabs only). They are ASCII-only and run on bytes, in this order.
_CLEAN_PUNCT = re.compile(rb" (?=[?!.,])")  # " ?", " !", " .", " ," lose the space
_CLEAN_CONTRACTION = re.compile(rb" '(?=[sm]|re|ve)")  # " 's", " 'm", " 're", " 've" lose the space
# A stream may emit cleaned text only up to a point that no later byte can change: the byte just before the
# cut must not be able to start or continue one of the patterns above (" ", " '", " 'r", " 'v").
_UNSAFE_BEFORE_CUT = frozenset(b" 'rv")


class TokenizerError(ValueError):
    """The metadata does not describe a tokenizer this module supports."""


def clean_spaces(data: bytes) -> bytes:
    """llama.cpp's detokenizer clean-up for BPE vocabs: drop the space before ?!., ; turn " ' " into "'";
    drop the space before 's 'm 're 've. Applied in three passes, in this order, as llama.cpp does."""
    data = _CLEAN_PUNCT.sub(b"", data)
    data = data.replace(b" ' ", b"'")
    return _CLEAN_CONTRACTION.sub(b"'", data)


@contextmanager
def _gc_paused():
    """Building the tables allocates hundreds of thousands of objects; a cyclic-GC pass triggered midway
    would walk them all for nothing (none are cyclic garbage). Pause it, restoring the caller's setting."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _as_str_list(values) -> list:
    """Token/merge strings as str. The project's GGUF reader yields str (invalid UTF-8 kept as surrogate
    escapes); gguf-py and other callers may hand over bytes."""
    if not isinstance(values, list):
        values = list(values)
    if values and not isinstance(values[0], str):
        values = [v.decode("utf-8", "surrogateescape") if isinstance(v, (bytes, bytearray)) else str(v)
                  for v in values]
    return values


class Tokenizer:
    """A llama.cpp-compatible tokenizer built from GGUF tokenizer metadata (see `from_gguf_metadata`)."""

    def __init__(self, *, kind: str, tokens: list, scores, token_types, merges=None, special_ids=None,
                 add_bos: bool, add_eos: bool, add_space_prefix: bool, clean_spaces: bool,
                 escape_whitespace: bool, arch: str | None = None):
        if kind not in ("spm", "bpe"):
            raise TokenizerError(f"unsupported tokenizer kind {kind!r}")
        n = len(tokens)
        if n == 0:
            raise TokenizerError("empty vocabulary")
        self.kind = kind
        self.arch = arch
        # llama.cpp refuses empty token texts by renaming them, so they can never match input text.
        if "" in tokens:
            tokens = [t if t else f"[EMPTY_{i}]" for i, t in enumerate(tokens)]
        self._tokens = tokens
        # Later duplicates win, as in llama.cpp's token_to_id map (assignment in id order).
        self._tok2id = dict(zip(tokens, range(n)))

        if scores is None:
            scores = np.zeros(n, dtype=np.float32)
        self._scores_np = np.asarray(scores, dtype=np.float32)
        if len(self._scores_np) < n:
            raise TokenizerError(f"{len(self._scores_np)} scores for {n} tokens")
        self._scores_list = None  # Python floats, built on first SPM use

        if token_types is None:
            attrs = np.full(n, ATTR_NORMAL, dtype=np.int32)
        else:
            tt = np.asarray(token_types, dtype=np.int64)
            if len(tt) < n:
                raise TokenizerError(f"{len(tt)} token types for {n} tokens")
            tt = tt[:n]
            # Unknown type codes become UNDEFINED, as in llama.cpp.
            attrs = np.where((tt >= 0) & (tt < len(_TYPE_TO_ATTR)), _TYPE_TO_ATTR[np.clip(tt, 0, 6)], 0)
        attrs = attrs.astype(np.int32)

        self._merges = merges  # list of "left right" strings; turned into a rank table on first BPE use
        self._merge_rank = None

        self.add_bos = bool(add_bos)
        self.add_eos = bool(add_eos)
        self.add_space_prefix = bool(add_space_prefix)
        self.clean_spaces = bool(clean_spaces)
        self._escape = bool(escape_whitespace)

        ids = dict(special_ids or {})
        self._ids = {k: (v if v is not None and 0 <= v < n else None) for k, v in ids.items()}
        self._resolve_special_tokens(attrs)
        self._attrs = attrs.tolist()

        # Special-token table for partitioning: longest UTF-8 text first, as llama.cpp sorts them. Its sort
        # leaves the order of equal lengths unspecified; that only matters for two equal-length specials that
        # overlap (one's suffix is the other's prefix), which Gemma vocabs do not have. Ties go in id order.
        special = np.flatnonzero(attrs & _SPECIAL_ATTRS).tolist()
        special.sort(key=lambda i: -len(tokens[i].encode("utf-8", "surrogateescape")))
        self._special = [(tokens[i], i, bool(self._attrs[i] & _HIDDEN_ATTRS)) for i in special]
        # Index by the first few characters so an encode call only tests the specials whose prefix occurs.
        self._special_index: dict[str, list] = {}
        for order, (text, tid, hidden) in enumerate(self._special):
            self._special_index.setdefault(text[:3], []).append((order, text, tid, hidden))
        self._special_prefix_lens = sorted({len(k) for k in self._special_index})

        self._byte_ids = self._byte_table()
        self._piece_cache: dict = {}

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_gguf_metadata(cls, meta: Mapping) -> Tokenizer:
        """Build from GGUF key/values (``tokenizer.ggml.*`` plus ``general.architecture``), as the project's
        GGUF reader or gguf-py provide them: strings as str or bytes, arrays as lists or numpy arrays."""

        def get(key, default=None):
            return meta.get(_KEY + key, default)

        model = get("model")
        if isinstance(model, (bytes, bytearray)):
            model = model.decode()
        pre = get("pre") or ""
        if isinstance(pre, (bytes, bytearray)):
            pre = pre.decode()
        arch = meta.get("general.architecture")
        tokens = get("tokens")
        if tokens is None:
            raise TokenizerError("no tokenizer.ggml.tokens in the metadata")
        with _gc_paused():
            tokens = _as_str_list(tokens)
        merges = get("merges")
        has_merges = merges is not None and len(merges) > 0

        if model == "gemma4" or (model == "llama" and has_merges and (pre == "gemma4" or arch == "gemma4")):
            # llama.cpp: BPE, Gemma 4 pre-tokenizer (escape spaces, split newline runs), clean_spaces on,
            # no space prefix, no default special ids. Ollama labels its Gemma 4 blobs "llama" but its
            # llama.cpp fork loads them as gemma4, which is what these settings reproduce.
            if not has_merges:
                raise TokenizerError("gemma4 tokenizer without tokenizer.ggml.merges")
            kind, escape, clean, add_bos, add_eos, space_prefix = "bpe", True, True, False, False, False
            defaults = {}
            merges = _as_str_list(merges)
        elif model == "llama":
            # llama.cpp's SPM defaults, before the GGUF's own add_* keys are applied.
            kind, escape, clean, add_bos, add_eos, space_prefix = "spm", True, False, True, False, True
            defaults = {"bos": 1, "eos": 2, "unk": 0}
            merges = None
        else:
            raise TokenizerError(f"unsupported tokenizer.ggml.model {model!r} (only llama and gemma4)")

        n = len(tokens)
        ids = {}
        for role, suffix in _ID_KEYS.items():
            tid = defaults.get(role)
            if tid is not None and tid >= n:
                tid = None  # llama.cpp disables an out-of-range default
            for key in (suffix, _DEPRECATED_ID_KEYS.get(role)):
                if key is None:
                    continue
                v = get(key)
                if v is not None and 0 <= int(v) < n:  # an out-of-range id keeps the default
                    tid = int(v)
            ids[role] = tid

        space_prefix = bool(get("add_space_prefix", space_prefix))
        add_bos = bool(get("add_bos_token", add_bos))
        add_eos = bool(get("add_eos_token", add_eos))
        if kind == "bpe" and not add_bos:
            add_bos = True  # llama.cpp forces BOS for Gemma 4 whatever the file says
        with _gc_paused():
            return cls(kind=kind, tokens=tokens, scores=get("scores"), token_types=get("token_type"),
                       merges=merges, special_ids=ids, add_bos=add_bos, add_eos=add_eos,
                       add_space_prefix=space_prefix, clean_spaces=clean, escape_whitespace=escape,
                       arch=arch)

    def _resolve_special_tokens(self, attrs: np.ndarray) -> None:
        """llama.cpp's load-time fix-ups: find end-of-turn/FIM tokens by text, mark every end-of-generation
        token, and force such tokens to be control tokens (so they are hidden in output and only parsed as
        specials on request). ``attrs`` is modified in place."""
        tok2id = self._tok2id
        ids = self._ids

        def force_control(tid):
            attrs[tid] |= ATTR_CONTROL

        def first_present(texts):
            # llama.cpp walks an unordered map; when several texts of one role exist the pick is arbitrary
            # there. Gemma vocabs have at most one of each, so the table order is as good as any.
            for t in texts:
                tid = tok2id.get(t)
                if tid is not None:
                    return tid
            return None

        for role, texts in (("eot", _EOT_TEXTS), ("eom", _EOM_TEXTS), *_FIM_TEXTS.items()):
            if ids.get(role) is None:
                tid = first_present(texts)
                if tid is not None:
                    ids[role] = tid
                    force_control(tid)

        # Control tokens whose text says "unused" are flagged unused (they still behave as control tokens).
        for tid in np.flatnonzero(attrs & ATTR_CONTROL).tolist():
            if "unused" in self._tokens[tid]:
                attrs[tid] |= ATTR_UNUSED

        eog = {ids[r] for r in ("fim_pad", "fim_rep", "fim_sep") if ids.get(r) is not None}
        for t in _EOG_TEXTS:
            tid = tok2id.get(t)
            if tid is not None:
                eog.add(tid)
                force_control(tid)
        for t in _ALWAYS_RENDERED:
            tid = tok2id.get(t)
            if tid is not None:
                attrs[tid] = ATTR_USER_DEFINED
        for role in ("eos", "eot", "eom"):
            if ids.get(role) is not None:
                eog.add(ids[role])

        texts = {self._tokens[t]: t for t in eog}
        # gpt-oss / solar-open: "<|end|>" is not an end of generation when the finer-grained ones exist.
        if "<|end|>" in texts and (("<|return|>" in texts and ("<|call|>" in texts or "<|calls|>" in texts))
                                   or ("<|calls|>" in texts and "<|flush|>" in texts)):
            end = texts["<|end|>"]
            eog.discard(end)
            attrs[end] = ATTR_USER_DEFINED
        # Gemma 4 (recognised by <|tool_response>) has an ordinary "</s>" piece: not an end of generation.
        if "</s>" in texts and ("<|tool_response>" in texts or "<|plamo:eos|>" in texts):
            s = texts["</s>"]
            eog.discard(s)
            attrs[s] = ATTR_NORMAL
        self.eog_ids = frozenset(eog)

    def _byte_table(self) -> list:
        """Token id of each byte value for byte fallback, or None. Gemma vocabs spell bytes ``<0xXX>``;
        llama.cpp's SPM path also accepts the bare one-byte token when the hex form is missing."""
        table = []
        for b in range(256):
            tid = self._tok2id.get(f"<0x{b:02X}>")
            if tid is None and self.kind == "spm" and b < 0x80:
                tid = self._tok2id.get(chr(b))
            table.append(tid)
        return table

    def _ranks(self) -> dict:
        if self._merge_rank is None:
            merges = self._merges or []
            # Keyed by the merge string itself: a lookup is `left + " " + right`. Pieces never contain a
            # plain space (the text has them as U+2581), so that key is unambiguous. Reversed so the first
            # of any duplicate merge keeps its rank, as llama.cpp's map emplace does.
            with _gc_paused():
                self._merge_rank = dict(zip(reversed(merges), range(len(merges) - 1, -1, -1)))
        return self._merge_rank

    # ------------------------------------------------------------------ vocabulary

    @property
    def vocab_size(self) -> int:
        return len(self._tokens)

    @property
    def bos_id(self) -> int | None:
        return self._ids.get("bos")

    @property
    def eos_id(self) -> int | None:
        return self._ids.get("eos")

    @property
    def eot_id(self) -> int | None:
        return self._ids.get("eot")

    @property
    def pad_id(self) -> int | None:
        return self._ids.get("pad")

    @property
    def unk_id(self) -> int | None:
        return self._ids.get("unk")

    def special_id(self, role: str) -> int | None:
        """Id of a special role: bos, eos, eot, eom, unk, sep, pad, mask, fim_pre/suf/mid/pad/rep/sep."""
        return self._ids.get(role)

    def token_to_id(self, text: str) -> int | None:
        return self._tok2id.get(text)

    def id_to_token(self, tid: int) -> str:
        return self._tokens[tid]

    def token_attr(self, tid: int) -> int:
        return self._attrs[tid]

    def is_control(self, tid: int) -> bool:
        return bool(self._attrs[tid] & ATTR_CONTROL)

    def is_eog(self, tid: int) -> bool:
        return tid in self.eog_ids

    # ------------------------------------------------------------------ encoding

    def encode(self, text: str, add_bos: bool | None = None, parse_special: bool = False,
               add_eos: bool | None = None) -> list[int]:
        """Token ids of ``text``, as ``llama_tokenize(text, add_special, parse_special)`` returns them.

        ``add_bos``/``add_eos``: None follows the vocab (llama.cpp's ``add_special=True``: BOS for Gemma,
        no EOS); True/False force it. ``parse_special``: also match control tokens such as
        ``<start_of_turn>`` in the text (user-defined ones like ``<start_of_image>`` always match)."""
        if add_bos is None:
            add_bos = self.add_bos
        if add_eos is None:
            add_eos = self.add_eos
        out: list[int] = []
        if add_bos:
            if self.bos_id is None:
                raise TokenizerError("this vocab has no BOS token")
            out.append(self.bos_id)
        fragments = self._partition(text, parse_special) if text else []
        if self.kind == "spm":
            prev_special = True  # a space prefix goes before the first text and after each special token
            for frag in fragments:
                if isinstance(frag, int):
                    out.append(frag)
                    prev_special = True
                    continue
                if self.add_space_prefix and prev_special:
                    frag = " " + frag
                self._spm(frag.replace(" ", SPACE_MARK), out)
                prev_special = False
        else:
            for frag in fragments:
                if isinstance(frag, int):
                    out.append(frag)
                    continue
                if self._escape:
                    frag = frag.replace(" ", SPACE_MARK)
                for word in _NEWLINE_RUNS.findall(frag):
                    self._bpe(word, out)
        if add_eos:
            if self.eos_id is None:
                raise TokenizerError("this vocab has no EOS token")
            out.append(self.eos_id)
        return out

    def _partition(self, text: str, parse_special: bool) -> list:
        """Split ``text`` into raw-text fragments (str) and special-token ids (int), like llama.cpp's
        tokenizer_st_partition: for each special token, longest text first, cut every remaining raw fragment
        at each of its non-overlapping occurrences, left to right. Empty fragments are dropped."""
        # Only specials whose first (up to) three characters occur in the text can match; gather those.
        grams = set()
        for k in self._special_prefix_lens:
            grams.update(text[i:i + k] for i in range(len(text) - k + 1))
        index = self._special_index
        candidates = []
        for g in grams:
            group = index.get(g)
            if group:
                for entry in group:
                    if (parse_special or not entry[3]) and entry[1] in text:
                        candidates.append(entry)
        if not candidates:
            return [text]
        candidates.sort()
        frags: list = [text]
        for _, stext, tid, _ in candidates:
            out = []
            for f in frags:
                if isinstance(f, str) and stext in f:
                    parts = f.split(stext)
                    if parts[0]:
                        out.append(parts[0])
                    for p in parts[1:]:
                        out.append(tid)
                        if p:
                            out.append(p)
                else:
                    out.append(f)
            frags = out
        return frags

    def _spm(self, text: str, out: list) -> None:
        """llama.cpp's SPM merge loop on one escaped fragment: repeatedly merge the adjacent pair whose
        concatenation is the vocab piece with the highest score (leftmost first on ties)."""
        n = len(text)
        if n == 0:
            return
        tok = self._tok2id
        if self._scores_list is None:
            self._scores_list = self._scores_np.tolist()
        score = self._scores_list
        size = [1] * n  # characters in the symbol starting here (0 once merged into its left neighbour)
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        prv = list(range(-1, n - 1))
        heap = []
        for i in range(n - 1):
            t = tok.get(text[i:i + 2])
            if t is not None:
                heap.append((-score[t], i, 2))
        heapq.heapify(heap)
        pop, push = heapq.heappop, heapq.heappush
        while heap:
            _, left, want = pop(heap)
            # Stale entries: a side was merged away, or either side grew since the pair was queued.
            ls = size[left]
            if ls == 0:
                continue
            right = nxt[left]
            if right < 0 or ls + size[right] != want:
                continue
            size[left] = want
            size[right] = 0
            after = nxt[right]
            nxt[left] = after
            if after >= 0:
                prv[after] = left
            before = prv[left]
            if before >= 0:
                w = size[before] + want
                t = tok.get(text[before:before + w])
                if t is not None:
                    push(heap, (-score[t], before, w))
            if after >= 0:
                w = want + size[after]
                t = tok.get(text[left:left + w])
                if t is not None:
                    push(heap, (-score[t], left, w))
        i = 0
        byte_ids = self._byte_ids
        while i >= 0:
            piece = text[i:i + size[i]]
            t = tok.get(piece)
            if t is not None:
                out.append(t)
            else:
                self._byte_fallback(piece, out, byte_ids)
            i = nxt[i]

    def _bpe(self, word: str, out: list) -> None:
        """llama.cpp's BPE merge loop on one pre-split word: repeatedly merge the adjacent pair with the
        lowest merge rank (leftmost first on ties), then map pieces to ids with byte fallback."""
        tok = self._tok2id
        if word[0] == "\n" and word.count("\n") == len(word):
            # A whole run of newlines that is itself a token stays one token (llama.cpp's Gemma 4 rule).
            t = tok.get(word)
            if t is not None:
                out.append(t)
                return
        n = len(word)
        if n == 1:
            t = tok.get(word)
            if t is not None:
                out.append(t)
            else:
                self._byte_fallback(word, out, self._byte_ids)
            return
        ranks = self._merge_rank if self._merge_rank is not None else self._ranks()
        sym = list(word)  # text of the symbol starting at each index; None once merged leftwards
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        prv = list(range(-1, n - 1))
        heap = []
        for i in range(n - 1):
            r = ranks.get(sym[i] + " " + sym[i + 1])
            if r is not None:
                heap.append((r, i, sym[i] + sym[i + 1]))
        heapq.heapify(heap)
        pop, push = heapq.heappop, heapq.heappush
        while heap:
            _, left, text = pop(heap)
            ltext = sym[left]
            if ltext is None:
                continue
            right = nxt[left]
            if right < 0:
                continue
            rtext = sym[right]
            if ltext + rtext != text:  # stale: one side changed since the pair was queued
                continue
            sym[left] = text
            sym[right] = None
            after = nxt[right]
            nxt[left] = after
            if after >= 0:
                prv[after] = left
            before = prv[left]
            if before >= 0:
                b = sym[before]
                r = ranks.get(b + " " + text)
                if r is not None:
                    push(heap, (r, before, b + text))
            if after >= 0:
                a = sym[after]
                r = ranks.get(text + " " + a)
                if r is not None:
                    push(heap, (r, left, text + a))
        i = 0
        byte_ids = self._byte_ids
        while i >= 0:
            piece = sym[i]
            t = tok.get(piece)
            if t is not None:
                out.append(t)
            else:
                self._byte_fallback(piece, out, byte_ids)
            i = nxt[i]

    @staticmethod
    def _byte_fallback(piece: str, out: list, byte_ids: list) -> None:
        # Bytes without a token are dropped, as llama.cpp's BPE path does (Gemma has all 256).
        for b in piece.encode("utf-8", "surrogatepass"):
            t = byte_ids[b]
            if t is not None:
                out.append(t)

    # ------------------------------------------------------------------ decoding

    def token_to_piece(self, tid: int, special: bool = False) -> bytes:
        """The bytes one token contributes to output, like ``llama_token_to_piece(..., lstrip=0, special)``:
        control/unknown tokens are empty unless ``special``; user-defined tokens give their raw text; normal
        tokens their text with U+2581 as space; byte tokens their byte; anything else (unused) is empty."""
        attr = self._attrs[tid]
        if not special and attr & _HIDDEN_ATTRS:
            return b""
        piece = self._piece_cache.get(tid)
        if piece is None:
            text = self._tokens[tid]
            if attr & (_HIDDEN_ATTRS | ATTR_USER_DEFINED):
                piece = text.encode("utf-8", "surrogateescape")
            elif attr & ATTR_NORMAL:
                if self._escape:
                    text = text.replace(SPACE_MARK, " ")
                piece = text.encode("utf-8", "surrogateescape")
            elif attr & ATTR_BYTE:
                piece = bytes([int(text[3:5], 16)])
            else:
                piece = b""
            self._piece_cache[tid] = piece
        return piece

    def decode_bytes(self, ids: Iterable[int], remove_special: bool = False, unparse_special: bool = False,
                     clean_spaces: bool | None = None) -> bytes:
        """``llama_detokenize`` as bytes (the text may end inside a UTF-8 sequence).

        ``remove_special``: drop a leading BOS / trailing EOS that the vocab adds by itself.
        ``unparse_special``: render control tokens (``<end_of_turn>``...) as their text.
        ``clean_spaces``: None follows the vocab (on for Gemma 4's BPE, off for Gemma 3's SPM)."""
        ids = list(ids)
        remove_space = self.add_space_prefix
        if remove_special and self.add_bos and ids and ids[0] == self.bos_id:
            ids = ids[1:]
            remove_space = False  # llama.cpp keeps the space prefix when it removed a BOS
        if remove_special and self.add_eos and ids and ids[-1] == self.eos_id:
            ids = ids[:-1]
        parts = [self.token_to_piece(t, unparse_special) for t in ids]
        if remove_space and parts and parts[0][:1] == b" ":
            parts[0] = parts[0][1:]
        data = b"".join(parts)
        if self.clean_spaces if clean_spaces is None else clean_spaces:
            data = clean_spaces_fn(data)
        return data

    def decode(self, ids: Iterable[int], remove_special: bool = False, unparse_special: bool = False,
               clean_spaces: bool | None = None) -> str:
        """`decode_bytes` as text; bytes that are not valid UTF-8 become U+FFFD."""
        return self.decode_bytes(ids, remove_special, unparse_special, clean_spaces).decode("utf-8", "replace")

    def stream_decoder(self, **kwargs) -> StreamDecoder:
        return StreamDecoder(self, **kwargs)


clean_spaces_fn = clean_spaces  # module-level name that the `clean_spaces` parameters do not shadow


class StreamDecoder:
    """Incremental `Tokenizer.decode`: ``push(id)`` returns the text that became final with this token, and
    ``flush()`` the rest. ``"".join(push(t) for t in ids) + flush() == tokenizer.decode(ids, ...)`` for the
    same options, for any ids.

    Text is held back only while it can still change: the bytes of an unfinished UTF-8 character (an emoji
    split over byte tokens), and, when clean_spaces applies, a trailing space or apostrophe that a later
    "." or "'s" would remove. A leading BOS is dropped (``remove_special``) and a final EOS that the vocab
    adds itself is held until it is known to be last.

    Note that llama.cpp's *server* streams plain pieces without clean_spaces; pass ``clean_spaces=False``
    for that behaviour."""

    def __init__(self, tokenizer: Tokenizer, remove_special: bool = False, unparse_special: bool = False,
                 clean_spaces: bool | None = None):
        self.tok = tokenizer
        self.remove_special = remove_special
        self.unparse_special = unparse_special
        self.clean = tokenizer.clean_spaces if clean_spaces is None else clean_spaces
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        self._pending = b""  # raw bytes not yet cleaned/emitted
        self._first = True
        self._remove_space = tokenizer.add_space_prefix
        self._held_eos = False

    def push(self, tid: int) -> str:
        tok = self.tok
        data = b""
        if self._held_eos:  # the held EOS was not the last token after all
            self._held_eos = False
            data += self._piece(tok.eos_id)
        if self.remove_special:
            if self._first and tok.add_bos and tid == tok.bos_id:
                self._first = False
                self._remove_space = False
                return ""
            if tok.add_eos and tid == tok.eos_id:
                self._held_eos = True
                return self._emit(data, final=False)
        return self._emit(data + self._piece(tid), final=False)

    def flush(self) -> str:
        """Everything still held back (a dangling EOS is dropped, as decode with remove_special does)."""
        self._held_eos = False
        return self._emit(b"", final=True)

    def _piece(self, tid: int) -> bytes:
        piece = self.tok.token_to_piece(tid, self.unparse_special)
        if self._first:
            self._first = False
            if self._remove_space and piece[:1] == b" ":
                piece = piece[1:]
        return piece

    def _emit(self, data: bytes, final: bool) -> str:
        pending = self._pending + data
        if not self.clean:
            self._pending = b""
            return self._utf8.decode(pending, final)
        if final:
            cut = len(pending)
        else:
            cut = len(pending)
            while cut > 0 and pending[cut - 1] in _UNSAFE_BEFORE_CUT:
                cut -= 1
        self._pending = pending[cut:]
        return self._utf8.decode(clean_spaces(pending[:cut]), final)
