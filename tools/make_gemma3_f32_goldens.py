#!/usr/bin/env python3
"""Float32 oracle for the real Gemma 3 270M: Hugging Face transformers runs the same GGUF, dequantised to
float32, greedily over several prompts.

The engine's weights are the GGUF's quantised blocks, dequantised exactly inside the kernels; transformers
dequantises the same blocks with the gguf package and computes everything in float32 (eager attention, a
float32 KV cache). What is left between the two is the engine's own arithmetic (its f16 KV cache, its
summation order), which is what tests/test_gemma3_f32.py measures and bounds.

Run in an environment with the `oracle` extra (torch, transformers, accelerate, gguf; CPU is enough, minutes):
    pip install -e '.[oracle]'
    python tools/make_gemma3_f32_goldens.py ~/.cache/rullama/gemma-3-270m-q4_k_m.gguf
It writes tests/goldens/gemma3_270m_f32.json (per prompt: the prompt's token ids, the greedy ids, and per step
the top-2 logits, their ids and their margin) and tests/goldens/gemma3_270m_f32.npz (each prompt's first-step
logits, float16). Before writing anything it checks that the GGUF's tokenizer (rullama_py's, token-for-token
llama.cpp's) and transformers' tokenizer built from the same GGUF give the same prompt ids, and that
transformers read the model the way the model is defined (check_config, check_weights).
"""

import argparse
import asyncio
import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
from rullama_py.gguf_file import GGUFFile  # noqa: E402
from rullama_py.tokenizer import Tokenizer  # noqa: E402

OUT = ROOT / "tests" / "goldens"
N_GEN = 64
END_IDS = {1: "<eos>", 106: "<end_of_turn>"}
CHAT = "<start_of_turn>user\n{}<end_of_turn>\n<start_of_turn>model\n"
PROMPTS = [
    # the five prompts of tools/make_gemma3_goldens.py (llama.cpp's goldens), in the same order
    "The capital of France is",
    CHAT.format("Write a haiku about the sea."),
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    CHAT.format("List three primary colours, one per line."),
    "Once upon a time, in a small village by the mountains, there lived",
    # a chat turn asking for a long answer, a list, and code
    CHAT.format("Explain in a few paragraphs why the sky is blue."),
    "The planets of the solar system, in order from the Sun:\n1.",
    "import numpy as np\n\n\ndef softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:\n",
]


def check_config(cfg) -> None:
    """Gemma 3 270M as the model defines it (Google's config for gemma-3-270m): transformers takes most of
    this from the GGUF and the rest from Gemma3TextConfig's defaults, so each detail is checked here rather
    than trusted. Norm weights: the GGUF stores 1 + w (llama.cpp's converter folds it), transformers
    subtracts 1 on load and its Gemma3RMSNorm adds it back (gguf's Gemma2TensorProcessor); the head is the
    tied embedding; embeddings are scaled by sqrt(640) in the embedding layer."""
    want = {
        "hidden_size": 640, "num_hidden_layers": 18, "num_attention_heads": 4, "num_key_value_heads": 1,
        "head_dim": 256, "intermediate_size": 2048, "vocab_size": 262144, "query_pre_attn_scalar": 256,
        "sliding_window": 512, "final_logit_softcapping": None, "attn_logit_softcapping": None,
        "hidden_activation": "gelu_pytorch_tanh", "tie_word_embeddings": True, "use_bidirectional_attention": False,
    }
    got = {k: getattr(cfg, k, "<missing>") for k in want}
    bad = {k: (got[k], v) for k, v in want.items() if got[k] != v}
    layer_types = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(18)]
    if cfg.layer_types != layer_types:
        bad["layer_types"] = (cfg.layer_types, layer_types)
    rope = {k: (v["rope_type"], v["rope_theta"]) for k, v in cfg.rope_parameters.items()}
    if rope != {"full_attention": ("default", 1e6), "sliding_attention": ("default", 1e4)}:
        bad["rope_parameters"] = rope
    if not math.isclose(cfg.rms_norm_eps, 1e-6, rel_tol=1e-6):
        bad["rms_norm_eps"] = cfg.rms_norm_eps
    if bad:
        raise SystemExit(f"transformers read the GGUF differently from the model's definition: {bad}")


def check_weights(model, gguf_path: Path) -> None:
    """The norm weights as transformers applies them (1 + w) equal the GGUF's stored values, and the head is
    the embedding table itself."""
    from gguf import GGUFReader

    stored = {t.name: np.asarray(t.data) for t in GGUFReader(gguf_path).tensors if t.name.endswith("norm.weight")}
    lm = model.model
    pairs = {"output_norm.weight": lm.norm.weight}
    for i, layer in enumerate(lm.layers):
        for gguf_name, norm in (("attn_norm", layer.input_layernorm), ("attn_q_norm", layer.self_attn.q_norm),
                                ("attn_k_norm", layer.self_attn.k_norm),
                                ("post_attention_norm", layer.post_attention_layernorm),
                                ("ffn_norm", layer.pre_feedforward_layernorm),
                                ("post_ffw_norm", layer.post_feedforward_layernorm)):
            pairs[f"blk.{i}.{gguf_name}.weight"] = norm.weight
    if set(pairs) != set(stored):
        raise SystemExit(f"norm weights not matched: {sorted(set(pairs) ^ set(stored))}")
    for name, w in pairs.items():
        err = float(np.abs(1.0 + w.detach().numpy() - stored[name]).max())
        if err > 1e-6:
            raise SystemExit(f"{name}: transformers' 1 + w differs from the GGUF's value by {err}")
    if model.lm_head.weight.data_ptr() != lm.embed_tokens.weight.data_ptr():
        raise SystemExit("transformers did not tie the head to the embedding table")
    scale = float(lm.embed_tokens.embed_scale)
    if not math.isclose(scale, math.sqrt(640), rel_tol=1e-7):
        raise SystemExit(f"embedding scale {scale}, expected sqrt(640)")


def prompt_ids(text: str, ours: Tokenizer, theirs) -> list[int]:
    """The prompt's ids (BOS first, special tokens parsed), from the GGUF's tokenizer; transformers' tokenizer,
    built from the same GGUF, must agree."""
    a = ours.encode(text, add_bos=True, parse_special=True)
    b = theirs(text, add_special_tokens=True)["input_ids"]
    if a != b:
        raise SystemExit(f"the tokenizers disagree on {text!r}:\n  GGUF (ours): {a}\n  transformers: {b}")
    return a


@torch.no_grad()
def greedy(model, ids: list[int]) -> tuple[list[dict], np.ndarray, str]:
    """Greedy decoding with transformers' KV cache: per step the top-2 logits (float32) of the position that
    chooses the token. Stops after N_GEN tokens or when the model emits <eos> / <end_of_turn> (kept)."""
    out = model(torch.tensor([ids]), use_cache=True)
    past, logits = out.past_key_values, out.logits[0, -1]
    first = logits.numpy().copy()
    steps, stop = [], "length"
    for _ in range(N_GEN):
        top = torch.topk(logits, 2)
        (v1, v2), (t1, t2) = top.values.tolist(), top.indices.tolist()
        steps.append({"id": t1, "logit": v1, "runner_up": t2, "runner_up_logit": v2,
                      "margin": float(np.float32(v1) - np.float32(v2))})
        if t1 in END_IDS:
            stop = END_IDS[t1]
            break
        out = model(torch.tensor([[t1]]), past_key_values=past, use_cache=True)
        past, logits = out.past_key_values, out.logits[0, -1]
    return steps, first, stop


def dumps(meta: dict) -> str:
    """JSON with each list of numbers on one line."""
    text = json.dumps(meta, indent=1, ensure_ascii=False)
    return re.sub(r"\[\s+([-+\d.e,\s]+?)\s+\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("gguf", type=Path, help="the Gemma 3 270M GGUF (gemma-3-270m-q4_k_m.gguf)")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    directory, name = str(args.gguf.parent), args.gguf.name

    gf = asyncio.run(GGUFFile.open(args.gguf))
    ours = Tokenizer.from_gguf_metadata(gf.metadata)
    theirs = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32,
                                                 attn_implementation="eager")
    model.eval()
    check_config(model.config)
    check_weights(model, args.gguf)

    cases, first_logits = [], {}
    for i, text in enumerate(PROMPTS):
        ids = prompt_ids(text, ours, theirs)
        steps, first, stop = greedy(model, ids)
        gen = [s["id"] for s in steps]
        cases.append({
            "prompt": text, "prompt_ids": ids, "greedy_ids": gen, "stop": stop,
            "margins": [s["margin"] for s in steps],
            "logits": [s["logit"] for s in steps],
            "runner_up_ids": [s["runner_up"] for s in steps],
            "runner_up_logits": [s["runner_up_logit"] for s in steps],
            "text": ours.decode_bytes(gen).decode("utf-8", "replace"),
        })
        first_logits[f"case{i}"] = first.astype(np.float16)
        m = np.array(cases[-1]["margins"])
        print(f"{i}: {len(ids)} prompt ids, {len(gen)} generated ({stop}), smallest margin {m.min():.4f} at step "
              f"{int(m.argmin())}, |first logits| max {np.abs(first).max():.2f}: {cases[-1]['text'][:70]!r}")
    meta = {
        "model": name,
        "oracle": f"transformers {transformers.__version__}, torch {torch.__version__}, gguf reader dequantising to "
                  "float32; eager attention, float32 KV cache",
        "tokenizer": "rullama_py's GGUF tokenizer (llama.cpp's), checked equal to transformers' on every prompt",
        "sampling": f"greedy (argmax) for up to {N_GEN} tokens; stops after the model emits <eos> or <end_of_turn>",
        "steps": "per generated token: greedy_ids (the argmax), logits (its logit), runner_up_ids / runner_up_logits "
                 "(the second largest), margins (logit - runner_up_logit, float32)",
        "cases": cases,
    }
    (OUT / "gemma3_270m_f32.json").write_text(dumps(meta))
    np.savez_compressed(OUT / "gemma3_270m_f32.npz", **first_logits)


if __name__ == "__main__":
    main()
