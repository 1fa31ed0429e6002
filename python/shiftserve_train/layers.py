"""Power-of-two (shift) layers trained through the sign-scale decomposition.

Zero-free codes (DenseShift, Li et al., ICCV 2023)
--------------------------------------------------
A ``bits``-bit weight is ``w = s * 2**p`` with a sign ``s`` in {-1, +1} and an exponent ``p`` in
``{0 .. 2**(bits-1) - 1}`` (W2: +-{1,2}, W3: +-{1,2,4,8}, W4: +-{1..128}).  It is parametrised
by real-valued latent tensors of the weight's shape:

* ``weight_sign``: ``s = +1 if weight_sign >= 0 else -1``;
* ``weight_t1 .. weight_tn`` with ``n = 2**(bits-1) - 1``: ``b_i = 1[t_i > 0]`` and the exponent is
  built by the nested ("thermometer") recursion ``p_0 = 0, p_i = (p_{i-1} + 1) * b_i``, ``p = p_n``.
  For W3 (n = 3) this is exactly the paper's ``p = ((b1 + 1) * b2 + 1) * b3``, which takes the
  values 0..3 (``b3 = 0 -> 0``; ``b3 = 1, b2 = 0 -> 1``; ``b3 = b2 = 1, b1 = 0 -> 2``; all ones
  -> 3), i.e. ``p`` *is* the exponent and ``w`` is in +-{1,2,4,8}.  W2 has one latent
  (``p = b1``), W4 seven (``p`` in 0..7).

The exported code (docs/format.md, ``code = "zero_free"``) is sign bit ``s_bit = 1`` for ``s = -1``
and magnitude field ``m = p``.

Forward uses the exact value ``s * 2**p``; backward goes through the surrogate ``s * sqrt(p + 1)``
with straight-through estimators (identity gradient) for both the sign and the binarisations,
as in the authors' method.

With-zero codes (DeepShift / S3 style)
--------------------------------------
``w = s * g * 2**p`` with a gate ``g = 1[weight_gate > 0]`` that allows zeros, ``p`` from
``2**(bits-1) - 2`` thermometer latents (3 bits: {0, +-1, +-2, +-4}).  Exported as
``code = "with_zero"``: ``m = 0`` for zero (sign bit forced to 0), else ``m = p + 1``.
Straight-through estimators on every binarisation; no surrogate.

Latents are initialised from N(0, std=1e-3) (low-variance random init).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .quant import ActQuant

ZERO_FREE = "zero_free"
WITH_ZERO = "with_zero"
CODES = (ZERO_FREE, WITH_ZERO)
LATENT_INIT_STD = 1e-3


class _Binarize01(torch.autograd.Function):
    """Forward ``1[t > 0]``; backward identity (straight-through)."""

    @staticmethod
    def forward(ctx, t):
        return (t > 0).to(t.dtype)

    @staticmethod
    def backward(ctx, g):
        return g


class _Sign(torch.autograd.Function):
    """Forward ``+1 if t >= 0 else -1``; backward identity (straight-through)."""

    @staticmethod
    def forward(ctx, t):
        return torch.where(t >= 0, torch.ones_like(t), -torch.ones_like(t))

    @staticmethod
    def backward(ctx, g):
        return g


def ste_binarize01(t: torch.Tensor) -> torch.Tensor:
    return _Binarize01.apply(t)


def ste_sign(t: torch.Tensor) -> torch.Tensor:
    return _Sign.apply(t)


def check_bits(bits: int, code: str) -> None:
    if code not in CODES:
        raise ValueError(f"unknown code {code!r}, expected one of {CODES}")
    allowed = (2, 3, 4) if code == ZERO_FREE else (2, 3, 4, 5)
    if bits not in allowed:
        raise ValueError(f"code {code!r} supports bits {allowed}, got {bits}")


def num_thermometer_latents(bits: int, code: str) -> int:
    """Number of binary latents ``t_i`` that build the exponent."""
    check_bits(bits, code)
    levels = 2 ** (bits - 1) if code == ZERO_FREE else 2 ** (bits - 1) - 1
    return levels - 1


def thermometer_exponent(bins: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """``p_0 = 0``, ``p_i = (p_{i-1} + 1) * b_i`` (DenseShift's nested exponent)."""
    p = torch.zeros_like(like)
    for b in bins:
        p = (p + 1) * b
    return p


def max_exponent(bits: int, code: str) -> int:
    return num_thermometer_latents(bits, code)


class ShiftWeight(nn.Module):
    """Latent parametrisation of a power-of-two weight tensor of a given shape."""

    def __init__(self, shape, bits: int = 3, code: str = ZERO_FREE):
        super().__init__()
        check_bits(bits, code)
        self.bits = bits
        self.code = code
        self.shape = tuple(shape)
        self.n_latents = num_thermometer_latents(bits, code)
        self.weight_sign = nn.Parameter(torch.empty(self.shape))
        if code == WITH_ZERO:
            self.weight_gate = nn.Parameter(torch.empty(self.shape))
        for i in range(1, self.n_latents + 1):
            setattr(self, f"weight_t{i}", nn.Parameter(torch.empty(self.shape)))
        self.reset_parameters()

    def latents(self) -> list[torch.Tensor]:
        return [getattr(self, f"weight_t{i}") for i in range(1, self.n_latents + 1)]

    def reset_parameters(self, std: float = LATENT_INIT_STD) -> None:
        with torch.no_grad():
            for p in self.parameters(recurse=False):
                p.normal_(0.0, std)

    def forward(self) -> torch.Tensor:
        s = ste_sign(self.weight_sign)
        p = thermometer_exponent([ste_binarize01(t) for t in self.latents()], self.weight_sign)
        if self.code == ZERO_FREE:
            backward_surrogate = s * torch.sqrt(p + 1.0)
            exact = s * torch.pow(2.0, p)
            return backward_surrogate + (exact - backward_surrogate).detach()
        g = ste_binarize01(self.weight_gate)
        return s * g * torch.pow(2.0, p)

    @torch.no_grad()
    def sign_and_exponent(self):
        """Integer view: ``(sign_bit uint8, m uint8)`` in the format's encoding, and the values."""
        neg = self.weight_sign < 0
        p = torch.zeros(self.shape, dtype=torch.int64, device=self.weight_sign.device)
        for t in self.latents():
            p = (p + 1) * (t > 0).to(torch.int64)
        if self.code == ZERO_FREE:
            m = p
            values = torch.where(neg, -(1 << p), 1 << p)
        else:
            gate = self.weight_gate > 0
            m = torch.where(gate, p + 1, torch.zeros_like(p))
            neg = neg & gate
            values = torch.where(gate, torch.where(neg, -(1 << p), 1 << p), torch.zeros_like(p))
        return neg.to(torch.uint8), m.to(torch.uint8), values.to(torch.int64)

    @torch.no_grad()
    def int_values(self) -> torch.Tensor:
        """The integer weights (int64), same shape as the weight."""
        return self.sign_and_exponent()[2]

    @torch.no_grad()
    def set_from_values(self, values: torch.Tensor, magnitude: float = 1e-3) -> None:
        """Set the latents so that the decoded weight equals ``values`` (integers, valid codes)."""
        values = torch.as_tensor(values, dtype=torch.int64).reshape(self.shape)
        nonzero = values != 0
        if self.code == ZERO_FREE and not bool(nonzero.all()):
            raise ValueError("zero-free codes cannot represent 0")
        mag = values.abs().clamp(min=1)
        p = torch.log2(mag.to(torch.float64)).round().to(torch.int64)
        if not bool(((1 << p) == mag).all()):
            raise ValueError("values must be powers of two")
        if int(p.max()) > self.n_latents:
            raise ValueError(f"exponent {int(p.max())} out of range for {self.bits}-bit {self.code}")
        self.weight_sign.copy_(torch.where(values < 0, -magnitude, magnitude))
        n = self.n_latents
        # exponent p  <=> the last p binaries are one and (if p < n) b_{n-p} is zero
        for i in range(1, n + 1):
            one = p >= (n - i + 1)
            t = getattr(self, f"weight_t{i}")
            t.copy_(torch.where(one, magnitude, -magnitude))
        if self.code == WITH_ZERO:
            self.weight_gate.copy_(torch.where(nonzero, magnitude, -magnitude))


class ShiftConv2d(nn.Module):
    """Conv2d with power-of-two weights (no bias by default: a BatchNorm follows).

    ``self.act`` is the 8-bit input fake-quantiser used for the integer path; it is a no-op
    until calibrated and enabled (see :mod:`shiftserve_train.quant`).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, groups=1,
                 bias=False, bits=3, code=ZERO_FREE):
        super().__init__()
        kh, kw = _pair(kernel_size)
        if in_channels % groups or out_channels % groups:
            raise ValueError("channels must be divisible by groups")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = (kh, kw)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.groups = groups
        self.bits, self.code = bits, code
        self.weight = ShiftWeight((out_channels, in_channels // groups, kh, kw), bits, code)
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.act = ActQuant()

    def forward(self, x):
        x = self.act(x)
        return F.conv2d(x, self.weight(), self.bias, self.stride, self.padding, 1, self.groups)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, groups={self.groups}, "
                f"bits={self.bits}, code={self.code}")


class ShiftLinear(nn.Module):
    """Linear layer with power-of-two weights."""

    def __init__(self, in_features, out_features, bias=True, bits=3, code=ZERO_FREE):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.bits, self.code = bits, code
        self.weight = ShiftWeight((out_features, in_features), bits, code)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.act = ActQuant()

    def forward(self, x):
        return F.linear(self.act(x), self.weight(), self.bias)

    def extra_repr(self):
        return f"{self.in_features}, {self.out_features}, bits={self.bits}, code={self.code}"


def _pair(v):
    if isinstance(v, int):
        return (v, v)
    v = tuple(int(a) for a in v)
    if len(v) != 2:
        raise ValueError(f"expected an int or a pair, got {v}")
    return v


def shift_modules(model: nn.Module):
    """All ShiftConv2d / ShiftLinear modules of a model, in registration order."""
    return [m for m in model.modules() if isinstance(m, (ShiftConv2d, ShiftLinear))]


def latent_parameters(model: nn.Module):
    """Parameters of the shift weight latents (useful for a separate optimizer group)."""
    return [p for m in model.modules() if isinstance(m, ShiftWeight) for p in m.parameters(recurse=False)]
