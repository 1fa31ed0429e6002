#!/usr/bin/env python3
"""Evaluate the installed intent models on the held-out sets: accuracy, calibration, OOV threshold.

    nice -n 15 python training/eval_intent.py            # both models -> results/intent-eval.json
    nice -n 15 python training/eval_intent.py --models intent

Runs the installed model files ``models/repository/<model>/1/model.safetensors`` through
``shiftserve_train.reference`` (the numpy/torch twin of the Rust runtime), with the features of
each WAV file computed by ``shiftserve_train.features.audio_features`` (the reference of the
server's preprocessing), on:

* ``valid``: the validation split train.py uses (training voices, 10 % of the clean phrase/voice
  groups with their sox-augmented copies): the temperature is fitted here and only here;
* ``test``: the held-out voices x the 199 training phrasings (the test split of train.py);
* ``unseen``: new wordings (``data/intents_unseen.py``) x held-out voices, each clip under one of
  clean / tempo 0.9 / tempo 1.1 / reverb / noise 20 dB;
* ``oov``: out-of-vocabulary commands x held-out voices, clean.

Data (generated when missing, under $SHIFTSERVE_DATA): ``intents-eval`` (make_intents.py
--no-train: the same valid/test files as a full run) and ``intents-unseen`` (make_intents.py
--unseen-set).

Calibration: a single temperature T (logits / T) minimising the NLL of ``valid``; expected
calibration error with 15 equal-width confidence bins before (T = 1) and after. OOV report: for
thresholds on the top-1 probability (answer "not understood" when p < threshold, as
server/src/http/ranking.rs), the share of OOV clips caught and the share of in-vocabulary held-out
clips lost (correct answers turned into "not understood"), with the calibrated probabilities
(softmax(logits / T)) and with the raw ones (what the server computes without a temperature).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import DATA, REPO, RESULTS, log  # noqa: E402

PY = sys.executable
MODELS = ("intent", "intent-lstm")
THRESHOLDS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
BINS = 15
# the recommended threshold: the largest share of OOV clips caught while losing at most this
# share of the in-vocabulary held-out clips (test and unseen sets pooled)
MAX_LOST = 0.05


def data_dirs(jobs):
    ev = os.path.join(DATA, "intents-eval")
    un = os.path.join(DATA, "intents-unseen")
    gen = os.path.join(REPO, "training", "data", "make_intents.py")
    if not os.path.exists(os.path.join(ev, "manifest.csv")):
        log("generating", ev)
        subprocess.run(["nice", "-n", "15", PY, gen, "--no-train", "--out", ev, "--jobs", str(jobs)],
                       check=True)
    if not os.path.exists(os.path.join(un, "manifest.csv")):
        log("generating", un)
        subprocess.run(["nice", "-n", "15", PY, gen, "--unseen-set", "--out", un, "--jobs", str(jobs)],
                       check=True)
    return ev, un


def load_sets(ev, un, labels):
    """-> {set: dict(paths, y (-1 for OOV), voice, condition, kind)}"""
    sets = {}
    with open(os.path.join(ev, "manifest.csv")) as f:
        rows = list(csv.DictReader(f))
    for s in ("valid", "test"):
        r = [x for x in rows if x["split"] == s]
        sets[s] = dict(paths=[os.path.join(ev, x["path"]) for x in r],
                       y=np.array([labels.index(x["label"]) for x in r]),
                       voice=[f"{x['engine']}/{x['voice']}" for x in r],
                       condition=["clean" if s == "test" else (x["aug"] and "augmented" or "clean") for x in r],
                       kind=[""] * len(r))
    with open(os.path.join(un, "manifest.csv")) as f:
        rows = list(csv.DictReader(f))
    for s in ("unseen", "oov"):
        r = [x for x in rows if x["set"] == s]
        sets[s] = dict(paths=[os.path.join(un, x["file"]) for x in r],
                       y=np.array([labels.index(x["label"]) if x["label"] else -1 for x in r]),
                       voice=[f"{x['engine']}/{x['voice']}" for x in r],
                       condition=[x["condition"].split(" (")[0] for x in r],
                       kind=[x["kind"] for x in r], text=[x["text"] for x in r])
    sets["test"]["text"] = None
    return sets


def features(paths, spec, cache):
    from shiftserve_train.features import audio_features

    if os.path.exists(cache):
        x = np.load(cache)
        if len(x) == len(paths):
            return x
    x = np.stack([audio_features(p, spec) for p in paths]).astype(np.float32)
    np.save(cache, x)
    return x


def clip_seconds(path):
    import wave

    with wave.open(path, "rb") as w:
        return w.getnframes() / w.getframerate()


def softmax(z, t=1.0):
    z = np.asarray(z, dtype=np.float64) / t
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(z, y, t):
    p = softmax(z, t)
    return float(-np.mean(np.log(p[np.arange(len(y)), y] + 1e-300)))


def fit_temperature(z, y):
    """argmin_T NLL(softmax(z / T), y): golden-section search on log T in [log 0.05, log 20]
    (the NLL is convex in 1/T)."""
    a, b = math.log(0.05), math.log(20.0)
    g = (math.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = nll(z, y, math.exp(c)), nll(z, y, math.exp(d))
    for _ in range(80):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = nll(z, y, math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = nll(z, y, math.exp(d))
    return math.exp((a + b) / 2)


def ece(p, y, bins=BINS):
    """Expected calibration error: equal-width bins of the top-1 probability, sum over bins of
    (bin share) * |accuracy - mean confidence|."""
    conf = p.max(axis=1)
    ok = p.argmax(axis=1) == y
    edges = np.linspace(0, 1, bins + 1)
    e = 0.0
    for i in range(bins):
        m = (conf > edges[i]) & (conf <= edges[i + 1]) if i else (conf <= edges[1])
        if m.any():
            e += m.mean() * abs(ok[m].mean() - conf[m].mean())
    return float(e)


def acc_groups(pred, y, groups):
    out = {}
    groups = np.asarray(groups)
    for g in sorted(set(groups.tolist())):
        m = groups == g
        out[g] = {"n": int(m.sum()), "acc": float(np.mean(pred[m] == y[m]))}
    return out


def threshold_table(p_in, y_in, p_oov, oov_kind, thresholds=THRESHOLDS, part=None):
    """part: optional array naming the set of each in-vocabulary clip (lost share per set too)."""
    rows = []
    conf_in, ok_in = p_in.max(axis=1), p_in.argmax(axis=1) == y_in
    conf_oov = p_oov.max(axis=1)
    kind = np.asarray(oov_kind)
    for thr in thresholds:
        caught = conf_oov < thr
        rej = conf_in < thr
        extra = {}
        if part is not None:
            for g in sorted(set(part.tolist())):
                m = part == g
                extra[f"invocab_lost_{g}"] = float((rej & ok_in)[m].mean())
        rows.append({
            **extra,
            "threshold": round(float(thr), 2),
            "oov_caught": float(caught.mean()),
            "oov_near_caught": float(caught[kind == "near"].mean()),
            "oov_far_caught": float(caught[kind == "far"].mean()),
            "invocab_lost": float((rej & ok_in).mean()),       # correct answers turned away
            "invocab_wrong_caught": float((rej & ~ok_in).mean()),  # wrong answers turned away
            "invocab_answered_acc": float(ok_in[~rej].mean()) if (~rej).any() else None,
        })
    return rows


def recommend(p_in, y_in, p_oov, oov_kind):
    """The threshold (0.01 steps) with the most OOV clips caught while at most MAX_LOST of the
    in-vocabulary clips are lost (ties: the lower threshold)."""
    table = threshold_table(p_in, y_in, p_oov, oov_kind, thresholds=np.round(np.arange(0.01, 1.0, 0.01), 2))
    ok = [r for r in table if r["invocab_lost"] <= MAX_LOST]
    if not ok:
        return None
    return max(ok, key=lambda r: (r["oov_caught"], -r["threshold"]))["threshold"]


def evaluate(name, sets, labels, ev, un, path=None, fp32_state=None):
    from shiftserve_train import reference

    path = path or os.path.join(REPO, "models", "repository", name, "1", "model.safetensors")
    mf = reference.ModelFile(path)
    spec = mf.preprocess
    assert mf.labels == labels, "the model file's labels differ from intents_text.py"
    tag = "lstm" if name == "intent-lstm" else "resnet"
    if fp32_state:
        # a full-precision twin's PyTorch weights (train.py --wide saves them), same features
        import torch
        from train import build_intent

        model = build_intent(False)
        model.load_state_dict(torch.load(fp32_state, weights_only=True))
        model.eval()

        def fwd(x):
            with torch.no_grad():
                return torch.cat([model(torch.from_numpy(x[i:i + 256])) for i in range(0, len(x), 256)]).numpy()
        path = fp32_state
    else:
        def fwd(x):
            return reference.forward(mf, x)
    logits = {}
    for s, d in sets.items():
        cache = os.path.join(ev if s in ("valid", "test") else un, f"feats_{s}_{tag}.npy")
        t0 = time.time()
        x = features(d["paths"], spec, cache)
        logits[s] = np.asarray(fwd(x), dtype=np.float64)
        log(f"{name}: {s} {len(x)} clips in {time.time() - t0:.0f}s")
    T = fit_temperature(logits["valid"], sets["valid"]["y"])
    res = {"model_file": os.path.relpath(path, REPO) if path.startswith(REPO) else path, "temperature": T,
           "valid_nll": {"T=1": nll(logits["valid"], sets["valid"]["y"], 1.0),
                         "fitted": nll(logits["valid"], sets["valid"]["y"], T)}}
    for s in ("valid", "test", "unseen"):
        d, z = sets[s], logits[s]
        pred = z.argmax(1)
        r = {"n": len(d["y"]), "acc": float(np.mean(pred == d["y"])),
             "ece_before": ece(softmax(z), d["y"]), "ece_after": ece(softmax(z, T), d["y"]),
             "nll_before": nll(z, d["y"], 1.0), "nll_after": nll(z, d["y"], T),
             "per_voice": acc_groups(pred, d["y"], d["voice"])}
        if s == "unseen":
            r["per_condition"] = acc_groups(pred, d["y"], d["condition"])
            r["per_intent"] = acc_groups(pred, d["y"], [labels[i] for i in d["y"]])
            # clips longer than the model's window are cut at its end (features.fit_length)
            win = float(spec["seconds"])
            dur = np.array([clip_seconds(p) for p in d["paths"]])
            long_ = dur > win
            r["longer_than_window"] = {"seconds": win, "n": int(long_.sum()),
                                       "acc": float(np.mean(pred[long_] == d["y"][long_])) if long_.any() else None,
                                       "per_condition": {c: int((long_ & (np.asarray(d["condition"]) == c)).sum())
                                                         for c in sorted(set(d["condition"]))}}
            vc = {}
            for v in sorted(set(d["voice"])):
                m = np.array([x == v for x in d["voice"]])
                vc[v] = acc_groups(pred[m], d["y"][m], np.asarray(d["condition"])[m])
            r["per_voice_condition"] = vc
            pw = {}
            for i in range(len(pred)):
                k = f"{labels[d['y'][i]]}: {d['text'][i]}"
                pw.setdefault(k, []).append(bool(pred[i] == d["y"][i]))
            r["per_wording"] = {k: sum(v) / len(v) for k, v in sorted(pw.items())}
            # the wordings every held-out voice got wrong most often
            miss = {}
            for i in np.nonzero(pred != d["y"])[0]:
                k = (d["text"][i], labels[d["y"][i]])
                miss.setdefault(k, []).append(labels[pred[i]])
            r["hardest_wordings"] = [
                {"text": k[0], "label": k[1], "wrong": len(v), "answers": sorted(set(v))}
                for k, v in sorted(miss.items(), key=lambda kv: -len(kv[1]))[:12]]
        res[s] = r
    # OOV: what the model answers and how confident it is
    p_oov_raw, p_oov_cal = softmax(logits["oov"]), softmax(logits["oov"], T)
    z_in = np.concatenate([logits["test"], logits["unseen"]])
    y_in = np.concatenate([sets["test"]["y"], sets["unseen"]["y"]])
    res["oov"] = {"n": len(sets["oov"]["y"]),
                  "mean_top1_raw": float(p_oov_raw.max(1).mean()),
                  "mean_top1_calibrated": float(p_oov_cal.max(1).mean()),
                  "invocab_mean_top1_calibrated": float(softmax(z_in, T).max(1).mean())}
    part = np.array(["test"] * len(sets["test"]["y"]) + ["unseen"] * len(sets["unseen"]["y"]))
    for key, t in (("calibrated", T), ("raw", 1.0)):
        rec = recommend(softmax(z_in, t), y_in, softmax(logits["oov"], t), sets["oov"]["kind"])
        thr = sorted(set(THRESHOLDS) | ({rec} if rec is not None else set()))
        tab = {"test+unseen": threshold_table(softmax(z_in, t), y_in, softmax(logits["oov"], t),
                                              sets["oov"]["kind"], thr, part),
               "test": threshold_table(softmax(logits["test"], t), sets["test"]["y"],
                                       softmax(logits["oov"], t), sets["oov"]["kind"]),
               "unseen": threshold_table(softmax(logits["unseen"], t), sets["unseen"]["y"],
                                         softmax(logits["oov"], t), sets["oov"]["kind"])}
        res[f"threshold_{key}"] = tab
        res[f"recommended_threshold_{key}"] = rec
    res["recommendation_rule"] = (f"the threshold (0.01 steps) catching the largest share of OOV clips "
                                  f"while losing at most {MAX_LOST:.0%} of the in-vocabulary held-out "
                                  "clips (test + unseen pooled)")
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--jobs", type=int, default=2, help="data generation processes")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: no barrier spinning on a shared machine)")
    ap.add_argument("--write-temperature", action="store_true",
                    help="write each model's fitted T into its installed file (metadata shiftserve.temperature; "
                         "the tensors and logits do not change; the server then serves softmax(logits / T))")
    ap.add_argument("--file", default=None,
                    help="evaluate this model file instead of the installed one (one model in --models)")
    ap.add_argument("--fp32-state", default=None,
                    help="intent: evaluate these full-precision twin weights (train.py --wide's "
                         "<name>.fp32.pt; --file gives the preprocessing)")
    ap.add_argument("--out", default=None, help="results file (default results/intent-eval.json)")
    ap.add_argument("--record-twin", metavar="NAME", default=None,
                    help="with --fp32-state: write the twin's new-wording accuracy into "
                         "training/results/NAME.json (key fp32_unseen; make_cards.py shows it)")
    ap.add_argument("--summary", action="store_true",
                    help="print only aggregate figures (test, new wordings overall and per condition)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from train import intent_labels

    labels, _ = intent_labels()
    ev, un = data_dirs(args.jobs)
    sets = load_sets(ev, un, labels)
    log({s: len(d["y"]) for s, d in sets.items()})
    out_path = args.out or os.path.join(RESULTS, "intent-eval.json")
    out = {}
    if os.path.exists(out_path):
        with open(out_path) as f:
            out = json.load(f)
    sys.path.insert(0, os.path.join(REPO, "training", "data"))
    import intents_unseen
    import tts

    out["sets"] = {
        "valid": "training voices, the valid split of train.py (make_intents.py seed 20260): "
                 "10 % of the clean (phrase, voice) groups and their sox-augmented copies; "
                 "the temperature is fitted here",
        "test": "held-out voices x the 199 training phrasings, clean (the test split of train.py)",
        "unseen": f"{len(intents_unseen.unseen())} new wordings (5 per intent, "
                  "training/data/intents_unseen.py) x the held-out voices, each clip under one "
                  "condition (seeded, 31 clips per voice and condition): " + ", ".join(intents_unseen.CONDITIONS),
        "oov": f"{len(intents_unseen.oov())} out-of-vocabulary commands ({len(intents_unseen.OOV_NEAR)} near: "
               f"sharing words or a device class with the intents, {len(intents_unseen.OOV_FAR)} far) "
               "x the held-out voices, clean",
        "heldout_voices": [f"{e}/{v}" for e, v in tts.HELDOUT],
        "counts": {s: len(d["y"]) for s, d in sets.items()},
    }
    out["ece_bins"] = BINS
    out["generated_by"] = "training/eval_intent.py"
    for name in args.models.split(","):
        out[name] = evaluate(name, sets, labels, ev, un, path=args.file, fp32_state=args.fp32_state)
        r = out[name]
        if args.summary:
            log(f"{name}: per condition (new wordings): " + json.dumps(
                {c: round(v, 4) if isinstance(v, float) else v for c, v in r["unseen"]["per_condition"].items()}))
        log(f"{name}: T={r['temperature']:.3f} test {r['test']['acc']:.4f} unseen {r['unseen']['acc']:.4f} "
            f"ECE test {r['test']['ece_before']:.3f}->{r['test']['ece_after']:.3f} "
            f"unseen {r['unseen']['ece_before']:.3f}->{r['unseen']['ece_after']:.3f} "
            f"thr cal {r['recommended_threshold_calibrated']} raw {r['recommended_threshold_raw']}")
        with open(out_path, "w") as f:
            json.dump(out, f, indent=1, sort_keys=True)
            f.write("\n")
        if args.write_temperature:
            from shiftserve_train.export import set_temperature
            set_temperature(os.path.join(REPO, r["model_file"]), r["temperature"])
            log(f"{name}: wrote shiftserve.temperature = {r['temperature']!r} into {r['model_file']}")
        if args.record_twin:
            rp = os.path.join(RESULTS, f"{args.record_twin}.json")
            with open(rp) as f:
                rr = json.load(f)
            rr["fp32_unseen"] = r["unseen"]["acc"]
            rr["fp32_unseen_per_condition"] = {c: v["acc"] for c, v in r["unseen"]["per_condition"].items()}
            with open(rp, "w") as f:
                json.dump(rr, f, indent=1, sort_keys=True)
                f.write("\n")
    log("wrote", out_path)


if __name__ == "__main__":
    main()
