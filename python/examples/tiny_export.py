"""Worked example of docs/format.md: build a tiny W3 shift ResNet, calibrate, export, check.

    python python/examples/tiny_export.py [OUT_DIR]      (default: models/tests/fixtures)

Writes ``tiny_w3.safetensors`` (int8 path) and ``tiny_w3.golden.safetensors`` (``input`` [4,1,28,28]
and ``logits`` [4,10] from the reference forward over the exported file), then prints the
graph and the agreement between the PyTorch eval forward and the reference.

A real model would be trained first (see python/README.md); here the latents are the
low-variance random init and the BatchNorm statistics come from a warm-up pass on synthetic
images, which exercises every part of the export (BN folding, packing, quantisation) the same way.
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save_file

from shiftserve_train import reference
from shiftserve_train.export import export
from shiftserve_train.models import resnet_cifar
from shiftserve_train.testing import (
    pick_robust_inputs,
    randomize_batchnorm,
    randomize_linear,
    replace_if_changed,
    synthetic_images,
)

FMNIST_LABELS = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
                 "bag", "ankle-boot"]
PREPROCESS = {"kind": "image", "channels": 1, "resize": 28, "crop": [28, 28], "invert": False,
              "mean": [0.2860], "std": [0.3530]}


def build(seed=0, bits=3, code="zero_free"):
    torch.manual_seed(seed)
    model = resnet_cifar(depth=8, width=8, in_ch=1, num_classes=10, bits=bits, code=code)
    randomize_batchnorm(model, seed=seed, warmup=synthetic_images(64, 1, 28, 28, seed=seed + 1))
    randomize_linear(model.fc, seed=seed)
    return model


def main(out_dir):
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = build()
    calib = [synthetic_images(16, 1, 28, 28, seed=100 + i) for i in range(4)]
    path = out_dir / "tiny_w3.safetensors.tmp"
    export(model, path, name="tiny_w3", task="image_classification", labels=FMNIST_LABELS,
           preprocess=PREPROCESS, numeric_path="int8", calib=calib, progress=False,
           description="tiny CIFAR-stem W3 shift ResNet-8 (random weights), golden fixture")
    # golden inputs: the 4 of 32 synthetic images farthest from int8 rounding ties
    x, margins = pick_robust_inputs(path, synthetic_images(32, 1, 28, 28, seed=7).numpy(), 4)
    logits, values = reference.forward(path, x, return_all=True)
    golden = {"input": x, "logits": logits}
    # per-node outputs of the reference, to localise a disagreement ("node.<name>")
    golden.update({f"node.{k}": v for k, v in values.items() if k != "input"})
    save_file(golden, str(out_dir / "tiny_w3.golden.safetensors.tmp"))
    replace_if_changed(path, out_dir / "tiny_w3.safetensors")
    replace_if_changed(out_dir / "tiny_w3.golden.safetensors.tmp", out_dir / "tiny_w3.golden.safetensors")
    path = out_dir / "tiny_w3.safetensors"
    with torch.no_grad():
        torch_logits = model(torch.from_numpy(x)).numpy()
    mf = reference.ModelFile(path)
    for n in mf.graph["nodes"]:
        attrs = {k: v for k, v in n.items() if k not in ("name", "op", "inputs", "output")}
        print(f"{n['name']:<22} {n['op']:<13} {json.dumps(attrs)[:100]}")
    print("quantisation margins (f32 ulps):", np.round(margins, 1))
    print("reference logits:\n", np.array2string(logits, precision=4))
    print("max |torch - reference| =", float(np.abs(torch_logits - logits).max()),
          " top-1 equal:", bool((torch_logits.argmax(1) == logits.argmax(1)).all()))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "models/tests/fixtures")
