"""What `pipeline(model=...)` names, loaded for a task: a checkpoint folder or hub id, a packaged
model, an exported folder, or a (module, params) pair; and sentence-transformers' settings."""

from __future__ import annotations

import json
import os

import flax.linen as nn
import jax.numpy as jnp

from distilbert_jax import hf, models
from distilbert_jax.pipelines.base import PipelineError, describe
from distilbert_jax.tokenizer import Tokenizer


def load(task: str, cls, model, tokenizer=None, dtype=jnp.float32, matmul_precision: str | None = None):
    """(module, params, tokenizer, directory) for pipeline class `cls` (asked for as `task`);
    refuses a model whose head does not serve the task. params is None for an exported folder."""
    directory = None
    from distilbert_jax import export  # here, so `python -m distilbert_jax.export` runs cleanly
    if isinstance(model, (tuple, list)) and len(model) == 2 and isinstance(model[0], nn.Module):
        module, params = model
        if tokenizer is None:
            raise PipelineError("A (module, params) model needs tokenizer= (a directory or a Tokenizer).")
        if cls.head is None:  # features come from the encoder, whatever head the model has
            module, params = encoder_of(module, params)
        else:
            _check_head(cls, type(module).__name__, _head_of(module), "the given model", task)
    elif export.is_exported(model):
        directory = os.fspath(model)
        try:
            module, params = export.ExportedModel(directory), None
        except export.ExportError as e:
            raise PipelineError(str(e)) from None
        _check_exported_task(module, directory, task, cls)
    elif isinstance(model, (str, os.PathLike)):
        directory = hf.resolve(model)
        config, architectures = hf.read_config(directory)
        if cls.head is not None:
            head = hf.head_from_architectures(config.model_type, architectures)
            _check_head(cls, (architectures or ["a bare encoder"])[0], head, os.fspath(model), task)
        module, params = hf.load_quietly(directory, cls.head or "base", dtype)
    else:
        raise PipelineError(f"model= takes a checkpoint directory, a hub id or a (module, params) "
                            f"pair, not {describe(model)}.")
    if matmul_precision is not None and isinstance(module, nn.Module):
        module = module.clone(matmul_precision=matmul_precision)
    if not isinstance(tokenizer, Tokenizer):
        tokenizer = Tokenizer.from_pretrained(tokenizer if tokenizer is not None else directory)
    return module, params, tokenizer, directory


def sentence_transformers_settings(directory: str | None) -> dict:
    """max_seq_length and whether a Normalize module follows pooling, from a sentence-transformers
    checkpoint's files (an empty dict for a plain transformers checkpoint)."""
    if not directory:
        return {}
    settings = {}
    try:
        with open(os.path.join(directory, "sentence_bert_config.json"), encoding="utf-8") as f:
            settings["max_seq_length"] = json.load(f).get("max_seq_length")
    except (OSError, ValueError):
        pass
    try:
        with open(os.path.join(directory, "modules.json"), encoding="utf-8") as f:
            modules = json.load(f)
        settings["normalize"] = any(str(m.get("type", "")).endswith("Normalize") for m in modules)
        pooling = next((m for m in modules if str(m.get("type", "")).endswith("Pooling")), None)
        if pooling is not None:
            with open(os.path.join(directory, pooling.get("path", ""), "config.json"), encoding="utf-8") as f:
                settings["pooling"] = json.load(f)
    except (OSError, ValueError, AttributeError):
        pass
    pooling = settings.get("pooling")
    if isinstance(pooling, dict) and not pooling.get("pooling_mode_mean_tokens", True):
        raise PipelineError(f"{directory} pools its embeddings by {pooling}; the "
                            "'sentence-embeddings' pipeline does mean pooling only.")
    return settings


def encoder_of(module: nn.Module, params):
    """The bare encoder (module, params) of a model with or without a head."""
    family = module.config.model_type
    encoder = models.MODEL_CLASSES[family]["base"]
    if isinstance(module, encoder):
        return module, params
    params = params[family]
    options = {"add_pooling_layer": "pooler" in params} if family == "bert" else {}
    return encoder(module.config, **module.numerics, **options), params


def _check_exported_task(exported, directory: str, task: str, cls):
    """An exported graph serves the tasks of its head; feature tasks need the encoder's outputs."""
    from distilbert_jax import export
    head = export.TASKS[exported.task][0]
    serves = head == "base" if cls.head is None else head == cls.head
    if not serves:
        raise PipelineError(f"{directory} was exported for {exported.task!r}; the {task!r} pipeline "
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
