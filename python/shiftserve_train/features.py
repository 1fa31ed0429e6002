"""Preprocessing exactly as declared in a model file (docs/format.md, "Preprocessing").

Audio: :func:`read_wav` (RIFF/WAVE: PCM 8/16/24/32-bit, IEEE float 32/64, WAVE_FORMAT_EXTENSIBLE;
any channel count, averaged to mono, scaled to [-1, 1]) -> :func:`resample` -> :func:`fit_length`
-> :func:`log_mel` (``torch.stft``, HTK mel filterbank without area normalisation, ``ln(mel + eps)``,
per-utterance normalisation).  :func:`audio_features` runs the whole chain for one file;
:class:`LogMel` is the batched ``nn.Module`` for training.

Image: :func:`image_features` (PIL decode, first frame, EXIF orientation, alpha over black, luma
or RGB, antialiased bilinear resize of the shorter side, center crop / zero pad, ``x/255``, invert,
normalise; or, with ``background: "auto"``, :func:`normalize_background` (alpha over the picture's
own background, polarity and level from its border) and :func:`frame_object` (the object's
bounding box resized to ``fit`` and centred, as Fashion-MNIST frames its garments)).

The reference functions compute in float64 and return float32, so they are at least as accurate
as any f32 implementation.  Choices where docs/format.md leaves room (documented in README):

* utterance normalisation uses the population standard deviation (ddof = 0):
  ``(x - mean) / (std + 1e-5)``;
* resize keeps the aspect ratio with the long side ``int(resize * long / short)`` (truncation,
  as torchvision); the crop offset is ``(size - crop) // 2`` when cropping and the zero padding
  before the image is ``(crop - size) // 2`` when the crop is larger;
* luma and alpha compositing are done in floating point (no rounding to 8 bits);
* resampling is a windowed-sinc (Hann, 16 zero crossings, cutoff 0.97 * min Nyquist) band-limited
  interpolator; other resamplers (e.g. rubato in Rust) agree only to about 1e-3 relative.
"""

from __future__ import annotations

import io
import math
import struct
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# ----------------------------------------------------------------------------------------------
# WAV

WAVE_FORMAT_PCM = 0x0001
WAVE_FORMAT_IEEE_FLOAT = 0x0003
WAVE_FORMAT_EXTENSIBLE = 0xFFFE


class WavError(ValueError):
    pass


def read_wav(src) -> tuple[np.ndarray, int]:
    """Decode a WAV file (path or bytes) -> (mono float64 samples in [-1, 1], sample rate)."""
    data = Path(src).read_bytes() if isinstance(src, (str, Path)) else bytes(src)
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise WavError("not a RIFF/WAVE file")
    pos = 12
    fmt = None
    pcm = None
    while pos + 8 <= len(data):
        cid = data[pos:pos + 4]
        size = struct.unpack_from("<I", data, pos + 4)[0]
        body = data[pos + 8:pos + 8 + size]
        if cid == b"fmt ":
            if len(body) < 16:
                raise WavError("fmt chunk too short")
            tag, channels, rate, _, block_align, bits = struct.unpack_from("<HHIIHH", body)
            if tag == WAVE_FORMAT_EXTENSIBLE:
                if len(body) < 40:
                    raise WavError("extensible fmt chunk too short")
                tag = struct.unpack_from("<H", body, 24)[0]
            fmt = (tag, channels, rate, block_align, bits)
        elif cid == b"data":
            pcm = body
        pos += 8 + size + (size & 1)
    if fmt is None or pcm is None:
        raise WavError("missing fmt or data chunk")
    tag, channels, rate, block_align, bits = fmt
    if channels == 0 or rate == 0:
        raise WavError("zero channels or sample rate")
    if tag == WAVE_FORMAT_PCM:
        if bits not in (8, 16, 24, 32):
            raise WavError(f"unsupported PCM bit depth {bits}")
    elif tag == WAVE_FORMAT_IEEE_FLOAT:
        if bits not in (32, 64):
            raise WavError(f"unsupported float bit depth {bits}")
    else:
        raise WavError(f"unsupported WAV format tag {tag:#x}")
    width = bits // 8
    if block_align != width * channels:
        raise WavError("block_align does not match channels * bits")
    n = len(pcm) // block_align
    raw = pcm[:n * block_align]
    if tag == WAVE_FORMAT_IEEE_FLOAT:
        x = np.frombuffer(raw, dtype="<f4" if bits == 32 else "<f8").astype(np.float64)
    elif bits == 8:
        x = (np.frombuffer(raw, dtype=np.uint8).astype(np.float64) - 128.0) / 128.0
    elif bits == 16:
        x = np.frombuffer(raw, dtype="<i2").astype(np.float64) / 32768.0
    elif bits == 24:
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        v = np.where(v >= 1 << 23, v - (1 << 24), v)
        x = v.astype(np.float64) / 8388608.0
    else:
        x = np.frombuffer(raw, dtype="<i4").astype(np.float64) / 2147483648.0
    x = x.reshape(n, channels).mean(axis=1)
    return x, int(rate)


def write_wav(path, samples: np.ndarray, rate: int, kind: str = "pcm16") -> None:
    """Write ``samples`` ([n] or [n, channels], floats in [-1, 1]) as ``kind`` in
    {pcm8, pcm16, pcm24, pcm32, float32, float64}."""
    s = np.asarray(samples, dtype=np.float64)
    if s.ndim == 1:
        s = s[:, None]
    channels = s.shape[1]
    s = np.clip(s, -1.0, 1.0)
    if kind == "pcm8":
        raw = np.clip(np.round(s * 128.0 + 128.0), 0, 255).astype(np.uint8).tobytes()
        tag, bits = WAVE_FORMAT_PCM, 8
    elif kind == "pcm16":
        raw = np.clip(np.round(s * 32768.0), -32768, 32767).astype("<i2").tobytes()
        tag, bits = WAVE_FORMAT_PCM, 16
    elif kind == "pcm24":
        v = np.clip(np.round(s * 8388608.0), -8388608, 8388607).astype(np.int64).reshape(-1)
        v = np.where(v < 0, v + (1 << 24), v).astype(np.uint32)
        raw = np.stack([v & 255, (v >> 8) & 255, (v >> 16) & 255], 1).astype(np.uint8).tobytes()
        tag, bits = WAVE_FORMAT_PCM, 24
    elif kind == "pcm32":
        raw = np.clip(np.round(s * 2147483648.0), -2147483648, 2147483647).astype("<i4").tobytes()
        tag, bits = WAVE_FORMAT_PCM, 32
    elif kind == "float32":
        raw = s.astype("<f4").tobytes()
        tag, bits = WAVE_FORMAT_IEEE_FLOAT, 32
    elif kind == "float64":
        raw = s.astype("<f8").tobytes()
        tag, bits = WAVE_FORMAT_IEEE_FLOAT, 64
    else:
        raise ValueError(f"unknown WAV kind {kind}")
    align = channels * bits // 8
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * align, align, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(raw)) + raw
    if len(raw) & 1:
        body += b"\x00"
    Path(path).write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


def resample(x: np.ndarray, orig: int, new: int, zero_crossings: int = 16, rolloff: float = 0.97) -> np.ndarray:
    """Band-limited (Hann-windowed sinc) resampling, float64.  Output length ceil(n * new / orig)."""
    if orig == new:
        return np.asarray(x, dtype=np.float64)
    g = math.gcd(orig, new)
    up, down = new // g, orig // g
    x = np.asarray(x, dtype=np.float64)
    n_out = -(-len(x) * up // down)
    cutoff = rolloff * min(1.0, up / down)  # relative to the input Nyquist
    half = zero_crossings / cutoff  # half window width in input samples
    t = np.arange(n_out) * (down / up)  # output times in input-sample units
    out = np.zeros(n_out)
    k0 = np.floor(t - half).astype(np.int64) + 1
    width = int(math.ceil(2 * half)) + 1
    for j in range(width):
        k = k0 + j
        d = t - k
        valid = (k >= 0) & (k < len(x)) & (np.abs(d) < half)
        w = cutoff * np.sinc(cutoff * d) * np.where(valid, 0.5 + 0.5 * np.cos(np.pi * d / half), 0.0)
        out += np.where(valid, x[np.clip(k, 0, len(x) - 1)] * w, 0.0)
    return out


def fit_length(x: np.ndarray, n: int) -> np.ndarray:
    """Pad with zeros or cut at the end to exactly ``n`` samples."""
    if len(x) >= n:
        return x[:n]
    return np.concatenate([x, np.zeros(n - len(x), dtype=x.dtype)])


# ----------------------------------------------------------------------------------------------
# log-mel


def hz_to_mel_htk(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def mel_to_hz_htk(m):
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(n_freqs: int, f_min: float, f_max: float, n_mels: int, sample_rate: int) -> np.ndarray:
    """``[n_freqs, n_mels]`` triangular HTK-mel filters without area normalisation (the same
    construction as torchaudio's ``melscale_fbanks(norm=None, mel_scale="htk")``), float64."""
    all_freqs = np.linspace(0.0, sample_rate // 2, n_freqs)
    m_pts = np.linspace(hz_to_mel_htk(f_min), hz_to_mel_htk(f_max), n_mels + 2)
    f_pts = mel_to_hz_htk(m_pts)
    f_diff = f_pts[1:] - f_pts[:-1]
    slopes = f_pts[None, :] - all_freqs[:, None]
    down = -slopes[:, :-2] / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    return np.maximum(0.0, np.minimum(down, up))


def _spec_int(spec, key):
    return int(spec[key])


def log_mel(wave, spec: dict, dtype=torch.float64) -> torch.Tensor:
    """``wave [samples]`` or ``[B, samples]`` -> ``[1, n_mels, frames]`` / ``[B, 1, n_mels, frames]``."""
    w = torch.as_tensor(np.asarray(wave) if not torch.is_tensor(wave) else wave).to(dtype)
    single = w.dim() == 1
    if single:
        w = w[None]
    n_fft, win, hop = _spec_int(spec, "n_fft"), _spec_int(spec, "win_length"), _spec_int(spec, "hop_length")
    if spec.get("window", "hann") != "hann":
        raise ValueError("only the hann window is defined")
    window = torch.hann_window(win, periodic=True, dtype=dtype)
    st = torch.stft(w, n_fft=n_fft, hop_length=hop, win_length=win, window=window,
                    center=bool(spec.get("center", True)), pad_mode="reflect", normalized=False,
                    onesided=True, return_complex=True)
    power = st.real ** 2 + st.imag ** 2  # [B, n_freqs, frames]
    fb = torch.from_numpy(mel_filterbank(n_fft // 2 + 1, float(spec["f_min"]), float(spec["f_max"]),
                                         _spec_int(spec, "n_mels"), _spec_int(spec, "sample_rate"))).to(dtype)
    mel = torch.einsum("bft,fm->bmt", power, fb)
    out = torch.log(mel + float(spec["log_eps"]))
    norm = spec.get("normalize", "none")
    if norm == "utterance":
        mean = out.mean(dim=(1, 2), keepdim=True)
        std = out.std(dim=(1, 2), keepdim=True, unbiased=False)
        out = (out - mean) / (std + 1e-5)
    elif norm not in ("none", None):
        raise ValueError(f"unknown normalize {norm!r}")
    out = out[:, None]
    return out[0] if single else out


def audio_features(src, spec: dict) -> np.ndarray:
    """WAV (path or bytes) -> ``[1, n_mels, frames]`` float32, per the model's preprocess spec."""
    x, rate = read_wav(src)
    sr = _spec_int(spec, "sample_rate")
    x = resample(x, rate, sr)
    x = fit_length(x, int(round(float(spec["seconds"]) * sr)))
    return log_mel(x, spec).float().numpy()


class LogMel(nn.Module):
    """Batched log-mel for training: ``[B, samples]`` -> ``[B, 1, n_mels, frames]`` (float32)."""

    def __init__(self, spec: dict):
        super().__init__()
        self.spec = dict(spec)

    def forward(self, wave):
        return log_mel(wave, self.spec, dtype=torch.float32)


# ----------------------------------------------------------------------------------------------
# images


def decode_image(src) -> np.ndarray:
    """Decode with PIL (first frame, EXIF orientation applied) -> float64 ``[H, W, 4]`` RGBA
    (alpha 255 when opaque)."""
    from PIL import Image, ImageOps

    data = Path(src).read_bytes() if isinstance(src, (str, Path)) else bytes(src)
    with Image.open(io.BytesIO(data)) as im:
        im.seek(0)
        if im.getexif().get(EXIF_ORIENTATION, 1) not in (0, 1):
            im = ImageOps.exif_transpose(im)
        if im.mode in ("L", "I;16", "I;16B", "I;16L", "I"):
            g = np.asarray(im, dtype=np.float64)
            if im.mode != "L":  # 16-bit grayscale -> 8-bit scale
                g = g / 257.0
            rgba = np.stack([g, g, g, np.full_like(g, 255.0)], axis=-1)
        elif im.mode == "LA":
            a = np.asarray(im, dtype=np.float64)
            rgba = np.stack([a[..., 0], a[..., 0], a[..., 0], a[..., 1]], axis=-1)
        else:
            rgba = np.asarray(im.convert("RGBA"), dtype=np.float64)
    return rgba


EXIF_ORIENTATION = 0x0112

def _resize_hw(h, w, spec):
    crop = spec["crop"]
    r = spec.get("resize")
    if r is None:
        return int(crop[0]), int(crop[1])
    r = int(r)
    if h <= w:
        return r, int(r * w / h)
    return int(r * h / w), r


def image_features(src, spec: dict) -> np.ndarray:
    """Image bytes / path -> ``[C, crop_h, crop_w]`` float32 per the preprocess spec."""
    return image_features_rgba(decode_image(src), spec)


def image_features_rgba(rgba: np.ndarray, spec: dict) -> np.ndarray:
    """Decoded ``[H, W, 4]`` RGBA (float64, 0..255) -> ``[C, crop_h, crop_w]`` float32: everything
    of :func:`image_features` after decoding (training feeds synthesised pictures here)."""
    c = int(spec["channels"])
    ch, cw = int(spec["crop"][0]), int(spec["crop"][1])
    if spec.get("background", "none") == "auto":
        if c != 1:
            raise ValueError("background 'auto' needs channels 1")
        z = normalize_background(rgba)
        frame = spec.get("frame")
        if frame is not None:
            img = frame_object(z, int(frame["fit"]), float(frame["threshold"]), ch, cw)[None]
        else:
            img = _resize_crop(z[None], spec)
    else:
        alpha = rgba[..., 3:4] / 255.0
        rgb = rgba[..., :3] * alpha  # composited over black
        if c == 1:
            img = (0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2])[None]
        elif c == 3:
            img = rgb.transpose(2, 0, 1)
        else:
            raise ValueError("channels must be 1 or 3")
        img = _resize_crop(img, spec)
    x = img / 255.0
    if spec.get("invert", False):
        x = 1.0 - x
    mean = np.asarray(spec["mean"], dtype=np.float64)[:, None, None]
    std = np.asarray(spec["std"], dtype=np.float64)[:, None, None]
    return ((x - mean) / std).astype(np.float32)


def _resize_crop(img: np.ndarray, spec: dict) -> np.ndarray:
    h, w = img.shape[1:]
    nh, nw = _resize_hw(h, w, spec)
    if (nh, nw) != (h, w):
        img = _interpolate(img, nh, nw)
    return center_crop(img, int(spec["crop"][0]), int(spec["crop"][1]))


def _interpolate(img: np.ndarray, nh: int, nw: int) -> np.ndarray:
    """``[C, H, W]`` float64 -> ``[C, nh, nw]``: antialiased bilinear (PyTorch semantics)."""
    t = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float64))[None]
    return F.interpolate(t, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)[0].numpy()


def luma_alpha(rgba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``[H, W, 4]`` -> (luma ``0.299R+0.587G+0.114B``, exactly R where R = G = B; alpha in
    [0, 1]), float64, not composited."""
    r, g, b = rgba[..., 0], rgba[..., 1], rgba[..., 2]
    gray = (r == g) & (g == b)
    luma = np.where(gray, r, 0.299 * r + 0.587 * g + 0.114 * b)
    return luma, rgba[..., 3] / 255.0


def _ring(h: int, w: int) -> np.ndarray:
    m = np.ones((h, w), dtype=bool)
    m[1:-1, 1:-1] = False
    return m


def _lower_median(v: np.ndarray) -> float:
    v = np.sort(np.asarray(v, dtype=np.float64).ravel())
    return float(v[(len(v) - 1) // 2])


def normalize_background(rgba: np.ndarray) -> np.ndarray:
    """``background: "auto"`` (docs/format.md): ``[H, W, 4]`` RGBA -> ``[H, W]`` float64 in
    [0, 255], the object light on a background of 0.

    1. Alpha is composited over the picture's own background: the lower median luma of the
       opaque (alpha 255) pixels of the outermost ring when they are at least half of the ring;
       otherwise (a cut-out on a transparent background) over white if the alpha-weighted mean
       luma of the picture is below 127.5, else over black (the colour the object stands out
       against).
    2. Polarity: ``b0`` = lower median of the composited ring; if ``b0 > 127.5`` the picture is
       inverted (``255 - v``) and the background becomes ``b = 255 - b0``, else ``b = b0``.
    3. Level: ``clamp((v - b) * 255 / (255 - b), 0, 255)``.
    """
    luma, a = luma_alpha(rgba)
    h, w = luma.shape
    ring = _ring(h, w)
    if (a < 1.0).any():
        opaque = ring & (a >= 1.0)
        if 2 * int(opaque.sum()) >= int(ring.sum()):
            bgc = _lower_median(luma[opaque])
        else:
            total = float(a.sum())
            mean = float((luma * a).sum()) / total if total > 0 else 255.0
            bgc = 255.0 if mean < 127.5 else 0.0
        v = np.where(a >= 1.0, luma, luma * a + bgc * (1.0 - a))
    else:
        v = luma
    b0 = _lower_median(v[ring])
    if b0 > 127.5:
        v = 255.0 - v
        b = 255.0 - b0
    else:
        b = b0
    return np.clip((v - b) * 255.0 / (255.0 - b), 0.0, 255.0)


def object_box(z: np.ndarray, threshold: float) -> tuple[int, int, int, int]:
    """Bounding box ``(top, left, height, width)`` of the object in a background-normalised
    plane: pixels above ``threshold``; a row (column) belongs to the box when it holds at least
    ``ceil(width / 100)`` (``ceil(height / 100)``) of them. The whole plane when none does."""
    h, w = z.shape
    fg = z > threshold
    rows = np.flatnonzero(fg.sum(1) >= -(-w // 100))
    cols = np.flatnonzero(fg.sum(0) >= -(-h // 100))
    if len(rows) == 0 or len(cols) == 0:
        return 0, 0, h, w
    return int(rows[0]), int(cols[0]), int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


def fit_size(h: int, w: int, fit: int) -> tuple[int, int]:
    """The box's size once its longer side is ``fit``: the shorter side is
    ``max(1, floor(fit * short / long + 1/2))`` (exact integer arithmetic)."""
    if h >= w:
        return fit, max(1, (2 * fit * w + h) // (2 * h))
    return max(1, (2 * fit * h + w) // (2 * w)), fit


def frame_object(z: np.ndarray, fit: int, threshold: float, ch: int, cw: int) -> np.ndarray:
    """``frame`` (docs/format.md): the object's box resized (antialiased bilinear, aspect kept)
    so its longer side is ``fit``, centred on a ``ch x cw`` canvas of background (0) at offset
    ``((ch - h) // 2, (cw - w) // 2)``."""
    top, left, bh, bw = object_box(z, threshold)
    crop = z[top:top + bh, left:left + bw]
    nh, nw = fit_size(bh, bw, fit)
    if (nh, nw) != (bh, bw):
        crop = _interpolate(crop[None], nh, nw)[0]
    out = np.zeros((ch, cw), dtype=np.float64)
    oy, ox = (ch - nh) // 2, (cw - nw) // 2
    out[oy:oy + nh, ox:ox + nw] = crop
    return out


def center_crop(img: np.ndarray, ch: int, cw: int) -> np.ndarray:
    """``[C, H, W]`` -> ``[C, ch, cw]``; offset ``(H - ch) // 2`` when cropping, zero padding of
    ``(ch - H) // 2`` before the image when the crop is larger (same for the width)."""
    c, h, w = img.shape
    out = np.zeros((c, ch, cw), dtype=img.dtype)

    def spans(size, crop):
        if size >= crop:
            off = (size - crop) // 2
            return off, 0, crop  # src start, dst start, length
        pad = (crop - size) // 2
        return 0, pad, size

    sy, dy, ly = spans(h, ch)
    sx, dx, lx = spans(w, cw)
    out[:, dy:dy + ly, dx:dx + lx] = img[:, sy:sy + ly, sx:sx + lx]
    return out


def features(src, preprocess: dict) -> np.ndarray:
    """Dispatch on ``preprocess["kind"]``."""
    if preprocess["kind"] == "image":
        return image_features(src, preprocess)
    if preprocess["kind"] == "audio":
        return audio_features(src, preprocess)
    raise ValueError(f"unknown preprocess kind {preprocess['kind']!r}")
