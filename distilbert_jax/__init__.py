"""distilbert-jax: DistilBERT and its BERT teacher in JAX/Flax, with Hugging Face parity."""

from distilbert_jax.config import BertConfig, ConfigError, DistilBertConfig
from distilbert_jax.hf import CheckpointError, from_pretrained, save_pretrained
from distilbert_jax.models import (
    BertForMaskedLM,
    BertForMultipleChoice,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
    DistilBertForMaskedLM,
    DistilBertForMultipleChoice,
    DistilBertForQuestionAnswering,
    DistilBertForSequenceClassification,
    DistilBertForTokenClassification,
    DistilBertModel,
)
from distilbert_jax.pipelines import PipelineError, pipeline
from distilbert_jax.settings import configure
from distilbert_jax.tokenizer import Tokenizer, TokenizerError

__version__ = "0.1.0"

__all__ = [
    "BertConfig", "BertForMaskedLM", "BertForMultipleChoice", "BertForQuestionAnswering",
    "BertForSequenceClassification", "BertForTokenClassification", "BertModel", "CheckpointError",
    "ConfigError", "DistilBertConfig", "DistilBertForMaskedLM", "DistilBertForMultipleChoice",
    "DistilBertForQuestionAnswering", "DistilBertForSequenceClassification",
    "DistilBertForTokenClassification", "DistilBertModel", "PipelineError", "Tokenizer",
    "TokenizerError", "configure", "from_pretrained", "pipeline", "save_pretrained",
]
