"""sentence-embeddings: one mean-pooled vector per text, as sentence-transformers computes them
(the pooling itself is `pooling.py`, which an exported sentence-embeddings graph computes too)."""

from __future__ import annotations

import numpy as np

from distilbert_jax.pipelines.base import Pipeline, PipelineError, features
from distilbert_jax.pooling import PoolingError, l2_normalize, mean_pool, sentence_transformers_settings


class SentenceEmbeddingsPipeline(Pipeline, task="sentence-embeddings"):
    """One vector per text: last_hidden_state averaged over the attention mask (sentence-transformers'
    mean pooling), L2-normalised when `normalize` (by default when the checkpoint's modules.json ends
    in a Normalize module, as all-MiniLM-L6-v2's does). Texts longer than the checkpoint's
    sentence_bert_config.json max_seq_length are truncated there. A list of floats per text, or
    numpy arrays ([hidden] or [texts, hidden]) with return_tensors=True."""

    outputs = ("last_hidden_state",)  # the encoder's hidden states, mean-pooled in `_task_outputs`
    OPTIONS = {"normalize": None, "return_tensors": False}

    def __init__(self, *args, directory=None, max_length=None, **kwargs):
        try:
            settings = sentence_transformers_settings(directory)
        except PoolingError as e:
            raise PipelineError(str(e)) from None
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
