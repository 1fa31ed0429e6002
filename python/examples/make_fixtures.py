"""Regenerate every golden fixture in models/tests/fixtures (deterministic, seeded).

    python python/examples/make_fixtures.py [OUT_DIR]

Models (each ``<name>.safetensors`` + ``<name>.golden.safetensors`` with ``input`` and ``logits``
from :func:`shiftserve_train.reference.forward` over the exported file):

  tiny_w3         CIFAR-stem shift ResNet-8, W3 zero-free, int8 path   (tiny_export.py)
  tiny_w3_float   the same network, float path
  tiny_w2         CIFAR-stem shift ResNet-8, W2 zero-free, int8 path
  tiny_wz3_float  CIFAR-stem shift ResNet-8, 3-bit with-zero, float path
  tiny_fp32       full-precision twin (conv2d + add nodes)
  bottleneck_w4   ImageNet-stem (7x7/2 + maxpool) Bottleneck ResNet, W4, int8, RGB input
  slu_w3          SLU shift ResNet on log-mel [1, 40, 101], 31 intents, int8
  mlp_wz5         flatten + shift_linear (5-bit with-zero) + BN + fp32 linear, int8
  tt_lstm         MPS tensor-train LSTM (output last) on [1, 40, 51]
  dense_lstm      dense LSTM (output mean) on [1, 40, 51]
  misc_ops        grouped shift conv (groups 4), avgpool2d (with padding), relu, flatten,
                  shift_linear W4 with bias + BN, int8 path: a custom model's export_graph

Preprocessing:
  images/*.{png,jpg,bmp,gif,webp} and preprocess_images.safetensors (``<file>/<spec>`` tensors,
  specs in the metadata as ``spec/<spec>``)
  audio/*.wav and preprocess_audio.safetensors (``<file>/log_mel``; for files not at 16 kHz also
  ``<file>/samples``, the resampled mono waveform; spec in the metadata as ``spec``)
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import tiny_export  # noqa: E402

from shiftserve_train import features, reference  # noqa: E402
from shiftserve_train.export import export  # noqa: E402
from shiftserve_train.layers import ShiftConv2d, ShiftLinear  # noqa: E402
from shiftserve_train.models import LSTMClassifier, ResNet, ShiftMLP, TTLSTMClassifier, resnet_cifar, slu_resnet  # noqa: E402
from shiftserve_train.quant import set_quant_mode  # noqa: E402
from shiftserve_train.testing import (  # noqa: E402
    pick_robust_inputs,
    randomize_batchnorm,
    randomize_linear,
    replace_if_changed,
    synthetic_images,
)

AUDIO_SPEC = {"kind": "audio", "sample_rate": 16000, "seconds": 1.0, "features": "log_mel",
              "n_fft": 512, "win_length": 400, "hop_length": 160, "window": "hann", "center": True,
              "n_mels": 40, "f_min": 20.0, "f_max": 8000.0, "log_eps": 1e-6, "normalize": "utterance"}
SHORT_AUDIO_SPEC = dict(AUDIO_SPEC, seconds=0.5)
RGB_SPEC = {"kind": "image", "channels": 3, "resize": 36, "crop": [32, 32], "invert": False,
            "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}

ACTIONS = ["activate", "deactivate", "increase", "decrease", "change language", "bring"]


def slu_intents():
    """31 distinct (action, object, location) triples in the style of Fluent Speech Commands
    (i mod 6, i mod 9, i mod 4 are distinct for i < lcm = 36)."""
    objs = ["lights", "heat", "music", "volume", "lamp", "newspaper", "juice", "socks", "shoes"]
    locs = ["none", "kitchen", "bedroom", "washroom"]
    return [{"action": ACTIONS[i % 6], "object": objs[i % 9], "location": locs[i % 4]} for i in range(31)]


def synthetic_audio(n, seconds, sr=16000, seed=0):
    """Deterministic test signals: chirps + harmonics + noise, different per item."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    out = []
    for _ in range(n):
        f0 = rng.uniform(100, 400)
        f1 = rng.uniform(500, 3000)
        phase = 2 * np.pi * (f0 * t + (f1 - f0) * t ** 2 / (2 * seconds))
        x = 0.3 * np.sin(phase) + 0.1 * np.sin(2 * phase + 1.0)
        env = np.exp(-((t - rng.uniform(0.2, 0.8) * seconds) ** 2) / (2 * (0.15 * seconds) ** 2))
        x = x * env + 0.01 * rng.standard_normal(len(t))
        out.append(np.clip(x, -1, 1))
    return out


def audio_batch(n, spec, seed):
    sr = spec["sample_rate"]
    waves = synthetic_audio(n, spec["seconds"], sr, seed)
    return np.stack([features.log_mel(w, spec).float().numpy() for w in waves])


def save_st(out_dir, fname, tensors, metadata=None):
    tmp = out_dir / (fname + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    replace_if_changed(tmp, out_dir / fname)


def check(name, model, x, logits):
    with torch.no_grad():
        t = model(torch.from_numpy(x)).numpy()
    err = float(np.abs(t - logits).max() / max(1e-6, np.abs(logits).max()))
    top1 = bool((t.argmax(1) == logits.argmax(1)).all())
    print(f"{name:<16} logits {list(logits.shape)}  max rel |torch - ref| {err:.2e}  top-1 equal {top1}")
    if not top1 or err > 1e-3:
        raise SystemExit(f"{name}: PyTorch and reference disagree")


def export_and_golden(out_dir, name, model, x, *, task="image_classification", labels=None,
                      preprocess=None, numeric_path="int8", calib=None, intents=None, desc="", batch=None):
    """Export, then write the golden file.  With ``batch``, ``x`` are candidates and the ``batch``
    ones farthest from int8 rounding ties are kept (pick_robust_inputs)."""
    tmp = out_dir / f"{name}.safetensors.tmp"
    export(model, tmp, name=name, task=task, labels=labels, preprocess=preprocess, intents=intents,
           numeric_path=numeric_path, calib=calib, progress=False, description=desc)
    path = out_dir / f"{name}.safetensors"
    replace_if_changed(tmp, path)
    if batch is not None:
        x, margins = pick_robust_inputs(path, x, batch)
        print(f"{name:<16} quantisation margins (f32 ulps): {np.round(margins, 1).tolist()}")
    logits = reference.forward(path, x)
    save_st(out_dir, f"{name}.golden.safetensors", {"input": np.ascontiguousarray(x, dtype=np.float32),
                                                     "logits": logits})
    check(name, model, x, logits)


def models(out_dir):
    tiny_export.main(out_dir)
    labels10 = tiny_export.FMNIST_LABELS
    pp = tiny_export.PREPROCESS
    x = synthetic_images(32, 1, 28, 28, seed=7).numpy()  # candidates
    calib = [synthetic_images(16, 1, 28, 28, seed=100 + i) for i in range(4)]

    m = tiny_export.build()
    set_quant_mode(m, "off")
    export_and_golden(out_dir, "tiny_w3_float", m, x[:4], labels=labels10, preprocess=pp, numeric_path="float",
                      desc="tiny_w3 on the float path")

    m = tiny_export.build(seed=1, bits=2)
    export_and_golden(out_dir, "tiny_w2", m, x, labels=labels10, preprocess=pp, calib=calib,
                      desc="CIFAR-stem W2 shift ResNet-8, int8 path", batch=4)

    m = tiny_export.build(seed=2, bits=3, code="with_zero")
    export_and_golden(out_dir, "tiny_wz3_float", m, x[:4], labels=labels10, preprocess=pp, numeric_path="float",
                      desc="CIFAR-stem 3-bit with-zero shift ResNet-8, float path")

    torch.manual_seed(3)
    m = resnet_cifar(depth=8, width=8, in_ch=1, num_classes=10, shift=False)
    randomize_batchnorm(m, seed=3, warmup=synthetic_images(64, 1, 28, 28, seed=4))
    randomize_linear(m.fc, seed=3)
    export_and_golden(out_dir, "tiny_fp32", m, x[:4], labels=labels10, preprocess=pp, numeric_path="float",
                      desc="full-precision twin of tiny_w3")

    torch.manual_seed(4)
    m = ResNet("bottleneck", layers=(1, 2), widths=(4, 8), stem="imagenet", stem_width=8,
               in_channels=3, num_classes=5, bits=4)
    randomize_batchnorm(m, seed=4, warmup=synthetic_images(32, 3, 32, 32, seed=5))
    randomize_linear(m.fc, seed=4)
    xb = synthetic_images(32, 3, 32, 32, seed=8).numpy()
    export_and_golden(out_dir, "bottleneck_w4", m, xb, labels=["a", "b", "c", "d", "e"],
                      preprocess=RGB_SPEC, calib=[synthetic_images(8, 3, 32, 32, seed=200 + i) for i in range(4)],
                      desc="ImageNet-stem Bottleneck W4 shift ResNet, int8 path", batch=3)

    torch.manual_seed(5)
    m = slu_resnet(widths=(8, 16, 32), layers=(1, 1, 1), num_classes=31)
    xa = audio_batch(24, AUDIO_SPEC, seed=6)
    randomize_batchnorm(m, seed=5, warmup=torch.from_numpy(xa))
    randomize_linear(m.fc, seed=5)
    intents = slu_intents()
    labels = ["/".join([i["action"], i["object"], i["location"]]) for i in intents]
    export_and_golden(out_dir, "slu_w3", m, audio_batch(128, AUDIO_SPEC, seed=9), task="spoken_intent",
                      labels=labels, intents=intents, preprocess=AUDIO_SPEC,
                      calib=[torch.from_numpy(xa[i:i + 8]) for i in range(0, 24, 8)],
                      desc="SLU shift ResNet (W3) on log-mel, int8 path", batch=2)

    torch.manual_seed(6)
    m = ShiftMLP(64, [32, 16], 10, bits=5, code="with_zero")
    xm = synthetic_images(64, 1, 8, 8, seed=10)
    randomize_batchnorm(m, seed=6, warmup=xm)
    randomize_linear(m.fc, seed=6)
    pp8 = {"kind": "image", "channels": 1, "crop": [8, 8], "invert": True, "mean": [0.5], "std": [0.5]}
    export_and_golden(out_dir, "mlp_wz5", m, synthetic_images(4, 1, 8, 8, seed=11).numpy(),
                      labels=[str(i) for i in range(10)], preprocess=pp8, calib=[xm[:32], xm[32:]],
                      desc="flatten + 5-bit with-zero shift_linear MLP, int8 path")

    digits = [str(i) for i in range(10)]
    xl = audio_batch(2, SHORT_AUDIO_SPEC, seed=12)
    torch.manual_seed(7)
    m = TTLSTMClassifier(40, 16, 10, ih_in_modes=[5, 8], ih_out_modes=[8, 8], hh_in_modes=[4, 4],
                         hh_out_modes=[8, 8], ih_ranks=[3, 4, 3], hh_ranks=[2, 3, 2], output="last")
    randomize_linear(m.fc, seed=7, std=1.0)
    export_and_golden(out_dir, "tt_lstm", m.eval(), xl, task="audio_classification", labels=digits,
                      preprocess=SHORT_AUDIO_SPEC, numeric_path="float",
                      desc="MPS tensor-train LSTM (H=16), output last")

    torch.manual_seed(8)
    m = LSTMClassifier(40, 16, 10, output="mean")
    randomize_linear(m.fc, seed=8, std=1.0)
    export_and_golden(out_dir, "dense_lstm", m.eval(), xl, task="audio_classification", labels=digits,
                      preprocess=SHORT_AUDIO_SPEC, numeric_path="float",
                      desc="dense LSTM (H=16), output mean")


class MiscNet(torch.nn.Module):
    """Ops the ResNets do not produce, written as a user's custom model would be: a forward
    for PyTorch and an ``export_graph`` describing the same computation."""

    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.stem = nn.Conv2d(1, 8, 3, 1, 1, bias=True)
        self.stem_bn = nn.BatchNorm2d(8)
        self.gconv = ShiftConv2d(8, 8, 3, stride=1, padding=1, groups=4, bits=3)
        self.gbn = nn.BatchNorm2d(8)
        self.pool = nn.AvgPool2d(2, 2)
        self.pool2 = nn.AvgPool2d(3, 2, padding=1)
        self.fc1 = ShiftLinear(8 * 3 * 3, 16, bias=True, bits=4)
        self.bn1 = nn.BatchNorm1d(16)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        F = torch.nn.functional
        x = F.relu(self.stem_bn(self.stem(x)))
        x = F.relu(self.gbn(self.gconv(x)))
        x = F.relu(self.pool2(self.pool(x)))
        x = F.relu(self.bn1(self.fc1(torch.flatten(x, 1))))
        return self.fc(x)

    def export_graph(self, g, x):
        x = g.conv("stem", self.stem, self.stem_bn, x, relu=True)
        x = g.conv("gconv", self.gconv, self.gbn, x, relu=True)
        x = g.avgpool("pool", x, self.pool)
        x = g.avgpool("pool2", x, self.pool2)
        x = g.relu("relu", x)
        x = g.flatten("flatten", x)
        x = g.linear("fc1", self.fc1, self.bn1, x, relu=True)
        return g.linear("fc", self.fc, None, x, relu=False)


def misc(out_dir):
    torch.manual_seed(9)
    m = MiscNet()
    with torch.no_grad():
        m.fc1.bias.normal_()
        m.stem.bias.normal_()
    randomize_batchnorm(m, seed=9, warmup=synthetic_images(32, 1, 12, 12, seed=13))
    randomize_linear(m.fc, seed=9, std=1.0)
    pp = {"kind": "image", "channels": 1, "resize": 12, "crop": [12, 12], "invert": False,
          "mean": [0.5], "std": [0.25]}
    export_and_golden(out_dir, "misc_ops", m, synthetic_images(32, 1, 12, 12, seed=14).numpy(),
                      labels=list("abcde"), preprocess=pp,
                      calib=[synthetic_images(16, 1, 12, 12, seed=15 + i) for i in range(2)],
                      desc="grouped shift conv, avgpool2d, relu, flatten, shift_linear W4", batch=4)


# ----------------------------------------------------------------------------------------------
# preprocessing fixtures


def synthetic_rgba(h, w, seed):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    r = 255 * xx / max(1, w - 1)
    g = 255 * yy / max(1, h - 1)
    b = 128 + 100 * np.sin(xx / 3.0 + yy / 5.0)
    img = np.stack([r, g, b], -1)
    for _ in range(3):
        y0, x0 = rng.integers(0, h - 3), rng.integers(0, w - 3)
        img[y0:y0 + rng.integers(2, h // 2), x0:x0 + rng.integers(2, w // 2)] = rng.integers(0, 256, 3)
    img += rng.normal(0, 8, img.shape)
    alpha = np.clip(255 * (0.3 + 0.7 * xx / max(1, w - 1)), 0, 255)
    return np.clip(np.round(np.concatenate([img, alpha[..., None]], -1)), 0, 255).astype(np.uint8)


IMAGE_SPECS = {
    "gray_r32_c28": {"kind": "image", "channels": 1, "resize": 32, "crop": [28, 28], "invert": False,
                     "mean": [0.2860], "std": [0.3530]},
    "gray_inv_c28": {"kind": "image", "channels": 1, "crop": [28, 28], "invert": True,
                     "mean": [0.5], "std": [0.25]},
    "rgb_r36_c32": RGB_SPEC,
    "rgb_r16_c24": {"kind": "image", "channels": 3, "resize": 16, "crop": [24, 20], "invert": False,
                    "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.25, 0.125]},
}


def images(out_dir):
    from PIL import Image

    d = out_dir / "images"
    d.mkdir(exist_ok=True)
    files = {}
    a = synthetic_rgba(45, 60, seed=1)
    Image.fromarray(a[..., :3], "RGB").save(d / "rgb_60x45.png")
    Image.fromarray(a, "RGBA").save(d / "rgba_60x45.png")
    b = synthetic_rgba(40, 33, seed=2)
    Image.fromarray(b[..., :3], "RGB").convert("L").save(d / "gray_33x40.png")
    Image.fromarray(b[..., :3], "RGB").save(d / "rgb_33x40.jpg", quality=92)
    Image.fromarray(b[..., :3], "RGB").convert("L").save(d / "gray_33x40.jpg", quality=92)
    c = synthetic_rgba(20, 17, seed=3)
    Image.fromarray(c[..., :3], "RGB").save(d / "rgb_17x20.bmp")
    f1 = Image.fromarray(a[..., :3], "RGB").quantize(colors=32, dither=Image.Dither.NONE)
    f2 = Image.fromarray(255 - a[..., :3], "RGB").quantize(colors=32, dither=Image.Dither.NONE)
    f1.save(d / "anim_60x45.gif", save_all=True, append_images=[f2], duration=100, loop=0)
    Image.fromarray(b, "RGBA").save(d / "rgba_33x40.webp", lossless=True)
    for p in sorted(d.iterdir()):
        p.chmod(0o644)
        for sname, spec in IMAGE_SPECS.items():
            files[f"{p.name}/{sname}"] = features.image_features(p, spec)
    meta = {f"spec/{k}": json.dumps(v) for k, v in IMAGE_SPECS.items()}
    meta["note"] = ("JPEG: decoders differ in IDCT/chroma upsampling; compare JPEG entries with a "
                    "looser tolerance (a few /255 after normalisation) than the lossless formats")
    save_st(out_dir, "preprocess_images.safetensors", files, meta)


def audio(out_dir):
    d = out_dir / "audio"
    d.mkdir(exist_ok=True)

    def signal(seconds, sr, channels=1, seed=0):
        w = synthetic_audio(channels, seconds, sr, seed)
        return np.stack(w, 1) if channels > 1 else w[0]

    cases = [
        ("pcm16_16k_mono.wav", signal(1.0, 16000, seed=1), 16000, "pcm16"),
        ("pcm8_16k_mono.wav", signal(1.0, 16000, seed=2), 16000, "pcm8"),
        ("pcm24_16k_mono_short.wav", signal(0.7, 16000, seed=3), 16000, "pcm24"),
        ("float32_16k_mono_long.wav", signal(1.3, 16000, seed=4), 16000, "float32"),
        ("pcm32_16k_stereo.wav", signal(1.0, 16000, 2, seed=5), 16000, "pcm32"),
        ("pcm16_44k1_stereo.wav", signal(1.0, 44100, 2, seed=6), 44100, "pcm16"),
        ("float64_8k_mono.wav", signal(1.0, 8000, seed=7), 8000, "float64"),
    ]
    out = {}
    for fname, x, sr, kind in cases:
        p = d / fname
        features.write_wav(p, x, sr, kind)
        p.chmod(0o644)
        wave, rate = features.read_wav(p)
        wave = features.fit_length(features.resample(wave, rate, AUDIO_SPEC["sample_rate"]),
                                   int(AUDIO_SPEC["seconds"] * AUDIO_SPEC["sample_rate"]))
        if rate != AUDIO_SPEC["sample_rate"]:
            out[f"{fname}/samples"] = wave.astype(np.float32)
        out[f"{fname}/log_mel"] = features.audio_features(p, AUDIO_SPEC)
        np.testing.assert_allclose(out[f"{fname}/log_mel"], features.log_mel(wave, AUDIO_SPEC).float().numpy())
    meta = {"spec": json.dumps(AUDIO_SPEC),
            "note": ("samples (only for files not at 16 kHz) = decoded, channel-averaged, resampled "
                     "(Hann-windowed sinc) and padded/cut waveform; other resamplers agree only to ~1e-3")}
    save_st(out_dir, "preprocess_audio.safetensors", out, meta)


def main(out_dir):
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.use_deterministic_algorithms(True)
    models(out_dir)
    misc(out_dir)
    images(out_dir)
    audio(out_dir)
    total = sum(p.stat().st_size for p in out_dir.rglob("*") if p.is_file())
    print(f"fixtures written to {out_dir} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else HERE.parents[1] / "models/tests/fixtures")
