"""Sweeps: a grid of tasks x learning rates x seeds expanded into runs, and their results gathered
into the paper's Table 1 layout (median over seeds at the best learning rate per task, macro score).

    python -m distilbert_jax.experiments.sweep run --config=configs/glue.py --tasks=rte,mrpc --lrs=2e-5,5e-5 \
        --seeds=42,43,44 --root=runs/glue [--launcher=tpu] [--set=model=packaged:all-MiniLM-L6-v2]
    python -m distilbert_jax.experiments.sweep run ... --set=--config.max_steps=100   # main's form works too
    python -m distilbert_jax.experiments.sweep table --root=runs/glue        # table.md, table.csv, table.png

--lrs and --seeds default to the config file's SWEEP grid (configs/glue.py). `run` trains each grid
point in sequence here through the same job dispatch as the command line (a finished run is
skipped, an interrupted one resumes), or with --launcher=tpu prints one `launch/tpu.sh run` line per
point to start on TPU VMs. With --stacked
(or SWEEP's `stacked`) the points of a task train together as runs stacked in one program, each in
its own workdir exactly as alone (docs/sweeps.md).
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import os
import shlex
import statistics
import sys
from typing import Any

from distilbert_jax import configs, jobs, startup, storage
from distilbert_jax.config import ConfigError
from distilbert_jax.metrics import glue_score
from distilbert_jax.train import finetune, workdir as workdirs

# The split whose scores the table reports.
MAIN_SPLIT = "dev"


def grid(tasks, lrs, seeds) -> list[dict[str, Any]]:
    return [{"task": t, "lr": lr, "seed": s} for t, lr, s in itertools.product(tasks, lrs, seeds)]


def run_dir(root: str, point: dict) -> str:
    return os.path.join(root, point["task"], f"lr{point['lr']:g}_seed{point['seed']}")


def parse_set(items) -> dict[str, str]:
    """--set values -> {field: value}: `field=value`, or main's `--config.field=value`."""
    overrides = {}
    for item in items:
        key, eq, value = item.partition("=")
        key = key.removeprefix("--").removeprefix("config.")
        if not eq or not key:
            raise ConfigError(f"--set={item} is not of the form field=value (or --config.field=value).")
        overrides[key] = value
    return overrides


def config_module(path: str):
    """The config file `path` names (configs/<name>.py from any folder), loaded."""
    spec = importlib.util.spec_from_file_location("sweep_config", configs.resolve(path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_config(path: str, arg: str, overrides: dict[str, str]):
    """The config file `path` for `arg` with the overrides, parsed as main parses --config.<field>."""
    return startup.config_from(f"{path}:{arg}" if arg else path,
                               [f"--config.{key}={value}" for key, value in overrides.items()])


def run_sweep(args) -> list[str]:
    """Trains (or prints launch lines for) every grid point; returns the run directories."""
    overrides = parse_set(args.set)
    tasks = args.tasks.split(",")
    default = getattr(config_module(args.config), "SWEEP", {})  # the config file's grid
    lrs = [float(x) for x in args.lrs.split(",")] if args.lrs else list(default.get("lr", ()))
    seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else list(default.get("seed", ()))
    if not lrs or not seeds:
        raise ConfigError(f"{args.config} has no SWEEP grid: give --lrs and --seeds.")
    points = grid(tasks, lrs, seeds)
    if args.launcher == "local" and (args.stacked or default.get("stacked", False)):
        return run_stacked(args.config, points, overrides, args.root)
    dirs = []
    for point in points:
        workdir = run_dir(args.root, point)
        dirs.append(workdir)
        if args.launcher == "tpu":
            flags = [f"--config.lr={point['lr']}", f"--config.seed={point['seed']}"] + [
                f"--config.{k}={v}" for k, v in overrides.items()]
            print(" ".join(["launch/tpu.sh", "run", f"{args.config}:{point['task']}", workdir]
                           + [shlex.quote(f) for f in flags]))
            continue
        config = point_config(args.config, point, overrides)
        workdirs.run_once(jobs.run, config, workdir)  # a finished point is kept, if of this config
    return dirs


def point_config(path: str, point: dict, overrides: dict[str, str]):
    """A grid point's config: the task's config with the sweep's overrides, lr and seed."""
    config = load_config(path, point["task"], overrides)
    config.lr, config.seed = point["lr"], point["seed"]
    return config


def groups(configs: list) -> list[list[int]]:
    """The indices of `configs` grouped by every field but finetune.STACKED_FIELDS: each group
    can train stacked."""
    keyed: dict[str, list[int]] = {}
    for i, c in enumerate(configs):
        fields = {k: v for k, v in c.to_dict().items() if k not in finetune.STACKED_FIELDS}
        keyed.setdefault(json.dumps(fields, sort_keys=True, default=str), []).append(i)
    return list(keyed.values())


def run_stacked(path: str, points: list[dict], overrides: dict[str, str], root: str) -> list[str]:
    """Trains the grid as stacked groups (one per set of shape-fixing fields, said in one line);
    finished points are kept (if of this config) and the rest of each group trains together."""
    by_point = [point_config(path, p, overrides) for p in points]
    dirs = [run_dir(root, p) for p in points]
    split = groups(by_point)
    if len(split) > 1:
        first = by_point[split[0][0]].to_dict()
        differ = sorted({k for g in split[1:] for k, v in by_point[g[0]].to_dict().items()
                         if k not in finetune.STACKED_FIELDS and first.get(k) != v})
        print(f"The {len(points)} points differ in {differ}, so they train as {len(split)} stacked "
              f"groups: " + ", ".join(f"{by_point[g[0]].task} ({len(g)} runs)" for g in split))
    for group in split:
        todo = []
        for i in group:
            if os.path.exists(os.path.join(dirs[i], "results.json")):
                workdirs.check_resume(by_point[i], dirs[i])  # a finished point is kept, if of this config
            else:
                todo.append(i)
        if todo:
            finetune.train_and_evaluate_stacked([by_point[i] for i in todo], [dirs[i] for i in todo])
    return dirs


def collect(root: str) -> list[dict]:
    """Every results.json under root with its task, lr and seed (from the run's config.json)."""
    rows = []
    for directory, _, files in os.walk(root):
        if "results.json" in files and "config.json" in files:
            with open(os.path.join(directory, "results.json")) as f:
                results = json.load(f)
            with open(os.path.join(directory, "config.json")) as f:
                config = json.load(f)
            if MAIN_SPLIT in results.get("eval", {}):
                rows.append({"task": config["task"], "lr": config["lr"], "seed": config["seed"],
                             "metrics": results["eval"][MAIN_SPLIT]})
    return rows


def table(rows: list[dict]) -> tuple[list[str], list[dict]]:
    """Per task: the lr with the best median score over seeds, and that median; then the macro score."""
    tasks = sorted({r["task"] for r in rows})
    summary = []
    for task in tasks:
        by_lr: dict[float, list[float]] = {}
        for r in rows:
            if r["task"] == task:
                by_lr.setdefault(r["lr"], []).append(glue_score(r["metrics"]))
        best_lr = max(by_lr, key=lambda lr: statistics.median(by_lr[lr]))
        summary.append({"task": task, "score": statistics.median(by_lr[best_lr]), "lr": best_lr,
                        "seeds": len(by_lr[best_lr])})
    return tasks, summary


def write_table(root: str) -> str:
    rows = collect(root)
    if not rows:
        raise SystemExit(f"No finished runs (results.json + config.json) under {root}.")
    tasks, summary = table(rows)
    macro = statistics.mean(s["score"] for s in summary)
    header = ["Model", "Score", *tasks]
    values = ["this sweep", f"{macro:.1f}", *(f"{s['score']:.1f}" for s in summary)]
    markdown = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                "| " + " | ".join(values) + " |", "",
                "Best learning rate (seeds): " + ", ".join(
                    f"{s['task']} {s['lr']:g} ({s['seeds']})" for s in summary)]
    text = "\n".join(markdown) + "\n"
    storage.write_text(os.path.join(root, "table.md"), text)
    table_csv = [["task", "score", "best_lr", "seeds"]] + [
        [s["task"], f"{s['score']:.2f}", s["lr"], s["seeds"]] for s in summary] + [
        ["macro", f"{macro:.2f}", "", ""]]
    storage.write_text(os.path.join(root, "table.csv"), "".join(",".join(map(str, r)) + "\n" for r in table_csv))
    plot(summary, macro, os.path.join(root, "table.png"))
    return text


def plot(summary: list[dict], macro: float, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(1.2 * len(summary) + 2, 3))
    ax.bar([s["task"] for s in summary], [s["score"] for s in summary], color="#4c72b0")
    ax.axhline(macro, color="#c44e52", linestyle="--", label=f"macro {macro:.1f}")
    ax.set_ylabel("dev score (median over seeds)")
    ax.legend()
    fig.tight_layout()
    with storage.atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--config", required=True, help="a configs/*.py file taking the task as its arg")
    r.add_argument("--tasks", required=True)
    r.add_argument("--lrs", default="", help="e.g. 2e-5,5e-5 (default: the config file's SWEEP lr)")
    r.add_argument("--seeds", default="", help="e.g. 42,43 (default: the config file's SWEEP seed)")
    r.add_argument("--root", required=True)
    r.add_argument("--launcher", choices=("local", "tpu"), default="local")
    r.add_argument("--stacked", action="store_true",
                   help="train the points of each task stacked in one program (docs/sweeps.md)")
    r.add_argument("--set", action="append", default=[],
                   help="field=value (or --config.field=value, as main takes it) for every run")
    t = sub.add_parser("table")
    t.add_argument("--root", required=True)
    args = parser.parse_args(argv)

    def run():
        if args.command == "run":
            run_sweep(args)
            if args.launcher == "tpu":
                return
        print(write_table(args.root))
    # main's start-up (deterministic GPU reductions: exact resume); every point's state is saved
    # at a preemption, and the same command resumes the sweep
    return startup.command(run, "run the same command to resume the sweep")


if __name__ == "__main__":
    sys.exit(main())
