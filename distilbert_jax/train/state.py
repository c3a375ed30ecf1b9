"""TrainState, the AdamW optimiser with warmup + linear decay, and the no-decay mask.

The state holds everything a step changes (params, optimiser state, step) and the base RNG key; the
step's dropout key is `fold_in(rng, step)`, so a resumed run draws the same randomness.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import flax.traverse_util
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from distilbert_jax import sharding


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


def shardings(boxed_params, tx: optax.GradientTransformation, mesh, rules) -> TrainState:
    """Where every leaf of the train state lives: params and optimiser moments by the logical
    names of the params (optax builds its moments with the same boxes), counters replicated."""
    replicated = NamedSharding(mesh, PartitionSpec())
    return TrainState(step=replicated, params=sharding.tree_shardings(boxed_params, mesh, rules),
                      opt_state=sharding.tree_shardings(jax.eval_shape(tx.init, boxed_params), mesh, rules),
                      rng=replicated)


def create(params, tx: optax.GradientTransformation, seed: int,
           state_shardings: TrainState | None = None) -> TrainState:
    """The initial state, built directly in its shardings (params are already placed)."""
    def build(params):
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                          rng=jax.random.PRNGKey(seed))
    return jax.jit(build, out_shardings=state_shardings)(params)
