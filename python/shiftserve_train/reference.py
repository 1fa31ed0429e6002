"""Reference forward pass over an exported shiftserve model file.

Reads ONLY the file (no PyTorch model objects) and follows docs/format.md literally:

* ``shift_conv2d`` / ``shift_linear`` int8 path: u8 quantisation with f32 division and
  round-half-even, exact int64 accumulators ``sum_k w * (q - zp)``, then
  ``f32(acc) * f32(in.scale * scale[o]) + bias[o]``, residual, ReLU, all in f32;
* float path: f32 products (exact: power-of-two weights) summed in ascending ``k`` order in f32,
  then ``acc * scale[o] + bias[o]`` in f32 (no fused multiply-add);
* fp32 ops (conv2d, linear, pools, LSTMs): computed in float64 and rounded to f32 once per node,
  i.e. the reference is at least as accurate as any f32 implementation.

``ModelFile`` also validates the file (metadata, hash, graph references, tensor shapes, codes).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open

from .export import FORMAT_VERSION, TASKS, tensor_sha256, unpack_planes

F32 = np.float32


class FormatError(ValueError):
    pass


class ModelFile:
    def __init__(self, path):
        self.path = Path(path)
        tensors = {}
        with safe_open(str(self.path), framework="numpy") as f:
            meta = f.metadata() or {}
            for k in f.keys():
                tensors[k] = f.get_tensor(k)
        self.meta = meta
        self.tensors = tensors
        for key in ("shiftserve.format_version", "shiftserve.name", "shiftserve.task", "shiftserve.graph",
                    "shiftserve.preprocess", "shiftserve.labels", "shiftserve.tensor_sha256",
                    "shiftserve.producer"):
            if key not in meta:
                raise FormatError(f"missing metadata key {key}")
        if meta["shiftserve.format_version"] != FORMAT_VERSION:
            raise FormatError(f"unsupported format version {meta['shiftserve.format_version']}")
        if meta["shiftserve.task"] not in TASKS:
            raise FormatError(f"unknown task {meta['shiftserve.task']}")
        if tensor_sha256(tensors) != meta["shiftserve.tensor_sha256"]:
            raise FormatError("tensor_sha256 mismatch")
        for k, t in tensors.items():
            if t.dtype not in (np.float32, np.int32, np.uint8):
                raise FormatError(f"tensor {k}: dtype {t.dtype} not allowed")
        self.name = meta["shiftserve.name"]
        self.task = meta["shiftserve.task"]
        self.graph = json.loads(meta["shiftserve.graph"])
        self.preprocess = json.loads(meta["shiftserve.preprocess"])
        self.labels = json.loads(meta["shiftserve.labels"])
        self.intents = json.loads(meta["shiftserve.intents"]) if "shiftserve.intents" in meta else None
        # optional softmax temperature (calibrated scores = softmax(logits / T)); None when absent
        self.temperature = float(meta["shiftserve.temperature"]) if "shiftserve.temperature" in meta else None
        if self.temperature is not None and not (math.isfinite(self.temperature) and self.temperature > 0):
            raise FormatError(f"shiftserve.temperature must be a positive finite number, got {self.temperature}")
        if len(self.graph["inputs"]) != 1 or len(self.graph["outputs"]) != 1:
            raise FormatError("exactly one graph input and one output")
        self.input_name = self.graph["inputs"][0]["name"]
        self.input_shape = [int(d) for d in self.graph["inputs"][0]["shape"]]
        nodes = self.graph["nodes"]
        known = {self.input_name}
        for n in nodes:
            for i in n["inputs"]:
                if i not in known:
                    raise FormatError(f"node {n['name']}: input {i} is not defined before it")
            if n["output"] in known:
                raise FormatError(f"node {n['name']}: duplicate value name {n['output']}")
            known.add(n["output"])
        if not nodes or nodes[-1]["output"] != self.graph["outputs"][0]["name"]:
            raise FormatError("the graph output must be produced by the last node")
        self._weights = {}

    def tensor(self, name, dtype=None, shape=None):
        if name not in self.tensors:
            raise FormatError(f"missing tensor {name}")
        t = self.tensors[name]
        if dtype is not None and t.dtype != dtype:
            raise FormatError(f"tensor {name}: dtype {t.dtype}, expected {np.dtype(dtype)}")
        if shape is not None and list(t.shape) != list(shape):
            raise FormatError(f"tensor {name}: shape {list(t.shape)}, expected {list(shape)}")
        return t

    def shift_weight(self, node, rows, cols):
        key = node["weight"]
        if key not in self._weights:
            bits, code = int(node["bits"]), node["code"]
            planes = self.tensor(key, np.uint8)
            self._weights[key] = unpack_planes(planes, bits, code, rows, cols)
        return self._weights[key]


# ----------------------------------------------------------------------------------------------
# ops (batch-first numpy f32 arrays)


def quantize_u8(x: np.ndarray, scale: float, zp: int) -> np.ndarray:
    """``clamp(round_half_even(x / scale) + zp, 0, 255)`` with f32 division (np.round is
    round-half-even)."""
    q = np.asarray(x, dtype=F32) / F32(scale)
    np.round(q, out=q)
    q += F32(zp)
    np.clip(q, 0, 255, out=q)
    return q.astype(np.uint8)


def _im2col(x: np.ndarray, kh, kw, sh, sw, ph, pw):
    """x [N, C, H, W] (any dtype holding exact values) -> cols [N, C*kh*kw, P], (oh, ow).
    Column order c = (ci * kh + y) * kw + x (PyTorch's weight.reshape(out, -1))."""
    n, c, h, w = x.shape
    oh = (h + 2 * ph - kh) // sh + 1
    ow = (w + 2 * pw - kw) // sw + 1
    if oh <= 0 or ow <= 0:
        raise FormatError("convolution output would be empty")
    xp = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=x.dtype)
    xp[:, :, ph:ph + h, pw:pw + w] = x
    cols = np.empty((n, c, kh, kw, oh, ow), dtype=x.dtype)
    for y in range(kh):
        for xx in range(kw):
            cols[:, :, y, xx] = xp[:, :, y:y + sh * oh:sh, xx:xx + sw * ow:sw]
    return cols.reshape(n, c * kh * kw, oh * ow), (oh, ow)


def _epilogue(y, node, residual, relu_key="relu"):
    if residual is not None:
        y = (y + residual).astype(F32)
    if node.get(relu_key, False):
        y = np.maximum(y, F32(0))
    return y.astype(F32)


def _shift_input(node, x):
    """Int8 path: ``q - zero_point`` as exact integers in float64 (so zero padding added later
    is exactly a quantised 0); float path: ``x`` unchanged."""
    if node["path"] == "int8":
        iq = node.get("input_quant")
        if not isinstance(iq, dict) or "scale" not in iq or "zero_point" not in iq:
            raise FormatError(f"node {node['name']}: int8 path needs input_quant {{scale, zero_point}}")
        scale, zp = F32(iq["scale"]), int(iq["zero_point"])
        if not (np.isfinite(scale) and scale > 0) or not 0 <= zp <= 255:
            raise FormatError(f"node {node['name']}: bad input_quant {iq}")
        return quantize_u8(x, scale, zp).astype(np.float64) - zp
    if node["path"] != "float":
        raise FormatError(f"node {node['name']}: unknown path {node['path']}")
    return x


def _shift_matmul(node, wint, cols):
    """wint [O, K] int64, cols [N, K, P] (int8 path: q - zp from _shift_input; float path: f32
    activations) -> y [N, O, P] f32 (before residual / ReLU)."""
    scale = node["_scale"]
    bias = node["_bias"]
    if node["path"] == "int8":
        iq = node["input_quant"]
        s_in = F32(iq["scale"])
        q = cols
        bound = 255 * int(np.abs(wint).sum(axis=1).max(initial=0))
        if bound < 2**52:
            # every product and partial sum is an integer below 2^53: float64 GEMM is exact
            acc = np.matmul(wint.astype(np.float64), q.astype(np.float64)).astype(np.int64)
        else:
            acc = np.einsum("ok,nkp->nop", wint, q.astype(np.int64))  # exact int64
        mult = (s_in * scale).astype(F32)  # formed once in f32
        return acc.astype(F32) * mult[None, :, None] + bias[None, :, None]
    wf = wint.astype(F32)
    n, k_dim, p = cols.shape
    acc = np.zeros((n, wf.shape[0], p), dtype=F32)
    tmp = np.empty_like(acc)
    for k in range(k_dim):  # ascending k, f32 adds of exact products
        np.multiply(wf[None, :, k, None], cols[:, None, k, :], out=tmp)
        acc += tmp
    return (acc * scale[None, :, None]).astype(F32) + bias[None, :, None]


def _conv_geom(node):
    kh, kw = node["kernel"]
    sh, sw = node["stride"]
    ph, pw = node["padding"]
    return int(kh), int(kw), int(sh), int(sw), int(ph), int(pw)


def op_shift_conv2d(mf, node, x, residual):
    n, c, h, w = x.shape
    cin, cout, groups = int(node["in_channels"]), int(node["out_channels"]), int(node["groups"])
    if c != cin:
        raise FormatError(f"node {node['name']}: input has {c} channels, expected {cin}")
    kh, kw, sh, sw, ph, pw = _conv_geom(node)
    k_dim = cin // groups * kh * kw
    wint = mf.shift_weight(node, cout, k_dim)
    node["_scale"] = mf.tensor(node["scale"], np.float32, [cout])
    node["_bias"] = mf.tensor(node["bias"], np.float32, [cout])
    x = _shift_input(node, x)
    outs = []
    og = cout // groups
    for gi in range(groups):
        xs = x[:, gi * (cin // groups):(gi + 1) * (cin // groups)]
        cols, (oh, ow) = _im2col(xs, kh, kw, sh, sw, ph, pw)
        sub = dict(node)
        sub["_scale"] = node["_scale"][gi * og:(gi + 1) * og]
        sub["_bias"] = node["_bias"][gi * og:(gi + 1) * og]
        outs.append(_shift_matmul(sub, wint[gi * og:(gi + 1) * og], cols))
    y = np.concatenate(outs, axis=1).reshape(n, cout, oh, ow)
    return _epilogue(y, node, residual)


def op_shift_linear(mf, node, x, residual):
    fin, fout = int(node["in_features"]), int(node["out_features"])
    if x.ndim != 2 or x.shape[1] != fin:
        raise FormatError(f"node {node['name']}: input shape {list(x.shape[1:])}, expected [{fin}]")
    wint = mf.shift_weight(node, fout, fin)
    node["_scale"] = mf.tensor(node["scale"], np.float32, [fout])
    node["_bias"] = mf.tensor(node["bias"], np.float32, [fout])
    y = _shift_matmul(node, wint, _shift_input(node, x)[:, :, None])[:, :, 0]
    return _epilogue(y, node, residual)


def op_conv2d(mf, node, x):
    cin, cout, groups = int(node["in_channels"]), int(node["out_channels"]), int(node["groups"])
    kh, kw, sh, sw, ph, pw = _conv_geom(node)
    w = mf.tensor(node["weight"], np.float32, [cout, cin // groups, kh, kw])
    b = mf.tensor(node["bias"], np.float32, [cout])
    y = F.conv2d(torch.from_numpy(x).double(), torch.from_numpy(w).double(), torch.from_numpy(b).double(),
                 (sh, sw), (ph, pw), 1, groups)
    return _epilogue(y.float().numpy(), node, None)


def op_linear(mf, node, x):
    fin, fout = int(node["in_features"]), int(node["out_features"])
    w = mf.tensor(node["weight"], np.float32, [fout, fin])
    b = mf.tensor(node["bias"], np.float32, [fout])
    y = x.astype(np.float64) @ w.astype(np.float64).T + b.astype(np.float64)
    return _epilogue(y.astype(F32), node, None)


def op_maxpool(node, x):
    kh, kw, sh, sw, ph, pw = _conv_geom(node)
    return F.max_pool2d(torch.from_numpy(x), (kh, kw), (sh, sw), (ph, pw)).numpy()


def op_avgpool(node, x):
    kh, kw, sh, sw, ph, pw = _conv_geom(node)
    y = F.avg_pool2d(torch.from_numpy(x).double(), (kh, kw), (sh, sw), (ph, pw), count_include_pad=True)
    return y.float().numpy()


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def _lstm_run(x, ih_fn, w_hh_fn, bias, hidden, mode):
    """x [N, 1, F, T]; ih_fn: [N, F] -> [N, 4H] float64; w_hh_fn: [N, H] -> [N, 4H]."""
    n, one, feat, t_len = x.shape
    if one != 1:
        raise FormatError("LSTM input must be [1, F, T]")
    seq = x[:, 0].astype(np.float64)
    h = np.zeros((n, hidden))
    c = np.zeros((n, hidden))
    total = np.zeros((n, hidden))
    for t in range(t_len):
        g = ih_fn(seq[:, :, t]) + w_hh_fn(h) + bias
        i, f, gg, o = (g[:, k * hidden:(k + 1) * hidden] for k in range(4))
        c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(gg)
        h = _sigmoid(o) * np.tanh(c)
        total += h
    out = h if mode == "last" else total / t_len
    return out.astype(F32)


def _lstm_mode(node):
    mode = node.get("output_mode")
    if mode not in ("last", "mean"):
        raise FormatError(f"node {node['name']}: output_mode must be 'last' or 'mean'")
    return mode


def op_lstm(mf, node, x):
    fin, hid = int(node["input_size"]), int(node["hidden_size"])
    w_ih = mf.tensor(node["w_ih"], np.float32, [4 * hid, fin]).astype(np.float64)
    w_hh = mf.tensor(node["w_hh"], np.float32, [4 * hid, hid]).astype(np.float64)
    b = mf.tensor(node["bias"], np.float32, [4 * hid]).astype(np.float64)
    return _lstm_run(x, lambda v: v @ w_ih.T, lambda h: h @ w_hh.T, b, hid, _lstm_mode(node))


def tt_apply(cores, in_modes, out_modes, v):
    """Contract v [N, prod(in_modes)] with an MPS (docs/format.md lstm_tt) -> [N, prod(out_modes)]
    without forming the matrix (float64)."""
    d = len(in_modes)
    n = v.shape[0]
    state = v.reshape(n, 1, -1)
    rest = state.shape[2]
    for k in range(d):
        g = cores[k]
        rest //= in_modes[k]
        state = state.reshape(n, g.shape[0], in_modes[k], rest)
        state = np.einsum("barz,arc->bcz", state, g)
    out = state.reshape(n, 1, -1)
    for k in range(d, 2 * d):
        g = cores[k]
        out = np.einsum("bpa,amc->bpmc", out, g).reshape(n, -1, g.shape[2])
    return out.reshape(n, -1)


def _tt_cores(mf, node, part, rows, cols):
    spec = node[part]
    in_modes = [int(m) for m in spec["in_modes"]]
    out_modes = [int(m) for m in spec["out_modes"]]
    ranks = [int(r) for r in spec["ranks"]]
    d = len(in_modes)
    if d == 0 or len(out_modes) != d or len(ranks) != 2 * d - 1:
        raise FormatError(f"node {node['name']}: bad {part} modes/ranks")
    if math.prod(in_modes) != cols or math.prod(out_modes) != rows:
        raise FormatError(f"node {node['name']}: {part} modes do not match the matrix shape")
    full = [1] + ranks + [1]
    modes = in_modes + out_modes
    names = spec.get("cores") or [f"{node['name']}.{part}.core{k + 1}" for k in range(2 * d)]
    if len(names) != 2 * d:
        raise FormatError(f"node {node['name']}: {part}.cores must name {2 * d} tensors")
    cores = [mf.tensor(names[k], np.float32, [full[k], modes[k], full[k + 1]]).astype(np.float64)
             for k in range(2 * d)]
    return cores, in_modes, out_modes


def op_lstm_tt(mf, node, x):
    fin, hid = int(node["input_size"]), int(node["hidden_size"])
    ih, ih_in, ih_out = _tt_cores(mf, node, "ih", 4 * hid, fin)
    hh, hh_in, hh_out = _tt_cores(mf, node, "hh", 4 * hid, hid)
    b = mf.tensor(node["bias"], np.float32, [4 * hid]).astype(np.float64)
    return _lstm_run(x, lambda v: tt_apply(ih, ih_in, ih_out, v), lambda h: tt_apply(hh, hh_in, hh_out, h),
                     b, hid, _lstm_mode(node))


#: ops whose f32 result is fully specified by docs/format.md (bit-reproducible by any correct
#: implementation, given bit-identical inputs); everything else (fp32 GEMMs, averages, LSTMs)
#: may differ in the last bits between implementations.
EXACT_OPS = {"shift_conv2d", "shift_linear", "maxpool2d", "flatten", "relu", "add"}


def quantization_margins(mf: ModelFile | str | Path, x) -> np.ndarray:
    """Per sample, the smallest distance (in units of the f32 ulp of the value) between an
    activation entering an int8 quantiser and the nearest rounding boundary ``(k + 0.5) * scale``,
    over the quantisers whose input is not bit-reproducible (downstream of an fp32 op).  A margin
    of a few ulps means an f32 implementation that rounds differently in the stem may flip one
    ``q`` by 1; golden inputs are chosen with large margins.  ``inf`` when no quantiser is at risk."""
    if not isinstance(mf, ModelFile):
        mf = ModelFile(mf)
    _, vals = forward(mf, x, return_all=True)
    exact = {mf.input_name: True}
    margins = np.full(len(x), np.inf)
    for node in mf.graph["nodes"]:
        ins_exact = all(exact[i] for i in node["inputs"])
        exact[node["output"]] = ins_exact and node["op"] in EXACT_OPS
        if node.get("path") == "int8" and not exact[node["inputs"][0]]:
            v = vals[node["inputs"][0]].astype(F32)
            scale = F32(node["input_quant"]["scale"])
            t = (v / scale).astype(np.float64)
            dist = np.abs(np.abs(t - np.floor(t)) - 0.5) * float(scale)
            ulp = np.spacing(np.abs(v)).astype(np.float64)
            m = (dist / ulp).reshape(len(x), -1).min(axis=1)
            margins = np.minimum(margins, m)
    return margins


def forward(mf: ModelFile | str | Path, x, return_all: bool = False, batch_size: int = 64):
    """Run the graph on a batch ``x [B, *input_shape]`` (f32).  Returns logits ``[B, classes]``
    (and the dict of all values when ``return_all``).  Large batches are processed in chunks of
    ``batch_size`` (results do not depend on it)."""
    if not isinstance(mf, ModelFile):
        mf = ModelFile(mf)
    x = np.ascontiguousarray(np.asarray(x, dtype=F32))
    if x.ndim != len(mf.input_shape) + 1 or list(x.shape[1:]) != mf.input_shape:
        raise FormatError(f"input shape {list(x.shape[1:])}, expected {mf.input_shape}")
    if not return_all and len(x) > batch_size:
        return np.concatenate([_forward(mf, x[i:i + batch_size])[0] for i in range(0, len(x), batch_size)])
    out, vals = _forward(mf, x)
    return (out, vals) if return_all else out


def _forward(mf: ModelFile, x):
    vals = {mf.input_name: x}
    for node in mf.graph["nodes"]:
        op = node["op"]
        ins = [vals[i] for i in node["inputs"]]
        if op == "shift_conv2d":
            y = op_shift_conv2d(mf, node, ins[0], ins[1] if len(ins) > 1 else None)
        elif op == "shift_linear":
            y = op_shift_linear(mf, node, ins[0], ins[1] if len(ins) > 1 else None)
        elif op == "conv2d":
            y = op_conv2d(mf, node, ins[0])
        elif op == "linear":
            y = op_linear(mf, node, ins[0])
        elif op == "maxpool2d":
            y = op_maxpool(node, ins[0])
        elif op == "avgpool2d":
            y = op_avgpool(node, ins[0])
        elif op == "global_avgpool":
            y = ins[0].astype(np.float64).mean(axis=(2, 3)).astype(F32)
        elif op == "flatten":
            y = ins[0].reshape(ins[0].shape[0], -1)
        elif op == "add":
            if ins[0].shape != ins[1].shape:
                raise FormatError(f"node {node['name']}: add of different shapes")
            y = _epilogue((ins[0] + ins[1]).astype(F32), node, None)
        elif op == "relu":
            y = np.maximum(ins[0], F32(0))
        elif op == "lstm":
            y = op_lstm(mf, node, ins[0])
        elif op == "lstm_tt":
            y = op_lstm_tt(mf, node, ins[0])
        else:
            raise FormatError(f"node {node['name']}: unknown op {op}")
        vals[node["output"]] = np.ascontiguousarray(y, dtype=F32)
    return vals[mf.graph["nodes"][-1]["output"]], vals


def main(argv=None):
    """``shiftserve-ref MODEL INPUT...``: preprocess inputs (images / WAVs) as declared in the
    model file, run the reference forward and print the top predictions (compare with
    ``shiftserve run``)."""
    import argparse

    from .features import features

    ap = argparse.ArgumentParser(prog="shiftserve-ref", description=main.__doc__)
    ap.add_argument("model")
    ap.add_argument("inputs", nargs="+")
    ap.add_argument("--top", type=int, default=5)
    args = ap.parse_args(argv)
    mf = ModelFile(args.model)
    print(f"{mf.name}: task {mf.task}, input {mf.input_shape}, {len(mf.labels)} labels")
    for path in args.inputs:
        x = features(path, mf.preprocess)[None]
        logits = forward(mf, x)[0].astype(np.float64)
        p = np.exp(logits - logits.max())
        p /= p.sum()
        order = np.argsort(-p, kind="stable")[: args.top]
        print(path)
        for i in order:
            extra = f"  {mf.intents[i]}" if mf.intents else ""
            print(f"  {p[i]:.4f}  {mf.labels[i]}{extra}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
