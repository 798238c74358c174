"""tools/pack_node_bundle.sh's pieces and tools/bench_pyodide_device.sh's joining and unpacking of them, one piece
per call as a device call carries them, on small fake archives (no Node, no GPU). The fake node only prints the
arguments it was given, so a run shows what the device script hands tools/bench_pyodide.mjs."""

import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACK = ROOT / "tools/pack_node_bundle.sh"
DEVICE = ROOT / "tools/bench_pyodide_device.sh"
NAMES = ("rullama-node-1.tar.xz", "rullama-node-2.tar.xz")


def _archive(path: Path, files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo("rullama-node/" + name)
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def _fake_bundle(folder: Path, commit: str = "abc1234") -> dict[str, bytes]:
    """The two archives, whole, as the packer made them before it cut them; random bytes, so xz cannot shrink
    them below a few pieces of 1,000 bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = __import__("random").Random(commit)
    noise = lambda n: bytes(rng.getrandbits(8) for _ in range(n))  # noqa: E731
    return {
        NAMES[0]: _archive(folder / NAMES[0], {"bin/node": b'#!/bin/sh\necho "node $*"\n', "bin/noise": noise(2500)}),
        NAMES[1]: _archive(folder / NAMES[1], {"node_modules/webgpu/dist/linux-x64/dawn.node": noise(1200),
                                               "wheels/rullama_py-0.1.0-py3-none-any.whl": b"wheel",
                                               "COMMIT": commit.encode() + b"\n"}),
    }


def _pack(*args, piece_bytes="1000"):
    env = dict(os.environ, PIECE_BYTES=piece_bytes)
    return subprocess.run(["sh", str(PACK), *map(str, args)], capture_output=True, text=True, env=env, timeout=60)


def _device(bundle: Path, unpack_dir: Path, *args):
    env = {k: v for k, v in os.environ.items() if k not in ("VK_DRIVER_FILES", "NATIVE", "DAWN")}
    env.update(BUNDLE=str(bundle), UNPACK_DIR=str(unpack_dir), VK_ICD_FILENAMES="/nowhere/icd.json")
    return subprocess.run(["sh", str(DEVICE), *map(str, args)], capture_output=True, text=True, env=env, timeout=60,
                          cwd=ROOT)


def _pieces(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _expected(archives: dict[str, bytes], piece_bytes: int) -> list[str]:
    names = []
    for name, data in archives.items():
        m = -(-len(data) // piece_bytes)
        names += [f"{name}.part{k}of{m}" for k in range(1, m + 1)]
    return sorted(names)


def test_recut_writes_pieces_that_join_to_the_archive(tmp_path):
    out = tmp_path / "bundle"
    archives = _fake_bundle(out)
    proc = _pack("--recut", out)
    assert proc.returncode == 0, proc.stderr
    assert _pieces(out) == _expected(archives, 1000)  # and the whole archives gone
    m1, m2 = (-(-len(archives[n]) // 1000) for n in NAMES)
    assert m1 >= 3 and m2 >= 2
    for name, m in zip(NAMES, (m1, m2)):
        pieces = [(out / f"{name}.part{k}of{m}").read_bytes() for k in range(1, m + 1)]
        assert all(len(p) == 1000 for p in pieces[:-1]) and 0 < len(pieces[-1]) <= 1000
        assert b"".join(pieces) == archives[name]
        assert f"{out}/{name}.part1of{m}: 1000 bytes" in proc.stdout
    # cut again, larger, from the pieces: the earlier cut's pieces are gone
    proc = _pack("--recut", out, piece_bytes="2000")
    assert proc.returncode == 0, proc.stderr
    assert _pieces(out) == _expected(archives, 2000)
    m1 = -(-len(archives[NAMES[0]]) // 2000)
    assert (b"".join((out / f"{NAMES[0]}.part{k}of{m1}").read_bytes() for k in range(1, m1 + 1))
            == archives[NAMES[0]])


def test_recut_refusals_are_sentences(tmp_path):
    out = tmp_path / "bundle"
    archives = _fake_bundle(out)
    assert _pack("--recut", out, piece_bytes="0").stderr.strip() == \
        "pack_node_bundle: PIECE_BYTES=0: give a whole number of bytes of 1 or more."
    assert _pack("--recut", out, piece_bytes="20MB").returncode == 1
    proc = _pack("--recut", out, piece_bytes="60000000")  # with the repository: over what a device call carries
    assert proc.returncode == 0 and "more than the 67108864 bytes a device call carries" in proc.stderr
    assert _pieces(out) == [f"{NAMES[0]}.part1of1", f"{NAMES[1]}.part1of1"]
    assert _pack("--recut", out).returncode == 0
    m = -(-len(archives[NAMES[0]]) // 1000)
    (out / f"{NAMES[0]}.part2of{m}").unlink()
    proc = _pack("--recut", out)
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"pack_node_bundle: {out} lacks {NAMES[0]}.part2of{m}: cannot cut {NAMES[0]} again."
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _pack("--recut", empty).stderr.strip() == (f"pack_node_bundle: {empty} holds no rullama-node-1.tar.xz or"
                                                      " rullama-node-2.tar.xz, whole or in pieces.")


def test_device_unpacks_each_archive_once_all_its_pieces_came_one_per_call(tmp_path):
    made = tmp_path / "made"
    _fake_bundle(made)
    assert _pack("--recut", made).returncode == 0
    pieces = _pieces(made)
    m1 = int(pieces[0].split("of")[-1])
    bundle, unpacked = tmp_path / "bundle", tmp_path / "unpack"
    bundle.mkdir()
    dest = unpacked / "rullama-node"

    proc = _device(bundle, unpacked, "--unpack")  # nothing carried yet
    assert proc.returncode == 0, proc.stderr
    assert (f"bench_pyodide_device: {NAMES[0]}: not unpacked: {bundle} holds none of its pieces"
            f" ({NAMES[0]}.part1ofM, ... from tools/pack_node_bundle.sh).") in proc.stderr
    proc = _device(bundle, unpacked, "m.gguf")
    assert proc.returncode == 1 and proc.stderr.startswith(f"bench_pyodide_device: no node in {dest}: {NAMES[0]}: ")

    for i, piece in enumerate(pieces):
        (bundle / piece).write_bytes((made / piece).read_bytes())
        proc = _device(bundle, unpacked, "--unpack")
        assert proc.returncode == 0, proc.stderr
        if i < m1 - 1:  # archive 1 not complete: the pieces it lacks, named
            lacks = ", ".join(f"{NAMES[0]}.part{k}of{m1}" for k in range(i + 2, m1 + 1))
            assert (f"bench_pyodide_device: {NAMES[0]}: not unpacked yet: {bundle} lacks {lacks}"
                    f" (it holds {i + 1} of the {m1} pieces).") in proc.stderr
            assert not (dest / "bin/node").exists()
        elif i == m1 - 1:
            assert f"bench_pyodide_device: {NAMES[0]}: unpacked ({m1} pieces) into {dest}." in proc.stderr
            assert (dest / "bin/node").exists() and proc.stdout.split() == ["bin"]
            os.utime(dest / "bin/node", ns=(1, 1))  # a new unpack would set it back
            proc = _device(bundle, unpacked, "m.gguf")  # archive 2 not there: a run says which pieces it lacks
            assert proc.returncode == 1
            assert proc.stderr.strip().startswith(f"bench_pyodide_device: no Dawn in {dest}: {NAMES[1]}: not unpacked")
        else:
            assert f"{NAMES[0]}: unpacked into {dest} before ({m1} pieces in {bundle})." in proc.stderr
            assert (dest / "bin/node").stat().st_mtime_ns == 1  # not unpacked again
    assert f"{NAMES[1]}: unpacked (" in proc.stderr
    assert (dest / "COMMIT").read_text() == "abc1234\n"
    assert (dest / "node_modules/webgpu/dist/linux-x64/dawn.node").exists()
    assert sorted(os.listdir(dest)) == [".unpacked-1", ".unpacked-2", "COMMIT", "bin", "node_modules", "wheels"]

    # a run: nothing unpacked again, nothing said about it; the fake node prints what it was given
    proc = _device(bundle, unpacked, "m.gguf", "--repeats", "1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (f"node tools/bench_pyodide.mjs --node-modules {dest}/node_modules --wheels"
                                   f" {dest}/wheels --commit abc1234 m.gguf --repeats 1")
    assert proc.stderr.strip() == "== Pyodide + Dawn"


def test_device_takes_a_newer_packing_only_once_it_is_whole(tmp_path):
    """A second packing (a new commit) with a different count of pieces arrives over the first: the first stays
    unpacked until the second is whole, and the first's pieces left in BUNDLE do not mix in."""
    bundle, unpacked = tmp_path / "bundle", tmp_path / "unpack"
    _fake_bundle(bundle, "old1234")
    assert _pack("--recut", bundle, piece_bytes="2000").returncode == 0
    assert _device(bundle, unpacked, "--unpack").returncode == 0
    dest = unpacked / "rullama-node"
    assert (dest / "COMMIT").read_text() == "old1234\n"

    made = tmp_path / "made"
    _fake_bundle(made, "new5678")
    assert _pack("--recut", made).returncode == 0
    new2 = [n for n in _pieces(made) if n.startswith(NAMES[1])]
    m2 = len(new2)
    for piece in new2:
        later = (made / piece).stat().st_mtime + 10
        (bundle / piece).write_bytes((made / piece).read_bytes())
        os.utime(bundle / piece, (later, later))
        proc = _device(bundle, unpacked, "--unpack")
        if piece != new2[-1]:
            assert (f"{NAMES[1]}: a newer packing is not unpacked yet: {bundle} lacks" in proc.stderr
                    and f"of the {m2} pieces); the one unpacked before stays in {dest} meanwhile."
                    in proc.stderr)
            assert (dest / "COMMIT").read_text() == "old1234\n"
    assert f"{NAMES[1]}: unpacked ({m2} pieces) into {dest}." in proc.stderr
    assert (dest / "COMMIT").read_text() == "new5678\n"


def test_device_takes_whole_archives_and_says_when_pieces_do_not_join(tmp_path):
    bundle, unpacked = tmp_path / "bundle", tmp_path / "unpack"
    _fake_bundle(bundle)
    proc = _device(bundle, unpacked, "--unpack")
    dest = unpacked / "rullama-node"
    assert proc.returncode == 0, proc.stderr
    assert f"{NAMES[0]}: unpacked (the whole archive) into {dest}." in proc.stderr
    assert (dest / "COMMIT").read_text() == "abc1234\n"

    other = tmp_path / "other"
    _fake_bundle(other, "xyz9876")
    bad = tmp_path / "bad"
    for folder in (bundle, other):
        assert _pack("--recut", folder).returncode == 0
    bad.mkdir()
    for i, piece in enumerate(p for p in _pieces(bundle) if p.startswith(NAMES[1])):
        (bad / piece).write_bytes(((bundle if i == 0 else other) / piece).read_bytes())
    proc = _device(bad, tmp_path / "unpack2", "--unpack")
    assert proc.returncode == 1
    assert proc.stderr.strip().endswith(f"bench_pyodide_device: could not unpack {NAMES[1]} from its"
                                        f" {i + 1} pieces in {bad}: are they all from one packing?")


@pytest.mark.parametrize("name", ["rullama-node-1.tar.xz.part1of2.bak", "rullama-node-1.tar.xz.part01of2",
                                  "rullama-node-1.tar.xz.partof2", "rullama-node-1.tar.xz.part1of2of3"])
def test_device_ignores_what_is_not_a_piece(tmp_path, name):
    (tmp_path / "bundle").mkdir()
    (tmp_path / "bundle" / name).write_bytes(b"x")
    proc = _device(tmp_path / "bundle", tmp_path / "unpack", "--unpack")
    assert proc.returncode == 0 and f"{NAMES[0]}: not unpacked: " in proc.stderr and "holds none" in proc.stderr
