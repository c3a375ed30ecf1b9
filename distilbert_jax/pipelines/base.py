"""The Pipeline base: every task runs through one `__call__` (parse inputs, preprocess into rows,
one jitted apply over length buckets, postprocess each input), so batching is written once."""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np

from distilbert_jax import models, tasks
from distilbert_jax.config import ConfigError
from distilbert_jax.data import packing as packing_lib
from distilbert_jax.data.task import bucket_for
from distilbert_jax.errors import UserError
from distilbert_jax.exported import ExportedModel
from distilbert_jax.tasks import DEFAULT_BUCKETS
from distilbert_jax.tokenizer import Tokenizer, TokenizerError


class PipelineError(UserError, ValueError):
    """A pipeline cannot be built for this task and model, or was called with bad input."""


class Pipeline:
    """The model, params, tokenizer and jitted apply; a task subclass fills in the hooks of
    `__call__`. Keyword arguments given at construction are defaults for every call.
    `model` may also be an `exported.ExportedModel` (params None), run through `_exported_outputs`.
    A subclass names its task as a class keyword (`class P(Pipeline, task="fill-mask")`); the
    attributes below are then that task's entry of `tasks.TASKS`."""

    task: str = ""
    head: str = "base"  # the head (models.MODEL_CLASSES key) the task needs; "base": any model's encoder
    outputs: tuple[str, ...] = ()  # the model outputs the task reads (a subclass may read others)
    per_token: tuple[str, ...] = ()  # outputs with a token axis, cut to each row's length
    OPTIONS: dict[str, Any] = {}  # the call options and their defaults

    def __init_subclass__(cls, task: str | None = None, **kwargs):
        """Binds a task's pipeline to its registry entry, so its head and outputs are written once."""
        super().__init_subclass__(**kwargs)
        if task is not None:
            spec = tasks.TASKS[task]
            cls.task, cls.head, cls.per_token = spec.name, spec.head, spec.per_token
            cls.outputs = cls.__dict__.get("outputs", spec.outputs)

    def __init__(self, model: nn.Module, params, tokenizer: Tokenizer, *, directory: str | None = None,
                 batch_size: int = 32, buckets: Sequence[int] = DEFAULT_BUCKETS,
                 max_length: int | None = None, packing: bool = False, **defaults):
        if int(batch_size) < 1:
            raise PipelineError(f"batch_size={batch_size} must be at least 1.")
        self.model, self.params, self.tokenizer = model, params, tokenizer
        self.batch_size = int(batch_size)
        self.max_length = int(max_length or min(tokenizer.model_max_length,
                                                model.config.max_position_embeddings))
        try:
            models.check_fits(model.config, directory or "the model", self.max_length, tokenizer.vocab_size)
        except ConfigError as e:
            raise PipelineError(str(e)) from None
        self.buckets = tuple(sorted({b for b in buckets if b < self.max_length} | {self.max_length}))
        self.packing = bool(packing)
        self.defaults = defaults
        self._check_options(defaults)
        self._fixed_shapes = True  # pad to a few shapes, each compiled once
        if isinstance(model, ExportedModel):
            if self.packing:
                raise PipelineError(f"{directory} is an exported model: it takes whole rows, so "
                                    "packing=True is not available; leave it off.")
            self._fixed_shapes = not model.dynamic_shapes
            self._apply = lambda params, batch: self._exported_outputs(model(batch), batch)
        else:
            self._apply = jax.jit(self._forward)

    # --- the one call path -----------------------------------------------------------------------
    def __call__(self, *args, **options):
        """inputs -> results: each input becomes rows (a text, or a long text's windows), every row
        runs in length buckets, and each input's rows and outputs become its result."""
        items, single = self.parse_inputs(args, options)
        options = {**self.defaults, **options}
        self._check_options(options)
        options = self.resolve_options({**self.OPTIONS, **options})
        rows = self.preprocess(items, single, options)
        outputs = iter(self.run_features([row for item_rows in rows for row in item_rows]))
        results = [self.postprocess(item, item_rows, [next(outputs) for _ in item_rows], options)
                   for item, item_rows in zip(items, rows)]
        return self.combine(results, items, single, options)

    # --- what a task defines -------------------------------------------------------------------
    def parse_inputs(self, args: tuple, options: dict) -> tuple[list, bool]:
        """The call's inputs as a list, and whether one was given (unwrapped in `combine`); may take
        inputs given by keyword out of `options`. By default one text or a list of texts."""
        if len(args) > 1:
            raise PipelineError(f"The {self.task!r} pipeline takes one input (a text or a list of "
                                "them); options go by name.")
        return self._texts(args[0] if args else options.pop("inputs", None))

    def resolve_options(self, options: dict) -> dict:
        """Checks the call's options (defaults filled in) and adds what they imply."""
        return options

    def preprocess(self, items: list, single: bool, options: dict) -> list[list[dict]]:
        """Each input's rows: dicts of input_ids, attention_mask, token_type_ids (and what
        postprocess needs, e.g. the encoding)."""
        raise NotImplementedError

    def postprocess(self, item, rows: list[dict], outputs: list[dict], options: dict):
        """One input's result from its rows and their outputs."""
        raise NotImplementedError

    def combine(self, results: list, items: list, single: bool, options: dict):
        return results[0] if single else results

    def batch_extras(self, rows: list[dict | None], length: int) -> dict:
        """Task arrays added to a padded batch (rows None for padding rows), e.g. mask positions."""
        return {}

    def _forward(self, params, batch: dict) -> dict:
        """The traced computation: batch (padded arrays) -> dict of output arrays."""
        out = self.model.apply({"params": params}, **models.model_inputs(self.model, batch))
        return self._task_outputs({k: getattr(out, k) for k in self.outputs}, batch)

    def _exported_outputs(self, outputs: dict, batch: dict) -> dict:
        """What `_forward` returns, from an exported graph's named outputs (numpy arrays)."""
        if "last_hidden_state" not in outputs and "token_embeddings" in outputs:  # a sentence export
            outputs = {**outputs, "last_hidden_state": outputs["token_embeddings"]}
        return self._task_outputs({k: outputs[k] for k in self.outputs}, batch)

    def _task_outputs(self, fields: dict, batch: dict) -> dict:
        """The model's outputs -> the task's (jnp when traced, numpy from an export)."""
        return fields

    # --- shared pieces -------------------------------------------------------------------------
    def _check_options(self, options):
        unknown = sorted(set(options) - set(self.OPTIONS))
        if unknown:
            raise PipelineError(f"The {self.task!r} pipeline has no option {unknown[0]!r}; it takes "
                                f"{sorted(self.OPTIONS) or 'no options'}.")

    def _texts(self, inputs) -> tuple[list[str], bool]:
        """inputs -> (list of texts, whether one text was given); refuses empty or non-text input."""
        single = isinstance(inputs, str)
        texts = [inputs] if single else inputs
        if not isinstance(texts, (list, tuple)):
            raise PipelineError(f"The {self.task!r} pipeline takes a string or a list of strings, "
                                f"not {type(inputs).__name__}.")
        if not texts:
            raise PipelineError(f"The {self.task!r} pipeline was given an empty list; pass at least one text.")
        for i, text in enumerate(texts):
            check_text(text, f"input {i}" if not single else "the input")
        return list(texts), single

    def run_features(self, features: list[dict]) -> list[dict[str, np.ndarray]]:
        """Runs encoded rows through the model in length buckets; returns each row's outputs with
        per-token outputs cut to its length."""
        results: list[dict | None] = [None] * len(features)
        order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            length = len(features[chunk[-1]]["input_ids"])
            rows = len(chunk)
            if self._fixed_shapes:  # few batch shapes
                length = bucket_for(length, self.buckets)
                rows = min(1 << (len(chunk) - 1).bit_length(), self.batch_size)
            batch = {k: np.zeros((rows, length), np.int32)
                     for k in ("input_ids", "attention_mask", "token_type_ids")}
            for r, i in enumerate(chunk):
                n = len(features[i]["input_ids"])
                for k in batch:
                    batch[k][r, :n] = features[i].get(k, [0] * n)
            if self.packing:
                batch["packing"] = self._packing(batch["attention_mask"], length)
            else:
                batch["attention_mask"][len(chunk):, 0] = 1  # padding rows attend to something
            batch.update(self.batch_extras([features[i] for i in chunk] + [None] * (rows - len(chunk)),
                                           length))
            out = jax.device_get(self._apply(self.params, batch))
            for r, i in enumerate(chunk):
                n = len(features[i]["input_ids"])
                results[i] = {k: (v[r, :n] if k in self.per_token else v[r]) for k, v in out.items()}
        return results

    def _packing(self, attention_mask: np.ndarray, length: int) -> dict[str, np.ndarray]:
        """The batch's texts packed into rows of at least 128 tokens (or the longest's bucket), as
        many as the row-count ladder gives, so few shapes compile (see data/packing.py)."""
        row_length = max(length, bucket_for(min(128, self.max_length), self.buckets))
        rows = packing_lib.Packer(row_length).rows_for([attention_mask])
        return packing_lib.layout(attention_mask, rows, row_length)

    def encode(self, texts, pairs=None, **kwargs) -> list[list[Any]]:
        try:
            return self.tokenizer.encodings(texts, pairs, **kwargs)
        except TokenizerError as e:
            raise PipelineError(str(e)) from None


def features(encoding, /, **extra) -> dict:
    """A row for `run_features` from a tokenizer encoding, with what postprocess needs beside it."""
    return {"input_ids": encoding.ids, "attention_mask": encoding.attention_mask,
            "token_type_ids": encoding.type_ids, **extra}


def check_text(text, where: str):
    if not isinstance(text, str):
        raise PipelineError(f"{where} is a {type(text).__name__}, not a string of text.")
    if not text.strip():
        raise PipelineError(f"{where} is an empty string; give each input some text.")


def softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float32)))


def describe(value) -> str:
    text = repr(value)
    return f"a {type(value).__name__} ({text[:40] + '...' if len(text) > 40 else text})"
