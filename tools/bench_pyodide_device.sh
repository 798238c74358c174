#!/bin/sh
# On the GPU machine, from the repository root: joins and unpacks tools/pack_node_bundle.sh's archives into /tmp and
# runs the benchmark inside Pyodide (tools/bench_pyodide.mjs: Dawn, the browser's WebGPU, on the real GPU); when
# NATIVE is set, `rullama bench` natively first with the same options, so both engines go into one run.
#
#   VK_DRIVER_FILES=ICD.json [BUNDLE=.bench/node-bundle] [NATIVE="python3 -m rullama_py"] [NATIVE_F32=1] \
#     [DAWN=backend=vulkan] sh tools/bench_pyodide_device.sh MODEL.gguf [--prompt-tokens 128 --gen-tokens 64
#     --repeats 3 --ctx 1024 --depth 0 --record FILE --model-name NAME]
#   sh tools/bench_pyodide_device.sh --unpack     # only unpack what BUNDLE holds now, and say what it lacks
#
# VK_DRIVER_FILES: the GPU's Vulkan driver manifest (VK_ICD_FILENAMES also does, e.g. SwiftShader's to try this
# on a machine without a GPU). The pieces (rullama-node-N.tar.xz.partKofM, at most 20 MB each: about the room one
# device call leaves beside the repository) come one per call into BUNDLE and stay there: an archive is joined
# and unpacked into /tmp (UNPACK_DIR) on the first call that finds all M of its pieces, and stays unpacked while
# the machine is held (.unpacked-N: again only when a newer piece comes). Until then every call names the pieces
# still missing. A whole rullama-node-N.tar.xz in BUNDLE (the packing before pieces) is unpacked as well.
# NATIVE: the command that runs rullama-py natively (wgpu-py and the Vulkan loader installed by the caller);
# NATIVE_F32=1 runs it once more with shader-f16 turned off (RULLAMA_DISABLE_FEATURES=shader-f16): the kernels
# Dawn runs where it offers no shader-f16, as on NVIDIA under Linux. The records carry the features either way.
# The commit is the bundle's (COMMIT: the tree the wheel was built from), given to both engines.
set -eu

fail() { echo "bench_pyodide_device: $*" >&2; exit 1; }
say() { echo "bench_pyodide_device: $*" >&2; }
bundle=${BUNDLE:-.bench/node-bundle}
dest=${UNPACK_DIR:-/tmp}/rullama-node
only_unpack=
[ "${1:-}" = --unpack ] && only_unpack=1

# unpack N: joins rullama-node-N.tar.xz from its pieces in $bundle (or takes it whole) and unpacks it into $dest
# when all the pieces are there and one is newer than what was unpacked last; sets $state to a sentence saying
# where archive N stands (said at once, in a run, when it was unpacked now or lacks pieces; --unpack says all)
unpack() {
  name=rullama-node-$1.tar.xz
  mark=$dest/.unpacked-$1
  newest=
  for f in "$bundle/$name".part*of*; do  # the newest piece's M is the packing's (older packings' pieces aside)
    s=${f#"$bundle/$name".part}
    case ${s%%of*}/${s#*of} in /*|*/|*[!0-9/]*|0*|*/0*) continue;; esac
    [ -f "$f" ] || continue
    if [ -z "$newest" ] || [ "$f" -nt "$newest" ]; then newest=$f; fi
  done
  if [ -n "$newest" ]; then
    m=${newest##*of}
    pieces=
    missing=
    have=0
    fresh=
    k=1
    while [ "$k" -le "$m" ]; do
      f=$bundle/$name.part${k}of$m
      if [ -f "$f" ]; then
        have=$((have + 1))
        [ -f "$mark" ] && [ ! "$f" -nt "$mark" ] || fresh=1
      else
        missing="${missing:+$missing, }$name.part${k}of$m"
      fi
      k=$((k + 1))
    done
    what="$m pieces"
    [ "$m" -eq 1 ] && what="1 piece"
  elif [ -f "$bundle/$name" ]; then
    m=0
    missing=
    fresh=
    [ -f "$mark" ] && [ ! "$bundle/$name" -nt "$mark" ] || fresh=1
    newest=$bundle/$name
    what="the whole archive"
  elif [ -f "$mark" ]; then
    state="$name: unpacked into $dest before (no pieces of it in $bundle now)."
    return 0
  else
    state="$name: not unpacked: $bundle holds none of its pieces ($name.part1ofM, ... from tools/pack_node_bundle.sh)."
    return 0
  fi
  if [ -n "$missing" ]; then
    if [ -f "$mark" ] && [ -z "$fresh" ]; then
      state="$name: unpacked into $dest before (not all of its pieces are in $bundle now)."
    elif [ -f "$mark" ]; then
      state="$name: a newer packing is not unpacked yet: $bundle lacks $missing (it holds $have of the $m pieces);"
      state="$state the one unpacked before stays in $dest meanwhile."
      [ -n "$only_unpack" ] || say "$state"
    else
      state="$name: not unpacked yet: $bundle lacks $missing (it holds $have of the $m pieces)."
      [ -n "$only_unpack" ] || say "$state"
    fi
  elif [ -n "$fresh" ]; then
    mkdir -p "$dest"
    if [ "$m" -eq 0 ]; then
      tar -xJf "$newest" -C "$(dirname "$dest")" || fail "could not unpack $newest."
    else
      k=1
      while [ "$k" -le "$m" ]; do
        cat "$bundle/$name.part${k}of$m"
        k=$((k + 1))
      done | tar -xJf - -C "$(dirname "$dest")" \
        || fail "could not unpack $name from its $m pieces in $bundle: are they all from one packing?"
    fi
    touch -r "$newest" "$mark"  # the newest piece's time: a clock ahead of this machine's does not unpack it again
    state="$name: unpacked ($what) into $dest."
    [ -n "$only_unpack" ] || say "$state"
  else
    state="$name: unpacked into $dest before ($what in $bundle)."
  fi
}
unpack 1
state1=$state
unpack 2
state2=$state
if [ -n "$only_unpack" ]; then
  say "$state1"
  say "$state2"
  [ -d "$dest" ] && ls "$dest"
  exit 0
fi
[ $# -ge 1 ] || fail "give the model file (and rullama bench's options)."
[ -x "$dest/bin/node" ] || fail "no node in $dest: $state1"
[ -f "$dest/node_modules/webgpu/dist/linux-x64/dawn.node" ] || fail "no Dawn in $dest: $state2"
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
