import io
from pathlib import Path

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


# ----------------------------------------------------------------------------------------------
# pictures of one object: background "auto" + frame


def _gray_rgba(a):
    a = np.asarray(a, dtype=np.float64)
    return np.stack([a, a, a, np.full_like(a, 255.0)], axis=-1)


def test_light_background_is_inverted_and_levelled():
    img = np.full((6, 7), 235.0)
    img[2:4, 2:5] = 35.0  # dark object on off-white
    z = features.normalize_background(_gray_rgba(img))
    assert z[0, 0] == 0.0 and z[1, 3] == 0.0
    # inverted: 255 - 35 = 220, background 20 -> (220 - 20) * 255 / 235
    np.testing.assert_allclose(z[2:4, 2:5], 200 * 255 / 235)
    # a dark-background picture keeps its polarity; the level is still removed
    z2 = features.normalize_background(_gray_rgba(255 - img))
    np.testing.assert_array_equal(z2, z)


def test_lower_median_of_the_ring_decides_the_polarity():
    img = np.zeros((5, 5))
    img[0, :] = 255  # 5 of 16 ring pixels light: the background is still dark
    z = features.normalize_background(_gray_rgba(img))
    np.testing.assert_array_equal(z, img)
    img[:, 0] = img[:, 4] = 255  # 13 of 16: light background, inverted
    z = features.normalize_background(_gray_rgba(img))
    assert z[0].sum() == 0 and z[2, 2] == 255


def test_alpha_is_composited_over_the_pictures_own_background():
    rgba = np.zeros((6, 6, 4))
    rgba[..., :3] = 240.0  # opaque off-white border
    rgba[..., 3] = 255.0
    rgba[2:4, 2:4, :3] = 40.0
    rgba[2:4, 2:4, 3] = 127.5  # half-transparent object: 40 / 2 + 240 / 2 = 140
    z = features.normalize_background(rgba)
    np.testing.assert_allclose(z[2, 2], (255 - 140 - 15) * 255 / 240)
    assert z[0, 0] == 0
    # a cut-out with a transparent border: a dark object goes over white, a light one over black
    cut = np.zeros((6, 6, 4))
    cut[2:4, 2:4] = (30.0, 30.0, 30.0, 255.0)
    z = features.normalize_background(cut)
    assert z[0, 0] == 0 and z[2, 2] == 225
    cut[2:4, 2:4, :3] = 220.0
    z = features.normalize_background(cut)
    assert z[0, 0] == 0 and z[2, 2] == 220


def test_object_box_and_fit_size():
    z = np.zeros((300, 200))
    z[50:150, 20:60] = 100.0
    z[299, 199] = 255.0  # one stray pixel: fewer than ceil(200 / 100) = 2 in its row
    assert features.object_box(z, 24) == (50, 20, 100, 40)
    assert features.object_box(np.zeros((4, 4)), 24) == (0, 0, 4, 4)
    assert features.fit_size(100, 40, 28) == (28, 11)  # 11.2 -> 11
    assert features.fit_size(40, 100, 28) == (11, 28)
    assert features.fit_size(56, 30, 28) == (28, 15)  # 15.0
    assert features.fit_size(8, 3, 28) == (28, 11)  # 10.5 rounds up
    assert features.fit_size(1000, 1, 28) == (28, 1)


def test_frame_centres_the_box_on_the_canvas():
    z = np.zeros((40, 60))
    z[10:30, 5:15] = 200.0  # 20 x 10 box
    out = features.frame_object(z, 10, 24.0, 12, 14)
    assert out.shape == (12, 14)
    # resized to 10 x 5 (block averages of a constant), at ((12 - 10) // 2, (14 - 5) // 2)
    np.testing.assert_allclose(out[1:11, 4:9], 200.0)
    assert out.sum() == pytest.approx(200.0 * 50)


def test_object_spec_checks():
    from shiftserve_train.export import ExportError, validate_preprocess

    ok = {"kind": "image", "channels": 1, "crop": [28, 28], "mean": [0.3], "std": [0.3],
          "background": "auto", "frame": {"fit": 28, "threshold": 24}}
    validate_preprocess(ok)
    for bad in (dict(ok, channels=3, mean=[0, 0, 0], std=[1, 1, 1]), dict(ok, invert=True),
                dict(ok, resize=32), dict(ok, frame={"fit": 29, "threshold": 24}),
                dict(ok, background="white"), dict(ok, frame={"fit": 28, "threshold": 255}),
                {k: v for k, v in ok.items() if k != "background"}):
        with pytest.raises(ExportError):
            validate_preprocess(bad)


FRAME_FIX = Path(__file__).resolve().parents[2] / "models/tests/fixtures/frame"
FRAME28 = {"kind": "image", "channels": 1, "crop": [28, 28], "mean": [0.2860], "std": [0.3530],
           "background": "auto", "frame": {"fit": 28, "threshold": 24}}


def _corr(a, b):
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_garment_pictures_reach_the_network_like_the_dataset_image():
    """Issue 11's cases: the dataset image as it is and inverted give the same input; an
    off-white (235) and a grey product photo, a transparent cut-out and an EXIF-6 phone JPEG give
    the same framed garment (only its contrast differs)."""
    feats = {p.name: features.image_features(p, FRAME28) for p in FRAME_FIX.iterdir()}
    base = feats["tshirt_dataset.png"]
    assert np.array_equal(feats["tshirt_inverted.png"], base)
    for name in ("tshirt_offwhite235.png", "tshirt_grey200.png", "tshirt_transparent.png",
                 "tshirt_exif6.jpg", "tshirt_exif6_upright.png"):
        assert _corr(feats[name], base) > 0.95, name
    # the front end of before (alpha over black, fixed inversion, no framing) is far from it
    plain = {"kind": "image", "channels": 1, "resize": 28, "crop": [28, 28], "invert": True,
             "mean": [0.2860], "std": [0.3530]}
    for name in ("tshirt_offwhite235.png", "tshirt_transparent.png", "tshirt_dataset.png"):
        assert _corr(features.image_features(FRAME_FIX / name, plain), base) < 0.8, name


def test_exif_orientation_is_applied():
    rgba = features.decode_image(FRAME_FIX / "tshirt_exif6.jpg")
    assert rgba.shape[:2] == (200, 160)  # stored 160 high, 200 wide
    upright = features.decode_image(FRAME_FIX / "tshirt_exif6_upright.png")
    assert np.abs(rgba - upright).mean() < 3.0


def test_frame_fixtures_reproduce(tmp_path):
    import sys

    from safetensors import safe_open
    from safetensors.numpy import load_file

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import make_frame_fixtures as mf

    pics = mf.pictures()
    for name, data in pics.items():
        assert (FRAME_FIX / name).read_bytes() == data, name
    tensors, meta = mf.reference(pics)
    ref = load_file(str(FRAME_FIX.parent / "preprocess_frame.safetensors"))
    assert ref.keys() == tensors.keys()
    assert all(np.array_equal(ref[k], tensors[k]) for k in ref)
    with safe_open(str(FRAME_FIX.parent / "preprocess_frame.safetensors"), "numpy") as f:
        assert f.metadata() == meta
