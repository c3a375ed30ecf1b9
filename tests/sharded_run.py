"""Helper for test_sharding.py: one tiny fine-tuning run on a mesh, in its own process (XLA_FLAGS
must be set before JAX starts). Writes the final params, the losses and the param specs to --out."""

import argparse
import json
import os
import sys

import flax.traverse_util
import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import make_tiny_model_dir  # noqa: E402
from test_finetune import tiny_config, write_sst2  # noqa: E402

from distilbert_jax import distributed, hf, sharding  # noqa: E402
from distilbert_jax.train import checkpoint, finetune  # noqa: E402
from distilbert_jax.train import state as train_state  # noqa: E402


def restore_params(config, workdir, mesh, rules):
    """The params of `workdir`'s latest checkpoint, restored onto `mesh` (whatever mesh saved them)."""
    task = finetune.build_task(config)
    model, params, _ = finetune.load_model(config, task, mesh, rules)
    tx = train_state.adamw(train_state.linear_schedule(config.lr, 1, 0), b1=config.adam_b1,
                           b2=config.adam_b2, eps=config.adam_eps, weight_decay=config.weight_decay,
                           max_grad_norm=config.max_grad_norm)
    shardings = train_state.shardings(hf.abstract_params(model), tx, mesh, rules)
    target = train_state.create(params, tx, config.seed, shardings)
    return checkpoint.Checkpoints(workdir).restore(target).params


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mesh", default="dp")
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--restore_from", default="", help="only restore this workdir's checkpoint")
    parser.add_argument("--coordinator", default="", help="host:port: run as one of several processes")
    parser.add_argument("--num_processes", type=int, default=1)
    parser.add_argument("--process_id", type=int, default=0)
    args = parser.parse_args()
    if args.coordinator:
        distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    inputs = os.path.join(args.workdir, f"inputs_{jax.process_index()}")
    model_dir = make_tiny_model_dir(os.path.join(inputs, "model_in"))
    data = write_sst2(os.path.join(inputs, "SST-2"))
    config = tiny_config(model_dir, data, "sst2", mesh=args.mesh, max_steps=4, batch_size=16,
                         eval_batch_size=16, log_every=1, save_model=False)
    mesh = sharding.make_mesh(args.mesh)
    rules = tuple(tuple(r) for r in config.rules)
    losses = []
    run_dir = args.restore_from or os.path.join(args.workdir, "run")
    if not args.restore_from:
        finetune.train_and_evaluate(config, run_dir)
        with open(os.path.join(run_dir, "metrics.jsonl")) as f:
            losses = [json.loads(line)["train/loss"] for line in f if "train/loss" in line]
    params = flax.traverse_util.flatten_dict(restore_params(config, run_dir, mesh, rules), sep="/")
    host_params = sharding.to_host(params, mesh)
    if jax.process_index() != 0:
        return
    np.savez(args.out, **host_params)
    with open(args.out + ".json", "w") as f:
        json.dump({"specs": {k: [*v.sharding.spec] + [None] * (v.ndim - len(v.sharding.spec))
                             for k, v in params.items()},
                   "devices": jax.device_count(), "losses": losses}, f)


if __name__ == "__main__":
    main()
