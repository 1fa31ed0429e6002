#!/usr/bin/env python3
"""Serving benchmark: shiftserve next to the model servers a PyTorch user would deploy instead.

Every server serves the bundled ``fashion`` model (models/repository/fashion, a DenseShift W3
ResNet-8 for Fashion-MNIST) on 127.0.0.1 and does the whole job per request: an HTTP POST of
loadtest/fixtures/shirt.png (Content-Type image/png) is decoded, preprocessed as the model file's
``shiftserve.preprocess`` says, classified, and answered with the top-5 labels and scores as JSON.

* shiftserve: ``shiftserve serve --model-repository models/repository`` (explicit model control,
  only ``fashion`` loaded), ``POST /v1/models/fashion/predict``; batching and threads as the
  model's config.toml says.
* peers (definitions in scripts/serving/): LitServe, BentoML, Ray Serve and TorchServe, each with
  two variants of the model: ``torch``, its PyTorch twin (rebuilt from the model file by
  scripts/bench_peers.py, fp32, eager) and ``ort-int8``, its ONNX export quantised to static QDQ
  int8 (also by scripts/bench_peers.py) under ONNX Runtime.  Each runs as recommended for a small
  CPU box: one worker process (replica) per core with one intra-op thread each, and dynamic
  batching where the server has it, with shiftserve's batch limits (``--max-batch-size``,
  ``--batch-delay-ms``); the report states each configuration.

Method.  Servers run one at a time: start, wait until ready, check the answer on the fixture
(every server must agree with shiftserve on the top-1 class; a disagreement is reported), then
for each concurrency C a warm-up of ``--warmup`` seconds (discarded) and a measured cell of
``--seconds`` seconds, then stop (the server's whole process tree).  The load generator is wrk
(scripts/serving/post_body.lua) in a closed loop: C connections, each sending its next request
when the previous answer arrives.  Throughput is answers with status < 400 per second; p50 and p99
are wrk's latency percentiles over all answers; errors are socket errors, timeouts (``--timeout``)
and answers with status >= 400.  "shiftserve / best peer" is shiftserve's throughput over the
highest peer throughput at the same concurrency; the p99 of the two is compared next to it.

Run it through scripts/bench-serving, which provides the packages (and wrk, and Java for
TorchServe).  Only the standard library is needed for ``--help``.  The ONNX exports are cached
like scripts/bench-peers caches them ($SHIFTSERVE_PEERS_CACHE, default ~/.cache/shiftserve/peers).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
ROOT = SCRIPTS.parent
SERVING = SCRIPTS / "serving"
sys.path.insert(0, str(SERVING))
import fashion_model  # noqa: E402  (standard library only at import)

peers = fashion_model.load_bench_peers()  # scripts/bench_peers.py: machine facts, rebuild, report

MODEL = "fashion"
REPOSITORY = ROOT / "models" / "repository"  # default of --repository
FIXTURE = ROOT / "loadtest" / "fixtures" / "shirt.png"
WRK_SCRIPT = SERVING / "post_body.lua"
HOST = "127.0.0.1"
PEERS = ("litserve", "bentoml", "ray", "torchserve")
PACKAGES = ("torch", "onnxruntime", "onnx", "litserve", "bentoml", "ray", "torchserve", "torch-model-archiver",
            "fastapi", "uvicorn")
STOP_GRACE_S = 20.0  # SIGTERM, then SIGKILL after this long
SETTLE_S = 2.0  # pause after a server has stopped, before the next one starts
log = peers.log


# ----------------------------------------------------------------------------------------------
# processes


def process_table() -> dict[int, tuple[int, int, int]]:
    """``{pid: (parent pid, session id, start time in clock ticks)}`` of every process in /proc."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        table[int(entry)] = (int(fields[1]), int(fields[3]), int(fields[19]))
    return table


class ServerProcess:
    """A server started as the leader of a new session, its output in a log file.

    :meth:`stop` ends it and every process it started: those still in its session (Ray, which
    moves its workers to process groups of their own) and its descendants (BentoML's circus,
    which starts every worker in a session of its own), including ones orphaned on the way."""

    def __init__(self, cmd: list[str], env: dict[str, str], cwd: Path, log_path: Path):
        self.log_path = log_path
        with open(log_path, "wb") as out:
            self.proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        self.members: dict[int, int] = {}  # pid -> start time, of every process seen in the tree

    def running(self) -> bool:
        return self.proc.poll() is None

    def _collect(self) -> None:
        """Add the session's processes and the leader's descendants to ``members``."""
        table = process_table()
        tree = {pid for pid, (_, sid, _) in table.items() if sid == self.proc.pid}
        tree.add(self.proc.pid)
        grew = True
        while grew:
            children = {pid for pid, (ppid, _, _) in table.items() if ppid in tree} - tree
            tree |= children
            grew = bool(children)
        for pid in tree & table.keys():
            self.members.setdefault(pid, table[pid][2])

    def _alive_members(self) -> list[int]:
        """Members still running as the same process (same start time, not a zombie)."""
        table = process_table()
        alive = []
        for pid, start in self.members.items():
            if pid in table and table[pid][2] == start:
                try:
                    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
                except OSError:
                    continue
                if state != "Z":
                    alive.append(pid)
        return alive

    def _signal_members(self, sig: int) -> None:
        for pid in self._alive_members():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        """SIGTERM to the leader's process group, SIGKILL to whatever is left after STOP_GRACE_S."""
        self._collect()
        if self.running():
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + STOP_GRACE_S
        while time.monotonic() < deadline and self._alive_members():
            if self.running():
                self._collect()
            time.sleep(0.2)
        for _ in range(50):
            if not self._alive_members():
                break
            self._signal_members(signal.SIGKILL)
            time.sleep(0.2)
        self.proc.wait()
        left = self._alive_members()
        if left:
            log(f"  warning: processes {left} of the server did not exit")

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: bytes | None = None, timeout: float = 10.0) -> tuple[int, bytes]:
    """``(status, body)`` of one request; status 0 when no answer came."""
    headers = {"Content-Type": "image/png"} if body is not None else {}
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (OSError, urllib.error.URLError):
        return 0, b""


# ----------------------------------------------------------------------------------------------
# servers


@dataclass
class Launch:
    """How one server is started and reached."""

    cmd: list[str]
    env: dict[str, str]
    predict_url: str
    ready_url: str | None = None  # GET answers 200 once every worker is up (None: predict only)


class Server:
    """One server with one variant of the model; subclasses say how it is launched."""

    kind = ""

    def __init__(self, variant: str, args: argparse.Namespace):
        self.variant = variant
        self.args = args

    @property
    def label(self) -> str:
        return f"{self.kind} {self.variant}"

    def setting(self) -> str:
        """The configuration, for the report."""
        raise NotImplementedError

    def launch(self, tmp: Path, port: int) -> Launch:
        raise NotImplementedError

    def ready(self, launch: Launch) -> bool:
        """True once the server accepts work with all its workers."""
        return launch.ready_url is None or http("GET", launch.ready_url, timeout=2)[0] == 200

    def peer_env(self, model_dir: Path) -> dict[str, str]:
        """What every Python peer gets: the model, the variant, one thread per worker."""
        return {fashion_model.MODEL_DIR_ENV: str(model_dir), fashion_model.VARIANT_ENV: self.variant,
                "PYTHONPATH": str(SERVING), "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}


class Shiftserve(Server):
    kind = "shiftserve"

    def __init__(self, binary: Path, args: argparse.Namespace):
        super().__init__("W3", args)
        self.binary = binary

    def setting(self) -> str:
        repository = self.args.repository
        config = model_config(repository)
        keys = ", ".join(f"{k} {json.dumps(v)}" for k, v in config.items() if k not in ("description", "version_policy"))
        shown = repository.relative_to(ROOT) if repository.is_relative_to(ROOT) else repository
        return (f"`shiftserve serve --model-repository {shown} --model-control-mode explicit --load-model {MODEL}`; "
                f"{MODEL}/config.toml: {keys}; preprocessing threads: one per CPU ({os.cpu_count()}); default "
                "logging (level info: single requests are logged at DEBUG, so not written; a summary line "
                "every 60 s)")

    def launch(self, tmp: Path, port: int) -> Launch:
        cmd = [str(self.binary), "serve", "--model-repository", str(self.args.repository), "--http-address", HOST,
               "--http-port", str(port), "--model-control-mode", "explicit", "--load-model", MODEL]
        base = f"http://{HOST}:{port}"
        return Launch(cmd, {}, f"{base}/v1/models/{MODEL}/predict", f"{base}/v2/models/{MODEL}/ready")


class LitServe(Server):
    kind = "litserve"

    def setting(self) -> str:
        a = self.args
        return (f"LitServer(accelerator=\"cpu\", workers_per_device={a.workers}, fast_queue=True): {a.workers} "
                f"inference processes and {a.workers} HTTP API processes (num_api_servers default: one per "
                f"inference worker); LitAPI(max_batch_size={a.max_batch_size}, batch_timeout="
                f"{a.batch_delay_ms / 1e3:g}); log_level \"warning\"; 1 intra-op thread per worker")

    def launch(self, tmp: Path, port: int) -> Launch:
        a = self.args
        cmd = [sys.executable, str(SERVING / "litserve_app.py"), "--host", HOST, "--port", str(port),
               "--workers", str(a.workers), "--max-batch-size", str(a.max_batch_size),
               "--batch-timeout", str(a.batch_delay_ms / 1e3)]
        base = f"http://{HOST}:{port}"
        return Launch(cmd, self.peer_env(a.model_dir), f"{base}/predict", f"{base}/health")


class BentoML(Server):
    kind = "bentoml"

    def setting(self) -> str:
        return (f"@bentoml.service(workers={self.args.workers}) (one process per core), the raw-body route a "
                "FastAPI app mounted with bentoml.asgi_app (async handler, the model inline in the worker's event loop); no "
                "adaptive batching (it needs a batchable API endpoint, which takes JSON/multipart batches, not "
                "a raw image); default logging (access log); 1 intra-op thread per worker")

    def launch(self, tmp: Path, port: int) -> Launch:
        cmd = [str(Path(sys.executable).parent / "bentoml"), "serve", "bentoml_service:Fashion",
               "--working-dir", str(SERVING), "--host", HOST, "--port", str(port)]
        env = self.peer_env(self.args.model_dir) | {
            fashion_model.WORKERS_ENV: str(self.args.workers), "BENTOML_HOME": str(tmp / "bentoml-home"),
            "BENTOML_DO_NOT_TRACK": "True"}
        base = f"http://{HOST}:{port}"
        return Launch(cmd, env, f"{base}/{MODEL}/predict", f"{base}/readyz")


class RayServe(Server):
    kind = "ray"

    def setting(self) -> str:
        a = self.args
        return (f"local Ray cluster (num_cpus={a.workers}, no dashboard); deployment num_replicas={a.workers}, "
                f"num_cpus 1 each, max_ongoing_requests={2 * a.max_batch_size}; @serve.batch(max_batch_size="
                f"{a.max_batch_size}, batch_wait_timeout_s={a.batch_delay_ms / 1e3:g}); Serve's HTTP proxy on "
                "127.0.0.1 (Ray's own cluster services listen on all interfaces: Ray has no option to "
                "restrict them); 1 intra-op thread per replica")

    def launch(self, tmp: Path, port: int) -> Launch:
        a = self.args
        cmd = [sys.executable, str(SERVING / "ray_app.py"), "--host", HOST, "--port", str(port),
               "--replicas", str(a.workers), "--max-batch-size", str(a.max_batch_size),
               "--batch-wait-timeout", str(a.batch_delay_ms / 1e3)]
        env = self.peer_env(a.model_dir) | {"RAY_USAGE_STATS_ENABLED": "0", "RAY_TMPDIR": str(tmp)}
        return Launch(cmd, env, f"http://{HOST}:{port}/{MODEL}/predict")


class TorchServe(Server):
    kind = "torchserve"

    def setting(self) -> str:
        a = self.args
        return (f"model-config.yaml: minWorkers = maxWorkers = {a.workers} (one per core), batchSize "
                f"{a.max_batch_size}, maxBatchDelay {a.batch_delay_ms:g} ms; .mar built by torch-model-archiver "
                "(model file as serialized file, ONNX int8 as extra file, custom handler); token auth off, "
                "gRPC on 127.0.0.1; default netty threads, queue and logging; 1 intra-op thread per worker")

    def launch(self, tmp: Path, port: int) -> Launch:
        a = self.args
        store, logs = tmp / "model-store", tmp / "logs"
        store.mkdir()
        config = tmp / "model-config.yaml"
        config.write_text(f"minWorkers: {a.workers}\nmaxWorkers: {a.workers}\nbatchSize: {a.max_batch_size}\n"
                          f"maxBatchDelay: {a.batch_delay_ms:g}\nresponseTimeout: {a.timeout}\n"
                          f"handler:\n  variant: {self.variant}\n  threads: 1\n")
        bin_dir = Path(sys.executable).parent
        subprocess.run([str(bin_dir / "torch-model-archiver"), "--model-name", MODEL, "--version", "1",
                        "--serialized-file", str(a.model_dir / fashion_model.MODEL_FILE),
                        "--extra-files", str(a.model_dir / fashion_model.ONNX_INT8),
                        "--handler", str(SERVING / "torchserve_handler.py"), "--config-file", str(config),
                        "--export-path", str(store)], check=True, capture_output=True)
        management, metrics, grpc_inference, grpc_management = (free_port() for _ in range(4))
        properties = tmp / "config.properties"
        properties.write_text("\n".join([
            f"inference_address=http://{HOST}:{port}", f"management_address=http://{HOST}:{management}",
            f"metrics_address=http://{HOST}:{metrics}", f"grpc_inference_address={HOST}",
            f"grpc_inference_port={grpc_inference}", f"grpc_management_address={HOST}",
            f"grpc_management_port={grpc_management}", "disable_token_authorization=true",
            "install_py_dep_per_model=false", ""]))
        cmd = [str(bin_dir / "torchserve"), "--start", "--foreground", "--ncs", "--ts-config", str(properties),
               "--model-store", str(store), "--models", f"{MODEL}={MODEL}.mar"]
        env = self.peer_env(a.model_dir) | {"LOG_LOCATION": str(logs), "METRICS_LOCATION": str(logs)}
        return Launch(cmd, env, f"http://{HOST}:{port}/predictions/{MODEL}",
                      f"http://{HOST}:{management}/models/{MODEL}")

    def ready(self, launch: Launch) -> bool:
        status, body = http("GET", launch.ready_url, timeout=2)
        if status != 200:
            return False
        workers = [w for model in json.loads(body) for w in model.get("workers", [])]
        return len(workers) >= self.args.workers and all(w.get("status") == "READY" for w in workers)


PEER_CLASSES = {cls.kind: cls for cls in (LitServe, BentoML, RayServe, TorchServe)}


# ----------------------------------------------------------------------------------------------
# load


@dataclass
class Cell:
    """One measured cell: wrk's counts and latency percentiles, and who used the CPU meanwhile."""

    answers: int  # completed answers, any status
    seconds: float
    errors: int  # socket errors + timeouts + status >= 400
    bad_status: int
    p50_ms: float
    p99_ms: float
    server_cpu: float = 0.0  # cores used by the server's processes during the cell
    others_cpu: float = 0.0  # cores used by every other process but wrk and this script
    others: str = ""  # the busiest of those, e.g. "cargo[123] 95%"
    client_cpu: float = 0.0  # cores used by wrk itself (it shares the machine with the server)

    @property
    def throughput(self) -> float:
        return (self.answers - self.bad_status) / self.seconds


@dataclass
class Request:
    """The request wrk sends over and over: a body file, its Content-Type, optional extra header."""

    body: Path
    content_type: str
    header: str = ""  # "Name: value"


PNG_REQUEST = Request(FIXTURE, "image/png")


def cpu_shares(before: dict, after: dict, seconds: float, server_pids: set[int], skip: set[int]) -> tuple[float, float, str]:
    """(cores used by ``server_pids``, cores used by the rest but ``skip``, the busiest of the rest)
    between two :func:`bench_peers.cpu_times` samples ``seconds`` apart."""
    tick = os.sysconf("SC_CLK_TCK")
    server = others = 0.0
    busy = []
    for pid, (comm, ticks) in after.items():
        if pid not in before or before[pid][0] != comm or pid in skip:
            continue
        share = (ticks - before[pid][1]) / tick / seconds
        if pid in server_pids:
            server += share
        else:
            others += share
            if share >= peers.BUSY_SHARE:
                busy.append((share, f"{comm}[{pid}]"))
    busy.sort(reverse=True)
    return server, others, ", ".join(f"{name} {share:.0%}" for share, name in busy[:4]) or "none"


def run_wrk(url: str, concurrency: int, seconds: int, args: argparse.Namespace, request: Request = PNG_REQUEST,
            server: ServerProcess | None = None) -> Cell:
    """One closed-loop wrk run of ``seconds`` at ``concurrency`` connections, sampling the CPU time
    of every process before and after (the server's process tree counted apart)."""
    cmd = ["wrk", f"-t{min(args.wrk_threads, concurrency)}", f"-c{concurrency}", f"-d{seconds}s",
           "--timeout", f"{args.timeout}s", "-s", str(WRK_SCRIPT), url]
    env = dict(os.environ, BENCH_BODY=str(request.body), BENCH_CONTENT_TYPE=request.content_type,
               BENCH_HEADER=request.header)
    if server is not None:
        server._collect()
    before, t0 = peers.cpu_times(), time.monotonic()
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = proc.communicate()
    after, elapsed = peers.cpu_times(), time.monotonic() - t0
    children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_cpu = ((children1.ru_utime - children0.ru_utime) + (children1.ru_stime - children0.ru_stime)) / elapsed
    lines = [line for line in stdout.splitlines() if line.startswith("BENCH_RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"`{' '.join(cmd)}` exited with {proc.returncode}:\n{stdout}{stderr}")
    r = json.loads(lines[-1].removeprefix("BENCH_RESULT "))
    errors = r["connect"] + r["read"] + r["write"] + r["status"] + r["timeout"]
    members = set(server.members) if server is not None else set()
    # wrk itself has exited (its CPU time is no longer in `after`); this script is skipped
    server_cpu, others_cpu, others = cpu_shares(before, after, elapsed, members, {os.getpid()})
    return Cell(r["requests"], r["duration_us"] / 1e6, errors, r["status"], r["p50_us"] / 1e3, r["p99_us"] / 1e3,
                server_cpu, others_cpu, others, client_cpu)


@dataclass
class Outcome:
    """What happened to one server: its answer on the fixture and its cells, or why it failed."""

    server: Server
    startup_s: float = 0.0
    load_at_start: float = 0.0
    answer: dict | None = None
    cells: dict[int, Cell] | None = None
    failure: str = ""


def wait_ready(server: Server, process: ServerProcess, launch: Launch, timeout: float) -> None:
    """Until the server is ready and answers the fixture with 200; raises if it dies or times out."""
    body = FIXTURE.read_bytes()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process.running():
            raise RuntimeError(f"exited with {process.proc.returncode} while starting; log:\n{process.tail()}")
        if server.ready(launch) and http("POST", launch.predict_url, body, timeout=5)[0] == 200:
            return
        time.sleep(0.5)
    raise RuntimeError(f"not ready after {timeout:g} s; log:\n{process.tail()}")


def measure(server: Server, tmp: Path, args: argparse.Namespace) -> Outcome:
    """Start the server, wait, verify, load it at every concurrency, stop it."""
    outcome = Outcome(server, load_at_start=os.getloadavg()[0])
    work = tmp / server.label.replace(" ", "-")
    work.mkdir()
    port = free_port()
    log(f"{server.label}: starting")
    process = None
    try:
        launch = server.launch(work, port)
        started = time.monotonic()
        process = ServerProcess(launch.cmd, dict(os.environ, **launch.env), work, work / "server.log")
        wait_ready(server, process, launch, args.start_timeout)
        outcome.startup_s = time.monotonic() - started
        status, body = http("POST", launch.predict_url, FIXTURE.read_bytes())
        outcome.answer = json.loads(body)
        log(f"{server.label}: ready after {outcome.startup_s:.1f} s; answer {status}: {top_k_text(outcome.answer)}")
        outcome.cells = {}
        for c in args.concurrency:
            if args.warmup:
                run_wrk(launch.predict_url, c, args.warmup, args)
            cell = outcome.cells[c] = run_wrk(launch.predict_url, c, args.seconds, args, server=process)
            log(f"  {server.label:<22} c={c:<4} {cell.throughput:9.1f} req/s  p50 {peers.fmt_ms(cell.p50_ms):>7} ms  "
                f"p99 {peers.fmt_ms(cell.p99_ms):>7} ms  errors {cell.errors}  server CPU {cell.server_cpu:.2f}  "
                f"others {cell.others_cpu:.2f} ({cell.others})")
    except (RuntimeError, OSError, ValueError, subprocess.CalledProcessError) as e:
        detail = e.stderr.decode(errors="replace") if isinstance(e, subprocess.CalledProcessError) else ""
        outcome.failure = f"{e}{detail}".strip()
        log(f"{server.label}: FAILED: {outcome.failure}")
    finally:
        if process is not None:
            process.stop()
        time.sleep(SETTLE_S)
    return outcome


# ----------------------------------------------------------------------------------------------
# the model


def model_file(repository: Path) -> Path:
    """The model file of the highest version of the model in the repository."""
    versions = [v for v in (repository / MODEL).iterdir() if v.name.isdigit() and (v / "model.safetensors").is_file()]
    if not versions:
        raise SystemExit(f"bench-serving: no {MODEL}/<version>/model.safetensors in {repository}")
    return max(versions, key=lambda v: int(v.name)) / "model.safetensors"


def model_config(repository: Path) -> dict:
    """The model's config.toml in the repository (empty if there is none)."""
    path = repository / MODEL / "config.toml"
    return tomllib.loads(path.read_text()) if path.is_file() else {}


def prepare_model(repository: Path, model_dir: Path) -> list[str]:
    """Copy the model file to ``model_dir`` with its ONNX int8 export (rebuilt and exported by
    scripts/bench_peers.py, cached as it caches them); returns notes for the report, including
    what the model and its two peer variants answer on the fixture in this process."""
    import onnxruntime
    import torch

    path = model_file(repository)
    mf = peers.read_model_file(path)
    cache = peers.CACHE / f"torch-{torch.__version__}_ort-{onnxruntime.__version__}"
    _, int8 = peers.export_onnx_pair(peers.torch_module(mf), mf.input_shape, f"{mf.name}-{mf.digest[:12]}", cache)
    model_dir.mkdir()
    shutil.copy2(path, model_dir / fashion_model.MODEL_FILE)
    shutil.copy2(int8, model_dir / fashion_model.ONNX_INT8)

    png = FIXTURE.read_bytes()
    answers = {v: fashion_model.FashionModel(model_dir, v).predict([png])[0] for v in fashion_model.VARIANTS}
    twin = fashion_model.FashionModel(model_dir, "torch")
    served = peers.reference_logits(path, twin.decode(png)[None], float_path=False)[0]
    answers["reference forward of the file as served (int8 activations)"] = twin.answer(served)
    return [f"model: {path} (sha256 {mf.digest[:12]}), input {'x'.join(map(str, mf.input_shape))}, "
            f"preprocess {json.dumps(twin.spec)}; ONNX int8 export {int8}",
            "in this process on the fixture: " + "; ".join(f"{k}: {top_k_text(a, 1)}" for k, a in answers.items())]


# ----------------------------------------------------------------------------------------------
# report


def top_k_text(answer: dict | None, k: int = 5) -> str:
    """``label score, ...`` of the first k predictions of an answer."""
    try:
        return ", ".join(f"{p['label']} {p['score']:.3f}" for p in answer["predictions"][:k])
    except (KeyError, TypeError, IndexError):
        return f"unexpected answer {json.dumps(answer)[:200]}"


def top1(answer: dict | None) -> int | None:
    try:
        return int(answer["predictions"][0]["index"])
    except (KeyError, TypeError, IndexError, ValueError):
        return None


def versions() -> str:
    """Versions of Python, the peer packages, Java and wrk."""
    found = [f"python {sys.version.split()[0]}"]
    for package in PACKAGES:
        try:
            found.append(f"{package} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{package} (not installed)")
    for cmd in (["java", "-version"], ["wrk", "-v"]):
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True)
            found.append(((proc.stdout + proc.stderr).splitlines() or ["?"])[0].strip())
        except OSError:
            found.append(f"{cmd[0]} (not found)")
    return ", ".join(found)


def best_peer(c: int, outcomes: list[Outcome]) -> tuple[Outcome, Cell] | None:
    """The peer with the highest throughput at concurrency ``c``."""
    measured = [(o, o.cells[c]) for o in outcomes if o.server.kind != "shiftserve" and o.cells and c in o.cells]
    return max(measured, key=lambda pair: pair[1].throughput, default=None)


def shiftserve_cell(c: int, outcomes: list[Outcome]) -> Cell | None:
    return next((o.cells.get(c) for o in outcomes if o.server.kind == "shiftserve" and o.cells), None)


def results_table(outcomes: list[Outcome], concurrency: list[int]) -> str:
    """Every server at every concurrency in one table, with throughput and p99 over the best peer's."""
    rows = []
    for c in concurrency:
        best = best_peer(c, outcomes)
        for o in outcomes:
            cell = (o.cells or {}).get(c)
            if cell is None:
                rows.append([str(c), o.server.label, "failed", "-", "-", "-", "-", "-", "-", "-"])
                continue
            if best is None or best[1].throughput == 0 or best[1].p99_ms == 0:
                ratios = ["-", "-"]
            else:
                ratios = [f"{cell.throughput / best[1].throughput:.2f}", f"{cell.p99_ms / best[1].p99_ms:.2f}"]
                if o.server.kind == "shiftserve":
                    ratios = [f"**{r}**" for r in ratios]
            rows.append([str(c), o.server.label, f"{cell.throughput:.1f}", peers.fmt_ms(cell.p50_ms),
                         peers.fmt_ms(cell.p99_ms), str(cell.errors), *ratios, f"{cell.server_cpu:.2f}",
                         f"{cell.others_cpu:.2f}"])
    header = ["clients", "server / variant", "req/s", "p50 ms", "p99 ms", "errors", "req/s ÷ best peer's",
              "p99 ÷ best peer's", "server CPU (cores)", "others' CPU (cores)"]
    return peers.markdown_table(header, rows)


def verdicts(outcomes: list[Outcome], concurrency: list[int]) -> list[str]:
    """One line per concurrency: shiftserve against the best peer and the target of issue 10."""
    lines = []
    for c in concurrency:
        shift, best = shiftserve_cell(c, outcomes), best_peer(c, outcomes)
        if shift is None or best is None:
            lines.append(f"* {c} clients: not available (a server failed)")
            continue
        o, cell = best
        ratio = shift.throughput / cell.throughput if cell.throughput else float("inf")
        p99_ok = shift.p99_ms <= cell.p99_ms
        met = ratio >= 5 and p99_ok
        lines.append(f"* {c} clients: shiftserve / best peer ({o.server.label}) = **{ratio:.2f}x** throughput "
                     f"({shift.throughput:.1f} vs {cell.throughput:.1f} req/s); p99 {peers.fmt_ms(shift.p99_ms)} vs "
                     f"{peers.fmt_ms(cell.p99_ms)} ms (shiftserve {'equal or better' if p99_ok else 'worse'}); "
                     f"target >= 5x at equal or better p99: **{'met' if met else 'missed'}**")
    return lines


def cells_busy_lines(outcomes: list[Outcome]) -> list[str]:
    """Cells during which other processes used at least BUSY_SHARE of a core, and which ones."""
    lines = []
    for o in outcomes:
        for c, cell in (o.cells or {}).items():
            if cell.others != "none":
                lines.append(f"* {o.server.label}, {c} clients: {cell.others}")
    return lines or ["* none: no other process used 5 % of a core or more during any measured cell"]


def machine_facts(binary: Path | None = None) -> dict:
    """What the report says about the machine at the start: call before anything is measured."""
    facts = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "load_before": peers.load_average()}
    log("sampling other processes for 1 s")
    facts["busy_before"] = peers.busy_processes()
    if binary is not None:
        facts["binary"] = binary
        facts["built"] = datetime.fromtimestamp(binary.stat().st_mtime, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return facts


def memory_total() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return "unknown"


def machine_lines(facts: dict, started: float, script: str) -> list[str]:
    """The report's header lines: machine, load, other processes, commit, binary, command line."""
    model, _ = peers.cpu_model_and_flags()
    u = os.uname()
    lines = [
        f"* date: {facts['date']}; the run took {time.time() - started:.0f} s",
        f"* machine: {u.nodename}, {model}, {os.cpu_count()} logical CPUs, {memory_total()} RAM, "
        f"Linux {u.release}; this script at nice {os.nice(0)}",
        f"* load average (1/5/15 min): before {facts['load_before']}, after {peers.load_average()}",
        f"* other processes using >= {peers.BUSY_SHARE:.0%} of a core over 1 s: before: {facts['busy_before']}; "
        f"after: {peers.busy_processes()}",
        f"* shiftserve: commit {peers.git_commit()}"
        + (f"; binary {facts['binary']} (modified {facts['built']}; copied at the start of the run)"
           if "binary" in facts else "")
        + f"; SHIFTSERVE_KERNEL={os.environ.get('SHIFTSERVE_KERNEL', '(unset: auto)')}",
        f"* command: `{script} {' '.join(sys.argv[1:])}`",
    ]
    return lines


def report(outcomes: list[Outcome], args, started: float, facts: dict, notes: list[str]) -> str:
    shift = next((o for o in outcomes if o.server.kind == "shiftserve"), None)
    configs = [f"* **{o.server.label}** ({f'ready after {o.startup_s:.1f} s' if o.cells is not None else 'failed'}; "
               f"1-min load average at its start {o.load_at_start:.2f}): {o.server.setting()}" for o in outcomes]
    answer_rows = []
    for o in outcomes:
        agree = "-" if o.server.kind == "shiftserve" else (
            "yes" if top1(o.answer) is not None and top1(o.answer) == top1(shift.answer if shift else None)
            else "**NO**")
        answer_rows.append([o.server.label, top_k_text(o.answer) if o.answer else "failed", agree])
    out = [
        "# shiftserve next to Python model servers: `fashion` over HTTP (scripts/bench-serving)",
        "",
        *machine_lines(facts, started, "scripts/bench-serving"),
        f"* versions: {versions()}",
        *(f"* {note}" for note in notes),
        f"* request: POST {FIXTURE.relative_to(ROOT)} ({FIXTURE.stat().st_size} bytes, Content-Type image/png); "
        "every server decodes, preprocesses, classifies and answers the top-5 classes as JSON",
        f"* load: wrk, {args.wrk_threads} thread(s), closed loop (each connection sends its next request when the "
        f"previous answer arrives), all on 127.0.0.1; per server and concurrency {args.warmup} s warm-up "
        f"(discarded), then {args.seconds} s measured; request timeout {args.timeout} s; req/s = answers with "
        "status < 400 per second; p50/p99 = wrk's latency percentiles over all answers; errors = socket "
        "errors + timeouts + status >= 400; server CPU = CPU time of the server's processes over the cell, "
        "others' CPU = that of every other process but wrk and this script",
        "* servers ran one at a time (start, wait until ready, check the answer, every concurrency, stop); "
        f"peers' dynamic batching: at most {args.max_batch_size} requests, at most {args.batch_delay_ms:g} ms wait "
        "for a batch to fill (shiftserve's config.toml unless --max-batch-size / --batch-delay-ms say otherwise)",
        "",
        "## Results",
        "",
        "Ratios are over the peer with the highest req/s at the same number of clients (the best peer: 1.00).",
        "",
        results_table(outcomes, args.concurrency),
        "",
        "Target of issue 10: shiftserve >= 5x the best peer's throughput at equal or better p99.",
        "",
        *verdicts(outcomes, args.concurrency),
        "",
        "Other processes using >= 5 % of a core during a measured cell (a busy machine makes that cell suspect):",
        "",
        *cells_busy_lines(outcomes),
        "",
        "## Servers",
        "",
        *configs,
        "",
        "Answers on the fixture (each server must agree with shiftserve on the top-1 class):",
        "",
        peers.markdown_table(["server / variant", "top-5", "same top-1 as shiftserve"], answer_rows),
        "",
    ]
    for o in outcomes:
        if o.failure:
            out += [f"{o.server.label} failed:", "", "```", o.failure, "```", ""]
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------
# main


def name_list(known: tuple[str, ...]):
    def parse(text: str) -> list[str]:
        names = [n.strip() for n in text.split(",") if n.strip()]
        unknown = sorted(set(names) - set(known))
        if not names or unknown:
            raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {','.join(known)}, got {text!r}")
        return names
    return parse


def parse_args(argv=None) -> argparse.Namespace:
    first_line, _, rest = __doc__.partition("\n\n")
    ap = argparse.ArgumentParser(
        prog="scripts/bench-serving", description=first_line, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=rest + "\nEnvironment: SHIFTSERVE_SERVING_VENV (venv, used by the wrapper), SHIFTSERVE_PEERS_CACHE, "
                      "SHIFTSERVE_BIN (default of --shiftserve), CARGO_TARGET_DIR.")
    ap.add_argument("--concurrency", type=peers.int_list, default=[1, 8, 64], metavar="LIST",
                    help="concurrent connections, one cell each (default 1,8,64)")
    ap.add_argument("--seconds", type=int, default=15, metavar="S", help="measured seconds per cell (default 15)")
    ap.add_argument("--warmup", type=int, default=5, metavar="S",
                    help="warm-up seconds before each cell, discarded (default 5; 0: none)")
    ap.add_argument("--servers", type=name_list(PEERS), default=list(PEERS), metavar="LIST",
                    help=f"peer servers, in this order after shiftserve (default {','.join(PEERS)})")
    ap.add_argument("--variants", type=name_list(fashion_model.VARIANTS), default=list(fashion_model.VARIANTS),
                    metavar="LIST", help=f"model variants of each peer (default {','.join(fashion_model.VARIANTS)})")
    ap.add_argument("--workers", type=int, default=os.cpu_count(), metavar="N",
                    help=f"worker processes / replicas of each peer (default: one per CPU, {os.cpu_count()} here)")
    ap.add_argument("--max-batch-size", type=int, metavar="N",
                    help="peers' dynamic batching: largest batch (default: max_batch_size of the model's "
                         "config.toml in the repository)")
    ap.add_argument("--batch-delay-ms", type=float, metavar="MS",
                    help="peers' dynamic batching: longest wait for a batch to fill (default: max_queue_delay_us "
                         "of the model's config.toml in the repository)")
    ap.add_argument("--wrk-threads", type=int, default=1, metavar="N",
                    help="wrk threads (default 1; at most one per connection)")
    ap.add_argument("--timeout", type=int, default=30, metavar="S", help="request timeout in seconds (default 30)")
    ap.add_argument("--start-timeout", type=float, default=300, metavar="S",
                    help="longest wait for a server to become ready (default 300)")
    ap.add_argument("--repository", type=Path, default=REPOSITORY, metavar="DIR",
                    help="model repository shiftserve serves; the model file of every server is the highest "
                         f"version of {MODEL} in it (default models/repository)")
    ap.add_argument("--shiftserve", type=Path, default=os.environ.get("SHIFTSERVE_BIN"), metavar="PATH",
                    help="shiftserve binary (default: $SHIFTSERVE_BIN, else ${CARGO_TARGET_DIR:-target}"
                         "/release/shiftserve, built with `cargo build --release -p server` if missing)")
    args = ap.parse_args(argv)
    args.repository = args.repository.resolve()
    config = model_config(args.repository)
    if args.max_batch_size is None:
        args.max_batch_size = int(config.get("max_batch_size", 8))
    if args.batch_delay_ms is None:
        args.batch_delay_ms = float(config.get("max_queue_delay_us", 2000)) / 1e3
    if args.seconds < 1 or args.warmup < 0 or args.workers < 1 or args.max_batch_size < 1 or args.wrk_threads < 1:
        ap.error("--seconds, --workers, --max-batch-size and --wrk-threads must be at least 1, --warmup at least 0")
    if args.batch_delay_ms < 0 or args.timeout < 1:
        ap.error("--batch-delay-ms must be at least 0 and --timeout at least 1")
    return args


def raise_system_exit(signum, _frame):
    raise SystemExit(128 + signum)


def main(argv=None) -> int:
    args = parse_args(argv)
    for tool, why in (("wrk", "the load generator"), ("java", "TorchServe")):
        if shutil.which(tool) is None and (tool == "wrk" or "torchserve" in args.servers):
            sys.exit(f"bench-serving: {tool} ({why}) is not on PATH; scripts/bench-serving installs it")
    for sig in (signal.SIGTERM, signal.SIGHUP):  # unwind (and stop the running server) as on Ctrl-C
        signal.signal(sig, raise_system_exit)
    started = time.time()
    facts = machine_facts(peers.shiftserve_binary(args.shiftserve))
    binary = facts["binary"]

    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        tmp = Path(tmp)
        # every server runs this copy, so that a rebuild during the run cannot mix two builds
        snapshot = Path(shutil.copy2(binary, tmp / "shiftserve"))
        args.model_dir = tmp / "model"
        log("rebuilding the PyTorch twin and its ONNX int8 export")
        notes = prepare_model(args.repository, args.model_dir)
        servers: list[Server] = [Shiftserve(snapshot, args)]
        servers += [PEER_CLASSES[kind](variant, args) for kind in args.servers for variant in args.variants]
        outcomes = [measure(server, tmp, args) for server in servers]
    print(report(outcomes, args, started, facts, notes))
    return 1 if any(o.failure for o in outcomes) else 0


if __name__ == "__main__":
    raise SystemExit(main())
