"""8-bit activation fake-quantisation (u8, scale + zero point, static) for the integer path.

Exactly the quantiser of docs/format.md::

    q = clamp(round_half_even(x / scale) + zero_point, 0, 255)      (f32 division)

and, for training / the PyTorch eval forward, the dequantised value ``(q - zero_point) * scale``
with a straight-through estimator (gradient passed inside the representable range, zero outside).

Each :class:`ActQuant` has a mode:

* ``"off"``        identity (float training, float path);
* ``"calibrate"``  identity, but records statistics of every batch it sees;
* ``"on"``         fake-quantise with the frozen ``scale`` / ``zero_point``.

Calibration: ``"minmax"`` (running min / max over all batches) or ``"percentile"`` (per batch the
``percentile`` and ``100 - percentile`` quantiles, averaged over batches).  The range is always
widened to contain 0, so zero padding is exactly representable (``q = zero_point``).
"""

from __future__ import annotations

import torch
import torch.nn as nn

QMIN, QMAX = 0, 255


class _FakeQuant(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale, zero_point):
        q = torch.round(x / scale) + zero_point
        inside = (q >= QMIN) & (q <= QMAX)
        ctx.save_for_backward(inside)
        q = q.clamp(QMIN, QMAX)
        return (q - zero_point) * scale

    @staticmethod
    def backward(ctx, g):
        (inside,) = ctx.saved_tensors
        return g * inside.to(g.dtype), None, None


def quantize_u8(x: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """The format's quantiser on f32 values: returns uint8."""
    x = x.to(torch.float32)
    q = torch.round(x / torch.tensor(scale, dtype=torch.float32)) + float(zero_point)
    return q.clamp(QMIN, QMAX).to(torch.uint8)


def qparams_from_range(lo: float, hi: float):
    """(scale f32, zero_point int) covering [min(lo,0), max(hi,0)] with u8."""
    lo = min(float(lo), 0.0)
    hi = max(float(hi), 0.0)
    if not (hi - lo) > 0 or not torch.isfinite(torch.tensor(hi - lo)):
        return 1.0, 0
    scale = float(torch.tensor((hi - lo) / (QMAX - QMIN), dtype=torch.float32))
    zp = int(round(-lo / scale))
    zp = max(QMIN, min(QMAX, zp))
    return scale, zp


class ActQuant(nn.Module):
    def __init__(self, method: str = "minmax", percentile: float = 99.99):
        super().__init__()
        self.mode = "off"
        self.method = method
        self.percentile = percentile
        self.register_buffer("scale", torch.tensor(1.0))
        self.register_buffer("zero_point", torch.tensor(0, dtype=torch.int64))
        self.register_buffer("calibrated", torch.tensor(False))
        self._lo = None
        self._hi = None
        self._n = 0

    def reset_stats(self):
        self._lo, self._hi, self._n = None, None, 0

    def forward(self, x):
        if self.mode == "off":
            return x
        if self.mode == "calibrate":
            self._observe(x.detach())
            return x
        if self.mode == "on":
            if not bool(self.calibrated):
                raise RuntimeError("ActQuant enabled before calibration")
            return _FakeQuant.apply(x, self.scale.to(x.dtype), self.zero_point.to(x.dtype))
        raise ValueError(f"bad ActQuant mode {self.mode!r}")

    def _observe(self, x):
        x = x.float()
        if self.method == "minmax":
            lo, hi = float(x.min()), float(x.max())
            self._lo = lo if self._lo is None else min(self._lo, lo)
            self._hi = hi if self._hi is None else max(self._hi, hi)
        elif self.method == "percentile":
            flat = x.flatten()
            if flat.numel() > 1_000_000:
                idx = torch.randint(0, flat.numel(), (1_000_000,), generator=torch.Generator().manual_seed(0))
                flat = flat[idx]
            q = torch.quantile(flat, torch.tensor([1 - self.percentile / 100, self.percentile / 100]))
            lo, hi = float(q[0]), float(q[1])
            n = self._n
            self._lo = lo if self._lo is None else (self._lo * n + lo) / (n + 1)
            self._hi = hi if self._hi is None else (self._hi * n + hi) / (n + 1)
        else:
            raise ValueError(f"unknown calibration method {self.method!r}")
        self._n += 1

    def finalize(self):
        if self._lo is None:
            raise RuntimeError("ActQuant saw no data during calibration (is it on the forward path?)")
        scale, zp = qparams_from_range(self._lo, self._hi)
        self.scale.fill_(scale)
        self.zero_point.fill_(zp)
        self.calibrated.fill_(True)

    def set_qparams(self, scale: float, zero_point: int):
        self.scale.fill_(float(torch.tensor(scale, dtype=torch.float32)))
        self.zero_point.fill_(int(zero_point))
        self.calibrated.fill_(True)

    def qparams(self):
        return float(self.scale), int(self.zero_point)

    def extra_repr(self):
        return f"mode={self.mode}, method={self.method}, scale={float(self.scale):.6g}, zp={int(self.zero_point)}"


def act_quants(model: nn.Module):
    return [m for m in model.modules() if isinstance(m, ActQuant)]


def set_quant_mode(model: nn.Module, mode: str) -> None:
    """Set every ActQuant of ``model`` to ``"off"``, ``"calibrate"`` or ``"on"``."""
    for m in act_quants(model):
        m.mode = mode


@torch.no_grad()
def calibrate(model: nn.Module, batches, method: str = "minmax", percentile: float = 99.99,
              max_batches: int | None = None, progress: bool = True) -> None:
    """Run ``batches`` (iterable of input tensors, or (input, target) pairs) through ``model`` in
    eval mode, record activation ranges at every shift layer input, freeze scale / zero point and
    enable fake-quant (mode ``"on"``)."""
    from tqdm.auto import tqdm

    was_training = model.training
    dev = next(iter(model.parameters()), torch.zeros(0)).device
    model.eval()
    for m in act_quants(model):
        m.method = method
        m.percentile = percentile
        m.reset_stats()
        m.mode = "calibrate"
    it = batches
    total = max_batches
    for i, b in enumerate(tqdm(it, total=total, desc="calibrate", disable=not progress, leave=False)):
        if max_batches is not None and i >= max_batches:
            break
        x = b[0] if isinstance(b, (tuple, list)) else b
        model(x.to(dev))
    for m in act_quants(model):
        m.finalize()
        m.mode = "on"
    model.train(was_training)
