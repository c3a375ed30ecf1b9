"""`pipeline(task, model=...)`: a checkpoint applied to raw text, called like transformers' pipelines.

    clf = pipeline("text-classification", model="runs/sst2/model")
    clf(["a gripping film", "a waste of time"])   # [{"label": "POSITIVE", "score": 0.98}, ...]

Tasks (transformers' names, call shapes, output fields and post-processing): "fill-mask",
"text-classification" ("sentiment-analysis"), "token-classification" ("ner"),
"question-answering", "feature-extraction", and "sentence-embeddings" (last_hidden_state
mean-pooled over the attention mask, as sentence-transformers uses checkpoints like
all-MiniLM-L6-v2), one module each beside the shared `base` and `loading`. What each task runs and
returns (head, outputs, per-token outputs, default buckets) is `distilbert_jax/tasks.py`; the
pooling is `distilbert_jax/pooling.py` (re-exported here).

Inputs are encoded by the Rust tokenizer, sorted by length, padded to a few bucket lengths and
batch sizes, and run through one jitted apply per pipeline, so XLA compiles a handful of shapes
however many texts come. Post-processing is numpy on each input's unpadded outputs, ported from
transformers so that labels, spans and character offsets come out the same.

An exported folder (`python -m distilbert_jax.export`) runs the same way: the same encoding and
post-processing around its `exported.ExportedModel` (an onnxruntime session or LiteRT interpreter,
each batch padded to its longest text only, or its deserialized jax.export call).
"""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp

from distilbert_jax.pipelines.base import Pipeline, PipelineError
from distilbert_jax.pipelines.feature_extraction import FeatureExtractionPipeline
from distilbert_jax.pipelines.fill_mask import FillMaskPipeline
from distilbert_jax.pipelines.loading import load
from distilbert_jax.pipelines.question_answering import QuestionAnsweringPipeline
from distilbert_jax.pipelines.sentence_embeddings import SentenceEmbeddingsPipeline
from distilbert_jax.pipelines.text_classification import TextClassificationPipeline
from distilbert_jax.pipelines.token_classification import AGGREGATIONS, TokenClassificationPipeline
from distilbert_jax.pooling import l2_normalize, mean_pool, sentence_transformers_settings
from distilbert_jax.tasks import DEFAULT_BUCKETS

ALIASES = {"sentiment-analysis": "text-classification", "ner": "token-classification"}
PIPELINES: dict[str, type[Pipeline]] = {cls.task: cls for cls in (
    FillMaskPipeline, TextClassificationPipeline, TokenClassificationPipeline,
    QuestionAnsweringPipeline, FeatureExtractionPipeline, SentenceEmbeddingsPipeline)}
TASKS = tuple(PIPELINES) + tuple(ALIASES)

__all__ = [
    "AGGREGATIONS", "ALIASES", "DEFAULT_BUCKETS", "FeatureExtractionPipeline", "FillMaskPipeline",
    "PIPELINES", "Pipeline", "PipelineError", "QuestionAnsweringPipeline",
    "SentenceEmbeddingsPipeline", "TASKS", "TextClassificationPipeline",
    "TokenClassificationPipeline", "l2_normalize", "mean_pool", "pipeline",
    "sentence_transformers_settings",
]


def pipeline(task: str, model, tokenizer=None, *, batch_size: int = 32,
             buckets: Sequence[int] = DEFAULT_BUCKETS, max_length: int | None = None,
             dtype=jnp.float32, matmul_precision: str | None = None, packing: bool = False,
             **defaults) -> Pipeline:
    """A callable that applies `model` to text for `task`, like `transformers.pipeline`.

    model: a checkpoint directory, a hub id, `packaged:all-MiniLM-L6-v2`, a folder written by
    `python -m distilbert_jax.export`, or a (module, params) pair (then pass `tokenizer`). tokenizer: a directory or a `Tokenizer`; by default the model's
    directory. batch_size: texts per forward pass; buckets: the padded lengths (capped at the
    model's positions); max_length: tokens per text (default: the tokenizer's and model's limit).
    dtype: the compute dtype of a loaded checkpoint (e.g. jnp.bfloat16). matmul_precision: the
    model's (`models`: "auto", true float32 for float32 compute, or "high" to allow TF32 on a
    GPU); None keeps a given module's own, and "auto" for a loaded checkpoint. packing: several
    texts share a row (data/packing.py), so padding is not computed; outputs are unchanged.
    Other keyword arguments are defaults for every call (e.g. top_k=3, aggregation_strategy="simple").
    """
    name = ALIASES.get(task, task)
    if name not in PIPELINES:
        raise PipelineError(f"Unknown task {task!r}; the tasks are {list(TASKS)}.")
    cls = PIPELINES[name]
    module, params, tokenizer, directory = load(task, cls, model, tokenizer, dtype, matmul_precision)
    return cls(module, params, tokenizer, directory=directory, batch_size=batch_size,
               buckets=buckets, max_length=max_length, packing=packing, **defaults)
