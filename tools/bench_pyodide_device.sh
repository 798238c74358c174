#!/bin/sh
# On the GPU machine, from the repository root: unpacks tools/pack_node_bundle.sh's archives into /tmp and runs
# the benchmark inside Pyodide (tools/bench_pyodide.mjs: Dawn, the browser's WebGPU, on the real GPU); when
# NATIVE is set, `rullama bench` natively first with the same options, so both engines go into one run.
#
#   VK_DRIVER_FILES=ICD.json [BUNDLE=.bench/node-bundle] [NATIVE="python3 -m rullama_py"] [NATIVE_F32=1] \
#     [DAWN=backend=vulkan] sh tools/bench_pyodide_device.sh MODEL.gguf [--prompt-tokens 128 --gen-tokens 64
#     --repeats 3 --ctx 1024 --depth 0 --record FILE --model-name NAME]
#   sh tools/bench_pyodide_device.sh --unpack     # only unpack the archives BUNDLE holds now
#
# VK_DRIVER_FILES: the GPU's Vulkan driver manifest (VK_ICD_FILENAMES also does, e.g. SwiftShader's to try this
# on a machine without a GPU). The archives may come one per call (each is about the room one upload leaves):
# what is unpacked stays in /tmp while the machine is held, and `--unpack` takes the first one.
# NATIVE: the command that runs rullama-py natively (wgpu-py and the Vulkan loader installed by the caller);
# NATIVE_F32=1 runs it once more with shader-f16 turned off (RULLAMA_DISABLE_FEATURES=shader-f16): the kernels
# Dawn runs where it offers no shader-f16, as on NVIDIA under Linux. The records carry the features either way.
# The commit is the bundle's (COMMIT: the tree the wheel was built from), given to both engines.
set -eu

fail() { echo "bench_pyodide_device: $*" >&2; exit 1; }
bundle=${BUNDLE:-.bench/node-bundle}
dest=${UNPACK_DIR:-/tmp}/rullama-node
for n in 1 2; do
  a=$bundle/rullama-node-$n.tar.xz
  if [ -f "$a" ] && { [ ! -f "$dest/.unpacked-$n" ] || [ "$a" -nt "$dest/.unpacked-$n" ]; }; then
    mkdir -p "$(dirname "$dest")"
    tar -xJf "$a" -C "$(dirname "$dest")" || fail "could not unpack $a."
    touch "$dest/.unpacked-$n"
  fi
done
[ "${1:-}" = --unpack ] && { ls "$dest"; exit 0; }
[ $# -ge 1 ] || fail "give the model file (and rullama bench's options)."
[ -x "$dest/bin/node" ] || fail "no node in $dest: carry rullama-node-1.tar.xz into $bundle (tools/pack_node_bundle.sh)."
[ -f "$dest/node_modules/webgpu/dist/linux-x64/dawn.node" ] || fail "no Dawn in $dest: carry rullama-node-2.tar.xz into $bundle."
[ -n "${VK_DRIVER_FILES:-}${VK_ICD_FILENAMES:-}" ] || fail "set VK_DRIVER_FILES to the GPU's Vulkan driver manifest (its icd.json)."
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}
[ -n "${VK_DRIVER_FILES:-}" ] && export VK_DRIVER_FILES
commit=$(cat "$dest/COMMIT")

if [ -n "${NATIVE:-}" ]; then
  echo "== native: $NATIVE bench $*" >&2
  $NATIVE bench --commit "$commit" "$@"
  if [ "${NATIVE_F32:-}" = 1 ]; then
    echo "== native, shader-f16 off" >&2
    RULLAMA_DISABLE_FEATURES=shader-f16 $NATIVE bench --commit "$commit" "$@"
  fi
fi
echo "== Pyodide + Dawn" >&2
[ -n "${DAWN:-}" ] && set -- --dawn "$DAWN" "$@"
set -- --node-modules "$dest/node_modules" --wheels "$dest/wheels" --commit "$commit" "$@"
"$dest/bin/node" tools/bench_pyodide.mjs "$@"
