"""Export a trained model to a shiftserve model file (docs/format.md, format version 1).

    from shiftserve_train.export import export
    export(model, "fmnist_w3.safetensors", name="fmnist-w3", task="image_classification",
           labels=[...], preprocess={...}, numeric_path="int8", calib=calib_batches)

Steps: BatchNorm folding (shift conv + BN -> integer codes + per-channel f32 scale / bias;
fp32 conv + BN -> folded f32 weights), bit-plane packing, graph JSON, metadata, safetensors.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import warnings
from typing import Iterable

import numpy as np
import torch
import torch.nn as nn
from safetensors.numpy import save_file

from . import __version__
from .layers import ZERO_FREE, ShiftConv2d, ShiftLinear, check_bits, shift_modules
from .quant import act_quants as _act_quants
from .quant import calibrate as _calibrate

FORMAT_VERSION = "1"
TASKS = ("image_classification", "spoken_intent", "audio_classification")
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


class ExportError(ValueError):
    pass


# ----------------------------------------------------------------------------------------------
# bit planes


def encode_codes(values: np.ndarray, bits: int, code: str):
    """Integer weights -> (sign bits u8, magnitude field u8).  Raises on unrepresentable values."""
    check_bits(bits, code)
    v = np.asarray(values, dtype=np.int64).reshape(-1)
    mag = np.abs(v)
    sign = (v < 0).astype(np.uint8)
    max_m = 2 ** (bits - 1) - 1
    nz = mag > 0
    if code == ZERO_FREE and not np.all(nz):
        raise ExportError("zero-free code cannot represent 0")
    e = np.zeros_like(mag)
    e[nz] = np.round(np.log2(mag[nz])).astype(np.int64)
    m = e if code == ZERO_FREE else np.where(nz, e + 1, 0)
    if np.any(nz & ((e > 62) | (np.left_shift(1, np.minimum(e, 62)) != mag))):
        raise ExportError("weights must be powers of two")
    if np.any(m > max_m):
        raise ExportError(f"weight magnitude out of range for {bits}-bit {code}")
    return sign, m.astype(np.uint8)


def decode_codes(sign: np.ndarray, m: np.ndarray, code: str) -> np.ndarray:
    sign = sign.astype(np.int64)
    m = m.astype(np.int64)
    if code == ZERO_FREE:
        return np.where(sign == 1, -1, 1) * np.left_shift(1, m)
    if np.any((m == 0) & (sign == 1)):
        raise ExportError("negative zero code in with_zero weights")
    mag = np.where(m == 0, 0, np.left_shift(1, np.maximum(m - 1, 0)))
    return np.where(sign == 1, -mag, mag)


def pack_planes(values: np.ndarray, bits: int, code: str) -> np.ndarray:
    """``values [rows, cols]`` (integers) -> ``U8[bits, ceil(rows*cols/8)]`` bit planes."""
    sign, m = encode_codes(values, bits, code)
    planes = [np.packbits(sign, bitorder="little")]
    for j in range(bits - 1):
        planes.append(np.packbits((m >> j) & 1, bitorder="little"))
    return np.ascontiguousarray(np.stack(planes).astype(np.uint8))


def unpack_planes(planes: np.ndarray, bits: int, code: str, rows: int, cols: int) -> np.ndarray:
    """Inverse of :func:`pack_planes`; validates the shape and the zero padding."""
    n = rows * cols
    nbytes = (n + 7) // 8
    planes = np.asarray(planes)
    if planes.dtype != np.uint8 or planes.shape != (bits, nbytes):
        raise ExportError(f"plane tensor must be U8[{bits}, {nbytes}], got {planes.dtype}{list(planes.shape)}")
    unpacked = np.unpackbits(planes, axis=1, bitorder="little")
    if np.any(unpacked[:, n:]):
        raise ExportError("non-zero padding bits in weight planes")
    unpacked = unpacked[:, :n].astype(np.int64)
    sign = unpacked[0]
    m = np.zeros(n, dtype=np.int64)
    for j in range(bits - 1):
        m |= unpacked[1 + j] << j
    return decode_codes(sign, m, code).reshape(rows, cols)


# ----------------------------------------------------------------------------------------------
# BN folding


def bn_affine(bn: nn.Module | None, channels: int):
    """(scale, shift) float64 of an eval-mode BatchNorm, identity when ``bn`` is None."""
    if bn is None:
        return np.ones(channels), np.zeros(channels)
    mean = bn.running_mean.detach().cpu().double().numpy()
    var = bn.running_var.detach().cpu().double().numpy()
    gamma = bn.weight.detach().cpu().double().numpy() if bn.weight is not None else np.ones(channels)
    beta = bn.bias.detach().cpu().double().numpy() if bn.bias is not None else np.zeros(channels)
    s = gamma / np.sqrt(var + bn.eps)
    return s, beta - mean * s


def fold_shift(layer, bn):
    """Shift layer (+ BN) -> (integer values [out, K] int64, scale f32[out], bias f32[out])."""
    values = layer.weight.int_values().cpu().reshape(layer.weight.shape[0], -1).numpy()
    out = values.shape[0]
    s, b = bn_affine(bn, out)
    if layer.bias is not None:
        b = b + layer.bias.detach().cpu().double().numpy() * s
    return values, s.astype(np.float32), b.astype(np.float32)


def fold_float(layer, bn):
    """fp32 conv / linear (+ BN) -> (folded weight f32, bias f32)."""
    w = layer.weight.detach().cpu().double().numpy()
    out = w.shape[0]
    s, b = bn_affine(bn, out)
    if layer.bias is not None:
        b = b + layer.bias.detach().cpu().double().numpy() * s
    w = w * s.reshape((out,) + (1,) * (w.ndim - 1))
    return w.astype(np.float32), b.astype(np.float32)


# ----------------------------------------------------------------------------------------------
# graph builder


class GraphBuilder:
    """Collects nodes and tensors while a model describes itself (``model.export_graph``)."""

    def __init__(self, numeric_path: str, progress=None):
        if numeric_path not in ("int8", "float"):
            raise ExportError("numeric_path must be 'int8' or 'float'")
        self.numeric_path = numeric_path
        self.nodes: list[dict] = []
        self.tensors: dict[str, np.ndarray] = {}
        self.progress = progress

    def _add_tensor(self, name, arr):
        if name in self.tensors:
            raise ExportError(f"duplicate tensor {name}")
        self.tensors[name] = np.ascontiguousarray(arr)
        return name

    def _node(self, node):
        if any(n["name"] == node["name"] for n in self.nodes):
            raise ExportError(f"duplicate node name {node['name']}")
        self.nodes.append(node)
        if self.progress is not None:
            self.progress.update(1)
        return node["output"]

    def _check_int32(self, name, values):
        """The int8 path accumulates in int32: 255 * sum_k |w[o,k]| must fit."""
        if self.numeric_path == "int8":
            worst = int(np.abs(values).sum(axis=1).max()) * 255
            if worst > 2**31 - 1:
                raise ExportError(f"{name}: int32 accumulator could overflow (255 * max_o sum_k |w| = {worst}); "
                                  "use fewer bits or the float path")

    def _input_quant(self, layer, name):
        if self.numeric_path != "int8":
            return None
        act = layer.act
        if not bool(act.calibrated):
            raise ExportError(f"{name}: activation quantiser not calibrated (pass calib=... to export)")
        scale, zp = act.qparams()
        if not (math.isfinite(scale) and scale > 0) or not 0 <= zp <= 255:
            raise ExportError(f"{name}: bad input quantisation scale={scale} zero_point={zp}")
        return {"scale": scale, "zero_point": zp}

    def conv(self, name, conv, bn, x, relu, residual=None):
        if isinstance(conv, ShiftConv2d):
            values, scale, bias = fold_shift(conv, bn)
            self._check_int32(name, values)
            node = {
                "name": name, "op": "shift_conv2d", "inputs": [x] + ([residual] if residual else []),
                "output": name,
                "in_channels": conv.in_channels, "out_channels": conv.out_channels,
                "kernel": list(conv.kernel_size), "stride": list(conv.stride),
                "padding": list(conv.padding), "groups": conv.groups, "relu": bool(relu),
                "bits": conv.bits, "code": conv.code, "path": self.numeric_path,
                "weight": self._add_tensor(f"{name}.weight", pack_planes(values, conv.bits, conv.code)),
                "scale": self._add_tensor(f"{name}.scale", scale),
                "bias": self._add_tensor(f"{name}.bias", bias),
            }
            iq = self._input_quant(conv, name)
            if iq is not None:
                node["input_quant"] = iq
            return self._node(node)
        if isinstance(conv, nn.Conv2d):
            if conv.dilation != (1, 1) or conv.padding_mode != "zeros":
                raise ExportError(f"{name}: only dilation 1 and zero padding are supported")
            w, b = fold_float(conv, bn)
            out = self._node({
                "name": name if residual is None else f"{name}.conv", "op": "conv2d", "inputs": [x],
                "output": name if residual is None else f"{name}.conv",
                "in_channels": conv.in_channels, "out_channels": conv.out_channels,
                "kernel": list(conv.kernel_size), "stride": list(conv.stride),
                "padding": list(conv.padding), "groups": conv.groups,
                "relu": bool(relu) and residual is None,
                "weight": self._add_tensor(f"{name}.weight", w),
                "bias": self._add_tensor(f"{name}.bias", b),
            })
            if residual is None:
                return out
            return self._node({"name": name, "op": "add", "inputs": [out, residual], "output": name,
                               "relu": bool(relu)})
        raise ExportError(f"{name}: unsupported conv module {type(conv).__name__}")

    def linear(self, name, lin, bn, x, relu):
        if isinstance(lin, ShiftLinear):
            values, scale, bias = fold_shift(lin, bn)
            self._check_int32(name, values)
            node = {
                "name": name, "op": "shift_linear", "inputs": [x], "output": name,
                "in_features": lin.in_features, "out_features": lin.out_features,
                "bits": lin.bits, "code": lin.code, "path": self.numeric_path, "relu": bool(relu),
                "weight": self._add_tensor(f"{name}.weight", pack_planes(values, lin.bits, lin.code)),
                "scale": self._add_tensor(f"{name}.scale", scale),
                "bias": self._add_tensor(f"{name}.bias", bias),
            }
            iq = self._input_quant(lin, name)
            if iq is not None:
                node["input_quant"] = iq
            return self._node(node)
        if isinstance(lin, nn.Linear):
            w, b = fold_float(lin, bn)
            return self._node({
                "name": name, "op": "linear", "inputs": [x], "output": name,
                "in_features": lin.in_features, "out_features": lin.out_features, "relu": bool(relu),
                "weight": self._add_tensor(f"{name}.weight", w),
                "bias": self._add_tensor(f"{name}.bias", b),
            })
        raise ExportError(f"{name}: unsupported linear module {type(lin).__name__}")

    def maxpool(self, name, x, pool: nn.MaxPool2d):
        if pool.dilation not in (1, (1, 1)) or pool.ceil_mode:
            raise ExportError(f"{name}: maxpool with dilation or ceil_mode is not supported")
        return self._node({"name": name, "op": "maxpool2d", "inputs": [x], "output": name,
                           "kernel": _pair(pool.kernel_size), "stride": _pair(pool.stride or pool.kernel_size),
                           "padding": _pair(pool.padding)})

    def avgpool(self, name, x, pool: nn.AvgPool2d):
        if pool.ceil_mode or not pool.count_include_pad or pool.divisor_override:
            raise ExportError(f"{name}: only count_include_pad=True, floor-mode avgpool is supported")
        return self._node({"name": name, "op": "avgpool2d", "inputs": [x], "output": name,
                           "kernel": _pair(pool.kernel_size), "stride": _pair(pool.stride or pool.kernel_size),
                           "padding": _pair(pool.padding)})

    def global_avgpool(self, name, x):
        return self._node({"name": name, "op": "global_avgpool", "inputs": [x], "output": name})

    def flatten(self, name, x):
        return self._node({"name": name, "op": "flatten", "inputs": [x], "output": name})

    def relu(self, name, x):
        return self._node({"name": name, "op": "relu", "inputs": [x], "output": name})

    def add(self, name, a, b, relu=False):
        return self._node({"name": name, "op": "add", "inputs": [a, b], "output": name, "relu": bool(relu)})

    def lstm(self, name, lstm: nn.LSTM, x, output):
        if lstm.num_layers != 1 or lstm.bidirectional or getattr(lstm, "proj_size", 0):
            raise ExportError(f"{name}: only single-layer unidirectional LSTMs without projection")
        w_ih = lstm.weight_ih_l0.detach().cpu().float().numpy()
        w_hh = lstm.weight_hh_l0.detach().cpu().float().numpy()
        if lstm.bias:
            bias = (lstm.bias_ih_l0.detach().cpu().double() + lstm.bias_hh_l0.detach().cpu().double()).float().numpy()
        else:
            bias = np.zeros(4 * lstm.hidden_size, np.float32)
        return self._node({
            "name": name, "op": "lstm", "inputs": [x], "output": name,
            "input_size": lstm.input_size, "hidden_size": lstm.hidden_size, "output_mode": output,
            "w_ih": self._add_tensor(f"{name}.w_ih", w_ih), "w_hh": self._add_tensor(f"{name}.w_hh", w_hh),
            "bias": self._add_tensor(f"{name}.bias", bias),
        })

    def lstm_tt(self, name, lstm, x, output):
        for part in ("ih", "hh"):
            tt = getattr(lstm, part)
            for k, core in enumerate(tt.cores):
                self._add_tensor(f"{name}.{part}.core{k + 1}", core.detach().cpu().float().numpy())
        return self._node({
            "name": name, "op": "lstm_tt", "inputs": [x], "output": name,
            "input_size": lstm.input_size, "hidden_size": lstm.hidden_size, "output_mode": output,
            "ih": lstm.ih.spec(), "hh": lstm.hh.spec(),
            "bias": self._add_tensor(f"{name}.bias", lstm.bias.detach().cpu().float().numpy()),
        })


def _pair(v):
    return [int(v), int(v)] if isinstance(v, int) else [int(a) for a in v]


# ----------------------------------------------------------------------------------------------
# metadata


def tensor_sha256(tensors: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors, key=lambda s: s.encode("utf-8")):
        a = tensors[name]
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def input_shape_from_preprocess(pp: dict) -> list[int]:
    kind = pp.get("kind")
    if kind == "image":
        crop = pp["crop"]
        return [int(pp["channels"]), int(crop[0]), int(crop[1])]
    if kind == "audio":
        samples = int(round(float(pp["seconds"]) * int(pp["sample_rate"])))
        if not pp.get("center", True):
            frames = 1 + (samples - int(pp["n_fft"])) // int(pp["hop_length"])
        else:
            frames = 1 + samples // int(pp["hop_length"])
        return [1, int(pp["n_mels"]), frames]
    raise ExportError(f"preprocess.kind must be 'image' or 'audio', got {kind!r}")


def validate_preprocess(pp: dict) -> None:
    kind = pp.get("kind")
    if kind == "image":
        for k in ("channels", "crop", "mean", "std"):
            if k not in pp:
                raise ExportError(f"image preprocess needs {k!r}")
        c = int(pp["channels"])
        if c not in (1, 3):
            raise ExportError("image channels must be 1 or 3")
        if len(pp["mean"]) != c or len(pp["std"]) != c or any(float(s) <= 0 for s in pp["std"]):
            raise ExportError("mean/std must have one positive entry per channel")
        if len(pp["crop"]) != 2:
            raise ExportError("crop must be [h, w]")
        bg = pp.get("background", "none")
        if bg not in ("none", "auto"):
            raise ExportError("background must be 'none' or 'auto'")
        if bg == "auto" and (c != 1 or pp.get("invert", False)):
            raise ExportError("background 'auto' needs channels 1 and no invert (it decides polarity)")
        fr = pp.get("frame")
        if fr is not None:
            if bg != "auto" or pp.get("resize") is not None:
                raise ExportError("frame needs background 'auto' and replaces resize")
            fit, thr = int(fr["fit"]), float(fr["threshold"])
            if not (1 <= fit <= min(int(pp["crop"][0]), int(pp["crop"][1]))) or not (0 <= thr < 255):
                raise ExportError("frame: need 1 <= fit <= min(crop) and 0 <= threshold < 255")
    elif kind == "audio":
        for k in ("sample_rate", "seconds", "features", "n_fft", "win_length", "hop_length",
                  "window", "center", "n_mels", "f_min", "f_max", "log_eps", "normalize"):
            if k not in pp:
                raise ExportError(f"audio preprocess needs {k!r}")
        if pp["features"] != "log_mel" or pp["window"] != "hann":
            raise ExportError("only features='log_mel' with window='hann' are defined")
        if int(pp["win_length"]) > int(pp["n_fft"]):
            raise ExportError("win_length must be <= n_fft")
    else:
        raise ExportError(f"preprocess.kind must be 'image' or 'audio', got {kind!r}")


def _check_temperature(temperature) -> None:
    """``None`` or a positive finite number (what the server accepts as ``shiftserve.temperature``)."""
    if temperature is not None and not (isinstance(temperature, (int, float)) and math.isfinite(temperature)
                                        and temperature > 0):
        raise ExportError(f"temperature must be a positive finite number, got {temperature!r}")


def set_temperature(path, temperature: float | None) -> None:
    """Writes (or, with ``None``, removes) the softmax temperature of an exported model file in
    place: only the ``shiftserve.temperature`` metadata key changes; the tensor bytes, their
    offsets and the tensor hash stay as they are, so the logits of the file do not change. For
    calibrating an already exported model (``training/eval_intent.py --write-temperature``)."""
    _check_temperature(temperature)
    with open(path, "rb") as f:
        data = f.read()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    meta = header.setdefault("__metadata__", {})
    if temperature is None:
        meta.pop("shiftserve.temperature", None)
    else:
        meta["shiftserve.temperature"] = repr(float(temperature))
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % 8)  # the data section stays 8-byte aligned
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text + data[8 + n:])
    os.replace(tmp, path)


def export(model: nn.Module, path, *, name: str, task: str, labels: list[str], preprocess: dict,
           intents: list[dict] | None = None, numeric_path: str = "int8", calib: Iterable | None = None,
           calib_method: str = "minmax", input_shape: list[int] | None = None,
           description: str | None = None, progress: bool = True,
           temperature: float | None = None) -> dict:
    """Write ``model`` to ``path`` (a shiftserve model file).  Returns a summary dict.

    ``numeric_path``: ``"int8"`` (8-bit activations, integer accumulators; needs calibrated
    activation quantisers: pass ``calib`` = iterable of input batches to calibrate now) or
    ``"float"`` (DenseShift's float inference; activation quantisers are ignored).
    The model is put in eval mode; when ``calib`` is given its quantisers are left enabled,
    so ``model(x)`` afterwards is the PyTorch twin of the exported int8 network.
    ``temperature``: optional softmax temperature T > 0 (calibrated scores = softmax(logits / T),
    e.g. fitted by training/eval_intent.py), written as metadata ``shiftserve.temperature``, a
    decimal string (``repr`` of the float); the logits in the file are unchanged.
    """
    from tqdm.auto import tqdm

    if not isinstance(name, str) or not NAME_RE.match(name) or len(name.encode()) > 64:
        raise ExportError(f"bad model name {name!r}: [a-z0-9][a-z0-9_-]*, at most 64 bytes")
    if task not in TASKS:
        raise ExportError(f"task must be one of {TASKS}")
    validate_preprocess(preprocess)
    _check_temperature(temperature)
    if task == "spoken_intent":
        if intents is None or len(intents) != len(labels):
            raise ExportError("spoken_intent needs intents aligned with labels")
        for it in intents:
            if set(it) != {"action", "object", "location"}:
                raise ExportError("each intent needs exactly action, object, location")
    elif intents is not None:
        raise ExportError("intents are only for task spoken_intent")
    if not hasattr(model, "export_graph"):
        raise ExportError(f"{type(model).__name__} has no export_graph(); use a shiftserve_train model")

    model.eval()
    if numeric_path == "float" and any(m.mode == "on" for m in _act_quants(model)):
        warnings.warn("exporting the float path while activation fake-quant is on: the PyTorch eval "
                      "forward will not match the file; call quant.set_quant_mode(model, 'off')", stacklevel=2)
    shape = list(input_shape) if input_shape is not None else input_shape_from_preprocess(preprocess)
    if numeric_path == "int8" and shift_modules(model):
        if calib is not None:
            _calibrate(model, calib, method=calib_method, progress=progress)
    with torch.no_grad():
        dev = next(iter(model.parameters()), torch.zeros(0)).device
        out = model(torch.zeros([1] + shape, device=dev))
    if out.dim() != 2 or out.shape[1] != len(labels):
        raise ExportError(f"model produces {list(out.shape[1:])} logits but {len(labels)} labels were given")

    bar = tqdm(desc=f"export {name}", unit="node", disable=not progress, leave=False)
    g = GraphBuilder(numeric_path, progress=bar)
    final = model.export_graph(g, "input")
    bar.close()
    if final != g.nodes[-1]["output"]:
        raise ExportError("graph output is not produced by the last node")
    for tname, t in g.tensors.items():
        if t.dtype == np.float32 and not np.all(np.isfinite(t)):
            raise ExportError(f"tensor {tname} has non-finite values (diverged training or BN variance?)")
    graph = {"inputs": [{"name": "input", "shape": shape}],
             "outputs": [{"name": final, "shape": [len(labels)]}],
             "nodes": g.nodes}
    meta = {
        "shiftserve.format_version": FORMAT_VERSION,
        "shiftserve.name": name,
        "shiftserve.task": task,
        "shiftserve.graph": json.dumps(graph, separators=(",", ":")),
        "shiftserve.preprocess": json.dumps(preprocess, separators=(",", ":")),
        "shiftserve.labels": json.dumps(list(labels)),
        "shiftserve.tensor_sha256": tensor_sha256(g.tensors),
        "shiftserve.producer": f"shiftserve_train {__version__} / torch {torch.__version__}",
    }
    if intents is not None:
        meta["shiftserve.intents"] = json.dumps(intents)
    if description:
        meta["shiftserve.description"] = description
    if temperature is not None:
        meta["shiftserve.temperature"] = repr(float(temperature))
    save_file(g.tensors, str(path), metadata=meta)
    n_shift = sum(int(np.prod(t.shape)) for k, t in g.tensors.items() if t.dtype == np.uint8)
    return {"path": str(path), "nodes": len(g.nodes), "tensors": len(g.tensors),
            "packed_bytes": n_shift, "input_shape": shape}

