#!/usr/bin/env python3
"""Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package into numpy arrays.

    apt-get install -y dataset-fashion-mnist
    python training/data/make_fashion.py --out "$SHIFTSERVE_DATA/fashion"

Writes ``{train,test}_{images,labels}.npy`` (uint8 [N,28,28] / int64 [N]). The official split is
kept: 60,000 training images (the last 5,000 are used as validation by train.py) and the 10,000
official test images. A few seconds.
"""

import argparse
import gzip
import os

import numpy as np

SRC = "/usr/share/datasets/fashion-mnist"
LABELS = ["t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
          "bag", "ankle boot"]


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[0:4], "big")
    ndim = magic & 0xFF
    if magic >> 8 != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte idx file")
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    return arr.reshape(dims)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--src", default=SRC)
    ap.add_argument("--out", default=os.path.join(os.environ.get("SHIFTSERVE_DATA") or os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "data"), "fashion"))
    args = ap.parse_args()
    if not os.path.isdir(args.src):
        raise SystemExit(f"{args.src} missing: apt-get install -y dataset-fashion-mnist")
    os.makedirs(args.out, exist_ok=True)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        x = read_idx(os.path.join(args.src, f"{prefix}-images-idx3-ubyte.gz"))
        y = read_idx(os.path.join(args.src, f"{prefix}-labels-idx1-ubyte.gz")).astype(np.int64)
        assert x.shape[0] == y.shape[0] and x.shape[1:] == (28, 28)
        np.save(os.path.join(args.out, f"{split}_images.npy"), x)
        np.save(os.path.join(args.out, f"{split}_labels.npy"), y)
        print(split, x.shape, np.bincount(y))


if __name__ == "__main__":
    main()
