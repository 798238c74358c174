"""Ollama model store resolution against a fake store with real manifest shapes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from rullama_py import ollama
from rullama_py.ollama import (
    DEFAULT_HOST,
    MODEL_MEDIA_TYPE,
    ModelNotFoundError,
    ModelRef,
    OllamaError,
    list_models,
    parse_name,
    resolve,
    resolve_blob,
)


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Store:
    """Writes blobs and schemaVersion-2 manifests the way `ollama pull` leaves them."""

    def __init__(self, root: Path):
        self.root = root
        (root / "blobs").mkdir(parents=True, exist_ok=True)

    def blob(self, data: bytes) -> str:
        d = _digest(data)
        (self.root / "blobs" / d.replace(":", "-")).write_bytes(data)
        return d

    def layer(self, media_type: str, data: bytes) -> dict:
        return {"mediaType": media_type, "digest": self.blob(data), "size": len(data)}

    def manifest(self, parts: tuple, doc) -> Path:
        p = self.root / "manifests" / Path(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(doc if isinstance(doc, str) else json.dumps(doc))
        return p

    def model(self, parts: tuple, gguf_bytes: bytes) -> dict:
        doc = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": self.layer("application/vnd.docker.container.image.v1+json", b'{"model_format":"gguf"}'),
            "layers": [
                self.layer(MODEL_MEDIA_TYPE, gguf_bytes),
                self.layer("application/vnd.ollama.image.template", b"{{ .Prompt }}"),
                self.layer("application/vnd.ollama.image.license", b"Gemma Terms of Use"),
                self.layer("application/vnd.ollama.image.params", b'{"stop":["<end_of_turn>"]}'),
            ],
        }
        self.manifest(parts, doc)
        return doc


@pytest.fixture
def store(tmp_path, monkeypatch) -> Store:
    root = tmp_path / "models"
    monkeypatch.setenv("OLLAMA_MODELS", str(root))
    s = Store(root)
    s.model((DEFAULT_HOST, "library", "gemma4", "e2b"), b"GGUF-gemma4-e2b")
    s.model((DEFAULT_HOST, "library", "gemma3", "270m"), b"GGUF-gemma3-270m")
    s.model((DEFAULT_HOST, "library", "gemma3", "latest"), b"GGUF-gemma3-latest")
    s.model((DEFAULT_HOST, "someone", "tuned", "v1"), b"GGUF-tuned")
    s.model(("example.com:5000", "team", "model", "q4"), b"GGUF-private")
    return s


def test_parse_name():
    d = DEFAULT_HOST
    assert parse_name("gemma4:e2b") == ModelRef(d, "library", "gemma4", "e2b")
    assert parse_name("gemma3") == ModelRef(d, "library", "gemma3", "latest")
    assert parse_name("library/gemma3:270m") == ModelRef(d, "library", "gemma3", "270m")
    assert parse_name("someone/tuned") == ModelRef(d, "someone", "tuned", "latest")
    assert parse_name("example.com:5000/team/model:q4") == ModelRef("example.com:5000", "team", "model", "q4")
    assert parse_name("example.com:5000/team/model") == ModelRef("example.com:5000", "team", "model", "latest")
    assert parse_name("gemma4:e2b-it-q4_K_M").tag == "e2b-it-q4_K_M"
    assert parse_name("gemma4:e2b").name == "gemma4:e2b"
    assert parse_name("someone/tuned:v1").name == "someone/tuned:v1"
    assert str(parse_name("example.com/team/model:q4")) == "example.com/team/model:q4"


@pytest.mark.parametrize(
    "bad", ["", "  ", "a/b/c/d", "../etc:passwd", "gemma4:../../x", "gemma4:", ":tag", "x/../y", "ns/.hidden",
            "gemma4@sha256:abc", "a b", "gemma4:e2b/x", None]
)
def test_parse_name_rejects(bad):
    with pytest.raises(OllamaError):
        parse_name(bad)


def test_resolve(store):
    m = resolve("gemma4:e2b")
    assert m.blob.read_bytes() == b"GGUF-gemma4-e2b"
    assert m.blob.parent == store.root / "blobs" and m.blob.name.startswith("sha256-")
    assert m.size == len(b"GGUF-gemma4-e2b") and m.digest == _digest(b"GGUF-gemma4-e2b")
    assert m.name == "gemma4:e2b"
    assert resolve("library/gemma3:270m").blob.read_bytes() == b"GGUF-gemma3-270m"
    assert resolve("gemma3").blob.read_bytes() == b"GGUF-gemma3-latest"
    assert resolve("someone/tuned:v1").blob.read_bytes() == b"GGUF-tuned"
    assert resolve_blob("example.com:5000/team/model:q4").read_bytes() == b"GGUF-private"
    # Names match case-insensitively when the store wrote lower-case paths.
    assert resolve("Gemma4:E2B").blob == m.blob
    # An explicit root wins over the environment.
    assert resolve("gemma4:e2b", root=store.root).blob == m.blob


def test_default_store_location(monkeypatch, tmp_path):
    monkeypatch.delenv("OLLAMA_MODELS", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert ollama.models_dir() == tmp_path / ".ollama" / "models"
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "elsewhere"))
    assert ollama.models_dir() == tmp_path / "elsewhere"


def test_not_installed(store):
    with pytest.raises(ModelNotFoundError, match="'gemma4:e4b' is not installed"):
        resolve("gemma4:e4b")
    assert issubclass(ModelNotFoundError, OllamaError)


def test_list_models(store):
    models = list_models()
    assert [m.name for m in models] == [
        "example.com:5000/team/model:q4",
        "gemma3:270m",
        "gemma3:latest",
        "gemma4:e2b",
        "someone/tuned:v1",
    ]
    by = {m.name: m for m in models}
    assert by["gemma4:e2b"].size == len(b"GGUF-gemma4-e2b")
    assert by["gemma4:e2b"].digest == _digest(b"GGUF-gemma4-e2b")
    assert list_models(root=store.root / "nothing-here") == []


def _broken(store: Store, doc) -> None:
    store.manifest((DEFAULT_HOST, "library", "broken", "latest"), doc)


@pytest.mark.parametrize(
    "doc, message",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "no 'layers' list"),
        ({"schemaVersion": 2, "layers": "x"}, "no 'layers' list"),
        ({"schemaVersion": 2, "layers": [{"mediaType": "application/vnd.ollama.image.template",
                                           "digest": "sha256:" + "0" * 64, "size": 1}]}, "no layer with mediaType"),
        ({"schemaVersion": 2, "layers": [{"mediaType": MODEL_MEDIA_TYPE, "digest": "md5:abc", "size": 1}]},
         "bad digest"),
        ({"schemaVersion": 2, "layers": [{"mediaType": MODEL_MEDIA_TYPE, "digest": "sha256:" + "A" * 64, "size": 1}]},
         "bad digest"),
        ({"schemaVersion": 2, "layers": [{"mediaType": MODEL_MEDIA_TYPE, "digest": "sha256:../../x", "size": 1}]},
         "bad digest"),
        ({"schemaVersion": 2, "layers": [{"mediaType": MODEL_MEDIA_TYPE, "digest": "sha256:" + "1" * 64, "size": 5}]},
         "is missing"),
        ({"schemaVersion": 2, "layers": [{"mediaType": MODEL_MEDIA_TYPE, "digest": "sha256:" + "1" * 64}]},
         "bad size"),
    ],
)
def test_broken_manifests(store, doc, message):
    _broken(store, doc)
    with pytest.raises(OllamaError, match=message):
        resolve("broken")
    # Listing skips the broken one, or raises in strict mode.
    assert "broken:latest" not in [m.name for m in list_models()]
    with pytest.raises(OllamaError):
        list_models(strict=True)


def test_partial_blob(store):
    doc = store.model((DEFAULT_HOST, "library", "partial", "latest"), b"GGUF-complete-file")
    blob = store.root / "blobs" / doc["layers"][0]["digest"].replace(":", "-")
    blob.write_bytes(b"GGUF-com")
    with pytest.raises(OllamaError, match="partial download"):
        resolve("partial")


def test_non_utf8_manifest(store):
    p = store.manifest((DEFAULT_HOST, "library", "binary", "latest"), "x")
    p.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(OllamaError, match="not valid JSON"):
        resolve("binary")
