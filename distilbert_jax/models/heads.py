"""The five task heads, each written once over an encoder family.

A head asks its family (`DistilBertHead` in distilbert.py, `BertHead` in bert.py) for the encoder's
output and for the few family-specific pieces listed on `Head`; it adds its own layers on top, at
the parameter paths Hugging Face uses. The public classes bind one head to one family, e.g.
`class DistilBertForSequenceClassification(SequenceClassification, DistilBertHead)`.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from distilbert_jax.config import ConfigError
from distilbert_jax.models.layers import Base, Dropout, Packing
from distilbert_jax.models.outputs import BaseModelOutput, LogitsOutput, QuestionAnsweringOutput

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Inputs:
    """One call's arguments, whichever family's signature they came through (DistilBERT has no
    token types)."""
    input_ids: Array
    attention_mask: Optional[Array]
    token_type_ids: Optional[Array]
    packing: Optional[Packing]
    deterministic: bool
    output_hidden_states: bool
    output_attentions: bool

    def flat_choices(self) -> "Inputs":
        """[batch, choices, length] inputs as [batch * choices, length] (multiple choice)."""
        length = self.input_ids.shape[-1]
        flat = lambda x: None if x is None else x.reshape(-1, length)
        packing = None if self.packing is None else self.packing.flat_examples(length)
        return dataclasses.replace(self, input_ids=flat(self.input_ids),
                                   attention_mask=flat(self.attention_mask),
                                   token_type_ids=flat(self.token_type_ids), packing=packing)


class Head(Base):
    """A task head over an encoder. Each head supplies `head`, its layers on top of the encoder;
    its family's base class supplies `__call__` (the family's signature, gathered into `Inputs`)
    and the family-specific pieces below."""
    family: ClassVar[str]  # the config's model_type, and the name the encoder's params sit under
    pools: ClassVar[bool] = False  # the head reads a pooled [CLS] summary (BERT: its pooler)

    def head(self, inputs: Inputs):
        """The head's own layers over `encode(inputs)`, and its output dataclass."""
        raise NotImplementedError

    def encode(self, inputs: Inputs) -> BaseModelOutput:
        """The family's encoder, named `family`."""
        raise NotImplementedError

    def summary(self, out: BaseModelOutput, deterministic: bool) -> Array:
        """[batch, dim]: what a sequence or choice classifier reads, dropout applied."""
        raise NotImplementedError

    @property
    def token_dropout(self) -> float:
        """The dropout rate before a token classifier."""
        raise NotImplementedError

    @property
    def span_dropout(self) -> float:
        """The dropout rate before the span scorer."""
        raise NotImplementedError

    def lm_logits(self, hidden: Array) -> Array:
        """Vocabulary logits from hidden states (the family's MLM transform and decoder)."""
        raise NotImplementedError

    def word_embeddings(self) -> Array:
        """The (already created) word-embedding table that a tied output projection reuses."""
        tree = self.variables["params"][self.family]["embeddings"]["word_embeddings"]
        return nn.meta.unbox(tree["embedding"])


class MaskedLM(Head):
    """Vocabulary logits at every token, or only at `logit_positions` (flat token indices, beyond
    HF's signature): the vocabulary projection dominates a small model's cost, and the MLM loss
    needs logits only at its targets. Given `final_hidden` (final hidden states [..., dim]) instead
    of inputs, the head alone makes their logits, so a loss can make them a chunk at a time."""

    def head(self, inputs: Inputs, logit_positions=None, final_hidden=None) -> LogitsOutput:
        if final_hidden is not None:
            return LogitsOutput(self.lm_logits(final_hidden), None, None)
        out = self.encode(inputs)
        hidden = out.last_hidden_state
        if logit_positions is not None:
            hidden = hidden.reshape(-1, hidden.shape[-1])[logit_positions]
        return LogitsOutput(self.lm_logits(hidden), out.hidden_states, out.attentions)


class SequenceClassification(Head):
    """summary -> classifier: logits [batch, num_labels]."""
    pools = True

    def head(self, inputs: Inputs) -> LogitsOutput:
        out = self.encode(inputs)
        x = self.summary(out, inputs.deterministic)
        logits = self._dense(self.config.num_labels, ("embed", "classes"), "classifier")(x)
        return LogitsOutput(logits, out.hidden_states, out.attentions)


class MultipleChoice(Head):
    """Inputs [batch, choices, length]; each choice's summary -> classifier(1): logits [batch, choices]."""
    pools = True

    def head(self, inputs: Inputs) -> LogitsOutput:
        batch, choices, _ = inputs.input_ids.shape
        out = self.encode(inputs.flat_choices())
        logits = self._dense(1, ("embed", "classes"), "classifier")(
            self.summary(out, inputs.deterministic))
        return LogitsOutput(logits.reshape(batch, choices), out.hidden_states, out.attentions)


class TokenClassification(Head):
    """dropout -> classifier on every token: logits [batch, length, num_labels]."""

    def head(self, inputs: Inputs) -> LogitsOutput:
        out = self.encode(inputs)
        x = Dropout(self.token_dropout)(out.last_hidden_state, inputs.deterministic)
        logits = self._dense(self.config.num_labels, ("embed", "classes"), "classifier")(x)
        return LogitsOutput(logits, out.hidden_states, out.attentions)


class QuestionAnswering(Head):
    """Span start/end logits [batch, length] from qa_outputs on every token; num_labels must be 2."""

    def __post_init__(self):
        if self.config.num_labels != 2:
            raise ConfigError(f"num_labels={self.config.num_labels} must be 2 for question answering "
                              "(one start and one end logit per token).")
        super().__post_init__()

    def head(self, inputs: Inputs) -> QuestionAnsweringOutput:
        out = self.encode(inputs)
        x = Dropout(self.span_dropout)(out.last_hidden_state, inputs.deterministic)
        logits = self._dense(2, ("embed", "classes"), "qa_outputs")(x)
        if inputs.packing is not None:
            # Packed span logits are each example's own: positions past its end get the dtype's
            # minimum, out of any softmax (the unpacked model, as transformers', scores its padding).
            logits = jnp.where((inputs.packing.token_index >= 0)[..., None], logits,
                               jnp.finfo(logits.dtype).min)
        return QuestionAnsweringOutput(logits[..., 0], logits[..., 1], out.hidden_states,
                                       out.attentions)
