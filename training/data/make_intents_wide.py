#!/usr/bin/env python3
"""Synthesise the wide intent training set (issue 11): the sentences of ``intents_wide.sample()``
(the 199 phrasings of intents_text.py + a stratified sample of the wide grammar, none equal to a
held-out wording) spoken by TRAINING voices only, each clip under a random sox chain.

    nice -n 15 python training/data/make_intents_wide.py [--per-intent 120] [--voices 2]

Output: ``$SHIFTSERVE_DATA/intents-wide/wav/<id>.wav`` (16 kHz mono 16-bit) and
``manifest.csv`` (columns ``path,split,label,engine,voice,text,aug``, split ``train``).

Voices per sentence (``--voices``, ``--voices-orig`` for the 199 original phrasings): drawn
from every training voice the engines offer (espeak-ng accents x variants with random rate and
pitch, mbrola us1/us2/us3/en1, flite awb/rms/kal16 and festival kal/ked/rab with random duration
stretch). sox chain per clip (70 %): tempo 0.85-1.2, pitch +-300 cents (50 %), light to
room-size reverb (35 %), gain, 0-0.3 s leading silence. Noise is mixed online in training.
The validation and test splits stay those of ``$SHIFTSERVE_DATA/intents-eval`` (training
voices / held-out voices x the 199 phrasings).
"""

import argparse
import csv
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import intents_text  # noqa: E402
import intents_wide  # noqa: E402
import tts  # noqa: E402
from make_intents import REPO, run_jobs  # noqa: E402


def voice_draw(rng):
    r = rng.random()
    if r < 0.45:
        return dict(engine="espeak", voice=f"{rng.choice(tts.ESPEAK_ACCENTS)}+{rng.choice(tts.ESPEAK_VARIANTS)}",
                    rate=rng.randint(125, 205), pitch=rng.randint(20, 80))
    if r < 0.65:
        return dict(engine="mbrola", voice=rng.choice(tts.MBROLA), rate=rng.randint(125, 195),
                    pitch=rng.randint(25, 75))
    if r < 0.82:
        return dict(engine="flite", voice=rng.choice(tts.FLITE_TRAIN), stretch=rng.uniform(0.85, 1.15))
    return dict(engine="festival", voice=rng.choice(tts.FESTIVAL_TRAIN), stretch=rng.uniform(0.85, 1.15))


def effects(rng):
    if rng.random() < 0.3:
        return []
    eff = ["tempo", "-s", f"{rng.uniform(0.85, 1.2):.3f}"]
    if rng.random() < 0.5:
        eff += ["pitch", str(rng.randint(-300, 300))]
    if rng.random() < 0.35:
        eff += ["pad", "0", "0.4", "reverb", str(rng.randint(10, 60)), "50", str(rng.randint(20, 100)),
                "100", str(rng.randint(0, 30))]
    eff += ["gain", f"{rng.uniform(-10, 0):.1f}", "pad", f"{rng.uniform(0, 0.3):.3f}", "0"]
    return eff


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--per-intent", type=int, default=120)
    ap.add_argument("--voices", type=int, default=2)
    ap.add_argument("--voices-orig", type=int, default=6)
    ap.add_argument("--seed", type=int, default=1111)
    args = ap.parse_args()
    out = args.out or os.path.join(os.environ.get("SHIFTSERVE_DATA") or os.path.join(REPO, "..", "data"),
                                   "intents-wide")
    os.makedirs(os.path.join(out, "wav"), exist_ok=True)
    tts.check_tools()
    t0 = time.time()
    its = intents_text.intents()
    labels = [intents_text.label(a, o, l) for a, o, l, _ in its]
    orig = {intents_wide._norm(p) for *_, phr in its for p in phr}
    pairs, dropped = intents_wide.drop_heldout(intents_wide.sample(args.per_intent, args.seed))
    print(f"{len(pairs)} sentences ({dropped} equal to a held-out wording were dropped)", flush=True)
    rng = random.Random(args.seed)
    jobs = []
    for li, text in pairs:
        for _ in range(args.voices_orig if text in orig else args.voices):
            v = voice_draw(rng)
            eff = effects(rng)
            dst = os.path.join(out, "wav", f"w{len(jobs):06d}.wav")
            jobs.append(dict(v, text=text, dst=dst, effects=eff, seed=rng.randint(0, 2**31), label=li))
    run_jobs(jobs, args.jobs, "wide")
    with open(os.path.join(out, "manifest.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "split", "label", "engine", "voice", "text", "aug"])
        for j in jobs:
            w.writerow([os.path.relpath(j["dst"], out), "train", labels[j["label"]], j["engine"], j["voice"],
                        j["text"], " ".join(j["effects"])])
    print(f"wrote {len(jobs)} clips ({len(pairs)} sentences) to {out} in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
