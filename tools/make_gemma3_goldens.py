#!/usr/bin/env python3
"""Golden outputs of llama.cpp for the real Gemma 3 270M GGUF: greedy continuations and first-step logits.

Run once with llama-cpp-python 0.3.36 (it builds llama.cpp from source, about 30 minutes on 2 cores) in a venv
of its own, outside the project:
    python -m venv /tmp/oracle && /tmp/oracle/bin/pip install numpy llama-cpp-python==0.3.36
    /tmp/oracle/bin/python tools/make_gemma3_goldens.py ~/.cache/rullama/gemma-3-270m-q4_k_m.gguf
Writes tests/goldens/gemma3_270m_llamacpp.json (prompt token ids, greedy continuation ids) and
tests/goldens/gemma3_270m_llamacpp_logits.npz (logits of the first generated position of the first
LOGIT_CASES prompts, stored as float16 to keep the file small: 0.02 absolute at |logit| 30, well under the
tolerance the comparison needs anyway, since llama.cpp's CPU matmuls quantise activations to 8 bits).
The prompts' token ids come from llama.cpp's own tokenizer, so these goldens test the forward pass alone.
"""

import json
import sys
from pathlib import Path

import numpy as np
from llama_cpp import Llama, llama_cpp

OUT = Path(__file__).resolve().parent.parent / "tests" / "goldens"
N_GEN = 40
LOGIT_CASES = 3
PROMPTS = [
    "The capital of France is",
    "<start_of_turn>user\nWrite a haiku about the sea.<end_of_turn>\n<start_of_turn>model\n",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "<start_of_turn>user\nList three primary colours, one per line.<end_of_turn>\n<start_of_turn>model\n",
    "Once upon a time, in a small village by the mountains, there lived",
]


def main(model_path: str) -> None:
    llm = Llama(model_path=model_path, n_ctx=1024, n_threads=2, logits_all=True, verbose=False, seed=0)
    cases = []
    logits = {}
    for i, text in enumerate(PROMPTS):
        ids = llm.tokenize(text.encode(), add_bos=True, special=True)
        llm.reset()
        llm.eval(ids)
        first = np.array(llm.scores[len(ids) - 1], dtype=np.float32)
        gen = []
        for _ in range(N_GEN):
            tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            gen.append(tok)
            if tok in (llm.token_eos(), 106):  # <eos>, <end_of_turn>
                break
            llm.eval([tok])
        cases.append({"prompt": text, "prompt_ids": ids, "greedy_ids": gen, "text": llm.detokenize(gen).decode("utf-8", "replace")})
        if i < LOGIT_CASES:
            logits[f"case{i}"] = first.astype(np.float16)
        print(i, repr(text[:40]), gen[:10], repr(cases[-1]["text"][:60]))
    meta = {
        "model": Path(model_path).name,
        "oracle": f"llama-cpp-python {__import__('llama_cpp').__version__} (llama.cpp CPU backend)",
        "sampling": "greedy: argmax of llama.cpp's logits; stops at <eos> or <end_of_turn>",
        "cases": cases,
    }
    (OUT / "gemma3_270m_llamacpp.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False))
    np.savez_compressed(OUT / "gemma3_270m_llamacpp_logits.npz", **logits)


if __name__ == "__main__":
    main(sys.argv[1])
