#!/usr/bin/env python3
"""shiftserve's added latency over bare compute at one client, and its throughput as clients grow.

Two measurements of the bundled ``fashion`` model on 127.0.0.1 (issue 10's targets: added latency
<= 100 us p50 at one client; no fall of throughput after its peak, e.g. at 512 clients):

* **Added latency.**  The same input, a deterministic 1x28x28 FP32 tensor (the one
  ``shiftserve bench`` feeds at batch 1: its generator, seed 0), is run two ways, alternately for
  ``--repeats`` rounds:

  - bare compute: ``shiftserve bench MODEL --batch 1 --threads T --seconds S`` (``Session::run`` in
    a loop in one process; T = ``threads`` of the model's config.toml, as the server runs it);
    its p50;
  - over HTTP: ``POST /v2/models/fashion/infer`` with that tensor as an OIP v2 binary tensor
    (``Inference-Header-Content-Length``; the answer is JSON logits and probabilities), wrk with
    one connection in a closed loop for S seconds; wrk's p50.

  Added latency = HTTP p50 - bare p50, per round; the report gives every round and the median.  It
  holds everything between the client's socket and the model: loopback TCP both ways, HTTP
  parsing, routing, decoding the tensor, admission and the batcher's hand-off to the executor,
  encoding the answer, and wrk's own time to send and receive.

* **Throughput as clients grow.**  The same request with wrk at each of ``--clients`` connections
  (default 1, 8, 64, 512): answers with status 200 per second, p50/p99, non-2xx answers (at 512
  clients the model's ``queue_capacity = 256`` is full: the rest wait for room, unread, up to its
  ``max_queue_wait_ms``, and get 429 only past it), and the
  fall from the peak: (peak req/s - req/s) / peak req/s at each number of clients past the peak.
  The sweep runs ``--sweeps`` times (default 3); each cell reports the median of its sweeps (and
  every sweep's req/s), and the fall is computed on the medians: one 10 s sample per cell is
  within the noise of a shared 2-core machine. wrk runs on the same cores as the server.

The server runs as ``shiftserve serve --model-repository models/repository --model-control-mode
explicit --load-model fashion`` (default logging: single requests at DEBUG, not written).  The
output is markdown on stdout, with the machine, commit, load average and the processes that used
the CPU during each cell; progress goes to stderr.

Needs wrk (scripts/bench-latency installs it from Debian) and only Python's standard library.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS))
sys.dont_write_bytecode = True
import bench_serving as bs  # noqa: E402  (standard library only at import)

peers = bs.peers
log = bs.log
MODEL = bs.MODEL
ADDED_TARGET_US = 100.0


def bench_input(length: int, seed: int) -> list[float]:
    """The input ``shiftserve bench`` feeds (server/src/cli.rs ``bench_input``): a 64-bit LCG,
    24 bits of each state mapped to [-1, 1) exactly (every value is a float32)."""
    a, c, mask = 6364136223846793005, 1442695040888963407, (1 << 64) - 1
    s = (seed * a + c) & mask
    out = []
    for _ in range(length):
        s = (s * a + c) & mask
        out.append(((s >> 40) / (1 << 24)) * 2.0 - 1.0)
    return out


def v2_binary_request(shape: list[int], values: list[float], path: Path) -> bs.Request:
    """An OIP v2 binary-tensor request body for a batch of one, written to ``path``."""
    data = struct.pack(f"<{len(values)}f", *values)
    header = json.dumps({"inputs": [{"name": "input", "shape": [1, *shape], "datatype": "FP32",
                                     "parameters": {"binary_data_size": len(data)}}]},
                        separators=(",", ":")).encode()
    path.write_bytes(header + data)
    return bs.Request(path, "application/octet-stream", f"Inference-Header-Content-Length: {len(header)}")


def post(url: str, request: bs.Request) -> tuple[int, bytes]:
    """One request as wrk sends it: ``(status, body)``."""
    import urllib.error
    import urllib.request

    name, _, value = request.header.partition(":")
    headers = {"Content-Type": request.content_type, name.strip(): value.strip()}
    req = urllib.request.Request(url, data=request.body.read_bytes(), method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def bare_compute(binary: Path, model: Path, threads: int, seconds: float) -> tuple[peers.Cell, str]:
    """p50/p90 of ``shiftserve bench`` at batch 1 and its output."""
    cmd = [str(binary), "bench", str(model), "--batch", "1", "--threads", str(threads), "--seconds", str(seconds)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` exited with {proc.returncode}:\n{proc.stdout}{proc.stderr}")
    row = peers.parse_bench_table(proc.stdout).get((threads, 1))
    if row is None:
        raise RuntimeError(f"no row for {threads} thread(s), batch 1 in:\n{proc.stdout}")
    return row, proc.stdout


def fmt_us(ms: float) -> str:
    return f"{ms * 1e3:.0f}"


def parse_args(argv=None) -> argparse.Namespace:
    first_line, _, rest = __doc__.partition("\n\n")
    ap = argparse.ArgumentParser(prog="scripts/bench-latency", description=first_line, epilog=rest,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=10, metavar="S",
                    help="measured seconds per cell, bare compute and HTTP alike (default 10)")
    ap.add_argument("--repeats", type=int, default=3, metavar="N",
                    help="rounds of (bare compute, HTTP at one client) (default 3)")
    ap.add_argument("--warmup", type=int, default=3, metavar="S",
                    help="warm-up seconds before each HTTP cell, discarded (default 3; 0: none)")
    ap.add_argument("--clients", type=peers.int_list, default=[1, 8, 64, 512], metavar="LIST",
                    help="connections of the throughput part (default 1,8,64,512)")
    ap.add_argument("--sweeps", type=int, default=3, metavar="N",
                    help="rounds of the client sweep; each cell reports its median (default 3)")
    ap.add_argument("--wrk-threads", type=int, default=1, metavar="N",
                    help="wrk threads (default 1; at most one per connection)")
    ap.add_argument("--timeout", type=int, default=30, metavar="S", help="request timeout in seconds (default 30)")
    ap.add_argument("--tolerance", type=float, default=3.0, metavar="PCT",
                    help="a fall from the peak within this many percent counts as no fall (default 3)")
    ap.add_argument("--repository", type=Path, default=bs.REPOSITORY, metavar="DIR",
                    help="model repository (default models/repository)")
    ap.add_argument("--shiftserve", type=Path, default=os.environ.get("SHIFTSERVE_BIN"), metavar="PATH",
                    help="shiftserve binary (default: $SHIFTSERVE_BIN, else ${CARGO_TARGET_DIR:-target}"
                         "/release/shiftserve, built with `cargo build --release -p server` if missing)")
    args = ap.parse_args(argv)
    if (args.seconds < 1 or args.repeats < 1 or args.sweeps < 1 or args.warmup < 0 or args.wrk_threads < 1
            or args.timeout < 1):
        ap.error("--seconds, --repeats, --sweeps, --wrk-threads and --timeout must be at least 1, --warmup at least 0")
    args.repository = args.repository.resolve()
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        sys.exit("bench-latency: wrk is not on PATH; scripts/bench-latency installs it")
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, bs.raise_system_exit)
    started = time.time()
    facts = bs.machine_facts(peers.shiftserve_binary(args.shiftserve))
    model = bs.model_file(args.repository)
    config = bs.model_config(args.repository)
    threads = int(config.get("threads", 1))
    rounds, cells, failure = [], {}, ""
    bench_out = ""
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        tmp = Path(tmp)
        binary = Path(shutil.copy2(facts["binary"], tmp / "shiftserve"))
        server = bs.Shiftserve(binary, argparse.Namespace(repository=args.repository))
        port = bs.free_port()
        launch = server.launch(tmp, port)
        url = f"http://{bs.HOST}:{port}/v2/models/{MODEL}/infer"
        process = bs.ServerProcess(launch.cmd, dict(os.environ, **launch.env), tmp, tmp / "server.log")
        try:
            bs.wait_ready(server, process, launch, 300)
            status, body = bs.http("GET", f"http://{bs.HOST}:{port}/v2/models/{MODEL}")
            shape = json.loads(body)["inputs"][0]["shape"][1:]
            length = 1
            for d in shape:
                length *= d
            request = v2_binary_request(shape, bench_input(length, 0), tmp / "request.bin")
            status, body = post(url, request)
            if status != 200:
                raise RuntimeError(f"the v2 binary request answered {status}: {body[:300]!r}")
            answer = json.loads(body)
            logits = next(o for o in answer["outputs"] if o["name"] == "logits")["data"]
            log(f"v2 binary request: 200, logits[:3] {logits[:3]}")
            if args.warmup:
                bs.run_wrk(url, 1, args.warmup, args, request)
            for r in range(args.repeats):
                bare, bench_out = bare_compute(binary, model, threads, args.seconds)
                cell = bs.run_wrk(url, 1, args.seconds, args, request, server=process)
                rounds.append((bare, cell))
                log(f"round {r + 1}: bare p50 {fmt_us(bare.p50)} us, HTTP p50 {fmt_us(cell.p50_ms)} us, added "
                    f"{fmt_us(cell.p50_ms - bare.p50)} us (others' CPU {cell.others_cpu:.2f}: {cell.others})")
            for sweep in range(args.sweeps):
                for c in args.clients:
                    if args.warmup:
                        bs.run_wrk(url, c, args.warmup, args, request)
                    cell = bs.run_wrk(url, c, args.seconds, args, request, server=process)
                    cells.setdefault(c, []).append(cell)
                    log(f"sweep {sweep + 1}, {c} clients: {cell.throughput:.1f} req/s (200), p50 "
                        f"{peers.fmt_ms(cell.p50_ms)} ms, p99 {peers.fmt_ms(cell.p99_ms)} ms, non-2xx "
                        f"{cell.bad_status}, errors {cell.errors}")
        except (RuntimeError, OSError, ValueError, KeyError, StopIteration) as e:
            failure = f"{type(e).__name__}: {e}"
            log(f"FAILED: {failure}")
        finally:
            process.stop()
    print(report(args, facts, started, model, config, rounds, cells, bench_out, failure))
    return 1 if failure else 0


def report(args, facts, started, model, config, rounds, cells, bench_out, failure) -> str:
    shown = model.relative_to(bs.ROOT) if model.is_relative_to(bs.ROOT) else model
    out = [
        "# shiftserve: added latency over bare compute, and throughput as clients grow (scripts/bench-latency)",
        "",
        *bs.machine_lines(facts, started, "scripts/bench-latency"),
        f"* model: {shown}; config.toml: threads {config.get('threads', 1)}, max_batch_size "
        f"{config.get('max_batch_size')}, instances {config.get('instances', 1)}, queue_capacity "
        f"{config.get('queue_capacity')}, max_queue_wait_ms {config.get('max_queue_wait_ms', '1000 (default)')}, "
        f"idle_spin_us {config.get('idle_spin_us', '0 (default)')}",
        "* input: the 1x28x28 FP32 tensor `shiftserve bench` feeds at batch 1; over HTTP as an OIP v2 binary "
        "tensor (`POST /v2/models/fashion/infer`, answer: JSON logits and probabilities)",
        f"* server: `shiftserve serve --model-repository ... --model-control-mode explicit --load-model {MODEL}`, "
        "default logging; wrk closed loop on 127.0.0.1, "
        f"{args.wrk_threads} thread(s); {args.warmup} s warm-up per HTTP cell, {args.seconds} s measured per cell",
        "",
    ]
    if failure:
        out += ["**The run failed:**", "", "```", failure, "```", ""]
    if rounds:
        rows, added = [], []
        for i, (bare, cell) in enumerate(rounds, 1):
            added.append(cell.p50_ms - bare.p50)
            rows.append([str(i), fmt_us(bare.p50), str(bare.calls), fmt_us(cell.p50_ms), fmt_us(cell.p99_ms),
                         str(cell.answers), fmt_us(added[-1]), f"{cell.others_cpu:.2f}"])
        median = statistics.median(added)
        out += [
            "## Added latency at one client",
            "",
            peers.markdown_table(["round", "bare p50 us", "bare runs", "HTTP p50 us", "HTTP p99 us", "HTTP answers",
                                  "added p50 us", "others' CPU (cores)"], rows),
            "",
            f"Added latency (HTTP p50 - bare p50), median of {len(added)} round(s): **{median * 1e3:.0f} us**; "
            f"target <= {ADDED_TARGET_US:.0f} us: **{'met' if median * 1e3 <= ADDED_TARGET_US else 'missed'}**.",
            "",
            "Last `shiftserve bench` output:",
            "",
            "```",
            bench_out.rstrip(),
            "```",
            "",
        ]
    if cells:
        # Per number of clients: the sweep with the median req/s stands for the cell.
        med = {c: sorted(runs, key=lambda x: x.throughput)[(len(runs) - 1) // 2] for c, runs in cells.items()}
        tput = {c: statistics.median(x.throughput for x in runs) for c, runs in cells.items()}
        peak_c = max(tput, key=lambda c: tput[c])
        peak = tput[peak_c]
        rows, worst = [], 0.0
        for c, cell in med.items():
            fall = (peak - tput[c]) / peak * 100 if peak and c > peak_c else None
            if fall is not None:
                worst = max(worst, fall)
            rows.append([str(c), f"{tput[c]:.1f}", " / ".join(f"{x.throughput:.0f}" for x in cells[c]),
                         peers.fmt_ms(cell.p50_ms), peers.fmt_ms(cell.p99_ms),
                         f"{sum(x.bad_status for x in cells[c])} of {sum(x.answers for x in cells[c])}",
                         str(sum(x.errors - x.bad_status for x in cells[c])),
                         "peak" if c == peak_c else (f"{fall:.1f} %" if fall is not None else "-"),
                         f"{cell.server_cpu:.2f}", f"{cell.client_cpu:.2f}", f"{cell.others_cpu:.2f}"])
        out += [
            "## Throughput as clients grow",
            "",
            f"Median of {args.sweeps} sweep(s) per cell (every sweep's req/s beside it); p50, p99 and CPU of the "
            "median sweep; answers and errors summed over the sweeps.",
            "",
            peers.markdown_table(["clients", "req/s (200), median", "req/s per sweep", "p50 ms", "p99 ms",
                                  "non-2xx answers", "socket errors + timeouts", "fall from peak",
                                  "server CPU (cores)", "wrk CPU (cores)", "others' CPU (cores)"], rows),
            "",
            f"Peak {peak:.1f} req/s at {peak_c} clients; largest fall after it: {worst:.1f} %; target no fall "
            f"(within {args.tolerance:g} %): **{'met' if worst <= args.tolerance else 'missed'}**.",
            "",
        ]
    busy = [f"* {label}: {cell.others}" for label, cell in
            [(f"added-latency round {i}", cell) for i, (_, cell) in enumerate(rounds, 1)]
            + [(f"{c} clients, sweep {i}", cell) for c, runs in cells.items() for i, cell in enumerate(runs, 1)]
            if cell.others != "none"]
    out += ["Other processes using >= 5 % of a core during a measured HTTP cell:", "",
            *(busy or ["* none"]), ""]
    return "\n".join(out)


if __name__ == "__main__":
    raise SystemExit(main())
