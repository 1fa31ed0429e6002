"""Import checkpoints trained in the authors' latent parametrisation (DenseShift / S3).

The authors' layers keep, per shift conv / linear module ``<prefix>``, real-valued latent
tensors of the weight's shape (the names below are the defaults; every name is configurable):

* DenseShift (zero-free): ``<prefix>.weight_sign`` (or ``<prefix>.weight``, which the authors'
  modules alias to the sign latent) and ``<prefix>.weight_t1 .. weight_tN`` with ``N = 3`` for W3
  (``p = ((b1 + 1) * b2 + 1) * b3``), ``N = 1`` for W2, ``N = 7`` for W4 (same nested recursion).
* S3 (with zero, 3 bits): sign as above, gate ``<prefix>.weight_val`` (weight is zero when
  ``weight_val <= 0``) and exponent ``p = b(weight_shift) * (b(weight_shift2) + 1)``, i.e. the
  nested recursion over ``(weight_shift2, weight_shift)``.

Binarisations are ``1[t > 0]`` and sign ``+1 if t >= 0 else -1`` — the same as
:mod:`shiftserve_train.layers`, so latents are copied unchanged (training can continue).

Module names are translated by a ``rename(our_module_name) -> their_module_name`` function;
:func:`torchvision_resnet_names` maps our :class:`~shiftserve_train.models.ResNet` to the
torchvision layout (``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer2.0.downsample.0``, ``fc``)
that the authors' ResNets follow.  Non-shift modules (stem conv, BatchNorms, classifier) are copied
with their ordinary PyTorch keys.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import torch
import torch.nn as nn

from .layers import WITH_ZERO, ZERO_FREE, ShiftConv2d, ShiftLinear


class CheckpointImportError(ValueError):
    """Raised when a checkpoint does not fit the model (missing/extra/mismatched tensors)."""


@dataclass
class LatentLayout:
    """Names (suffixes after ``<prefix>.``) of the latent tensors of one shift module."""

    sign: Sequence[str] = ("weight_sign", "weight")  # first one present is used
    thermometer: Sequence[str] = ("weight_t1", "weight_t2", "weight_t3")  # b1 (innermost) first
    gate: str | None = None  # with-zero only
    aliases: Sequence[str] = field(default_factory=lambda: ("weight", "weight_sign"))  # not "extra"


def denseshift_layout(bits: int) -> LatentLayout:
    n = 2 ** (bits - 1) - 1
    return LatentLayout(thermometer=tuple(f"weight_t{i}" for i in range(1, n + 1)))


S3_W3_LAYOUT = LatentLayout(thermometer=("weight_shift2", "weight_shift"), gate="weight_val")


def default_layout(module) -> LatentLayout:
    if module.code == ZERO_FREE:
        return denseshift_layout(module.bits)
    if module.code == WITH_ZERO and module.bits == 3:
        return S3_W3_LAYOUT
    raise CheckpointImportError(f"no default latent layout for {module.bits}-bit {module.code}; pass layout=")


def identity_names(name: str) -> str:
    return name


def torchvision_resnet_names(name: str) -> str:
    """Our ResNet module names -> torchvision / authors' names."""
    if name == "stem":
        return "conv1"
    if name == "stem_bn":
        return "bn1"
    m = re.match(r"^stages\.(\d+)\.(.*)$", name)
    if m:
        return f"layer{int(m.group(1)) + 1}.{m.group(2)}"
    return name


def _get(sd, key):
    if key not in sd:
        raise CheckpointImportError(f"checkpoint has no tensor {key!r}")
    return sd[key]


@torch.no_grad()
def import_latent_checkpoint(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *,
                             rename: Callable[[str], str] = identity_names,
                             layout: Callable[[nn.Module], LatentLayout] | LatentLayout | None = None,
                             strict: bool = True) -> dict:
    """Load ``state_dict`` (authors' latent parametrisation) into a shiftserve_train model.

    Returns ``{"shift_modules": n, "copied": [...keys...], "unused": [...keys...]}``.
    With ``strict``, any checkpoint tensor not consumed (other than sign aliases and BN's
    ``num_batches_tracked``) is an error, as is a shape mismatch or a missing tensor.
    """
    if "state_dict" in state_dict and isinstance(state_dict["state_dict"], Mapping):
        state_dict = state_dict["state_dict"]
    sd = {k[7:] if k.startswith("module.") else k: v for k, v in state_dict.items()}
    used: set[str] = set()
    n_shift = 0
    shift_prefixes = set()
    for name, mod in model.named_modules():
        if isinstance(mod, (ShiftConv2d, ShiftLinear)):
            n_shift += 1
            theirs = rename(name)
            shift_prefixes.add(theirs)
            lay = layout(mod) if callable(layout) else (layout or default_layout(mod))
            w = mod.weight
            if len(lay.thermometer) != w.n_latents:
                raise CheckpointImportError(f"{name}: layout has {len(lay.thermometer)} exponent latents, "
                                   f"{mod.bits}-bit {mod.code} needs {w.n_latents}")
            sign_key = next((f"{theirs}.{s}" for s in lay.sign if f"{theirs}.{s}" in sd), None)
            if sign_key is None:
                raise CheckpointImportError(f"{name}: no sign latent among {[f'{theirs}.{s}' for s in lay.sign]}")
            pairs = [(w.weight_sign, sign_key)]
            pairs += [(getattr(w, f"weight_t{i + 1}"), f"{theirs}.{k}") for i, k in enumerate(lay.thermometer)]
            if mod.code == WITH_ZERO:
                if lay.gate is None:
                    raise CheckpointImportError(f"{name}: with-zero module needs a gate latent in the layout")
                pairs.append((w.weight_gate, f"{theirs}.{lay.gate}"))
            for param, key in pairs:
                t = _get(sd, key)
                if tuple(t.shape) != tuple(param.shape):
                    raise CheckpointImportError(f"{key}: shape {list(t.shape)}, expected {list(param.shape)}")
                param.copy_(t.to(param.dtype))
                used.add(key)
            for alias in lay.aliases:
                if f"{theirs}.{alias}" in sd:
                    used.add(f"{theirs}.{alias}")
            bkey = f"{theirs}.bias"
            if bkey in sd:
                b = sd[bkey]
                if mod.bias is not None:
                    mod.bias.copy_(b)
                elif bool((b != 0).any()):
                    raise CheckpointImportError(f"{bkey}: non-zero conv bias but the module has bias=False")
                used.add(bkey)
        else:
            local = dict(mod.named_parameters(recurse=False))
            local.update(dict(mod.named_buffers(recurse=False)))
            if not local or _inside_shift(name, model):
                continue
            theirs = rename(name)
            for k, v in local.items():
                if v is None:
                    continue
                key = f"{theirs}.{k}" if theirs else k
                if key not in sd:
                    if k == "num_batches_tracked":
                        continue
                    raise CheckpointImportError(f"checkpoint has no tensor {key!r} (for {name}.{k})")
                t = sd[key]
                if tuple(t.shape) != tuple(v.shape):
                    raise CheckpointImportError(f"{key}: shape {list(t.shape)}, expected {list(v.shape)}")
                v.copy_(t.to(v.dtype))
                used.add(key)
    unused = sorted(k for k in sd if k not in used and not k.endswith("num_batches_tracked"))
    if strict and unused:
        raise CheckpointImportError(f"unused checkpoint tensors: {unused[:10]}{' ...' if len(unused) > 10 else ''}")
    return {"shift_modules": n_shift, "copied": sorted(used), "unused": unused}


def _inside_shift(name: str, model: nn.Module) -> bool:
    """True for submodules of a shift layer (its ShiftWeight / ActQuant)."""
    parts = name.split(".")
    for i in range(1, len(parts)):
        parent = model.get_submodule(".".join(parts[:i]))
        if isinstance(parent, (ShiftConv2d, ShiftLinear)):
            return True
    return False
