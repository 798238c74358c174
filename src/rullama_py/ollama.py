"""Find GGUF files in a local Ollama model store, so models people already pulled open without a copy.

    path = resolve("gemma4:e2b").blob        # the GGUF blob of the model layer
    for m in list_models(): print(m.name, m.size, m.digest)

Store layout (`$OLLAMA_MODELS`, default `~/.ollama/models`):

    manifests/<host>/<namespace>/<model>/<tag>   JSON (schemaVersion 2): config + layers[], each with
                                                 mediaType, digest "sha256:<hex>", size
    blobs/sha256-<hex>                           content-addressed files; the weights are the layer with
                                                 mediaType application/vnd.ollama.image.model

Names are `[host/][namespace/]model[:tag]`: host defaults to Ollama's registry, namespace to `library`,
tag to `latest`. A name is turned into a path, so every part is validated first (no `..`, no separators).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
MODEL_MEDIA_TYPE = "application/vnd.ollama.image.model"

# Ollama's own rules, roughly: alphanumerics first, then alphanumerics, '_', '-', '.'; a host may add a port.
_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,79}$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,79}$")
_HOST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,349}(:[0-9]{1,5})?$")
_DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")


class OllamaError(Exception):
    """A model name is invalid, not installed, or its manifest or blob is broken."""


class ModelNotFoundError(OllamaError, LookupError):
    """No manifest for this name in the store."""


@dataclass(frozen=True)
class ModelRef:
    host: str
    namespace: str
    model: str
    tag: str

    @property
    def name(self) -> str:
        """The shortest name that means this model: `gemma4:e2b`, `ns/model:tag`, or `host/ns/model:tag`."""
        if self.host != DEFAULT_HOST:
            return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"
        if self.namespace != DEFAULT_NAMESPACE:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.model}:{self.tag}"

    @property
    def parts(self) -> tuple:
        return (self.host, self.namespace, self.model, self.tag)

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class OllamaModel:
    name: str  # short display name (see ModelRef.name)
    ref: ModelRef
    manifest: Path
    blob: Path  # the GGUF file
    size: int  # bytes of the model layer (the GGUF blob)
    digest: str  # "sha256:<hex>" of the model layer


def parse_name(name: str) -> ModelRef:
    """Split `[host/][namespace/]model[:tag]` and fill in the defaults. Raises OllamaError if invalid."""
    if not isinstance(name, str) or not name.strip():
        raise OllamaError(f"invalid model name {name!r}")
    s = name.strip()
    if "@" in s:
        raise OllamaError(f"invalid model name {name!r}: digests (@sha256:...) are not supported, use a tag")
    # The tag is after the last ':' that follows the last '/' (a host may carry ':port').
    slash = s.rfind("/")
    colon = s.rfind(":")
    tag = DEFAULT_TAG
    if colon > slash:
        s, tag = s[:colon], s[colon + 1 :]
    parts = s.split("/")
    if len(parts) == 1:
        host, ns, model = DEFAULT_HOST, DEFAULT_NAMESPACE, parts[0]
    elif len(parts) == 2:
        host, (ns, model) = DEFAULT_HOST, parts
    elif len(parts) == 3:
        host, ns, model = parts
    else:
        raise OllamaError(f"invalid model name {name!r}: expected [host/][namespace/]model[:tag]")
    for what, value, pattern in (("host", host, _HOST), ("namespace", ns, _PART), ("model", model, _PART), ("tag", tag, _TAG)):
        if not pattern.match(value) or ".." in value:
            raise OllamaError(f"invalid model name {name!r}: bad {what} {value!r}")
    return ModelRef(host, ns, model, tag)


def models_dir() -> Path:
    """The Ollama store: $OLLAMA_MODELS, else ~/.ollama/models."""
    env = os.environ.get("OLLAMA_MODELS")
    return Path(env).expanduser() if env else Path.home() / ".ollama" / "models"


def _manifest_path(root: Path, ref: ModelRef) -> Path | None:
    base = root / "manifests"
    exact = base.joinpath(*ref.parts)
    if exact.is_file():
        return exact
    # Some Ollama versions write lower-cased paths; names match case-insensitively.
    lower = base.joinpath(*(p.lower() for p in ref.parts))
    if lower.is_file():
        return lower
    return None


def blob_path(root: Path, digest: str) -> Path:
    """`blobs/sha256-<hex>` for a digest `sha256:<hex>`; OllamaError on any other digest format."""
    m = _DIGEST.match(digest) if isinstance(digest, str) else None
    if not m:
        raise OllamaError(f"bad digest {digest!r} (expected 'sha256:' and 64 lowercase hex digits)")
    return Path(root) / "blobs" / f"sha256-{m.group(1)}"


def _load(root: Path, ref: ModelRef, manifest: Path) -> OllamaModel:
    where = f"manifest {manifest}"
    try:
        doc = json.loads(manifest.read_bytes())
    except (OSError, ValueError) as e:  # ValueError covers JSONDecodeError and UnicodeDecodeError
        raise OllamaError(f"{where}: not valid JSON ({e})") from None
    layers = doc.get("layers") if isinstance(doc, dict) else None
    if not isinstance(layers, list):
        raise OllamaError(f"{where}: no 'layers' list")
    models = [x for x in layers if isinstance(x, dict) and x.get("mediaType") == MODEL_MEDIA_TYPE]
    if not models:
        raise OllamaError(f"{where}: no layer with mediaType {MODEL_MEDIA_TYPE} (not a model, or a broken pull)")
    layer = models[0]
    digest = layer.get("digest")
    try:
        blob = blob_path(root, digest)
    except OllamaError as e:
        raise OllamaError(f"{where}: model layer has a {e}") from None
    size = layer.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise OllamaError(f"{where}: model layer has a bad size {size!r}")
    try:
        actual = blob.stat().st_size
    except FileNotFoundError:
        raise OllamaError(f"{where}: model blob {blob.name} is missing from {blob.parent}") from None
    if actual != size:
        raise OllamaError(f"{where}: model blob {blob.name} is {actual} bytes, the manifest says {size} (partial download?)")
    return OllamaModel(name=ref.name, ref=ref, manifest=manifest, blob=blob, size=size, digest=digest)


def resolve(name: str, root: str | os.PathLike | None = None) -> OllamaModel:
    """The installed model `name` (e.g. "gemma4:e2b"), with the path of its GGUF blob."""
    ref = parse_name(name)
    root = Path(root) if root is not None else models_dir()
    manifest = _manifest_path(root, ref)
    if manifest is None:
        raise ModelNotFoundError(f"model {name!r} is not installed in {root} (no manifest for {ref.name})")
    return _load(root, ref, manifest)


def resolve_blob(name: str, root: str | os.PathLike | None = None) -> Path:
    """Shortcut: the GGUF blob path of model `name`."""
    return resolve(name, root).blob


def list_models(root: str | os.PathLike | None = None, strict: bool = False) -> list[OllamaModel]:
    """Installed models, sorted by name. Broken manifests are skipped, or raise OllamaError if `strict`."""
    root = Path(root) if root is not None else models_dir()
    base = root / "manifests"
    out = []
    if not base.is_dir():
        return out
    for manifest in sorted(base.glob("*/*/*/*")):
        if not manifest.is_file():
            continue
        rel = manifest.relative_to(base).parts
        try:
            ref = parse_name(f"{rel[0]}/{rel[1]}/{rel[2]}:{rel[3]}")
            out.append(_load(root, ref, manifest))
        except OllamaError:
            if strict:
                raise
    out.sort(key=lambda m: m.name)
    return out
