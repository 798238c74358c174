#!/bin/sh
# Packs what tools/bench_pyodide.mjs needs on a machine without Node, npm or Pyodide (the GPU machine) into two
# archives of at most 26 MB each, for tools/bench_pyodide_device.sh to unpack and run there:
#
#   OUTDIR/rullama-node-1.tar.xz   rullama-node/bin/node: this machine's Node (`command -v node`, or $NODE), one
#                                  binary that needs only libc and libstdc++; debug symbols stripped when `strip`
#                                  is here (the dynamic symbols that dawn.node binds to stay)
#   OUTDIR/rullama-node-2.tar.xz   rullama-node/node_modules/webgpu: index.js, package.json, dist/linux-x64/dawn.node,
#                                      and this machine's Vulkan loader (libvulkan.so.1) beside dawn.node, where
#                                      Dawn looks for it first (nothing is installed into the system)
#                                  rullama-node/node_modules/pyodide: the files Pyodide 0.27.7 reads to start and to
#                                      load numpy and micropip (measured with strace: package.json, pyodide.mjs,
#                                      pyodide.asm.js, pyodide.asm.wasm, python_stdlib.zip, pyodide-lock.json, and
#                                      the numpy, micropip and packaging wheels)
#                                  rullama-node/wheels: rullama_py built now from this working tree, gguf, pyyaml
#                                  rullama-node/COMMIT: `git rev-parse --short HEAD`, with "-dirty" when src/,
#                                      shaders/ or pyproject.toml differ from it (the wheel holds the working tree)
#
# Usage: tools/pack_node_bundle.sh OUTDIR     (needs web/node_modules and web/dist/wheels: tools/setup.sh and
#                                              tools/pyodide_dist.py; $PYTHON builds the wheel, default the
#                                              project's .venv, else python3)
set -eu

fail() { echo "pack_node_bundle: $*" >&2; exit 1; }
[ $# -eq 1 ] || fail "usage: tools/pack_node_bundle.sh OUTDIR"
root=$(cd "$(dirname "$0")/.." && pwd)
out=$1
limit=26000000  # bytes per archive

node=${NODE:-$(command -v node || true)}
[ -n "$node" ] && [ -x "$node" ] || fail "no node here: install Node 20 or later, or give NODE=/path/to/node."
major=$("$node" -p 'process.versions.node.split(".")[0]')
[ "$major" -ge 20 ] || fail "$node is Node $major: the tool needs 20 or later (fs.openAsBlob, File)."
mods=$root/web/node_modules
[ -f "$mods/webgpu/dist/linux-x64/dawn.node" ] || fail "$mods/webgpu is missing: run npm ci in web/."
[ -f "$mods/pyodide/pyodide-lock.json" ] || fail "$mods/pyodide is missing: run npm ci in web/."
if [ -n "${PYTHON:-}" ]; then py=$PYTHON; elif [ -x "$root/.venv/bin/python" ]; then py=$root/.venv/bin/python; else py=python3; fi

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
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

rm -f "$out/rullama-node-1.tar.xz" "$out/rullama-node-2.tar.xz"
tar -C "$stage" -cf - rullama-node/bin | xz -9 -T0 > "$out/rullama-node-1.tar.xz"
tar -C "$stage" -cf - rullama-node/node_modules rullama-node/wheels rullama-node/COMMIT | xz -9 -T0 > "$out/rullama-node-2.tar.xz"

for a in "$out/rullama-node-1.tar.xz" "$out/rullama-node-2.tar.xz"; do
  size=$(wc -c < "$a")
  echo "$a: $size bytes"
  [ "$size" -le "$limit" ] || fail "$a is $size bytes, over the $limit a device upload leaves."
done
echo "commit $commit; unpacked: $(du -sh "$b" | cut -f1)"
