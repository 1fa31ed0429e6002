#!/usr/bin/env python3
"""Generate the FSC-style spoken-intent data set with Debian TTS engines.

    nice -n 10 python training/data/make_intents.py --out "$SHIFTSERVE_DATA/intents"

Output: ``<out>/wav/<split>/<id>.wav`` (16 kHz mono 16-bit) and ``<out>/manifest.csv`` with
columns ``path,split,label,engine,voice,text,aug``.

* train/valid: training voices only (espeak-ng, mbrola us1/us2/us3/en1, flite awb/rms/kal16,
  festival kal/ked/rab), each clean clip plus ``--aug`` sox-augmented copies (tempo, pitch,
  reverb, gain, leading silence, noise at 5-30 dB SNR). valid = 10 % of the clean
  (phrase, voice) groups with their augmented copies.
* test: held-out voices only (pico en-US/en-GB, RHVoice alan/bdl/clb/evgeniy-eng/lyubov/slt,
  festival cmu_us_slt_arctic_hts, flite slt), default settings, no augmentation.

``--no-train`` writes only the valid split (with its augmented copies) and the test split, with
the same random draws as a full run (so the same files): the sets training/eval_intent.py needs.

``--unseen-set`` writes the second held-out evaluation set instead (see ``make_unseen``): new
wordings (``intents_unseen.py``) and out-of-vocabulary commands spoken by the held-out voices.

``--eval-subset`` writes only the small deterministic held-out subset used by the CI card check
(one phrase per intent and held-out voice, 310 clips) to ``<out>`` (default
``<repo>/data/eval/intents``).

About 8-10 minutes on 2 cores with --jobs 2 (the default).
"""

import argparse
import csv
import os
import random
import sys
import tempfile
import time
from multiprocessing import Pool

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import intents_text  # noqa: E402
import tts  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _synth_job(job):
    """job: dict(engine, voice, text, dst, rate/pitch/stretch, effects, snr, color, seed)."""
    rng = random.Random(job["seed"])
    with tempfile.TemporaryDirectory() as td:
        raw = os.path.join(td, "raw.wav")
        tts.synth_raw(job["engine"], job["voice"], job["text"], raw, rate=job.get("rate"),
                      pitch=job.get("pitch"), stretch=job.get("stretch"))
        tts.sox_convert(raw, job["dst"], rate=job.get("sr", 16000), effects=job.get("effects", ()))
    if job.get("snr") is not None:
        tts.add_noise(job["dst"], job["snr"], rng, job.get("color", "white"))
    return job["dst"]


def _festival_job(batch):
    """batch: (voice, [job...]) synthesised by one festival process, then converted by sox."""
    voice, jobs = batch
    with tempfile.TemporaryDirectory() as td:
        items = [(j["text"], os.path.join(td, f"{k}.wav"), j.get("stretch")) for k, j in
                 enumerate(jobs)]
        tts.festival_batch(voice, items)
        for (_, raw, _), j in zip(items, jobs):
            tts.sox_convert(raw, j["dst"], rate=j.get("sr", 16000), effects=j.get("effects", ()))
            if j.get("snr") is not None:
                tts.add_noise(j["dst"], j["snr"], random.Random(j["seed"]), j.get("color", "white"))
    return len(jobs)


def _augment_job(job):
    rng = random.Random(job["seed"])
    tts.sox_convert(job["src"], job["dst"], rate=16000, effects=job["effects"])
    if job.get("snr") is not None:
        tts.add_noise(job["dst"], job["snr"], rng, job["color"])
    return job["dst"]


def run_jobs(jobs, nproc, what):
    """Run synthesis jobs: festival ones batched per voice, the rest one process per clip."""
    fest = {}
    other = []
    for j in jobs:
        if j["engine"] == "festival":
            fest.setdefault(j["voice"], []).append(j)
        else:
            other.append(j)
    batches = []
    for v, js in fest.items():
        for i in range(0, len(js), 60):
            batches.append((v, js[i:i + 60]))
    t0 = time.time()
    done = 0
    with Pool(nproc) as pool:
        for n in pool.imap_unordered(_festival_job, batches):
            done += n
        for _ in pool.imap_unordered(_synth_job, other, chunksize=8):
            done += 1
            if done % 500 == 0:
                print(f"  {what}: {done}/{len(jobs)} clips, {time.time() - t0:.0f}s", flush=True)
    print(f"  {what}: {len(jobs)} clips in {time.time() - t0:.0f}s", flush=True)


def heldout_jobs(its, outdir, subset):
    jobs = []
    for vi, (engine, voice) in enumerate(tts.HELDOUT):
        for li, (a, o, l, phrases) in enumerate(its):
            sel = [phrases[(vi + li) % len(phrases)]] if subset else phrases
            for pi, text in enumerate(sel):
                name = f"{engine}-{voice}-{li:02d}-{pi:02d}.wav"
                jobs.append(dict(engine=engine, voice=voice, text=text,
                                 dst=os.path.join(outdir, name), seed=0, label=li))
    return jobs


UNSEEN_EFFECTS = {
    "clean": ([], None),
    "tempo 0.9": (["tempo", "-s", "0.9"], None),
    "tempo 1.1": (["tempo", "-s", "1.1"], None),
    # a mid-size living room: 50 % reverberance, 50 % HF damping, full room scale, 20 ms
    # pre-delay, wet and dry mixed (sox default wet gain), 0.6 s of tail kept
    "reverb": (["pad", "0", "0.6", "reverb", "50", "50", "100", "100", "20"], None),
    "noise 20 dB": ([], 20),
}


def make_unseen(out, nproc, seed):
    """The second held-out set: each new wording of intents_unseen.py spoken by every held-out
    voice under one condition, and the out-of-vocabulary commands spoken clean by every held-out
    voice. Conditions: per voice, the wordings are shuffled (seeded) and dealt to the five
    conditions in turn, so every voice has the same number of clips per condition (31 each) and
    the five conditions of one wording fall on different voices. Noise: white/pink/brown (seeded)
    mixed at 20 dB SNR from the clip's own power (tts.add_noise). Manifest columns
    ``file,set,label,engine,voice,text,condition,kind``."""
    import intents_unseen

    intents_unseen.check()
    tts.check_tools(heldout=True)
    os.makedirs(out, exist_ok=True)
    words = intents_unseen.unseen()
    conds = intents_unseen.CONDITIONS
    jobs, rows = [], []
    for vi, (engine, voice) in enumerate(tts.HELDOUT):
        rng = random.Random(seed * 1000 + vi)
        order = list(range(len(words)))
        rng.shuffle(order)
        cond_of = {w: conds[(k + vi) % len(conds)] for k, w in enumerate(order)}
        for wi, (li, lab, text) in enumerate(words):
            cond = cond_of[wi]
            eff, snr = UNSEEN_EFFECTS[cond]
            name = f"u-{engine}-{voice}-{wi:03d}.wav"
            jobs.append(dict(engine=engine, voice=voice, text=text, dst=os.path.join(out, name),
                             effects=eff, snr=snr, color=rng.choice(["white", "pink", "brown"]),
                             seed=rng.randint(0, 2**31)))
            rows.append([name, "unseen", lab, engine, voice, text,
                         cond + (f" ({jobs[-1]['color']})" if snr else ""), ""])
        for oi, (kind, text) in enumerate(intents_unseen.oov()):
            name = f"o-{engine}-{voice}-{oi:03d}.wav"
            jobs.append(dict(engine=engine, voice=voice, text=text, dst=os.path.join(out, name), seed=0))
            rows.append([name, "oov", "", engine, voice, text, "clean", kind])
    run_jobs(jobs, nproc, "unseen set")
    with open(os.path.join(out, "manifest.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "set", "label", "engine", "voice", "text", "condition", "kind"])
        w.writerows(rows)
    print(f"wrote {len(rows)} clips to {out}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--aug", type=int, default=2, help="augmented copies per clean training clip")
    ap.add_argument("--espeak-per-phrase", type=int, default=6)
    ap.add_argument("--seed", type=int, default=20260)
    ap.add_argument("--eval-subset", action="store_true")
    ap.add_argument("--no-train", action="store_true",
                    help="synthesise only the valid split (with its augmented copies) and the test "
                         "split, replaying every random draw of a full run, so these files and "
                         "manifest rows equal a full run's (for evaluation, e.g. training/eval_intent.py)")
    ap.add_argument("--unseen-set", action="store_true",
                    help="write the unseen-wording + out-of-vocabulary set (default out: "
                         "$SHIFTSERVE_DATA/intents-unseen)")
    args = ap.parse_args()

    its = intents_text.intents()
    labels = [intents_text.label(a, o, l) for a, o, l, _ in its]
    t_start = time.time()

    if args.unseen_set:
        out = args.out or os.path.join(os.environ.get("SHIFTSERVE_DATA") or os.path.join(REPO, "..", "data"),
                                       "intents-unseen")
        make_unseen(out, args.jobs, args.seed)
        print(f"done in {time.time() - t_start:.0f}s")
        return

    if args.eval_subset:
        tts.check_tools(heldout=True)
        out = args.out or os.path.join(REPO, "data", "eval", "intents")
        os.makedirs(out, exist_ok=True)
        jobs = heldout_jobs(its, out, subset=True)
        run_jobs(jobs, args.jobs, "eval subset")
        with open(os.path.join(out, "manifest.csv"), "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["file", "label", "engine", "voice", "text"])
            for j in jobs:
                w.writerow([os.path.basename(j["dst"]), labels[j["label"]], j["engine"], j["voice"],
                            j["text"]])
        print(f"wrote {len(jobs)} clips to {out} in {time.time() - t_start:.0f}s")
        return

    tts.check_tools(heldout=True)
    out = args.out or os.path.join(os.environ.get("SHIFTSERVE_DATA") or os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "data"),
                                  "intents-eval" if args.no_train else "intents")
    for s in ("train", "valid", "test"):
        os.makedirs(os.path.join(out, "wav", s), exist_ok=True)
    rng = random.Random(args.seed)
    rows = []

    # clean training-voice clips
    clean = []
    gid = 0
    for li, (a, o, l, phrases) in enumerate(its):
        for text in phrases:
            for cfg in tts.train_voice_draws(rng, args.espeak_per_phrase):
                split = "valid" if rng.random() < 0.10 else "train"
                dst = os.path.join(out, "wav", split, f"g{gid:05d}-a0.wav")
                clean.append(dict(cfg, text=text, dst=dst, seed=rng.randint(0, 2**31), label=li,
                                  split=split, gid=gid))
                gid += 1
    print(f"{len(clean)} clean training-voice clips", flush=True)
    keep = (lambda j: j["split"] == "valid") if args.no_train else (lambda j: True)
    run_jobs([j for j in clean if keep(j)], args.jobs, "train/valid clean")

    # sox augmentation
    aug = []
    for j in clean:
        for k in range(1, args.aug + 1):
            eff = tts.augment_effects(rng)
            snr = rng.choice([None, 5, 10, 15, 20, 30])
            aug.append(dict(src=j["dst"], dst=j["dst"].replace("-a0.wav", f"-a{k}.wav"), effects=eff,
                            snr=snr, color=rng.choice(["white", "pink", "brown"]),
                            seed=rng.randint(0, 2**31), base=j, aug=" ".join(eff) + f" snr={snr}"))
    if args.no_train:
        clean = [j for j in clean if keep(j)]
        aug = [a for a in aug if keep(a["base"])]
    t0 = time.time()
    with Pool(args.jobs) as pool:
        for i, _ in enumerate(pool.imap_unordered(_augment_job, aug, chunksize=16)):
            if (i + 1) % 1000 == 0:
                print(f"  augment: {i + 1}/{len(aug)}, {time.time() - t0:.0f}s", flush=True)
    print(f"  augment: {len(aug)} clips in {time.time() - t0:.0f}s", flush=True)

    # held-out voices: test split
    test = heldout_jobs(its, os.path.join(out, "wav", "test"), subset=False)
    run_jobs(test, args.jobs, "test (held-out voices)")

    def vname(j):
        return j["voice"]

    for j in clean:
        rows.append([os.path.relpath(j["dst"], out), j["split"], labels[j["label"]], j["engine"],
                     vname(j), j["text"], ""])
    for a in aug:
        b = a["base"]
        rows.append([os.path.relpath(a["dst"], out), b["split"], labels[b["label"]], b["engine"],
                     vname(b), b["text"], a["aug"]])
    for j in test:
        rows.append([os.path.relpath(j["dst"], out), "test", labels[j["label"]], j["engine"],
                     j["voice"], j["text"], ""])
    with open(os.path.join(out, "manifest.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "split", "label", "engine", "voice", "text", "aug"])
        w.writerows(rows)
    with open(os.path.join(out, "labels.txt"), "w") as f:
        f.write("\n".join(labels) + "\n")
    counts = {}
    for r in rows:
        counts[r[1]] = counts.get(r[1], 0) + 1
    print(f"done in {time.time() - t_start:.0f}s: {counts}")


if __name__ == "__main__":
    main()
