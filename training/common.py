"""Shared pieces of the training drivers: threads/niceness, loops, QAT, export + evaluation from
the exported file, repository entry, results JSON."""

from __future__ import annotations

import json
import math
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.environ.get("SHIFTSERVE_DATA", os.path.join(os.path.dirname(REPO), "data"))  # default: ../data beside the checkout
RESULTS = os.path.join(REPO, "training", "results")
REPOSITORY = os.path.join(REPO, "models", "repository")


def setup(threads=2, seed=0):
    try:
        if os.nice(0) < 10:
            os.nice(10 - os.nice(0))
    except OSError:
        pass
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    np.random.seed(seed)


class Timer:
    def __init__(self):
        self.t0 = time.time()

    def __call__(self):
        return time.time() - self.t0


T0 = Timer()


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


def param_groups(model, lr, wd=0.0):
    """Adam groups: shift latents without weight decay, the rest (fp32 stem/fc, BN) with wd on
    weights only."""
    from shiftserve_train.layers import latent_parameters

    lat = {id(p) for p in latent_parameters(model)}
    latents, decay, no_decay = [], [], []
    for n, p in model.named_parameters():
        if id(p) in lat:
            latents.append(p)
        elif p.dim() > 1:
            decay.append(p)
        else:
            no_decay.append(p)
    groups = [dict(params=decay, weight_decay=wd), dict(params=no_decay, weight_decay=0.0)]
    if latents:
        groups.append(dict(params=latents, weight_decay=0.0))
    return groups


def save_atomic(obj, path):
    """torch.save to ``path`` through a temporary file and rename (a killed run never leaves a
    torn checkpoint)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def train_loop(model, make_batches, epochs, lr, wd=1e-4, label_smoothing=0.1, eval_fn=None,
               steps_per_epoch=None, desc="", grad_clip=None, loss_fn=None, ckpt=None):
    """Adam + one-cycle cosine schedule. ``make_batches(epoch)`` yields (x, y). ``loss_fn(out,
    x, y)`` replaces the label-smoothed cross-entropy (e.g. distillation).

    ``ckpt``: a path; the model, optimiser and schedule are saved there after every epoch, and a
    run that finds the file resumes after its last finished epoch (the batches of an epoch are a
    function of the epoch number, so a resumed run is the same run). Progress (tqdm, with the
    ETA of the whole run) goes to stderr. Returns the training seconds, summed over resumptions."""
    from tqdm import tqdm

    opt = torch.optim.AdamW(param_groups(model, lr, wd), lr=lr)
    total = epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total, pct_start=0.15,
                                                anneal_strategy="cos", div_factor=10,
                                                final_div_factor=100)
    step, first, before = 0, 0, 0.0
    if ckpt and os.path.exists(ckpt):
        st = torch.load(ckpt, weights_only=False)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        sched.load_state_dict(st["sched"])
        step, first, before = st["step"], st["epoch"], st["seconds"]
        if "torch_rng" in st:
            torch.set_rng_state(st["torch_rng"])
        log(f"{desc}: resumed from {ckpt} after epoch {first}/{epochs} ({before:.0f}s of training so far)")
    t = Timer()
    bar = tqdm(total=total, initial=step, desc=desc, unit="step", mininterval=30, smoothing=0.05,
               dynamic_ncols=False, ncols=100)
    for ep in range(first, epochs):
        model.train()
        tot, correct, lsum = 0, 0, 0.0
        for x, y in make_batches(ep):
            if step >= total:
                break
            out = model(x)
            if loss_fn is None:
                loss = F.cross_entropy(out, y, label_smoothing=label_smoothing)
            else:
                loss = loss_fn(out, x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            opt.step()
            sched.step()
            step += 1
            bar.update(1)
            tot += len(y)
            correct += int((out.argmax(1) == y).sum())
            lsum += float(loss.detach()) * len(y)
        msg = f"{desc} epoch {ep + 1}/{epochs} loss {lsum / max(tot, 1):.4f} train-acc {correct / max(tot, 1):.4f}"
        if eval_fn is not None:
            msg += f" valid-acc {eval_fn():.4f}"
        log(msg + f" [{before + t():.0f}s]")
        if ckpt:
            save_atomic({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                         "step": step, "epoch": ep + 1, "seconds": before + t(),
                         "torch_rng": torch.get_rng_state()}, ckpt)
    bar.close()
    return before + t()


@torch.no_grad()
def predict(model, x, batch=256):
    model.eval()
    outs = []
    for i in range(0, len(x), batch):
        outs.append(model(torch.as_tensor(x[i:i + batch])).argmax(1))
    return torch.cat(outs).numpy()


def predict_file(path, x, batch=64):
    """Predictions of the exported file through shiftserve_train.reference."""
    from shiftserve_train import reference

    mf = reference.ModelFile(path)
    outs = []
    for i in range(0, len(x), batch):
        outs.append(np.asarray(reference.forward(mf, np.asarray(x[i:i + batch], dtype=np.float32))).argmax(1))
    return np.concatenate(outs)


def acc(pred, y):
    return float(np.mean(np.asarray(pred) == np.asarray(y)))


def per_group(pred, y, groups):
    out = {}
    for g in sorted(set(groups)):
        m = np.asarray(groups) == g
        out[g] = {"n": int(m.sum()), "acc": acc(np.asarray(pred)[m], np.asarray(y)[m])}
    return out


def qat(model, calib_batches, make_batches, steps, lr, method="percentile", percentile=99.99,
        desc="qat"):
    """Calibrate the 8-bit activation quantisers on training batches, then fine-tune with the
    fake-quant on (straight-through) for ``steps`` steps."""
    from shiftserve_train.quant import calibrate

    calibrate(model, calib_batches, method=method, percentile=percentile, progress=False)
    if steps <= 0:
        return
    opt = torch.optim.AdamW(param_groups(model, lr, 0.0), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    model.train()
    step = 0
    ep = 0
    while step < steps:
        for x, y in make_batches(1000 + ep):
            out = model(x)
            loss = F.cross_entropy(out, y, label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step >= steps:
                break
        ep += 1
    model.eval()
    log(f"{desc}: {steps} fake-quant fine-tune steps done")


def file_sizes(path):
    """(file bytes, fp32-equivalent bytes): every packed power-of-two weight counted as an f32,
    every other tensor as stored."""
    from safetensors import safe_open

    fp32 = 0
    with safe_open(path, "np") as f:
        graph = json.loads(f.metadata()["shiftserve.graph"])
        shift_w = {}
        for n in graph["nodes"]:
            if n["op"] == "shift_conv2d":
                k = n["in_channels"] // n["groups"] * n["kernel"][0] * n["kernel"][1]
                shift_w[n["weight"]] = n["out_channels"] * k
            elif n["op"] == "shift_linear":
                shift_w[n["weight"]] = n["out_features"] * n["in_features"]
        for k in f.keys():
            t = f.get_tensor(k)
            fp32 += 4 * shift_w[k] if k in shift_w else t.nbytes
    return os.path.getsize(path), fp32


def write_repository_entry(name, src_file, description, max_batch=8, preferred=(4, 8), delay_us=2000,
                           threads=1):
    d = os.path.join(REPOSITORY, name)
    os.makedirs(os.path.join(d, "1"), exist_ok=True)
    dst = os.path.join(d, "1", "model.safetensors")
    with open(src_file, "rb") as f, open(dst, "wb") as g:
        g.write(f.read())
    pref = ", ".join(str(p) for p in preferred)
    with open(os.path.join(d, "config.toml"), "w") as f:
        f.write(f'description = "{description}"\n'
                f"max_batch_size = {max_batch}\n"
                f"preferred_batch_sizes = [{pref}]\n"
                f"max_queue_delay_us = {delay_us}\n"
                f"queue_capacity = 256\n"
                f"threads = {threads}\n"
                f"instances = 1\n"
                f"timeout_ms = 10000\n"
                f'version_policy = "latest"\n\n'
                f"[warmup]\n"
                f"batch_sizes = [1, {max_batch}]\n"
                f"iterations = 2\n")
    return dst


def save_results(name, res):
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"{name}.json")
    with open(path, "w") as f:
        json.dump(res, f, indent=1, sort_keys=True)
    log(f"results -> {path}")


def distillation_loss(teacher, temperature=2.0, alpha=0.5, label_smoothing=0.1):
    """Hinton et al. knowledge distillation: (1 - alpha) * CE(labels) + alpha * T^2 *
    KL(teacher_T || student_T), the teacher in eval mode on the same (augmented) batch."""
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)

    def loss(out, x, y):
        with torch.no_grad():
            t = teacher(x)
        kd = F.kl_div(F.log_softmax(out / temperature, 1), F.log_softmax(t / temperature, 1),
                      log_target=True, reduction="batchmean")
        return ((1 - alpha) * F.cross_entropy(out, y, label_smoothing=label_smoothing)
                + alpha * temperature ** 2 * kd)

    return loss


def cosine_lr(step, total, base):
    return base * 0.5 * (1 + math.cos(math.pi * step / total))
