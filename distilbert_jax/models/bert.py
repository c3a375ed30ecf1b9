"""BERT (the teacher): its encoder, what its heads read from it, and its five heads (each a task
head of heads.py bound to this family).

Module names mirror HF's BertModel, so parameter paths do too
(`bert/encoder/layer/0/attention/self/query/kernel`).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from distilbert_jax.models import heads, layers
from distilbert_jax.models.layers import Base, Encoder, Packing, Rows
from distilbert_jax.models.outputs import BaseModelOutput


class BertEmbeddings(Base):
    @nn.compact
    def __call__(self, input_ids, token_type_ids, position_ids, deterministic):
        cfg = self.config
        common = dict(stddev=cfg.initializer_range, dtype=self.dtype, param_dtype=self.param_dtype)
        words = layers.embed(cfg.vocab_size, cfg.hidden_size, ("vocab", "embed"),
                             name="word_embeddings", padding_idx=cfg.pad_token_id, **common)(input_ids)
        positions = layers.embed(cfg.max_position_embeddings, cfg.hidden_size, ("position", "embed"),
                                 name="position_embeddings", **common)(position_ids)
        types = layers.embed(cfg.type_vocab_size, cfg.hidden_size, ("token_types", "embed"),
                             name="token_type_embeddings", **common)(token_type_ids)
        x = self._layer_norm("LayerNorm")(words + positions + types)
        x = layers.Dropout(cfg.hidden_dropout_prob)(x, deterministic)
        return layers.constrain(x.astype(self.dtype), layers.HIDDEN_AXES)


class BertSelfAttention(Base):
    @nn.compact
    def __call__(self, x, keep, deterministic, output_attentions=False):
        cfg = self.config
        q, k, v = (layers.split_heads(self._dense(cfg.hidden_size, ("embed", "heads"), name)(x),
                                      cfg.num_attention_heads) for name in ("query", "key", "value"))
        return self._attention(q, k, v, keep, cfg.attention_probs_dropout_prob, deterministic,
                               output_attentions)


class BertResidual(Base):
    """HF's BertSelfOutput / BertOutput: LayerNorm(dropout(dense(x)) + residual)."""
    features_axes: tuple[str, str] = ("heads", "embed")

    @nn.compact
    def __call__(self, x, residual, deterministic):
        cfg = self.config
        x = self._dense(cfg.hidden_size, self.features_axes, "dense")(x)
        x = layers.Dropout(cfg.hidden_dropout_prob)(x, deterministic)
        return self._layer_norm("LayerNorm")(x + residual).astype(self.dtype)


class BertAttention(Base):
    @nn.compact
    def __call__(self, x, keep, deterministic, output_attentions=False):
        context, probs = BertSelfAttention(self.config, **self.numerics, name="self")(
            x, keep, deterministic, output_attentions)
        out = BertResidual(self.config, **self.numerics, name="output")(
            context, x, deterministic)
        return out, probs


class BertIntermediate(Base):
    @nn.compact
    def __call__(self, x):
        cfg = self.config
        h = self._dense(cfg.intermediate_size, ("embed", "mlp"), "dense")(x)
        return layers.constrain(layers.ACTIVATIONS[cfg.hidden_act](h), layers.MLP_AXES)


class BertLayer(Base):
    @nn.compact
    def __call__(self, x, keep, deterministic, output_attentions=False):
        h, probs = BertAttention(self.config, **self.numerics, name="attention")(
            x, keep, deterministic, output_attentions)
        inter = BertIntermediate(self.config, **self.numerics, name="intermediate")(h)
        out = BertResidual(self.config, **self.numerics, features_axes=("mlp", "embed"),
                           name="output")(inter, h, deterministic)
        return layers.constrain(out, layers.HIDDEN_AXES), probs


class BertPooler(Base):
    """tanh(dense(hidden[:, 0])): the [CLS] summary that BERT's classifier heads use."""

    @nn.compact
    def __call__(self, hidden):
        cfg = self.config
        return jnp.tanh(self._dense(cfg.hidden_size, ("embed", "hidden"), "dense")(hidden[:, 0]))


class BertModel(Base):
    """BERT encoder with token types and (unless add_pooling_layer=False) the pooler."""
    add_pooling_layer: bool = True

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None,
                 deterministic: bool = True, output_hidden_states: bool = False,
                 output_attentions: bool = False, packing: Packing | None = None):
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        rows = Rows.of(input_ids, attention_mask, token_type_ids, packing)
        x = BertEmbeddings(self.config, **self.numerics, name="embeddings")(
            rows.input_ids, rows.token_type_ids, rows.position_ids, deterministic)
        x, hidden, attn = Encoder(self.config, **self.numerics, block=BertLayer,
                                  name="encoder")(x, rows.keep, deterministic,
                                                  output_attentions)
        x = rows.to_examples(x)
        pooled = (BertPooler(self.config, **self.numerics, name="pooler")(x)
                  if self.add_pooling_layer else None)
        return BaseModelOutput.of(x, hidden, attn, output_hidden_states, output_attentions, pooled)


class BertPredictionHeadTransform(Base):
    @nn.compact
    def __call__(self, x):
        cfg = self.config
        x = self._dense(cfg.hidden_size, ("embed", "hidden"), "dense")(x)
        return self._layer_norm("LayerNorm")(layers.ACTIVATIONS[cfg.hidden_act](x)).astype(self.dtype)


class BertLMPredictionHead(Base):
    """transform, then the decoder (tied to the word embeddings, or its own kernel) plus a bias."""

    @nn.compact
    def __call__(self, x, table):
        cfg = self.config
        x = BertPredictionHeadTransform(cfg, **self.numerics, name="transform")(x)
        if cfg.tie_word_embeddings:
            logits = jnp.einsum("...d,vd->...v", x, table.astype(self.dtype), precision=self.precision)
        else:
            logits = layers.Dense(cfg.vocab_size, use_bias=False, dtype=self.dtype,
                                  param_dtype=self.param_dtype, precision=self.precision,
                                  name="decoder", kernel_init=layers.normal_init(
                                      cfg.initializer_range, ("embed", "vocab")))(x)
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",)),
                          (cfg.vocab_size,), self.param_dtype)
        return logits + bias.astype(self.dtype)


class BertOnlyMLMHead(Base):
    @nn.compact
    def __call__(self, x, table):
        return BertLMPredictionHead(self.config, **self.numerics,
                                    name="predictions")(x, table)


class BertHead(heads.Head):
    """BERT under a head, as HF's BertFor* classes (used to fine-tune BERT teachers): the encoder
    as `bert`, with token types, and its pooler only for the heads that read it."""
    family = "bert"

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None,
                 deterministic: bool = True, output_hidden_states: bool = False,
                 output_attentions: bool = False, packing: Packing | None = None):
        return self.head(heads.Inputs(input_ids, attention_mask, token_type_ids, packing,
                                      deterministic, output_hidden_states, output_attentions))

    def encode(self, inputs: heads.Inputs) -> BaseModelOutput:
        return BertModel(self.config, **self.numerics, add_pooling_layer=self.pools,
                         name=self.family)(
            inputs.input_ids, inputs.attention_mask, inputs.token_type_ids, inputs.deterministic,
            inputs.output_hidden_states, inputs.output_attentions, inputs.packing)

    @property
    def classifier_dropout(self):
        """Every BERT classifier's dropout: classifier_dropout, or hidden_dropout_prob when unset."""
        cfg = self.config
        return cfg.hidden_dropout_prob if cfg.classifier_dropout is None else cfg.classifier_dropout

    token_dropout = classifier_dropout

    def summary(self, out, deterministic):
        return layers.Dropout(self.classifier_dropout)(out.pooler_output, deterministic)

    @property
    def span_dropout(self):
        return 0.0  # HF's BertForQuestionAnswering has none

    def lm_logits(self, hidden):
        return BertOnlyMLMHead(self.config, **self.numerics, name="cls")(
            hidden, self.word_embeddings())


# --- the heads, bound to BERT ------------------------------------------------------------------------

class BertForMaskedLM(heads.MaskedLM, BertHead):
    """BERT with its MLM head (no pooler, as HF's BertForMaskedLM); also takes `logit_positions`
    and `final_hidden` (see heads.MaskedLM)."""

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None,
                 deterministic: bool = True, output_hidden_states: bool = False,
                 output_attentions: bool = False, logit_positions=None,
                 packing: Packing | None = None, final_hidden=None):
        return self.head(heads.Inputs(input_ids, attention_mask, token_type_ids, packing,
                                      deterministic, output_hidden_states, output_attentions),
                         logit_positions, final_hidden)


class BertForSequenceClassification(heads.SequenceClassification, BertHead):
    """BERT with a classifier on the pooler output: logits [batch, num_labels]."""


class BertForMultipleChoice(heads.MultipleChoice, BertHead):
    """BERT scoring each choice: inputs [batch, choices, length], logits [batch, choices]."""


class BertForTokenClassification(heads.TokenClassification, BertHead):
    """BERT with a classifier on every token: logits [batch, length, num_labels]."""


class BertForQuestionAnswering(heads.QuestionAnswering, BertHead):
    """BERT with span start/end logits [batch, length]; the config must have num_labels == 2."""
