"""The committed golden fixtures are reproducible and self-consistent."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file

from shiftserve_train import features, reference

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "models/tests/fixtures"
MODELS = ["tiny_w3", "tiny_w3_float", "tiny_w2", "tiny_wz3_float", "tiny_fp32", "bottleneck_w4", "slu_w3",
          "mlp_wz5", "tt_lstm", "dense_lstm", "misc_ops"]


@pytest.mark.parametrize("name", MODELS)
def test_golden_logits_reproduce_from_the_file(name):
    g = load_file(str(FIX / f"{name}.golden.safetensors"))
    mf = reference.ModelFile(FIX / f"{name}.safetensors")
    out, values = reference.forward(mf, g["input"], return_all=True)
    assert np.array_equal(out, g["logits"])
    # Intermediate node outputs recorded in the golden file (node.<name>) reproduce as well.
    for key in (k for k in g if k.startswith("node.")):
        assert np.array_equal(values[key[len("node."):]], g[key]), key
    # The fixture must be able to catch a wrong runtime: a batch of distinct inputs, one finite
    # logit per label, logits that separate the classes of every sample (no constant row), and
    # every class's logit changing with the input (a network that ignored its input, or a golden
    # file of identical rows, would compare nothing).
    batch = g["input"].reshape(len(g["input"]), -1)
    assert len(batch) >= 2 and len(np.unique(batch, axis=0)) == len(batch)
    assert out.shape == (len(batch), len(mf.labels))
    assert np.isfinite(out).all()
    assert (np.ptp(out, axis=1) > 0.1).all(), np.ptp(out, axis=1)
    assert (np.ptp(out, axis=0) > 0).all(), np.ptp(out, axis=0)


def test_tiny_export_regenerates_the_same_model(tmp_path):
    sys.path.insert(0, str(ROOT / "python/examples"))
    import tiny_export

    tiny_export.main(tmp_path)
    for f in ("tiny_w3.safetensors", "tiny_w3.golden.safetensors"):
        a, b = load_file(str(tmp_path / f)), load_file(str(FIX / f))
        assert a.keys() == b.keys()
        for k in a:
            assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
            if np.issubdtype(a[k].dtype, np.floating):
                # The folded scales/biases and the golden activations come out of PyTorch's
                # float kernels, whose rounding depends on the CPU (AVX-512 vs AVX2-only
                # differ in the last bits): equal to within a few ulps, not bit for bit.
                assert np.allclose(a[k], b[k], rtol=1e-5, atol=1e-6), k
            else:
                # Packed shift codes and every other integer tensor: bit for bit.
                assert np.array_equal(a[k], b[k]), k
    with safe_open(str(FIX / "tiny_w3.safetensors"), "numpy") as f:
        graph = json.loads(f.metadata()["shiftserve.graph"])
    assert graph["inputs"][0]["shape"] == [1, 28, 28]


def test_preprocess_fixtures_reproduce():
    img = load_file(str(FIX / "preprocess_images.safetensors"))
    with safe_open(str(FIX / "preprocess_images.safetensors"), "numpy") as f:
        meta = f.metadata()
    for key, val in img.items():
        fname, spec = key.split("/")
        got = features.image_features(FIX / "images" / fname, json.loads(meta[f"spec/{spec}"]))
        assert np.array_equal(got, val), key
    aud = load_file(str(FIX / "preprocess_audio.safetensors"))
    with safe_open(str(FIX / "preprocess_audio.safetensors"), "numpy") as f:
        spec = json.loads(f.metadata()["spec"])
    for key, val in aud.items():
        fname, what = key.split("/")
        if what == "log_mel":
            assert np.array_equal(features.audio_features(FIX / "audio" / fname, spec), val), key


def test_every_committed_model_fixture_is_covered():
    names = {p.name[: -len(".golden.safetensors")] for p in FIX.glob("*.golden.safetensors")}
    assert names == set(MODELS)
    total = sum(p.stat().st_size for p in FIX.rglob("*") if p.is_file())
    assert total < 3_000_000  # keep the fixtures small
