"""The distillation corpus: masked-LM masking with token-count smoothing (more to come: binarisation,
token counts, length-grouped batches).

Masking follows the reference distiller, per batch: `ceil(mask_prop · real tokens)` positions are
drawn without replacement with probability ∝ max(count, 1)^-smoothing (special tokens never), then
80% become [MASK], 10% a random token, 10% stay; labels are the original ids there, -100 elsewhere.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from distilbert_jax.losses import IGNORE_INDEX


def token_probs(counts: np.ndarray, special_ids: Sequence[int], smoothing: float = 0.7) -> np.ndarray:
    """Selection weight of each vocabulary id: max(count, 1)^-smoothing, 0 for special tokens."""
    probs = np.maximum(np.asarray(counts, np.float64), 1.0) ** (-smoothing)
    probs[list(special_ids)] = 0.0
    return probs.astype(np.float32)


def mask_tokens(key: jax.Array, input_ids: jax.Array, attention_mask: jax.Array,
                probs: jax.Array, *, mask_prop: float = 0.15, word_mask: float = 0.8,
                word_keep: float = 0.1, word_rand: float = 0.1, mask_id: int, vocab_size: int):
    """(corrupted ids, labels) for one batch, on device and deterministic in `key`.

    Sampling without replacement ∝ weights is the Gumbel-top-k trick: perturb log-weights with
    Gumbel noise and keep the n largest; n varies per batch, so it is a rank threshold, not a shape.
    """
    select_key, action_key, random_key = jax.random.split(key, 3)
    real = attention_mask.astype(bool)
    weights = jnp.where(real, probs[input_ids], 0.0)
    n_targets = jnp.ceil(mask_prop * jnp.sum(real)).astype(jnp.int32)
    n_targets = jnp.minimum(n_targets, jnp.sum(weights > 0))
    flat = weights.reshape(-1)
    scores = jnp.where(flat > 0, jnp.log(jnp.where(flat > 0, flat, 1.0))
                       + jax.random.gumbel(select_key, flat.shape), -jnp.inf)
    ranks = jnp.empty_like(flat, jnp.int32).at[jnp.argsort(-scores)].set(
        jnp.arange(flat.size, dtype=jnp.int32))
    selected = (ranks < n_targets).reshape(input_ids.shape)

    action = jax.random.choice(action_key, 3, input_ids.shape,
                               p=jnp.array([word_mask, word_keep, word_rand]))
    random_ids = jax.random.randint(random_key, input_ids.shape, 0, vocab_size, input_ids.dtype)
    replaced = jnp.where(action == 0, mask_id, jnp.where(action == 1, input_ids, random_ids))
    corrupted = jnp.where(selected, replaced, input_ids)
    labels = jnp.where(selected, input_ids, IGNORE_INDEX)
    return corrupted, labels
