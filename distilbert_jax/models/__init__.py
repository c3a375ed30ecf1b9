"""DistilBERT (six model classes) and its BERT teacher as flax.linen Modules.

Parameter trees are laid out exactly as Hugging Face's Flax models lay them out, so a
`flax_model.msgpack` loads as is and PyTorch names follow from one renaming rule (see `hf.py`).
layers.py holds the shared pieces, distilbert.py and bert.py the encoders, heads.py the five task
heads written once; each public class binds one head to one family. Every class also takes
`packing` (a `Packing` layout): the same example-layout inputs and outputs, computed on rows that
hold several examples each, so padding is not computed (see data/packing.py).

What `apply` does not check (it runs traced, so it cannot raise on values): every id must lie in
[0, vocab_size) and no sequence may be longer than max_position_embeddings; outside them XLA's
gather clamps or returns garbage (NaN) silently. `check_fits` refuses both up front; every job
and `pipeline` calls it on the checkpoint's config and tokenizer before loading weights.
"""

from __future__ import annotations

import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp

from distilbert_jax.config import BertConfig, ConfigError
from distilbert_jax.models.bert import (
    BertForMaskedLM,
    BertForMultipleChoice,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
)
from distilbert_jax.models.distilbert import (
    DistilBertForMaskedLM,
    DistilBertForMultipleChoice,
    DistilBertForQuestionAnswering,
    DistilBertForSequenceClassification,
    DistilBertForTokenClassification,
    DistilBertModel,
)
from distilbert_jax.models.heads import MultipleChoice
from distilbert_jax.models.layers import Packing, check_matmul_precision, check_remat
from distilbert_jax.models.outputs import BaseModelOutput, LogitsOutput, QuestionAnsweringOutput

__all__ = [
    "BaseModelOutput", "BertForMaskedLM", "BertForMultipleChoice", "BertForQuestionAnswering",
    "BertForSequenceClassification", "BertForTokenClassification", "BertModel",
    "DistilBertForMaskedLM", "DistilBertForMultipleChoice", "DistilBertForQuestionAnswering",
    "DistilBertForSequenceClassification", "DistilBertForTokenClassification", "DistilBertModel",
    "LogitsOutput", "MODEL_CLASSES", "Packing", "QuestionAnsweringOutput", "abstract_params",
    "check_fits", "check_matmul_precision", "check_remat", "init_params", "model_inputs",
]

# head name -> class, per model family. Head names are also the `head=` argument of from_pretrained.
MODEL_CLASSES: dict[str, dict[str, type[nn.Module]]] = {
    "distilbert": {
        "base": DistilBertModel,
        "masked_lm": DistilBertForMaskedLM,
        "sequence_classification": DistilBertForSequenceClassification,
        "multiple_choice": DistilBertForMultipleChoice,
        "token_classification": DistilBertForTokenClassification,
        "question_answering": DistilBertForQuestionAnswering,
    },
    "bert": {
        "base": BertModel,
        "masked_lm": BertForMaskedLM,
        "sequence_classification": BertForSequenceClassification,
        "multiple_choice": BertForMultipleChoice,
        "token_classification": BertForTokenClassification,
        "question_answering": BertForQuestionAnswering,
    },
}


# --- what every job asks of a model -------------------------------------------------------------------

def check_fits(model_config, name: str, max_length: int, vocab_size: int | None = None) -> None:
    """Refuses sequences longer than the position table or a tokenizer whose ids reach past the
    embedding table (`apply` would read garbage silently): one ConfigError naming `name`."""
    if max_length > model_config.max_position_embeddings:
        raise ConfigError(
            f"max_length={max_length} is longer than {name} can hold: it has "
            f"{model_config.max_position_embeddings} positions (max_position_embeddings).")
    if vocab_size is not None and vocab_size > model_config.vocab_size:
        raise ConfigError(f"The tokenizer of {name} has a vocabulary of {vocab_size} tokens, more "
                          f"than the model's vocab_size ({model_config.vocab_size}).")


def abstract_params(model: nn.Module, input_shape=(1, 1)):
    """Shapes and dtypes of the model's params (boxed with logical axis names), without allocating."""
    ids = jnp.zeros(_init_shape(model, input_shape), jnp.int32)
    return jax.eval_shape(model.init, jax.random.key(0), ids)["params"]


def _init_shape(model, input_shape):
    """Multiple-choice models take [batch, choices, length]."""
    choice = isinstance(model, MultipleChoice)
    return (1, *input_shape) if choice and len(input_shape) == 2 else input_shape


def _initialised(model: nn.Module, key, input_shape=(1, 1)):
    """The params `model.init` draws from `key` (HF's initialisation), unboxed; traced by the two below."""
    ids = jnp.zeros(_init_shape(model, input_shape), jnp.int32)
    return nn.meta.unbox(model.init(key, ids)["params"])


def init_params(model: nn.Module, seed: int = 0, input_shape=(1, 1), shardings=None):
    """Freshly initialised params, unboxed; created directly in `shardings` (a tree like the
    params') when given, so no device ever holds a full copy."""
    init = lambda key: _initialised(model, key, input_shape)
    return jax.jit(init, out_shardings=shardings)(jax.random.key(seed))


def init_some_params(model: nn.Module, paths, seed: int = 0, shardings=None) -> dict:
    """{path: array} for the flattened param `paths` only (e.g. a fresh head on a loaded encoder),
    equal to those leaves of `init_params(model, seed)`: the program computes just these, so the
    encoder's initialisation is neither compiled nor run. `shardings`: {path: sharding}."""
    paths = list(paths)

    def init(key):
        flat = flax.traverse_util.flatten_dict(_initialised(model, key))
        return {path: flat[path] for path in paths}
    out = {path: shardings[path] for path in paths} if shardings else None
    return jax.jit(init, out_shardings=out)(jax.random.key(seed))


def model_inputs(model: nn.Module, inputs: dict) -> dict:
    """The entries of a batch's `inputs` that `model` takes: BERT reads token types, DistilBERT
    has none (tasks always encode them, so this is the one place that decides); a packed batch's
    layout becomes the `packing` argument."""
    keys = ("input_ids", "attention_mask", "token_type_ids")
    keys = keys if isinstance(model.config, BertConfig) else keys[:2]
    selected = {k: inputs[k] for k in keys if k in inputs}
    if "packing" in inputs:  # a packed batch (data.packing): the model runs on its rows
        selected["packing"] = Packing(**inputs["packing"])
    return selected
