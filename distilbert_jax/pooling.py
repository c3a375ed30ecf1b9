"""sentence-transformers' pooling, written once for the sentence-embeddings pipeline and the graph
an export of it holds: mean pooling over the attention mask, L2 normalisation, and the settings a
sentence-transformers checkpoint's files declare (max_seq_length, Normalize, the pooling mode)."""

from __future__ import annotations

import json
import os

import jax.numpy as jnp
import numpy as np

from distilbert_jax.errors import UserError

# sentence-transformers' files beside the weights (max_seq_length, pooling, Normalize).
SENTENCE_TRANSFORMERS_FILES = ("modules.json", "sentence_bert_config.json",
                               "config_sentence_transformers.json", "1_Pooling/config.json")


class PoolingError(UserError, ValueError):
    """A sentence-transformers checkpoint pools in a way other than the mean over its tokens."""


def mean_pool(hidden, attention_mask):
    """hidden [batch, length, dim] averaged over the attention mask, in float32 (sentence-transformers'
    mean pooling); numpy in, numpy out (an exported graph's outputs), else jnp (traced)."""
    xp = np if isinstance(hidden, np.ndarray) else jnp
    mask = attention_mask.astype(xp.float32)[..., None]
    hidden = hidden.astype(xp.float32)
    return (hidden * mask).sum(1) / xp.maximum(mask.sum(1), 1e-9)


def l2_normalize(vectors):
    """Unit vectors along the last axis (sentence-transformers' Normalize module); numpy or jnp."""
    xp = np if isinstance(vectors, np.ndarray) else jnp
    return vectors / xp.maximum(xp.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)


def sentence_transformers_settings(directory: str | None) -> dict:
    """max_seq_length and whether a Normalize module follows pooling, from a sentence-transformers
    checkpoint's files (an empty dict for a plain transformers checkpoint); a PoolingError for a
    pooling mode other than the mean, the only one computed here."""
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
        raise PoolingError(f"{directory} pools its embeddings by {pooling}; the "
                           "'sentence-embeddings' pipeline does mean pooling only.")
    return settings
