#!/usr/bin/env python3
"""Train, export and evaluate one bundled model (and its full-precision twin).

    nice -n 10 python training/train.py digits
    nice -n 10 python training/train.py intent
    nice -n 10 python training/train.py intent-lstm
    nice -n 10 python training/train.py fashion   # resumable: rerun after a stop

Each command: checks the data (generating it with training/data/*.py when missing), trains the
shift model (DenseShift W3 / MPS-TT) and its full-precision twin with the same recipe, calibrates
the 8-bit activation quantisers and fine-tunes with fake-quant, exports the model file, measures
accuracy *from the exported file* with ``shiftserve_train.reference``, writes
``models/repository/<name>/{config.toml,1/model.safetensors}`` and
``training/results/<name>.json`` (the figures of docs/models.md).

Data lives under $SHIFTSERVE_DATA (default: data/ beside the repository checkout), never in the repository.
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import os
import subprocess
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from common import DATA, REPO, log  # noqa: E402

PY = sys.executable
TAG = os.environ.get("SHIFTSERVE_RUN_TAG", "")  # suffix for parallel runs' parts/outputs


# ----------------------------------------------------------------------------------------------
# preprocessing specs (stored in the model files; training features go through the same code)

INTENT_SPEC = {"kind": "audio", "sample_rate": 16000, "seconds": 3.0, "features": "log_mel",
               "n_fft": 512, "win_length": 480, "hop_length": 320, "window": "hann",
               "center": True, "n_mels": 40, "f_min": 20.0, "f_max": 8000.0, "log_eps": 1e-6,
               "normalize": "utterance"}  # [1, 40, 151]: 30 ms windows, 20 ms hop
# LSTM: 40 ms hop -> [1, 40, 76] (half the recurrent steps of the ResNet's input)
INTENT_LSTM_SPEC = dict(INTENT_SPEC, n_fft=1024, win_length=640, hop_length=640)
DIGITS_SPEC = {"kind": "audio", "sample_rate": 8000, "seconds": 1.5, "features": "log_mel",
               "n_fft": 256, "win_length": 240, "hop_length": 120, "window": "hann",
               "center": True, "n_mels": 32, "f_min": 20.0, "f_max": 4000.0, "log_eps": 1e-6,
               "normalize": "utterance"}
# Fashion-MNIST: the served input is any picture of one garment: the dataset's own images (light
# garment on black), inverted ones, product photos on white / off-white / grey, cut-outs on a
# transparent background, phone photos with EXIF orientation. The front end (docs/format.md,
# background "auto" + frame) composites alpha over the picture's own background, decides polarity
# and background level from its border (object light on 0, as in the dataset), and frames the
# garment's bounding box as the dataset does (longer side 28, centred). Training inputs go through
# the same code (shiftserve_train.features).
FASHION_SPEC = {"kind": "image", "channels": 1, "crop": [28, 28], "mean": [0.2860], "std": [0.3530],
                "background": "auto", "frame": {"fit": 28, "threshold": 24}}


def run_data_script(script, *args):
    cmd = ["nice", "-n", "10", PY, os.path.join(REPO, "training", "data", script), *args]
    log("generating data:", " ".join(cmd))
    subprocess.run(cmd, check=True)


# ----------------------------------------------------------------------------------------------
# audio data


def load_audio_manifest(manifest, spec, root=None, cache=None):
    """-> dict(wave float32 [N, samples], rows) with every clip read by shiftserve_train.features
    (read_wav, resample when needed, fit_length), cached as .npy."""
    from shiftserve_train import features as feat

    with open(manifest) as f:
        rows = list(csv.DictReader(f))
    sr = int(spec["sample_rate"])
    n = int(round(float(spec["seconds"]) * sr))
    if cache and os.path.exists(cache) and os.path.getmtime(cache) > os.path.getmtime(manifest):
        wave = np.load(cache)
        if wave.shape == (len(rows), n):
            return wave, rows
    wave = np.zeros((len(rows), n), dtype=np.float32)
    for i, r in enumerate(rows):
        p = r["path"] if os.path.isabs(r["path"]) else os.path.join(root, r["path"])
        x, rate = feat.read_wav(p)
        if rate != sr:
            x = feat.resample(x, rate, sr)
        wave[i] = feat.fit_length(x, n).astype(np.float32)
    if cache:
        np.save(cache, wave)
    return wave, rows


def logmel_batches(wave, spec, batch=256):
    from shiftserve_train.features import LogMel

    lm = LogMel(spec)
    out = []
    with torch.no_grad():
        for i in range(0, len(wave), batch):
            out.append(lm(torch.from_numpy(wave[i:i + batch])))
    return torch.cat(out).numpy()


def spec_augment(x, rng, n_freq=2, max_f=5, n_time=2, max_t=12):
    """SpecAugment-style masks on a feature batch [B, 1, M, T] (set to 0 = the utterance mean)."""
    x = x.clone()
    b, _, m, t = x.shape
    for i in range(b):
        for _ in range(n_freq):
            w = int(rng.integers(0, max_f + 1))
            s = int(rng.integers(0, m - w + 1))
            x[i, :, s:s + w, :] = 0
        for _ in range(n_time):
            w = int(rng.integers(0, max_t + 1))
            s = int(rng.integers(0, t - w + 1))
            x[i, :, :, s:s + w] = 0
    return x


def augment_waves(w, rng, sr, max_shift_s=0.35, speed=(0.85, 1.15), snr=(10, 40), p_noise=0.6):
    """Online waveform augmentation [B, n]: speed perturbation (linear resampling: tempo and pitch
    together, like sox `speed`), random leading silence, gain, white noise."""
    b, n = w.shape
    out = np.zeros_like(w)
    for i in range(b):
        x = w[i]
        nz = np.nonzero(np.abs(x) > 1e-4)[0]
        x = x[: nz[-1] + 1] if len(nz) else x[:1]
        f = rng.uniform(*speed)
        m = max(2, int(len(x) / f))
        x = np.interp(np.linspace(0, len(x) - 1, m), np.arange(len(x)), x)
        room = n - len(x)
        off = int(rng.integers(0, max(1, min(room, int(max_shift_s * sr)) + 1))) if room > 0 else 0
        seg = x[: n - off]
        out[i, off:off + len(seg)] = seg * rng.uniform(0.3, 1.0)
        if rng.random() < p_noise:
            rms = np.sqrt(np.mean(seg ** 2)) + 1e-6
            s = rng.uniform(*snr)
            out[i] += rng.standard_normal(n).astype(np.float32) * rms * 10 ** (-s / 20)
    return out


# ----------------------------------------------------------------------------------------------
# digits


def digits_data():
    d = os.path.join(DATA, "digits")
    man = os.path.join(d, "manifest.csv")
    if not os.path.exists(man):
        run_data_script("make_digits.py", "--out", d)
    with open(man) as f:
        if not any(r["split"] == "xvalid" for r in csv.DictReader(f)):
            run_data_script("make_digits.py", "--out", d, "--xvalid-only")
    wave, rows = load_audio_manifest(man, DIGITS_SPEC, cache=os.path.join(d, "wave_8k_1.5s.npy"))
    return wave, rows


def build_digits(shift, width=16):
    from shiftserve_train.models import ResNet

    return ResNet("basic", (1, 1, 1), (width, 2 * width, 4 * width), stem="imagenet", stem_width=width,
                  in_channels=1, num_classes=10, shift=shift, bits=3)


def colored_noise(n, rng, color):
    """White / pink (1/f) / brown (1/f^2) noise of unit RMS, shaped in the frequency domain."""
    w = rng.standard_normal(n)
    if color != "white":
        m = 1 << int(np.ceil(np.log2(n)))  # power-of-two FFT (fast), cut back to n
        spec = np.fft.rfft(rng.standard_normal(m))
        f = np.arange(len(spec), dtype=np.float64)
        f[0] = 1.0
        spec /= f ** (0.5 if color == "pink" else 1.0)
        w = np.fft.irfft(spec, m)[:n]
    return (w / (np.sqrt(np.mean(w ** 2)) + 1e-12)).astype(np.float32)


def random_eq(x, rng, sr, max_tilt_db=8.0, n_bumps=2, bump_db=6.0, p_lowpass=0.3):
    """Random microphone/channel colouring in the frequency domain: a spectral tilt of +-max_tilt_db
    over the band, n_bumps Gaussian peaks/dips of +-bump_db, and (p_lowpass) a soft low-pass
    between 2 and 3.6 kHz."""
    m = 1 << int(np.ceil(np.log2(len(x) + 256)))  # zero-padded power-of-two FFT (fast)
    spec = np.fft.rfft(x, m)
    f = np.fft.rfftfreq(m, 1.0 / sr) / (sr / 2)  # 0..1
    db = rng.uniform(-max_tilt_db, max_tilt_db) * (f - 0.5)
    for _ in range(n_bumps):
        c, w = rng.uniform(0.05, 0.95), rng.uniform(0.05, 0.25)
        db = db + rng.uniform(-bump_db, bump_db) * np.exp(-0.5 * ((f - c) / w) ** 2)
    g = 10 ** (db / 20)
    if rng.random() < p_lowpass:
        fc = rng.uniform(2000, 3600) / (sr / 2)
        g = g / np.sqrt(1 + (f / fc) ** 8)
    return np.fft.irfft(spec * g, m)[:len(x)]


def augment_digit_waves(w, rng, sr, max_shift_s=0.3, speed=(0.85, 1.15), snr=(10, 40), p_noise=0.5,
                        p_eq=0.7):
    """Online waveform augmentation of the digits [B, n]: speed perturbation (linear resampling:
    tempo and pitch together, like sox `speed`), random channel EQ (random_eq), random leading
    silence, gain, and white/pink/brown noise at 10-40 dB SNR -- over the spoken part only in
    2 of 3 noisy clips (the served clips are padded with digital silence, as the test ones are),
    over the whole 1.5 s otherwise."""
    b, n = w.shape
    out = np.zeros_like(w)
    for i in range(b):
        x = w[i]
        nz = np.nonzero(np.abs(x) > 1e-4)[0]
        x = x[: nz[-1] + 1] if len(nz) else x[:1]
        f = rng.uniform(*speed)
        m = max(2, int(len(x) / f))
        x = np.interp(np.linspace(0, len(x) - 1, m), np.arange(len(x)), x)
        if rng.random() < p_eq and len(x) > 64:
            x = random_eq(x, rng, sr)
        room = n - len(x)
        off = int(rng.integers(0, max(1, min(room, int(max_shift_s * sr)) + 1))) if room > 0 else 0
        seg = x[: n - off] * rng.uniform(0.3, 1.0)
        out[i, off:off + len(seg)] = seg
        if rng.random() < p_noise:
            rms = np.sqrt(np.mean(seg ** 2)) + 1e-6
            amp = rms * 10 ** (-rng.uniform(*snr) / 20)
            color = ("white", "pink", "brown")[int(rng.integers(0, 3))]
            if rng.random() < 2 / 3:
                out[i, off:off + len(seg)] += colored_noise(len(seg), rng, color) * amp
            else:
                out[i] += colored_noise(n, rng, color) * amp
    return out


def mel_warp(x, rng, lo=0.88, hi=1.12):
    """Vocal-tract-length-style warp of the mel axis of a feature batch [B, 1, M, T]: bin m takes
    the value at m * alpha (alpha uniform in [lo, hi], per clip; linear interpolation, edge bins
    repeated)."""
    b, _, m, t = x.shape
    alpha = torch.from_numpy(rng.uniform(lo, hi, size=b).astype(np.float32))
    src = torch.arange(m, dtype=torch.float32)[None] * alpha[:, None]  # [B, M]
    gy = (2 * src / (m - 1) - 1).clamp(-1, 1)[:, :, None].expand(b, m, t)
    gx = torch.linspace(-1, 1, t)[None, None].expand(b, m, t)
    grid = torch.stack([gx, gy], -1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)


def run_digits(args):
    from shiftserve_train import export as ex

    labels = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    wave, rows = digits_data()
    y = np.array([labels.index(r["label"]) for r in rows])
    split = np.array([r["split"] for r in rows])
    spk = np.array([r["speaker"] for r in rows])
    src = np.array([r["source"] for r in rows])
    tr, va, xv, te = split == "train", split == "valid", split == "xvalid", split == "test"
    log(f"digits: train {tr.sum()} (fsdd {(tr & (src == 'fsdd')).sum()}, tts {(tr & (src != 'fsdd')).sum()}),"
        f" valid {va.sum()}, held-out-voice valid {xv.sum()}, test {te.sum()} (speakers {sorted(set(spk[te]))})")
    assert not set(spk[tr]) & {"george", "lucas"}
    feats_va = torch.from_numpy(logmel_batches(wave[va], DIGITS_SPEC))
    feats_xv = torch.from_numpy(logmel_batches(wave[xv], DIGITS_SPEC))
    feats_te = torch.from_numpy(logmel_batches(wave[te], DIGITS_SPEC))
    from shiftserve_train.features import LogMel

    lm = LogMel(DIGITS_SPEC)
    tr_idx = np.nonzero(tr)[0]
    bs = 64
    aug = args.digits_aug
    width = args.digits_width

    def batches(ep, augment=True):
        rng = np.random.default_rng(ep)
        perm = rng.permutation(tr_idx)
        for i in range(0, len(perm) - bs + 1, bs):
            idx = perm[i:i + bs]
            w = wave[idx]
            if augment:
                w = augment_waves(w, rng, 8000) if aug == 1 else augment_digit_waves(w, rng, 8000)
            with torch.no_grad():
                x = lm(torch.from_numpy(w))
                if augment and aug >= 2:
                    x = mel_warp(x, rng)
            if augment:
                x = spec_augment(x, rng, max_f=4, max_t=8)
            yield x, torch.from_numpy(y[idx])

    def evaluate(model):
        v = common.acc(common.predict(model, feats_va), y[va])
        x = common.acc(common.predict(model, feats_xv), y[xv])
        log(f"  valid {v:.4f} held-out-voice valid {x:.4f}")
        return (v + x) / 2

    steps = len(tr_idx) // bs
    res = {"name": "digits", "spec": DIGITS_SPEC, "epochs": args.epochs or 36, "width": width,
           "augmentation": aug}
    for kind in kinds_of(args, ("fp32", "shift")):
        torch.manual_seed(0)
        model = build_digits(kind == "shift", width)
        t = common.train_loop(model, batches, res["epochs"], lr=args.lr or 3e-3, steps_per_epoch=steps,
                              eval_fn=lambda: evaluate(model), desc=f"digits-{kind}")
        if kind == "shift":
            common.qat(model, [x for x, _ in itertools.islice(batches(998, augment=False), 8)],
                       batches, steps=args.qat_steps, lr=3e-4, desc="digits")
        pt_te = common.predict(model, feats_te)
        r = {"train_seconds": t, "valid_acc_pytorch": common.acc(common.predict(model, feats_va), y[va]),
             "xvalid_acc_pytorch": common.acc(common.predict(model, feats_xv), y[xv]),
             "test_acc_pytorch": common.acc(pt_te, y[te]),
             "test_per_speaker_pytorch": common.per_group(pt_te, y[te], spk[te])}
        log(f"digits-{kind}: {json.dumps(r)}")
        res[kind] = r
    if "shift" not in res:
        return save_part("digits", res)
    out = os.path.join(DATA, "digits", f"digits{TAG}.safetensors")
    ex.export(model, out, name="digits", task="audio_classification", labels=labels,
              preprocess=DIGITS_SPEC, numeric_path="int8", progress=False,
              description="DenseShift W3 ResNet (3 stages) on log-mel, 8 kHz; trained on FSDD "
                          "speakers jackson/nicolas/theo/yweweler + TTS digits")
    f_va = common.predict_file(out, feats_va.numpy())
    f_xv = common.predict_file(out, feats_xv.numpy())
    f_te = common.predict_file(out, feats_te.numpy())
    res["shift"]["valid_acc_file"] = common.acc(f_va, y[va])
    res["shift"]["xvalid_acc_file"] = common.acc(f_xv, y[xv])
    res["shift"]["test_acc_file"] = common.acc(f_te, y[te])
    res["shift"]["test_per_speaker_file"] = common.per_group(f_te, y[te], spk[te])
    log(f"digits-shift file: {json.dumps(res['shift'])}")
    # card-check subset: recordings 0-9 of every digit of george and lucas, read from the WAVs
    sub = [i for i, r in enumerate(rows) if r["split"] == "test" and
           int(os.path.basename(r["path"])[:-4].split("_")[2]) < 10]
    res["card_check"] = card_check_audio(out, [rows[i]["path"] for i in sub], y[sub], DIGITS_SPEC)
    res["model_file"] = out
    res["description"] = "DenseShift W3 ResNet spoken digits (8 kHz log-mel)"
    save_part("digits", res)


def card_check_audio(model_file, paths, y, spec):
    """Accuracy of the exported file on WAV files, features from the files themselves
    (shiftserve_train.features.audio_features, the reference of the server's preprocessing)."""
    from shiftserve_train.features import audio_features

    x = np.stack([audio_features(p, spec) for p in paths])
    p = common.predict_file(model_file, x)
    return {"n": len(paths), "acc": common.acc(p, y)}


def kinds_of(args, both):
    return both if args.variant == "both" else (args.variant,)


def part_path(name, variant, tag=None):
    return os.path.join(DATA, "parts", f"{name}{TAG if tag is None else tag}.{variant}.json")


def save_part(name, res):
    kinds = [k for k in ("fp32", "shift", "dense", "tt") if k in res]
    os.makedirs(os.path.join(DATA, "parts"), exist_ok=True)
    for k in kinds:
        part = {kk: v for kk, v in res.items() if kk not in ("fp32", "shift", "dense", "tt")
                or kk == k}
        part["process_wall_seconds"] = common.T0()
        with open(part_path(name, k), "w") as f:
            json.dump(part, f)
    log(f"{name}: saved {kinds}")


def child_env():
    """Environment of the training children: glibc malloc keeps freed memory instead of returning
    every large (> 128 KiB) activation buffer to the kernel with munmap, which made each step
    page-fault its activations in again (measured on the fashion ResNet, batch 128, one thread:
    ~7x fewer page faults, ~25 % less CPU per step)."""
    env = dict(os.environ)
    env.setdefault("MALLOC_MMAP_THRESHOLD_", str(4 << 30))
    env.setdefault("MALLOC_TRIM_THRESHOLD_", str(64 << 30))
    env.setdefault("MALLOC_TOP_PAD_", str(1 << 30))
    return env


def run_parallel(args):
    """Train the two variants in two single-threaded child processes (less OpenMP barrier
    waiting on a shared, oversubscribed machine), then merge and install the model."""
    kinds = ("dense", "tt") if args.model == "intent-lstm" else ("fp32", "shift")
    procs = []
    for k in kinds:
        cmd = [PY, os.path.abspath(__file__), args.model, "--variant", k, "--threads", "1",
               "--qat-steps", str(args.qat_steps), "--width", str(args.width),
               "--tt-rank", str(args.tt_rank), "--first-stride", str(args.first_stride)]
        cmd += ["--finetune-epochs", str(args.finetune_epochs), "--finetune-lr", str(args.finetune_lr)]
        cmd += ["--p-aug", str(args.p_aug)]
        cmd += ["--digits-width", str(args.digits_width), "--digits-aug", str(args.digits_aug)]
        cmd += ["--continue-epochs", str(args.continue_epochs), "--continue-lr", str(args.continue_lr),
                "--continue-aug", str(args.continue_aug)]
        if args.init_from is not None:
            cmd += [f"--init-from={args.init_from}"]
        for opt in ("epochs", "lr", "max_steps"):
            if getattr(args, opt) is not None:
                cmd += [f"--{opt.replace('_', '-')}", str(getattr(args, opt))]
        if args.wave_aug:
            cmd.append("--wave-aug")
        if args.wide:
            cmd += ["--wide", "--orig-repeat", str(args.orig_repeat)]
        if args.model == "intent-lstm":
            cmd += ["--tt-init", args.tt_init]
            if args.tt_out_rank:
                cmd += ["--tt-out-rank", str(args.tt_out_rank)]
            if args.tt_epochs:
                cmd += ["--tt-epochs", str(args.tt_epochs)]
        logf = open(os.path.join(DATA, "logs", f"{args.model}{TAG}.{k}.log"), "w")
        log("start:", " ".join(cmd), "->", logf.name)
        procs.append((k, subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=child_env()), logf))
        if args.model == "intent-lstm" and args.tt_init == "dense" and k == "dense":
            # the TT model is compressed from the trained dense twin: wait for it
            if procs[-1][1].wait() != 0:
                raise SystemExit(f"{args.model} {k} failed, see {logf.name}")
    for k, p, logf in procs:
        if p.wait() != 0:
            raise SystemExit(f"{args.model} {k} failed, see {logf.name}")
    merge(args.model, kinds, install=not args.no_install)


def merge(name, kinds, install=True, separate=False):
    """Merge the variants' parts. ``separate``: the variants were started as separate
    ``--variant`` processes (``--merge``); the command's wall time is then the longer process's,
    as if run_parallel had run them."""
    res, walls = {}, []
    for k in kinds:
        with open(part_path(name, k)) as f:
            part = json.load(f)
        walls.append(part.pop("process_wall_seconds"))
        for kk, v in part.items():
            res.setdefault(kk, v)
    if name == "intent-lstm":
        res["tt_storage_fraction"] = res["tt"]["matrix_params"] / res["dense"]["matrix_params"]
    res["wall_seconds_total"] = max(walls) if separate else common.T0()
    if not install:
        common.save_results(name + TAG, res)
        return
    finish(name, res.pop("model_file"), res, res["description"])


def record_sweep(tags):
    """training/results/intent-lstm-sweep.json from the TT parts of `--variant tt` runs under the
    run tags ``tags`` (other ranks compressed from the same dense twin; see docs/models.md)."""
    runs = []
    for tag in tags:
        with open(part_path("intent-lstm", "tt", tag)) as f:
            p = json.load(f)
        t = p["tt"]
        runs.append(dict(rank=p["tt_rank"], out_rank=p.get("tt_out_rank"), matrix_params=t["matrix_params"],
                         valid=t["valid_acc_file"], test=t["test_acc_file"], epochs=p["tt_epochs"],
                         ranks=p["tt_ranks"], card_check=p["card_check"]))
    common.save_results("intent-lstm-sweep", {
        "note": "TT-SVD of the intent-lstm dense twin at other bond ranks + distillation fine-tuning "
                "(training/train.py intent-lstm --variant tt --tt-rank R [--tt-out-rank O] --tt-epochs E, "
                "same dense twin)", "runs": runs})


def install_results(src_name, name):
    """Install a --no-install run (training/results/<src_name>.json) as model `name`."""
    with open(os.path.join(common.RESULTS, f"{src_name}.json")) as f:
        res = json.load(f)
    res["name"] = name
    finish(name, res.pop("model_file"), res, res["description"])


def finish(name, out, res, description):
    size, fp32 = common.file_sizes(out)
    res.setdefault("wall_seconds_total", common.T0())
    res["file_bytes"] = size
    res["fp32_equivalent_bytes"] = fp32
    res["compression_vs_fp32"] = fp32 / size
    common.write_repository_entry(name, out, description)
    common.save_results(name, res)
    log(f"{name}: file {size} bytes ({fp32 / size:.1f}x smaller than fp32), results {json.dumps(res)[:2000]}")


# ----------------------------------------------------------------------------------------------
# intents


def intent_labels():
    sys.path.insert(0, os.path.join(REPO, "training", "data"))
    import intents_text

    its = intents_text.intents()
    labels = [intents_text.label(a, o, l) for a, o, l, _ in its]
    intents = [{"action": a, "object": o, "location": l} for a, o, l, _ in its]
    return labels, intents


def intent_data(spec, tag):
    d = os.path.join(DATA, "intents")
    man = os.path.join(d, "manifest.csv")
    if not os.path.exists(man):
        run_data_script("make_intents.py", "--out", d)
    wave, rows = load_audio_manifest(man, spec, root=d, cache=os.path.join(d, "wave_16k_3s.npy"))
    fcache = os.path.join(d, f"feats_{tag}.npy")
    if os.path.exists(fcache) and os.path.getmtime(fcache) > os.path.getmtime(man):
        feats = np.load(fcache)
    else:
        feats = logmel_batches(wave, spec)
        np.save(fcache, feats)
    return feats, rows


def intent_wide_data(spec):
    """Issue 11: the wide-grammar training set ($SHIFTSERVE_DATA/intents-wide, make_intents_wide.py,
    training voices only) as waveforms (online augmentation), and the valid/test splits of
    $SHIFTSERVE_DATA/intents-eval (make_intents.py --no-train: training voices / held-out voices x
    the 199 phrasings) as features. -> (wave_train [N, n], y_train, feats_eval, rows_eval)"""
    d = os.path.join(DATA, "intents-wide")
    man = os.path.join(d, "manifest.csv")
    if not os.path.exists(man):
        run_data_script("make_intents_wide.py", "--out", d)
    cache = os.path.join(d, "wave_16k_3s.npy")
    with open(man) as f:
        rows = list(csv.DictReader(f))
    if not (os.path.exists(cache) and os.path.getmtime(cache) > os.path.getmtime(man)):
        load_wide_waves(rows, d, spec, cache)
    ev = os.path.join(DATA, "intents-eval")
    eman = os.path.join(ev, "manifest.csv")
    if not os.path.exists(eman):
        run_data_script("make_intents.py", "--no-train", "--out", ev)
    tag = f"{spec['n_mels']}x{spec['hop_length']}"
    fcache = os.path.join(d, f"evalfeats_{tag}.npy")
    with open(eman) as f:
        erows = list(csv.DictReader(f))
    if os.path.exists(fcache) and os.path.getmtime(fcache) > os.path.getmtime(eman):
        feats = np.load(fcache)
    else:
        ew, erows = load_audio_manifest(eman, spec, root=ev)
        feats = logmel_batches(ew, spec)
        np.save(fcache, feats)
    return np.load(cache, mmap_mode="r"), rows, feats, erows


def load_wide_waves(rows, root, spec, cache, max_squeeze=1.4):
    """Read the wide set's clips (shiftserve_train.features.read_wav), trim leading/trailing
    silence; a clip longer than the window is sped up (linear resampling) to fit when it is at
    most ``max_squeeze`` times too long (a long polite request would otherwise lose its last
    words, often the location, to the cut), else cut at the end. Cached as .npy."""
    from shiftserve_train import features as feat

    sr = int(spec["sample_rate"])
    n = int(round(float(spec["seconds"]) * sr))
    wave = np.lib.format.open_memmap(cache + ".tmp.npy", mode="w+", dtype=np.float32, shape=(len(rows), n))
    squeezed = cut = 0
    for i, r in enumerate(rows):
        x, rate = feat.read_wav(os.path.join(root, r["path"]))
        if rate != sr:
            x = feat.resample(x, rate, sr)
        nz = np.nonzero(np.abs(x) > 1e-3 * max(1e-6, float(np.max(np.abs(x)))))[0]
        if len(nz):
            x = x[max(0, nz[0] - 800): nz[-1] + 800]
        if len(x) > n:
            if len(x) <= max_squeeze * n:
                x = np.interp(np.linspace(0, len(x) - 1, n - 1600), np.arange(len(x)), x)
                squeezed += 1
            else:
                cut += 1
        wave[i] = feat.fit_length(np.asarray(x, dtype=np.float32), n)
    wave.flush()
    del wave
    os.replace(cache + ".tmp.npy", cache)
    log(f"intents-wide: {len(rows)} clips, {squeezed} sped up to fit {spec['seconds']} s, {cut} cut")


def noise_bank(rng, n, k=48):
    """k white, pink and brown noise clips of n samples (unit RMS) for online mixing."""
    out = []
    f = np.fft.rfftfreq(n)
    f[0] = f[1]
    for color in ("white", "pink", "brown"):
        for _ in range(k):
            x = rng.standard_normal(n)
            if color != "white":
                X = np.fft.rfft(x) / (np.sqrt(f) if color == "pink" else f)
                x = np.fft.irfft(X, n)
            x = x - x.mean()
            out.append((x / (np.sqrt(np.mean(x ** 2)) + 1e-9)).astype(np.float32))
    return np.stack(out)


def augment_waves_wide(w, rng, sr, bank, max_shift_s=0.3, speed=(0.9, 1.1), p_speed=0.5,
                       snr=(5, 35), p_noise=0.7):
    """Online waveform augmentation of the wide set [B, n] (the clips already carry a sox chain of
    tempo/pitch/reverb): speed perturbation (half the clips), random leading silence, gain,
    white/pink/brown noise at 5-35 dB SNR."""
    b, n = w.shape
    out = np.zeros((b, n), dtype=np.float32)
    for i in range(b):
        x = np.asarray(w[i])
        nz = np.nonzero(np.abs(x) > 1e-4)[0]
        x = x[nz[0]: nz[-1] + 1] if len(nz) else x[:1]
        if rng.random() < p_speed:
            f = rng.uniform(*speed)
            m = max(2, int(len(x) / f))
            x = np.interp(np.linspace(0, len(x) - 1, m), np.arange(len(x)), x)
        room = n - len(x)
        off = int(rng.integers(0, max(1, min(room, int(max_shift_s * sr)) + 1))) if room > 0 else 0
        seg = x[: n - off]
        out[i, off:off + len(seg)] = seg * rng.uniform(0.3, 1.0)
        if rng.random() < p_noise:
            rms = np.sqrt(np.mean(seg ** 2)) + 1e-6
            nz_ = np.roll(bank[int(rng.integers(0, len(bank)))], int(rng.integers(0, n)))
            out[i] += nz_ * rms * 10 ** (-rng.uniform(*snr) / 20)
    return out


def build_intent(shift):
    from shiftserve_train.models import ResNet

    # SLU shift ResNet (Avila et al. style): fp32 7x7/2 stem + maxpool on the 1-channel log-mel,
    # four BasicBlock stages of shift convs, global pooling, fp32 classifier.
    return ResNet("basic", (1, 1, 1, 1), (16, 32, 64, 128), stem="imagenet", stem_width=16,
                  in_channels=1, num_classes=31, shift=shift, bits=3)


def build_intent_lstm(tt, hidden=128, rank=15, out_rank=None):
    from shiftserve_train.models import LSTMClassifier, TTLSTMClassifier, clamped_ranks

    if not tt:
        return LSTMClassifier(40, hidden, 31, output="mean")
    # bond rank `rank`, clamped to each bond's maximum (e.g. the first bond of W_ih is at most 2)
    ih = ([2, 4, 5], [8, 8, 8])
    hh = ([4, 4, 8], [8, 8, 8])
    # out_rank: cap of the bonds between the output modes (the middle bond, which bounds the
    # matrix rank, keeps `rank`)
    def ranks(modes):
        r = clamped_ranks(*modes, rank)
        d = len(modes[0])
        return r[:d] + [min(x, out_rank or x) for x in r[d:]]

    return TTLSTMClassifier(40, hidden, 31, ih_in_modes=ih[0], ih_out_modes=ih[1],
                            hh_in_modes=hh[0], hh_out_modes=hh[1], ih_ranks=ranks(ih),
                            hh_ranks=ranks(hh), output="mean")


def dense_state_path():
    return os.path.join(DATA, "intents", f"intent-lstm{TAG}.dense.pt")


def run_intent(args, lstm=False):
    from shiftserve_train import export as ex

    name = "intent-lstm" if lstm else "intent"
    spec = INTENT_LSTM_SPEC if lstm else INTENT_SPEC
    labels, intents = intent_labels()
    if args.wide:
        return run_intent_wide(args, name, spec, labels, intents, lstm)
    feats, rows = intent_data(spec, "40x76" if lstm else "40x151")
    y = np.array([labels.index(r["label"]) for r in rows])
    split = np.array([r["split"] for r in rows])
    voice = np.array([f"{r['engine']}/{r['voice']}" for r in rows])
    engine = np.array([r["engine"] for r in rows])
    tr, va, te = split == "train", split == "valid", split == "test"
    assert not set(engine[tr]) & {"pico", "rhvoice"} and not any("slt" in v for v in voice[tr])
    log(f"{name}: train {tr.sum()} valid {va.sum()} test {te.sum()}; input {feats.shape[1:]}")
    X = torch.from_numpy(feats)
    tr_idx = np.nonzero(tr)[0]
    bs = 128 if lstm else 64
    if args.wave_aug:
        # online waveform augmentation (speed perturbation = tempo and pitch, offset, gain,
        # noise) on top of the synthesis-time sox augmentation; features recomputed per batch
        from shiftserve_train.features import LogMel

        wave, _ = load_audio_manifest(os.path.join(DATA, "intents", "manifest.csv"), spec,
                                      root=os.path.join(DATA, "intents"),
                                      cache=os.path.join(DATA, "intents", "wave_16k_3s.npy"))
        lm = LogMel(spec)

    def batches(ep, augment=True):
        rng = np.random.default_rng(ep)
        perm = rng.permutation(tr_idx)
        for i in range(0, len(perm) - bs + 1, bs):
            idx = perm[i:i + bs]
            if augment and args.wave_aug:
                with torch.no_grad():
                    x = lm(torch.from_numpy(augment_waves(wave[idx], rng, 16000)))
            else:
                x = X[idx]
            if augment:
                x = spec_augment(x, rng, max_f=4, max_t=5 if lstm else 10)
            yield x, torch.from_numpy(y[idx])

    steps = len(tr_idx) // bs
    res = {"name": name, "spec": spec, "epochs": args.epochs or (60 if lstm else 40),
           "qat_steps": args.qat_steps, "wave_aug": bool(args.wave_aug)}
    if lstm:
        res["tt_rank"] = args.tt_rank
        res["tt_out_rank"] = args.tt_out_rank
        res["tt_init_mode"] = args.tt_init
    for kind in kinds_of(args, ("dense", "tt") if lstm else ("fp32", "shift")):
        torch.manual_seed(0)
        model = (build_intent_lstm(kind == "tt", rank=args.tt_rank, out_rank=args.tt_out_rank) if lstm
                 else build_intent(kind == "shift"))
        loss_fn = None
        epochs = res["epochs"]
        lr = args.lr or (5e-3 if lstm else 3e-3)
        if lstm and kind == "tt" and args.tt_init == "dense":
            # compress the trained dense twin: TT-SVD of W_ih / W_hh at the TT ranks, biases and
            # classifier copied, then fine-tune with the dense twin as distillation teacher
            teacher = build_intent_lstm(False)
            teacher.load_state_dict(torch.load(dense_state_path(), weights_only=True))
            r = res.setdefault("tt_init", {})
            r["ih_rel_error"] = model.lstm.ih.load_dense(teacher.lstm.weight_ih_l0.detach())
            r["hh_rel_error"] = model.lstm.hh.load_dense(teacher.lstm.weight_hh_l0.detach())
            with torch.no_grad():
                model.lstm.bias.copy_(teacher.lstm.bias_ih_l0 + teacher.lstm.bias_hh_l0)
                model.fc.load_state_dict(teacher.fc.state_dict())
            r["valid_acc_after_svd"] = common.acc(common.predict(model, X[va]), y[va])
            log(f"{name}-tt: TT-SVD of the dense twin: {json.dumps(r)}")
            loss_fn = common.distillation_loss(teacher)
            epochs = args.tt_epochs or 40
            lr = args.lr or 2e-3
            res["tt_epochs"], res["tt_lr"] = epochs, lr
        if lstm and kind == "tt":
            import lstm_fast

            lstm_fast.patch(model)  # same function, fused recurrence (see lstm_fast.py)
        t = common.train_loop(model, batches, epochs, lr=lr,
                              steps_per_epoch=steps, grad_clip=5.0 if lstm else None,
                              eval_fn=lambda: common.acc(common.predict(model, X[va]), y[va]),
                              desc=f"{name}-{kind}", loss_fn=loss_fn)
        if lstm and kind == "dense":
            torch.save(model.state_dict(), dense_state_path())
        if kind == "shift":
            common.qat(model, [x for x, _ in itertools.islice(batches(998, augment=False), 8)], batches,
                       steps=args.qat_steps, lr=3e-4, desc=name)
        pt_te = common.predict(model, X[te])
        r = {"train_seconds": t,
             "valid_acc_pytorch": common.acc(common.predict(model, X[va]), y[va]),
             "test_acc_pytorch": common.acc(pt_te, y[te]),
             "test_per_voice_pytorch": common.per_group(pt_te, y[te], voice[te])}
        if lstm:
            lay = model.lstm
            if kind == "tt":
                r["matrix_params"] = lay.ih.num_params() + lay.hh.num_params()
                res["tt_ranks"] = {"ih": lay.ih.ranks, "hh": lay.hh.ranks}
            else:
                r["matrix_params"] = lay.weight_ih_l0.numel() + lay.weight_hh_l0.numel()
        log(f"{name}-{kind}: {json.dumps(r)}")
        res[kind] = r
    key = "tt" if lstm else "shift"
    if key not in res:
        return save_part(name, res)
    out = os.path.join(DATA, "intents", f"{name}{TAG}.safetensors")
    desc = ("LSTM (hidden 128) with MPS tensor-train W_ih/W_hh on 40 log-mel, 40 ms hop; "
            "FSC-style 31 intents" if lstm else
            "DenseShift W3 SLU ResNet on 40 log-mel (16 kHz, 3 s, 20 ms hop); FSC-style 31 intents")
    export_intent(name, res, key, model, out, desc, spec, labels, intents, X, y, va, te, voice, engine)


def export_intent(name, res, key, model, out, desc, spec, labels, intents, X, y, va, te, voice, engine):
    """Exports an intent model, measures the file on the valid/test splits (per voice and engine)
    and on the CI card-check subset, and saves the results part (run_intent and run_intent_wide)."""
    ex.export(model, out, name=name, task="spoken_intent", labels=labels, intents=intents,
              preprocess=spec, numeric_path="int8", progress=False, description=desc)
    f_va = common.predict_file(out, X[va].numpy())
    f_te = common.predict_file(out, X[te].numpy())
    res[key]["valid_acc_file"] = common.acc(f_va, y[va])
    res[key]["test_acc_file"] = common.acc(f_te, y[te])
    res[key]["test_per_voice_file"] = common.per_group(f_te, y[te], voice[te])
    res[key]["test_per_engine_file"] = common.per_group(f_te, y[te], engine[te])
    ev = os.path.join(REPO, "data", "eval", "intents", "manifest.csv")
    if not os.path.exists(ev):
        subprocess.run(["nice", "-n", "10", PY, os.path.join(REPO, "training", "data", "make_intents.py"),
                        "--eval-subset"], check=True)
    with open(ev) as f:
        erows = list(csv.DictReader(f))
    res["card_check"] = card_check_audio(out, [os.path.join(os.path.dirname(ev), r["file"]) for r in erows],
                                         np.array([labels.index(r["label"]) for r in erows]), spec)
    res["model_file"] = out
    res["description"] = desc
    save_part(name, res)


def run_intent_wide(args, name, spec, labels, intents, lstm):
    """Issue 11: train on the wide grammar (intents-wide, training voices, online waveform
    augmentation + SpecAugment), checkpointed every epoch under $SHIFTSERVE_DATA/intents-wide/ckpt
    (rerun the same command to continue); valid/test = intents-eval (the same splits as the
    bundled run's)."""
    from shiftserve_train import export as ex
    from shiftserve_train.features import LogMel

    wave, rows, feats, erows = intent_wide_data(spec)
    y = np.array([labels.index(r["label"]) for r in rows])
    assert not {r["engine"] for r in rows} & {"pico", "rhvoice"} and not any("slt" in r["voice"] for r in rows)
    ey = np.array([labels.index(r["label"]) for r in erows])
    esplit = np.array([r["split"] for r in erows])
    va, te = esplit == "valid", esplit == "test"
    voice = np.array([f"{r['engine']}/{r['voice']}" for r in erows])
    engine = np.array([r["engine"] for r in erows])
    X = torch.from_numpy(feats)
    log(f"{name} (wide): train {len(rows)} clips, {len({r['text'] for r in rows})} sentences; "
        f"valid {va.sum()} test {te.sum()}; input {feats.shape[1:]}")
    lm = LogMel(spec)
    bank = noise_bank(np.random.default_rng(7), wave.shape[1])
    bs = 128 if lstm else 64

    import intents_text
    import intents_wide

    orig = {intents_wide._norm(p) for *_, phr in intents_text.intents() for p in phr}
    orig_idx = np.array([i for i, r in enumerate(rows) if r["text"] in orig])
    # --orig-repeat K: the clips of the 199 original phrasings K times per epoch
    tr_idx = np.concatenate([np.arange(len(rows))] + [orig_idx] * (args.orig_repeat - 1))

    def batches(ep, augment=True):
        rng = np.random.default_rng(ep)
        perm = rng.permutation(tr_idx)
        for i in range(0, len(perm) - bs + 1, bs):
            idx = np.sort(perm[i:i + bs])
            w = wave[idx]
            if augment:
                w = augment_waves_wide(w, rng, 16000, bank)
            with torch.no_grad():
                x = lm(torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32)))
            if augment:
                x = spec_augment(x, rng, max_f=5, max_t=6 if lstm else 12)
            yield x, torch.from_numpy(y[idx])

    steps = len(tr_idx) // bs
    if args.max_steps:
        steps = min(steps, args.max_steps)
    res = {"name": name, "spec": spec, "epochs": args.epochs or 30, "qat_steps": args.qat_steps,
           "wave_aug": True, "data": "intents-wide", "orig_repeat": args.orig_repeat,
           "train_clips": len(rows), "train_sentences": len({r["text"] for r in rows}),
           "augmentation": "sox chain at synthesis (tempo 0.85-1.2, pitch +-300 cents, reverb, gain, "
                           "leading silence; 70 % of clips) + online speed 0.9-1.1 (half), offset, "
                           "gain, white/pink/brown noise 5-35 dB SNR (70 %), SpecAugment",
           "grammar_note": "training grammar (training/data/intents_wide.py) written without reading "
                           "the held-out new wordings; sentences equal to one are dropped (count only)"}
    ck = os.path.join(DATA, "intents-wide", "ckpt")
    for kind in kinds_of(args, ("dense", "tt") if lstm else ("fp32", "shift")):
        torch.manual_seed(0)
        model = (build_intent_lstm(kind == "tt", rank=args.tt_rank, out_rank=args.tt_out_rank) if lstm
                 else build_intent(kind == "shift"))
        if lstm and kind == "tt":
            raise SystemExit("--wide: intent-lstm tt not wired yet (train the dense twin first)")
        t = common.train_loop(model, batches, res["epochs"], lr=args.lr or (5e-3 if lstm else 3e-3),
                              steps_per_epoch=steps, grad_clip=5.0 if lstm else None,
                              eval_fn=lambda: common.acc(common.predict(model, X[va]), ey[va]),
                              desc=f"{name}-{kind}", ckpt=os.path.join(ck, f"{name}{TAG}.{kind}.pt"))
        if kind == "shift":
            common.qat(model, [x for x, _ in itertools.islice(batches(998, augment=False), 8)], batches,
                       steps=args.qat_steps, lr=3e-4, desc=name)
        pt_te = common.predict(model, X[te])
        r = {"train_seconds": t, "epoch_seconds": t / res["epochs"],
             "valid_acc_pytorch": common.acc(common.predict(model, X[va]), ey[va]),
             "test_acc_pytorch": common.acc(pt_te, ey[te]),
             "test_per_voice_pytorch": common.per_group(pt_te, ey[te], voice[te])}
        log(f"{name}-{kind}: {json.dumps(r)}")
        res[kind] = r
        if kind == "fp32":
            # the full-precision twin's weights (for eval_intent.py --fp32-state)
            torch.save(model.state_dict(), os.path.join(DATA, "intents-wide", f"{name}{TAG}.fp32.pt"))
    key = "tt" if lstm else "shift"
    if key not in res:
        return save_part(name, res)
    out = os.path.join(DATA, "intents-wide", f"{name}{TAG}.safetensors")
    desc = ("DenseShift W3 SLU ResNet on 40 log-mel (16 kHz, 3 s, 20 ms hop); FSC-style 31 intents; "
            "wide training grammar")
    export_intent(name, res, key, model, out, desc, spec, labels, intents, X, ey, va, te, voice, engine)


# ----------------------------------------------------------------------------------------------
# fashion


def build_fashion(shift, width=16, first_stride=2):
    from shiftserve_train.models import ResNet

    # fp32 3x3 stem at 28x28, then three stages: first_stride 1 -> 28x28, 14x14, 7x7;
    # first_stride 2 -> 14x14, 7x7, 4x4
    return ResNet("basic", (1, 1, 1), (width, 2 * width, 4 * width), stem="cifar", in_channels=1,
                  strides=(first_stride, 2, 2), num_classes=10, shift=shift, bits=3)


FASHION_LABELS = ["t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                  "sneaker", "bag", "ankle boot"]


def fashion_photo(v, rng):
    """A synthetic picture of dataset image ``v`` (u8 [28, 28], light garment on black): what the
    front end cannot normalise (contrast, background level, small rotation, resolution, scale and
    shift, blur, noise, JPEG artefacts), in either polarity. Returns u8 [H, W]."""
    from PIL import Image, ImageFilter

    im = Image.fromarray(v)
    if rng.random() < 0.5:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    s = rng.uniform(1.0, 4.0)  # photo resolution relative to the dataset's
    h = max(14, int(round(28 * s * rng.uniform(0.85, 1.1))))
    w = max(14, int(round(h * rng.uniform(0.9, 1.1))))
    im = im.resize((w, h), Image.Resampling.BILINEAR)
    im = im.rotate(rng.uniform(-10, 10), resample=Image.Resampling.BILINEAR, expand=True, fillcolor=0)
    m = (rng.uniform(0, 0.3, 4) * max(im.size)).astype(int)  # margins: where the garment sits
    canvas = Image.new("L", (im.size[0] + m[0] + m[1], im.size[1] + m[2] + m[3]), 0)
    canvas.paste(im, (int(m[0]), int(m[2])))
    a = np.asarray(canvas, dtype=np.float64)
    gain = rng.uniform(0.7, 1.15)
    bg = rng.uniform(0, 45) if rng.random() < 0.6 else 0.0
    a = bg + np.clip(a * gain, 0, 255) * (255 - bg) / 255
    if rng.random() < 0.3:
        a = a + rng.normal(0, rng.uniform(1, 5), a.shape)
    if rng.random() < 0.5:
        a = 255 - a  # product photo: dark garment on a light background
    im = Image.fromarray(np.clip(np.round(a), 0, 255).astype(np.uint8))
    if rng.random() < 0.3:
        im = im.filter(ImageFilter.GaussianBlur(rng.uniform(0.2, 0.8) * s))
    if rng.random() < 0.4:
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=int(rng.integers(30, 95)))
        im = Image.open(io.BytesIO(buf.getvalue())).convert("L")
    return np.asarray(im)


def gray_rgba(u8):
    g = u8.astype(np.float64)
    return np.stack([g, g, g, np.full_like(g, 255.0)], axis=-1)


def fashion_inputs(images, spec, flip=None):
    """Dataset images (u8 [N, 28, 28]) as they are, through the served front end -> float32
    [N, 1, 28, 28] (``flip``: bool [N], mirrored first)."""
    from shiftserve_train.features import image_features_rgba

    out = np.empty((len(images), 1, 28, 28), dtype=np.float32)
    for i, v in enumerate(images):
        if flip is not None and flip[i]:
            v = v[:, ::-1]
        out[i] = image_features_rgba(gray_rgba(v), spec)
    return out


def fashion_epoch(ep, images, spec, p_aug=0.5):
    """The inputs of training epoch ``ep`` (float16 [N, 1, 28, 28], a function of ``ep``): each
    image either as it is (mirrored half the time) or as a synthetic picture (fashion_photo),
    always through the served front end. Cached under $SHIFTSERVE_DATA/fashion/epochs (the two
    variants, trained in parallel, share it: the first to need an epoch builds it, under a lock)."""
    from shiftserve_train.features import image_features_rgba
    from tqdm import tqdm

    d = os.path.join(DATA, "fashion", "epochs")
    os.makedirs(d, exist_ok=True)
    # the share the cached files of the existing recipes were built with (main schedule 0.5,
    # --finetune-epochs 0.3, the plain epoch 999 0.0) keeps their old names; any other share has
    # its own files
    legacy = 0.0 if ep == 999 else 0.3 if ep >= 100 else 0.5
    suffix = "" if p_aug == legacy else f"-p{p_aug:g}"
    path = os.path.join(d, f"ep{ep:03d}-{len(images)}{suffix}.npy")
    lock = path + ".lock"
    while not os.path.exists(path):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            import time

            time.sleep(5)
            continue
        try:
            rng = np.random.default_rng(10_000 + ep)
            out = np.empty((len(images), 1, 28, 28), dtype=np.float16)
            aug = rng.random(len(images)) < p_aug
            flip = rng.random(len(images)) < 0.5
            for i in tqdm(range(len(images)), desc=f"fashion epoch {ep} inputs", mininterval=30,
                          ncols=100):
                if aug[i]:
                    x = image_features_rgba(gray_rgba(fashion_photo(images[i], rng)), spec)
                else:
                    v = images[i][:, ::-1] if flip[i] else images[i]
                    x = image_features_rgba(gray_rgba(v), spec)
                out[i] = x
            np.save(path + ".tmp.npy", out)
            os.replace(path + ".tmp.npy", path)
        finally:
            os.close(fd)
            os.remove(lock)
    return np.load(path)


def fashion_cached_mix(images, labels, spec, p_aug, bs, steps):
    """Batches of continuation epoch ``ep`` built without synthesising new pictures: a share
    ``p_aug`` of the examples are the synthetic pictures of an already cached epoch
    (fashion_epoch 0-9, 100-101; which examples of a cached epoch are synthetic follows from its
    seed), the rest the images as they are, mirrored half the time (both through the served front
    end, computed once). A function of ``ep``, so resumable like the other schedules."""
    d = os.path.join(DATA, "fashion", "epochs")
    cached = []  # (epoch, p_aug it was built with)
    for ep, p in [(e, 0.5) for e in range(10)] + [(100, 0.3), (101, 0.3)]:
        if os.path.exists(os.path.join(d, f"ep{ep:03d}-{len(images)}.npy")):
            cached.append((ep, p))
    assert cached, "no cached fashion epochs: run the main schedule first"
    assert p_aug <= min(p for _, p in cached)
    plain, mirrored = fashion_inputs(images, spec), fashion_inputs(images, spec, np.ones(len(images), bool))

    def batches(ep):
        cep, cp = cached[ep % len(cached)]
        aug_src = fashion_epoch(cep, images, spec, p_aug=cp)
        was_aug = np.random.default_rng(10_000 + cep).random(len(images)) < cp  # fashion_epoch's draw
        rng = np.random.default_rng(20_000 + ep)
        use_aug = was_aug & (rng.random(len(images)) < p_aug / cp)
        flip = rng.random(len(images)) < 0.5
        perm = rng.permutation(len(images))
        for i in range(0, min(len(perm) - bs + 1, steps * bs), bs):
            idx = perm[i:i + bs]
            x = np.where(flip[idx, None, None, None], mirrored[idx], plain[idx])
            x = np.where(use_aug[idx, None, None, None], aug_src[idx].astype(np.float32), x)
            yield torch.from_numpy(x.astype(np.float32)), torch.from_numpy(labels[idx])

    return batches


def png_bytes(u8):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(u8, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def run_fashion(args):
    from shiftserve_train import export as ex
    from shiftserve_train.features import image_features

    d = os.path.join(DATA, "fashion")
    if not os.path.exists(os.path.join(d, "test_labels.npy")):
        run_data_script("make_fashion.py", "--out", d)
    xtr = np.load(os.path.join(d, "train_images.npy"))
    ytr = np.load(os.path.join(d, "train_labels.npy"))
    xte = np.load(os.path.join(d, "test_images.npy"))
    yte = np.load(os.path.join(d, "test_labels.npy"))
    spec = FASHION_SPEC
    # validation / test inputs: the images as they are (light garment on black) through the front
    # end; the inverted images give the same inputs (polarity from the border), checked below
    Xva, yva = torch.from_numpy(fashion_inputs(xtr[55000:], spec)), ytr[55000:]
    Xte = torch.from_numpy(fashion_inputs(xte, spec))
    Xtr_u8 = xtr[:55000]
    ytr = ytr[:55000]
    bs = 128

    def batches(ep, augment=True, p_aug=args.p_aug):
        rng = np.random.default_rng(ep)
        perm = rng.permutation(len(Xtr_u8))
        # (qat asks for epochs 1000+: it reuses epoch 0)
        X = fashion_epoch(ep % 1000 if augment else 999, Xtr_u8, spec, p_aug=p_aug if augment else 0.0)
        for i in range(0, len(perm) - bs + 1, bs):
            idx = perm[i:i + bs]
            yield torch.from_numpy(X[idx].astype(np.float32)), torch.from_numpy(ytr[idx])

    steps = len(Xtr_u8) // bs
    if args.max_steps:
        steps = min(steps, args.max_steps)
    res = {"name": "fashion", "spec": spec, "epochs": args.epochs or 12, "width": args.width,
           "finetune_epochs": args.finetune_epochs, "finetune_lr": args.finetune_lr,
           "first_stride": args.first_stride, "p_aug": args.p_aug,
           "augmentation": f"{'half' if args.p_aug == 0.5 else format(100 * args.p_aug, 'g') + ' %'} of each epoch: fashion_photo "
           "(flip, resolution 1-4x, scale 0.85-1.1, aspect 0.9-1.1, rotation +-10 deg, margins 0-30 %, "
           "contrast 0.7-1.15, background level 0-45, noise, either polarity, blur, JPEG q30-95); "
           f"the {'other half' if args.p_aug == 0.5 else 'rest'} as is (mirrored half the time); all through "
           "the served front end"}
    if args.continue_epochs:
        res["continue_epochs"], res["continue_lr"] = args.continue_epochs, args.continue_lr
        res["continue_aug"], res["init_from"] = args.continue_aug, args.init_from
        res["augmentation"] += (f"; then {args.continue_epochs} more epochs (new one-cycle cosine, peak lr "
                                f"{args.continue_lr}) on the cached epochs' inputs with {args.continue_aug:.0%} "
                                "synthetic pictures, the rest as is (mirrored half the time)")
        cont_batches = fashion_cached_mix(Xtr_u8, ytr, spec, args.continue_aug, bs, steps)
    ck = os.path.join(d, "ckpt")
    for kind in kinds_of(args, ("fp32", "shift")):
        torch.manual_seed(0)
        model = build_fashion(kind == "shift", args.width, args.first_stride)
        if args.init_from is not None:
            # start from a finished main run (run tag args.init_from) instead of training one
            st = torch.load(os.path.join(ck, f"fashion{args.init_from}.{kind}.pt"), weights_only=False)
            assert st["epoch"] == res["epochs"], f"run {args.init_from!r} {kind} is not finished"
            model.load_state_dict(st["model"])
            t = st["seconds"]
            log(f"fashion-{kind}: weights of run {args.init_from!r} after {st['epoch']} epochs "
                f"({t:.0f}s), valid-acc {common.acc(common.predict(model, Xva), yva):.4f}")
        else:
            t = common.train_loop(model, batches, res["epochs"], lr=args.lr or 3e-3, steps_per_epoch=steps,
                                  eval_fn=lambda: common.acc(common.predict(model, Xva), yva),
                                  desc=f"fashion-{kind}", ckpt=os.path.join(ck, f"fashion{TAG}.{kind}.pt"))
        if args.continue_epochs:
            t += common.train_loop(model, cont_batches, args.continue_epochs, lr=args.continue_lr,
                                   steps_per_epoch=steps,
                                   eval_fn=lambda: common.acc(common.predict(model, Xva), yva),
                                   desc=f"fashion-{kind}-continue",
                                   ckpt=os.path.join(ck, f"fashion{TAG}.{kind}.continue.pt"))
        if args.finetune_epochs:
            # epochs 100+ are new augmented epochs (their own cache files)
            t += common.train_loop(model, lambda ep: batches(100 + ep, p_aug=0.3), args.finetune_epochs,
                                   lr=args.finetune_lr, steps_per_epoch=steps,
                                   eval_fn=lambda: common.acc(common.predict(model, Xva), yva),
                                   desc=f"fashion-{kind}-finetune",
                                   ckpt=os.path.join(ck, f"fashion{TAG}.{kind}.finetune.pt"))
        if kind == "shift":
            common.qat(model, [x for x, _ in itertools.islice(batches(998, augment=False), 8)], batches,
                       steps=args.qat_steps, lr=3e-4, desc="fashion")
        r = {"train_seconds": t, "valid_acc_pytorch": common.acc(common.predict(model, Xva), yva),
             "test_acc_pytorch": common.acc(common.predict(model, Xte), yte)}
        log(f"fashion-{kind}: {json.dumps(r)}")
        res[kind] = r
    if "shift" not in res:
        return save_part("fashion", res)
    out = os.path.join(d, f"fashion{TAG}.safetensors")
    desc = ("DenseShift W3 ResNet-8 (CIFAR stem) on Fashion-MNIST, int8 activations; any garment "
            "picture (polarity, background, framing from the picture)")
    ex.export(model, out, name="fashion", task="image_classification", labels=FASHION_LABELS,
              preprocess=spec, numeric_path="int8", progress=False, description=desc)
    res["shift"]["test_acc_file"] = common.acc(common.predict_file(out, Xte.numpy()), yte)
    # card check: the first 500 official test images as PNG files, unchanged and inverted,
    # decoded through the preprocessing reference
    n = 500
    for key, imgs in (("card_check", xte[:n]), ("card_check_inverted", 255 - xte[:n])):
        xs = np.stack([image_features(png_bytes(v), spec) for v in imgs])
        res[key] = {"n": n, "acc": common.acc(common.predict_file(out, xs), yte[:n])}
    res["model_file"] = out
    res["description"] = desc
    save_part("fashion", res)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", choices=["digits", "intent", "intent-lstm", "fashion"])
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--finetune-epochs", type=int, default=0,
                    help="fashion: after the main schedule, this many more epochs at --finetune-lr "
                         "(a second one-cycle cosine schedule, fresh augmented epochs, 30 %% synthetic "
                         "pictures; checkpointed like the main run)")
    ap.add_argument("--finetune-lr", type=float, default=6e-4)
    ap.add_argument("--init-from", metavar="TAG", default=None,
                    help="fashion: start from the finished main run of run tag TAG (its checkpoints "
                         "fashion<TAG>.<variant>.pt, e.g. '' for the untagged run) instead of training it")
    ap.add_argument("--continue-epochs", type=int, default=0,
                    help="fashion: after the main schedule, this many more epochs (new one-cycle cosine "
                         "at --continue-lr) on the cached epochs' inputs, --continue-aug synthetic share")
    ap.add_argument("--continue-lr", type=float, default=1e-3)
    ap.add_argument("--continue-aug", type=float, default=0.25)
    ap.add_argument("--p-aug", type=float, default=0.5,
                    help="fashion: share of each main-schedule epoch (and of the fake-quant steps' "
                         "inputs) that is a synthetic picture (fashion_photo); the rest is the images "
                         "as they are, mirrored half the time")
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--qat-steps", type=int, default=150)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--width", type=int, default=16, help="fashion: base width")
    ap.add_argument("--digits-width", type=int, default=24,
                    help="digits: base width (stages width/2x/4x, stem width)")
    ap.add_argument("--digits-aug", type=int, default=2,
                    help="digits: online augmentation recipe: 1 = speed/offset/gain/white noise + "
                         "SpecAugment (session 1); 2 = 1 + channel EQ, coloured noise mostly over the "
                         "spoken part, mel-axis warp")
    ap.add_argument("--first-stride", type=int, default=1, help="fashion: stride of the first stage")
    ap.add_argument("--tt-rank", type=int, default=15,
                    help="intent-lstm: MPS bond rank (clamped to each bond's maximum)")
    ap.add_argument("--wave-aug", action="store_true",
                    help="intent models: online speed/offset/gain/noise augmentation of the waveforms")
    ap.add_argument("--wide", action="store_true",
                    help="intent: train on the wide grammar ($SHIFTSERVE_DATA/intents-wide, "
                         "make_intents_wide.py), checkpointed every epoch (rerun to continue)")
    ap.add_argument("--orig-repeat", type=int, default=1,
                    help="intent --wide: the clips of the 199 original phrasings this many times per epoch")
    ap.add_argument("--install-results", metavar="NAME", default=None,
                    help="install the --no-install run recorded in training/results/NAME.json (e.g. "
                         "intent-wide) as the bundled <model>, then run make_cards.py")
    ap.add_argument("--tt-out-rank", type=int, default=None,
                    help="intent-lstm: cap of the bonds between output modes (default: --tt-rank)")
    ap.add_argument("--tt-init", choices=["random", "dense"], default="dense",
                    help="intent-lstm: TT cores from scratch (random) or TT-SVD of the trained dense "
                         "twin + distillation fine-tuning (dense; the twin is trained first)")
    ap.add_argument("--tt-epochs", type=int, default=None,
                    help="intent-lstm --tt-init dense: fine-tuning epochs (default 40)")
    ap.add_argument("--max-steps", type=int, default=None, help="cap steps per epoch (smoke tests)")
    ap.add_argument("--no-install", action="store_true",
                    help="keep the file in $SHIFTSERVE_DATA; results to training/results/<model><tag>.json")
    ap.add_argument("--merge", action="store_true",
                    help="merge the parts of variants trained as separate --variant processes under "
                         "the same SHIFTSERVE_RUN_TAG, then install (or --no-install)")
    ap.add_argument("--record-sweep", metavar="TAG,TAG,...",
                    help="intent-lstm: collect the TT parts of these run tags (comma-separated, "
                         "e.g. --record-sweep=-r24,-r40) into training/results/intent-lstm-sweep.json")
    ap.add_argument("--variant", default="both",
                    help="both (default: two parallel child processes, then merge) | fp32 | shift | dense | tt")
    args = ap.parse_args()
    t = common.Timer()
    if args.install_results:
        return install_results(args.install_results, args.model)
    if args.record_sweep:
        return record_sweep(args.record_sweep.split(","))
    if args.merge:
        kinds = ("dense", "tt") if args.model == "intent-lstm" else ("fp32", "shift")
        return merge(args.model, kinds, install=not args.no_install, separate=True)
    if args.variant == "both":
        os.makedirs(os.path.join(DATA, "logs"), exist_ok=True)
        if args.wide:  # build the shared caches once, before the two children start
            intent_wide_data(INTENT_LSTM_SPEC if args.model == "intent-lstm" else INTENT_SPEC)
        common.setup(1)
        run_parallel(args)
        log(f"{args.model}: total wall time {t():.0f}s")
        return
    common.setup(args.threads)
    {"digits": run_digits, "intent": run_intent, "fashion": run_fashion,
     "intent-lstm": lambda a: run_intent(a, lstm=True)}[args.model](args)
    log(f"{args.model}: total wall time {t():.0f}s")


if __name__ == "__main__":
    main()
