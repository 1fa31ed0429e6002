import json

import numpy as np
import pytest
import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.numpy import save_file

from shiftserve_train import reference
from shiftserve_train.export import (
    ExportError,
    bn_affine,
    export,
    fold_float,
    fold_shift,
    pack_planes,
    tensor_sha256,
    unpack_planes,
)
from shiftserve_train.layers import ShiftConv2d
from shiftserve_train.models import LSTMClassifier, ResNet, ShiftMLP, TTLSTMClassifier, resnet_cifar
from shiftserve_train.quant import set_quant_mode
from shiftserve_train.testing import randomize_batchnorm, randomize_linear, synthetic_images

PP = {"kind": "image", "channels": 1, "resize": 16, "crop": [16, 16], "invert": False, "mean": [0.5], "std": [0.5]}
AUDIO = {"kind": "audio", "sample_rate": 16000, "seconds": 0.2, "features": "log_mel", "n_fft": 512,
         "win_length": 400, "hop_length": 160, "window": "hann", "center": True, "n_mels": 12,
         "f_min": 20.0, "f_max": 8000.0, "log_eps": 1e-6, "normalize": "utterance"}
LABELS = [str(i) for i in range(10)]


def _random_values(rng, rows, cols, bits, code):
    e = rng.integers(0, 2 ** (bits - 1) - (0 if code == "zero_free" else 1), size=(rows, cols))
    v = np.where(rng.random((rows, cols)) < 0.5, -1, 1) * (1 << e)
    if code == "with_zero":
        v = np.where(rng.random((rows, cols)) < 0.2, 0, v)
    return v


@pytest.mark.parametrize("bits,code", [(2, "zero_free"), (3, "zero_free"), (4, "zero_free"), (2, "with_zero"),
                                       (3, "with_zero"), (4, "with_zero"), (5, "with_zero")])
def test_pack_round_trip_and_layout(bits, code):
    rng = np.random.default_rng(bits)
    rows, cols = 5, 13  # 65 weights: last byte has 7 padding bits
    v = _random_values(rng, rows, cols, bits, code)
    planes = pack_planes(v, bits, code)
    assert planes.dtype == np.uint8 and planes.shape == (bits, 9)
    assert np.array_equal(unpack_planes(planes, bits, code, rows, cols), v)
    # layout: weight i is bit i%8 of byte i/8, plane 0 = sign
    i = 37
    r, c = divmod(i, cols)
    assert ((planes[0, i // 8] >> (i % 8)) & 1) == (v[r, c] < 0)
    assert np.all(planes[:, -1] >> 1 == 0)  # padding bits are zero


def test_pack_known_bytes():
    v = np.array([[1, -1, 2, -8, 4, 1, 1, 1, -2]])
    p = pack_planes(v, 3, "zero_free")
    # sign bits (LSB first): 0,1,0,1,0,0,0,0 | 1 ; m = 0,0,1,3,2,0,0,0 | 1
    assert p[0].tolist() == [0b00001010, 0b1]
    assert p[1].tolist() == [0b00001100, 0b1]  # m bit 0: weights 2 (m=1), 3 (m=3)
    assert p[2].tolist() == [0b00011000, 0b0]  # m bit 1: weights 3 (m=3), 4 (m=2)


def test_unpack_rejects_corruption():
    v = np.ones((1, 9), dtype=np.int64)
    p = pack_planes(v, 3, "zero_free")
    bad = p.copy()
    bad[1, 1] |= 0b10  # padding bit
    with pytest.raises(ExportError):
        unpack_planes(bad, 3, "zero_free", 1, 9)
    with pytest.raises(ExportError):
        unpack_planes(p[:, :1], 3, "zero_free", 1, 9)
    wz = pack_planes(np.zeros((1, 8), dtype=np.int64), 3, "with_zero")
    wz[0, 0] |= 1  # negative zero
    with pytest.raises(ExportError):
        unpack_planes(wz, 3, "with_zero", 1, 8)
    with pytest.raises(ExportError):
        pack_planes(np.array([[0]]), 3, "zero_free")
    with pytest.raises(ExportError):
        pack_planes(np.array([[16]]), 3, "zero_free")
    with pytest.raises(ExportError):
        pack_planes(np.array([[3]]), 4, "zero_free")


def test_bn_folding_equivalence():
    torch.manual_seed(0)
    conv = ShiftConv2d(4, 6, 3, padding=1, bits=3, bias=True)
    with torch.no_grad():
        conv.bias.normal_()
    bn = nn.BatchNorm2d(6)
    seq = nn.Sequential(conv, bn)
    randomize_batchnorm(seq, seed=1)
    x = torch.randn(2, 4, 7, 7)
    with torch.no_grad():
        ref = seq(x).double()
    values, scale, bias = fold_shift(conv, bn)
    y = torch.nn.functional.conv2d(x.double(), torch.from_numpy(values).double().reshape(6, 4, 3, 3), None, 1, 1)
    y = y * torch.from_numpy(scale).double()[None, :, None, None] + torch.from_numpy(bias).double()[None, :, None, None]
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)

    fconv = nn.Conv2d(4, 6, 3, padding=1, bias=True)
    seq = nn.Sequential(fconv, bn)
    with torch.no_grad():
        ref = seq(x)
    w, b = fold_float(fconv, bn)
    torch.testing.assert_close(torch.nn.functional.conv2d(x, torch.from_numpy(w), torch.from_numpy(b), 1, 1), ref,
                               rtol=1e-5, atol=1e-5)
    s, _ = bn_affine(None, 3)
    assert s.tolist() == [1, 1, 1]


def _tiny(seed=0, **kw):
    torch.manual_seed(seed)
    m = resnet_cifar(depth=8, width=4, in_ch=1, num_classes=10, **kw)
    randomize_batchnorm(m, seed=seed, warmup=synthetic_images(16, 1, 16, 16, seed=seed + 1))
    randomize_linear(m.fc, seed=seed)
    return m


def _agree(model, path, x, rtol):
    with torch.no_grad():
        t = model(torch.from_numpy(x)).numpy()
    r = reference.forward(path, x)
    assert r.shape == t.shape
    assert np.array_equal(r.argmax(1), t.argmax(1))
    assert np.abs(r - t).max() <= rtol * np.abs(t).max()


@pytest.mark.parametrize("kw,numeric_path", [({"bits": 3}, "int8"), ({"bits": 3}, "float"),
                                             ({"bits": 2}, "int8"), ({"bits": 3, "code": "with_zero"}, "int8"),
                                             ({"shift": False}, "float")])
def test_export_reference_agrees_with_pytorch(tmp_path, kw, numeric_path):
    m = _tiny(**kw)
    x = synthetic_images(6, 1, 16, 16, seed=9).numpy()
    calib = [synthetic_images(8, 1, 16, 16, seed=20 + i) for i in range(3)]
    if numeric_path == "float":
        set_quant_mode(m, "off")
        calib = None
    p = tmp_path / "m.safetensors"
    info = export(m, p, name="tiny", task="image_classification", labels=LABELS, preprocess=PP,
                  numeric_path=numeric_path, calib=calib, progress=False)
    assert info["input_shape"] == [1, 16, 16]
    _agree(m, p, x, rtol=1e-3 if numeric_path == "int8" else 1e-5)
    mf = reference.ModelFile(p)
    ops = [n["op"] for n in mf.graph["nodes"]]
    if kw.get("shift", True):
        assert ops.count("shift_conv2d") == 8 and ops[0] == "conv2d" and ops[-1] == "linear"
        sc = [n for n in mf.graph["nodes"] if n["op"] == "shift_conv2d"]
        assert all(n["path"] == numeric_path for n in sc)
        assert all(("input_quant" in n) == (numeric_path == "int8") for n in sc)
        assert sum(len(n["inputs"]) == 2 for n in sc) == 3  # one residual per block
    else:
        assert "shift_conv2d" not in ops and ops.count("add") == 3


def test_export_bottleneck_imagenet_stem(tmp_path):
    torch.manual_seed(0)
    m = ResNet("bottleneck", layers=(1, 1), widths=(2, 4), stem="imagenet", stem_width=4, in_channels=3,
               num_classes=3, bits=4)
    randomize_batchnorm(m, seed=0, warmup=synthetic_images(8, 3, 24, 24, seed=1))
    pp = {"kind": "image", "channels": 3, "crop": [24, 24], "mean": [0.5] * 3, "std": [0.5] * 3}
    p = tmp_path / "b.safetensors"
    export(m, p, name="b", task="image_classification", labels=["a", "b", "c"], preprocess=pp,
           calib=[synthetic_images(8, 3, 24, 24, seed=2)], progress=False)
    ops = [n["op"] for n in reference.ModelFile(p).graph["nodes"]]
    assert ops[:2] == ["conv2d", "maxpool2d"] and ops.count("shift_conv2d") == 8
    _agree(m, p, synthetic_images(3, 3, 24, 24, seed=3).numpy(), 1e-3)


def test_export_mlp_and_lstms(tmp_path):
    torch.manual_seed(0)
    mlp = ShiftMLP(16, [8], 4, bits=4, code="with_zero")
    randomize_batchnorm(mlp, seed=0, warmup=synthetic_images(16, 1, 4, 4, seed=1))
    pp = {"kind": "image", "channels": 1, "crop": [4, 4], "mean": [0.0], "std": [1.0]}
    p = tmp_path / "mlp.safetensors"
    export(mlp, p, name="mlp", task="image_classification", labels=list("abcd"), preprocess=pp,
           calib=[synthetic_images(16, 1, 4, 4, seed=2)], progress=False)
    _agree(mlp, p, synthetic_images(4, 1, 4, 4, seed=3).numpy(), 1e-3)

    x = torch.randn(2, 1, 12, 21).numpy()
    for model in (LSTMClassifier(12, 8, 5, output="mean"),
                  TTLSTMClassifier(12, 8, 5, [3, 4], [4, 8], [2, 4], [4, 8], ih_ranks=[2, 3, 2], hh_ranks=2)):
        randomize_linear(model.fc, std=1.0)
        p = tmp_path / "lstm.safetensors"
        export(model, p, name="lstm", task="audio_classification", labels=list("abcde"), preprocess=AUDIO,
               numeric_path="float", progress=False)
        assert reference.ModelFile(p).input_shape == [1, 12, 21]
        _agree(model.eval(), p, x, 1e-5)


def test_metadata_hash_and_validation(tmp_path):
    m = _tiny()
    p = tmp_path / "m.safetensors"
    set_quant_mode(m, "off")
    export(m, p, name="tiny-1", task="image_classification", labels=LABELS, preprocess=PP, numeric_path="float",
           progress=False, description="d")
    with safe_open(str(p), framework="numpy") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    assert meta["shiftserve.format_version"] == "1"
    assert json.loads(meta["shiftserve.labels"]) == LABELS
    assert json.loads(meta["shiftserve.preprocess"]) == PP
    assert meta["shiftserve.producer"].startswith("shiftserve_train ")
    # hash over raw bytes of tensors in ascending byte order of names
    import hashlib
    h = hashlib.sha256()
    for k in sorted(tensors, key=str.encode):
        h.update(tensors[k].tobytes())
    assert meta["shiftserve.tensor_sha256"] == h.hexdigest() == tensor_sha256(tensors)
    # tampering is detected
    tensors["fc.bias"] = tensors["fc.bias"] + 1
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(reference.FormatError, match="sha256"):
        reference.ModelFile(tmp_path / "bad.safetensors")

    with pytest.raises(ExportError):
        export(m, p, name="Bad Name", task="image_classification", labels=LABELS, preprocess=PP, progress=False)
    with pytest.raises(ExportError):
        export(m, p, name="x", task="image_classification", labels=LABELS[:3], preprocess=PP,
               numeric_path="float", progress=False)
    with pytest.raises(ExportError):
        export(m, p, name="x", task="spoken_intent", labels=LABELS, preprocess=PP, numeric_path="float",
               progress=False)
    m2 = _tiny()
    with pytest.raises(ExportError, match="calibrated"):
        export(m2, p, name="x", task="image_classification", labels=LABELS, preprocess=PP, progress=False)


def test_spoken_intent_metadata(tmp_path):
    from shiftserve_train.models import slu_resnet
    m = slu_resnet(widths=(4, 8), layers=(1, 1), num_classes=3)
    randomize_batchnorm(m, seed=0)
    intents = [{"action": "activate", "object": "lights", "location": "kitchen"},
               {"action": "deactivate", "object": "lights", "location": "none"},
               {"action": "bring", "object": "shoes", "location": "none"}]
    p = tmp_path / "slu.safetensors"
    export(m, p, name="slu", task="spoken_intent", labels=["a", "b", "c"], intents=intents, preprocess=AUDIO,
           calib=[torch.randn(4, 1, 12, 21)], progress=False)
    mf = reference.ModelFile(p)
    assert mf.intents == intents and mf.task == "spoken_intent"
    _agree(m, p, torch.randn(2, 1, 12, 21).numpy(), 1e-2)


def test_temperature_metadata(tmp_path):
    m = _tiny()
    p = tmp_path / "t.safetensors"
    export(m, p, name="t", task="image_classification", labels=LABELS, preprocess=PP, numeric_path="float",
           progress=False)
    assert reference.ModelFile(p).temperature is None
    export(m, p, name="t", task="image_classification", labels=LABELS, preprocess=PP, numeric_path="float",
           progress=False, temperature=1.375)
    mf = reference.ModelFile(p)
    assert mf.meta["shiftserve.temperature"] == "1.375" and mf.temperature == 1.375
    for bad in (0, -1.0, float("nan"), float("inf"), "1.2"):
        with pytest.raises(ExportError):
            export(m, p, name="t", task="image_classification", labels=LABELS, preprocess=PP,
                   numeric_path="float", progress=False, temperature=bad)


def test_set_temperature_changes_only_the_metadata(tmp_path):
    from shiftserve_train.export import set_temperature
    m = _tiny()
    p = tmp_path / "t.safetensors"
    export(m, p, name="t", task="image_classification", labels=LABELS, preprocess=PP, numeric_path="float",
           progress=False)
    before = reference.ModelFile(p)
    x = np.random.default_rng(0).standard_normal((2, *before.input_shape)).astype(np.float32)
    logits = reference.forward(before, x)
    set_temperature(p, 0.598)
    after = reference.ModelFile(p)
    assert after.temperature == 0.598 and after.meta["shiftserve.tensor_sha256"] == before.meta["shiftserve.tensor_sha256"]
    assert (8 + int.from_bytes(p.read_bytes()[:8], "little")) % 8 == 0
    np.testing.assert_array_equal(reference.forward(after, x), logits)
    set_temperature(p, None)
    assert reference.ModelFile(p).temperature is None
    for bad in (0, -2.0, float("nan")):
        with pytest.raises(ExportError):
            set_temperature(p, bad)


def test_custom_model_grouped_conv_avgpool(tmp_path):
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    from make_fixtures import MiscNet

    torch.manual_seed(0)
    m = MiscNet()
    randomize_batchnorm(m, seed=0, warmup=synthetic_images(16, 1, 12, 12, seed=1))
    pp = {"kind": "image", "channels": 1, "crop": [12, 12], "mean": [0.5], "std": [0.25]}
    p = tmp_path / "misc.safetensors"
    export(m, p, name="misc", task="image_classification", labels=list("abcde"), preprocess=pp,
           calib=[synthetic_images(16, 1, 12, 12, seed=2)], progress=False)
    nodes = {n["name"]: n for n in reference.ModelFile(p).graph["nodes"]}
    assert nodes["gconv"]["groups"] == 4 and nodes["pool2"]["op"] == "avgpool2d"
    _agree(m, p, synthetic_images(4, 1, 12, 12, seed=3).numpy(), 1e-3)
    set_quant_mode(m, "on")
    with pytest.warns(UserWarning, match="fake-quant"):
        export(m, p, name="misc", task="image_classification", labels=list("abcde"), preprocess=pp,
               numeric_path="float", progress=False)


def test_int32_accumulator_overflow_is_refused(tmp_path):
    from shiftserve_train.layers import ShiftLinear

    class Big(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = ShiftLinear(40000, 2, bias=True, bits=5, code="with_zero")
            self.fc = nn.Linear(2, 2)

        def forward(self, x):
            return self.fc(self.lin(torch.flatten(x, 1)))

        def export_graph(self, g, x):
            return g.linear("fc", self.fc, None, g.linear("lin", self.lin, None, g.flatten("f", x), True), False)

    m = Big()
    m.lin.weight.set_from_values(torch.full((2, 40000), 2 ** 14))
    pp = {"kind": "image", "channels": 1, "crop": [200, 200], "mean": [0.0], "std": [1.0]}
    with pytest.raises(ExportError, match="int32"):
        export(m, tmp_path / "big.safetensors", name="big", task="image_classification", labels=["a", "b"],
               preprocess=pp, calib=[torch.randn(2, 1, 200, 200)], progress=False)
    set_quant_mode(m, "off")
    export(m, tmp_path / "big.safetensors", name="big", task="image_classification", labels=["a", "b"],
           preprocess=pp, numeric_path="float", progress=False)


def test_reference_batch_chunking_is_invariant(tmp_path):
    m = _tiny(bits=3)
    p = tmp_path / "m.safetensors"
    export(m, p, name="tiny", task="image_classification", labels=LABELS, preprocess=PP,
           calib=[synthetic_images(8, 1, 16, 16, seed=20)], progress=False)
    x = synthetic_images(10, 1, 16, 16, seed=21).numpy()
    whole = reference.forward(p, x, batch_size=100)
    assert np.array_equal(whole, reference.forward(p, x, batch_size=3))
    assert np.array_equal(whole[4:5], reference.forward(p, x[4:5]))
    with pytest.raises(reference.FormatError, match="input shape"):
        reference.forward(p, x[:, :, :8])
