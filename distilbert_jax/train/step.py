"""The one training step every job uses: `make_step(loss_fn, tx, layout, ...)`, and its stacked
form `make_stacked_step` (K runs on a leading runs axis, one program).

A job says what it minimises (`loss_fn`); the step does the rest the same way for all of them:
the dropout key `fold_in(rng, step)`, micro-batch accumulation by `lax.scan`, the optax update,
gradient and parameter norms, explicit shardings, and the state donated.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from distilbert_jax import sharding
from distilbert_jax.train.state import TrainState, global_norm

# (params, frozen, batch, key) -> (loss, {term name: value}); `frozen` is whatever the loss reads
# but never trains (a teacher's params, or None).
LossFn = Callable[[Any, Any, Any, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]


def make_step(loss_fn: LossFn, tx: optax.GradientTransformation, layout: sharding.Layout,
              state_shardings: TrainState, accum_steps: int = 1, frozen_shardings=None,
              prefix: str = "train", learning_rate: optax.Schedule | None = None) -> Callable:
    """The jitted update `(state, frozen, batch) -> (state, metrics)`.

    `batch` is {"inputs": {...}, ...} with rows on the first axis; with `accum_steps` > 1 it is
    split into that many micro-batches whose losses and gradients are averaged, micro-batch i
    drawing its randomness from fold_in(key, i). Metrics: `<prefix>/loss`, `<prefix>/loss_<term>`,
    `train/grad_norm`, `train/param_norm`, `batch/tokens` (real tokens in the batch),
    `batch/computed_tokens` (the token slots the encoder computes: padded or packed rows) and, given
    the optimiser's schedule, `train/lr` (this update's), all computed on device.
    """
    update = _update(loss_fn, accum_steps, prefix)

    def train_step(state, frozen, batch):
        return update(state, frozen, batch, tx, learning_rate)
    return layout.jit(train_step, in_shardings=(state_shardings, frozen_shardings or layout.replicated,
                                          layout.batch),
                      out_shardings=(state_shardings, layout.replicated), donate_argnums=0)


def make_stacked_step(loss_fn: LossFn, optimizer: Callable, layout: sharding.Layout,
                      state_shardings: TrainState, accum_steps: int = 1, frozen_shardings=None,
                      prefix: str = "train") -> Callable:
    """The jitted update of K runs stacked on a leading runs axis:
    `(states, frozen, batches, lrs, active) -> (states, metrics)`, every leaf with the runs axis first.

    Run i takes `make_step`'s update on its own state and batch with the optimiser
    `optimizer(lrs[i]) -> (tx, schedule)`; where `active[i]` is False (a run that stopped early, or
    one resumed ahead of the others) its state is kept as it was, bit for bit. `state_shardings`
    places one run's state; the runs axis goes over the mesh's `runs` axis (`Layout.stacked`), and
    activation constraints inside each run keep their data and model axes.
    """
    update = _update(loss_fn, accum_steps, prefix)

    def one(state, frozen, batch, lr, active):
        tx, schedule = optimizer(lr)
        new, metrics = update(state, frozen, batch, tx, schedule)
        return jax.tree.map(lambda n, o: jnp.where(active, n, o), new, state), metrics

    spread = sharding.RUNS if layout.runs_ways > 1 else None

    def stacked_train_step(states, frozen, batches, lrs, active):
        return jax.vmap(one, in_axes=(0, None, 0, 0, 0), spmd_axis_name=spread)(
            states, frozen, batches, lrs, active)
    stacked = layout.stacked
    return layout.jit(stacked_train_step, in_shardings=(stacked(state_shardings),
                                          frozen_shardings or layout.replicated,
                                          stacked(layout.batch), stacked(layout.replicated),
                                          stacked(layout.replicated)),
                      out_shardings=(stacked(state_shardings), stacked(layout.replicated)),
                      donate_argnums=0)


def _update(loss_fn: LossFn, accum_steps: int, prefix: str) -> Callable:
    """One run's update `(state, frozen, batch, tx, learning_rate) -> (state, metrics)`, traced
    inside both step forms (see make_step for the metrics)."""
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def accumulated(params, frozen, batch, key):
        if accum_steps == 1:
            return grad_fn(params, frozen, batch, key)
        micro = jax.tree.map(lambda x: x.reshape(accum_steps, -1, *x.shape[1:]), batch)

        def body(total, xs):
            index, micro_batch = xs
            out = grad_fn(params, frozen, micro_batch, jax.random.fold_in(key, index))
            return jax.tree.map(jnp.add, total, out), None

        shapes = jax.eval_shape(grad_fn, params, frozen, jax.tree.map(lambda x: x[0], micro), key)
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        total, _ = jax.lax.scan(body, zeros, (jnp.arange(accum_steps), micro))
        return jax.tree.map(lambda x: x / accum_steps, total)

    def update(state: TrainState, frozen, batch, tx, learning_rate):
        key = jax.random.fold_in(state.rng, state.step)
        (loss, terms), grads = accumulated(state.params, frozen, batch, key)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {f"{prefix}/loss": loss, **{f"{prefix}/loss_{k}": v for k, v in terms.items()},
                   "train/grad_norm": global_norm(grads), "train/param_norm": global_norm(params),
                   "batch/tokens": jnp.sum(batch["inputs"]["attention_mask"]),
                   "batch/computed_tokens": computed_tokens(batch["inputs"])}
        if learning_rate is not None:
            metrics["train/lr"] = learning_rate(state.step)
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics
    return update


def computed_tokens(inputs) -> int:
    """How many token slots the encoder computes for a batch: its packed rows' or its padded rows'."""
    return (inputs["packing"]["segment_ids"] if "packing" in inputs else inputs["input_ids"]).size
