"""One fine-tuning loop for every task: `train_and_evaluate(config, workdir)` and `evaluate_only`.

Resume order: this workdir's latest checkpoint -> the `config.model` checkpoint (HF layout, hub id,
or `packaged:all-MiniLM-L6-v2`). Batch k and the dropout key of step k depend only on (seed, k), so a
resumed run ends with the same parameters as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import time
import types
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from distilbert_jax import hf, losses, models, sharding, storage, tasks
from distilbert_jax.configs import default
from distilbert_jax.data import Features, Task, get_task
from distilbert_jax.data.packing import Packer
from distilbert_jax.config import ConfigError
from distilbert_jax.data.task import (DataError, bucket_for, collate, eval_batches, packer_for,
                                     prefetch, stacked_train_batches, train_batches)
from distilbert_jax.tokenizer import Tokenizer
from distilbert_jax.train import checks, loop, programs as programs_lib, workdir as workdirs
from distilbert_jax.train import state as train_state
from distilbert_jax.train.checkpoint import Checkpoints
from distilbert_jax.train.reporting import MetricWriter, Progress
from distilbert_jax.train.loop import TrainingError
from distilbert_jax.train.programs import Program
from distilbert_jax.train.step import make_stacked_step, make_step

log = logging.getLogger(__name__)


# The fields are defined (and commented) once, in configs/default.py.
default_config = default.finetune


# --- building blocks ------------------------------------------------------------------------------------

def build_task(config) -> Task:
    return get_task(config.task, config.data_dir or None, config.data_source,
                    **dict(config.task_options))


def _model_overrides(config, task: Task) -> dict[str, Any]:
    """The model config fields a run changes: the config's own, the task's labels and problem type."""
    overrides = dict(config.model_overrides)
    if task.label_names:
        overrides["id2label"] = tuple(task.label_names)
    if task.problem_type:
        overrides["problem_type"] = task.problem_type
    return overrides


def abstract_model(config, task: Task, path: str | None = None, require_trained_head: bool = False):
    """The model of `path` (default `config.model`) with the task's head and label space, built from
    its config.json alone (no weights are read), after refusing a max_length it cannot hold and,
    with `require_trained_head`, a checkpoint not trained on this task's head and labels."""
    path = path or config.model
    directory = hf.resolve(path, weights=False)
    saved, architectures = hf.read_config(directory)
    models.check_fits(saved, path, config.max_length)
    if require_trained_head:
        head = hf.head_from_architectures(saved.model_type, architectures)
        if head != task.head:
            raise TrainingError(
                f"{path} is a {head} checkpoint ({architectures}); task {task.name} needs a "
                f"{task.head} head. Fine-tune it first, or evaluate a checkpoint trained on this task.")
        hf.check_labels(saved, task.label_names, checkpoint=path, task=task.name)
    model = hf.build_model(directory, head=task.head, num_labels=task.num_labels,
                           dtype=checks.dtype(config), matmul_precision=config.matmul_precision,
                           **_model_overrides(config, task))
    return model.clone(remat=config.remat)


def load_tokenizer(config, model, path: str | None = None) -> Tokenizer:
    """The tokenizer of `path` (default `config.model`), refused if `model` cannot embed its vocabulary."""
    path = path or config.model
    tokenizer = Tokenizer.from_pretrained(hf.resolve(path, weights=False))
    models.check_fits(model.config, path, config.max_length, tokenizer.vocab_size)
    return tokenizer


def load_params(config, task: Task, shardings, path: str | None = None):
    """The weights of `path` (default `config.model`) for `abstract_model`'s model, placed as
    `shardings` (its params' shardings) says; a head the checkpoint lacks is drawn from `config.seed`."""
    _, params = hf.from_pretrained(hf.resolve(path or config.model), head=task.head,
                                   num_labels=task.num_labels, dtype=checks.dtype(config),
                                   seed=config.seed, matmul_precision=config.matmul_precision,
                                   shardings=lambda _: shardings, **_model_overrides(config, task))
    return params


def packer_of(config, data_ways: int, micro_batches: int = 1) -> Packer | None:
    """The Packer of a fine-tuning config (None unless `packing`): rows of max_length's bucket."""
    return packer_for(config.packing, bucket_for(config.max_length, tuple(config.buckets)), data_ways,
                      micro_batches)


def encode_split(task: Task, split: str, tokenizer, config, train: bool) -> Features:
    """A split's examples (the first `limit_train_examples` / `limit_eval_examples` if set), encoded."""
    examples = task.load(split)
    limit = config.limit_train_examples if train else config.limit_eval_examples
    if limit:
        examples = examples[:limit]
    return task.encode(examples, tokenizer, config.max_length)


def loss_fn(model, head: str, teacher=None, distillation=None):
    """The fine-tuning loss `(params, teacher_params, batch, key) -> (loss, terms)`: the head's
    loss, or with a fine-tuned `teacher` task_alpha·task loss + distill_alpha·soft-target loss
    (`distillation` holds the alphas and the temperature)."""

    def compute(params, teacher_params, batch, key):
        inputs = batch["inputs"]
        out = model.apply({"params": params}, **models.model_inputs(model, inputs),
                          deterministic=False, rngs={"dropout": key})
        loss = losses.head_loss(head, out, batch["targets"], model.config)
        if teacher is None:
            return loss, {}
        teacher_out = jax.lax.stop_gradient(
            teacher.apply({"params": teacher_params}, **models.model_inputs(teacher, inputs)))
        soft = losses.task_distillation_loss(head, out, teacher_out, inputs["attention_mask"],
                                             distillation["temperature"], model.config.problem_type)
        total = distillation["task_alpha"] * loss + distillation["distill_alpha"] * soft
        return total, {"task": loss, "soft": soft}
    return compute


@dataclasses.dataclass(frozen=True)
class Steps:
    """A fine-tuning run's jitted steps: `train` (K runs stacked when built stacked) and `eval`,
    with where one run's train state and the teacher's params live, and the optimiser."""
    train: Callable
    eval: Callable
    state: train_state.TrainState
    teacher: Any
    tx: optax.GradientTransformation


def build_steps(config, model, teacher, head: str, layout: sharding.Layout, total_steps: int,
                stacked: bool = False) -> Steps:
    """The steps a fine-tuning run of `config` compiles: the run and the plan both build them here."""
    distillation = {"task_alpha": config.task_alpha, "distill_alpha": config.distill_alpha,
                    "temperature": config.distill_temperature}
    loss = loss_fn(model, head, teacher, distillation)
    tx, schedule = train_state.optimizer(config, total_steps)
    state = train_state.shardings(model, tx, layout)
    teacher_shardings = None if teacher is None else layout.params(teacher)
    if stacked:
        train = make_stacked_step(loss, lambda lr: train_state.optimizer(config, total_steps, lr=lr),
                                  layout, state, config.grad_accum_steps, teacher_shardings)
    else:
        train = make_step(loss, tx, layout, state, config.grad_accum_steps, teacher_shardings,
                          learning_rate=schedule)
    return Steps(train, make_eval_step(model, state.params, layout), state, teacher_shardings, tx)


def programs(config, layout: sharding.Layout, runs: int = 1) -> list[Program]:
    """What a fine-tuning run of `config` (`runs` > 1: that many stacked) or an evaluation compiles on
    `layout`, at its longest bucket: from the models' config.json and the task's labels alone."""
    checks.validate(config, layout)
    if runs > 1:
        check_stackable([config] * runs, layout)
    task = build_task(config)
    model = abstract_model(config, task)
    teacher = abstract_model(config, task, config.teacher) if config.teacher else None
    steps = build_steps(config, model, teacher, task.head, layout, max(config.max_steps, 1), runs > 1)
    length = bucket_for(config.max_length, tuple(config.buckets))
    eval_batch = programs_lib.pack(
        collate(task.example_features(config.eval_batch_size, length), range(config.eval_batch_size),
                length, 0), packer_of(config, layout.data_ways))
    params = programs_lib.abstract(nn.meta.unbox(models.abstract_params(model)), steps.state.params)
    tokens = programs_lib.computed_tokens(eval_batch)
    evaluate = programs_lib.Program(
        "eval_step", steps.eval, (params, programs_lib.abstract_batch(eval_batch["inputs"], layout)),
        tokens, programs_lib.encoder_flops(model.config, tokens, length, trained=False))
    if config.job == "evaluate":
        return [evaluate]
    batch = programs_lib.pack(
        collate(task.example_features(config.batch_size, length), range(config.batch_size), length, 0),
        packer_of(config, layout.data_ways, config.grad_accum_steps))
    state = train_state.abstract(model, steps.tx)
    teacher_params = None if teacher is None else programs_lib.abstract(
        nn.meta.unbox(models.abstract_params(teacher)), steps.teacher)
    tokens = programs_lib.computed_tokens(batch)
    flops = programs_lib.encoder_flops(model.config, tokens, length, trained=True)
    if teacher is not None:
        flops += programs_lib.encoder_flops(teacher.config, tokens, length, trained=False)
    if runs > 1:
        on_runs = layout.stacked(layout.replicated)
        args = (programs_lib.stacked(state, runs, layout, steps.state), teacher_params,
                programs_lib.abstract_batch(batch, layout, runs),
                jax.ShapeDtypeStruct((runs,), jnp.float32, sharding=on_runs),
                jax.ShapeDtypeStruct((runs,), jnp.bool_, sharding=on_runs))
    else:
        args = (programs_lib.abstract(state, steps.state), teacher_params,
                programs_lib.abstract_batch(batch, layout))
    train = programs_lib.Program("train_step", steps.train, args, tokens * runs, flops * runs,
                                 calls=config.max_steps or None, runs=runs)
    return [train, evaluate]


def make_eval_step(model, param_shardings, layout: sharding.Layout) -> Callable:
    """`(params, inputs) -> {logits | start_logits, end_logits}` in float32, replicated."""
    def step(params, inputs):
        out = model.apply({"params": params}, **models.model_inputs(model, inputs))
        return {k: getattr(out, k).astype(jnp.float32)
                for k in ("logits", "start_logits", "end_logits") if getattr(out, k, None) is not None}
    return layout.jit(step, in_shardings=(param_shardings, layout.batch),
                      out_shardings=layout.replicated)


def predict(eval_step, params, task: Task, features: Features, batch_size: int, pad_id: int,
            buckets, layout: sharding.Layout, packer=None) -> dict[str, Any]:
    """Model outputs for every row: arrays [rows, ...], or per-row lists trimmed to each row's length."""
    lengths = features.lengths()
    collected: dict[str, list] = {}
    order: list[int] = []
    process = (jax.process_index(), jax.process_count())
    for rows, batch in prefetch(eval_batches(features, batch_size, pad_id, buckets, process, packer)):
        inputs = layout.put_batch(batch["inputs"])
        out = jax.device_get({k: v.addressable_data(0) for k, v in eval_step(params, inputs).items()})
        for key, value in out.items():
            for i, row in enumerate(rows):
                collected.setdefault(key, []).append(
                    value[i, : lengths[row]] if task.per_token_outputs else value[i])
        order.extend(int(r) for r in rows)
    inverse = np.argsort(order)
    outputs = {k: [v[i] for i in inverse] for k, v in collected.items()}
    return outputs if task.per_token_outputs else {k: np.stack(v) for k, v in outputs.items()}


def split_loss(head: str, features: Features, outputs: dict[str, Any], model_config) -> float:
    """The head's training loss, without dropout, over a whole split, from the outputs `predict`
    collected and the split's targets, normalised as one batch of every row would be. Per-token
    outputs are padded with -1e9, out of any softmax, so the loss does not depend on the buckets."""
    length = int(features.lengths().max())
    if any(isinstance(v, list) for v in outputs.values()):  # per-token outputs, trimmed to each row
        outputs = {k: _pad_rows(v, length) for k, v in outputs.items()}
    targets = collate(features, np.arange(len(features)), length, pad_id=0)["targets"]
    outputs, targets = jax.device_put((outputs, targets))  # explicitly: the loop guards transfers
    return float(jax.device_get(_head_loss(head, outputs, targets, model_config)))


@functools.partial(jax.jit, static_argnums=(0, 3))
def _head_loss(head: str, outputs: dict, targets: dict, model_config):
    return losses.head_loss(head, types.SimpleNamespace(**outputs), targets, model_config)


def _pad_rows(rows: list[np.ndarray], length: int) -> np.ndarray:
    padded = np.full((len(rows), length, *rows[0].shape[1:]), -1e9, rows[0].dtype)
    for i, row in enumerate(rows):
        padded[i, : len(row)] = row
    return padded


def evaluate_splits(eval_step, params, task, splits: dict[str, Features], config, pad_id,
                    layout: sharding.Layout, model_config, predictions_dir: str | None = None
                    ) -> dict[str, dict[str, float]]:
    """Each split's metrics and loss (test splits, which have no labels: predictions only)."""
    results = {}
    for split, features in splits.items():
        started = time.perf_counter()
        outputs = predict(eval_step, params, task, features, config.eval_batch_size, pad_id,
                          tuple(config.buckets), layout,
                          packer_of(config, layout.data_ways))
        seconds = time.perf_counter() - started
        log.info("Evaluated %s: %d rows in %.1f s (%.0f rows/s)", split, len(features), seconds,
                 len(features) / max(seconds, 1e-9))
        if predictions_dir and jax.process_index() == 0:
            path = task.write_predictions(features, outputs, os.path.join(predictions_dir, split), split)
            log.info("Wrote %s predictions to %s", split, path)
        if not split.startswith("test"):
            results[split] = {**task.evaluate(features, outputs),
                              "loss": split_loss(task.head, features, outputs, model_config)}
    return results


# --- the jobs -------------------------------------------------------------------------------------------

# Fields in which the runs of one stacked group may differ: values, not shapes (the seed draws the
# new head, the data order and dropout; the lr is each run's own schedule).
STACKED_FIELDS = ("seed", "lr")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       layout: sharding.Layout | None = None) -> dict[str, Any]:
    """Fine-tunes `config.model` on `config.task`, evaluating and checkpointing as configured, on
    `layout` (from the job's preamble, `checks.start`, which runs here when none is given).

    Every check (workdir, config, model, data) runs before the first write."""
    if layout is None:
        layout = checks.start([(config, workdir)])
    return _fine_tune([(config, workdir)], layout, stacked=False)[0]


def train_and_evaluate_stacked(configs: list, dirs: list[str],
                               layout: sharding.Layout | None = None) -> list[dict[str, Any]]:
    """Fine-tunes K configs that differ only in STACKED_FIELDS as K runs stacked in one program
    (one compiled step, the runs axis over the mesh's `runs` axis); each run writes its workdir
    (checkpoints, metrics, best/, model/, results.json) as `train_and_evaluate` alone would, and
    equals that run to float32 rounding. Returns each run's results."""
    runs = list(zip(configs, dirs))
    if layout is None:
        layout = checks.start(runs)
    check_stackable(list(configs), layout)
    return _fine_tune(runs, layout, stacked=True)


def check_stackable(configs, layout: sharding.Layout) -> None:
    """Refuses, in one sentence, configs that cannot train as one stacked group."""
    first = {k: v for k, v in configs[0].to_dict().items() if k not in STACKED_FIELDS}
    for c in configs[1:]:
        other = {k: v for k, v in c.to_dict().items() if k not in STACKED_FIELDS}
        if other != first:
            fields = sorted(k for k in set(first) | set(other) if first.get(k) != other.get(k))
            raise ConfigError(f"stacked runs may differ only in {list(STACKED_FIELDS)}; these also "
                              f"differ in {fields}.")
    if configs[0].job != "finetune":
        raise ConfigError(f"job={configs[0].job!r} cannot be stacked; only job='finetune' can.")
    if configs[0].packing and configs[0].grad_accum_steps > 1:
        raise ConfigError("packing=True with grad_accum_steps > 1 cannot be stacked (a micro-batch's "
                          "rows would move with the other runs' row counts); stack with one of them "
                          "off, or run the points unstacked.")
    if len(configs) % layout.runs_ways:
        raise ConfigError(
            f"{len(configs)} stacked runs do not divide the mesh's runs axis of {layout.runs_ways} "
            f"(mesh {dict(layout.mesh.shape)}); give a multiple of {layout.runs_ways} runs or a mesh "
            "whose runs axis divides their number.")


@dataclasses.dataclass
class Run:
    """One run of a fine-tuning job, alone or one of K stacked: its config and workdir, its
    checkpoints, its state (from its seed or its latest checkpoint, then its final one) and the step
    it started at, the scores its last evaluation keeps, and what it ends with (params and results)."""
    config: ml_collections.ConfigDict
    workdir: str
    state: Any
    checkpoints: Checkpoints | None = None
    start: int = 0
    final: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    exported: Any = None
    results: dict[str, Any] | None = None

    @property
    def predictions(self) -> str:
        return os.path.join(self.workdir, "predictions")

    def resume(self, checkpoints: Checkpoints) -> None:
        """Opens the run's checkpoints and resumes from its latest one, if any (onto this run's
        shardings, whatever mesh wrote it)."""
        self.checkpoints = checkpoints
        if checkpoints.latest_step() is not None:
            self.state = checkpoints.restore(self.state)
            log.info("Resumed from %s at step %d", self.workdir, int(self.state.step))
        self.start = int(self.state.step)


def _fine_tune(started: list[tuple[Any, str]], layout: sharding.Layout,
               stacked: bool) -> list[dict[str, Any]]:
    """The fine-tuning job for its (config, workdir) runs, past their preamble: one run
    (`stacked` False) or K stacked; see the two above."""
    config = started[0][0]  # every field but STACKED_FIELDS is the same in each
    task = build_task(config)
    model = abstract_model(config, task)
    tokenizer = load_tokenizer(config, model)
    teacher = _teacher(config, task, tokenizer) if config.teacher else None
    train, evals, tests, steps_per_epoch = _splits(config, task, tokenizer)
    total_steps = config.max_steps if config.max_steps > 0 else int(config.num_epochs * steps_per_epoch)
    steps = build_steps(config, model, teacher, task.head, layout, total_steps, stacked)
    teacher_params = None if teacher is None else load_params(config, task, steps.teacher, config.teacher)
    runs = [Run(c, d, train_state.place(load_params(c, task, steps.state.params), steps.tx, c.seed,
                                        steps.state))  # each run's new head from its seed
            for c, d in started]

    with contextlib.ExitStack() as contexts:
        for run in runs:
            run.resume(contexts.enter_context(
                Checkpoints(run.workdir, config.keep_checkpoints, task.metric_for_best)))
        for run in runs:
            workdirs.record(run.config, run.workdir)  # every check has passed: this start is on record
        log.info("Fine-tuning %s on %s: %d training examples, %d steps (%.3g epochs) of %d, from "
                 "step %s, %s on %d %s device(s), %s compute", config.model, task.name, len(train),
                 total_steps, total_steps / steps_per_epoch, config.batch_size,
                 ",".join(str(run.start) for run in runs),
                 f"{len(runs)} runs stacked" if stacked else "one run",
                 jax.device_count(), jax.devices()[0].platform, config.dtype)
        state, step_fn, batches, part = _training(runs, steps, teacher_params, train,
                                                  tokenizer.pad_token_id, layout, stacked)
        evaluate = lambda params, splits, predictions=None: evaluate_splits(
            steps.eval, params, task, splits, config, tokenizer.pad_token_id, layout, model.config,
            predictions)
        eval_every = config.eval_every or steps_per_epoch
        started_at = time.perf_counter()
        state = loop.run_stacked(
            state, step_fn, batches,
            loop.Schedule(total_steps, config.log_every, config.checkpoint_every, eval_every),
            [loop.Run(run.workdir, run.checkpoints, contexts.enter_context(MetricWriter(run.workdir)),
                      Progress(total_steps, config.batch_size, run.start),
                      _keep_best(evaluate, run, evals, tests, total_steps),
                      _early_stop(run.checkpoints, config.early_stopping_patience, eval_every),
                      run.start)
             for run in runs], part)
        train_seconds = time.perf_counter() - started_at
        shared = {"task": task.name, "head": task.head, "model": config.model,
                  "total_steps": total_steps, "train_examples": len(train),
                  "mesh": dict(layout.mesh.shape), "teacher": config.teacher or None}
        for i, run in enumerate(runs):
            run.state = state if part is None else part(state, i)
            run.exported, run.results = _finish(run, evaluate, {**evals, **tests}, shared, train_seconds)
            if stacked:
                run.results["stacked_runs"] = len(runs)
    for run in runs:
        _export(run, model, tokenizer, layout)
    return [run.results for run in runs]


def _teacher(config, task: Task, tokenizer):
    """The fine-tuned teacher of a task distillation (no weights), refused unless it was trained
    on this task and tokenizes as the student does."""
    teacher = abstract_model(config, task, config.teacher, require_trained_head=True)
    if load_tokenizer(config, teacher, config.teacher).backend.get_vocab() != tokenizer.backend.get_vocab():
        raise TrainingError(f"The teacher {config.teacher} tokenizes differently from "
                            f"{config.model}; task distillation needs one vocabulary.")
    return teacher


def _splits(config, task: Task, tokenizer) -> tuple[Features, dict, dict, int]:
    """(the training split, the eval splits, the predict splits, steps per epoch), encoded;
    refused when the training split holds less than one batch."""
    train = encode_split(task, "train", tokenizer, config, train=True)
    evals = {s: encode_split(task, s, tokenizer, config, train=False) for s in config.eval_splits}
    tests = {s: encode_split(task, s, tokenizer, config, train=False) for s in config.predict_splits}
    steps_per_epoch = len(train) // config.batch_size
    if steps_per_epoch == 0:
        raise DataError(f"The {task.name} training split has {len(train)} rows, fewer than one "
                        f"batch of batch_size={config.batch_size}.")
    return train, evals, tests, steps_per_epoch


def _training(runs: list[Run], steps: Steps, teacher_params, train: Features, pad_id: int,
              layout: sharding.Layout, stacked: bool):
    """(state, step_fn(state, batch, active), batches, part) that train the runs together: one run's
    own state and step, or K runs' states stacked into one (each run's then held only there) and
    `part(state, i)`, run i's state from it."""
    config, first = runs[0].config, min(run.start for run in runs)
    process = (jax.process_index(), jax.process_count())
    if not stacked:
        batches = prefetch(layout.put_batch(batch) for batch in train_batches(
            train, config.batch_size, config.seed, first, pad_id, tuple(config.buckets), process,
            packer_of(config, layout.data_ways, config.grad_accum_steps)))
        state, runs[0].state = runs[0].state, None
        return state, lambda state, batch, active: steps.train(state, teacher_params, batch), batches, None
    on_runs = layout.stacked(layout.replicated)
    lrs = jax.device_put(np.array([run.config.lr for run in runs], np.float32), on_runs)
    step_fn = lambda state, batch, active: steps.train(state, teacher_params, batch, lrs,
                                                       jax.device_put(active, on_runs))
    batches = prefetch(layout.put_stacked_batch(batch) for batch in stacked_train_batches(
        train, config.batch_size, [run.config.seed for run in runs], first, pad_id,
        tuple(config.buckets), process, packer_of(config, layout.data_ways)))
    state = train_state.stack([run.state for run in runs], steps.state, layout)
    for run in runs:
        run.state = None
    return state, step_fn, batches, train_state.take(steps.state, layout)


def _keep_best(evaluate, run: Run, evals, tests, total_steps: int) -> Callable:
    """One run's in-loop evaluation: dev metrics (and best params); at the last step also test
    predictions and files, kept in `run.final`."""
    def evaluate_and_keep_best(state, step):
        last = step == total_steps
        scores = evaluate(state.params, {**evals, **tests} if last else evals,
                          run.predictions if last else None)
        if scores:
            run.checkpoints.save_best(step, state.params, next(iter(scores.values())))
        if last:
            run.final.update(scores)
        return scores
    return evaluate_and_keep_best


def _early_stop(checkpoints: Checkpoints, patience: int, eval_every: int) -> Callable[[int], bool]:
    """`stop(step)`, decided from best/ on disk so a resumed run decides as the first one did."""
    def stop(step):
        best = checkpoints.best_step()
        return patience > 0 and best is not None and step - best >= patience * eval_every
    return stop


def _finish(run: Run, evaluate, splits, shared: dict, train_seconds: float) -> tuple[Any, dict]:
    """(the params model/ exports, the results they earn: `shared` and the run's own) for a run's
    final state: the best evaluation's params under export="best", evaluated again unless the last
    evaluation was theirs."""
    end = int(jax.device_get(run.state.step))
    params, exported, final, checkpoints = run.state.params, end, run.final, run.checkpoints
    if run.config.export == "best" and checkpoints.best_step() not in (None, end):
        exported = checkpoints.best_step()
        params = checkpoints.restore_best(run.state.params)
        final = {}  # results and predictions describe the exported params
    if not final:  # stopped early, finished before, or exporting the best: evaluate those params
        final = evaluate(params, splits, run.predictions)
    result = {**shared, "eval": final, "exported_step": exported}
    if checkpoints.best_step() is not None:
        result["best_step"] = checkpoints.best_step()
    result.update(train_seconds_this_run=train_seconds, steps_this_run=end - run.start)
    if end < shared["total_steps"]:
        result["stopped_early_at"] = end
    return params, result


def _export(run: Run, model, tokenizer, layout: sharding.Layout) -> None:
    """A finished run's model/ (its exported params, tokenizer and model card, if `save_model`) and
    results.json."""
    if run.config.save_model:
        params = layout.to_host(run.exported)
        if jax.process_index() == 0:
            hf.save_pretrained(os.path.join(run.workdir, "model"), model, params, tokenizer)
            storage.write_text(os.path.join(run.workdir, "model", "README.md"),
                               model_card(run.config, run.results))
    workdirs.write_results(run.workdir, run.results)


def model_card(config, results: dict) -> str:
    """model/README.md: what the exported model is, the recipe that made it, and its scores."""
    served = tasks.for_head(results["head"])  # the dj.pipeline task that applies the head to raw text
    recipe = {k: config[k] for k in ("model", "task", "lr", "batch_size", "grad_accum_steps",
                                     "num_epochs", "max_steps", "warmup_ratio", "weight_decay",
                                     "max_length", "dtype", "seed", "teacher")}
    rows = [f"| {split} | {name} | {value:.4f} |" for split, metrics in results["eval"].items()
            for name, value in metrics.items()]
    return "\n".join([
        f"# {results['task']}, fine-tuned from {config.model}", "",
        f"Fine-tuned with distilbert-jax for {results['total_steps']} steps; these are the params of "
        f"step {results['exported_step']} (export={config.export}).", "",
        "```python", "import distilbert_jax as dj",
        *([f'predict = dj.pipeline("{served.name}", model="path/to/this/folder")']
          if served.pipeline else []),
        'model, params = dj.from_pretrained("path/to/this/folder")',
        "# transformers: AutoModelFor...from_pretrained(\"path/to/this/folder\") loads the same weights",
        "```", "", "| split | metric | value |", "|---|---|---:|", *rows, "",
        "Recipe:", "", *(f"- {k}: {v!r}" for k, v in recipe.items()), ""])


def evaluate_only(config: ml_collections.ConfigDict, workdir: str,
                  layout: sharding.Layout | None = None) -> dict[str, Any]:
    """Evaluates a fine-tuned checkpoint (`config.model`) on `config.eval_splits` (+ predictions),
    on `layout` (from the job's preamble, `checks.start`, which runs here when none is given)."""
    if layout is None:
        layout = checks.start([(config, workdir)])
    task = build_task(config)
    model = abstract_model(config, task, require_trained_head=True)
    tokenizer = load_tokenizer(config, model)
    splits = {s: encode_split(task, s, tokenizer, config, train=False)
              for s in (*config.eval_splits, *config.predict_splits)}
    shardings = layout.params(model)
    params = load_params(config, task, shardings)
    workdirs.record(config, workdir)
    scores = evaluate_splits(make_eval_step(model, shardings, layout), params, task, splits, config,
                             tokenizer.pad_token_id, layout, model.config,
                             os.path.join(workdir, "predictions"))
    results = {"task": task.name, "model": config.model, "eval": scores}
    workdirs.write_results(workdir, results)
    return results
