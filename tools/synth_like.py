#!/usr/bin/env python3
"""A GGUF with the exact layout of a real one (metadata, tensor names, types, shapes, offsets) but random
weights, for benchmarks on machines that cannot receive the real file.

    python tools/synth_like.py extract MODEL.gguf DIR   # DIR/header.bin (the file up to its tensor data) + DIR/tensors.json
    python tools/synth_like.py fill DIR OUT.gguf         # header + random, valid blocks of every tensor's type

Speed does not depend on the weight values, but NaN or infinite scales could send kernels down other paths,
so every block's f16 scale fields get small finite values.
"""

import asyncio
import json
import sys
from pathlib import Path

import numpy as np

# Byte offsets of the f16 scale fields inside one block, per GGML type (ggml-common.h layouts).
SCALE_FIELDS = {"q8_0": (0,), "q4_0": (0,), "q5_0": (0,), "q4_1": (0, 2), "q5_1": (0, 2), "q4_k": (0, 2),
                "q5_k": (0, 2), "q6_k": (208,), "q2_k": (80, 82), "q3_k": (108,)}


async def extract(model: str, out: str) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    from rullama_py.gguf_file import GGUFFile

    gf = await GGUFFile.open(model)
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    (d / "header.bin").write_bytes(bytes(await gf.source.read(0, gf.data_offset)))
    tensors = [{"name": t.name, "type": t.type_name, "offset": t.offset - gf.data_offset, "nbytes": t.nbytes,
                "block_bytes": t.type_size} for t in gf.tensors.values()]
    end = max(t.offset + t.nbytes for t in gf.tensors.values())
    (d / "tensors.json").write_text(json.dumps({"data_bytes": end - gf.data_offset, "tensors": tensors}))
    print(f"{len(tensors)} tensors, header {gf.data_offset} bytes, data {end - gf.data_offset} bytes")


def random_tensor(rng, t) -> np.ndarray:
    n = t["nbytes"]
    if t["type"] == "f32":
        return rng.uniform(-0.05, 0.05, n // 4).astype(np.float32).view(np.uint8)
    if t["type"] == "f16":
        return rng.uniform(-0.05, 0.05, n // 2).astype(np.float16).view(np.uint8)
    if t["type"] == "bf16":
        return (rng.uniform(-0.05, 0.05, n // 2).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
    raw = rng.integers(0, 256, n, dtype=np.uint8)
    blocks = raw.reshape(-1, t["block_bytes"])
    scale = np.frombuffer(np.float16(0.002).tobytes(), np.uint8)
    for off in SCALE_FIELDS.get(t["type"], ()):
        blocks[:, off : off + 2] = scale
    return raw


def fill(src: str, out: str) -> None:
    d = Path(src)
    header = (d / "header.bin").read_bytes()
    spec = json.loads((d / "tensors.json").read_text())
    rng = np.random.default_rng(0)
    with open(out, "wb") as f:
        f.write(header)
        for t in sorted(spec["tensors"], key=lambda t: t["offset"]):
            f.seek(len(header) + t["offset"])
            f.write(random_tensor(rng, t).tobytes())
        f.truncate(len(header) + spec["data_bytes"])
    print(f"wrote {out}: {len(header) + spec['data_bytes']} bytes")


if __name__ == "__main__":
    if sys.argv[1] == "extract":
        asyncio.run(extract(sys.argv[2], sys.argv[3]))
    else:
        fill(sys.argv[2], sys.argv[3])
