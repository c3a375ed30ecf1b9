"""TrainState, the AdamW optimiser with warmup + linear decay, and the no-decay mask.

The state holds everything a step changes (params, optimiser state, step) and the base RNG key; the
step's dropout key is `fold_in(rng, step)`, so a resumed run draws the same randomness.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import flax.struct
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import optax
from distilbert_jax import models, sharding


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array  # a raw uint32[2] key, so checkpoints store it as a plain array


def global_norm(tree) -> jax.Array:
    """The float32 L2 norm of a whole tree (gradients, params) for logging."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def decay_mask(params) -> Any:
    """True where weight decay applies: not on biases nor on LayerNorm scales (HF's no-decay rule)."""
    flat = flax.traverse_util.flatten_dict(params)
    return flax.traverse_util.unflatten_dict(
        {path: path[-1] not in ("bias", "scale") for path in flat})


def linear_schedule(lr: float, total_steps: int, warmup_steps: int) -> optax.Schedule:
    """0 -> lr over `warmup_steps`, then linearly to 0 at `total_steps` (HF's linear schedule)."""
    warmup = optax.linear_schedule(0.0, lr, max(warmup_steps, 1))
    decay = optax.linear_schedule(lr, 0.0, max(total_steps - warmup_steps, 1))
    return optax.join_schedules([warmup, decay], [warmup_steps])


def adamw(schedule: optax.Schedule, *, b1: float, b2: float, eps: float, weight_decay: float,
          max_grad_norm: float | None, frozen=None) -> optax.GradientTransformation:
    """Clip by global norm, then AdamW with decoupled decay masked off biases and LayerNorm.

    `frozen(params) -> bool tree` marks parameters that get no update at all (e.g. positions).
    """
    parts = []
    if max_grad_norm:
        parts.append(optax.clip_by_global_norm(max_grad_norm))
    parts.append(optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                             mask=decay_mask))
    tx = optax.chain(*parts)
    if frozen is not None:
        tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()},
                                   lambda p: jax.tree.map(lambda f: "frozen" if f else "train", frozen(p)))
    return tx


def optimizer(config, total_steps: int, frozen=None,
              lr=None) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(AdamW, its learning-rate schedule) from a job's config: lr, warmup_steps (or warmup_ratio
    of `total_steps`), adam_b1/b2/eps, weight_decay, max_grad_norm. `lr` replaces config.lr (a
    traced value: each stacked run's own)."""
    warmup = config.warmup_steps or int(config.warmup_ratio * total_steps)
    schedule = linear_schedule(config.lr if lr is None else lr, total_steps, warmup)
    tx = adamw(schedule, b1=config.adam_b1, b2=config.adam_b2, eps=config.adam_eps,
               weight_decay=config.weight_decay, max_grad_norm=config.max_grad_norm, frozen=frozen)
    return tx, schedule


def shardings(model, tx: optax.GradientTransformation, layout: sharding.Layout) -> TrainState:
    """Where every leaf of the train state lives: params and optimiser moments by the logical
    names of the params (optax builds its moments with the same boxes), counters replicated."""
    boxed = models.abstract_params(model)
    return TrainState(step=layout.replicated, params=layout.shardings(boxed),
                      opt_state=layout.shardings(jax.eval_shape(tx.init, boxed)),
                      rng=layout.replicated)


def initial(params, tx: optax.GradientTransformation, seed: int) -> TrainState:
    """The state before the first step: step 0, fresh optimiser moments, the run's base key."""
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      rng=jax.random.PRNGKey(seed))


def abstract(model, tx: optax.GradientTransformation) -> TrainState:
    """The shapes and dtypes of `model`'s initial state (nothing is allocated)."""
    params = nn.meta.unbox(models.abstract_params(model))
    return jax.eval_shape(lambda p: initial(p, tx, 0), params)


def create(model, params, tx: optax.GradientTransformation, seed: int,
           layout: sharding.Layout) -> tuple[TrainState, TrainState]:
    """(the initial state, its shardings): built directly in place, params moved to their shards."""
    placed = shardings(model, tx, layout)
    return place(params, tx, seed, placed), placed


def place(params, tx: optax.GradientTransformation, seed: int, placed: TrainState) -> TrainState:
    """The initial state built directly on `placed` (a state's shardings, computed once per model
    by `shardings`), params moved to their shards."""
    return jax.jit(lambda p: initial(p, tx, seed), out_shardings=placed)(
        jax.device_put(params, placed.params))


def stack(trees, shardings, layout: sharding.Layout):
    """K trees placed like `shardings` as one tree stacked on a leading runs axis (Layout.stacked)."""
    return jax.jit(lambda trees: jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees),
                   out_shardings=layout.stacked(shardings))(list(trees))


def take(shardings, layout: sharding.Layout):
    """`(stacked tree, i) -> run i's tree`, placed like `shardings` (one run's placement): one
    compiled program for every i (the index is a device scalar, put there explicitly)."""
    jitted = jax.jit(lambda tree, i: jax.tree.map(lambda x: x[i], tree), out_shardings=shardings)
    return lambda tree, i: jitted(tree, jax.device_put(np.int32(i), layout.replicated))
