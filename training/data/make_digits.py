#!/usr/bin/env python3
"""Spoken-digit data: the Free Spoken Digit Dataset (real speech) plus TTS digits.

    nice -n 10 python training/data/make_digits.py --out "$SHIFTSERVE_DATA/digits"

FSDD is read in place from ``<repo>/../shared/data/fsdd/recordings`` (or ``--fsdd``); it is
never copied. Speakers jackson, nicolas, theo, yweweler are training speakers (recordings with
index 0-4 of every digit -- FSDD's customary test indices -- form the validation split);
george and lucas are the test speakers and are never trained on.

TTS digits ("zero" .. "nine") come from the *training* voices only (espeak-ng, mbrola, flite,
festival; see tts.py), 8 kHz mono 16-bit, each with one sox-augmented copy. They go to the
train split only.

Held-out-voice validation (split ``xvalid``, for model selection; FSDD's validation split holds
the training speakers and saturates): the digits spoken by the held-out TTS voices of tts.py
(pico, RHVoice, SLT), 3 prosody draws each, one sox-augmented, in ``<out>/xvalid/*.wav``;
``--xvalid-only`` adds them to an existing manifest.

Output: ``<out>/manifest.csv`` (columns ``path,split,label,source,speaker``; FSDD paths are
absolute), ``<out>/tts/*.wav`` and ``<out>/xvalid/*.wav``. About 2.5 minutes on 2 cores.
"""

import argparse
import csv
import os
import random
import sys
import time
from multiprocessing import Pool

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_intents  # noqa: E402
import tts  # noqa: E402

REPO = make_intents.REPO
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TRAIN_SPEAKERS = ["jackson", "nicolas", "theo", "yweweler"]
TEST_SPEAKERS = ["george", "lucas"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(os.environ.get("SHIFTSERVE_DATA") or os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "data"), "digits"))
    ap.add_argument("--fsdd", default=os.path.join(os.path.dirname(REPO), "shared", "data", "fsdd",
                                                   "recordings"))
    ap.add_argument("--tts-draws", type=int, default=3, help="training-voice draws per digit")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--xvalid-only", action="store_true",
                    help="only (re)generate the held-out-voice validation clips and add them to an "
                         "existing manifest")
    args = ap.parse_args()
    if args.xvalid_only:
        return add_xvalid(args)
    if not os.path.isdir(args.fsdd):
        raise SystemExit(f"FSDD not found at {args.fsdd}")
    t0 = time.time()
    rows = []
    for fn in sorted(os.listdir(args.fsdd)):
        if not fn.endswith(".wav"):
            continue
        d, spk, idx = fn[:-4].split("_")
        if spk in TEST_SPEAKERS:
            split = "test"
        elif spk in TRAIN_SPEAKERS:
            split = "valid" if int(idx) < 5 else "train"
        else:
            raise SystemExit(f"unknown FSDD speaker {spk}")
        rows.append([os.path.join(args.fsdd, fn), split, WORDS[int(d)], "fsdd", spk])

    tts.check_tools()
    tdir = os.path.join(args.out, "tts")
    os.makedirs(tdir, exist_ok=True)
    rng = random.Random(args.seed)
    jobs = []
    for di, word in enumerate(WORDS):
        for r in range(args.tts_draws):
            for cfg in tts.train_voice_draws(rng, n_espeak=4):
                k = len(jobs)
                jobs.append(dict(cfg, text=word, sr=8000, dst=os.path.join(tdir, f"{k:05d}-a0.wav"),
                                 seed=rng.randint(0, 2**31), label=di))
    make_intents.run_jobs(jobs, args.jobs, "tts digits")
    aug = []
    for j in jobs:
        eff = tts.augment_effects(rng)
        aug.append(dict(src=j["dst"], dst=j["dst"].replace("-a0", "-a1"), effects=eff,
                        snr=rng.choice([None, 10, 20, 30]), color=rng.choice(["white", "pink"]),
                        seed=rng.randint(0, 2**31), base=j))
    with Pool(args.jobs) as pool:
        for a in aug:
            a["effects"] = list(a["effects"])
        # augment at 8 kHz
        list(pool.imap_unordered(_aug8k, aug, chunksize=16))
    for j in jobs:
        rows.append([j["dst"], "train", WORDS[j["label"]], j["engine"], j["voice"]])
    for a in aug:
        b = a["base"]
        rows.append([a["dst"], "train", WORDS[b["label"]], b["engine"], b["voice"]])
    with open(os.path.join(args.out, "manifest.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "split", "label", "source", "speaker"])
        w.writerows(rows)
    add_xvalid(args)
    with open(os.path.join(args.out, "manifest.csv")) as f:
        rows = [r for r in csv.reader(f)][1:]
    counts = {}
    for r in rows:
        counts[(r[1], r[3] if r[3] == "fsdd" else "tts")] = counts.get((r[1], r[3] if r[3] == "fsdd" else "tts"), 0) + 1
    print(f"done in {time.time() - t0:.0f}s: {counts}")


def add_xvalid(args):
    """Split ``xvalid``: the digits spoken by the held-out TTS voices (tts.HELDOUT: pico, RHVoice,
    SLT; never trained on), 3 prosody draws each, one of them sox-augmented. A cross-voice
    validation set for model selection (the FSDD validation split holds the training speakers
    and saturates); george and lucas stay test-only. Own random stream: the training data does
    not depend on it."""
    tts.check_tools(heldout=True)
    man = os.path.join(args.out, "manifest.csv")
    with open(man) as f:
        rows = [r for r in csv.reader(f)]
    head, rows = rows[0], [r for r in rows[1:] if r[1] != "xvalid"]
    xdir = os.path.join(args.out, "xvalid")
    os.makedirs(xdir, exist_ok=True)
    rng = random.Random(args.seed + 1000)
    jobs = []
    for engine, voice in tts.HELDOUT:
        for di, word in enumerate(WORDS):
            for r in range(3):
                j = dict(engine=engine, voice=voice, text=word, sr=8000, seed=rng.randint(0, 2**31),
                         label=di, dst=os.path.join(xdir, f"{engine}-{voice}-{di}-{r}.wav"))
                if engine == "rhvoice" and r:
                    j.update(rate=rng.randint(70, 130), pitch=rng.randint(70, 130))
                elif engine in ("flite", "festival") and r:
                    j.update(stretch=rng.uniform(0.85, 1.2))
                if r == 2:
                    j["effects"] = tts.augment_effects(rng)
                    j["snr"] = rng.choice([None, 20, 30])
                jobs.append(j)
    make_intents.run_jobs(jobs, args.jobs, "held-out-voice digits")
    rows += [[j["dst"], "xvalid", WORDS[j["label"]], j["engine"], j["voice"]] for j in jobs]
    with open(man, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(head)
        w.writerows(rows)


def _aug8k(job):
    tts.sox_convert(job["src"], job["dst"], rate=8000, effects=job["effects"])
    if job.get("snr") is not None:
        tts.add_noise(job["dst"], job["snr"], random.Random(job["seed"]), job["color"])


if __name__ == "__main__":
    main()
