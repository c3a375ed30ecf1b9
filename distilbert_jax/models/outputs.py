"""What the model classes return, under Hugging Face's field names (heads return logits; losses
live in `losses.py`)."""

from __future__ import annotations

from typing import Optional

import flax.struct
import jax

Array = jax.Array


@flax.struct.dataclass
class BaseModelOutput:
    last_hidden_state: Array
    hidden_states: Optional[tuple[Array, ...]] = None  # embeddings output first, then each layer
    attentions: Optional[tuple[Array, ...]] = None  # each [batch, heads, query, key]
    pooler_output: Optional[Array] = None  # BERT only

    @classmethod
    def of(cls, hidden, all_hidden, all_attn, output_hidden_states, output_attentions,
           pooled=None) -> "BaseModelOutput":
        """An encoder's output, with the per-layer tuples only where they were asked for."""
        return cls(last_hidden_state=hidden,
                   hidden_states=tuple(all_hidden) if output_hidden_states else None,
                   attentions=tuple(all_attn) if output_attentions else None,
                   pooler_output=pooled)


@flax.struct.dataclass
class LogitsOutput:
    """MaskedLM, SequenceClassification, MultipleChoice and TokenClassification outputs."""
    logits: Array
    hidden_states: Optional[tuple[Array, ...]] = None
    attentions: Optional[tuple[Array, ...]] = None


@flax.struct.dataclass
class QuestionAnsweringOutput:
    start_logits: Array
    end_logits: Array
    hidden_states: Optional[tuple[Array, ...]] = None
    attentions: Optional[tuple[Array, ...]] = None
