"""Small, dependency-free training / evaluation loops with tqdm progress bars.

    from shiftserve_train.train import fit, evaluate
    history = fit(model, train_loader, val_loader, epochs=10, lr=1e-3)

``train_loader`` / ``val_loader`` yield ``(inputs, targets)`` (e.g. ``torch.utils.data.DataLoader``).
Shift-weight latents use Adam by default (the usual choice for sign/binary latents); an
optimizer can be passed instead.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from .layers import latent_parameters


def make_optimizer(model: nn.Module, lr: float = 1e-3, weight_decay: float = 1e-4,
                   latent_lr: float | None = None) -> torch.optim.Optimizer:
    """Adam with two groups: shift-weight latents (no weight decay; weight decay would pull the
    latents to 0 and make the binarisations flip randomly) and all other parameters."""
    lat = latent_parameters(model)
    lat_ids = {id(p) for p in lat}
    rest = [p for p in model.parameters() if id(p) not in lat_ids and p.requires_grad]
    groups = [{"params": rest, "weight_decay": weight_decay}]
    if lat:
        groups.append({"params": lat, "weight_decay": 0.0, "lr": latent_lr or lr})
    return torch.optim.AdamW(groups, lr=lr)


def train_epoch(model: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer,
                loss_fn: Callable = F.cross_entropy, scheduler=None, desc: str = "train",
                transform: Callable | None = None, progress: bool = True, max_grad_norm: float | None = 5.0):
    """One pass over ``loader``.  Returns ``{"loss": mean loss, "acc": accuracy}``."""
    model.train()
    total, correct, loss_sum = 0, 0, 0.0
    bar = tqdm(loader, desc=desc, leave=False, disable=not progress)
    for x, y in bar:
        if transform is not None:
            x = transform(x)
        out = model(x)
        loss = loss_fn(out, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if max_grad_norm:
            nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        n = y.shape[0]
        total += n
        loss_sum += float(loss.detach()) * n
        correct += int((out.argmax(1) == y).sum())
        bar.set_postfix(loss=f"{loss_sum / total:.4f}", acc=f"{correct / total:.4f}")
    return {"loss": loss_sum / max(total, 1), "acc": correct / max(total, 1)}


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, loss_fn: Callable = F.cross_entropy,
             transform: Callable | None = None, desc: str = "eval", progress: bool = True):
    """Returns ``{"loss", "acc", "n"}`` in eval mode (fake-quant applies if enabled)."""
    model.eval()
    total, correct, loss_sum = 0, 0, 0.0
    for x, y in tqdm(loader, desc=desc, leave=False, disable=not progress):
        if transform is not None:
            x = transform(x)
        out = model(x)
        n = y.shape[0]
        total += n
        loss_sum += float(loss_fn(out, y, reduction="sum"))
        correct += int((out.argmax(1) == y).sum())
    return {"loss": loss_sum / max(total, 1), "acc": correct / max(total, 1), "n": total}


def fit(model: nn.Module, train_loader, val_loader=None, *, epochs: int = 10, lr: float = 1e-3,
        weight_decay: float = 1e-4, optimizer=None, loss_fn=F.cross_entropy, transform=None,
        progress: bool = True, log: Callable[[str], None] = print):
    """Train with AdamW + one-cycle cosine schedule; evaluates after every epoch.
    Returns a list of per-epoch dicts."""
    opt = optimizer or make_optimizer(model, lr=lr, weight_decay=weight_decay)
    steps = epochs * max(1, len(train_loader)) if hasattr(train_loader, "__len__") else None
    sched = None
    if steps:
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in opt.param_groups],
                                                    total_steps=steps, pct_start=0.15,
                                                    anneal_strategy="cos")
    history = []
    for ep in tqdm(range(epochs), desc="epochs", disable=not progress):
        t0 = time.time()
        tr = train_epoch(model, train_loader, opt, loss_fn, sched, desc=f"epoch {ep + 1}/{epochs}",
                         transform=transform, progress=progress)
        rec = {"epoch": ep + 1, "train_loss": tr["loss"], "train_acc": tr["acc"], "seconds": time.time() - t0}
        if val_loader is not None:
            ev = evaluate(model, val_loader, loss_fn, transform=transform, progress=progress)
            rec.update(val_loss=ev["loss"], val_acc=ev["acc"])
        history.append(rec)
        if log:
            log(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in rec.items()))
        if not math.isfinite(tr["loss"]):
            raise RuntimeError("training diverged (non-finite loss)")
    return history
