"""Benchmark: Gemma 4's audio tower with E2B's real dimensions, rullama-py (WGSL through wgpu-py) against the same
tower in PyTorch on the same GPU in the same run.

The weights are random in the real layout (12 Conformer blocks, d 1024, 8 heads x 128, FFN 4096, SSCP channels
128 and 32, depthwise kernel 5, output projection 1536, projection to the text width 1536; BF16 matrices as
Ollama stores the audio tower, F32 convolutions, finite clamp bounds on every clippable linear): speed does not
depend on the values. The tower is written as a llama.cpp-style mmproj and loaded through the engine's path.

    python3 tools/bench_audio.py --out bench_audio.json        # 10 s and 30 s of audio: ours vs PyTorch

PyTorch is optional (skipped without CUDA); its tower is plain torch with the same operations (the chunked
local attention as a banded mask over the whole clip, which costs PyTorch more arithmetic, not less).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src"))

E2B_AUDIO = dict(n_layers=12, d=1024, heads=8, ffn=4096, c0=128, c1=32, kernel=5, out=1536, text_d=1536)
CLIPPED = ("attn_q", "attn_k", "attn_v", "attn_out", "ffn_up", "ffn_down", "ffn_up_1", "ffn_down_1", "conv_pw1",
           "conv_pw2")


def synthetic_weights(dims: dict, seed: int = 0) -> dict:
    """llama.cpp mmproj names -> float32 arrays (numpy order)."""
    rng = np.random.default_rng(seed)
    d, f, c0, c1 = dims["d"], dims["ffn"], dims["c0"], dims["c1"]
    r = lambda *shape, s=1.0: (rng.standard_normal(shape) * s).astype(np.float32)  # noqa: E731
    w = {"a.conv1d.0.weight": r(c0, 1, 3, 3, s=0.3), "a.conv1d.0.norm.weight": 1 + r(c0, s=0.1),
         "a.conv1d.1.weight": r(c1, c0, 3, 3, s=0.03), "a.conv1d.1.norm.weight": 1 + r(c1, s=0.1),
         "a.input_projection.weight": r(d, 32 * c1, s=1 / math.sqrt(32 * c1)),
         "a.pre_encode.out.weight": r(dims["out"], d, s=1 / math.sqrt(d)), "a.pre_encode.out.bias": r(dims["out"]),
         "mm.a.input_projection.weight": r(dims["text_d"], dims["out"], s=1 / math.sqrt(dims["out"]))}
    for l in range(dims["n_layers"]):
        p = f"a.blk.{l}."
        for name, shape in (("ffn_up", (f, d)), ("ffn_down", (d, f)), ("ffn_up_1", (f, d)), ("ffn_down_1", (d, f)),
                            ("attn_q", (d, d)), ("attn_k", (d, d)), ("attn_v", (d, d)), ("attn_out", (d, d)),
                            ("attn_k_rel", (d, d)), ("conv_pw1", (2 * d, d)), ("conv_pw2", (d, d))):
            w[p + name + ".weight"] = r(*shape, s=1 / math.sqrt(shape[1]))
        for name in ("ffn_norm", "ffn_post_norm", "ffn_norm_1", "ffn_post_norm_1", "attn_pre_norm",
                     "attn_post_norm", "conv_norm", "norm_conv", "ln2"):
            w[p + name + ".weight"] = 1 + r(d, s=0.1)
        w[p + "per_dim_scale.weight"] = np.abs(1 + r(d // dims["heads"], s=0.1))
        w[p + "conv_dw.weight"] = r(d, dims["kernel"], s=0.3)
        for name in CLIPPED:
            for s, v in (("input_min", -60.0), ("input_max", 60.0), ("output_min", -90.0), ("output_max", 90.0)):
                w[p + name + "." + s] = np.array([v], np.float32)
    return w


def write_mmproj(path: str, dims: dict, w: dict) -> None:
    from gguf import GGMLQuantizationType as Q, GGUFWriter

    gw = GGUFWriter(path, "clip")
    gw.add_bool("clip.has_audio_encoder", True)
    gw.add_string("clip.audio.projector_type", "gemma4a")
    for key, value in (("block_count", dims["n_layers"]), ("embedding_length", dims["d"]),
                       ("attention.head_count", dims["heads"]), ("feed_forward_length", dims["ffn"]),
                       ("num_mel_bins", 128)):
        gw.add_uint32("clip.audio." + key, value)
    gw.add_float32("clip.audio.attention.layer_norm_epsilon", 1e-6)
    for name, a in w.items():
        if a.ndim == 2 and "conv_dw" not in name:  # matrices F16 (Ollama: BF16, read at the same cost)
            gw.add_tensor(name, a.astype(np.float16), raw_dtype=Q.F16)
        else:  # the convolutions stay F32, as both converters write them
            gw.add_tensor(name, a)
    gw.write_header_to_file()
    gw.write_kv_data_to_file()
    gw.write_tensors_to_file()
    gw.close()


async def bench_ours(mmproj: str, clips: dict, repeats: int) -> dict:
    from rullama_py.gguf_file import GGUFFile
    from rullama_py.gpu import default_device
    from rullama_py.models.gemma_audio import GemmaAudio

    dev = await default_device()
    tower = await GemmaAudio.load(await GGUFFile.open(mmproj), dev, text_d_model=E2B_AUDIO["text_d"])
    out = {"device": dev.info, "clips": {}}
    for label, clip in clips.items():
        t0 = time.perf_counter()
        run = await tower.run_for(clip.features.shape[0])
        record_s = time.perf_counter() - t0
        res = {}
        for stepwise in (False, True):
            times = []
            for i in range(repeats + 2):
                await dev.sync()
                t0 = time.perf_counter()
                await tower.encode(clip, on_layer=(lambda d, t: None) if stepwise else None)
                await dev.sync()
                if i >= 2:
                    times.append(time.perf_counter() - t0)
            res["per_layer_sync_ms" if stepwise else "encode_ms_median"] = 1e3 * float(np.median(times))
        res.update(frames=int(clip.features.shape[0]), soft_tokens=clip.n_soft, capacity_frames=run.capacity,
                   record_and_compile_s=record_s, dispatches=sum(len(g) for g in run.graphs),
                   layer_profile_ms={k: round(1e3 * v, 3) for k, v in (await run.graphs[1].profile()).items()})
        out["clips"][label] = res
    return out


def bench_torch(w: dict, dims: dict, clips: dict, repeats: int) -> dict:
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return {"skipped": "no torch"}
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA"}
    from rullama_py.models.gemma_audio import relative_positions

    dev = torch.device("cuda")
    d, nh = dims["d"], dims["heads"]
    hd = d // nh
    out = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(0)}

    def rms(x, wt=None):
        y = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6)
        return (y * wt if wt is not None else y).to(x.dtype)

    for dtype_name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        W = {n: torch.tensor(a, device=dev).to(dtype) for n, a in w.items()}
        table = torch.tensor(relative_positions(d), device=dev).to(dtype)  # [13, d]
        res = {}
        for label, clip in clips.items():
            feats = torch.tensor(clip.features, device=dev).to(dtype)

            def lin(x, name):
                y = x.clamp(W[name + ".input_min"], W[name + ".input_max"]) @ W[name + ".weight"].T
                return y.clamp(W[name + ".output_min"], W[name + ".output_max"])

            def tower():
                x = feats[None, None]  # [1, 1, T, 128]
                for i in range(2):
                    x = F.conv2d(x, W[f"a.conv1d.{i}.weight"], stride=2, padding=1)
                    x = F.relu(F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), W[f"a.conv1d.{i}.norm.weight"]))
                    x = x.permute(0, 3, 1, 2)
                t = x.shape[2]
                h = x.permute(0, 2, 3, 1).reshape(t, -1) @ W["a.input_projection.weight"].T
                pos = torch.arange(t, device=dev)
                dist = pos[:, None] - pos[None, :]
                band = (dist >= 0) & (dist <= 12)
                for l in range(dims["n_layers"]):
                    p = f"a.blk.{l}."
                    h = h + 0.5 * rms(lin(F.silu(lin(rms(h, W[p + "ffn_norm.weight"]), p + "ffn_up")), p + "ffn_down"),
                                      W[p + "ffn_post_norm.weight"])
                    x = rms(h, W[p + "attn_pre_norm.weight"])
                    q_scale = W[p + "per_dim_scale.weight"] / (math.sqrt(hd) * math.log(2))
                    q = (lin(x, p + "attn_q").view(t, nh, hd) * q_scale).transpose(0, 1)
                    k = (lin(x, p + "attn_k").view(t, nh, hd) * (math.log(1 + math.e) / math.log(2))).transpose(0, 1)
                    v = lin(x, p + "attn_v").view(t, nh, hd).transpose(0, 1)
                    relk = (table @ W[p + "attn_k_rel.weight"].T).view(13, nh, hd)
                    s = q @ k.transpose(1, 2) + (q @ relk.permute(1, 2, 0)).gather(
                        2, (12 - dist).clamp(0, 12)[None].expand(nh, t, t))
                    s = 50 * torch.tanh(s / 50)
                    a = torch.softmax(s.masked_fill(~band, -1e9).float(), -1).to(dtype) @ v
                    h = h + rms(lin(a.transpose(0, 1).reshape(t, d), p + "attn_out"), W[p + "attn_post_norm.weight"])
                    x = F.glu(lin(rms(h, W[p + "conv_norm.weight"]), p + "conv_pw1"), dim=-1)
                    x = F.conv1d(F.pad(x.T[None], (dims["kernel"] - 1, 0)), W[p + "conv_dw.weight"][:, None], groups=d)[0].T
                    h = h + lin(F.silu(rms(x, W[p + "norm_conv.weight"])), p + "conv_pw2")
                    h = h + 0.5 * rms(lin(F.silu(lin(rms(h, W[p + "ffn_norm_1.weight"]), p + "ffn_up_1")), p + "ffn_down_1"),
                                      W[p + "ffn_post_norm_1.weight"])
                    h = rms(h, W[p + "ln2.weight"])
                o = h @ W["a.pre_encode.out.weight"].T + W["a.pre_encode.out.bias"]
                return rms(o) @ W["mm.a.input_projection.weight"].T

            with torch.no_grad():
                for _ in range(3):
                    tower()
                torch.cuda.synchronize()
                times = []
                for _ in range(repeats):
                    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    s.record()
                    tower()
                    e.record()
                    torch.cuda.synchronize()
                    times.append(s.elapsed_time(e))
            res[label] = {"encode_ms_median": float(np.median(times))}
        out[dtype_name] = res
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--layers", type=int, default=E2B_AUDIO["n_layers"], help="fewer layers: a quick dry run")
    ap.add_argument("--out", help="write the JSON here too")
    args = ap.parse_args()
    E2B_AUDIO["n_layers"] = args.layers
    from rullama_py import media

    rng = np.random.default_rng(1)
    clips = {}
    for seconds in (10, 30):
        t = np.arange(16000 * seconds) / 16000
        wav = (0.3 * np.sin(2 * np.pi * 220 * t * (1 + 0.1 * np.sin(t))) + 0.05 * rng.standard_normal(t.size))
        clips[f"{seconds} s"] = media.prepare_audio(wav.astype(np.float32))[0]
    w = synthetic_weights(E2B_AUDIO)
    with tempfile.TemporaryDirectory() as tmp:
        mm = os.path.join(tmp, "e2b-audio-synthetic.mmproj.gguf")
        write_mmproj(mm, E2B_AUDIO, w)
        result = {"command": " ".join(sys.argv), "dims": E2B_AUDIO,
                  "rullama": asyncio.run(bench_ours(mm, clips, args.repeats)),
                  "pytorch": bench_torch(w, E2B_AUDIO, clips, args.repeats)}
    for label in clips:
        ours = result["rullama"]["clips"][label]["encode_ms_median"]
        for dt in ("fp32", "bf16"):
            theirs = result["pytorch"].get(dt, {}).get(label, {}).get("encode_ms_median")
            if theirs:
                result["rullama"]["clips"][label][f"ratio_vs_torch_{dt}"] = ours / theirs
    text = json.dumps(result, indent=1, default=str)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
