"""BentoML service of the ``fashion`` model (scripts/bench-serving).

``POST /fashion/predict`` with an encoded image as the raw body (e.g. ``Content-Type: image/png``)
answers the top-5 classes as JSON.  The model directory and variant come from the environment
(fashion_model.py); serve it with ``bentoml serve bentoml_service:Fashion``.

BentoML's own API endpoints only take JSON or multipart bodies, so the route is a FastAPI app
mounted in the service (``bentoml.asgi_app``, BentoML's documented way to add routes), which
reads the raw body.  Configuration for a small CPU box: ``workers="cpu_count"`` (one process per
core, one intra-op thread each), BentoML's recommendation for CPU-bound services, unless
``BENCH_SERVING_WORKERS`` gives the number of worker processes.  No adaptive
batching: BentoML batches only requests to a ``batchable`` API endpoint, each bringing its own
batch dimension, so batching single raw images would need a second service behind an extra
internal HTTP hop in front of the model.
"""

from __future__ import annotations

import os
from typing import Annotated

import bentoml
from fastapi import Body, FastAPI

from fashion_model import WORKERS_ENV, FashionModel

app = FastAPI()
WORKERS = int(os.environ[WORKERS_ENV]) if WORKERS_ENV in os.environ else "cpu_count"


@bentoml.service(workers=WORKERS, traffic={"timeout": 30})
@bentoml.asgi_app(app, path="/fashion")
class Fashion:
    """The model, loaded once per worker process."""

    def __init__(self) -> None:
        self.model = FashionModel.from_env(threads=1)

    @app.post("/predict")
    async def predict(self, body: Annotated[bytes, Body(media_type="image/png")]) -> dict:
        # The model runs inline in the worker's event loop: with one intra-op thread per worker,
        # FastAPI's thread pool (a sync handler) only adds thread switches and GIL contention
        # (measured here: same throughput at concurrency 8, a third of it at 64).
        return self.model.predict([body])[0]
