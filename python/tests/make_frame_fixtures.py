#!/usr/bin/env python3
"""Pictures of one garment as users send them, and the reference tensors of the image front end
for pictures of one object (docs/format.md, ``background: "auto"`` and ``frame``).

    python python/tests/make_frame_fixtures.py            # rewrites models/tests/fixtures/frame/

Source: ``frame/tshirt_dataset.png``, official Fashion-MNIST test image 85 (a T-shirt, label 0;
Zalando Research, MIT licence), committed as it is (28x28, light garment on black). From it,
deterministically:

* ``tshirt_inverted.png`` -- the same image inverted (dark garment on white);
* ``tshirt_offwhite235.png`` -- a product photo: RGB 230x260, the garment navy on an off-white
  (235) background, upscaled to 150x150 and placed off-centre;
* ``tshirt_grey200.png`` -- grey level 200 background, garment darker, 96x120, off-centre;
* ``tshirt_transparent.png`` -- a cut-out: RGBA 120x120, dark red garment, alpha = the garment's
  coverage, fully transparent border;
* ``tshirt_exif6.jpg`` -- a phone photo: white background, stored rotated a quarter turn
  counter-clockwise with EXIF orientation 6 (a viewer turns it upright);
* ``tshirt_exif6_upright.png`` -- the same photo upright, lossless (what the JPEG must match after
  orientation, up to JPEG error).

``preprocess_frame.safetensors`` holds ``<file>/<spec>`` = ``features.image_features`` of each
picture under each spec of ``SPECS`` (metadata ``spec/<spec>``).
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "python"))

from shiftserve_train import features  # noqa: E402

OUT = ROOT / "models/tests/fixtures/frame"
SPECS = {
    # the bundled fashion model's front end
    "frame28": {"kind": "image", "channels": 1, "crop": [28, 28], "mean": [0.2860], "std": [0.3530],
                "background": "auto", "frame": {"fit": 28, "threshold": 24}},
    # framed smaller than the canvas, another threshold
    "frame20_c24": {"kind": "image", "channels": 1, "crop": [24, 26], "mean": [0.5], "std": [0.25],
                    "background": "auto", "frame": {"fit": 20, "threshold": 60}},
    # background normalisation without framing: shorter side to 32, center crop 28
    "auto_r32_c28": {"kind": "image", "channels": 1, "resize": 32, "crop": [28, 28], "mean": [0.0],
                     "std": [1.0], "background": "auto"},
}


def _png(img: Image.Image) -> bytes:
    b = io.BytesIO()
    img.save(b, format="PNG")
    return b.getvalue()


def _upscale(v: np.ndarray, size: int) -> np.ndarray:
    """Garment coverage in [0, 1] at ``size x size`` (bilinear)."""
    im = Image.fromarray(v).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(im, dtype=np.float64) / 255.0


def _photo(cover: np.ndarray, canvas_hw, at, bg, garment) -> np.ndarray:
    """RGB u8: ``garment`` colour with coverage ``cover`` over ``bg``, the garment's top-left at
    ``at``."""
    h, w = canvas_hw
    out = np.empty((h, w, 3), dtype=np.float64)
    out[:] = np.asarray(bg, dtype=np.float64)
    y, x = at
    m = cover[..., None]
    ch, cw = cover.shape
    out[y:y + ch, x:x + cw] = out[y:y + ch, x:x + cw] * (1 - m) + np.asarray(garment, np.float64) * m
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def pictures() -> dict[str, bytes]:
    src = OUT / "tshirt_dataset.png"
    v = np.asarray(Image.open(src).convert("L"))
    assert v.shape == (28, 28)
    pics = {"tshirt_dataset.png": src.read_bytes(),
            "tshirt_inverted.png": _png(Image.fromarray(255 - v))}
    pics["tshirt_offwhite235.png"] = _png(Image.fromarray(
        _photo(_upscale(v, 150), (260, 230), (70, 30), (235, 235, 235), (30, 40, 90))))
    grey = _photo(_upscale(v, 84), (120, 96), (10, 4), (200, 200, 200), (60, 60, 60))[..., 0]
    pics["tshirt_grey200.png"] = _png(Image.fromarray(grey))
    cover = _upscale(v, 100)
    rgba = np.zeros((120, 120, 4), dtype=np.uint8)
    rgba[..., :3] = (120, 20, 30)
    rgba[10:110, 10:110, 3] = np.round(cover * 255).astype(np.uint8)
    pics["tshirt_transparent.png"] = _png(Image.fromarray(rgba, "RGBA"))
    upright = Image.fromarray(_photo(_upscale(v, 140), (200, 160), (30, 10), (255, 255, 255), (70, 70, 70)))
    pics["tshirt_exif6_upright.png"] = _png(upright)
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # a quarter turn counter-clockwise
    exif = Image.Exif()
    exif[features.EXIF_ORIENTATION] = 6
    b = io.BytesIO()
    stored.save(b, format="JPEG", quality=92, exif=exif.tobytes())
    pics["tshirt_exif6.jpg"] = b.getvalue()
    return pics


def reference(pics: dict[str, bytes]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    tensors = {f"{name}/{sname}": features.image_features(data, spec)
               for name, data in sorted(pics.items()) for sname, spec in SPECS.items()}
    meta = {f"spec/{k}": json.dumps(s, sort_keys=True) for k, s in SPECS.items()}
    return tensors, meta


def main(out: Path = OUT) -> None:
    from safetensors.numpy import save_file

    out.mkdir(parents=True, exist_ok=True)
    pics = pictures()
    for name, data in pics.items():
        p = out / name
        if not p.exists() or p.read_bytes() != data:
            p.write_bytes(data)
    tensors, meta = reference(pics)
    save_file(tensors, str(out.parent / "preprocess_frame.safetensors"), metadata=meta)
    print(f"{len(pics)} pictures, {len(tensors)} reference tensors")


if __name__ == "__main__":
    main()
