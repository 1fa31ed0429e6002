#!/usr/bin/env python3
"""The fashion model over the real serving path: the official Fashion-MNIST test set POSTed to a
running `shiftserve serve` as the dataset's own images in PNG files, unchanged (light garment on
black), and inverted (dark garment on white).

    nice -n 19 python training/eval_fashion_http.py --shiftserve target/release/shiftserve \\
        [--model models/repository/fashion] [--n 10000] [--record]

Starts the server on a free loopback port with a repository holding only the model, POSTs every
image to /v1/models/fashion/predict (Content-Type image/png, two keep-alive connections), and
prints the accuracy of each form. ``--record`` adds the figures to training/results/fashion.json
(``http``), which make_cards.py prints in the card. Minutes on two shared cores.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "training", "data"))
from make_fashion import LABELS, SRC, read_idx  # noqa: E402


def png(u8):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(u8, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port, proc, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"shiftserve exited with {proc.returncode}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/v2/models/fashion/ready")
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit("shiftserve did not become ready")


def classify_all(port, bodies, workers=2):
    def work(chunk):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        out = []
        for body in chunk:
            c.request("POST", "/v1/models/fashion/predict?top_k=1", body=body,
                      headers={"Content-Type": "image/png"})
            r = c.getresponse()
            data = r.read()
            if r.status != 200:
                raise SystemExit(f"HTTP {r.status}: {data[:300]!r}")
            out.append(json.loads(data)["predictions"][0]["label"])
        return out

    chunks = [bodies[i::workers] for i in range(workers)]
    with ThreadPoolExecutor(workers) as ex:
        parts = list(ex.map(work, chunks))
    labels = [None] * len(bodies)
    for w, part in enumerate(parts):
        labels[w::workers] = part
    return labels


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shiftserve", required=True)
    ap.add_argument("--model", default=os.path.join(REPO, "models", "repository", "fashion"))
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    x = read_idx(os.path.join(SRC, "t10k-images-idx3-ubyte.gz"))[:args.n]
    y = read_idx(os.path.join(SRC, "t10k-labels-idx1-ubyte.gz"))[:args.n]
    truth = [LABELS[i] for i in y]
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(args.model, os.path.join(tmp, "fashion"))
        port = free_port()
        proc = subprocess.Popen([args.shiftserve, "serve", "--model-repository", tmp, "--http-address",
                                 "127.0.0.1", "--http-port", str(port),
                                 "--grpc-port", "off"],  # HTTP only: never collide with a server on 8001
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_ready(port, proc)
            res = {}
            for form, imgs in (("as_is", x), ("inverted", 255 - x)):
                t0 = time.time()
                pred = classify_all(port, [png(v) for v in imgs])
                acc = float(np.mean([p == t for p, t in zip(pred, truth)]))
                res[form] = {"n": len(imgs), "acc": acc, "seconds": round(time.time() - t0, 1)}
                print(f"{form}: {100 * acc:.2f} % of {len(imgs)} ({res[form]['seconds']} s)", flush=True)
        finally:
            proc.terminate()
            proc.wait(30)
    if args.record:
        path = os.path.join(REPO, "training", "results", "fashion.json")
        with open(path) as f:
            r = json.load(f)
        r["http"] = res
        with open(path, "w") as f:
            json.dump(r, f, indent=1, sort_keys=True)
        print("recorded in", path)


if __name__ == "__main__":
    main()
