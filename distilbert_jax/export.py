"""A checkpoint exported to run without this package: ONNX for onnxruntime (float32, or int8 by
onnxruntime's dynamic quantisation), a serialized `jax.export` (StableHLO) artefact, or LiteRT
(TFLite) for on-device runtimes (float32, or int8 by LiteRT's dynamic-range quantisation).

    python -m distilbert_jax.export --model=runs/sst2/model --format=onnx --quantize=int8 \\
        --output=exported/sst2 [--task=text-classification]

--model: any checkpoint the project reads (a fine-tuned `model/` folder, a Hugging Face folder or
hub id, `packaged:all-MiniLM-L6-v2`). --task: what the graph computes (its head and outputs); by
default the checkpoint's own head. The output folder is self-contained: the model file
(`model.onnx`, `model.stablehlo` or `model.tflite`), the tokenizer files, `config.json`,
`export.json` (what the graph takes and returns) and a README card with the measured agreement
with the source model. It appears whole or not at all. `dj.pipeline(task, model=OUT)` and
`predict --model=OUT` run it.

This module is the writer (and the command); what runs a folder, `ExportedModel` and the runners,
is `exported.py`, below the pipelines; what each task's graph computes is `tasks.TASKS`.

ONNX graphs take `input_ids`, `attention_mask` (and `token_type_ids` for BERT) as int64 with
dynamic batch and length axes, and name their outputs as transformers' (Optimum's) ONNX exports
do, so tools that read such a folder read this one. A StableHLO artefact takes the same inputs
as int32 and returns the outputs in `export.json`'s order. A LiteRT model takes them as int32
through one static signature per length, `length_16` ... `length_512` (batch 1; one choice for
multiple choice), and returns the outputs by name.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from distilbert_jax import hf, models, startup, storage, tasks
from distilbert_jax.config import BertConfig, ConfigError
from distilbert_jax.exported import MANIFEST, ExportedModel, ExportError
from distilbert_jax.exported import onnx_session  # noqa: F401 (export.onnx_session in docs, benchmarks)
from distilbert_jax.hf import CheckpointError
from distilbert_jax.pooling import (SENTENCE_TRANSFORMERS_FILES, PoolingError, l2_normalize, mean_pool,
                                    sentence_transformers_settings)
from distilbert_jax.tokenizer import Tokenizer, TokenizerError

FORMATS = {"onnx": "model.onnx", "stablehlo": "model.stablehlo", "litert": "model.tflite"}
QUANTIZATIONS = ("none", "int8")
# What each task's graph computes, (head, output names): `tasks.TASKS` as pairs (export.TASKS).
TASKS = {name: (spec.head, spec.outputs) for name, spec in tasks.TASKS.items()}
# Shapes (batch, length) the export is checked on: several batches and lengths, padding included.
CHECK_SHAPES = ((1, 8), (2, 16), (3, 37))
ONNX_EXTRA = "pip install 'distilbert-jax[export]'"
LITERT_EXTRA = "pip install 'distilbert-jax[litert]'"


# ------------------------------------------------------------------------------------------------
# The computation a graph holds
# ------------------------------------------------------------------------------------------------

def input_names(config) -> tuple[str, ...]:
    return ("input_ids", "attention_mask") + (("token_type_ids",) if isinstance(config, BertConfig) else ())


def graph_function(module, params, task: str, normalize: bool = False) -> Callable:
    """(input_ids, attention_mask[, token_type_ids]) -> the task's outputs, params baked in, in
    float32. `normalize`: the sentence embedding is L2-normalised (a Normalize module follows)."""
    names = input_names(module.config)
    outputs = tasks.TASKS[task].outputs

    def forward(*arrays):
        out = module.apply({"params": params}, **dict(zip(names, arrays)))
        if task == "sentence-embeddings":  # the pooling the sentence-embeddings pipeline does
            hidden = out.last_hidden_state.astype(jnp.float32)
            pooled = mean_pool(hidden, arrays[1])
            return hidden, l2_normalize(pooled) if normalize else pooled
        fields = {"last_hidden_state": getattr(out, "last_hidden_state", None)}
        fields.update({k: getattr(out, k, None) for k in ("logits", "start_logits", "end_logits")})
        return tuple(fields[k].astype(jnp.float32) for k in outputs)

    return forward


def _input_specs(task: str, count: int):
    """Symbolic batch (and choices) and length: one artefact for every shape."""
    dims = "B, C, L" if task == "multiple-choice" else "B, L"
    shape = jax.export.symbolic_shape(dims)
    return [jax.ShapeDtypeStruct(shape, jnp.int32) for _ in range(count)]


# ------------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------------

def export(model: str, output: str, *, format: str = "onnx", quantize: str = "none",
           task: str | None = None) -> str:
    """Exports checkpoint `model` into the new folder `output` (see the module docstring); returns
    `output`. Every argument is checked before anything is written."""
    if format not in FORMATS:
        raise ExportError(f"--format={format!r} is not one of {tuple(FORMATS)}.")
    if quantize not in QUANTIZATIONS:
        raise ExportError(f"--quantize={quantize!r} is not one of {QUANTIZATIONS}.")
    if quantize == "int8" and format == "stablehlo":
        raise ExportError("--quantize=int8 is onnxruntime's or LiteRT's quantisation: use it with "
                          "--format=onnx or --format=litert (a StableHLO artefact is float32).")
    if task is not None and task not in tasks.TASKS:
        raise ExportError(f"--task={task!r} is not one of {tuple(tasks.TASKS)}.")
    output = os.fspath(output)
    if storage.occupied(output):
        raise ExportError(f"--output={output} already exists and is not an empty folder; choose "
                          "a new one (nothing was written).")
    _require_tools(format)

    directory, config, task = _source(model, task)
    head = tasks.TASKS[task].head
    try:
        module, params = hf.load_quietly(directory, head)
    except (CheckpointError, ConfigError) as e:
        raise ExportError(str(e)) from None
    try:
        tokenizer = Tokenizer.from_pretrained(directory)
    except TokenizerError as e:
        raise ExportError(f"{model} has no usable tokenizer ({e}).") from None
    try:
        settings = sentence_transformers_settings(directory)
    except PoolingError as e:
        raise ExportError(str(e)) from None
    fn = graph_function(module, params, task, normalize=settings.get("normalize", False))

    with storage.atomic_folder(output, last=(MANIFEST,)) as staging:  # the manifest marks it whole
        names = input_names(config)
        outputs = tasks.TASKS[task].outputs
        model_path = os.path.join(staging, FORMATS[format])
        if format == "onnx":
            _write_onnx(fn, task, names, outputs, model_path, quantize)
        elif format == "litert":
            def pure(weights, *arrays):  # the weights as an argument: stored once, as variables
                return graph_function(module, weights, task, settings.get("normalize", False))(*arrays)
            _write_litert(pure, params, task, names, outputs, model_path, quantize, litert_lengths(config))
        else:
            _write_stablehlo(fn, task, len(names), model_path)
        module.config.to_json_file(os.path.join(staging, "config.json"),
                                   architectures=[type(module).__name__])
        tokenizer.save_pretrained(staging)
        for name in SENTENCE_TRANSFORMERS_FILES:
            if os.path.exists(os.path.join(directory, name)):
                os.makedirs(os.path.dirname(os.path.join(staging, name)), exist_ok=True)
                shutil.copyfile(os.path.join(directory, name), os.path.join(staging, name))
        manifest = {"format": format, "file": FORMATS[format], "quantize": quantize, "task": task,
                    "head": head, "family": config.model_type, "inputs": list(names),
                    "outputs": list(outputs), "source": os.fspath(model), "jax_version": jax.__version__}
        storage.write_json(os.path.join(staging, MANIFEST), manifest)
        exported = ExportedModel(staging)
        manifest["agreement"] = agreement(fn, exported, task, config)
        storage.write_json(os.path.join(staging, MANIFEST), manifest)
        storage.write_text(os.path.join(staging, "README.md"), _card(manifest))
    return output


def _source(model: str, task: str | None):
    """The checkpoint's directory and config, and the task to export (checked against its head)."""
    try:
        directory = hf.resolve(model)
        config, architectures = hf.read_config(directory)
    except (CheckpointError, ConfigError) as e:
        raise ExportError(str(e)) from None
    if os.path.exists(os.path.join(directory, MANIFEST)):
        raise ExportError(f"{model} is already an exported folder; export the checkpoint it came "
                          "from.")
    own = hf.head_from_architectures(config.model_type, architectures)
    if task is None:
        sentence = own == "base" and os.path.exists(os.path.join(directory, "modules.json"))
        task = "sentence-embeddings" if sentence else tasks.for_head(own).name
    head = tasks.TASKS[task].head
    if head != "base" and head != own:
        has = (architectures or ["a bare encoder"])[0]
        raise ExportError(f"{model} is {has}, which has no {head} head: --task={task} needs a "
                          f"{models.MODEL_CLASSES[config.model_type][head].__name__} checkpoint.")
    return directory, config, task


# What each format needs to be written (and checked), and the extra that installs it.
CONVERTERS = {"onnx": (("jax2onnx", "onnx", "onnxruntime"), ONNX_EXTRA),
              "litert": (("tensorflow", "ai_edge_litert"), LITERT_EXTRA), "stablehlo": ((), "")}


def _require_tools(format: str):
    modules, extra = CONVERTERS[format]
    for name in modules:
        try:
            __import__(name)
        except ImportError:
            raise ExportError(f"{format} export needs {name}, which is not installed: {extra}.") from None


def _write_onnx(fn, task, names, outputs, path, quantize):
    """jax2onnx converts the traced function; inputs become int64 (as transformers' exports take
    them) through a Cast in front; int8 is onnxruntime's dynamic quantisation (see `quantize_int8`)."""
    import onnx
    from jax2onnx import to_onnx
    with _quiet("onnx_ir", "jax2onnx"):
        # LayerNormalization as one native op (onnxruntime's fused kernel) instead of its parts
        proto = to_onnx(fn, _input_specs(task, len(names)), input_names=list(names),
                        output_names=list(outputs), model_name=f"distilbert_jax_{task}",
                        normalization_mode="prefer_native")
    proto = _int64_inputs(proto)
    onnx.checker.check_model(proto)
    if quantize == "none":
        onnx.save(proto, path)
        return
    float_path = path + ".float32"
    onnx.save(proto, float_path)
    quantize_int8(float_path, path)
    os.remove(float_path)


def _int64_inputs(proto):
    """The graph's int32 inputs taken as int64 and cast on entry (the graph's own ops stay int32)."""
    from onnx import TensorProto, helper
    graph = proto.graph
    casts = []
    for value in graph.input:
        if value.type.tensor_type.elem_type != TensorProto.INT32:
            continue
        inner = value.name + "__int32"
        for node in graph.node:
            node.input[:] = [inner if n == value.name else n for n in node.input]
        casts.append(helper.make_node("Cast", [value.name], [inner], to=TensorProto.INT32,
                                      name=f"{value.name}_to_int32"))
        value.type.tensor_type.elem_type = TensorProto.INT64
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(casts + nodes)  # the casts first: ONNX wants nodes in topological order
    return proto


def quantize_int8(source: str, target: str) -> None:
    """onnxruntime's dynamic int8 quantisation (as Optimum applies it) of every dense layer: int8
    weights with one scale per output channel, activations quantised per call; the embedding
    tables stay float32 (a lookup costs no arithmetic, and one scale over a 30k-row table is where
    the default recipe loses most of its labels).

    Measured on all-MiniLM-L6-v2 fine-tuned on SST-2 (872 dev rows) and MRPC (408): onnxruntime's
    default (per-tensor, tables quantised too) keeps 96.9% / 96.3% of float32's labels; per-channel
    97.7% / 99.3%; per-channel with the tables in float32 98.6% / 99.3% (docs/export.md has the table)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    with _quiet("root"):
        quantize_dynamic(source, target, per_channel=True, weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul", "Gemm"])


def litert_lengths(config) -> tuple[int, ...]:
    """The lengths a LiteRT export holds a signature for: inference's buckets (tasks.DEFAULT_BUCKETS)
    below the model's longest input, and that."""
    cap = config.max_position_embeddings
    return tuple(sorted({n for n in tasks.DEFAULT_BUCKETS if n < cap} | {cap}))


def _write_litert(pure, params, task, names, outputs, path, quantize, lengths):
    """jax2tf wraps `pure(params, *arrays)` as one tf.function per length, each a static-shape
    signature `length_<n>` (batch 1; one choice for multiple choice) that TFLiteConverter writes
    with builtin ops only; the weights are TensorFlow variables all of them share, so they are held
    (and written) once. Static, because a symbolic batch or length leaves shape arithmetic in the
    graph and keeps LiteRT's XNNPACK delegate off (MiniLM at 1x128: 400 ms against 22 ms,
    measured). int8 is LiteRT's dynamic-range
    quantisation (int8 weights, activations quantised per call; the embedding tables stay
    float32, as in the ONNX recipe)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up banner
    import tensorflow as tf
    from jax.experimental import jax2tf
    graph = jax2tf.convert(pure, with_gradient=False)
    holder = tf.Module()
    holder.params = tf.nest.map_structure(lambda x: tf.Variable(np.asarray(x), trainable=False), params)
    functions = []
    for length in lengths:
        shape = [1, 1, length] if task == "multiple-choice" else [1, length]

        def serve(*arrays):
            return dict(zip(outputs, graph(holder.params, *arrays)))
        serve.__name__ = f"length_{length}"  # the signature's key
        signature = [tf.TensorSpec(shape, tf.int32, name=n) for n in names]
        functions.append(tf.function(serve, input_signature=signature, autograph=False).get_concrete_function())
    converter = tf.lite.TFLiteConverter.from_concrete_functions(functions, holder)
    if quantize == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    with _quiet("absl", "tensorflow"):
        flatbuffer = converter.convert()
    with open(path, "wb") as f:
        f.write(flatbuffer)


def _write_stablehlo(fn, task, count, path):
    exported = jax.export.export(jax.jit(fn))(*_input_specs(task, count))
    with open(path, "wb") as f:
        f.write(exported.serialize())


class _quiet:
    """Silences the named loggers' warnings (the converters' notes about their own internals)."""

    def __init__(self, *names):
        self.loggers = [logging.getLogger(n) for n in names]

    def __enter__(self):
        self.levels = [lg.level for lg in self.loggers]
        for lg in self.loggers:
            lg.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        for lg, level in zip(self.loggers, self.levels):
            lg.setLevel(level)


# ------------------------------------------------------------------------------------------------
# Agreement with the source model, and the card
# ------------------------------------------------------------------------------------------------

def check_inputs(config, task: str, batch: int, length: int, seed: int = 0) -> list[np.ndarray]:
    """Random ids (no special meaning needed) with every row but the first padded at its end."""
    rng = np.random.default_rng(seed)
    shape = (batch, 2, length) if task == "multiple-choice" else (batch, length)
    ids = rng.integers(1, config.vocab_size, shape).astype(np.int32)
    lengths = rng.integers(1, length + 1, shape[:-1])
    lengths.reshape(-1)[0] = length
    mask = (np.arange(length) < lengths[..., None]).astype(np.int32)
    arrays = [ids, mask]
    if isinstance(config, BertConfig):
        arrays.append((np.arange(length) >= length // 2).astype(np.int32) * mask)
    return arrays


def agreement(fn, exported: ExportedModel, task: str, config) -> dict:
    """max|exported - JAX| / max|JAX| per output over CHECK_SHAPES (the parity measure)."""
    worst = {name: 0.0 for name in exported.outputs}
    for batch, length in CHECK_SHAPES:
        arrays = check_inputs(config, task, batch, length)
        want = [np.asarray(o, np.float64) for o in jax.jit(fn)(*arrays)]
        got = exported(dict(zip(exported.inputs, arrays)))
        for name, w in zip(exported.outputs, want):
            error = np.max(np.abs(got[name] - w)) / np.max(np.abs(w))
            worst[name] = max(worst[name], float(error))
    return {"shapes": [list(s) for s in CHECK_SHAPES], "max_relative_error": worst}


def _card(manifest: dict) -> str:
    errors = ", ".join(f"{k} {v:.1e}" for k, v in manifest["agreement"]["max_relative_error"].items())
    shapes = ", ".join(f"{b}x{n}" for b, n in manifest["agreement"]["shapes"])
    runtime = {"onnx": "onnxruntime (`pip install onnxruntime`); distilbert-jax opens it with "
                       "`disabled_optimizers=[\"SkipLayerNormFusion\"]` (faster on the AVX-512 CPU it was "
                       "measured on)",
               "litert": "LiteRT (`pip install ai-edge-litert`): one signature per length, `length_<n>`, "
                         "batch 1, int32 inputs; pad each row to the next length",
               "stablehlo": f"`jax.export.deserialize` (made with jax {manifest['jax_version']})",
               }[manifest["format"]]
    recipe = {"onnx": "onnxruntime's dynamic quantisation: one scale per output channel",
              "litert": "LiteRT's dynamic-range quantisation"}.get(manifest["format"])
    quantized = (f" Dense weights are int8, activations quantised per call ({recipe}); the embedding "
                 "tables stay float32." if manifest["quantize"] == "int8" else "")
    return (f"# {manifest['task']}: {manifest['family']} exported by distilbert-jax\n\n"
            f"Made with `python -m distilbert_jax.export --model={manifest['source']} "
            f"--format={manifest['format']} --quantize={manifest['quantize']} --task={manifest['task']}`.\n"
            f"`{manifest['file']}` runs with {runtime}.{quantized}\n\n"
            f"Inputs: {', '.join(manifest['inputs'])} ([batch, length], dynamic). "
            f"Outputs: {', '.join(manifest['outputs'])}.\n\n"
            f"Measured agreement with the source model in JAX (float32), max|exported - JAX| / "
            f"max|JAX| over random padded batches of {shapes}: {errors}.\n")


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m distilbert_jax.export",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="checkpoint directory, hub id or packaged:all-MiniLM-L6-v2")
    parser.add_argument("--format", default="onnx", help=f"one of {tuple(FORMATS)}")
    parser.add_argument("--quantize", default="none", help=f"one of {QUANTIZATIONS} (int8: ONNX and LiteRT)")
    parser.add_argument("--output", required=True, help="a new (or empty) folder")
    parser.add_argument("--task", default=None,
                        help=f"one of {tuple(tasks.TASKS)}; default: the checkpoint's head")
    args = parser.parse_args(argv)

    def run():
        out = export(args.model, args.output, format=args.format, quantize=args.quantize, task=args.task)
        manifest = json.loads(storage.read_text(storage.join(out, MANIFEST)))
        errors = manifest["agreement"]["max_relative_error"]
        print(f"wrote {out} ({manifest['task']}, {manifest['format']}, {manifest['quantize']}); max "
              f"relative error against the JAX model: " + ", ".join(f"{k} {v:.1e}" for k, v in errors.items()))
    return startup.command(run)  # a refused write leaves nothing of --output


if __name__ == "__main__":
    sys.exit(main())
