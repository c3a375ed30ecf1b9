"""An exported folder run without the JAX model: `ExportedModel` reads its `export.json` and calls
its graph with onnxruntime (`model.onnx`), the deserialized `jax.export` call (`model.stablehlo`) or
LiteRT's interpreter (`model.tflite`). The pipelines and `predict` run exported folders through it;
the writer (export.py, `python -m distilbert_jax.export`) checks what it wrote with it.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np

from distilbert_jax import hf, tasks
from distilbert_jax.errors import UserError

MANIFEST = "export.json"  # what the graph takes and returns, beside the model file


class ExportError(UserError, ValueError):
    """An export cannot be made or loaded as asked: one sentence for the user."""


def is_exported(directory) -> bool:
    """Whether `directory` is a folder the export writer made (it holds export.json)."""
    return isinstance(directory, (str, os.PathLike)) and os.path.isfile(os.path.join(directory, MANIFEST))


class ExportedModel:
    """An exported folder called like its model: a batch of arrays (input_ids, attention_mask,
    token_type_ids; extra keys ignored) -> {output name: numpy array}, with onnxruntime, the
    deserialized jax.export call or LiteRT's interpreter. `config` is the source model's config
    (positions, labels)."""

    def __init__(self, directory: str):
        self.directory = os.fspath(directory)
        try:
            with open(os.path.join(self.directory, MANIFEST), encoding="utf-8") as f:
                self.manifest = json.load(f)
            self.config, _ = hf.read_config(self.directory)
        except (OSError, ValueError) as e:
            raise ExportError(f"{self.directory} is not a readable exported folder ({e}).") from None
        self.task, self.format = self.manifest["task"], self.manifest["format"]
        self.inputs, self.outputs = tuple(self.manifest["inputs"]), tuple(self.manifest["outputs"])
        path = os.path.join(self.directory, self.manifest["file"])
        if not os.path.isfile(path):
            raise ExportError(f"{self.directory} lacks its model file {self.manifest['file']}.")
        self._run = RUNNERS[self.format](path, self.outputs, self.task)

    @property
    def dynamic_shapes(self) -> bool:
        """Whether any shape runs at no extra cost (onnxruntime, LiteRT), or each new shape
        compiles (XLA)."""
        return self.format != "stablehlo"

    def __call__(self, batch: dict) -> dict[str, np.ndarray]:
        return dict(zip(self.outputs, self._run({k: np.asarray(batch[k]) for k in self.inputs})))


# Runners: (model file, output names, task) -> a call from {input name: array} (export.json's
# inputs, in their order) to the outputs, in the order given.

def _onnx_runner(path: str, outputs, task):
    session = onnx_session(path)
    return lambda feed: session.run(list(outputs), {k: a.astype(np.int64) for k, a in feed.items()})


# onnxruntime fuses each residual Add + LayerNormalization into SkipLayerNormalization when it loads
# a graph; on this project's AVX-512 CPU that kernel took 0.27 ms per call for MiniLM at 1x128
# against about 0.06 ms for the Add and LayerNormalization it replaces (one-thread profile), so the
# sessions here keep the pair (docs/export.md).
DISABLED_ONNXRUNTIME_FUSIONS = ("SkipLayerNormFusion",)


def onnx_session(path: str, options=None):
    """The onnxruntime CPU session an exported graph runs in (see DISABLED_ONNXRUNTIME_FUSIONS);
    `options`: onnxruntime.SessionOptions (threads, profiling), default onnxruntime's."""
    try:
        import onnxruntime
    except ImportError:
        raise ExportError(f"{os.path.dirname(path)} is an ONNX export; running it needs onnxruntime: "
                          "pip install 'distilbert-jax[onnxruntime]'.") from None
    return onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"],
                                        disabled_optimizers=list(DISABLED_ONNXRUNTIME_FUSIONS))


def _stablehlo_runner(path: str, outputs, task):
    with open(path, "rb") as f:
        exported = jax.export.deserialize(bytearray(f.read()))
    call = jax.jit(exported.call)
    return lambda feed: [np.asarray(o) for o in call(*(a.astype(np.int32) for a in feed.values()))]


def _litert_runner(path: str, outputs, task):
    """LiteRT's interpreter on every core: each row (each choice) padded to the next signature
    length and run alone, its per-token outputs cut back to the row's length."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        raise ExportError(f"{os.path.dirname(path)} is a LiteRT export; running it needs "
                          "ai-edge-litert: pip install 'distilbert-jax[litert-runtime]'.") from None
    interpreter = Interpreter(model_path=path, num_threads=os.cpu_count())
    runners = {int(key.rsplit("_", 1)[1]): interpreter.get_signature_runner(key)
               for key in interpreter.get_signature_list()}
    tokens = tasks.TASKS[task].per_token

    def run(feed):
        arrays = {k: a.astype(np.int32) for k, a in feed.items()}
        *lead, length = next(iter(arrays.values())).shape
        fit = min((n for n in runners if n >= length), default=None)
        if fit is None:
            raise ExportError(f"{os.path.dirname(path)} holds at most {max(runners)} tokens per row; "
                              f"this batch has {length}.")
        rows = []
        for index in np.ndindex(*lead):
            row = {k: np.pad(a[index], (0, fit - length)).reshape([1] * len(lead) + [fit])
                   for k, a in arrays.items()}
            result = runners[fit](**row)
            rows.append([result[n].reshape(result[n].shape[len(lead):])[:length] if n in tokens
                         else result[n].reshape(result[n].shape[len(lead):]) for n in outputs])
        return [np.stack([r[i] for r in rows]).reshape(*lead, *rows[0][i].shape) for i in range(len(outputs))]
    return run


RUNNERS = {"onnx": _onnx_runner, "stablehlo": _stablehlo_runner, "litert": _litert_runner}
