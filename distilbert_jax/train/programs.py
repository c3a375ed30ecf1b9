"""What a job compiles, declared from its config alone: the seam between a run and the plan.

A `Program` is one jitted function of a job (a train step, an eval step) with the abstract
arguments (shapes, dtypes, shardings) of the largest call its config can make. Each job builds its
steps with one function that its run and its `programs(config, layout)` both call, so
`python -m distilbert_jax.plan` compiles exactly what a run runs, on any device set, without
reading weights or data.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import numpy as np

from distilbert_jax import sharding
from distilbert_jax.data.packing import Packer


@dataclasses.dataclass(frozen=True)
class Program:
    """One jitted function of a job and the abstract arguments of its largest call.

    `tokens` is the token slots one call computes, `model_flops` the model's own FLOPs for them
    (`encoder_flops`), `calls` how many calls the config's run makes (None where the data decides)
    and `runs` how many stacked runs one call updates.
    """
    name: str
    fn: Callable  # Layout.jit-wrapped: lowers with the mesh and rules in scope
    args: tuple
    tokens: int
    model_flops: float
    calls: int | None = None
    runs: int = 1

    def lower(self):
        return self.fn.lower(*self.args)


def abstract(tree, shardings):
    """ShapeDtypeStructs of `tree` (arrays or ShapeDtypeStructs) placed as `shardings` says."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def abstract_batch(batch: dict, layout: sharding.Layout, runs: int = 0):
    """A global numpy batch as the step receives it: rows over the batch axes (`runs` > 0: that
    many copies stacked on a leading runs axis)."""
    if not runs:
        return jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=layout.batch), batch)
    placed = layout.stacked(layout.batch)
    return jax.tree.map(lambda v: jax.ShapeDtypeStruct((runs, *v.shape), v.dtype, sharding=placed), batch)


def pack(batch: dict, packer: Packer | None) -> dict:
    """The batch as a packed run sees it (one process holding the whole global batch)."""
    return batch if packer is None else packer(batch)


def stacked(tree, runs: int, layout: sharding.Layout, shardings):
    """ShapeDtypeStructs of K copies of `tree` on a leading runs axis, placed like `shardings`."""
    placed = layout.stacked(shardings)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct((runs, *x.shape), x.dtype, sharding=s),
                        tree, placed)


def computed_tokens(batch: dict) -> int:
    """The token slots the encoder computes for a numpy batch: its packed rows' or its rows'."""
    inputs = batch["inputs"]
    return int(np.prod(inputs["packing"]["segment_ids"].shape if "packing" in inputs
                       else inputs["input_ids"].shape))


def encoder_flops(model_config, tokens: int, length: int, trained: bool,
                  logit_tokens: int = 0) -> float:
    """The model's own FLOPs for `tokens` token slots in rows of `length`: 2 per weight per token in
    the encoder's matmuls plus the attention scores and sums (4·length·hidden per token and layer),
    and the vocabulary projection (2·hidden·(hidden + vocab)) at `logit_tokens`; three times that
    when trained (forward, and the backward's two products). Embedding lookups and the small heads
    are left out. The plan sets this beside the compiled program's count, so recomputation shows."""
    d, ffn, layers = model_config.hidden_size, model_config.intermediate_size, model_config.num_hidden_layers
    per_token = layers * (2 * (4 * d * d + 2 * d * ffn) + 4 * length * d)
    forward = per_token * tokens + 2 * d * (d + model_config.vocab_size) * logit_tokens
    return float(forward * (3 if trained else 1))

