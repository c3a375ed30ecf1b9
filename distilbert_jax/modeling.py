"""DistilBERT (six model classes) and its BERT teacher as flax.linen Modules.

Parameter trees are laid out exactly as Hugging Face's Flax models lay them out
(`distilbert/transformer/layer/3/attention/q_lin/kernel`, `bert/encoder/layer/0/attention/self/query/kernel`),
so a `flax_model.msgpack` loads as is and PyTorch names follow from one renaming rule (see `hf.py`).
Outputs use HF's field names. Heads return logits; losses live in `losses.py`. Every class also
takes `packing` (a `Packing` layout): the same example-layout inputs and outputs, computed on rows
that hold several examples each, so padding is not computed (see data/packing.py).

What `apply` does not check (it runs traced, so it cannot raise on values): every id must lie in
[0, vocab_size) and no sequence may be longer than max_position_embeddings; outside them XLA's
gather clamps or returns garbage (NaN) silently. `check_fits` refuses both up front; every job
and `pipeline` calls it on the checkpoint's config and tokenizer before loading weights.
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from distilbert_jax import layers
from distilbert_jax.config import BertConfig, ConfigError, DistilBertConfig

Array = jax.Array


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


# ------------------------------------------------------------------------------------------------
# Outputs (HF field names)
# ------------------------------------------------------------------------------------------------

@flax.struct.dataclass
class BaseModelOutput:
    last_hidden_state: Array
    hidden_states: Optional[tuple[Array, ...]] = None  # embeddings output first, then each layer
    attentions: Optional[tuple[Array, ...]] = None  # each [batch, heads, query, key]
    pooler_output: Optional[Array] = None  # BERT only


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


@flax.struct.dataclass
class Packing:
    """Where an example-layout batch's tokens sit when several examples share one row.

    With `packing`, every model class takes its usual example-layout inputs and returns its usual
    example-layout outputs, but runs the encoder on packed rows: padding is never computed, each
    token attends only within its own example and reads its own position. `hidden_states` and
    `attentions` stay in the packed rows' layout. `data.packing` builds it.
    token_index: [examples..., ex_length] flat position (row * length + column) of each example
      token in the packed rows, -1 for padding.
    segment_ids: [rows, length] which example of its row a slot holds (1, 2, ...; 0 = padding).
    position_ids: [rows, length] each token's position within its own example.
    """
    token_index: Array
    segment_ids: Array
    position_ids: Array

    def rows_of(self, x: Array, fill=0) -> Array:
        """An example-layout per-token array ([examples..., ex_length]) in the packed rows."""
        rows, length = self.segment_ids.shape
        return layers.pack(x, self.token_index, rows, length, fill)

    def examples_of(self, x: Array) -> Array:
        """A packed per-token array ([rows, length, ...]) back in the example layout (0 at padding)."""
        return layers.unpack(x, self.token_index)

    def flat_examples(self, length: int) -> "Packing":
        """The same layout for examples flattened to [n, length] (multiple choice's choices)."""
        return self.replace(token_index=self.token_index.reshape(-1, length))


MATMUL_PRECISIONS = ("auto", "default", "high", "highest")
ATTENTION_IMPLEMENTATIONS = ("auto", "explicit", "xla", "cudnn")
# What the backward pass keeps of each transformer block, and recomputes from the block's input:
# "none" keeps every activation; "dots" keeps the dense layers' matmul outputs and recomputes the
# rest (attention, GELU, layer norms, dropout masks); "full" keeps only the input. Same numbers.
REMAT_POLICIES = {"none": None, "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
                  "full": jax.checkpoint_policies.nothing_saveable}


def check_matmul_precision(value: str) -> None:
    if value not in MATMUL_PRECISIONS:
        raise ConfigError(f"matmul_precision={value!r} is not one of {MATMUL_PRECISIONS}.")


def check_remat(value: str) -> None:
    if value not in REMAT_POLICIES:
        raise ConfigError(f"remat={value!r} is not one of {tuple(REMAT_POLICIES)}.")


class _Base(nn.Module):
    """Fields every model class has: the config, the compute dtype, the parameter dtype, and the
    matmul precision: "auto" is "highest" (true float32) for float32 compute and XLA's default for
    lower-precision compute; "high" allows TF32 (or bf16_3x) passes for float32 on GPUs and TPUs,
    "default" the backend's fastest. CPUs compute float32 matmuls in float32 whatever it says."""
    config: DistilBertConfig | BertConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    matmul_precision: str = "auto"
    # "auto": fused attention (jax.nn.dot_product_attention; cuDNN's flash attention for 16-bit
    # compute on a GPU) unless attention maps are asked for or attention dropout is active, then the
    # explicit softmax; "explicit", "xla" or "cudnn" ask for one (maps and dropout still need explicit).
    attention_implementation: str = "auto"
    remat: str = "none"  # see REMAT_POLICIES: activation memory for long sequences, for time

    @property
    def numerics(self) -> dict:
        """The fields a submodule inherits."""
        return {"dtype": self.dtype, "param_dtype": self.param_dtype,
                "matmul_precision": self.matmul_precision,
                "attention_implementation": self.attention_implementation, "remat": self.remat}

    @property
    def precision(self) -> str | None:
        """The `precision` every matmul of this module is given (None: the backend's default)."""
        check_matmul_precision(self.matmul_precision)
        if self.matmul_precision == "auto":
            return "highest" if jnp.dtype(self.dtype) == jnp.float32 else None
        return None if self.matmul_precision == "default" else self.matmul_precision

    def _attention(self, q, k, v, keep, dropout_rate, deterministic, output_attentions):
        """(context [b, q, h*d], attention maps [b, h, q, k] or None when fused)."""
        implementation = self.attention_implementation
        if implementation not in ATTENTION_IMPLEMENTATIONS:
            raise ConfigError(f"attention_implementation={implementation!r} is not one of "
                              f"{ATTENTION_IMPLEMENTATIONS}.")
        if output_attentions or implementation == "explicit" or (dropout_rate and not deterministic):
            probs = layers.attention_probs(q, k, keep, self.precision)
            dropped = layers.Dropout(dropout_rate, free_axes=(0, 2, 3))(probs, deterministic)
            return layers.attend(dropped, v, self.precision), probs
        if implementation == "auto":
            flash = (jax.default_backend() == "gpu" and keep.shape[1] == 1
                     and jnp.dtype(self.dtype) in (jnp.bfloat16, jnp.float16))
            implementation = "cudnn" if flash else "xla"
        return layers.fused_attention(q, k, v, keep, implementation, self.precision), None

    def _dense(self, features, axes, name):
        return layers.dense(features, axes, stddev=self.config.initializer_range, dtype=self.dtype,
                            param_dtype=self.param_dtype, precision=self.precision, name=name)

    def _layer_norm(self, name):
        return layers.layer_norm(self.config.layer_norm_eps, param_dtype=self.param_dtype, name=name)


def _encoder_outputs(hidden, all_hidden, all_attn, output_hidden_states, output_attentions,
                     pooled=None) -> BaseModelOutput:
    return BaseModelOutput(
        last_hidden_state=hidden,
        hidden_states=tuple(all_hidden) if output_hidden_states else None,
        attentions=tuple(all_attn) if output_attentions else None,
        pooler_output=pooled)


@flax.struct.dataclass
class _Rows:
    """What the encoder runs on: the example rows as given, or the packed rows of `packing`."""
    input_ids: Array
    token_type_ids: Optional[Array]
    position_ids: Array
    keep: Array  # [rows, 1 | query, key], see layers.attention_keep
    packing: Optional[Packing] = None

    @classmethod
    def of(cls, input_ids, attention_mask, token_type_ids, packing) -> "_Rows":
        if packing is None:
            if attention_mask is None:
                attention_mask = jnp.ones_like(input_ids)
            return cls(input_ids, token_type_ids, jax.lax.broadcasted_iota(jnp.int32, (1, input_ids.shape[-1]), 1),
                       layers.attention_keep(attention_mask, None))
        types = None if token_type_ids is None else packing.rows_of(token_type_ids)
        return cls(packing.rows_of(input_ids), types, packing.position_ids,
                   layers.attention_keep(None, packing.segment_ids), packing)

    def to_examples(self, hidden):
        return hidden if self.packing is None else self.packing.examples_of(hidden)


# ------------------------------------------------------------------------------------------------
# DistilBERT
# ------------------------------------------------------------------------------------------------

class DistilBertEmbeddings(_Base):
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


class MultiHeadSelfAttention(_Base):
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


class FFN(_Base):
    @nn.compact
    def __call__(self, x, deterministic):
        cfg = self.config
        h = self._dense(cfg.hidden_dim, ("embed", "mlp"), "lin1")(x)
        h = layers.constrain(layers.ACTIVATIONS[cfg.activation](h), layers.MLP_AXES)
        h = self._dense(cfg.dim, ("mlp", "embed"), "lin2")(h)
        return layers.Dropout(cfg.dropout)(h, deterministic)


class TransformerBlock(_Base):
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


class LayerStack(_Base):
    """Blocks named "0", "1", ... (HF's `layer.{i}`); returns every hidden state and attention map."""
    block: type[nn.Module] = TransformerBlock

    @nn.compact
    def __call__(self, x, keep, deterministic, output_attentions=False):
        check_remat(self.remat)
        block = self.block
        if self.remat != "none":  # `deterministic` and `output_attentions` are Python bools
            block = nn.remat(block, policy=REMAT_POLICIES[self.remat], static_argnums=(3, 4))
        hidden, attentions = [x], []
        for i in range(self.config.num_hidden_layers):
            x, probs = block(self.config, **self.numerics, name=str(i))(
                x, keep, deterministic, output_attentions)
            hidden.append(x)
            attentions.append(probs)
        return x, hidden, attentions


class Encoder(_Base):
    """HF's `transformer` (DistilBERT) or `encoder` (BERT) module: it only holds `layer`."""
    block: type[nn.Module] = TransformerBlock

    @nn.compact
    def __call__(self, x, keep, deterministic, output_attentions=False):
        return LayerStack(self.config, **self.numerics, block=self.block, name="layer")(
            x, keep, deterministic, output_attentions)


class DistilBertModel(_Base):
    """The bare encoder: `last_hidden_state` [batch, length, dim]."""

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, deterministic: bool = True,
                 output_hidden_states: bool = False, output_attentions: bool = False,
                 packing: Packing | None = None):
        rows = _Rows.of(input_ids, attention_mask, None, packing)
        x = DistilBertEmbeddings(self.config, **self.numerics,
                                 name="embeddings")(rows.input_ids, rows.position_ids, deterministic)
        x, hidden, attn = Encoder(self.config, **self.numerics, block=TransformerBlock,
                                  name="transformer")(x, rows.keep, deterministic,
                                                      output_attentions)
        return _encoder_outputs(rows.to_examples(x), hidden, attn, output_hidden_states,
                                output_attentions)


class _DistilBertHead(_Base):
    """A head over `distilbert` (the param prefix HF uses)."""

    def encode(self, input_ids, attention_mask, deterministic, output_hidden_states,
               output_attentions, packing) -> BaseModelOutput:
        return DistilBertModel(self.config, **self.numerics, name="distilbert")(
            input_ids, attention_mask, deterministic, output_hidden_states, output_attentions,
            packing)

    def classify_cls(self, hidden, deterministic, num_outputs):
        """[CLS] -> pre_classifier -> ReLU -> dropout -> classifier (sequence and choice heads)."""
        cfg = self.config
        x = self._dense(cfg.dim, ("embed", "hidden"), "pre_classifier")(hidden[:, 0])
        x = layers.Dropout(cfg.seq_classif_dropout)(nn.relu(x), deterministic)
        return self._dense(num_outputs, ("embed", "classes"), "classifier")(x)


class DistilBertForMaskedLM(_DistilBertHead):
    """vocab_transform -> activation -> vocab_layer_norm -> vocab_projector (tied to word embeddings)."""

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, deterministic: bool = True,
                 output_hidden_states: bool = False, output_attentions: bool = False,
                 logit_positions=None, packing: Packing | None = None):
        cfg = self.config
        out = self.encode(input_ids, attention_mask, deterministic, output_hidden_states,
                          output_attentions, packing)
        x = _at_positions(out.last_hidden_state, logit_positions)
        x = self._dense(cfg.dim, ("embed", "hidden"), "vocab_transform")(x)
        x = self._layer_norm("vocab_layer_norm")(layers.ACTIVATIONS[cfg.activation](x))
        x = x.astype(self.dtype)
        if cfg.tie_word_embeddings:
            table = _word_embeddings(self, ("distilbert", "embeddings", "word_embeddings"))
            logits = TiedProjection(cfg, **self.numerics, name="vocab_projector")(x, table)
        else:
            logits = self._dense(cfg.vocab_size, ("embed", "vocab"), "vocab_projector")(x)
        return LogitsOutput(logits, out.hidden_states, out.attentions)


class DistilBertForSequenceClassification(_DistilBertHead):
    @nn.compact
    def __call__(self, input_ids, attention_mask=None, deterministic: bool = True,
                 output_hidden_states: bool = False, output_attentions: bool = False,
                 packing: Packing | None = None):
        out = self.encode(input_ids, attention_mask, deterministic, output_hidden_states,
                          output_attentions, packing)
        logits = self.classify_cls(out.last_hidden_state, deterministic, self.config.num_labels)
        return LogitsOutput(logits, out.hidden_states, out.attentions)


class DistilBertForMultipleChoice(_DistilBertHead):
    """Inputs [batch, choices, length]; logits [batch, choices]."""

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, deterministic: bool = True,
                 output_hidden_states: bool = False, output_attentions: bool = False,
                 packing: Packing | None = None):
        batch, choices, length = input_ids.shape
        flat_mask = None if attention_mask is None else attention_mask.reshape(-1, length)
        out = self.encode(input_ids.reshape(-1, length), flat_mask, deterministic,
                          output_hidden_states, output_attentions,
                          None if packing is None else packing.flat_examples(length))
        logits = self.classify_cls(out.last_hidden_state, deterministic, 1)
        return LogitsOutput(logits.reshape(batch, choices), out.hidden_states, out.attentions)


class DistilBertForTokenClassification(_DistilBertHead):
    @nn.compact
    def __call__(self, input_ids, attention_mask=None, deterministic: bool = True,
                 output_hidden_states: bool = False, output_attentions: bool = False,
                 packing: Packing | None = None):
        cfg = self.config
        out = self.encode(input_ids, attention_mask, deterministic, output_hidden_states,
                          output_attentions, packing)
        x = layers.Dropout(cfg.dropout)(out.last_hidden_state, deterministic)
        logits = self._dense(cfg.num_labels, ("embed", "classes"), "classifier")(x)
        return LogitsOutput(logits, out.hidden_states, out.attentions)


def _require_two_labels(config):
    if config.num_labels != 2:
        raise ConfigError(f"num_labels={config.num_labels} must be 2 for question answering "
                          "(one start and one end logit per token).")


class DistilBertForQuestionAnswering(_DistilBertHead):
    """Span start/end logits [batch, length]; the config must have num_labels == 2."""

    def __post_init__(self):
        _require_two_labels(self.config)
        super().__post_init__()

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, deterministic: bool = True,
                 output_hidden_states: bool = False, output_attentions: bool = False,
                 packing: Packing | None = None):
        cfg = self.config
        out = self.encode(input_ids, attention_mask, deterministic, output_hidden_states,
                          output_attentions, packing)
        x = layers.Dropout(cfg.qa_dropout)(out.last_hidden_state, deterministic)
        logits = _within_examples(self._dense(2, ("embed", "classes"), "qa_outputs")(x), packing)
        return QuestionAnsweringOutput(logits[..., 0], logits[..., 1], out.hidden_states,
                                       out.attentions)


def _within_examples(span_logits, packing: Packing | None):
    """Packed span logits are each example's own: positions past its end get the dtype's minimum,
    out of any softmax (the unpacked model, as transformers', scores its padding too)."""
    if packing is None:
        return span_logits
    return jnp.where((packing.token_index >= 0)[..., None], span_logits,
                     jnp.finfo(span_logits.dtype).min)


def _word_embeddings(module: nn.Module, path: tuple[str, ...]) -> Array:
    """The (already created) word-embedding table that a tied output projection reuses."""
    tree = module.variables["params"]
    for key in path:
        tree = tree[key]
    return nn.meta.unbox(tree["embedding"])


def _at_positions(hidden, positions):
    """hidden [batch, length, dim] at flat token indices `positions` [n] -> [n, dim], or all of it.

    The masked-LM classes take `logit_positions` (beyond HF's signature): the vocabulary projection
    dominates a small model's cost, and the MLM loss needs logits only at its targets.
    """
    return hidden if positions is None else hidden.reshape(-1, hidden.shape[-1])[positions]


class TiedProjection(_Base):
    """x @ word_embeddingsᵀ + bias: a tied decoder owns only its bias (as in HF Flax)."""

    @nn.compact
    def __call__(self, x, table):
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",)),
                          (self.config.vocab_size,), self.param_dtype)
        logits = jnp.einsum("...d,vd->...v", x, table.astype(self.dtype), precision=self.precision)
        return logits + bias.astype(self.dtype)


# ------------------------------------------------------------------------------------------------
# BERT (the teacher). Module names mirror HF's BertModel so parameter paths do too.
# ------------------------------------------------------------------------------------------------

class BertEmbeddings(_Base):
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


class BertSelfAttention(_Base):
    @nn.compact
    def __call__(self, x, keep, deterministic, output_attentions=False):
        cfg = self.config
        q, k, v = (layers.split_heads(self._dense(cfg.hidden_size, ("embed", "heads"), name)(x),
                                      cfg.num_attention_heads) for name in ("query", "key", "value"))
        return self._attention(q, k, v, keep, cfg.attention_probs_dropout_prob, deterministic,
                               output_attentions)


class BertResidual(_Base):
    """HF's BertSelfOutput / BertOutput: LayerNorm(dropout(dense(x)) + residual)."""
    features_axes: tuple[str, str] = ("heads", "embed")

    @nn.compact
    def __call__(self, x, residual, deterministic):
        cfg = self.config
        x = self._dense(cfg.hidden_size, self.features_axes, "dense")(x)
        x = layers.Dropout(cfg.hidden_dropout_prob)(x, deterministic)
        return self._layer_norm("LayerNorm")(x + residual).astype(self.dtype)


class BertAttention(_Base):
    @nn.compact
    def __call__(self, x, keep, deterministic, output_attentions=False):
        context, probs = BertSelfAttention(self.config, **self.numerics, name="self")(
            x, keep, deterministic, output_attentions)
        out = BertResidual(self.config, **self.numerics, name="output")(
            context, x, deterministic)
        return out, probs


class BertIntermediate(_Base):
    @nn.compact
    def __call__(self, x):
        cfg = self.config
        h = self._dense(cfg.intermediate_size, ("embed", "mlp"), "dense")(x)
        return layers.constrain(layers.ACTIVATIONS[cfg.hidden_act](h), layers.MLP_AXES)


class BertLayer(_Base):
    @nn.compact
    def __call__(self, x, keep, deterministic, output_attentions=False):
        h, probs = BertAttention(self.config, **self.numerics, name="attention")(
            x, keep, deterministic, output_attentions)
        inter = BertIntermediate(self.config, **self.numerics, name="intermediate")(h)
        out = BertResidual(self.config, **self.numerics, features_axes=("mlp", "embed"),
                           name="output")(inter, h, deterministic)
        return layers.constrain(out, layers.HIDDEN_AXES), probs


class BertPooler(_Base):
    """tanh(dense(hidden[:, 0])): the [CLS] summary that BERT's classifier heads use."""

    @nn.compact
    def __call__(self, hidden):
        cfg = self.config
        return jnp.tanh(self._dense(cfg.hidden_size, ("embed", "hidden"), "dense")(hidden[:, 0]))


class BertModel(_Base):
    """BERT encoder with token types and (unless add_pooling_layer=False) the pooler."""
    add_pooling_layer: bool = True

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None,
                 deterministic: bool = True, output_hidden_states: bool = False,
                 output_attentions: bool = False, packing: Packing | None = None):
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        rows = _Rows.of(input_ids, attention_mask, token_type_ids, packing)
        x = BertEmbeddings(self.config, **self.numerics, name="embeddings")(
            rows.input_ids, rows.token_type_ids, rows.position_ids, deterministic)
        x, hidden, attn = Encoder(self.config, **self.numerics, block=BertLayer,
                                  name="encoder")(x, rows.keep, deterministic,
                                                  output_attentions)
        x = rows.to_examples(x)
        pooled = (BertPooler(self.config, **self.numerics, name="pooler")(x)
                  if self.add_pooling_layer else None)
        return _encoder_outputs(x, hidden, attn, output_hidden_states, output_attentions, pooled)


class BertPredictionHeadTransform(_Base):
    @nn.compact
    def __call__(self, x):
        cfg = self.config
        x = self._dense(cfg.hidden_size, ("embed", "hidden"), "dense")(x)
        return self._layer_norm("LayerNorm")(layers.ACTIVATIONS[cfg.hidden_act](x)).astype(self.dtype)


class BertLMPredictionHead(_Base):
    """transform, then the decoder (tied to the word embeddings, or its own kernel) plus a bias."""

    @nn.compact
    def __call__(self, x, table):
        cfg = self.config
        x = BertPredictionHeadTransform(cfg, **self.numerics, name="transform")(x)
        if cfg.tie_word_embeddings:
            logits = jnp.einsum("...d,vd->...v", x, table.astype(self.dtype), precision=self.precision)
        else:
            logits = nn.Dense(cfg.vocab_size, use_bias=False, dtype=self.dtype,
                              param_dtype=self.param_dtype, precision=self.precision, name="decoder",
                              kernel_init=layers.normal_init(cfg.initializer_range,
                                                             ("embed", "vocab")))(x)
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",)),
                          (cfg.vocab_size,), self.param_dtype)
        return logits + bias.astype(self.dtype)


class BertOnlyMLMHead(_Base):
    @nn.compact
    def __call__(self, x, table):
        return BertLMPredictionHead(self.config, **self.numerics,
                                    name="predictions")(x, table)


class BertForMaskedLM(_Base):
    """BERT with its MLM head (no pooler, as HF's BertForMaskedLM)."""

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None,
                 deterministic: bool = True, output_hidden_states: bool = False,
                 output_attentions: bool = False, logit_positions=None,
                 packing: Packing | None = None):
        out = BertModel(self.config, **self.numerics, add_pooling_layer=False,
                        name="bert")(input_ids, attention_mask, token_type_ids, deterministic,
                                     output_hidden_states, output_attentions, packing)
        table = _word_embeddings(self, ("bert", "embeddings", "word_embeddings"))
        logits = BertOnlyMLMHead(self.config, **self.numerics, name="cls")(
            _at_positions(out.last_hidden_state, logit_positions), table)
        return LogitsOutput(logits, out.hidden_states, out.attentions)


class _BertHead(_Base):
    """A task head over `bert`, as HF's BertFor* classes (used to fine-tune BERT teachers)."""
    add_pooling_layer: bool = False

    def encode(self, input_ids, attention_mask, token_type_ids, deterministic,
               output_hidden_states, output_attentions, packing) -> BaseModelOutput:
        return BertModel(self.config, **self.numerics, add_pooling_layer=self.add_pooling_layer,
                         name="bert")(input_ids, attention_mask, token_type_ids, deterministic,
                                      output_hidden_states, output_attentions, packing)

    def dropout(self, x, deterministic):
        cfg = self.config
        rate = cfg.hidden_dropout_prob if cfg.classifier_dropout is None else cfg.classifier_dropout
        return layers.Dropout(rate)(x, deterministic)


class BertForSequenceClassification(_BertHead):
    """pooler output -> dropout -> classifier."""
    add_pooling_layer: bool = True

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None,
                 deterministic: bool = True, output_hidden_states: bool = False,
                 output_attentions: bool = False, packing: Packing | None = None):
        out = self.encode(input_ids, attention_mask, token_type_ids, deterministic,
                          output_hidden_states, output_attentions, packing)
        x = self.dropout(out.pooler_output, deterministic)
        logits = self._dense(self.config.num_labels, ("embed", "classes"), "classifier")(x)
        return LogitsOutput(logits, out.hidden_states, out.attentions)


class BertForMultipleChoice(_BertHead):
    """Inputs [batch, choices, length]; pooler output -> dropout -> classifier(1)."""
    add_pooling_layer: bool = True

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None,
                 deterministic: bool = True, output_hidden_states: bool = False,
                 output_attentions: bool = False, packing: Packing | None = None):
        batch, choices, length = input_ids.shape
        flatten = lambda x: None if x is None else x.reshape(-1, length)
        out = self.encode(flatten(input_ids), flatten(attention_mask), flatten(token_type_ids),
                          deterministic, output_hidden_states, output_attentions,
                          None if packing is None else packing.flat_examples(length))
        x = self.dropout(out.pooler_output, deterministic)
        logits = self._dense(1, ("embed", "classes"), "classifier")(x)
        return LogitsOutput(logits.reshape(batch, choices), out.hidden_states, out.attentions)


class BertForTokenClassification(_BertHead):
    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None,
                 deterministic: bool = True, output_hidden_states: bool = False,
                 output_attentions: bool = False, packing: Packing | None = None):
        out = self.encode(input_ids, attention_mask, token_type_ids, deterministic,
                          output_hidden_states, output_attentions, packing)
        x = self.dropout(out.last_hidden_state, deterministic)
        logits = self._dense(self.config.num_labels, ("embed", "classes"), "classifier")(x)
        return LogitsOutput(logits, out.hidden_states, out.attentions)


class BertForQuestionAnswering(_BertHead):
    """qa_outputs on every token (no dropout, as HF); num_labels must be 2."""

    def __post_init__(self):
        _require_two_labels(self.config)
        super().__post_init__()

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None,
                 deterministic: bool = True, output_hidden_states: bool = False,
                 output_attentions: bool = False, packing: Packing | None = None):
        out = self.encode(input_ids, attention_mask, token_type_ids, deterministic,
                          output_hidden_states, output_attentions, packing)
        logits = _within_examples(
            self._dense(2, ("embed", "classes"), "qa_outputs")(out.last_hidden_state), packing)
        return QuestionAnsweringOutput(logits[..., 0], logits[..., 1], out.hidden_states,
                                       out.attentions)


# --- the model classes by family and head, and what every job asks of a model -----------------------

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


def abstract_params(model: nn.Module, input_shape=(1, 1)):
    """Shapes and dtypes of the model's params (boxed with logical axis names), without allocating."""
    ids = jnp.zeros(_init_shape(model, input_shape), jnp.int32)
    return jax.eval_shape(model.init, jax.random.key(0), ids)["params"]


def _init_shape(model, input_shape):
    """Multiple-choice models take [batch, choices, length]."""
    choice = (DistilBertForMultipleChoice, BertForMultipleChoice)
    return (1, *input_shape) if isinstance(model, choice) and len(input_shape) == 2 else input_shape


def init_params(model: nn.Module, seed: int = 0, input_shape=(1, 1), shardings=None):
    """Freshly initialised params (HF's initialisation), unboxed; created directly in `shardings`
    (a tree like the params') when given, so no device ever holds a full copy."""
    ids = jnp.zeros(_init_shape(model, input_shape), jnp.int32)
    init = lambda key: nn.meta.unbox(model.init(key, ids)["params"])
    return jax.jit(init, out_shardings=shardings)(jax.random.key(seed))


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
