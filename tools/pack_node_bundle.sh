#!/bin/sh
# Packs what tools/bench_pyodide.mjs needs on a machine without Node, npm or Pyodide (the GPU machine) into two
# xz archives, cut into pieces of at most PIECE_BYTES bytes each (default 20,000,000), for
# tools/bench_pyodide_device.sh to join, unpack and run there. A device call carries at most 64 MiB (67,108,864
# bytes) together with the repository's tracked files (41.2 MB as this is written: `git ls-files -z | xargs -0 du
# -cb | tail -1`), so one piece goes per call; what a call carries into the ignored bundle folder stays there for
# the next call, and the device side unpacks an archive once all its pieces are there.
#
#   OUTDIR/rullama-node-1.tar.xz.partKofM   rullama-node/bin/node: this machine's Node (`command -v node`, or
#                                           $NODE), one binary that needs only libc and libstdc++; debug symbols
#                                           stripped when `strip` is here (the dynamic symbols that dawn.node binds
#                                           to stay). About 21.9 MB of xz: 2 pieces
#   OUTDIR/rullama-node-2.tar.xz.partKofM   rullama-node/node_modules/webgpu: index.js, package.json,
#                                               dist/linux-x64/dawn.node, and this machine's Vulkan loader
#                                               (libvulkan.so.1) beside dawn.node, where Dawn looks for it first
#                                               (nothing is installed into the system)
#                                           rullama-node/node_modules/pyodide: the files Pyodide 0.27.7 reads to
#                                               start and to load numpy and micropip (measured with strace:
#                                               package.json, pyodide.mjs, pyodide.asm.js, pyodide.asm.wasm,
#                                               python_stdlib.zip, pyodide-lock.json, and the numpy, micropip and
#                                               packaging wheels)
#                                           rullama-node/wheels: rullama_py built now from this working tree, gguf,
#                                               pyyaml
#                                           rullama-node/COMMIT: `git rev-parse --short HEAD`, with "-dirty" when
#                                               src/, shaders/ or pyproject.toml differ from it (the wheel holds
#                                               the working tree). About 13.4 MB of xz: 1 piece
#
# Piece K of M holds bytes (K-1)*PIECE_BYTES onwards of its archive: `cat` pieces 1 to M, in order, give the
# archive back. M is in every piece's name, so the device side knows from any one piece which ones it still lacks.
#
# Usage: tools/pack_node_bundle.sh OUTDIR          (needs web/node_modules and web/dist/wheels: tools/setup.sh and
#                                                   tools/pyodide_dist.py; $PYTHON builds the wheel, default the
#                                                   project's .venv, else python3)
#        tools/pack_node_bundle.sh --recut OUTDIR  (cuts the archives in OUTDIR again to PIECE_BYTES, without
#                                                   building anything: whole archives, or all pieces of each)
set -eu

fail() { echo "pack_node_bundle: $*" >&2; exit 1; }
recut=
if [ "${1:-}" = --recut ]; then recut=1; shift; fi
[ $# -eq 1 ] || fail "usage: tools/pack_node_bundle.sh [--recut] OUTDIR"
root=$(cd "$(dirname "$0")/.." && pwd)
out=$1
limit=${PIECE_BYTES:-20000000}  # bytes per piece
case $limit in ''|0*|*[!0-9]*) fail "PIECE_BYTES=$limit: give a whole number of bytes of 1 or more.";; esac
room=67108864  # bytes one device call carries, the repository's tracked files included

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

# cut_pieces ARCHIVE: writes OUTDIR/NAME.partKofM, K = 1..M, pieces of at most $limit bytes, and removes whatever
# OUTDIR held of NAME before (the whole archive or pieces of an earlier cut)
cut_pieces() {
  name=$(basename "$1")
  size=$(wc -c < "$1")
  m=$(( (size + limit - 1) / limit ))
  [ "$m" -ge 1 ] || m=1
  rm -f "$out/$name" "$out/$name".part*of*
  k=1
  while [ "$k" -le "$m" ]; do
    dd if="$1" of="$out/$name.part${k}of$m" bs="$limit" skip=$((k - 1)) count=1 2>/dev/null \
      || fail "could not write $out/$name.part${k}of$m."
    echo "$out/$name.part${k}of$m: $(wc -c < "$out/$name.part${k}of$m") bytes"
    k=$((k + 1))
  done
}

# newest_piece DIR/NAME: sets $newest to the newest DIR/NAME.partKofM (K and M numbers), or to nothing
newest_piece() {
  newest=
  for f in "$1".part*of*; do
    s=${f#"$1".part}
    case ${s%%of*}/${s#*of} in /*|*/|*[!0-9/]*|0*|*/0*) continue;; esac
    [ -f "$f" ] || continue
    if [ -z "$newest" ] || [ "$f" -nt "$newest" ]; then newest=$f; fi
  done
}

# the tracked files a device call carries beside one piece (a file the working tree lacks counts 0)
tracked=$(git -C "$root" ls-files -z 2>/dev/null | (cd "$root" && xargs -0 stat -c %s 2>/dev/null) \
  | awk '{ s += $1 } END { print s + 0 }')
check_room() {
  [ $((tracked + limit)) -le "$room" ] || echo "pack_node_bundle: pieces of $limit bytes and the repository's" \
    "$tracked bytes of tracked files are more than the $room bytes a device call carries: give a smaller" \
    "PIECE_BYTES." >&2
}

if [ -n "$recut" ]; then
  [ -d "$out" ] || fail "$out: no such folder."
  found=
  for n in 1 2; do
    name=rullama-node-$n.tar.xz
    newest_piece "$out/$name"
    if [ -n "$newest" ]; then
      m=${newest##*of}
      k=1
      while [ "$k" -le "$m" ]; do
        [ -f "$out/$name.part${k}of$m" ] || fail "$out lacks $name.part${k}of$m: cannot cut $name again."
        cat "$out/$name.part${k}of$m"
        k=$((k + 1))
      done > "$stage/$name"
    elif [ -f "$out/$name" ]; then
      cp "$out/$name" "$stage/$name"
    else
      continue
    fi
    cut_pieces "$stage/$name"
    found=1
  done
  [ -n "$found" ] || fail "$out holds no rullama-node-1.tar.xz or rullama-node-2.tar.xz, whole or in pieces."
  check_room
  exit 0
fi

node=${NODE:-$(command -v node || true)}
[ -n "$node" ] && [ -x "$node" ] || fail "no node here: install Node 20 or later, or give NODE=/path/to/node."
major=$("$node" -p 'process.versions.node.split(".")[0]')
[ "$major" -ge 20 ] || fail "$node is Node $major: the tool needs 20 or later (fs.openAsBlob, File)."
mods=$root/web/node_modules
[ -f "$mods/webgpu/dist/linux-x64/dawn.node" ] || fail "$mods/webgpu is missing: run npm ci in web/."
[ -f "$mods/pyodide/pyodide-lock.json" ] || fail "$mods/pyodide is missing: run npm ci in web/."
if [ -n "${PYTHON:-}" ]; then py=$PYTHON; elif [ -x "$root/.venv/bin/python" ]; then py=$root/.venv/bin/python; else py=python3; fi

b=$stage/rullama-node
mkdir -p "$b/bin" "$b/node_modules/webgpu/dist/linux-x64" "$b/node_modules/pyodide" "$b/wheels" "$out"

cp "$node" "$b/bin/node"
if command -v strip >/dev/null; then strip "$b/bin/node"; fi
"$b/bin/node" --version >/dev/null || fail "the stripped node does not run."

w=$mods/webgpu
cp "$w/index.js" "$w/package.json" "$b/node_modules/webgpu/"
cp "$w/dist/linux-x64/dawn.node" "$b/node_modules/webgpu/dist/linux-x64/"
vulkan=$(ldconfig -p 2>/dev/null | awk '/libvulkan\.so\.1 .*x86-64/ {print $NF; exit}')
if [ -n "$vulkan" ]; then
  cp -L "$vulkan" "$b/node_modules/webgpu/dist/linux-x64/libvulkan.so.1"
else
  echo "pack_node_bundle: no Vulkan loader here (libvulkan.so.1): the GPU machine must have one installed." >&2
fi

p=$mods/pyodide
for f in package.json pyodide.mjs pyodide.asm.js pyodide.asm.wasm python_stdlib.zip pyodide-lock.json; do
  cp "$p/$f" "$b/node_modules/pyodide/"
done
# numpy, micropip and what they depend on (packaging), by the lock file's names
for f in $("$node" -e '
  const lock = require(process.argv[1]).packages, seen = new Set();
  const add = n => { if (!seen.has(n)) { seen.add(n); lock[n].depends.forEach(add); } };
  ["numpy", "micropip"].forEach(add);
  console.log([...seen].map(n => lock[n].file_name).join("\n"));' "$p/pyodide-lock.json"); do
  [ -f "$p/$f" ] || fail "$p/$f is missing: run tools/pyodide_dist.py."
  cp "$p/$f" "$b/node_modules/pyodide/"
done

"$py" -m pip wheel -q --no-deps --no-build-isolation -w "$b/wheels" "$root" >/dev/null
for name in gguf pyyaml; do
  whl=$(ls "$root/web/dist/wheels/$name"-*.whl 2>/dev/null | head -n 1)
  [ -n "$whl" ] || fail "no $name wheel in web/dist/wheels: run tools/pyodide_dist.py."
  cp "$whl" "$b/wheels/"
done

commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ "$commit" != unknown ] && [ -n "$(git -C "$root" status --porcelain -- src shaders pyproject.toml)" ]; then
  commit=$commit-dirty
fi
echo "$commit" > "$b/COMMIT"

tar -C "$stage" -cf - rullama-node/bin | xz -9 -T0 > "$stage/rullama-node-1.tar.xz"
tar -C "$stage" -cf - rullama-node/node_modules rullama-node/wheels rullama-node/COMMIT | xz -9 -T0 \
  > "$stage/rullama-node-2.tar.xz"
cut_pieces "$stage/rullama-node-1.tar.xz"
cut_pieces "$stage/rullama-node-2.tar.xz"
check_room
echo "commit $commit; unpacked: $(du -sh "$b" | cut -f1)"
