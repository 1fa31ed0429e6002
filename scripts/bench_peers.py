#!/usr/bin/env python3
"""Latency of shiftserve next to what a PyTorch user would deploy instead, measured in one run.

Part 1, ResNet-18 at 224x224 with random weights, for every thread count and batch size:

* shiftserve W3: ``shiftserve bench --synthetic resnet18-w3`` (its own timing loop; its table is
  parsed);
* ONNX Runtime int8: torchvision ``resnet18(weights=None)`` exported to ONNX (opset 17,
  TorchScript exporter, dynamic batch axis), ``quant_pre_process``, then ``quantize_static``
  (QDQ, per-channel, QInt8 weights, QUInt8 activations, MinMax calibration on random inputs);
* ONNX Runtime fp32: the same export, not quantised;
* PyTorch eager fp32: the torchvision module under ``torch.inference_mode()``.

Part 2 (``--bundled``), 1 thread: every bundled model made of convolutions is rebuilt as a
PyTorch module from its model file alone (the graph JSON; power-of-two weights decoded from their
bit planes and multiplied by their per-channel scale), checked against the reference forward of
``python/shiftserve_train``, exported and quantised as above, and timed with ONNX Runtime next to
``shiftserve bench FILE``.

Method.  A cell is one (engine, threads, batch).  Each cell makes 2 warm-up calls, then timed
calls on one fixed random input until ``--seconds`` have passed and at least 5 calls were made:
the loop (and defaults) of ``shiftserve bench``, which is run once per cell.  Latency is
wall-clock time per call.  For each configuration the engines run back to back, in forward order
in even repeats and in reverse order in odd ones, and the whole set is run ``--repeats`` times; a
reported figure is the median over repeats of the per-repeat median (nearest-rank percentiles, as
shiftserve computes them).  Ratios are shiftserve time / peer time in the same column: below 1
means shiftserve is faster.

Run it through scripts/bench-peers, which provides the packages.  numpy, torch, onnxruntime and
safetensors are imported inside the functions that need them, so ``--help`` needs none of them.
Exported ONNX files are cached in $SHIFTSERVE_PEERS_CACHE (default ~/.cache/shiftserve/peers).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import operator
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("SHIFTSERVE_PEERS_CACHE", Path.home() / ".cache" / "shiftserve" / "peers"))
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8")
OPSET = 17
WARMUP_CALLS = 2  # as `shiftserve bench --warmup` (default)
MIN_CALLS = 5  # as `shiftserve bench --min-iters` (default)
CALIB_INPUTS = 8  # random inputs for the int8 calibration
CHECK_INPUTS = 4  # random inputs for the numerical checks
RESNET_INPUT = (3, 224, 224)
BUSY_SHARE = 0.05  # a process using at least this share of one core counts as "running"
BUNDLED_OPS = {"conv2d", "shift_conv2d", "linear", "shift_linear", "maxpool2d", "avgpool2d",
               "global_avgpool", "flatten", "add", "relu"}


# ----------------------------------------------------------------------------------------------
# the machine


def cpu_model_and_flags() -> tuple[str, set[str]]:
    """CPU model name and feature flags from /proc/cpuinfo (first processor)."""
    model, flags = "unknown", set()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return model, flags
    for line in lines:
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model == "unknown":
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    return model, flags


def cpu_times() -> dict[int, tuple[str, int]]:
    """``{pid: (command, user + system clock ticks)}`` of every readable process in /proc."""
    times = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        times[int(entry)] = (comm, int(fields[11]) + int(fields[12]))
    return times


def busy_processes(seconds: float = 1.0, top: int = 8) -> str:
    """Processes other than this one that used at least BUSY_SHARE of a core over ``seconds``."""
    before = cpu_times()
    time.sleep(seconds)
    after = cpu_times()
    tick = os.sysconf("SC_CLK_TCK")
    busy = []
    for pid, (comm, ticks) in after.items():
        if pid != os.getpid() and pid in before:
            share = (ticks - before[pid][1]) / tick / seconds
            if share >= BUSY_SHARE:
                busy.append((share, f"{comm}[{pid}]"))
    busy.sort(reverse=True)
    return ", ".join(f"{name} {share:.0%}" for share, name in busy[:top]) or "none"


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def git_commit() -> str:
    """Short commit of the checkout, noting uncommitted changes (read-only git calls)."""
    env = dict(os.environ, GIT_OPTIONAL_LOCKS="0")
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], env=env,
                                capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "diff", "--quiet", "HEAD", "--"], env=env,
                               capture_output=True).returncode != 0
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"{commit} (working tree has uncommitted changes)" if dirty else commit


# ----------------------------------------------------------------------------------------------
# timing


@dataclass
class Cell:
    """One measured cell: latency of one call in ms per batch, and how many calls were timed."""

    p50: float
    p90: float
    calls: int


def percentile(sorted_ms: list[float], p: float) -> float:
    """Nearest-rank percentile of sorted data (the definition shiftserve uses)."""
    rank = math.ceil(p / 100 * len(sorted_ms))
    return sorted_ms[min(max(rank, 1), len(sorted_ms)) - 1]


def time_calls(call, seconds: float) -> Cell:
    """Warm up, then time ``call()`` until ``seconds`` have passed and MIN_CALLS were made."""
    for _ in range(WARMUP_CALLS):
        call()
    latencies = []
    start = time.perf_counter()
    while len(latencies) < MIN_CALLS or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        call()
        latencies.append((time.perf_counter() - t0) * 1e3)
    latencies.sort()
    return Cell(percentile(latencies, 50), percentile(latencies, 90), len(latencies))


def random_input(batch: int, shape, seed: int = 0):
    """Standard-normal f32 input ``[batch, *shape]`` (inputs of every model here are normalised)."""
    import numpy as np

    return np.random.default_rng(seed).standard_normal((batch, *shape), dtype=np.float32)


# ----------------------------------------------------------------------------------------------
# engines: each has .measure(threads, batch, seconds) -> Cell


def parse_bench_table(text: str) -> dict[tuple[int, int], Cell]:
    """Rows of the table(s) printed by ``shiftserve bench``, keyed by (threads, batch).

    A table starts at a header line ``threads batch iters p50 ms ...``; its rows are the lines
    right after it whose first seven fields are threads, batch, iters, p50, p90, p99 and samples/s
    (extra fields are ignored).  Every other line is ignored."""
    rows = {}
    in_table = False
    for line in text.splitlines():
        fields = line.split()
        if fields[:4] == ["threads", "batch", "iters", "p50"]:
            in_table = True
            continue
        if not in_table:
            continue
        try:
            threads, batch, iters = (int(v) for v in fields[:3])
            p50, p90, _p99, _throughput = (float(v) for v in fields[3:7])
        except ValueError:  # not a row (also: fewer than seven fields): the table has ended
            in_table = False
            continue
        rows[(threads, batch)] = Cell(p50, p90, iters)
    return rows


class ShiftserveBench:
    """``shiftserve bench`` of one model (``--synthetic NAME`` or a file), one process per cell."""

    def __init__(self, binary: Path, model_args: list[str]):
        self.binary = binary
        self.model_args = model_args
        self.last_output = ""  # stdout of the last cell, shown as is in the report

    def measure(self, threads: int, batch: int, seconds: float) -> Cell:
        cmd = [str(self.binary), "bench", *self.model_args, "--batch", str(batch),
               "--threads", str(threads), "--seconds", str(seconds)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"`{' '.join(cmd)}` exited with {proc.returncode}:\n{proc.stdout}{proc.stderr}")
        row = parse_bench_table(proc.stdout).get((threads, batch))
        if row is None:
            raise RuntimeError(f"no row for {threads} threads, batch {batch} in the output of "
                               f"`{' '.join(cmd)}`:\n{proc.stdout}")
        self.last_output = f"$ shiftserve {' '.join(cmd[1:])}\n{proc.stdout.rstrip()}"
        return row


class OrtModel:
    """An ONNX model under ONNX Runtime's CPU provider, one session per intra-op thread count."""

    def __init__(self, path: Path, input_shape):
        self.path = path
        self.input_shape = tuple(input_shape)
        self.sessions = {}

    def session(self, threads: int):
        import onnxruntime as ort

        if threads not in self.sessions:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            self.sessions[threads] = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        return self.sessions[threads]

    def run(self, x, threads: int = 1):
        sess = self.session(threads)
        return sess.run(None, {sess.get_inputs()[0].name: x})[0]

    def measure(self, threads: int, batch: int, seconds: float) -> Cell:
        sess = self.session(threads)
        feed = {sess.get_inputs()[0].name: random_input(batch, self.input_shape)}
        return time_calls(lambda: sess.run(None, feed), seconds)


class TorchEager:
    """A PyTorch module in eager mode under ``torch.inference_mode()``."""

    def __init__(self, module, input_shape):
        self.module = module
        self.input_shape = tuple(input_shape)

    def measure(self, threads: int, batch: int, seconds: float) -> Cell:
        import torch

        torch.set_num_threads(threads)
        x = torch.from_numpy(random_input(batch, self.input_shape))

        def call():
            with torch.inference_mode():
                self.module(x)

        return time_calls(call, seconds)


@dataclass
class Results:
    """Cells per (engine label, threads, batch), one per repeat, and the 1-minute load averages
    read after each configuration."""

    cells: dict[tuple[str, int, int], list[Cell]] = field(default_factory=dict)
    loads: list[float] = field(default_factory=list)

    def p50(self, label, threads, batch) -> float:
        return statistics.median(c.p50 for c in self.cells[(label, threads, batch)])

    def p90(self, label, threads, batch) -> float:
        return statistics.median(c.p90 for c in self.cells[(label, threads, batch)])


def measure_interleaved(engines: dict, configs: list[tuple[int, int]], seconds: float, repeats: int,
                        title: str, results: Results) -> None:
    """Measure every engine on every (threads, batch) configuration, engines back to back per
    configuration, their order reversed in every other repeat; cells are added to ``results``."""
    for rep in range(repeats):
        order = list(engines) if rep % 2 == 0 else list(reversed(engines))
        for threads, batch in configs:
            for label in order:
                cell = engines[label].measure(threads, batch, seconds)
                results.cells.setdefault((label, threads, batch), []).append(cell)
                log(f"  {title} [repeat {rep + 1}/{repeats}] {threads} thr b{batch}  {label:<14} "
                    f"{cell.p50:9.3f} ms/batch  ({cell.calls} calls)")
            results.loads.append(os.getloadavg()[0])


# ----------------------------------------------------------------------------------------------
# ONNX export and quantisation


class RandomCalibration:
    """Calibration data reader for ``quantize_static``: CALIB_INPUTS random inputs, one per call."""

    def __init__(self, input_name: str, input_shape):
        self.feeds = iter([{input_name: random_input(1, input_shape, seed=1000 + i)} for i in range(CALIB_INPUTS)])

    def get_next(self):
        return next(self.feeds, None)


def export_onnx_pair(module, input_shape, stem: str, cache: Path) -> tuple[Path, Path]:
    """Export ``module`` to ONNX fp32 (opset 17, TorchScript exporter, dynamic batch) and to the
    QDQ int8 model (``quant_pre_process`` then ``quantize_static``); cached in ``cache``."""
    fp32, int8 = cache / f"{stem}-fp32.onnx", cache / f"{stem}-int8.onnx"
    if fp32.exists() and int8.exists():
        return fp32, int8
    import torch
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    log(f"  exporting {stem} to ONNX fp32 and int8 in {cache}")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        raw, pre, quant = Path(tmp, "fp32.onnx"), Path(tmp, "pre.onnx"), Path(tmp, "int8.onnx")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # dynamo=False is deliberate
            torch.onnx.export(module, (torch.from_numpy(random_input(1, input_shape)),), str(raw),
                              opset_version=OPSET, dynamo=False, input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
        quant_pre_process(str(raw), str(pre))
        quantize_static(str(pre), str(quant), RandomCalibration("input", input_shape),
                        quant_format=QuantFormat.QDQ, per_channel=True,
                        weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8)
        os.replace(raw, fp32)
        os.replace(quant, int8)
    return fp32, int8


def max_abs(a) -> float:
    import numpy as np

    return float(np.max(np.abs(np.asarray(a, dtype=np.float64))))


def max_abs_diff(a, b) -> float:
    import numpy as np

    return max_abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))


# ----------------------------------------------------------------------------------------------
# bundled models: rebuild from the model file (docs/format.md)


@dataclass
class ModelFile:
    """What the rebuild needs from a shiftserve model file."""

    path: Path
    name: str
    graph: dict
    tensors: dict
    digest: str

    @property
    def input_shape(self) -> list[int]:
        return [int(d) for d in self.graph["inputs"][0]["shape"]]

    @property
    def ops(self) -> set[str]:
        return {node["op"] for node in self.graph["nodes"]}

    def tensor(self, node: dict, role: str):
        """The tensor named by attribute ``role`` of ``node`` (default ``<node>.<role>``)."""
        return self.tensors[node.get(role, f"{node['name']}.{role}")]


def read_model_file(path: Path) -> ModelFile:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata() or {}
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    return ModelFile(path, meta["shiftserve.name"], json.loads(meta["shiftserve.graph"]), tensors,
                     hashlib.sha256(path.read_bytes()).hexdigest())


def bundled_model_files() -> list[tuple[str, Path]]:
    """``(name, file)`` of the highest version of every model in models/repository."""
    found = []
    for model_dir in sorted(p for p in (ROOT / "models" / "repository").iterdir() if p.is_dir()):
        versions = [v for v in model_dir.iterdir() if v.name.isdigit() and (v / "model.safetensors").is_file()]
        if versions:
            found.append((model_dir.name, max(versions, key=lambda v: int(v.name)) / "model.safetensors"))
    return found


def decode_shift_weight(planes, bits: int, code: str, rows: int, cols: int):
    """Bit planes ``U8[bits, ceil(rows*cols/8)]`` -> integer weights ``int64[rows, cols]``: plane 0
    is the sign, planes 1.. the magnitude field ``m`` (LSB first); ``zero_free``: ``±2^m``,
    ``with_zero``: 0 if ``m == 0`` else ``±2^(m-1)``."""
    import numpy as np

    n = rows * cols
    bit = np.unpackbits(planes, axis=1, bitorder="little")[:, :n].astype(np.int64)
    m = sum(bit[1 + j] << j for j in range(bits - 1))
    if code == "zero_free":
        magnitude = np.left_shift(1, m)
    elif code == "with_zero":
        magnitude = np.where(m == 0, 0, np.left_shift(1, np.maximum(m - 1, 0)))
    else:
        raise ValueError(f"unknown weight code {code!r}")
    return np.where(bit[0] == 1, -magnitude, magnitude).reshape(rows, cols)


def float_weight(mf: ModelFile, node: dict, shape: tuple[int, ...]):
    """fp32 weight of a layer: as stored for fp32 ops; ``w * scale[o]`` for shift ops."""
    import numpy as np

    if not node["op"].startswith("shift_"):
        return mf.tensor(node, "weight").reshape(shape)
    rows, cols = shape[0], math.prod(shape[1:])
    w = decode_shift_weight(mf.tensor(node, "weight"), int(node["bits"]), node["code"], rows, cols)
    scale = mf.tensor(node, "scale").astype(np.float64)
    return (w * scale[:, None]).astype(np.float32).reshape(shape)


def torch_module(mf: ModelFile):
    """The model file's graph as a ``torch.fx.GraphModule`` in fp32, walked node by node: conv2d
    and shift_conv2d -> Conv2d, linear and shift_linear -> Linear (shift weights decoded to
    ``w * scale``), residual add and ReLU as in the file, pools, flatten.  Shift layers run in
    float (no activation quantisation)."""
    import torch
    import torch.nn.functional as F
    from torch import fx, nn

    root, graph = nn.Module(), fx.Graph()
    values = {mf.graph["inputs"][0]["name"]: graph.placeholder("x")}
    for index, node in enumerate(mf.graph["nodes"]):
        op, args = node["op"], [values[name] for name in node["inputs"]]
        geometry = tuple(tuple(int(v) for v in node.get(k, ())) for k in ("kernel", "stride", "padding"))
        if op in ("conv2d", "shift_conv2d", "linear", "shift_linear"):
            if op.endswith("conv2d"):
                cin, cout, groups = int(node["in_channels"]), int(node["out_channels"]), int(node.get("groups", 1))
                layer = nn.Conv2d(cin, cout, *geometry, groups=groups)
                shape = (cout, cin // groups, *geometry[0])
            else:
                layer = nn.Linear(int(node["in_features"]), int(node["out_features"]))
                shape = (int(node["out_features"]), int(node["in_features"]))
            layer.weight.data = torch.from_numpy(float_weight(mf, node, shape))
            layer.bias.data = torch.from_numpy(mf.tensor(node, "bias"))
            key = f"n{index}_" + re.sub(r"\W", "_", node["name"])
            root.add_module(key, layer)
            y = graph.call_module(key, (args[0],))
            if len(args) > 1:  # shift layers' residual input
                y = graph.call_function(operator.add, (y, args[1]))
        elif op == "maxpool2d":
            y = graph.call_function(F.max_pool2d, (args[0], *geometry))
        elif op == "avgpool2d":
            y = graph.call_function(F.avg_pool2d, (args[0], *geometry), {"count_include_pad": True})
        elif op == "global_avgpool":
            y = graph.call_function(F.adaptive_avg_pool2d, (args[0], 1))
            y = graph.call_function(torch.flatten, (y, 1))
        elif op == "flatten":
            y = graph.call_function(torch.flatten, (args[0], 1))
        elif op == "add":
            y = graph.call_function(operator.add, (args[0], args[1]))
        elif op == "relu":
            y = graph.call_function(torch.relu, (args[0],))
        else:
            raise ValueError(f"{mf.name}: op {op!r} has no rebuild here")
        if node.get("relu", False) and op != "relu":
            y = graph.call_function(torch.relu, (y,))
        values[node["output"]] = y
    graph.output(values[mf.graph["nodes"][-1]["output"]])
    return fx.GraphModule(root, graph).eval()


def reference_logits(path: Path, x, float_path: bool):
    """Logits of the package's reference forward (python/shiftserve_train/reference.py) of the
    file as stored, or with every shift layer switched to the format's float path."""
    sys.dont_write_bytecode = True  # import from the repository without writing into it
    if str(ROOT / "python") not in sys.path:
        sys.path.insert(0, str(ROOT / "python"))
    from shiftserve_train import reference

    mf = reference.ModelFile(path)
    if float_path:
        for node in mf.graph["nodes"]:
            if "path" in node:
                node["path"] = "float"
    return reference.forward(mf, x)


# ----------------------------------------------------------------------------------------------
# report


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def fmt_ms(ms: float) -> str:
    if ms >= 100:
        return f"{ms:.0f}"
    if ms >= 10:
        return f"{ms:.1f}"
    return f"{ms:.2f}" if ms >= 1 else f"{ms:.3f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """Markdown table with padded columns; every column but the first right-aligned."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells):
        return "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths, strict=True))) + " |"

    rule = "|" + "|".join("-" * (w + 1) + ("-" if i == 0 else ":") for i, w in enumerate(widths)) + "|"
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def config_label(threads: int, batch: int) -> str:
    return f"{threads} thread{'s' if threads > 1 else ''} b{batch}"


def latency_rows(results: Results, engines: dict[str, str], configs, stat: str, prefix: str = "") -> list[list[str]]:
    """Rows ``engine: ms per image`` per configuration, then the ratios ``shiftserve / ORT int8``
    and ``shiftserve / ORT fp32`` (``engines`` maps the keys of ``results`` to display names)."""
    get = results.p50 if stat == "p50" else results.p90
    rows = [[prefix + name] + [fmt_ms(get(key, t, b) / b) for t, b in configs] for key, name in engines.items()]
    for peer in ("ort-int8", "ort-fp32"):
        rows.append([f"{prefix}{engines['shiftserve']} / {engines[peer]}"]
                    + [f"{get('shiftserve', t, b) / get(peer, t, b):.2f}" for t, b in configs])
    return rows


def detail_table(measured: dict[str, Results], engines: dict[str, str], configs, with_p90: bool) -> str:
    """Per cell of every ``{row prefix: results}``: median ms per batch and per image, p90
    (optional), calls per repeat and the per-repeat medians (their spread shows the noise)."""
    header = ["engine", "threads", "batch", "p50 ms/batch", "p50 ms/image"]
    header += ["p90 ms/batch", "p90 ms/image"] if with_p90 else []
    header += ["calls per repeat", "per-repeat p50 ms/batch"]
    rows = []
    for prefix, results in measured.items():
        for t, b in configs:
            for key, name in engines.items():
                cells = results.cells[(key, t, b)]
                row = [prefix + name, str(t), str(b), fmt_ms(results.p50(key, t, b)),
                       fmt_ms(results.p50(key, t, b) / b)]
                if with_p90:
                    row += [fmt_ms(results.p90(key, t, b)), fmt_ms(results.p90(key, t, b) / b)]
                row += [" ".join(str(c.calls) for c in cells), " ".join(fmt_ms(c.p50) for c in cells)]
                rows.append(row)
    return markdown_table(header, rows)


# ----------------------------------------------------------------------------------------------
# main


def int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def parse_args(argv=None) -> argparse.Namespace:
    first_line, _, rest = __doc__.partition("\n\n")
    ap = argparse.ArgumentParser(
        prog="scripts/bench-peers", description=first_line, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=rest + "\nEnvironment: SHIFTSERVE_PEERS_VENV (venv, used by the wrapper), SHIFTSERVE_PEERS_CACHE,"
                      " SHIFTSERVE_BIN (default of --shiftserve), CARGO_TARGET_DIR.")
    ap.add_argument("--seconds", type=float, default=3.0, metavar="S", help="timed seconds per cell (default 3)")
    ap.add_argument("--threads", type=int_list, default=[1, 2], metavar="LIST", help="thread counts (default 1,2)")
    ap.add_argument("--batch", type=int_list, default=[1, 8], metavar="LIST", help="batch sizes (default 1,8)")
    ap.add_argument("--repeats", type=int, default=2, metavar="N", help="runs of the whole set of cells (default 2)")
    ap.add_argument("--shiftserve", type=Path, default=os.environ.get("SHIFTSERVE_BIN"), metavar="PATH",
                    help="shiftserve binary (default: $SHIFTSERVE_BIN, else ${CARGO_TARGET_DIR:-target}"
                         "/release/shiftserve, built with `cargo build --release -p server` if missing)")
    ap.add_argument("--bundled", action=argparse.BooleanOptionalAction, default=True,
                    help="also compare the bundled models, 1 thread (default: yes)")
    ap.add_argument("--p90", action="store_true", help="also report p90 latencies")
    args = ap.parse_args(argv)
    if args.repeats < 1 or args.seconds <= 0:
        ap.error("--repeats must be at least 1 and --seconds positive")
    return args


def shiftserve_binary(path: Path | None) -> Path:
    """The given binary, or the default one, built if it is missing."""
    if path is not None:
        if not path.is_file():
            sys.exit(f"bench-peers: no shiftserve binary at {path}")
        return path.resolve()
    path = ROOT / os.environ.get("CARGO_TARGET_DIR", "target") / "release" / "shiftserve"
    if not path.is_file():
        log(f"building {path}: cargo build --release -p server")
        subprocess.run(["cargo", "build", "--release", "-p", "server"], cwd=ROOT, check=True)
    return path


def resnet18_part(args, binary: Path, cache: Path, notes: list[str]) -> tuple[Results, list, str]:
    """ResNet-18 on the four engines for every (threads, batch); returns the results, the
    configurations and the output of the last ``shiftserve bench`` call."""
    import torch
    import torchvision

    torch.manual_seed(0)
    module = torchvision.models.resnet18(weights=None).eval()
    fp32, int8 = export_onnx_pair(module, RESNET_INPUT, "resnet18", cache)
    ort_fp32, ort_int8 = OrtModel(fp32, RESNET_INPUT), OrtModel(int8, RESNET_INPUT)
    x = random_input(CHECK_INPUTS, RESNET_INPUT, seed=7)
    with torch.inference_mode():
        logits = module(torch.from_numpy(x)).numpy()
    notes.append(f"ResNet-18 ONNX files (in {cache}): fp32 {fp32.stat().st_size / 1e6:.1f} MB, "
                 f"int8 {int8.stat().st_size / 1e6:.1f} MB; largest logit difference on {CHECK_INPUTS} random "
                 f"inputs: ORT fp32 vs PyTorch {max_abs_diff(ort_fp32.run(x), logits):.2g}, ORT int8 vs PyTorch "
                 f"{max_abs_diff(ort_int8.run(x), logits):.2g} (largest logit {max_abs(logits):.2g})")
    shiftserve = ShiftserveBench(binary, ["--synthetic", "resnet18-w3"])
    engines = {"shiftserve": shiftserve, "ort-int8": ort_int8, "ort-fp32": ort_fp32,
               "pytorch": TorchEager(module, RESNET_INPUT)}
    configs = [(t, b) for t in args.threads for b in args.batch]
    results = Results()
    measure_interleaved(engines, configs, args.seconds, args.repeats, "resnet18", results)
    return results, configs, shiftserve.last_output


def bundled_part(args, binary: Path, cache: Path, notes: list[str]) -> tuple[dict[str, Results], list, str]:
    """Rebuild, check, export and measure each bundled convolutional model at 1 thread; returns
    ``{"model: ": results}``, the configurations and the table of the numerical checks."""
    import numpy as np
    import torch

    configs = [(1, b) for b in args.batch]
    measured, checks = {}, []
    for model_name, path in bundled_model_files():
        mf = read_model_file(path)
        other_ops = sorted(mf.ops - BUNDLED_OPS)
        if other_ops or "shift_conv2d" not in mf.ops:
            why = f"op {', '.join(other_ops)} is not rebuilt here" if other_ops else "it has no shift_conv2d"
            notes.append(f"bundled model {model_name} skipped: {why} (only convolutional models are compared)")
            continue
        log(f"bundled model {model_name}: rebuild, check, export")
        module = torch_module(mf)
        x = random_input(CHECK_INPUTS, mf.input_shape, seed=7)
        with torch.inference_mode():
            ours = module(torch.from_numpy(x)).numpy()
        ref_float = reference_logits(path, x, float_path=True)
        ref_stored = reference_logits(path, x, float_path=False)
        fp32, int8 = export_onnx_pair(module, mf.input_shape, f"{model_name}-{mf.digest[:12]}", cache)
        ort_fp32, ort_int8 = OrtModel(fp32, mf.input_shape), OrtModel(int8, mf.input_shape)
        int8_out = ort_int8.run(x)
        checks.append([model_name, "x".join(map(str, mf.input_shape)), str(len(mf.graph["nodes"])),
                       f"{max_abs_diff(ours, ref_float):.2g}", f"{max_abs_diff(ours, ref_stored):.2g}",
                       f"{max_abs_diff(ort_fp32.run(x), ours):.2g}", f"{max_abs_diff(int8_out, ours):.2g}",
                       f"{int(np.sum(int8_out.argmax(1) == ref_stored.argmax(1)))}/{CHECK_INPUTS}",
                       f"{max_abs(ref_float):.3g}"])
        engines = {"shiftserve": ShiftserveBench(binary, [str(path)]), "ort-int8": ort_int8, "ort-fp32": ort_fp32}
        results = measured[f"{model_name}: "] = Results()
        measure_interleaved(engines, configs, args.seconds, args.repeats, model_name, results)
    check_header = ["model", "input", "nodes", "rebuild vs ref float", "rebuild vs ref int8 (served)",
                    "ORT fp32 vs rebuild", "ORT int8 vs rebuild", "same top-1: ORT int8, ref int8",
                    "largest logit"]
    return measured, configs, markdown_table(check_header, checks)


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.time()
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load_before = load_average()
    log("sampling other processes for 1 s")
    busy_before = busy_processes()
    binary = shiftserve_binary(args.shiftserve)
    built = datetime.fromtimestamp(binary.stat().st_mtime, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")

    import onnx
    import onnxruntime
    import torch
    import torchvision

    cache = CACHE / f"torch-{torch.__version__}_ort-{onnxruntime.__version__}"
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp:
        # every cell runs this copy, so that a rebuild during the run cannot mix two builds
        snapshot = Path(shutil.copy2(binary, Path(tmp, "shiftserve")))
        results, configs, shiftserve_output = resnet18_part(args, snapshot, cache, notes)
        measured, bconfigs, checks = bundled_part(args, snapshot, cache, notes) if args.bundled else ({}, [], "")
    load_after = load_average()
    busy_after = busy_processes()
    loads = [v for r in [results, *measured.values()] for v in r.loads]

    model, flags = cpu_model_and_flags()
    names = {"shiftserve": "shiftserve W3", "ort-int8": "ORT int8", "ort-fp32": "ORT fp32",
             "pytorch": "PyTorch eager fp32"}
    heading = ["engine"] + [config_label(t, b) for t, b in configs]
    out = [
        "# shiftserve next to ONNX Runtime and PyTorch (scripts/bench-peers)",
        "",
        f"* date: {date}; the run took {time.time() - started:.0f} s",
        f"* CPU: {model}, {os.cpu_count()} logical CPUs; flags: "
        + ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in CPU_FLAGS),
        f"* load average (1/5/15 min): before {load_before}, after {load_after}; 1-min load between "
        f"configurations {min(loads):.2f}-{max(loads):.2f}",
        f"* other processes using >= {BUSY_SHARE:.0%} of a core over 1 s: before: {busy_before}; after: {busy_after}",
        f"* onnxruntime {onnxruntime.__version__}, torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"onnx {onnx.__version__}, python {sys.version.split()[0]}",
        f"* shiftserve: commit {git_commit()}; binary {binary} (modified {built}; copied at the start of the run)",
        "* engines: shiftserve W3 = `shiftserve bench --synthetic resnet18-w3` (W3 weights, int8 path), one "
        "process per cell; ORT int8 = ONNX Runtime, QDQ static int8 (per-channel QInt8 weights, QUInt8 "
        "activations) after quant_pre_process; ORT fp32 = the same export unquantised; both CPUExecutionProvider, "
        "intra-op threads as the column, 1 inter-op thread, ORT_ENABLE_ALL, sequential; PyTorch eager fp32 = "
        "torchvision resnet18 under torch.inference_mode(), torch.set_num_threads as the column",
        f"* method: {args.repeats} repeat(s), {args.seconds:g} s per cell after {WARMUP_CALLS} warm-up calls "
        f"(at least {MIN_CALLS} timed calls); engines back to back per configuration, order reversed every other "
        "repeat; figure = median over repeats of the per-repeat median; wall-clock time per call; ratios = "
        "shiftserve time / peer time in the same column, < 1 means shiftserve is faster",
        *(f"* {note}" for note in notes),
        "",
        "## ResNet-18 224x224, random weights: median ms per image",
        "",
        markdown_table(heading, latency_rows(results, names, configs, "p50")),
    ]
    if args.p90:
        out += ["", "p90 ms per image:", "", markdown_table(heading, latency_rows(results, names, configs, "p90"))]
    out += ["", "Per cell:", "", detail_table({"": results}, names, configs, args.p90),
            "", "Output of the last `shiftserve bench` call on ResNet-18 (kernels, if it reports them):", "",
            "```", shiftserve_output, "```"]
    if measured:
        bnames = {"shiftserve": "shiftserve", "ort-int8": "ORT int8", "ort-fp32": "ORT fp32"}
        rows = [row for prefix, res in measured.items() for row in latency_rows(res, bnames, bconfigs, "p50", prefix)]
        out += ["",
                "## Bundled models against their own ONNX export, 1 thread: median ms per image",
                "",
                f"Rebuild check: largest absolute logit difference on {CHECK_INPUTS} random inputs. \"ref float\" "
                "is the package's reference forward with the shift layers on the format's float path (no activation "
                "quantisation: the function the rebuild computes); \"ref int8 (served)\" is the reference as stored, "
                "with 8-bit activations, as shiftserve serves it, so it also differs by the activation quantisation.",
                "",
                checks,
                "",
                markdown_table(["model: engine"] + [config_label(t, b) for t, b in bconfigs], rows),
                "",
                "Per cell:",
                "",
                detail_table(measured, bnames, bconfigs, args.p90)]
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
