"""A 5-seed sweep of the embedded default run point after point against stacked in one program,
side by side in one run: K = 1, 2, 4, 5 runs of all-MiniLM-L6-v2 on the packaged SST-2 sample.

    python benchmarks/stacked_sweep.py --steps=93 --out=benchmarks/results/stacked_sweep_cpu.json
    python benchmarks/stacked_sweep.py --steps=2 --ks=1,2 --eval_limit=32 --out=/tmp/check.json  # quick check

Each run is configs/smoke.py as it is (batch 32, max length 64, packed, lr 1e-4 with warmup)
with seeds 0..K-1, evaluated on dev at the end, no model export. "wall" is the whole sweep
including model loading, compilation and evaluation; "compiles" counts every XLA compilation in it (steps, evaluation shapes, small helpers), and
in brackets those of the training step (one per padded batch length met), with their seconds;
"updates/s per run" is each run's steps over the seconds of its training loop (the loop's
compilation and its last-step evaluation included), and "all runs" is K times that for stacked.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import jax

from distilbert_jax.experiments import sweep
from distilbert_jax.train import finetune

STEPS = ("jit(train_step)", "jit(stacked_train_step)")  # the jitted training steps' names
COMPILES = {"all": 0, "step": 0, "step_s": 0.0}


def _count(event: str, seconds: float, fun_name: str = "", **_) -> None:
    """Counts XLA compilations: all of them, and those of a training step (with their seconds)."""
    if event.endswith("backend_compile_duration"):
        COMPILES["all"] += 1
        if fun_name in STEPS:
            COMPILES["step"] += 1
            COMPILES["step_s"] += seconds


jax.monitoring.register_event_duration_secs_listener(_count)


def point_configs(k: int, args) -> list:
    """K configs of the embedded default, seeds 0..K-1, sized by the flags."""
    out = []
    for seed in range(k):
        c = sweep.load_config("configs/smoke.py", "", {})
        c.update(seed=seed, max_steps=args.steps, save_model=False,
                 log_every=max(args.steps, 1), checkpoint_every=max(args.steps, 1),
                 limit_eval_examples=args.eval_limit)
        out.append(c)
    return out


def measure(k: int, stacked: bool, args, root: str) -> dict:
    cs = point_configs(k, args)
    dirs = [os.path.join(root, f"{'stacked' if stacked else 'sequential'}{k}", f"seed{i}") for i in range(k)]
    before, started = dict(COMPILES), time.perf_counter()
    if stacked:
        results = finetune.train_and_evaluate_stacked(cs, dirs)
    else:
        results = [finetune.train_and_evaluate(c, d) for c, d in zip(cs, dirs)]
    wall = time.perf_counter() - started
    per_run = [r["steps_this_run"] / r["train_seconds_this_run"] for r in results]
    return {"k": k, "mode": "stacked" if stacked else "sequential", "wall_s": wall,
            "compiles": COMPILES["all"] - before["all"],
            "step_compiles": COMPILES["step"] - before["step"],
            "step_compile_s": COMPILES["step_s"] - before["step_s"],
            "updates_per_s_per_run": sum(per_run) / k,
            "updates_per_s_all_runs": sum(per_run) if not stacked else k * per_run[0],
            "dev_accuracy": [r["eval"]["dev"]["accuracy"] for r in results]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=93, help="updates per run (93: one epoch)")
    parser.add_argument("--ks", default="1,2,4,5")
    parser.add_argument("--eval_limit", type=int, default=0, help="> 0: the first N dev rows")
    parser.add_argument("--out", default="benchmarks/results/stacked_sweep_cpu.json")
    args = parser.parse_args(argv)
    if args.steps < 1:
        sys.exit(f"error: --steps={args.steps} must be a positive integer.")
    rows = []
    with tempfile.TemporaryDirectory(prefix="stacked-sweep-") as root:
        for k in (int(x) for x in args.ks.split(",")):
            for stacked in (False, True):
                rows.append(measure(k, stacked, args, root))
                print(json.dumps(rows[-1]), flush=True)
    lines = ["| K | mode | wall incl. compile (s) | compiles (train step) | step compile (s) | "
             "updates/s per run | updates/s all runs |", "|---:|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['k']} | {r['mode']} | {r['wall_s']:.1f} | {r['compiles']} ({r['step_compiles']}) | "
              f"{r['step_compile_s']:.1f} | "
              f"{r['updates_per_s_per_run']:.2f} | {r['updates_per_s_all_runs']:.2f} |" for r in rows]
    print("\n".join(lines))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"device": jax.devices()[0].device_kind, "platform": jax.devices()[0].platform,
                   "steps": args.steps, "eval_limit": args.eval_limit, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
