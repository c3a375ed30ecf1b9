"""Helper for test_sharding.py: one tiny fine-tuning run on a mesh, in its own process (XLA_FLAGS
must be set before JAX starts). Writes the final params, the losses and the param specs to --out."""

import argparse
import json
import os
import sys

import flax.traverse_util
import jax
from jax.experimental import multihost_utils
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from conftest import make_tiny_model_dir, tiny_config, write_sst2  # noqa: E402
from test_preemption import terminated_at  # noqa: E402

from distilbert_jax import distributed, hf, sharding  # noqa: E402
from distilbert_jax.train import checkpoint, distill, finetune, preemption  # noqa: E402
from distilbert_jax.train import state as train_state  # noqa: E402


def restore_params(config, workdir, layout):
    """The params of `workdir`'s latest checkpoint, restored onto `layout` (whatever mesh saved them)."""
    task = finetune.build_task(config)
    model = finetune.abstract_model(config, task)
    tx, _ = train_state.optimizer(config, total_steps=1)
    placed = train_state.shardings(model, tx, layout)
    target = train_state.place(finetune.load_params(config, task, placed.params), tx, config.seed, placed)
    return checkpoint.Checkpoints(workdir).restore(target).params


def read_losses(run_dir, key):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line)[key] for line in f if key in line]


def run_distill(inputs, mesh_name, run_dir):
    """Four distillation steps of a 1-layer student from the tiny BERT teacher; (params, losses)."""
    teacher = make_tiny_model_dir(os.path.join(inputs, "teacher"), "bert_mlm")
    text = os.path.join(inputs, "corpus.txt")
    rng = np.random.default_rng(0)
    words = ["the", "movie", "was", "good", "and", "film", "is", "great", "paris", "city"]
    with open(text, "w") as f:
        f.write("\n".join(" ".join(rng.choice(words, rng.integers(12, 40))) for _ in range(64)))
    c = distill.default_config()
    c.teacher, c.corpus_files, c.max_length, c.length_multiple = teacher, (text,), 64, 16
    c.student_layers, c.batch_size, c.grad_accum_steps, c.max_steps = 1, 16, 2, 4
    c.lr, c.log_every, c.save_model, c.mesh = 1e-3, 1, True, mesh_name
    distill.distill(c, run_dir)
    if jax.process_index() != 0:  # process 0 exported the student
        return None, None
    _, params = hf.from_pretrained(os.path.join(run_dir, "student"))
    return params, read_losses(run_dir, "distill/loss")


def run_stacked(workdir, mesh, runs):
    """`runs` stacked tiny runs (seeds 42.., lrs 1e-3 / (i + 1)) on `mesh`: (each run's params
    keyed run<i>/<name>, {devices, losses of each run, stacked param specs, stacked batch spec})."""
    inputs = os.path.join(workdir, "inputs")
    config = tiny_config(make_tiny_model_dir(os.path.join(inputs, "model_in")),
                         write_sst2(os.path.join(inputs, "SST-2")), "sst2", mesh=mesh, max_steps=6,
                         checkpoint_every=2, log_every=1, save_model=False)
    layout = sharding.Layout.from_config(config)
    configs = []
    for i in range(runs):
        c = config.copy_and_resolve_references()
        c.seed, c.lr = 42 + i, 1e-3 / (i + 1)
        configs.append(c)
    dirs = [os.path.join(workdir, "run", f"run{i}") for i in range(runs)]
    finetune.train_and_evaluate_stacked(configs, dirs)
    flat = {}
    for i, (c, d) in enumerate(zip(configs, dirs)):
        params = flax.traverse_util.flatten_dict(restore_params(c, d, layout), sep="/")
        flat.update({f"run{i}/{k}": v for k, v in layout.to_host(params).items()})
    model = finetune.abstract_model(config, finetune.build_task(config))
    specs = flax.traverse_util.flatten_dict(layout.stacked(layout.params(model)), sep="/")
    return flat, {"devices": jax.device_count(), "losses": [read_losses(d, "train/loss") for d in dirs],
                  "specs": {k: [*v.spec] for k, v in specs.items()},
                  "batch_spec": [*layout.stacked(layout.batch).spec]}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mesh", default="dp")
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--restore_from", default="", help="only restore this workdir's checkpoint")
    parser.add_argument("--coordinator", default="", help="host:port: run as one of several processes")
    parser.add_argument("--num_processes", type=int, default=1)
    parser.add_argument("--process_id", type=int, default=0)
    parser.add_argument("--job", default="finetune", choices=("finetune", "distill"))
    parser.add_argument("--runs", type=int, default=0, help="> 0: this many runs stacked (seeds 42..)")
    parser.add_argument("--layout", default="", choices=("", "padded", "packed"),
                        help="fine-tuning with dropout off in this layout, so both layouts agree")
    parser.add_argument("--sigterm_after", type=int, default=-1,
                        help=">= 0: process 0 gets a SIGTERM while it runs the step after this one")
    args = parser.parse_args()
    if args.coordinator:
        distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    if args.runs:
        flat, info = run_stacked(args.workdir, args.mesh, args.runs)
        np.savez(args.out, **flat)
        with open(args.out + ".json", "w") as f:
            json.dump(info, f)
        return
    inputs = os.path.join(args.workdir, f"inputs_{jax.process_index()}")
    run_dir = args.restore_from or os.path.join(args.workdir, "run")
    if args.job == "distill":
        params, losses = run_distill(inputs, args.mesh, run_dir)
        if params is not None:
            flat = flax.traverse_util.flatten_dict(jax.device_get(params), sep="/")
            np.savez(args.out, **flat)
            with open(args.out + ".json", "w") as f:
                json.dump({"devices": jax.device_count(), "losses": losses}, f)
        return
    # One copy of the inputs, written by process 0 (every process's config names the same paths,
    # as a real multi-host run's do, so the workdir's config check holds on resume).
    inputs = os.path.join(args.workdir, "inputs")
    model_dir, data = os.path.join(inputs, "model_in"), os.path.join(inputs, "SST-2")
    if jax.process_index() == 0:
        make_tiny_model_dir(model_dir)
        write_sst2(data)
    multihost_utils.sync_global_devices("inputs written")
    config = tiny_config(model_dir, data, "sst2", mesh=args.mesh, max_steps=4, batch_size=16,
                         eval_batch_size=16, log_every=1, save_model=False)
    if args.layout:
        config.packing = args.layout == "packed"
        config.model_overrides = {f: 0.0 for f in hf.read_config(model_dir)[0].dropout_fields()}
    layout = sharding.Layout.from_config(config)
    losses = []
    if args.sigterm_after >= 0 and jax.process_index() == 0:
        finetune.make_step = terminated_at(args.sigterm_after, finetune.make_step)
    if not args.restore_from:
        try:
            finetune.train_and_evaluate(config, run_dir)
        except preemption.Preempted as e:
            print(f"preempted at step {e.step}", file=sys.stderr)
            sys.exit(preemption.EXIT_STATUS)
        losses = read_losses(run_dir, "train/loss")
    params = restore_params(config, run_dir, layout)
    params = flax.traverse_util.flatten_dict(params, sep="/")
    host_params = layout.to_host(params)
    if jax.process_index() != 0:
        return
    np.savez(args.out, **host_params)
    with open(args.out + ".json", "w") as f:
        json.dump({"specs": {k: [*v.sharding.spec] + [None] * (v.ndim - len(v.sharding.spec))
                             for k, v in params.items()},
                   "devices": jax.device_count(), "losses": losses}, f)


if __name__ == "__main__":
    main()
    if jax.process_count() > 1:  # process 0 has written the results: every process shuts down together,
        multihost_utils.sync_global_devices("results written")  # here, not after its own exit work
        jax.distributed.shutdown()
