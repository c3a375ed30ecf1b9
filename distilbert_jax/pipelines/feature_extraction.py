"""feature-extraction: the encoder's last hidden states of each text, as transformers'
FeatureExtractionPipeline."""

from __future__ import annotations

from distilbert_jax.pipelines.base import Pipeline, features


class FeatureExtractionPipeline(Pipeline, task="feature-extraction"):
    """transformers' FeatureExtractionPipeline: the encoder's last_hidden_state of each text as a
    nested list [1][tokens][hidden] (an array with return_tensors=True)."""

    OPTIONS = {"return_tensors": False}

    def preprocess(self, texts, single, options):
        encodings = self.encode(texts, max_length=self.max_length, truncation=True)
        return [[features(e)] for (e,) in encodings]

    def postprocess(self, text, rows, outputs, options):
        hidden = outputs[0]["last_hidden_state"][None]
        return hidden if options["return_tensors"] else hidden.tolist()
