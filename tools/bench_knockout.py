"""Knock-out bound: what would decode gain if some dispatches cost nothing? Runs `rullama bench` with the
single-row RMSNorm dispatches of the decode graph left out, so that the tokens per second say what fusing
those norms into their neighbours could save at most. The output is wrong on purpose: timing only.

    python tools/bench_knockout.py MODE -- bench e2b.gguf --prompt-tokens 16 --gen-tokens 128 --repeats 3 \\
        --record knock.json --commit kMODE

MODE: none (the real graph, for the same-run baseline), then (the norms that also norm the stream for the next
block: ops.rms_norm then=, two a Gemma 4 layer), acc (the post-norms added into the stream with no next norm),
all (every single-row norm of d_model). Prefill chunks keep their norms (their rows hold more than one token).
Rows of 512 values or more count as the stream's (the 270M's are 640); the narrower single-row norms are other
things' (E2B's per-layer inputs, 256).
"""

from __future__ import annotations

import math
import sys

import rullama_py.ops as ops

MODES = ("none", "then", "acc", "all")
_rms_norm = ops.rms_norm


def knock_out(mode: str) -> None:
    """Replace ops.rms_norm (the models call it through the ops module) with one that records nothing for the
    norms MODE names."""
    if mode not in MODES:
        raise SystemExit(f"bench_knockout: MODE must be one of {', '.join(MODES)}, not {mode!r}")

    async def rms_norm(g, x, w, out, *, n, eps, add_one=False, accumulate=False, scale=None, then=None):
        kind = "then" if then is not None else "acc" if accumulate else "plain"
        if math.prod(x.shape) == n and n >= 512 and mode in ("all", kind):  # one row of the stream: a decode step
            return
        await _rms_norm(g, x, w, out, n=n, eps=eps, add_one=add_one, accumulate=accumulate, scale=scale,
                        then=then)

    ops.rms_norm = rms_norm


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[2] != "--":
        raise SystemExit(__doc__)
    knock_out(sys.argv[1])
    from rullama_py.cli import main

    sys.exit(main(sys.argv[3:]))
