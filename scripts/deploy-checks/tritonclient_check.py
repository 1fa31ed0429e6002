#!/usr/bin/env python3
"""The real tritonclient (PyPI) against a running shiftserve, over HTTP and over gRPC.

The same checks run through `tritonclient.http` and `tritonclient.grpc`, and both must pass
them with the same answers: health, server and model metadata, readiness, the API key, raw
image and WAV files as BYTES, an FP32 tensor (logits equal to the bit between the protocols),
top-k classification, refusals (unknown model, wrong shape, batch over the model's limit,
undecodable file, oversized message) with the status each protocol uses for them, statistics,
the repository index and unload/load (the server runs in explicit mode).

  tritonclient_check.py --http 127.0.0.1:8080 --grpc 127.0.0.1:8001 --key KEY --fixtures DIR
"""
import argparse
import json
import sys
import time
import urllib.request

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

# The refusal categories and the status each protocol reports for them.
STATUS = {
    "http": {"unauthenticated": "401", "not_found": "404", "invalid": "400", "too_large": "413"},
    "grpc": {
        "unauthenticated": "StatusCode.UNAUTHENTICATED",
        "not_found": "StatusCode.NOT_FOUND",
        "invalid": "StatusCode.INVALID_ARGUMENT",
        "too_large": "StatusCode.RESOURCE_EXHAUSTED",
    },
}

problems = []


def need(cond, what):
    if not cond:
        problems.append(what)
    return cond


def v1_top(http_url, key, model, path, content_type):
    """The top label of the task API (the reference the OIP answers must agree with)."""
    req = urllib.request.Request(
        f"http://{http_url}/v1/models/{model}/predict",
        data=open(path, "rb").read(),
        headers={"Content-Type": content_type, "Authorization": f"Bearer {key}"},
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)["predictions"][0]["label"]


def expect_error(proto, category, fn):
    try:
        fn()
    except InferenceServerException as e:
        want = STATUS[proto][category]
        need(e.status() == want, f"{proto}: expected {want} ({category}), got {e.status()}: {e.message()}")
        return e
    need(False, f"{proto}: expected a {category} refusal, the call succeeded")
    return None


def check(proto, mod, url, key, fixtures, refs):
    auth = {"authorization": f"Bearer {key}"}
    c = mod.InferenceServerClient(url=url)
    as_json = {"as_json": True} if proto == "grpc" else {}
    out = {}

    need(c.is_server_live(), f"{proto}: not live")
    need(c.is_server_ready(), f"{proto}: not ready")
    meta = c.get_server_metadata(headers=auth, **as_json)
    need(meta["name"] == "shiftserve", f"{proto}: server metadata {meta}")
    need("model_repository" in meta["extensions"], f"{proto}: extensions {meta['extensions']}")
    for bad in (None, {"authorization": "Bearer wrong"}, {"authorization": f"Basic {key}"}):
        expect_error(proto, "unauthenticated", lambda: c.get_server_metadata(headers=bad))
    # The bearer scheme is case-insensitive on both protocols (RFC 9110).
    need(c.get_server_metadata(headers={"authorization": f"bearer {key}"}, **as_json)["name"] == "shiftserve",
         f"{proto}: lowercase bearer scheme")

    mm = c.get_model_metadata("fashion", headers=auth, **as_json)
    inputs = {i["name"]: (i["datatype"], [int(d) for d in i["shape"]]) for i in mm["inputs"]}
    need(inputs.get("raw", (None,))[0] == "BYTES", f"{proto}: fashion inputs {inputs}")
    dtype, shape = inputs["input"]
    need(dtype == "FP32" and shape[0] == -1, f"{proto}: fashion input {inputs['input']}")
    need(c.is_model_ready("fashion", headers=auth), f"{proto}: fashion not ready")
    need(not c.is_model_ready("no-such-model", headers=auth), f"{proto}: unknown model ready")

    def bytes_input(path):
        t = mod.InferInput("raw", [1], "BYTES")
        t.set_data_from_numpy(np.array([open(path, "rb").read()], dtype=np.object_))
        return t

    def top(model, path):
        res = c.infer(model, [bytes_input(path)], headers=auth,
                      outputs=[mod.InferRequestedOutput("probabilities", class_count=3)])
        labels = res.as_numpy("probabilities")
        need(labels.shape == (1, 3), f"{proto}: classification shape {labels.shape}")
        first = labels[0][0].decode()
        return first.split(":", 2)[2], float(first.split(":", 1)[0])

    for model, fixture in (("fashion", "shirt.png"), ("intent", "intent.wav"), ("digits", "digit.wav")):
        label, score = top(model, f"{fixtures}/{fixture}")
        need(label == refs[model], f"{proto}: {model} on {fixture} says {label!r}, the task API {refs[model]!r}")
        out[f"{model}-score"] = score

    x = (np.arange(np.prod(shape[1:]), dtype=np.float32).reshape([1] + shape[1:]) % 17) / 17.0
    t = mod.InferInput("input", list(x.shape), "FP32")
    t.set_data_from_numpy(x)
    res = c.infer("fashion", [t], headers=auth, outputs=[mod.InferRequestedOutput("logits")])
    out["logits"] = res.as_numpy("logits")
    need(out["logits"].shape == (1, 10), f"{proto}: logits shape {out['logits'].shape}")
    need(res.get_response(**as_json)["model_name"] == "fashion", f"{proto}: response model_name")

    # Refusals.
    expect_error(proto, "unauthenticated", lambda: c.infer("fashion", [t]))
    expect_error(proto, "not_found", lambda: c.infer("no-such-model", [t], headers=auth))
    expect_error(proto, "not_found", lambda: c.get_model_metadata("no-such-model", headers=auth))
    wrong = mod.InferInput("input", [1, 3, 7], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 3, 7), dtype=np.float32))
    expect_error(proto, "invalid", lambda: c.infer("fashion", [wrong], headers=auth))
    big_batch = 1 + refs["fashion-max-batch"]
    many = mod.InferInput("input", [big_batch] + shape[1:], "FP32")
    many.set_data_from_numpy(np.zeros([big_batch] + shape[1:], dtype=np.float32))
    e = expect_error(proto, "invalid", lambda: c.infer("fashion", [many], headers=auth))
    need(e is None or "max_batch_size" in e.message(), f"{proto}: batch refusal says {e and e.message()}")
    junk = mod.InferInput("raw", [1], "BYTES")
    junk.set_data_from_numpy(np.array([b"\x89PNG not really"], dtype=np.object_))
    try:
        c.infer("fashion", [junk], headers=auth)
        need(False, f"{proto}: an undecodable image was served")
    except InferenceServerException as e:
        ok = {"http": ("400", "415"), "grpc": ("StatusCode.INVALID_ARGUMENT",)}[proto]
        need(e.status() in ok, f"{proto}: undecodable image answered {e.status()}: {e.message()}")
    huge = mod.InferInput("raw", [1], "BYTES")
    huge.set_data_from_numpy(np.array([b"\0" * (17 << 20)], dtype=np.object_))
    expect_error(proto, "too_large", lambda: c.infer("fashion", [huge], headers=auth))
    need(c.is_server_live(), f"{proto}: not live after the refusals")

    stats = c.get_inference_statistics("fashion", headers=auth, **as_json)["model_stats"]
    need(len(stats) == 1 and int(stats[0]["inference_count"]) > 0, f"{proto}: fashion stats {stats}")
    out["index"] = sorted(m["name"] for m in (c.get_model_repository_index(headers=auth, **as_json)
                                              if proto == "http" else
                                              c.get_model_repository_index(headers=auth, as_json=True)["models"]))
    c.unload_model("digits", headers=auth)
    need(not c.is_model_ready("digits", headers=auth), f"{proto}: digits ready after unload")
    c.load_model("digits", headers=auth)
    need(c.is_model_ready("digits", headers=auth), f"{proto}: digits not ready after load")
    c.close()
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--http", required=True)
    ap.add_argument("--grpc", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--fixtures", required=True)
    a = ap.parse_args()
    refs = {
        "fashion": v1_top(a.http, a.key, "fashion", f"{a.fixtures}/shirt.png", "image/png"),
        "intent": v1_top(a.http, a.key, "intent", f"{a.fixtures}/intent.wav", "audio/wav"),
        "digits": v1_top(a.http, a.key, "digits", f"{a.fixtures}/digit.wav", "audio/wav"),
    }
    req = urllib.request.Request(f"http://{a.http}/v2/models/fashion/config",
                                 headers={"Authorization": f"Bearer {a.key}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        refs["fashion-max-batch"] = json.load(r)["max_batch_size"]
    results = {}
    for proto, mod, url in (("http", httpclient, a.http), ("grpc", grpcclient, a.grpc)):
        t0 = time.monotonic()
        try:
            results[proto] = check(proto, mod, url, a.key, a.fixtures, refs)
        except Exception as e:  # an unexpected exception is a failed check, with its story
            problems.append(f"{proto}: {type(e).__name__}: {e}")
            continue
        print(f"  tritonclient.{proto}: checks done in {time.monotonic() - t0:.1f} s")
    if len(results) == 2:
        h, g = results["http"], results["grpc"]
        need(np.array_equal(h["logits"], g["logits"]), "the FP32 logits differ between HTTP and gRPC")
        for k in ("fashion-score", "intent-score", "digits-score"):
            need(h[k] == g[k], f"{k}: HTTP {h[k]} != gRPC {g[k]}")
        need(h["index"] == g["index"], f"repository index: HTTP {h['index']} != gRPC {g['index']}")
    if problems:
        print("tritonclient check FAILED:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    print(f"  tritonclient.http and tritonclient.grpc agree: {refs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
