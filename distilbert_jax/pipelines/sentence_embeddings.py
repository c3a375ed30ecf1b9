"""sentence-embeddings: one mean-pooled vector per text, as sentence-transformers computes them;
`mean_pool` and `l2_normalize` are also what an exported sentence-embeddings graph computes."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from distilbert_jax.pipelines.base import Pipeline, features
from distilbert_jax.pipelines.loading import sentence_transformers_settings


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


class SentenceEmbeddingsPipeline(Pipeline):
    """One vector per text: last_hidden_state averaged over the attention mask (sentence-transformers'
    mean pooling), L2-normalised when `normalize` (by default when the checkpoint's modules.json ends
    in a Normalize module, as all-MiniLM-L6-v2's does). Texts longer than the checkpoint's
    sentence_bert_config.json max_seq_length are truncated there. A list of floats per text, or
    numpy arrays ([hidden] or [texts, hidden]) with return_tensors=True."""

    task, head, outputs = "sentence-embeddings", None, ("last_hidden_state",)
    OPTIONS = {"normalize": None, "return_tensors": False}

    def __init__(self, *args, directory=None, max_length=None, **kwargs):
        settings = sentence_transformers_settings(directory)
        super().__init__(*args, directory=directory,
                         max_length=max_length or settings.get("max_seq_length"), **kwargs)
        self.normalize_default = settings.get("normalize", False)

    def _task_outputs(self, fields, batch):
        """Pooled in the forward pass (in the graph, or from an export's token outputs, so that
        `normalize` works whatever the graph does)."""
        return {"embedding": mean_pool(fields["last_hidden_state"], batch["attention_mask"])}

    def preprocess(self, texts, single, options):
        encodings = self.encode(texts, max_length=self.max_length, truncation=True)
        return [[features(e)] for (e,) in encodings]

    def postprocess(self, text, rows, outputs, options):
        return outputs[0]["embedding"]

    def combine(self, results, texts, single, options):
        vectors = np.stack(results)
        if self.normalize_default if options["normalize"] is None else options["normalize"]:
            vectors = l2_normalize(vectors)
        if options["return_tensors"]:
            return vectors[0] if single else vectors
        return vectors[0].tolist() if single else vectors.tolist()
