"""What `pipeline(model=...)` names, loaded for a task: a checkpoint folder or hub id, a packaged
model, an exported folder, or a (module, params) pair."""

from __future__ import annotations

import os

import flax.linen as nn
import jax.numpy as jnp

from distilbert_jax import exported, hf, models, storage, tasks
from distilbert_jax.pipelines.base import PipelineError, describe
from distilbert_jax.tokenizer import Tokenizer


def load(task: str, cls, model, tokenizer=None, dtype=jnp.float32, matmul_precision: str | None = None):
    """(module, params, tokenizer, directory) for pipeline class `cls` (asked for as `task`);
    refuses a model whose head does not serve the task. params is None for an exported folder."""
    directory = None
    if isinstance(model, (str, os.PathLike)) and storage.is_remote(model):
        model = storage.local_copy(model)  # a gs:// checkpoint or export, read from a local copy
    if isinstance(model, (tuple, list)) and len(model) == 2 and isinstance(model[0], nn.Module):
        module, params = model
        if tokenizer is None:
            raise PipelineError("A (module, params) model needs tokenizer= (a directory or a Tokenizer).")
        if cls.head == "base":  # features come from the encoder, whatever head the model has
            module, params = encoder_of(module, params)
        else:
            _check_head(cls, type(module).__name__, _head_of(module), "the given model", task)
    elif exported.is_exported(model):
        directory = os.fspath(model)
        try:
            module, params = exported.ExportedModel(directory), None
        except exported.ExportError as e:
            raise PipelineError(str(e)) from None
        _check_exported_task(module, directory, task, cls)
    elif isinstance(model, (str, os.PathLike)):
        directory = hf.resolve(model)
        config, architectures = hf.read_config(directory)
        if cls.head != "base":
            head = hf.head_from_architectures(config.model_type, architectures)
            _check_head(cls, (architectures or ["a bare encoder"])[0], head, os.fspath(model), task)
        module, params = hf.load_quietly(directory, cls.head, dtype)
    else:
        raise PipelineError(f"model= takes a checkpoint directory, a hub id or a (module, params) "
                            f"pair, not {describe(model)}.")
    if matmul_precision is not None and isinstance(module, nn.Module):
        module = module.clone(matmul_precision=matmul_precision)
    if not isinstance(tokenizer, Tokenizer):
        tokenizer = Tokenizer.from_pretrained(tokenizer if tokenizer is not None else directory)
    return module, params, tokenizer, directory


def encoder_of(module: nn.Module, params):
    """The bare encoder (module, params) of a model with or without a head."""
    family = module.config.model_type
    encoder = models.MODEL_CLASSES[family]["base"]
    if isinstance(module, encoder):
        return module, params
    params = params[family]
    options = {"add_pooling_layer": "pooler" in params} if family == "bert" else {}
    return encoder(module.config, **module.numerics, **options), params


def _check_exported_task(model: exported.ExportedModel, directory: str, task: str, cls):
    """An exported graph serves the tasks of its head; feature tasks need the encoder's outputs."""
    if tasks.TASKS[model.task].head != cls.head:
        raise PipelineError(f"{directory} was exported for {model.task!r}; the {task!r} pipeline "
                            f"needs an export made with --task={cls.task}.")


def _head_of(module: nn.Module) -> str | None:
    family = module.config.model_type
    return next((h for h, c in models.MODEL_CLASSES[family].items() if isinstance(module, c)), None)


def _check_head(cls, what: str, head: str | None, where: str, task: str):
    if head != cls.head:
        needs = " or ".join(models.MODEL_CLASSES[f][cls.head].__name__
                            for f in ("distilbert", "bert"))
        raise PipelineError(f"{where} is {'a ' if what.startswith(('Distil', 'Bert')) else ''}{what}; "
                            f"the {task!r} pipeline needs a {needs} checkpoint.")
