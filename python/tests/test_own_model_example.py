"""python/examples/own_model.py end to end, as a user runs it: Debian's Fashion-MNIST, a few hundred
training steps, export, `shiftserve inspect` / `shiftserve run`, publish into the repository of a
running server, which picks the model up (poll mode) or loads it on request (explicit mode).

Needs the `dataset-fashion-mnist` Debian package and a built server (`cargo build --release -p
server`; SHIFTSERVE_BIN overrides the path). scripts/test's python suite provides both; outside CI
the tests are skipped, with the reason, when either is missing.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "python/examples/own_model.py"
DATA = Path("/usr/share/datasets/fashion-mnist")
BIN = Path(os.environ.get("SHIFTSERVE_BIN") or ROOT / "target/release/shiftserve")


def _require(ok: bool, what: str):
    if not ok:
        if os.environ.get("CI"):
            pytest.fail(f"{what} (CI must provide it: scripts/test python)")
        pytest.skip(what)


@pytest.fixture(scope="module")
def prerequisites():
    _require(BIN.is_file() and os.access(BIN, os.X_OK),
             f"no shiftserve binary at {BIN}: cargo build --release -p server")
    _require((DATA / "train-images-idx3-ubyte.gz").is_file(),
             f"no Fashion-MNIST in {DATA}: apt-get install dataset-fashion-mnist")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return None, b""


class Server:
    """shiftserve serve on a free loopback port; stopped (SIGTERM, then waited for) on exit."""

    def __init__(self, repository: Path, *args: str):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = repository.parent / f"server-{self.port}.log"
        cmd = [str(BIN), "serve", "--http-address", "127.0.0.1", "--http-port", str(self.port),
               "--model-repository", str(repository), *args]
        self.proc = subprocess.Popen(cmd, stdout=open(self.log, "wb"), stderr=subprocess.STDOUT,
                                     # a free gRPC port too, where the server has gRPC
                                     env=dict(os.environ, SHIFTSERVE_LOG_LEVEL="info", SHIFTSERVE_GRPC_PORT="0"))
        deadline = time.time() + 120
        while _get(f"{self.url}/v2/health/ready")[0] != 200:
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                raise AssertionError(f"server not ready: {self.log.read_text()[-2000:]}")
            time.sleep(0.2)

    def models(self):
        status, body = _get(f"{self.url}/v1/models")
        assert status == 200, body
        return {m["name"]: m for m in json.loads(body)["models"]}

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=60)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


@pytest.fixture(scope="module")
def trained(prerequisites, tmp_path_factory):
    """Runs the example once, as the README says, against a server in poll mode that already
    serves the bundled fashion model."""
    base = tmp_path_factory.mktemp("own-model")
    repo = base / "repository"
    repo.mkdir()
    shutil.copytree(ROOT / "models/repository/fashion", repo / "fashion")
    with Server(repo, "--model-control-mode", "poll", "--repository-poll-secs", "1") as server:
        assert set(server.models()) == {"fashion"}
        t0 = time.time()
        run = subprocess.run(
            [sys.executable, str(EXAMPLE), "--repository", str(repo), "--work", str(base / "work"),
             "--server", server.url, "--shiftserve", str(BIN), "--summary", str(base / "summary.json")],
            capture_output=True, text=True, timeout=900)
        seconds = time.time() - t0
        print(run.stdout[-4000:], run.stderr[-4000:])
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        summary = json.loads((base / "summary.json").read_text())
        models = server.models()
    return {"base": base, "repo": repo, "summary": summary, "stdout": run.stdout, "models": models,
            "seconds": seconds}


def test_example_trains_exports_and_a_polling_server_serves_it(trained):
    s = trained["summary"]
    out = trained["stdout"]
    # The exported file classifies held-out test images far above chance (10 %), read by the
    # reference forward pass from the file alone.
    assert s["test_images"] == 1000 and s["test_accuracy_file"] >= 0.70, s
    # The CLI checks ran: inspect printed the file's header, run agreed with the reference.
    assert "weight bits  W3" in out and "numeric path int8" in out and '"background":"auto"' in out
    assert "ranks first the class the reference does, on all 10 sample PNGs" in out
    # Published as version 1 next to the bundled model, picked up by the poll, answered over HTTP
    # with the same ranking as `shiftserve run`.
    assert s["version"] == 1
    assert (trained["repo"] / "my-fashion/1/model.safetensors").is_file()
    assert not list((trained["repo"] / "my-fashion").glob(".staging*"))
    assert s["mode"] == "poll"
    assert set(trained["models"]) == {"fashion", "my-fashion"}
    assert trained["models"]["my-fashion"]["task"] == "image_classification"
    answer = s["server_answer"]
    assert answer["model"] == "my-fashion" and answer["version"] == "1"
    assert len(answer["predictions"]) == 3
    print(f"own_model.py end to end: {trained['seconds']:.0f} s, file accuracy {s['test_accuracy_file']:.3f}")


def test_explicit_mode_loads_a_new_version_through_the_load_api(trained):
    sys.path.insert(0, str(EXAMPLE.parent))
    import own_model

    repo = trained["repo"]
    model_file = Path(trained["summary"]["model_file"])
    sample = Path(trained["summary"]["samples"][0])
    with Server(repo, "--model-control-mode", "explicit", "--load-model", "fashion") as server:
        assert set(server.models()) == {"fashion"}  # my-fashion is in the repository, not loaded
        version = own_model.publish(model_file, repo, "my-fashion")
        assert version == 2
        assert own_model.wait_until_served(server.url, "my-fashion", version, timeout=60) == "explicit"
        answer = own_model.predict(server.url, "my-fashion", sample)
        assert answer["model"] == "my-fashion" and answer["version"] == "2"
        assert answer["predictions"][0]["label"] in own_model.LABELS


def test_a_server_without_model_control_explains_what_to_do(trained, tmp_path):
    sys.path.insert(0, str(EXAMPLE.parent))
    import own_model

    repo = tmp_path / "repository"
    shutil.copytree(ROOT / "models/repository/fashion", repo / "fashion")
    with Server(repo) as server:  # default mode: none
        version = own_model.publish(Path(trained["summary"]["model_file"]), repo, "my-fashion")
        with pytest.raises(SystemExit) as err:
            own_model.wait_until_served(server.url, "my-fashion", version, timeout=3)
        msg = str(err.value)
        assert "--model-control-mode none" in msg and "restart it" in msg and "poll" in msg
        assert set(server.models()) == {"fashion"}
