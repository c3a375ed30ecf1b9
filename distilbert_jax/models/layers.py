"""The pieces DistilBERT and BERT share: initialisers, attention, the model base class, the block
stack, and the packed-rows layout.

Every parameter is created with logical axis names (`nn.with_logical_partitioning`) so the sharding
rules in `sharding.py` can place it on any mesh; with no rules in scope the names cost nothing.
Numerics: parameters in `param_dtype`, matmuls in `dtype`, softmax and layer norm
in float32. Attention comes explicit (its maps, and dropout on them) or fused; masks cover padding
and, for packed rows, the boundaries between examples.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from distilbert_jax.config import BertConfig, ConfigError, DistilBertConfig

Array = jax.Array
Dtype = jnp.dtype | type

# Looked up in jax.nn at call time (not bound at import), so that a converter which intercepts
# jax.nn's functions, as jax2onnx does, writes one native op (e.g. ONNX Gelu) instead of their parts.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # torch's exact erf GELU
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": lambda x: jax.nn.relu(x),
    "silu": lambda x: jax.nn.silu(x),
    "swish": lambda x: jax.nn.silu(x),
    "tanh": lambda x: jnp.tanh(x),
}

# Logical names of activations, for `nn.with_logical_constraint` (distinct from the parameter names,
# so that e.g. FSDP can shard the "embed" dimension of weights but not of activations).
HIDDEN_AXES = ("batch", "length", "act_embed")
MLP_AXES = ("batch", "length", "act_mlp")


def normal_init(stddev: float, axes: Sequence[str | None]):
    return nn.with_logical_partitioning(nn.initializers.normal(stddev), tuple(axes))


class Dense(nn.Module):
    """`nn.Dense` (same parameters, dtypes and numbers) written as `jnp.matmul(x, kernel) + bias`.

    Why not `nn.Dense` itself: exporters see the matmul whole. jax2onnx writes a [batch, length, in]
    `nn.Dense` as a reshape to 2-D, a Gemm and a run-time computed reshape back (five nodes), and
    `jnp.matmul` as one ONNX MatMul that broadcasts over the leading axes: the MatMul + Add that
    onnxruntime's fusions and int8 kernels expect, with half the graph's nodes gone.
    """
    features: int
    use_bias: bool = True
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32
    precision: str | None = None
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features), self.param_dtype)
        bias = (self.param("bias", self.bias_init, (self.features,), self.param_dtype)
                if self.use_bias else None)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        y = jnp.matmul(x, kernel, precision=self.precision)
        return y if bias is None else y + bias


def dense(features: int, axes: tuple[str, str], *, stddev: float, dtype: Dtype,
          param_dtype: Dtype, precision: str | None, name: str) -> Dense:
    """A Linear layer initialised as HF's `_init_weights` does: N(0, stddev) kernel, zero bias."""
    return Dense(
        features, dtype=dtype, param_dtype=param_dtype, precision=precision, name=name,
        kernel_init=normal_init(stddev, axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes[1],)))


class Dropout(nn.Module):
    """`nn.Dropout` whose mask does not depend on how the batch was padded: the bit at an element is
    a function of the key and that element's index alone, whatever the sizes of `free_axes` (rows,
    tokens). So a run's trajectory is the same whichever bucket its batch was padded to, and a run
    stacked with others (padded to their longest bucket) draws what it draws alone."""
    rate: float
    free_axes: tuple[int, ...] | None = None  # None: all but the features (last); maps: (0, 2, 3)

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        if deterministic or self.rate == 0.0:
            return x
        if self.rate == 1.0:
            return jnp.zeros_like(x)
        keep = 1.0 - self.rate
        free = tuple(range(x.ndim - 1)) if self.free_axes is None else self.free_axes
        mask = padding_stable_bernoulli(self.make_rng("dropout"), keep, x.shape, free)
        return jnp.where(mask, x / keep, 0).astype(x.dtype)


def padding_stable_bernoulli(key: jax.Array, p: float, shape: tuple[int, ...],
                             free_axes: tuple[int, ...]) -> jax.Array:
    """Bernoulli(p) bits of `shape` whose value at an index does not change when a free axis grows.
    Each free axis but the last folds its index into the key; the last leads the draw, where
    Threefry's counter for its element i is i * (size of the rest) + j, whatever its own size."""
    first, *rest = free_axes
    if rest:
        keys = jax.vmap(jax.random.fold_in, (None, 0))(key, jnp.arange(shape[first]))
        keys = _materialized(keys)
        inner = shape[:first] + shape[first + 1:]
        inner_axes = tuple(a - 1 if a > first else a for a in rest)
        bits = jax.vmap(lambda k: padding_stable_bernoulli(k, p, inner, inner_axes))(keys)
        return jnp.moveaxis(bits, 0, first)
    leading = (shape[first],) + shape[:first] + shape[first + 1:]
    return jnp.moveaxis(jax.random.bernoulli(key, p, leading), 0, first)


def _materialized(keys: jax.Array) -> jax.Array:
    """`keys` computed once into memory: without the barrier XLA fuses each row's key hash into the
    per-element hash of the bits, and with Threefry unrolled (threefry.py) that nested fusion took
    a distillation step's compile from about 30 s to beyond 5 minutes."""
    if jax.dtypes.issubdtype(keys.dtype, jax.dtypes.prng_key):
        data = jax.lax.optimization_barrier(jax.random.key_data(keys))
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(keys))
    return jax.lax.optimization_barrier(keys)


def layer_norm(eps: float, *, param_dtype: Dtype, name: str) -> nn.LayerNorm:
    """LayerNorm computed in float32 whatever the compute dtype."""
    return nn.LayerNorm(
        epsilon=eps, dtype=jnp.float32, param_dtype=param_dtype, name=name,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)))


def embed(num: int, features: int, axes: tuple[str, str], *, stddev: float, dtype: Dtype,
          param_dtype: Dtype, name: str, padding_idx: int | None = None,
          table: np.ndarray | None = None) -> nn.Embed:
    """An embedding table: N(0, stddev) with HF's zeroed padding row, or a given constant `table`."""
    if table is not None:
        init = lambda key, shape, dtype=param_dtype: jnp.asarray(table, dtype)
    else:
        def init(key, shape, dtype=param_dtype):
            w = nn.initializers.normal(stddev)(key, shape, dtype)
            return w if padding_idx is None else w.at[padding_idx].set(0)
    return nn.Embed(num, features, dtype=dtype, param_dtype=param_dtype, name=name,
                    embedding_init=nn.with_logical_partitioning(init, axes))


def sinusoidal_table(n_positions: int, dim: int) -> np.ndarray:
    """HF's sinusoid: angle pos / 10000^(2*(j//2)/dim), sin on even columns, cos on odd ones."""
    pos = np.arange(n_positions, dtype=np.float64)[:, None]
    j = np.arange(dim)[None, :]
    angle = pos / np.power(10000, 2 * (j // 2) / dim)
    table = np.empty((n_positions, dim), np.float32)
    table[:, 0::2] = np.sin(angle[:, 0::2])
    table[:, 1::2] = np.cos(angle[:, 1::2])
    return table


def split_heads(x: jax.Array, n_heads: int) -> jax.Array:
    """[batch, length, heads*head_dim] -> [batch, length, heads, head_dim].

    `jnp.reshape` rather than `x.reshape`, here and in `merge_heads`: jax2onnx intercepts the
    function (not the method) and writes its symbolic sizes as Shape -> Gather -> Unsqueeze, the
    pattern onnxruntime folds into one fixed-rank Reshape at load time.
    """
    return jnp.reshape(x, (*x.shape[:-1], n_heads, x.shape[-1] // n_heads))


def merge_heads(x: jax.Array) -> jax.Array:
    """[batch, length, heads, head_dim] -> [batch, length, heads*head_dim]."""
    return jnp.reshape(x, (*x.shape[:2], -1))


def attention_keep(attention_mask: jax.Array | None, segment_ids: jax.Array | None) -> jax.Array:
    """Which keys each query attends to, boolean [batch, 1 | query, key].

    Unpacked rows: every query sees the row's real keys (`attention_mask` [batch, key], nonzero =
    real). Packed rows (`segment_ids` [batch, length], 0 = padding, 1.. = the row's sequences): a
    query sees only the keys of its own sequence, so nothing leaks between packed examples.
    """
    if segment_ids is None:
        return attention_mask.astype(bool)[:, None, :]
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    return same & (segment_ids[:, None, :] > 0)


def attention_probs(q: jax.Array, k: jax.Array, keep: jax.Array, precision: str | None = None
                    ) -> jax.Array:
    """Softmax(q kᵀ / sqrt(d)) over keys in float32; masked keys get float32's minimum.

    q, k: [batch, length, heads, head_dim]; keep: [batch, 1 | query, key] (see `attention_keep`).
    A masked score is set to the dtype's own minimum rather than -inf or -1e30, so an all-padding
    row becomes a uniform distribution instead of NaN in every dtype.
    """
    q = q / jnp.sqrt(q.shape[-1]).astype(q.dtype)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision=precision).astype(jnp.float32)
    scores = jnp.where(keep[:, None], scores, jnp.finfo(jnp.float32).min)
    return jax.nn.softmax(scores, axis=-1)


def fused_attention(q: jax.Array, k: jax.Array, v: jax.Array, keep: jax.Array,
                    implementation: str | None, precision: str | None = None) -> jax.Array:
    """softmax(q kᵀ / sqrt(d)) v without handing back the probabilities: `jax.nn.dot_product_attention`
    (cuDNN's flash attention with implementation="cudnn", XLA's otherwise) -> [b, q, h*d].

    cuDNN takes the padding as key lengths, so it serves unpacked rows (`keep` [b, 1, k], masks being
    prefixes of ones); packed rows use XLA with the segment mask. Matmuls follow `precision`.
    """
    if implementation == "cudnn" and keep.shape[1] == 1:
        lengths = jnp.sum(keep[:, 0], axis=-1, dtype=jnp.int32)
        out = jax.nn.dot_product_attention(q, k, v, query_seq_lengths=lengths,
                                           key_value_seq_lengths=lengths, implementation="cudnn")
    else:
        with jax.default_matmul_precision(precision or "default"):
            # masked keys as an additive bias (the dtype's minimum), not a boolean mask: the same
            # softmax, and exporters turn it into Add -> Softmax rather than a renormalisation
            bias = jnp.where(keep[:, None], 0, jnp.finfo(q.dtype).min).astype(q.dtype)
            out = jax.nn.dot_product_attention(q, k, v, bias=bias, implementation="xla")
    return merge_heads(out)


def attend(probs: jax.Array, v: jax.Array, precision: str | None = None) -> jax.Array:
    """Weighted sum of values: probs [b, h, q, k], v [b, k, h, d] -> [b, q, h*d]."""
    context = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v, precision=precision)
    return merge_heads(context)


# --- packing: several sequences per row (see data/packing.py for the layout) ------------------------

def pack(x: jax.Array, token_index: jax.Array, rows: int, length: int, fill=0) -> jax.Array:
    """Example layout -> packed rows: x [examples, ex_length, ...] goes to [rows, length, ...] at
    the flat positions `token_index` [examples, ex_length] gives (-1: padding, dropped)."""
    flat_index = jnp.where(token_index >= 0, token_index, rows * length).reshape(-1)
    values = x.reshape(flat_index.shape[0], *x.shape[token_index.ndim:])
    out = jnp.full((rows * length, *values.shape[1:]), fill, x.dtype)
    return out.at[flat_index].set(values, mode="drop").reshape(rows, length, *values.shape[1:])


def unpack(x: jax.Array, token_index: jax.Array) -> jax.Array:
    """Packed rows -> example layout: x [rows, length, ...] read at `token_index`, zeros at -1."""
    flat = x.reshape(-1, *x.shape[2:])
    valid = token_index >= 0
    gathered = flat[jnp.where(valid, token_index, 0)]
    return jnp.where(valid.reshape(*valid.shape, *([1] * (x.ndim - 2))), gathered, 0)


def constrain(x: jax.Array, axes: tuple[str, ...]) -> jax.Array:
    """Shards an activation by logical names when rules are in scope (a no-op otherwise)."""
    return nn.with_logical_constraint(x, axes)


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
        return pack(x, self.token_index, rows, length, fill)

    def examples_of(self, x: Array) -> Array:
        """A packed per-token array ([rows, length, ...]) back in the example layout (0 at padding)."""
        return unpack(x, self.token_index)

    def flat_examples(self, length: int) -> "Packing":
        """The same layout for examples flattened to [n, length] (multiple choice's choices)."""
        return self.replace(token_index=self.token_index.reshape(-1, length))


@flax.struct.dataclass
class Rows:
    """What the encoder runs on: the example rows as given, or the packed rows of `packing`."""
    input_ids: Array
    token_type_ids: Optional[Array]
    position_ids: Array
    keep: Array  # [rows, 1 | query, key], see attention_keep
    packing: Optional[Packing] = None

    @classmethod
    def of(cls, input_ids, attention_mask, token_type_ids, packing) -> "Rows":
        if packing is None:
            if attention_mask is None:
                attention_mask = jnp.ones_like(input_ids)
            return cls(input_ids, token_type_ids, jax.lax.broadcasted_iota(jnp.int32, (1, input_ids.shape[-1]), 1),
                       attention_keep(attention_mask, None))
        types = None if token_type_ids is None else packing.rows_of(token_type_ids)
        return cls(packing.rows_of(input_ids), types, packing.position_ids,
                   attention_keep(None, packing.segment_ids), packing)

    def to_examples(self, hidden):
        return hidden if self.packing is None else self.packing.examples_of(hidden)


# --- the model base class and the stack of blocks ---------------------------------------------------

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


class Base(nn.Module):
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
            probs = attention_probs(q, k, keep, self.precision)
            dropped = Dropout(dropout_rate, free_axes=(0, 2, 3))(probs, deterministic)
            return attend(dropped, v, self.precision), probs
        if implementation == "auto":
            flash = (jax.default_backend() == "gpu" and keep.shape[1] == 1
                     and jnp.dtype(self.dtype) in (jnp.bfloat16, jnp.float16))
            implementation = "cudnn" if flash else "xla"
        return fused_attention(q, k, v, keep, implementation, self.precision), None

    def _dense(self, features, axes, name):
        return dense(features, axes, stddev=self.config.initializer_range, dtype=self.dtype,
                     param_dtype=self.param_dtype, precision=self.precision, name=name)

    def _layer_norm(self, name):
        return layer_norm(self.config.layer_norm_eps, param_dtype=self.param_dtype, name=name)


class LayerStack(Base):
    """Blocks named "0", "1", ... (HF's `layer.{i}`); returns every hidden state and attention map."""
    block: type[nn.Module] = dataclasses.field(kw_only=True)  # the family's transformer block

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


class Encoder(Base):
    """HF's `transformer` (DistilBERT) or `encoder` (BERT) module: it only holds `layer`."""
    block: type[nn.Module] = dataclasses.field(kw_only=True)

    @nn.compact
    def __call__(self, x, keep, deterministic, output_attentions=False):
        return LayerStack(self.config, **self.numerics, block=self.block, name="layer")(
            x, keep, deterministic, output_attentions)
