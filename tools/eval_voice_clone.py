"""The held-out voice-cloning measurement: does a clone trained on one text sound like its target on another?

For each target stock voice: the target is that voice speaking text A (several sentences, ~12 s); the trainer
(rullama_py.voice.VoiceTrainer) hears only that recording, speaks text B (its training text) and starts from
the nearest OTHER stock voice; the result is judged on text C, which neither the target recording nor the
training used. Each clip on text C is compared with the target voice's own text-C audio in two ways:
- the timbre signature (ops/mel.py, the trainer's own loss: mean log-mel over active frames) distance;
- the cosine similarity of an independent speaker encoder (resemblyzer's GE2E network, PyPI `resemblyzer`).
Baselines: the start voice, and the stock voice nearest the target by signature on text A (the best a user
could do by picking a stock voice). Floors: the target voice itself on text A against text C (the same voice on
different words), by signature and by similarity.

Two phases, so that the GPU part needs neither torch nor resemblyzer:

    # 1. where the GPU is (rullama_py and numpy only): synthesise, train, write the clips and figures
    python tools/eval_voice_clone.py synth --out voice_clone.npz             # the setup's Kokoro, 300 steps
    python tools/eval_voice_clone.py synth --out v.npz --steps 300 --population 8 --train all \\
        --voices af_heart,bm_george --kokoro path/to/kokoro.gguf --json synth.json
    python tools/eval_voice_clone.py synth --out tiny.npz --kokoro kokoro-tiny.gguf --voices af_heart,am_adam \\
        --steps 5 --sentences 1                        # the pipeline on a software GPU (random weights: no figures)

    # 2. anywhere, in an environment with the `eval` extra (pip install -e '.[eval]': resemblyzer, CPU is enough)
    python tools/eval_voice_clone.py score voice_clone.npz --json docs/bench/voice_clone_eval.json

`synth` writes one .npz (about 6 MB per target with the full texts; where the files that come back from a GPU
machine are limited in size, run subsets of --voices into several files and give them all to `score`): per
target (key prefix "<voice>/"), 24 kHz float32 audio of target_A, target_C, clone_C, start_C, nearest_C and the
clone's voicepack ([510, 256]); "meta" holds the figures as a JSON string (device, options, texts, and per
target: start and nearest voice, the loss curve, steps per second, signature distances). `score` embeds each
clip (preprocess_wav from 24 kHz to its 16 kHz, trimmed of long silences), adds the similarities to the
figures, writes them as JSON and prints a markdown table with the summary: for how many targets the clone is
closer to the target than both the start voice and the nearest stock voice.

All clips of one target are spoken with the target voice's language (en-us or en-gb), so on one text they hold
the same phonemes and differ only in voice; one noise seed for all.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

# Text A: the target recording. Text C: held out, the judge. Text B, the training text, is the trainer's own
# (rullama_py.voice.TRAIN_TEXTS: "The quick brown fox ...", "She sells sea shells ..."). No sentence repeats.
# Sentence tuples: --sentences N keeps the first N of each (a quick run on a slow device).
TEXT_A = ("Every morning, Maggie walks her shaggy dog along the river to buy fresh bread and a newspaper.",
          "The baker, a cheerful man with a thick beard, always jokes about the weather.",
          "Yesterday it rained so hard that the whole village smelled of wet leaves and chimney smoke.")
TEXT_C = ("Judge Thompson asked the young witness to point at the map and describe exactly what she saw.",
          "Her voice was calm, but her hands trembled as she traced the road toward the old mill.",
          "Nobody in the quiet courtroom moved until she finished.")
# US and UK, female and male; those the Kokoro file lacks are skipped (the tiny test model has four voices)
TARGETS = ("af_heart", "af_bella", "af_nicole", "am_michael", "am_adam", "am_fenrir",
           "bf_emma", "bf_isabella", "bm_george", "bm_lewis")
RATE = 24000
CLIPS = ("target_A", "target_C", "clone_C", "start_C", "nearest_C")


# -- phase 1: synth (GPU) ------------------------------------------------------------------------------------
class SignatureMeter:
    """The trainer's own signature of a clip (voice.recording_signature), the mel tables made once."""

    def __init__(self, device):
        from rullama_py import ops

        self.device = device
        self.tables = ops.mel_tables(device)

    async def __call__(self, pcm: np.ndarray) -> np.ndarray:
        from rullama_py.voice import recording_signature

        return await recording_signature(self.device, pcm, self.tables)


def _names(text: str | None) -> list[str]:
    return [v.strip() for v in (text or "").split(",") if v.strip()]


def _rounded(values, digits: int = 6) -> list[float]:
    return [float(f"{v:.{digits}g}") for v in values]


async def synth(args) -> dict:
    from rullama_py import g2p
    from rullama_py.speaker import Speaker
    from rullama_py.voice import TRAIN_TEXTS, VoiceTrainer, voice_distance

    t_load = time.perf_counter()
    speaker = await Speaker.load(args.kokoro)
    dev = speaker.model.device
    print(f"{speaker.name} on {dev.info['device']} ({time.perf_counter() - t_load:.1f} s to load)", flush=True)
    english = [v for v in speaker.voices if v[:1] in "ab"]
    if args.voices:
        targets = _names(args.voices)
        unknown = [v for v in targets if v not in speaker.voices]
        if unknown:
            sys.exit(f"{', '.join(unknown)}: not in {speaker.name}; its voices: {', '.join(speaker.voices)}")
    else:
        targets = [v for v in TARGETS if v in speaker.voices]
    pool = _names(args.pool) or english
    unknown = [v for v in pool if v not in speaker.voices]
    if unknown:
        sys.exit(f"--pool {', '.join(unknown)}: not in {speaker.name}; its voices: {', '.join(speaker.voices)}")
    if any(not (set(pool) - {t}) for t in targets):
        sys.exit("every target needs at least one other stock voice in --pool to start from")

    texts = {"A": " ".join(TEXT_A[: args.sentences]), "C": " ".join(TEXT_C[: args.sentences])}
    meter = SignatureMeter(dev)
    clips: dict = {}  # (voice, "A" or "C", lang) -> (audio, signature): a stock voice is spoken once per text

    async def spoken(voice: str, text: str, lang: str):
        key = (voice, text, lang)
        if key not in clips:
            t0 = time.perf_counter()
            pcm = await speaker.say(texts[text], voice, lang=lang, seed=args.seed)
            clips[key] = (pcm, await meter(pcm))
            print(f"  {voice} on text {text}: {len(pcm) / RATE:.1f} s of audio in {time.perf_counter() - t0:.1f} s",
                  flush=True)
        return clips[key]

    arrays: dict = {}
    results = {}
    for target in targets:
        lang = g2p.lang_for_voice(target)
        others = [v for v in pool if v != target]
        print(f"{target} ({lang}): start candidates {', '.join(others)}", flush=True)
        target_a, sig_a = await spoken(target, "A", lang)
        target_c, sig_c = await spoken(target, "C", lang)
        # the nearest stock voice: by signature, the same words (text A) as the target recording
        on_a = {v: voice_distance((await spoken(v, "A", lang))[1], sig_a) for v in others}
        nearest = min(on_a, key=on_a.get)

        trainer = VoiceTrainer(speaker, target_a, RATE, lang=lang, start="auto", start_voices=others,
                               train=args.train, population=args.population, step_size=args.step_size,
                               seed=args.seed)
        t0 = time.perf_counter()
        prepared = await trainer.prepare()
        prepare_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        accepted = 0
        for _ in range(args.steps):
            accepted += (await trainer.step()).accepted
        train_s = time.perf_counter() - t0
        pack = await trainer.voicepack()
        curve = list(trainer.curve)
        final_step = trainer.step_size
        trainer.release()

        t0 = time.perf_counter()
        clone_c = await speaker.say(texts["C"], pack, lang=lang, seed=args.seed)
        clone_sig = await meter(clone_c)
        print(f"  clone on text C: {len(clone_c) / RATE:.1f} s of audio in {time.perf_counter() - t0:.1f} s",
              flush=True)
        start_c, start_sig = await spoken(prepared.start_voice, "C", lang)
        nearest_c, nearest_sig = await spoken(nearest, "C", lang)

        for name, clip in zip(CLIPS, (target_a, target_c, clone_c, start_c, nearest_c)):
            arrays[f"{target}/{name}"] = np.asarray(clip, np.float32)
        arrays[f"{target}/voicepack"] = pack
        results[target] = {
            "lang": lang,
            "start_voice": prepared.start_voice,
            "nearest_voice": nearest,
            "target_seconds": round(prepared.seconds, 2),
            "warnings": list(prepared.warnings),
            "start_candidates_loss_on_B": {k: round(v, 5) for k, v in prepared.distances.items()},
            "nearest_candidates_distance_on_A": {k: round(v, 5) for k, v in sorted(on_a.items(), key=lambda kv:
                                                                                   kv[1])},
            "curve": _rounded(curve),
            "accepted_steps": int(accepted),
            "final_step_size": round(final_step, 6),
            "prepare_seconds": round(prepare_s, 3),
            "train_seconds": round(train_s, 3),
            "steps_per_second": round(args.steps / train_s, 3) if args.steps else None,
            # signature distances on the held-out text C, to the target voice's own text-C audio
            "signature_distance_C": {
                "clone": round(voice_distance(clone_sig, sig_c), 5),
                "start": round(voice_distance(start_sig, sig_c), 5),
                "nearest": round(voice_distance(nearest_sig, sig_c), 5),
                "floor": round(voice_distance(sig_a, sig_c), 5),  # the target itself, text A against text C
            },
        }
        d = results[target]["signature_distance_C"]
        print(f"  start {prepared.start_voice}, nearest {nearest}; training loss {curve[0]:.4f} -> {curve[-1]:.4f} "
              f"in {args.steps} steps ({results[target]['steps_per_second']} steps/s); on text C: clone "
              f"{d['clone']:.4f}, start {d['start']:.4f}, nearest {d['nearest']:.4f}, floor {d['floor']:.4f}",
              flush=True)

    meta = {
        "device": dev.info,
        "kokoro": Path(speaker.name).name,  # the file's name, not where it lies
        "options": {"steps": args.steps, "population": args.population, "train": args.train,
                    "step_size": args.step_size, "seed": args.seed, "sentences": args.sentences},
        "texts": {"A": texts["A"], "B": list(TRAIN_TEXTS), "C": texts["C"]},
        "pool": pool,
        "targets": results,
        "signature_summary": _summary(results, "signature_distance_C", lower_is_closer=True),
    }
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(args.out, **arrays)
    print(meta["signature_summary"]["sentence"])
    print(f"wrote {args.out}")
    speaker.release()
    return meta


# -- phase 2: score (CPU, resemblyzer) -----------------------------------------------------------------------
def score(args) -> dict:
    import warnings

    with warnings.catch_warnings():  # webrtcvad's import of pkg_resources warns that it is deprecated
        warnings.simplefilter("ignore")
        from resemblyzer import VoiceEncoder, preprocess_wav

    meta, clips = _load_runs(args.npz)
    encoder = VoiceEncoder("cpu", verbose=False)

    def embedding(target: str, clip: str) -> np.ndarray:
        e = encoder.embed_utterance(preprocess_wav(clips[f"{target}/{clip}"], source_sr=RATE))
        return e / np.linalg.norm(e)

    for target, r in meta["targets"].items():
        ref = embedding(target, "target_C")
        sim = {name: float(np.dot(ref, embedding(target, clip)))
               for name, clip in (("clone", "clone_C"), ("start", "start_C"), ("nearest", "nearest_C"),
                                  ("floor", "target_A"))}
        r["similarity_C"] = {k: round(v, 4) for k, v in sim.items()}
    meta["similarity_summary"] = _summary(meta["targets"], "similarity_C", lower_is_closer=False)
    meta["similarity_encoder"] = "resemblyzer VoiceEncoder (GE2E), cosine similarity of utterance embeddings"
    print(markdown(meta))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(meta, indent=1) + "\n")
        print(f"\nwrote {args.json}")
    return meta


def _load_runs(paths: list[str]) -> tuple[dict, dict]:
    """The figures and clips of one or more synth runs of the same setting (targets split over several files,
    e.g. to bring them back from a machine that returns files of limited size), as one run."""
    meta, clips = None, {}
    for path in paths:
        with np.load(path, allow_pickle=False) as data:
            run = json.loads(str(data["meta"]))
            clips.update({k: data[k] for k in data.files if k != "meta"})
        if meta is None:
            meta = run
            continue
        for key in ("device", "kokoro", "options", "texts"):
            if run[key] != meta[key]:
                sys.exit(f"{path}: its {key} differ from those of {paths[0]}; score runs of one setting together")
        twice = sorted(set(run["targets"]) & set(meta["targets"]))
        if twice:
            sys.exit(f"{path}: {', '.join(twice)} also in an earlier file; give each target once")
        meta["targets"].update(run["targets"])
    meta["signature_summary"] = _summary(meta["targets"], "signature_distance_C", lower_is_closer=True)
    return meta, clips


def _summary(targets: dict, key: str, *, lower_is_closer: bool) -> dict:
    """For how many targets the clone is closer to the target than the start voice and the nearest stock voice."""
    def closer(a, b):
        return a < b if lower_is_closer else a > b

    wins = [t for t, r in targets.items()
            if closer(r[key]["clone"], r[key]["start"]) and closer(r[key]["clone"], r[key]["nearest"])]
    measure = "signature distance" if key.startswith("signature") else "speaker similarity"
    return {"closer_than_start_and_nearest": len(wins), "targets": len(targets), "which": wins,
            "sentence": f"By {measure} on the held-out text, the clone is closer than the start voice and than the "
                        f"nearest stock voice for {len(wins)} of {len(targets)} targets."}


def markdown(meta: dict) -> str:
    o = meta["options"]
    kinds = ("start", "clone", "nearest", "floor")
    lines = [f"Kokoro {meta['kokoro']} on {meta['device'].get('device', '?')}: {o['steps']} steps, population "
             f"{o['population']}, train {o['train']}, seed {o['seed']}, {o.get('sentences', 3)} sentence(s) of "
             "texts A and C.",
             "",
             "| target | start | nearest | steps/s | " + " | ".join(f"dist. {k}" for k in kinds) + " | "
             + " | ".join(f"sim. {k}" for k in kinds) + " |",
             "|---|---|---|" + "---:|" * 9]
    for target, r in meta["targets"].items():
        d, s = r["signature_distance_C"], r.get("similarity_C", {})
        lines.append(f"| {target} | {r['start_voice']} | {r['nearest_voice']} | {r['steps_per_second']} | "
                     + " | ".join(f"{d[k]:.4f}" for k in kinds) + " | "
                     + " | ".join(f"{s[k]:.3f}" if k in s else "-" for k in kinds) + " |")
    lines += ["",
              "dist.: the signature distance (the trainer's loss) to the target voice's own audio on the held-out "
              "text C, lower is closer; sim.: resemblyzer's cosine similarity to it, higher is closer; floor: the "
              "target voice itself on text A.",
              "",
              meta["signature_summary"]["sentence"]]
    if "similarity_summary" in meta:
        lines.append(meta["similarity_summary"]["sentence"])
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="phase", required=True)
    s = sub.add_parser("synth", help="synthesise and train on the GPU; write the clips and figures (.npz)")
    s.add_argument("--out", required=True, help="the .npz to write")
    s.add_argument("--kokoro", default=None, help="a Kokoro GGUF (default: the setup's F16 file)")
    s.add_argument("--voices", default=None, help="comma-separated target voices (default: " + ",".join(TARGETS)
                   + ", those the file has)")
    s.add_argument("--pool", default=None, help="comma-separated stock voices to start from and to be the nearest "
                   "(default: every English one; the target itself is always left out)")
    s.add_argument("--steps", type=int, default=300)
    s.add_argument("--population", type=int, default=1, help="candidates per step")
    s.add_argument("--train", choices=("timbre", "all"), default="timbre")
    s.add_argument("--step-size", type=float, default=0.25)
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--sentences", type=int, choices=(1, 2, 3), default=3,
                   help="speak only the first N sentences of texts A and C (a quick run on a slow device)")
    s.add_argument("--json", default=None, help="also write the figures as JSON")
    c = sub.add_parser("score", help="embed the clips with resemblyzer; write the figures with similarities")
    c.add_argument("npz", nargs="+", help="synth's .npz, or several of one setting (targets split over files)")
    c.add_argument("--json", default=str(ROOT / "docs" / "bench" / "voice_clone_eval.json"))
    args = ap.parse_args()
    if args.phase == "synth":
        if args.steps < 0:
            sys.exit("--steps: a count of 0 or more")
        meta = asyncio.run(synth(args))
        if args.json:
            Path(args.json).write_text(json.dumps(meta, indent=1) + "\n")
    else:
        score(args)


if __name__ == "__main__":
    main()
