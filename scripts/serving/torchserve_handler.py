"""TorchServe handler of the ``fashion`` model (scripts/bench-serving).

Archived by scripts/bench_serving.py with ``torch-model-archiver``: the model file is the
archive's serialized file, the ONNX int8 export an extra file, and the archive's
``model-config.yaml`` holds the worker and batching settings plus a ``handler`` section with the
``variant`` (``torch`` or ``ort-int8``) and the intra-op ``threads`` of each worker.  A request is
``POST /predictions/fashion`` with an encoded image as the raw body; TorchServe hands the handler
a batch of them and sends each answer (top-5 classes) back as JSON.
"""

from __future__ import annotations

from pathlib import Path

from fashion_model import FashionModel


class FashionHandler:
    """TorchServe's handler protocol: ``initialize(context)`` once per worker, then
    ``handle(batch, context)`` -> one answer per request of the batch."""

    def __init__(self) -> None:
        self.model = None
        self.initialized = False

    def initialize(self, context) -> None:
        config = context.model_yaml_config.get("handler", {})
        self.model = FashionModel(Path(context.system_properties["model_dir"]), config["variant"],
                                  int(config.get("threads", 1)))
        self.initialized = True

    def handle(self, batch: list[dict], context) -> list[dict]:
        return self.model.predict([bytes(request.get("data") or request.get("body")) for request in batch])
