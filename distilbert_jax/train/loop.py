"""The step loop every job shares: run the jitted step, log, evaluate, checkpoint, stop on a
non-finite loss. Fine-tuning and distillation differ only in the step and the evaluation they pass.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Iterator

import jax
import numpy as np

from distilbert_jax.errors import UserError
from distilbert_jax.train import preemption
from distilbert_jax.train.checkpoint import Checkpoints
from distilbert_jax.train.reporting import MetricWriter, Progress

log = logging.getLogger(__name__)


class TrainingError(UserError, RuntimeError):
    """Training cannot go on (a non-finite loss, a head that does not fit the task)."""


@dataclasses.dataclass
class Schedule:
    """When to log, evaluate and checkpoint (in steps; evaluate_every 0 = never during training)."""
    total_steps: int
    log_every: int
    checkpoint_every: int
    evaluate_every: int = 0


@dataclasses.dataclass
class Run:
    """One run's share of a loop: its workdir, checkpoints, metric writer and progress line, its
    evaluation `(state, step) -> {split: metrics}`, its early stopping `stop(step) -> bool` and the
    step it starts at."""
    workdir: str
    checkpoints: Checkpoints
    writer: MetricWriter
    progress: Progress
    evaluate: Callable[[Any, int], dict[str, dict[str, float]]] | None = None
    stop: Callable[[int], bool] | None = None
    start: int = 0


def run(state, step_fn: Callable, batches: Iterator, schedule: Schedule, *, workdir: str,
        checkpoints: Checkpoints, writer: MetricWriter, progress: Progress,
        evaluate: Callable[[Any, int], dict[str, dict[str, float]]] | None = None,
        stop: Callable[[int], bool] | None = None):
    """Runs from `state.step` to `schedule.total_steps`, or until `stop(step)` says so after an
    evaluation (early stopping; checked at the start too, so a resumed run stops where it did);
    returns the final state.

    Step metrics stay on device until a log, evaluation or checkpoint boundary, where they are
    fetched together and averaged over the window (`train/lr` is the window's last; a
    `batch/tokens` metric also gives `perf/tokens_per_sec`). Nothing else crosses between host
    and device implicitly (tests hold the loop to `jax.transfer_guard("disallow")`). Every
    checkpoint is preceded by such a fetch, so a non-finite loss, gradient norm or parameter norm
    stops the run before its state is saved, naming the step and the metric.
    """
    return run_stacked(state, lambda state, batch, active: step_fn(state, batch), batches, schedule,
                       [Run(workdir, checkpoints, writer, progress, evaluate, stop,
                            int(jax.device_get(state.step)))])


def run_stacked(state, step_fn: Callable, batches: Iterator, schedule: Schedule, runs: list[Run],
                part: Callable[[Any, int], Any] | None = None):
    """`run` for K runs held in one state: `step_fn(state, batch, active)` advances run i where
    `active[i]` (a numpy bool per run), and `part(state, i)` is run i's own state (None: one run,
    not stacked, which is the state itself). Run i starts at `runs[i].start`; step s updates it only
    while it is at step s-1 and has not stopped, so runs resumed at different steps catch up with
    the others and an early-stopped run stops updating while the others go on. Each run logs,
    evaluates, checkpoints and stops in its own workdir exactly as `run` describes."""
    steps = [r.start for r in runs]  # each run's step (known here)
    pending = []  # unfetched (step, active, metrics)
    stopped = [r.stop is not None and r.stop(s) for r, s in zip(runs, steps)]
    own = (lambda tree, i: tree) if part is None else part
    metrics_of = (lambda m, i: m) if part is None else (lambda m, i: {k: v[i] for k, v in m.items()})

    def flush(step: int):
        fetched = jax.device_get(pending)
        pending.clear()
        for i, r in enumerate(runs):
            _report(step, [(s, metrics_of(m, i)) for s, active, m in fetched if active[i]], r)

    first = min((s for s, done in zip(steps, stopped) if not done), default=schedule.total_steps)
    with preemption.watch() as notice:
        for step in range(first + 1, schedule.total_steps + 1):
            active = np.array([not done and s == step - 1 for s, done in zip(steps, stopped)])
            state, metrics = step_fn(state, next(batches), active)
            pending.append((step, active, metrics))
            last = step == schedule.total_steps
            if step % schedule.log_every == 0 or last:
                flush(step)
            saved = set()
            for i in np.flatnonzero(active):
                r = runs[i]
                steps[i] = step
                evaluated = False
                if r.evaluate is not None and (
                        (schedule.evaluate_every and step % schedule.evaluate_every == 0) or last):
                    flush(step)
                    scores = r.evaluate(own(state, i), step)
                    r.writer.write(step, {f"eval/{s}/{k}": v for s, m in scores.items() for k, v in m.items()})
                    log.info("step %d eval %s", step, scores)
                    evaluated = True
                stopped[i] = evaluated and r.stop is not None and r.stop(step)
                if step % schedule.checkpoint_every == 0 or last or stopped[i]:
                    flush(step)
                    r.checkpoints.save(step, own(state, i))
                    saved.add(i)
                if stopped[i]:
                    log.info("step %d: no better evaluation for the patience given; stopping %s early",
                             step, r.workdir)
            if all(stopped) or last:
                break
            if notice.reached(step):
                _save_and_stop(step, state, runs, [i for i in np.flatnonzero(active) if i not in saved],
                               own, flush)
    return state


def _save_and_stop(step: int, state, runs: list[Run], unsaved: list[int], own, flush) -> None:
    """Preempted after `step`: the metrics so far written, every run that took this step saved at
    it (the others' checkpoints already hold where they are), every save finished; then Preempted."""
    flush(step)
    for i in unsaved:
        runs[i].checkpoints.save(step, own(state, i))
    for r in runs:
        r.checkpoints.wait()
    log.info("step %d: preempted; every run's state is saved", step)
    raise preemption.Preempted(step, [r.workdir for r in runs])


def _report(step: int, fetched: list[tuple[int, dict]], r: Run) -> None:
    """Checks one run's fetched step metrics and writes their mean over the window at `step`."""
    for s, metrics in fetched:
        _check_finite(s, metrics, r.checkpoints, r.workdir)
    if not fetched:
        return
    mean = {k: float(np.mean([m[k] for _, m in fetched])) for k in fetched[0][1]}
    if "train/lr" in mean:
        mean["train/lr"] = float(fetched[-1][1]["train/lr"])
    mean.update(r.progress.rates(step))
    if "batch/tokens" in mean:  # real (non-padding) tokens per step, from the step's metrics
        mean["perf/tokens_per_sec"] = mean["batch/tokens"] * mean["perf/steps_per_sec"]
    r.writer.write(step, mean)
    r.progress.report(step, mean)


def _check_finite(step: int, metrics: dict, checkpoints: Checkpoints, workdir: str) -> None:
    """Stops the run at the first non-finite loss or norm, saying truthfully what is kept (after
    any save still in flight has finished)."""
    bad = {name: value for name, value in metrics.items()
           if ("loss" in name or name.endswith("_norm")) and not np.isfinite(value)}
    if not bad:
        return
    checkpoints.wait()
    latest = checkpoints.latest_step()
    kept = (f"the last checkpoint, step {latest}, is kept in {workdir} and a rerun resumes there"
            if latest is not None else "no checkpoint had been saved, so a rerun starts from step 0")
    name, value = next(iter(bad.items()))
    raise TrainingError(f"{name} became {value} at step {step}, so the run stopped before saving "
                        f"that state; {kept} (a lower lr or max_grad_norm, or the data, may be the cause).")
