"""Model zoo: ResNet family (shift or fp32 twin from one flag), SLU shift ResNet, LSTMs.

Every model here knows how to describe itself as a shiftserve graph (``export_graph``), which is
what :func:`shiftserve_train.export.export` uses.  Shift layers keep the paper's layout: fp32 stem
conv and fp32 classifier, shift convs (followed by BatchNorm) everywhere else.

Inputs are batches ``[B, C, H, W]`` for images and ``[B, 1, n_mels, frames]`` for audio.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import ZERO_FREE, ShiftConv2d, ShiftLinear


class ConvFactory:
    """Builds the body convolutions: ShiftConv2d when ``shift`` else plain ``nn.Conv2d``."""

    def __init__(self, shift: bool = True, bits: int = 3, code: str = ZERO_FREE):
        self.shift, self.bits, self.code = shift, bits, code

    def __call__(self, cin, cout, k, stride=1, padding=0):
        if self.shift:
            return ShiftConv2d(cin, cout, k, stride, padding, bias=False, bits=self.bits, code=self.code)
        return nn.Conv2d(cin, cout, k, stride, padding, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, width, stride, conv: ConvFactory):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = conv(cin, width, 3, stride, 1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv(width, cout, 3, 1, 1)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(conv(cin, cout, 1, stride, 0), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        sc = x if self.downsample is None else self.downsample(x)
        return F.relu(out + sc)

    def export_graph(self, g, x, prefix):
        h = g.conv(f"{prefix}.conv1", self.conv1, self.bn1, x, relu=True)
        r = x
        if self.downsample is not None:
            r = g.conv(f"{prefix}.downsample", self.downsample[0], self.downsample[1], x, relu=False)
        return g.conv(f"{prefix}.conv2", self.conv2, self.bn2, h, relu=True, residual=r)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, width, stride, conv: ConvFactory):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = conv(cin, width, 1, 1, 0)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv(width, width, 3, stride, 1)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv(width, cout, 1, 1, 0)
        self.bn3 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(conv(cin, cout, 1, stride, 0), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        sc = x if self.downsample is None else self.downsample(x)
        return F.relu(out + sc)

    def export_graph(self, g, x, prefix):
        h = g.conv(f"{prefix}.conv1", self.conv1, self.bn1, x, relu=True)
        h = g.conv(f"{prefix}.conv2", self.conv2, self.bn2, h, relu=True)
        r = x
        if self.downsample is not None:
            r = g.conv(f"{prefix}.downsample", self.downsample[0], self.downsample[1], x, relu=False)
        return g.conv(f"{prefix}.conv3", self.conv3, self.bn3, h, relu=True, residual=r)


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNet(nn.Module):
    """Configurable ResNet.

    Args:
        block: ``"basic"`` or ``"bottleneck"``.
        layers: blocks per stage, e.g. ``(2, 2, 2, 2)``.
        widths: base width per stage (Bottleneck outputs ``4 * width``).
        stem: ``"cifar"`` (3x3 stride 1 conv) or ``"imagenet"`` (7x7 stride 2 conv + 3x3/2 maxpool).
        stem_width: stem output channels (default ``widths[0]``).
        strides: stride of each stage (default 1 for the first, 2 after).
        in_channels, num_classes: input channels and number of logits.
        shift: shift convs in the body (``False`` gives the full-precision twin).
        bits, code: weight code of the shift convs.
    """

    def __init__(self, block: str = "basic", layers: Sequence[int] = (2, 2, 2, 2),
                 widths: Sequence[int] = (64, 128, 256, 512), stem: str = "imagenet",
                 stem_width: int | None = None, strides: Sequence[int] | None = None,
                 in_channels: int = 3, num_classes: int = 1000, shift: bool = True,
                 bits: int = 3, code: str = ZERO_FREE):
        super().__init__()
        if block not in BLOCKS:
            raise ValueError(f"block must be one of {list(BLOCKS)}")
        if len(layers) != len(widths):
            raise ValueError("layers and widths must have the same length")
        if stem not in ("cifar", "imagenet"):
            raise ValueError("stem must be 'cifar' or 'imagenet'")
        blk = BLOCKS[block]
        self.config = dict(block=block, layers=list(layers), widths=list(widths), stem=stem,
                           stem_width=stem_width, strides=None if strides is None else list(strides),
                           in_channels=in_channels, num_classes=num_classes, shift=shift,
                           bits=bits, code=code)
        conv = ConvFactory(shift, bits, code)
        sw = stem_width or widths[0]
        if stem == "cifar":
            self.stem = nn.Conv2d(in_channels, sw, 3, 1, 1, bias=False)
            self.maxpool = None
        else:
            self.stem = nn.Conv2d(in_channels, sw, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.stem_bn = nn.BatchNorm2d(sw)
        strides = list(strides) if strides is not None else [1] + [2] * (len(layers) - 1)
        stages = []
        cin = sw
        for n, w, s in zip(layers, widths, strides):
            blocks = []
            for i in range(n):
                blocks.append(blk(cin, w, s if i == 0 else 1, conv))
                cin = w * blk.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.fc = nn.Linear(cin, num_classes)
        self.num_features = cin

    def forward(self, x):
        x = F.relu(self.stem_bn(self.stem(x)))
        if self.maxpool is not None:
            x = self.maxpool(x)
        for st in self.stages:
            x = st(x)
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x)

    def export_graph(self, g, x):
        x = g.conv("stem", self.stem, self.stem_bn, x, relu=True)
        if self.maxpool is not None:
            x = g.maxpool("maxpool", x, self.maxpool)
        for si, st in enumerate(self.stages):
            for bi, b in enumerate(st):
                x = b.export_graph(g, x, f"layer{si + 1}.{bi}")
        x = g.global_avgpool("pool", x)
        return g.linear("fc", self.fc, None, x, relu=False)


def resnet_cifar(depth: int = 20, width: int = 16, in_ch: int = 3, num_classes: int = 10, **kw) -> ResNet:
    """CIFAR-style ResNet-(6n+2): 3x3 stem, three stages of BasicBlocks, widths w, 2w, 4w."""
    if (depth - 2) % 6:
        raise ValueError("depth must be 6n+2 (20, 32, 44, 56, ...)")
    n = (depth - 2) // 6
    return ResNet("basic", (n, n, n), (width, 2 * width, 4 * width), stem="cifar",
                  in_channels=in_ch, num_classes=num_classes, **kw)


def resnet18(in_ch: int = 3, num_classes: int = 1000, **kw) -> ResNet:
    return ResNet("basic", (2, 2, 2, 2), (64, 128, 256, 512), "imagenet", in_channels=in_ch,
                  num_classes=num_classes, **kw)


def resnet34(in_ch: int = 3, num_classes: int = 1000, **kw) -> ResNet:
    return ResNet("basic", (3, 4, 6, 3), (64, 128, 256, 512), "imagenet", in_channels=in_ch,
                  num_classes=num_classes, **kw)


def resnet50(in_ch: int = 3, num_classes: int = 1000, **kw) -> ResNet:
    return ResNet("bottleneck", (3, 4, 6, 3), (64, 128, 256, 512), "imagenet", in_channels=in_ch,
                  num_classes=num_classes, **kw)


def slu_resnet(n_mels: int = 40, num_classes: int = 31, widths: Sequence[int] = (16, 32, 64, 128),
               layers: Sequence[int] = (1, 1, 1, 1), stem_width: int | None = None, **kw) -> ResNet:
    """Shift ResNet for end-to-end spoken language understanding on log-mel input
    ``[B, 1, n_mels, frames]`` (Avila et al., 2022): fp32 3x3 stem on the 1-channel spectrogram,
    BasicBlock stages with stride 2 after the first, global average pooling over
    frequency and time, fp32 classifier over the intents."""
    del n_mels  # the network is fully convolutional; kept for a self-documenting call site
    return ResNet("basic", layers, widths, stem="cifar", stem_width=stem_width, in_channels=1,
                  num_classes=num_classes, **kw)


class ShiftMLP(nn.Module):
    """flatten -> [shift linear -> BN -> ReLU] * len(hidden) -> fp32 linear.  Small models
    (e.g. digits) and coverage of ``shift_linear``."""

    def __init__(self, in_features: int, hidden: Sequence[int], num_classes: int, shift=True,
                 bits=3, code=ZERO_FREE):
        super().__init__()
        self.config = dict(in_features=in_features, hidden=list(hidden), num_classes=num_classes,
                           shift=shift, bits=bits, code=code)
        layers, bns = [], []
        f = in_features
        for h in hidden:
            layers.append(ShiftLinear(f, h, bias=False, bits=bits, code=code) if shift
                          else nn.Linear(f, h, bias=False))
            bns.append(nn.BatchNorm1d(h))
            f = h
        self.hidden = nn.ModuleList(layers)
        self.bns = nn.ModuleList(bns)
        self.fc = nn.Linear(f, num_classes)

    def forward(self, x):
        x = torch.flatten(x, 1)
        for lin, bn in zip(self.hidden, self.bns):
            x = F.relu(bn(lin(x)))
        return self.fc(x)

    def export_graph(self, g, x):
        x = g.flatten("flatten", x)
        for i, (lin, bn) in enumerate(zip(self.hidden, self.bns)):
            x = g.linear(f"hidden{i}", lin, bn, x, relu=True)
        return g.linear("fc", self.fc, None, x, relu=False)


# ----------------------------------------------------------------------------------------------
# MPS tensor-train layers (Murua et al.)


def max_bond_ranks(in_modes: Sequence[int], out_modes: Sequence[int]) -> list[int]:
    """Largest useful rank of every bond of the MPS of ``TTLinear(in_modes, out_modes)``: bond k
    separates modes[:k] from modes[k:], so its rank never needs to exceed the smaller product."""
    modes = [int(m) for m in in_modes] + [int(m) for m in out_modes]
    return [min(math.prod(modes[:k]), math.prod(modes[k:])) for k in range(1, len(modes))]


def clamped_ranks(in_modes: Sequence[int], out_modes: Sequence[int], rank: int) -> list[int]:
    """Uniform bond rank ``rank`` clamped to each bond's maximum (no wasted parameters)."""
    return [min(int(rank), m) for m in max_bond_ranks(in_modes, out_modes)]


def _ranks(ranks, n_cores):
    if isinstance(ranks, int):
        return [ranks] * (n_cores - 1)
    ranks = [int(r) for r in ranks]
    if len(ranks) != n_cores - 1:
        raise ValueError(f"need {n_cores - 1} ranks for {n_cores} cores, got {len(ranks)}")
    return ranks


class TTLinear(nn.Module):
    """A matrix ``W[out, in]`` stored as an MPS, exactly docs/format.md ``lstm_tt``.

    With ``in_modes = [n_1..n_d]`` and ``out_modes = [m_1..m_d]`` the matrix element
    ``W[j, i] = G_1[:, i_1, :] ... G_d[:, i_d, :] G_{d+1}[:, j_1, :] ... G_{2d}[:, j_d, :]``
    (mixed-radix indices, first mode most significant), cores ``G_k [r_{k-1}, mode_k, r_k]``,
    ``r_0 = r_{2d} = 1``.  The forward contracts the input with ``G_1..G_d`` down to a vector of
    size ``r_d`` and expands through ``G_{d+1}..G_{2d}``; the matrix is never formed.

    ``cores`` is an ``nn.ParameterList``; ``core{k}`` in the exported file is ``cores[k]``.
    """

    def __init__(self, in_modes: Sequence[int], out_modes: Sequence[int], ranks, bias: bool = False,
                 init_std: float | None = None):
        super().__init__()
        if len(in_modes) != len(out_modes) or not in_modes:
            raise ValueError("in_modes and out_modes must be non-empty and of equal length")
        self.in_modes = [int(m) for m in in_modes]
        self.out_modes = [int(m) for m in out_modes]
        self.d = len(in_modes)
        self.ranks = _ranks(ranks, 2 * self.d)
        self.in_features = math.prod(self.in_modes)
        self.out_features = math.prod(self.out_modes)
        full = [1] + self.ranks + [1]
        modes = self.in_modes + self.out_modes
        self.cores = nn.ParameterList(
            [nn.Parameter(torch.empty(full[k], modes[k], full[k + 1])) for k in range(2 * self.d)])
        self.bias = nn.Parameter(torch.zeros(self.out_features)) if bias else None
        self.reset_parameters(init_std)

    def reset_parameters(self, init_std=None):
        # Var(W) = prod(ranks) * prod(sigma_k^2); aim at PyTorch's default 1/in_features scale.
        target = init_std ** 2 if init_std is not None else 1.0 / (3.0 * self.in_features)
        per_core = (target / math.prod(self.ranks)) ** (1.0 / (2 * self.d))
        with torch.no_grad():
            for c in self.cores:
                c.normal_(0.0, math.sqrt(per_core))

    def forward(self, x):
        lead = x.shape[:-1]
        b = x.reshape(-1, self.in_features)
        n = b.shape[0]
        # state [n, r_{k-1}, remaining input]
        state = b.reshape(n, 1, self.in_features)
        rest = self.in_features
        for k in range(self.d):
            core = self.cores[k]
            mk = self.in_modes[k]
            rest //= mk
            state = state.reshape(n, core.shape[0], mk, rest)
            state = torch.einsum("barz,arc->bcz", state, core)
        v = state.reshape(n, 1, -1)  # [n, 1, r_d]
        # out [n, prefix, r]
        out = v
        for k in range(self.d, 2 * self.d):
            core = self.cores[k]
            out = torch.einsum("bpa,amc->bpmc", out, core).reshape(n, -1, core.shape[2])
        out = out.reshape(*lead, self.out_features)
        if self.bias is not None:
            out = out + self.bias
        return out

    def spec(self):
        return {"in_modes": self.in_modes, "out_modes": self.out_modes, "ranks": self.ranks}

    @torch.no_grad()
    def load_dense(self, weight: torch.Tensor) -> float:
        """Set the cores to the TT-SVD (sequential truncated SVDs, Oseledets 2011) of a dense
        ``W [out_features, in_features]`` at this layer's ranks: the usual way to compress a
        trained layer before fine-tuning. Returns the relative Frobenius error of the result."""
        if tuple(weight.shape) != (self.out_features, self.in_features):
            raise ValueError(f"expected W of shape {[self.out_features, self.in_features]}, "
                             f"got {list(weight.shape)}")
        modes = self.in_modes + self.out_modes
        rest = weight.detach().t().reshape(1, -1).double()  # index order i_1..i_d j_1..j_d
        r_prev = 1
        for k, r in enumerate(self.ranks):
            m = rest.reshape(r_prev * modes[k], -1)
            u, s, vh = torch.linalg.svd(m, full_matrices=False)
            keep = min(r, s.numel())
            core = torch.zeros(r_prev * modes[k], r, dtype=torch.float64)
            core[:, :keep] = u[:, :keep]
            nxt = torch.zeros(r, vh.shape[1], dtype=torch.float64)
            nxt[:keep] = s[:keep, None] * vh[:keep]
            self.cores[k].copy_(core.reshape(r_prev, modes[k], r))
            rest, r_prev = nxt, r
        self.cores[-1].copy_(rest.reshape(r_prev, modes[-1], 1))
        approx = self(torch.eye(self.in_features, dtype=self.cores[0].dtype)).t()
        return float(torch.linalg.norm(approx - weight) / torch.linalg.norm(weight).clamp_min(1e-30))

    def num_params(self):
        return sum(c.numel() for c in self.cores)


def _check_lstm_input(x):
    if x.dim() != 4 or x.shape[1] != 1:
        raise ValueError(f"expected [B, 1, features, frames], got {list(x.shape)}")
    return x[:, 0].transpose(1, 2)  # [B, T, F]


class TTLSTM(nn.Module):
    """LSTM (PyTorch gate order i, f, g, o; h0 = c0 = 0) with ``W_ih`` and ``W_hh`` as MPS."""

    def __init__(self, input_size, hidden_size, ih_in_modes, ih_out_modes, ih_ranks,
                 hh_in_modes, hh_out_modes, hh_ranks):
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.ih = TTLinear(ih_in_modes, ih_out_modes, ih_ranks)
        self.hh = TTLinear(hh_in_modes, hh_out_modes, hh_ranks)
        if self.ih.in_features != input_size or self.hh.in_features != hidden_size:
            raise ValueError("in_modes must multiply to input_size (ih) and hidden_size (hh)")
        if self.ih.out_features != 4 * hidden_size or self.hh.out_features != 4 * hidden_size:
            raise ValueError("out_modes must multiply to 4 * hidden_size")
        self.bias = nn.Parameter(torch.zeros(4 * hidden_size))
        with torch.no_grad():  # forget-gate bias 1 helps short-data training
            self.bias[hidden_size:2 * hidden_size] = 1.0

    def forward(self, seq):
        """seq ``[B, T, F]`` -> all hidden states ``[B, T, H]``."""
        bsz, t_len, _ = seq.shape
        gx = self.ih(seq) + self.bias  # [B, T, 4H]
        h = seq.new_zeros(bsz, self.hidden_size)
        c = seq.new_zeros(bsz, self.hidden_size)
        hs = []
        for t in range(t_len):
            gates = gx[:, t] + self.hh(h)
            i, f, g, o = gates.chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            hs.append(h)
        return torch.stack(hs, 1)


class TTLSTMClassifier(nn.Module):
    """``[B, 1, F, T]`` features -> TT-LSTM -> last or mean hidden state -> fp32 linear."""

    def __init__(self, input_size, hidden_size, num_classes, ih_in_modes, ih_out_modes, hh_in_modes,
                 hh_out_modes, ih_ranks=4, hh_ranks=4, output="last"):
        super().__init__()
        if output not in ("last", "mean"):
            raise ValueError("output must be 'last' or 'mean'")
        self.output = output
        self.lstm = TTLSTM(input_size, hidden_size, ih_in_modes, ih_out_modes, ih_ranks,
                           hh_in_modes, hh_out_modes, hh_ranks)
        self.fc = nn.Linear(hidden_size, num_classes)

    def forward(self, x):
        hs = self.lstm(_check_lstm_input(x))
        h = hs[:, -1] if self.output == "last" else hs.mean(1)
        return self.fc(h)

    def export_graph(self, g, x):
        h = g.lstm_tt("lstm", self.lstm, x, self.output)
        return g.linear("fc", self.fc, None, h, relu=False)


class LSTMClassifier(nn.Module):
    """Dense twin of :class:`TTLSTMClassifier` (``nn.LSTM``, one layer)."""

    def __init__(self, input_size, hidden_size, num_classes, output="last"):
        super().__init__()
        if output not in ("last", "mean"):
            raise ValueError("output must be 'last' or 'mean'")
        self.output = output
        self.lstm = nn.LSTM(input_size, hidden_size, num_layers=1, batch_first=True)
        with torch.no_grad():  # forget-gate bias 1, as TTLSTM (b_ih + b_hh = 1 on the f gate)
            self.lstm.bias_ih_l0[hidden_size:2 * hidden_size] = 1.0
            self.lstm.bias_hh_l0[hidden_size:2 * hidden_size] = 0.0
        self.fc = nn.Linear(hidden_size, num_classes)

    def forward(self, x):
        hs, _ = self.lstm(_check_lstm_input(x))
        h = hs[:, -1] if self.output == "last" else hs.mean(1)
        return self.fc(h)

    def export_graph(self, g, x):
        h = g.lstm("lstm", self.lstm, x, self.output)
        return g.linear("fc", self.fc, None, h, relu=False)
