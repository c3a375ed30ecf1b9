"""Per-device train-state memory of each sharding preset, and the step time of a sharded step.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python benchmarks/sharding_presets.py

Memory is exact bookkeeping, not a measurement of a run: for every leaf of the AdamW train state
(params + two moments) it adds the bytes of the shard one device holds under the preset's shardings.
The timing runs a real jitted train step of a small DistilBERT on every preset; on virtual CPU devices
it is a correctness check of the sharded program, not a speed claim.
"""

from __future__ import annotations

import time

import jax
import numpy as np

import distilbert_jax as dj
from distilbert_jax import models, sharding
from distilbert_jax.train import finetune
from distilbert_jax.train import state as train_state
from distilbert_jax.train.step import make_step

MODELS = {
    "DistilBERT-base (seq. classif.)": dj.DistilBertForSequenceClassification(dj.DistilBertConfig()),
    "BERT-base (masked LM)": dj.BertForMaskedLM(dj.BertConfig()),
}


def tx():
    return train_state.adamw(train_state.linear_schedule(1e-4, 100, 10), b1=0.9, b2=0.999, eps=1e-8,
                             weight_decay=0.01, max_grad_norm=1.0)


def bytes_per_device(model, mesh) -> float:
    shardings = train_state.shardings(model, tx(), sharding.Layout(mesh, sharding.RULES))
    abstract = jax.eval_shape(tx().init, models.abstract_params(model))
    abstract = (models.abstract_params(model), abstract)
    shardings = (shardings.params, shardings.opt_state)
    # every logical box holds exactly one array, so the two trees' leaves pair up one to one
    return sum(int(np.prod(where.shard_shape(leaf.shape))) * leaf.dtype.itemsize
               for leaf, where in zip(jax.tree.leaves(abstract), jax.tree.leaves(shardings)))


def step_time(mesh, steps: int = 5) -> float:
    cfg = dj.DistilBertConfig(dim=256, n_heads=4, n_layers=4, hidden_dim=1024, vocab_size=8192)
    model = dj.DistilBertForSequenceClassification(cfg)
    optimizer = tx()
    layout = sharding.Layout(mesh, sharding.RULES)
    state, shardings = train_state.create(model, models.init_params(model), optimizer, 0, layout)
    step = make_step(finetune.loss_fn(model, "sequence_classification"), optimizer, layout, shardings)
    rng = np.random.default_rng(0)
    batch = {"inputs": {"input_ids": rng.integers(0, 8192, (32, 128)).astype(np.int32),
                        "attention_mask": np.ones((32, 128), np.int32)},
             "targets": {"labels": rng.integers(0, 2, (32,)).astype(np.int32)}}
    batch = layout.put_batch(batch)
    state, metrics = step(state, None, batch)  # compile
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = step(state, None, batch)
    jax.block_until_ready(metrics)
    return (time.perf_counter() - start) / steps


def main():
    devices = jax.devices()
    print(f"{len(devices)} {devices[0].platform} devices\n")
    print("| train state (params + AdamW moments) | " + " | ".join(sharding.PRESETS) + " | 1 device |")
    print("|---|" + "---:|" * (len(sharding.PRESETS) + 1))
    for name, model in MODELS.items():
        cells = [f"{bytes_per_device(model, sharding.make_mesh(p)) / 2**20:.0f} MiB"
                 for p in sharding.PRESETS]
        single = sharding.make_mesh("dp", devices[:1])
        print(f"| {name} | " + " | ".join(cells) + f" | {bytes_per_device(model, single) / 2**20:.0f} MiB |")
    print("\n| step time, small DistilBERT (4x256), batch 32 x 128 | " + " | ".join(sharding.PRESETS)
          + " | 1 device |")
    print("|---|" + "---:|" * (len(sharding.PRESETS) + 1))
    cells = [f"{1000 * step_time(sharding.make_mesh(p)):.0f} ms" for p in sharding.PRESETS]
    single = f"{1000 * step_time(sharding.make_mesh('dp', devices[:1])):.0f} ms"
    print(f"| {len(devices)} x {devices[0].platform} | " + " | ".join(cells) + f" | {single} |")


if __name__ == "__main__":
    main()
