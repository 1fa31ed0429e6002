"""The bundled ``fashion`` model as the Python servers of scripts/bench-serving run it.

Every peer server (LitServe, BentoML, Ray Serve, TorchServe) wraps the same :class:`FashionModel`,
so they differ only in how they serve it.  A model directory holds the shiftserve model file
``model.safetensors`` and its ONNX int8 export ``model-int8.onnx`` (written by
scripts/bench_serving.py).  Per request the model does the whole job shiftserve does:

* decode the image and preprocess it as the model file's ``shiftserve.preprocess`` spec says
  (``shiftserve_train.features.image_features``, the project's reference of shiftserve's image
  front end: decode, luma, resize, crop, x/255, invert, mean/std);
* run the model, in one of two variants:

  - ``torch``: the PyTorch twin, rebuilt from the model file by scripts/bench_peers.py
    (``torch.fx`` module, fp32, shift weights decoded to ``w * scale``), eager under
    ``torch.inference_mode()``;
  - ``ort-int8``: the QDQ int8 ONNX export (scripts/bench_peers.py: ``quant_pre_process``, static
    per-channel int8) under ONNX Runtime's CPU provider;

* answer the top-5 classes of the softmax as JSON, like shiftserve's task API:
  ``{"model": "fashion", "predictions": [{"label", "index", "score"}, ...]}``.

Servers started by scripts/bench_serving.py find the model directory and the variant in the
environment (``BENCH_SERVING_MODEL_DIR``, ``BENCH_SERVING_VARIANT``: :meth:`FashionModel.from_env`).
numpy, torch, onnxruntime and safetensors are imported where they are needed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1]
ROOT = SCRIPTS.parent
MODEL_FILE = "model.safetensors"
ONNX_INT8 = "model-int8.onnx"
VARIANTS = ("torch", "ort-int8")
TOP_K = 5
MODEL_DIR_ENV = "BENCH_SERVING_MODEL_DIR"
VARIANT_ENV = "BENCH_SERVING_VARIANT"
WORKERS_ENV = "BENCH_SERVING_WORKERS"  # read by servers configured by decorators (BentoML)


def load_bench_peers():
    """scripts/bench_peers.py as the module ``bench_peers`` (imported from its file)."""
    if "bench_peers" not in sys.modules:
        sys.dont_write_bytecode = True  # import from the repository without writing into it
        spec = importlib.util.spec_from_file_location("bench_peers", SCRIPTS / "bench_peers.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["bench_peers"] = module  # its dataclasses look their module up here
        spec.loader.exec_module(module)
    return sys.modules["bench_peers"]


def model_metadata(path: Path) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        return f.metadata() or {}


class FashionModel:
    """Preprocessing, one variant of the model and the top-5 answer, with ``threads`` threads."""

    def __init__(self, model_dir: Path, variant: str, threads: int = 1):
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r} (known: {', '.join(VARIANTS)})")
        sys.dont_write_bytecode = True
        if str(ROOT / "python") not in sys.path:
            sys.path.insert(0, str(ROOT / "python"))
        from shiftserve_train.features import image_features

        model_dir = Path(model_dir)
        meta = model_metadata(model_dir / MODEL_FILE)
        self.name = meta["shiftserve.name"]
        self.spec = json.loads(meta["shiftserve.preprocess"])
        self.labels = json.loads(meta["shiftserve.labels"])
        self.variant = variant
        self._features = image_features
        if variant == "torch":
            import torch

            torch.set_num_threads(threads)
            peers = load_bench_peers()
            self._module = peers.torch_module(peers.read_model_file(model_dir / MODEL_FILE))
            self._logits = self._torch_logits
        else:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            self._session = ort.InferenceSession(str(model_dir / ONNX_INT8), opts,
                                                 providers=["CPUExecutionProvider"])
            self._input = self._session.get_inputs()[0].name
            self._logits = self._ort_logits

    @classmethod
    def from_env(cls, threads: int = 1) -> FashionModel:
        """The model named by ``BENCH_SERVING_MODEL_DIR`` and ``BENCH_SERVING_VARIANT``."""
        return cls(Path(os.environ[MODEL_DIR_ENV]), os.environ[VARIANT_ENV], threads)

    def _torch_logits(self, batch):
        import torch

        with torch.inference_mode():
            return self._module(torch.from_numpy(batch)).numpy()

    def _ort_logits(self, batch):
        return self._session.run(None, {self._input: batch})[0]

    def decode(self, body: bytes):
        """Encoded image -> model input ``float32 [C, H, W]``."""
        return self._features(body, self.spec)

    def logits(self, inputs):
        """Inputs ``[C, H, W]`` (a list or a stacked array) -> logits ``[N, classes]``."""
        import numpy as np

        return self._logits(np.ascontiguousarray(np.stack(inputs), dtype=np.float32))

    def answer(self, logits) -> dict:
        """Logits of one input -> the JSON answer with the top-5 classes of the softmax."""
        import numpy as np

        z = np.asarray(logits, dtype=np.float64)
        p = np.exp(z - z.max())
        p /= p.sum()
        top = np.argsort(-p, kind="stable")[:TOP_K]
        return {"model": self.name,
                "predictions": [{"label": self.labels[i], "index": int(i), "score": float(p[i])} for i in top]}

    def predict(self, bodies: list[bytes]) -> list[dict]:
        """The whole job for a batch of encoded images: one answer per image."""
        return [self.answer(row) for row in self.logits([self.decode(b) for b in bodies])]
