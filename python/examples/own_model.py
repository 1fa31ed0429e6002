#!/usr/bin/env python3
"""Your own model, end to end: train a small W3 (DenseShift) network on Fashion-MNIST, export it
with the preprocessing the server needs, check the file with `shiftserve inspect` and
`shiftserve run`, put it into a model repository and have a running server pick it up.

Downloads nothing: the data comes from Debian's `dataset-fashion-mnist` package
(`apt-get install dataset-fashion-mnist`, files in /usr/share/datasets/fashion-mnist).

    python python/examples/own_model.py --repository my-repository
    python python/examples/own_model.py --repository my-repository --server http://127.0.0.1:8080

Steps (each prints what it checked):
  1. data      the IDX files of the Debian package (60k train / 10k test, 28x28, u8)
  2. train     `--steps` AdamW steps (default 300, under a minute on one core) of a ResNet-8 with
               DenseShift W3 weights (+-{1,2,4,8}) in its body, fp32 stem and classifier
  3. export    int8 activations calibrated on training batches; the file's `preprocess` block is
               the front end the network was trained through, so an uploaded picture reaches it
               exactly as the training images did (checked, see PREPROCESS)
  4. evaluate  accuracy of the exported file on held-out test images, read by the reference
               forward pass (only the file, no PyTorch model)
  5. CLI       `shiftserve inspect FILE` and `shiftserve run FILE sample.png --json`: the server's
               runtime must rank the sample images as the reference does
  6. publish   into REPOSITORY/NAME/VERSION/model.safetensors: staged under a dot-name and renamed
               in, so a polling server never sees a half-written file
  7. serve     with --server: ask the server to load it (`POST /v2/repository/models/NAME/load`,
               --model-control-mode explicit) or wait until it picks it up by itself
               (--model-control-mode poll); then one prediction over HTTP. A server in the default
               mode (none) loads models only at startup: restart it.
"""
from __future__ import annotations

import argparse
import gzip
import io
import itertools
import json
import os
import shutil
import struct
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from shiftserve_train import reference
from shiftserve_train.export import export
from shiftserve_train.features import image_features, image_features_rgba
from shiftserve_train.models import resnet_cifar
from shiftserve_train.train import evaluate, fit

DEBIAN_DATA = Path("/usr/share/datasets/fashion-mnist")
LABELS = ["t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
          "ankle boot"]
MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST training-set pixel mean / std (pixels / 255)

# What the server does to an uploaded picture before the network sees it: the front end for
# pictures of one object (docs/format.md; training/train.py's FASHION_SPEC). (The bundled fashion
# model declares the older fixed inversion, "invert": true, which suits dark-on-light photos only.)
# Fashion-MNIST garments are light on black, product photos dark on white or grey, cut-outs sit on
# a transparent background. "background": "auto" takes polarity and
# background level from the picture's border (object light on 0, as in the data set) and "frame"
# resizes the object's bounding box to 28 pixels and centres it, as the data set frames its
# garments. The network is trained on exactly these features of the data set's images
# (served_inputs), so training and serving see the same numbers.
PREPROCESS = {"kind": "image", "channels": 1, "crop": [28, 28], "mean": [MEAN], "std": [STD],
              "background": "auto", "frame": {"fit": 28, "threshold": 24}}


def log(step, msg):
    print(f"[{step}] {msg}", flush=True)


# 1. data ----------------------------------------------------------------------------------------

def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzip-compressed, unsigned bytes) as a numpy array."""
    data = gzip.open(path, "rb").read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise ValueError(f"{path}: not an IDX file of unsigned bytes")
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise ValueError(f"{path}: {arr.size} values for dimensions {dims}")
    return arr.reshape(dims)


def load_fashion_mnist(root: Path = DEBIAN_DATA):
    names = {"train_x": "train-images-idx3-ubyte.gz", "train_y": "train-labels-idx1-ubyte.gz",
             "test_x": "t10k-images-idx3-ubyte.gz", "test_y": "t10k-labels-idx1-ubyte.gz"}
    missing = [n for n in names.values() if not (root / n).is_file()]
    if missing:
        raise SystemExit(f"Fashion-MNIST not found in {root} (missing {', '.join(missing)}): "
                         "apt-get install dataset-fashion-mnist, or pass --data DIR")
    return {k: read_idx(root / n) for k, n in names.items()}


def served_inputs(v: np.ndarray) -> torch.Tensor:
    """u8 images [N, 28, 28] as the data set stores them -> the network input [N, 1, 28, 28]: the
    server's front end (PREPROCESS) applied to each, by the reference implementation."""
    out = np.empty((len(v), 1, 28, 28), dtype=np.float32)
    for i, img in enumerate(v):
        g = img.astype(np.float64)
        out[i] = image_features_rgba(np.stack([g, g, g, np.full_like(g, 255.0)], axis=-1), PREPROCESS)
    return torch.from_numpy(out)


def as_png(v: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(v, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def as_photo_png(v: np.ndarray) -> bytes:
    """A data-set image as a product photo would show it: PNG, dark garment on white."""
    return as_png(255 - v)


# 2.-4. train, export, evaluate ------------------------------------------------------------------

def train_and_export(data, out_file: Path, name: str, steps: int, batch: int, seed: int):
    torch.manual_seed(seed)
    n_train = steps * batch
    if n_train > 55000:
        raise SystemExit(f"--steps {steps} x batch {batch} exceeds the 55000 training images kept apart "
                         "from validation: use fewer steps (this example trains one epoch)")
    labels = torch.from_numpy(data["train_y"].astype(np.int64))
    train = TensorDataset(served_inputs(data["train_x"][:n_train]), labels[:n_train])
    val = TensorDataset(served_inputs(data["train_x"][55000:56000]), labels[55000:56000])
    train_loader = DataLoader(train, batch_size=batch, shuffle=True, drop_last=True,
                              generator=torch.Generator().manual_seed(seed))
    val_loader = DataLoader(val, batch_size=256)

    # ResNet-8: fp32 3x3 stem, three BasicBlocks with DenseShift W3 convolutions, fp32 classifier.
    model = resnet_cifar(depth=8, width=8, in_ch=1, num_classes=10, bits=3, strides=(2, 2, 2))
    log("train", f"ResNet-8 W3 ({sum(p.numel() for p in model.parameters())} trainable values: each W3 "
                 f"weight trains as a sign and 3 exponent latents), {len(train_loader)} steps of {batch} images")
    t0 = time.time()
    fit(model, train_loader, val_loader, epochs=1, lr=3e-3, progress=False,
        log=lambda s: log("train", s))
    log("train", f"{time.time() - t0:.1f} s")

    calib = [x for x, _ in itertools.islice(iter(train_loader), 8)]
    export(model, out_file, name=name, task="image_classification", labels=LABELS,
           preprocess=PREPROCESS, numeric_path="int8", calib=calib, progress=False,
           description=f"own-model example: ResNet-8 W3 on Fashion-MNIST, {len(train_loader)} steps")
    twin = evaluate(model, val_loader, progress=False)["acc"]  # model(x) is now the int8 twin
    log("export", f"{out_file} ({out_file.stat().st_size} bytes), int8 PyTorch twin: "
                  f"{100 * twin:.1f}% on 1000 validation images")
    return model


def check_preprocess(data, n: int = 16) -> None:
    """The file's preprocessing turns a photo-like PNG (dark garment on white) and the data set's
    own picture (light on black) into exactly the input the network was trained on."""
    worst = 0.0
    for v in data["test_x"][:n]:
        trained_on = served_inputs(v[None])[0].numpy()
        for png in (as_photo_png(v), as_png(v)):
            worst = max(worst, float(np.abs(image_features(png, PREPROCESS) - trained_on).max()))
    if worst > 1e-6:
        raise SystemExit(f"preprocess mismatch: served input differs from the training input by {worst}")
    log("export", f"preprocess {json.dumps(PREPROCESS)}: photo-like and data-set PNGs -> the training "
                  f"input (max difference {worst:.1e} over {n} images each)")


def evaluate_file(out_file: Path, data, n: int) -> float:
    x = served_inputs(data["test_x"][:n]).numpy()
    logits = reference.forward(out_file, x)
    acc = float((logits.argmax(1) == data["test_y"][:n]).mean())
    log("evaluate", f"exported file (reference forward pass): {100 * acc:.1f}% on {n} test images")
    return acc


# 5. shiftserve CLI ------------------------------------------------------------------------------

def find_shiftserve(explicit: str | None) -> Path:
    candidates = [explicit, os.environ.get("SHIFTSERVE_BIN"), shutil.which("shiftserve"),
                  Path(__file__).resolve().parents[2] / "target" / "release" / "shiftserve"]
    for c in candidates:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return Path(c)
    raise SystemExit("shiftserve binary not found: build it (cargo build --release -p server) "
                     "or pass --shiftserve PATH")


def check_with_cli(shiftserve: Path, out_file: Path, data, work: Path, n: int = 10):
    """`shiftserve inspect` and `shiftserve run` on the file; run's top class must be the
    reference's for each of n test images uploaded as light-background PNGs."""
    inspect = subprocess.run([str(shiftserve), "inspect", str(out_file)], capture_output=True, text=True, check=True)
    print(inspect.stdout.rstrip())
    samples = []
    for i, v in enumerate(data["test_x"][:n]):
        png = work / f"sample-{i}-{LABELS[data['test_y'][i]].replace('/', '-').replace(' ', '-')}.png"
        png.write_bytes(as_photo_png(v))
        samples.append(png)
    served_inputs = np.stack([image_features(p.read_bytes(), PREPROCESS) for p in samples])
    expected = reference.forward(out_file, served_inputs).argmax(1)
    first = None
    for png, want in zip(samples, expected):
        res = subprocess.run([str(shiftserve), "run", str(out_file), str(png), "--json", "--top-k", "3"],
                             capture_output=True, text=True, check=True)
        top = json.loads(res.stdout)["predictions"]
        first = first or top
        if top[0]["index"] != int(want):
            raise SystemExit(f"shiftserve run {png.name}: top class {top[0]['index']}, reference {int(want)}")
    log("cli", f"shiftserve run {samples[0].name}: " + ", ".join(f"{p['label']} {p['score']:.3f}" for p in first))
    log("cli", f"shiftserve run ranks first the class the reference does, on all {n} sample PNGs")
    return samples


# 6. publish -------------------------------------------------------------------------------------

def publish(out_file: Path, repository: Path, name: str) -> int:
    """Copy the file into REPOSITORY/NAME/<next version>/model.safetensors atomically."""
    model_dir = repository / name
    model_dir.mkdir(parents=True, exist_ok=True)
    versions = [int(d.name) for d in model_dir.iterdir() if d.is_dir() and d.name.isdigit() and int(d.name) > 0]
    version = max(versions, default=0) + 1
    staging = model_dir / f".staging-{version}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    shutil.copyfile(out_file, staging / "model.safetensors")
    os.rename(staging, model_dir / str(version))  # directories named by an integer are versions
    log("publish", f"{model_dir / str(version) / 'model.safetensors'}")
    return version


# 7. a running server picks it up ----------------------------------------------------------------

def http(method, url, body=None, headers=None, timeout=10):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError as e:  # connection refused, timeout: no answer
        return None, str(e).encode()


def wait_until_served(server: str, name: str, version: int, timeout: float, api_key: str | None = None) -> str:
    """Explicit mode: load through the API. Poll mode: wait for the next repository scan.
    Returns "explicit" or "poll"."""
    auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    deadline = time.time() + timeout
    while (live := http("GET", f"{server}/v2/health/live"))[0] != 200:  # a server just started
        if time.time() > deadline:
            raise SystemExit(f"no shiftserve answers at {server}: {live[1][:200]!r}")
        time.sleep(0.5)
    status, body = http("POST", f"{server}/v2/repository/models/{name}/load", b"", auth, timeout=timeout)
    if status == 200:
        mode = "explicit"
    elif status == 409:  # not in explicit mode: poll mode picks new versions up by itself
        mode = "poll"
    else:
        raise SystemExit(f"POST /v2/repository/models/{name}/load answered {status}: {body[:300]!r}")
    url = f"{server}/v2/models/{name}/versions/{version}/ready"
    while True:
        status, _ = http("GET", url, headers=auth)
        if status == 200:
            log("serve", f"{mode} mode: {name} version {version} is ready on {server}")
            return mode
        if time.time() > deadline:
            raise SystemExit(f"{server} did not pick up {name} version {version} within {timeout:.0f} s "
                             f"(last answer {status}). A server started with --model-control-mode none (the "
                             "default) loads models only at startup: restart it, or run it with "
                             "--model-control-mode poll (new versions load within --repository-poll-secs) "
                             "or explicit (POST /v2/repository/models/NAME/load)")
        time.sleep(0.5)


def predict(server: str, name: str, png: Path, api_key: str | None = None) -> dict:
    headers = {"Content-Type": "image/png", **({"Authorization": f"Bearer {api_key}"} if api_key else {})}
    status, body = http("POST", f"{server}/v1/models/{name}/predict?top_k=3", png.read_bytes(), headers)
    if status != 200:
        raise SystemExit(f"predict answered {status}: {body[:300]!r}")
    answer = json.loads(body)
    log("serve", f"POST {png.name} -> " + ", ".join(f"{p['label']} {p['score']:.3f}" for p in answer["predictions"]))
    return answer


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repository", type=Path, required=True, help="model repository to publish into")
    ap.add_argument("--name", default="my-fashion", help="model name in URLs (default my-fashion)")
    ap.add_argument("--work", type=Path, default=Path("own-model-work"), help="model file and sample PNGs")
    ap.add_argument("--data", type=Path, default=DEBIAN_DATA, help="Fashion-MNIST IDX files")
    ap.add_argument("--steps", type=int, default=300, help="training steps (one pass over steps x batch images)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--test-images", type=int, default=1000, help="test images the exported file is scored on")
    ap.add_argument("--threads", type=int, default=1,
                    help="PyTorch threads (default 1: this small network gains little from more)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shiftserve", help="the shiftserve binary (default: $SHIFTSERVE_BIN, PATH, target/release)")
    ap.add_argument("--server", help="a running server to hand the model to, e.g. http://127.0.0.1:8080")
    ap.add_argument("--api-key", default=os.environ.get("SHIFTSERVE_API_KEY"), help="if the server has one")
    ap.add_argument("--timeout", type=float, default=60, help="seconds to wait for the server")
    ap.add_argument("--summary", type=Path, help="write the figures as JSON here")
    args = ap.parse_args(argv)

    torch.set_num_threads(max(1, args.threads))
    shiftserve = find_shiftserve(args.shiftserve)
    args.work.mkdir(parents=True, exist_ok=True)
    out_file = args.work / f"{args.name}.safetensors"

    data = load_fashion_mnist(args.data)
    log("data", f"Fashion-MNIST from {args.data}: {len(data['train_x'])} train, {len(data['test_x'])} test images")
    train_and_export(data, out_file, args.name, args.steps, args.batch, args.seed)
    check_preprocess(data)
    acc = evaluate_file(out_file, data, args.test_images)
    samples = check_with_cli(shiftserve, out_file, data, args.work)
    version = publish(out_file, args.repository, args.name)
    summary = {"model_file": str(out_file), "test_accuracy_file": acc, "test_images": args.test_images,
               "version": version, "samples": [str(p) for p in samples]}
    if args.server:
        server = args.server.rstrip("/")
        summary["mode"] = wait_until_served(server, args.name, version, args.timeout, args.api_key)
        answer = predict(server, args.name, samples[0], args.api_key)
        cli = json.loads(subprocess.run(
            [str(shiftserve), "run", str(out_file), str(samples[0]), "--json", "--top-k", "3"],
            capture_output=True, text=True, check=True).stdout)
        if [p["index"] for p in answer["predictions"]] != [p["index"] for p in cli["predictions"]]:
            raise SystemExit(f"the server ranks {samples[0].name} differently from shiftserve run: "
                             f"{answer['predictions']} vs {cli['predictions']}")
        summary["server_answer"] = answer
    else:
        log("serve", f"no --server: start one on the repository, e.g. shiftserve serve --model-repository "
                     f"{args.repository} --model-control-mode poll --repository-poll-secs 5")
    if args.summary:
        args.summary.write_text(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
