"""DiffusionGemma's denoising step at the real 26B-A4B dimensions: rullama-py against transformers on the same GPU.

    python tools/bench_diffusion.py synth OUT.gguf [--layers 30] [--arch gemma4]   # synthetic weights, real layout
    python tools/bench_diffusion.py rullama OUT.gguf [--steps 8 --prompt 128 --json FILE]
    python tools/bench_diffusion.py torch [--layers 30 --steps 8 --prompt 128 --json FILE]

Both engines run the same thing: a prompt of --prompt tokens through the encoder, then --steps denoising steps of
one 256-token canvas (the decoder with self-conditioning from the second step on, and the sampler: softmax,
entropy, draw, acceptance). The figure is milliseconds per denoising step (the encoder excluded), and canvas
tokens per second (256 / step time). Random weights never get confident, so every step runs (no early stop).

- synth: Gemma 4 26B-A4B's text dimensions (tools/make_synthetic_gguf.py's layout, architecture
  diffusion-gemma): Q4_K matrices (Q5_0 for the expert down projection, whose 704-wide rows are not whole Q4_K
  blocks; Q6_K embedding as Ollama's Q4_K_M), about 16 GB for 30 layers. --layers N keeps N layers (the same
  5:1 pattern) for smaller GPUs; say so with the figure.
- rullama: loads the file through rullama_py.diffusion.Diffusion and times Diffusion.step().
- torch: transformers' DiffusionGemmaForBlockDiffusion built from the same dimensions in bfloat16 on CUDA with
  random weights (transformers==5.23.0, torch with CUDA), timed through its own `generate` with
  max_denoising_steps = --steps (per step: (generate - encoder) / steps).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# Gemma 4 26B-A4B (reference notes: 30 layers, d 2816, 16 q heads, kv 8 sliding / 2 global, head 256 / 512,
# dense FFN 2112, 128 experts of 704, top 8, window 1024, vocabulary 262144), canvas 256.
DIMS = dict(n_layer=30, d_model=2816, n_head=16, n_kv_head=8, n_kv_head_full=2, head_dim_swa=256, head_dim_full=512,
            n_ff=2112, n_expert=128, n_expert_used=8, n_ff_exp=704, sliding_window=1024, n_vocab=262144,
            swa_per_period=5, canvas=256)


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except OSError:
        return ""


def dims_26b(n_layer: int):
    """Gemma 4 26B-A4B's text dimensions in tools/make_synthetic_gguf.py's terms (n_layer a multiple of 6 keeps
    the 5 sliding : 1 global pattern and a global last layer)."""
    import make_synthetic_gguf as layout

    d = DIMS
    return layout.Gemma4Dims(n_layer=n_layer, d_model=d["d_model"], n_head=d["n_head"], n_kv_head=d["n_kv_head"],
                             n_kv_head_full=d["n_kv_head_full"], head_dim_swa=d["head_dim_swa"],
                             head_dim_full=d["head_dim_full"], n_ff=d["n_ff"], double_wide_shared_ffn=False,
                             swa_per_period=d["swa_per_period"], n_kv_shared=0, ple_dim=0, n_vocab=d["n_vocab"],
                             sliding_window=d["sliding_window"], context_length=262144, k_eq_v=True,
                             n_expert=d["n_expert"], n_expert_used=d["n_expert_used"], n_ff_exp=d["n_ff_exp"])


def _fast_fallback_blocks(layout) -> None:
    """Random Q5_0 / Q8_0 blocks straight from random bytes (f16 scale ~ 0.002-0.003, values centred): gguf's
    numpy quantizer would take minutes for the 26B experts' 704-wide Q5_0 rows."""
    import numpy as np
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as Q

    slow = layout.random_small_float

    def blocks(rng, n, qtype):
        if qtype not in (Q.Q5_0, Q.Q8_0):
            return slow(rng, n, qtype)
        block, size = GGML_QUANT_SIZES[qtype]
        b = layout.random_bytes(rng, n // block * size).reshape(-1, size).copy()
        b[:, 0:2] = layout._f16_bytes(rng.uniform(2e-3, 3e-3, b.shape[0]) / (16 if qtype == Q.Q8_0 else 1))
        return b.reshape(-1)

    layout.random_small_float = blocks


def synth(path: str, layers: int, arch: str) -> None:
    """A synthetic 26B-A4B GGUF: `gemma4` (autoregressive, llama.cpp loads it too) or `diffusion-gemma` (the
    same blocks plus the encoder's layer scalars, the self-conditioning MLP and the diffusion keys)."""
    import numpy as np
    import make_synthetic_gguf as layout
    from gguf import GGMLQuantizationType as Q, LlamaFileType

    _fast_fallback_blocks(layout)
    dims = dims_26b(layers)
    specs = layout.tensor_specs(dims)
    d, ff = dims.d_model, dims.n_ff
    if arch == "diffusion-gemma":
        specs += [layout.TensorSpec(f"blk.{il}.enc_layer_output_scale.weight", (1,), "scalar", il) for il in range(layers)]
        specs += [layout.TensorSpec("self_cond_pre_norm.weight", (d,), "norm"),
                  layout.TensorSpec("self_cond_gate.weight", (d, ff), "matrix"),
                  layout.TensorSpec("self_cond_up.weight", (d, ff), "matrix"),
                  layout.TensorSpec("self_cond_down.weight", (ff, d), "matrix")]
    types = layout.q4_k_m_types(specs)
    rng = np.random.default_rng(0)
    vocab = layout.fake_vocab(dims.n_vocab)

    def metadata(w) -> None:
        w.add_name(f"{arch}-26b-a4b-synthetic-{layers}l")
        w.add_file_type(LlamaFileType.MOSTLY_Q4_K_M)
        w.add_quantization_version(2)
        layout.add_gemma4_metadata(w, dims, arch=arch)
        if arch == "diffusion-gemma":
            w.add_uint32(f"{arch}.diffusion.canvas_length", DIMS["canvas"])
        layout.add_tokenizer(w, vocab, model="gemma4")

    entries = [(s.name, s.ne, types[s.name], lambda s=s: layout.random_chunks(s, types[s.name], dims, rng))
               for s in specs]
    assert all(types[s.name] != Q.BF16 for s in specs if s.kind == "experts")
    layout.write_gguf_streaming(path, metadata, entries, arch=arch)


async def bench_rullama(path: str, steps: int, prompt: int) -> dict:
    from rullama_py.diffusion import Diffusion, DiffusionParams

    t0 = time.perf_counter()
    diff = await Diffusion.load(path, max_context=prompt + 2 * DIMS["canvas"])
    load_s = time.perf_counter() - t0
    ids = [2] + [1000 + i for i in range(prompt - 1)]
    params = DiffusionParams(steps=steps + 1, max_new_tokens=DIMS["canvas"], seed=1, confidence_threshold=0.0)
    diff.prompt_ids = lambda _p: ids  # noqa: E731  (fixed token ids, no chat template)
    t0 = time.perf_counter()
    await diff.start("", params)
    await diff.device.sync()
    encode_s = time.perf_counter() - t0
    await diff.step()  # the first step compiles nothing but warms the caches
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        await diff.step()
        times.append(time.perf_counter() - t0)
    med = sorted(times)[len(times) // 2]
    return dict(engine="rullama-py", model="diffusiongemma-26b-a4b-synthetic", layers=diff.config.n_layers,
                canvas=diff.canvas_length, prompt_tokens=prompt, step_ms=1000 * med,
                step_ms_all=[round(1000 * t, 2) for t in times], canvas_tok_s=diff.canvas_length / med,
                encoder_ms=1000 * encode_s, load_s=load_s,
                dispatches_per_step=len(diff.model.decoder.graph) + len(diff.sample_graph))


def bench_torch(layers: int, steps: int, prompt: int) -> dict:
    import torch
    from transformers import DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion

    d = DIMS
    types = ["full_attention" if (i + 1) % (d["swa_per_period"] + 1) == 0 or i == layers - 1 else "sliding_attention"
             for i in range(layers)]
    text = dict(vocab_size=d["n_vocab"], hidden_size=d["d_model"], intermediate_size=d["n_ff"], num_hidden_layers=layers,
                num_attention_heads=d["n_head"], num_key_value_heads=d["n_kv_head"], head_dim=d["head_dim_swa"],
                global_head_dim=d["head_dim_full"], num_global_key_value_heads=d["n_kv_head_full"], layer_types=types,
                sliding_window=d["sliding_window"], num_experts=d["n_expert"], top_k_experts=d["n_expert_used"],
                moe_intermediate_size=d["n_ff_exp"], max_position_embeddings=8192)
    cfg = DiffusionGemmaConfig(text_config=text, canvas_length=d["canvas"],
                               vision_config=dict(model_type="gemma4_vision", hidden_size=32, intermediate_size=64,
                                                  num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                                  head_dim=16, patch_size=4, position_embedding_size=64))
    torch.manual_seed(0)
    dev = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: only to try the script on a small config
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    with torch.device(dev):
        model = DiffusionGemmaForBlockDiffusion._from_config(cfg, dtype=torch.bfloat16).eval()
    ids = torch.tensor([[2] + [1000 + i for i in range(prompt - 1)]], device=dev)

    def generate(n_steps):
        sync()
        t0 = time.perf_counter()
        with torch.no_grad():
            model.generate(ids, max_new_tokens=d["canvas"], max_denoising_steps=n_steps)
        sync()
        return time.perf_counter() - t0

    generate(2)  # warm-up: kernels, allocator
    one = min(generate(1) for _ in range(2))  # encoder + one step
    many = min(generate(steps + 1) for _ in range(2))
    step = (many - one) / steps
    return dict(engine="transformers-pytorch", model="diffusiongemma-26b-a4b-synthetic", layers=layers,
                canvas=d["canvas"], prompt_tokens=prompt, step_ms=1000 * step, canvas_tok_s=d["canvas"] / step,
                dtype="bfloat16", attn=model.config._attn_implementation, torch=torch.__version__,
                experts=getattr(model.config, "_experts_implementation", None),
                gpu=torch.cuda.get_device_name() if dev == "cuda" else "cpu")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("mode", choices=["synth", "rullama", "torch"])
    ap.add_argument("path", nargs="?")
    ap.add_argument("--layers", type=int, default=DIMS["n_layer"])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--json", help="append the record to this JSON list file")
    ap.add_argument("--arch", default="diffusion-gemma", choices=["diffusion-gemma", "gemma4"], help="synth only")
    a = ap.parse_args(argv)
    if a.mode == "synth":
        synth(a.path, a.layers, a.arch)
        return
    rec = asyncio.run(bench_rullama(a.path, a.steps, a.prompt)) if a.mode == "rullama" else \
        bench_torch(a.layers, a.steps, a.prompt)
    rec.update(commit=commit(), command="python tools/bench_diffusion.py " + " ".join(sys.argv[1:] if argv is None else argv))
    print(json.dumps(rec))
    if a.json:
        data = json.load(open(a.json)) if os.path.exists(a.json) else []
        data.append(rec)
        json.dump(data, open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
