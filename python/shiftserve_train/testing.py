"""Deterministic helpers for tests and golden fixtures: synthetic inputs and "trained-looking"
random models (non-trivial BatchNorm statistics so that folding and logits are exercised)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def synthetic_images(n: int, channels: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Smooth random images (low-frequency noise plus a few bright rectangles), roughly
    zero-mean / unit-variance like normalised inputs.  ``[n, channels, h, w]`` f32."""
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(n, channels, max(2, h // 7), max(2, w // 7), generator=g)
    x = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
    for i in range(n):
        for _ in range(2):
            y0 = int(torch.randint(0, max(1, h - 4), (1,), generator=g))
            x0 = int(torch.randint(0, max(1, w - 4), (1,), generator=g))
            hh = int(torch.randint(2, max(3, h // 2), (1,), generator=g))
            ww = int(torch.randint(2, max(3, w // 2), (1,), generator=g))
            x[i, :, y0:y0 + hh, x0:x0 + ww] += 1.5
    x += 0.1 * torch.randn(x.shape, generator=g)
    return x.float()


@torch.no_grad()
def randomize_batchnorm(model: nn.Module, seed: int = 0, warmup: torch.Tensor | None = None) -> None:
    """Give every BatchNorm non-trivial affine parameters; if ``warmup`` is given, first run it
    through the model in train mode (momentum None = cumulative average) to get realistic
    running statistics.  Leaves the model in eval mode."""
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        n = bn.num_features
        bn.weight.copy_(0.5 + torch.rand(n, generator=g))
        bn.bias.copy_(0.2 * torch.randn(n, generator=g))
    if warmup is not None:
        saved = [bn.momentum for bn in bns]
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None
        model.train()
        model(warmup)
        for bn, mom in zip(bns, saved):
            bn.momentum = mom
    else:
        for bn in bns:
            bn.running_mean.copy_(0.1 * torch.randn(bn.num_features, generator=g))
            bn.running_var.copy_(0.5 + torch.rand(bn.num_features, generator=g))
    model.eval()


@torch.no_grad()
def randomize_linear(layer: nn.Linear, seed: int = 0, std: float = 0.3) -> None:
    g = torch.Generator().manual_seed(seed)
    layer.weight.copy_(std * torch.randn(layer.weight.shape, generator=g))
    if layer.bias is not None:
        layer.bias.copy_(0.1 * torch.randn(layer.bias.shape, generator=g))


def replace_if_changed(tmp_path, final_path) -> bool:
    """Move ``tmp_path`` over ``final_path`` unless both safetensors files hold the same tensors
    and metadata (safetensors orders the metadata keys arbitrarily, so byte equality is not a
    useful test); keeps regenerated fixtures stable in git.  Returns True when replaced."""
    import os
    from pathlib import Path

    import numpy as np
    from safetensors import safe_open

    def load(p):
        with safe_open(str(p), framework="numpy") as f:
            return f.metadata() or {}, {k: f.get_tensor(k) for k in f.keys()}

    tmp_path, final_path = Path(tmp_path), Path(final_path)
    if final_path.exists():
        try:
            m1, t1 = load(tmp_path)
            m0, t0 = load(final_path)
            same = m1 == m0 and t1.keys() == t0.keys() and all(
                t1[k].dtype == t0[k].dtype and t1[k].shape == t0[k].shape and np.array_equal(t1[k], t0[k])
                for k in t1)
        except Exception:
            same = False
        if same:
            tmp_path.unlink()
            return False
    os.replace(tmp_path, final_path)
    final_path.chmod(0o644)
    return True


def pick_robust_inputs(model_path, candidates, batch: int):
    """The ``batch`` candidate inputs (kept in candidate order) whose int8 quantisers are farthest
    from a rounding tie (see :func:`shiftserve_train.reference.quantization_margins`), so that
    golden logits do not depend on the last bit of an fp32 stem.  Returns (inputs, margins)."""
    import numpy as np

    from . import reference

    candidates = np.asarray(candidates, dtype=np.float32)
    m = reference.quantization_margins(model_path, candidates)
    keep = np.sort(np.argsort(-m, kind="stable")[:batch])
    return np.ascontiguousarray(candidates[keep]), m[keep]
