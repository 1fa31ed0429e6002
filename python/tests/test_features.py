import io

import numpy as np
import pytest
import torch

from shiftserve_train import features

SPEC = {"kind": "audio", "sample_rate": 16000, "seconds": 0.25, "features": "log_mel", "n_fft": 512,
        "win_length": 400, "hop_length": 160, "window": "hann", "center": True, "n_mels": 40,
        "f_min": 20.0, "f_max": 8000.0, "log_eps": 1e-6, "normalize": "utterance"}


def direct_log_mel(x, spec):
    """Independent numpy computation: reflect pad, framed rfft, triangle filters in a loop."""
    n_fft, win, hop, sr = spec["n_fft"], spec["win_length"], spec["hop_length"], spec["sample_rate"]
    xp = np.pad(x, n_fft // 2, mode="reflect")
    w = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)  # periodic Hann
    wpad = np.zeros(n_fft)
    off = (n_fft - win) // 2
    wpad[off:off + win] = w
    frames = 1 + (len(xp) - n_fft) // hop
    spec_p = np.stack([np.abs(np.fft.rfft(xp[t * hop:t * hop + n_fft] * wpad)) ** 2 for t in range(frames)], 1)
    freqs = np.arange(n_fft // 2 + 1) * (sr / 2) / (n_fft // 2)
    mel = lambda f: 2595 * np.log10(1 + f / 700)  # noqa: E731
    imel = lambda m: 700 * (10 ** (m / 2595) - 1)  # noqa: E731
    pts = imel(np.linspace(mel(spec["f_min"]), mel(spec["f_max"]), spec["n_mels"] + 2))
    fb = np.zeros((spec["n_mels"], len(freqs)))
    for m in range(spec["n_mels"]):
        lo, c, hi = pts[m], pts[m + 1], pts[m + 2]
        for k, f in enumerate(freqs):
            if lo < f < hi:
                fb[m, k] = (f - lo) / (c - lo) if f <= c else (hi - f) / (hi - c)
    out = np.log(fb @ spec_p + spec["log_eps"])
    return (out - out.mean()) / (out.std() + 1e-5)


def test_log_mel_matches_direct_numpy():
    rng = np.random.default_rng(0)
    t = np.arange(4000) / 16000
    x = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(4000)
    got = features.log_mel(x, SPEC).numpy()
    assert got.shape == (1, 40, 1 + 4000 // 160)
    np.testing.assert_allclose(got[0], direct_log_mel(x, SPEC), rtol=1e-9, atol=1e-9)
    # the batched f32 training module agrees
    lm = features.LogMel(SPEC)(torch.from_numpy(np.stack([x, x])).float())
    np.testing.assert_allclose(lm[1, 0].numpy(), got[0], atol=2e-4)


def test_no_normalize_is_plain_log():
    spec = dict(SPEC, normalize="none")
    x = np.zeros(4000)
    out = features.log_mel(x, spec).numpy()
    np.testing.assert_allclose(out, np.log(1e-6))


@pytest.mark.parametrize("kind,tol", [("pcm8", 1 / 128), ("pcm16", 1 / 32768), ("pcm24", 2 ** -23),
                                      ("pcm32", 2 ** -31), ("float32", 1e-7), ("float64", 0)])
def test_wav_round_trip(tmp_path, kind, tol):
    rng = np.random.default_rng(1)
    x = rng.uniform(-0.9, 0.9, size=(301, 2))
    p = tmp_path / "a.wav"
    features.write_wav(p, x, 22050, kind)
    y, sr = features.read_wav(p)
    assert sr == 22050 and y.shape == (301,)
    np.testing.assert_allclose(y, x.mean(1), atol=tol + 1e-12)
    y2, _ = features.read_wav(p.read_bytes())
    assert np.array_equal(y, y2)


def test_wav_errors():
    with pytest.raises(features.WavError):
        features.read_wav(b"RIFF\x00\x00\x00\x00WAVX")
    with pytest.raises(features.WavError):
        features.read_wav(b"RIFF\x04\x00\x00\x00WAVE")


def test_resample_preserves_a_tone():
    t = np.arange(22050) / 22050
    y = features.resample(np.sin(2 * np.pi * 1000 * t), 22050, 16000)
    assert len(y) == 16000
    ref = np.sin(2 * np.pi * 1000 * np.arange(16000) / 16000)
    assert np.abs(y - ref)[300:-300].max() < 1e-3
    assert np.array_equal(features.resample(t, 8000, 8000), t)
    assert len(features.fit_length(t, 100)) == 100 and len(features.fit_length(t[:10], 20)) == 20


def _png(arr, mode):
    from PIL import Image
    b = io.BytesIO()
    Image.fromarray(arr, mode).save(b, format="PNG")
    return b.getvalue()


def test_image_luma_alpha_normalize_without_resize():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, size=(6, 5, 4), dtype=np.uint8)
    spec = {"kind": "image", "channels": 1, "crop": [6, 5], "invert": True, "mean": [0.1], "std": [0.2]}
    got = features.image_features(_png(a, "RGBA"), spec)
    f = a.astype(np.float64)
    rgb = f[..., :3] * f[..., 3:] / 255
    luma = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    np.testing.assert_allclose(got[0], ((1 - luma / 255) - 0.1) / 0.2, rtol=1e-6, atol=1e-6)
    spec3 = {"kind": "image", "channels": 3, "crop": [6, 5], "mean": [0, 0, 0], "std": [1, 1, 1]}
    np.testing.assert_allclose(features.image_features(_png(a[..., :3].copy(), "RGB"), spec3),
                               a[..., :3].transpose(2, 0, 1) / 255, atol=1e-7)


def test_image_resize_shorter_side_and_crop():
    a = np.tile(np.arange(40, dtype=np.uint8)[None, :] * 6, (20, 1))  # 20 x 40 gradient
    spec = {"kind": "image", "channels": 1, "resize": 10, "crop": [10, 8], "mean": [0], "std": [1]}
    got = features.image_features(_png(a, "L"), spec)
    t = torch.from_numpy(a.astype(np.float64))[None, None]
    r = torch.nn.functional.interpolate(t, size=(10, 20), mode="bilinear", antialias=True, align_corners=False)
    np.testing.assert_allclose(got[0], r[0, 0, :, 6:14].numpy() / 255, atol=1e-6)


def test_center_crop_pads_with_zeros():
    img = np.ones((1, 3, 4))
    out = features.center_crop(img, 6, 7)
    assert out.shape == (1, 6, 7)
    assert out.sum() == 12 and out[0, 1:4, 1:5].sum() == 12
    out = features.center_crop(np.arange(25.0).reshape(1, 5, 5), 2, 3)
    assert out[0].tolist() == [[6, 7, 8], [11, 12, 13]]
