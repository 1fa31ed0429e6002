"""Ray Serve application of the ``fashion`` model (scripts/bench-serving).

``POST /fashion/predict`` with an encoded image as the raw body (e.g. ``Content-Type: image/png``)
answers the top-5 classes as JSON.  The model directory and variant come from the environment
(fashion_model.py).  This script starts a local single-node Ray cluster bound to 127.0.0.1
(no dashboard), Serve's HTTP proxy on ``--host``/``--port``, and the deployment; it stays in the
foreground until SIGTERM or SIGINT, then shuts Serve and Ray down.

Configuration for a small CPU box, following Ray Serve's documentation: one replica per core
(``num_replicas`` = the number of cores, ``num_cpus: 1`` each, one intra-op thread each),
dynamic batching with ``@serve.batch`` (``max_batch_size``, ``batch_wait_timeout_s``) and
``max_ongoing_requests`` twice the batch size so that a replica can fill a batch while it runs
one (Serve's guide asks for more than ``max_batch_size``).
"""

from __future__ import annotations

import argparse
import signal
import threading

import ray
from ray import serve
from starlette.requests import Request

from fashion_model import FashionModel


@serve.deployment
class Fashion:
    """Preprocessing per request, the model on batches of preprocessed images."""

    def __init__(self, max_batch_size: int, batch_wait_timeout_s: float) -> None:
        self.model = FashionModel.from_env(threads=1)
        self.infer.set_max_batch_size(max_batch_size)
        self.infer.set_batch_wait_timeout_s(batch_wait_timeout_s)

    @serve.batch
    async def infer(self, inputs: list) -> list[dict]:
        return [self.model.answer(row) for row in self.model.logits(inputs)]

    async def __call__(self, request: Request) -> dict:
        return await self.infer(self.model.decode(await request.body()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.partition("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--replicas", type=int, required=True)
    ap.add_argument("--max-batch-size", type=int, required=True)
    ap.add_argument("--batch-wait-timeout", type=float, required=True, help="seconds")
    args = ap.parse_args()

    for attempt in range(1, 4):
        try:
            ray.init(num_cpus=args.replicas, include_dashboard=False, _node_ip_address=args.host,
                     log_to_driver=False, configure_logging=False)
            break
        except Exception as e:  # noqa: BLE001  (Ray raises a bare Exception for this)
            # Ray waits a fixed 30 s for its raylet to register; on a busy machine it may not.
            if "timed out during startup" not in str(e) or attempt == 3:
                raise
            print(f"ray.init: {e}; retrying ({attempt}/3)", flush=True)
            ray.shutdown()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):  # after ray.init, which installs its own
        signal.signal(sig, lambda *_: stop.set())
    try:
        for attempt in range(1, 4):
            try:
                serve.start(http_options={"host": args.host, "port": args.port})
                break
            except ray.exceptions.RayError as e:
                # Serve gives its HTTP proxy a fixed 60 s to start; on a busy machine it may not.
                if attempt == 3:
                    raise
                print(f"serve.start: {type(e).__name__}; retrying ({attempt}/3)", flush=True)
                serve.shutdown()
        app = Fashion.options(num_replicas=args.replicas, ray_actor_options={"num_cpus": 1},
                              max_ongoing_requests=2 * args.max_batch_size)
        serve.run(app.bind(args.max_batch_size, args.batch_wait_timeout), name="fashion",
                  route_prefix="/fashion/predict")
        print(f"ray serve ready on http://{args.host}:{args.port}/fashion/predict", flush=True)
        stop.wait()
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
