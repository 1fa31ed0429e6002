"""LitServe server of the ``fashion`` model (scripts/bench-serving).

``POST /predict`` with an encoded image as the raw body (e.g. ``Content-Type: image/png``) answers
the top-5 classes as JSON.  The model directory and variant come from the environment
(fashion_model.py).  Configuration for a small CPU box, following LitServer's documentation:
``accelerator="cpu"`` with ``workers_per_device`` = the number of cores (one inference process
per core, one intra-op thread each), one HTTP API process per inference worker (the default of
``num_api_servers``), ZeroMQ queues (``fast_queue``, "for hundreds of requests per second"),
dynamic batching in the LitAPI (``max_batch_size``, ``batch_timeout``), log level ``warning``.
"""

# No `from __future__ import annotations`: LitServe hands the annotation of decode_request's
# `request` to FastAPI as the endpoint's parameter type, which must be a real object.
import argparse
from typing import Annotated

import litserve as ls
import numpy as np
from fastapi import Body

from fashion_model import FashionModel


class FashionAPI(ls.LitAPI):
    """Decode and preprocess each request, run batches through the model, answer top-5."""

    def setup(self, device):
        self.model = FashionModel.from_env(threads=1)

    def decode_request(self, request: Annotated[bytes, Body(media_type="image/png")]):
        # FastAPI passes a non-JSON body of a `bytes` parameter through as raw bytes.
        return self.model.decode(request)

    def batch(self, inputs):
        return np.stack(inputs)

    def predict(self, x):
        return self.model.logits(x)

    def unbatch(self, output):
        return list(output)

    def encode_response(self, output):
        return self.model.answer(output)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.partition("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--workers", type=int, required=True, help="inference worker processes")
    ap.add_argument("--max-batch-size", type=int, required=True)
    ap.add_argument("--batch-timeout", type=float, required=True, help="seconds")
    args = ap.parse_args()
    api = FashionAPI(max_batch_size=args.max_batch_size, batch_timeout=args.batch_timeout)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=args.workers, fast_queue=True)
    server.run(host=args.host, port=args.port, log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main()
