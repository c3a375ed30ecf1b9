"""DistilBERT: its encoder, what its heads read from it, and its five heads (each a task head of
heads.py bound to this family).

Parameter paths are Hugging Face Flax's (`distilbert/transformer/layer/3/attention/q_lin/kernel`).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from distilbert_jax.models import heads, layers
from distilbert_jax.models.layers import Base, Encoder, Packing, Rows
from distilbert_jax.models.outputs import BaseModelOutput


class DistilBertEmbeddings(Base):
    """Word + position embeddings, LayerNorm, dropout (no token types).

    With `sinusoidal_pos_embds` the position table is still a parameter, initialised to the
    sinusoid: a checkpoint that stores (possibly trained) positions keeps them.
    """

    @nn.compact
    def __call__(self, input_ids, position_ids, deterministic):
        cfg = self.config
        common = dict(stddev=cfg.initializer_range, dtype=self.dtype, param_dtype=self.param_dtype)
        words = layers.embed(cfg.vocab_size, cfg.dim, ("vocab", "embed"), name="word_embeddings",
                             padding_idx=cfg.pad_token_id, **common)(input_ids)
        table = (layers.sinusoidal_table(cfg.max_position_embeddings, cfg.dim)
                 if cfg.sinusoidal_pos_embds else None)
        positions = layers.embed(cfg.max_position_embeddings, cfg.dim, ("position", "embed"),
                                 name="position_embeddings", table=table, **common)(position_ids)
        x = self._layer_norm("LayerNorm")(words + positions)
        x = layers.Dropout(cfg.dropout)(x, deterministic)
        return layers.constrain(x.astype(self.dtype), layers.HIDDEN_AXES)


class MultiHeadSelfAttention(Base):
    """q_lin/k_lin/v_lin/out_lin; no dropout after out_lin (unlike BERT)."""

    @nn.compact
    def __call__(self, x, keep, deterministic, output_attentions=False):
        cfg = self.config
        q, k, v = (layers.split_heads(self._dense(cfg.dim, ("embed", "heads"), name)(x), cfg.n_heads)
                   for name in ("q_lin", "k_lin", "v_lin"))
        context, probs = self._attention(q, k, v, keep, cfg.attention_dropout, deterministic,
                                         output_attentions)
        out = self._dense(cfg.dim, ("heads", "embed"), "out_lin")(context)
        return out, probs


class FFN(Base):
    @nn.compact
    def __call__(self, x, deterministic):
        cfg = self.config
        h = self._dense(cfg.hidden_dim, ("embed", "mlp"), "lin1")(x)
        h = layers.constrain(layers.ACTIVATIONS[cfg.activation](h), layers.MLP_AXES)
        h = self._dense(cfg.dim, ("mlp", "embed"), "lin2")(h)
        return layers.Dropout(cfg.dropout)(h, deterministic)


class TransformerBlock(Base):
    """Post-LN block: LN(x + attention(x)), then LN(h + FFN(h))."""

    @nn.compact
    def __call__(self, x, keep, deterministic, output_attentions=False):
        attn, probs = MultiHeadSelfAttention(self.config, **self.numerics,
                                             name="attention")(x, keep, deterministic,
                                                               output_attentions)
        h = self._layer_norm("sa_layer_norm")(attn + x).astype(self.dtype)
        ffn = FFN(self.config, **self.numerics, name="ffn")(h, deterministic)
        out = self._layer_norm("output_layer_norm")(ffn + h).astype(self.dtype)
        return layers.constrain(out, layers.HIDDEN_AXES), probs


class DistilBertModel(Base):
    """The bare encoder: `last_hidden_state` [batch, length, dim]."""

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, deterministic: bool = True,
                 output_hidden_states: bool = False, output_attentions: bool = False,
                 packing: Packing | None = None):
        rows = Rows.of(input_ids, attention_mask, None, packing)
        x = DistilBertEmbeddings(self.config, **self.numerics,
                                 name="embeddings")(rows.input_ids, rows.position_ids, deterministic)
        x, hidden, attn = Encoder(self.config, **self.numerics, block=TransformerBlock,
                                  name="transformer")(x, rows.keep, deterministic,
                                                      output_attentions)
        return BaseModelOutput.of(rows.to_examples(x), hidden, attn, output_hidden_states,
                                  output_attentions)


class TiedProjection(Base):
    """x @ word_embeddingsᵀ + bias: a tied decoder owns only its bias (as in HF Flax)."""

    @nn.compact
    def __call__(self, x, table):
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",)),
                          (self.config.vocab_size,), self.param_dtype)
        logits = jnp.einsum("...d,vd->...v", x, table.astype(self.dtype), precision=self.precision)
        return logits + bias.astype(self.dtype)


class DistilBertHead(heads.Head):
    """DistilBERT under a head: the encoder as `distilbert`, called without token types; the
    classifiers read [CLS] -> pre_classifier -> ReLU -> dropout."""
    family = "distilbert"

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, deterministic: bool = True,
                 output_hidden_states: bool = False, output_attentions: bool = False,
                 packing: Packing | None = None):
        return self.head(heads.Inputs(input_ids, attention_mask, None, packing, deterministic,
                                      output_hidden_states, output_attentions))

    def encode(self, inputs: heads.Inputs) -> BaseModelOutput:
        return DistilBertModel(self.config, **self.numerics, name=self.family)(
            inputs.input_ids, inputs.attention_mask, inputs.deterministic,
            inputs.output_hidden_states, inputs.output_attentions, inputs.packing)

    def summary(self, out, deterministic):
        cfg = self.config
        x = self._dense(cfg.dim, ("embed", "hidden"), "pre_classifier")(out.last_hidden_state[:, 0])
        return layers.Dropout(cfg.seq_classif_dropout)(nn.relu(x), deterministic)

    @property
    def token_dropout(self):
        return self.config.dropout

    @property
    def span_dropout(self):
        return self.config.qa_dropout

    def lm_logits(self, hidden):
        """vocab_transform -> activation -> vocab_layer_norm -> vocab_projector (tied to the word
        embeddings unless tie_word_embeddings=False)."""
        cfg = self.config
        x = self._dense(cfg.dim, ("embed", "hidden"), "vocab_transform")(hidden)
        x = self._layer_norm("vocab_layer_norm")(layers.ACTIVATIONS[cfg.activation](x))
        x = x.astype(self.dtype)
        if cfg.tie_word_embeddings:
            return TiedProjection(cfg, **self.numerics, name="vocab_projector")(
                x, self.word_embeddings())
        return self._dense(cfg.vocab_size, ("embed", "vocab"), "vocab_projector")(x)


# --- the heads, bound to DistilBERT ------------------------------------------------------------------

class DistilBertForMaskedLM(heads.MaskedLM, DistilBertHead):
    """DistilBERT with its MLM head; also takes `logit_positions` and `final_hidden` (see
    heads.MaskedLM)."""

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, deterministic: bool = True,
                 output_hidden_states: bool = False, output_attentions: bool = False,
                 logit_positions=None, packing: Packing | None = None, final_hidden=None):
        return self.head(heads.Inputs(input_ids, attention_mask, None, packing, deterministic,
                                      output_hidden_states, output_attentions), logit_positions,
                         final_hidden)


class DistilBertForSequenceClassification(heads.SequenceClassification, DistilBertHead):
    """DistilBERT with a classifier on [CLS]: logits [batch, num_labels]."""


class DistilBertForMultipleChoice(heads.MultipleChoice, DistilBertHead):
    """DistilBERT scoring each choice: inputs [batch, choices, length], logits [batch, choices]."""


class DistilBertForTokenClassification(heads.TokenClassification, DistilBertHead):
    """DistilBERT with a classifier on every token: logits [batch, length, num_labels]."""


class DistilBertForQuestionAnswering(heads.QuestionAnswering, DistilBertHead):
    """DistilBERT with span start/end logits [batch, length]; the config must have num_labels == 2."""
