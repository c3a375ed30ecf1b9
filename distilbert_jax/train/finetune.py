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


def abstract_model(config, task: Task, path: str | None = None):
    """The model `load_model` returns, built from its config.json alone (no weights are read)."""
    path = path or config.model
    directory = hf.resolve(path, weights=False)
    models.check_fits(hf.read_config(directory)[0], path, config.max_length)
    model = hf.build_model(directory, head=task.head, num_labels=task.num_labels,
                           dtype=checks.dtype(config), matmul_precision=config.matmul_precision,
                           **_model_overrides(config, task))
    return model.clone(remat=config.remat)


def load_model(config, task: Task, layout: sharding.Layout, require_trained_head: bool = False,
               path: str | None = None):
    """(model, params, tokenizer) with the task's head and label space on `path` (default
    `config.model`), params placed by `layout`; refuses a max_length or a vocabulary the model
    cannot hold."""
    path = path or config.model
    overrides = _model_overrides(config, task)
    directory = hf.resolve(path)
    saved, architectures = hf.read_config(directory)
    models.check_fits(saved, path, config.max_length)  # before the weights load
    if require_trained_head:
        head = hf.head_from_architectures(saved.model_type, architectures)
        if head != task.head:
            raise TrainingError(
                f"{path} is a {head} checkpoint ({architectures}); task {task.name} needs a "
                f"{task.head} head. Fine-tune it first, or evaluate a checkpoint trained on this task.")
        hf.check_labels(saved, task.label_names, checkpoint=path, task=task.name)
    model, params = hf.from_pretrained(directory, head=task.head, num_labels=task.num_labels,
                                       dtype=checks.dtype(config), seed=config.seed,
                                       matmul_precision=config.matmul_precision,
                                       shardings=layout.params, **overrides)
    model = model.clone(remat=config.remat)
    tokenizer = Tokenizer.from_pretrained(directory)
    models.check_fits(model.config, path, config.max_length, tokenizer.vocab_size)
    return model, params, tokenizer


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
                length, 0), packer_for(config, layout.data_ways))
    params = programs_lib.abstract(nn.meta.unbox(models.abstract_params(model)), steps.state.params)
    tokens = programs_lib.computed_tokens(eval_batch)
    evaluate = programs_lib.Program(
        "eval_step", steps.eval, (params, programs_lib.abstract_batch(eval_batch["inputs"], layout)),
        tokens, programs_lib.encoder_flops(model.config, tokens, length, trained=False))
    if config.job == "evaluate":
        return [evaluate]
    batch = programs_lib.pack(
        collate(task.example_features(config.batch_size, length), range(config.batch_size), length, 0),
        packer_for(config, layout.data_ways, config.grad_accum_steps))
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
                          packer_for(config, layout.data_ways))
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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Fine-tunes `config.model` on `config.task`, evaluating and checkpointing as configured.

    Every check (workdir, config, model, data) runs before the first write."""
    return _fine_tune([config], [workdir], stacked=False)[0]


def train_and_evaluate_stacked(configs: list, dirs: list[str]) -> list[dict[str, Any]]:
    """Fine-tunes K configs that differ only in STACKED_FIELDS as K runs stacked in one program
    (one compiled step, the runs axis over the mesh's `runs` axis); each run writes its workdir
    (checkpoints, metrics, best/, model/, results.json) as `train_and_evaluate` alone would, and
    equals that run to float32 rounding. Returns each run's results."""
    return _fine_tune(list(configs), list(dirs), stacked=True)


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


def _fine_tune(configs: list, dirs: list[str], stacked: bool) -> list[dict[str, Any]]:
    """The fine-tuning job for one run (`stacked` False) or K runs stacked; see the two above."""
    for directory in dirs:
        workdirs.probe(directory)
    config = configs[0]  # every field but STACKED_FIELDS is the same in each
    layout = sharding.Layout.from_config(config)
    checks.validate(config, layout)
    if stacked:
        check_stackable(configs, layout)
    for c, directory in zip(configs, dirs):
        workdirs.check_resume(c, directory)
    task = build_task(config)
    loaded = [load_model(c, task, layout) for c in configs]  # each run's new head from its seed
    model, _, tokenizer = loaded[0]
    teacher = teacher_params = None
    if config.teacher:
        teacher, teacher_params, teacher_tokenizer = load_model(
            config, task, layout, require_trained_head=True, path=config.teacher)
        if teacher_tokenizer.backend.get_vocab() != tokenizer.backend.get_vocab():
            raise TrainingError(f"The teacher {config.teacher} tokenizes differently from "
                                f"{config.model}; task distillation needs one vocabulary.")
    train = encode_split(task, "train", tokenizer, config, train=True)
    evals = {s: encode_split(task, s, tokenizer, config, train=False) for s in config.eval_splits}
    tests = {s: encode_split(task, s, tokenizer, config, train=False) for s in config.predict_splits}
    steps_per_epoch = len(train) // config.batch_size
    if steps_per_epoch == 0:
        raise DataError(f"The {task.name} training split has {len(train)} rows, fewer than one "
                        f"batch of batch_size={config.batch_size}.")
    total_steps = config.max_steps if config.max_steps > 0 else int(config.num_epochs * steps_per_epoch)
    steps = build_steps(config, model, teacher, task.head, layout, total_steps, stacked)
    state_shardings = steps.state
    states = [train_state.create(model, params, steps.tx, c.seed, layout)[0]
              for (_, params, _), c in zip(loaded, configs)]
    del loaded

    with contextlib.ExitStack() as contexts:
        checkpoints = [contexts.enter_context(Checkpoints(d, config.keep_checkpoints, task.metric_for_best))
                       for d in dirs]
        for i, (saved, directory) in enumerate(zip(checkpoints, dirs)):
            if saved.latest_step() is not None:
                states[i] = saved.restore(states[i])  # onto this run's shardings, whatever mesh wrote it
                log.info("Resumed from %s at step %d", directory, int(states[i].step))
        for c, directory in zip(configs, dirs):
            workdirs.record(c, directory)  # every check has passed: this start is on record
        starts = [int(state.step) for state in states]
        log.info("Fine-tuning %s on %s: %d training examples, %d steps (%.3g epochs) of %d, from "
                 "step %s, %s on %d %s device(s), %s compute", config.model, task.name, len(train),
                 total_steps, total_steps / steps_per_epoch, config.batch_size,
                 ",".join(map(str, starts)), f"{len(configs)} runs stacked" if stacked else "one run",
                 jax.device_count(), jax.devices()[0].platform, config.dtype)
        eval_step = steps.eval
        process = (jax.process_index(), jax.process_count())
        first = min(starts)
        if stacked:
            lrs = jax.device_put(np.array([c.lr for c in configs], np.float32),
                                 layout.stacked(layout.replicated))
            on = layout.stacked(layout.replicated)
            step_fn = lambda state, batch, active: steps.train(
                state, teacher_params, batch, lrs, jax.device_put(active, on))
            batches = prefetch(layout.put_stacked_batch(batch) for batch in stacked_train_batches(
                train, config.batch_size, [c.seed for c in configs], first, tokenizer.pad_token_id,
                tuple(config.buckets), process, packer_for(config, layout.data_ways)))
            part = train_state.take(state_shardings, layout)
            state = train_state.stack(states, state_shardings, layout)
        else:
            step_fn = lambda state, batch, active: steps.train(state, teacher_params, batch)
            batches = prefetch(layout.put_batch(batch) for batch in train_batches(
                train, config.batch_size, config.seed, first, tokenizer.pad_token_id,
                tuple(config.buckets), process,
                packer_for(config, layout.data_ways, config.grad_accum_steps)))
            part, state = None, states[0]
        del states
        evaluate = lambda params, splits, predictions=None: evaluate_splits(
            eval_step, params, task, splits, config, tokenizer.pad_token_id, layout, model.config,
            predictions)
        eval_every = config.eval_every or steps_per_epoch
        runs, finals = [], []
        for saved, directory, start in zip(checkpoints, dirs, starts):
            final: dict[str, dict[str, float]] = {}
            runs.append(loop.Run(directory, saved, contexts.enter_context(MetricWriter(directory)),
                                 Progress(total_steps, config.batch_size, start),
                                 _keep_best(evaluate, saved, evals, tests, total_steps, final,
                                            os.path.join(directory, "predictions")),
                                 _early_stop(saved, config.early_stopping_patience, eval_every)))
            finals.append(final)
        started = time.perf_counter()
        state = loop.run_stacked(
            state, step_fn, batches,
            loop.Schedule(total_steps, config.log_every, config.checkpoint_every, eval_every),
            runs, starts, part)
        train_seconds = time.perf_counter() - started
        exports, results = [], []
        for i, (saved, directory, start) in enumerate(zip(checkpoints, dirs, starts)):
            params, result = _finish(state if part is None else part(state, i), saved, evaluate,
                                     {**evals, **tests}, finals[i], os.path.join(directory, "predictions"),
                                     config.export)
            end = result.pop("end")
            result = {"task": task.name, "head": task.head, "model": config.model,
                      "total_steps": total_steps, "train_examples": len(train),
                      "mesh": dict(layout.mesh.shape), "teacher": config.teacher or None, **result,
                      "train_seconds_this_run": train_seconds, "steps_this_run": end - start}
            if end < total_steps:
                result["stopped_early_at"] = end
            if stacked:
                result["stacked_runs"] = len(configs)
            exports.append(params)
            results.append(result)
    for c, directory, params, result in zip(configs, dirs, exports, results):
        if config.save_model:
            params = layout.to_host(params)
            if jax.process_index() == 0:
                hf.save_pretrained(os.path.join(directory, "model"), model, params, tokenizer)
                storage.write_text(os.path.join(directory, "model", "README.md"), model_card(c, result))
        workdirs.write_results(directory, result)
    return results


def _keep_best(evaluate, checkpoints: Checkpoints, evals, tests, total_steps: int, final: dict,
               predictions_dir: str) -> Callable:
    """One run's in-loop evaluation: dev metrics (and best params); at the last step also test
    predictions and files, kept in `final`."""
    def evaluate_and_keep_best(state, step):
        last = step == total_steps
        scores = evaluate(state.params, {**evals, **tests} if last else evals,
                          predictions_dir if last else None)
        if scores:
            checkpoints.save_best(step, state.params, next(iter(scores.values())))
        if last:
            final.update(scores)
        return scores
    return evaluate_and_keep_best


def _early_stop(checkpoints: Checkpoints, patience: int, eval_every: int) -> Callable[[int], bool]:
    """`stop(step)`, decided from best/ on disk so a resumed run decides as the first one did."""
    def stop(step):
        best = checkpoints.best_step()
        return patience > 0 and best is not None and step - best >= patience * eval_every
    return stop


def _finish(state, checkpoints: Checkpoints, evaluate, splits, final: dict, predictions_dir: str,
            export: str) -> tuple[Any, dict[str, Any]]:
    """(the params model/ exports, the results they earn) for one run's final state: the best
    evaluation's params under export="best", evaluated again unless the last evaluation was theirs."""
    end = int(jax.device_get(state.step))
    params, exported = state.params, end
    if export == "best" and checkpoints.best_step() not in (None, end):
        exported = checkpoints.best_step()
        params = checkpoints.restore_best(state.params)
        final = {}  # results and predictions describe the exported params
    if not final:  # stopped early, finished before, or exporting the best: evaluate those params
        final = evaluate(params, splits, predictions_dir)
    result = {"eval": final, "exported_step": exported, "end": end}
    if checkpoints.best_step() is not None:
        result["best_step"] = checkpoints.best_step()
    return params, result


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


def evaluate_only(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Evaluates a fine-tuned checkpoint (`config.model`) on `config.eval_splits` (+ predictions)."""
    workdirs.probe(workdir)
    layout = sharding.Layout.from_config(config)
    checks.validate(config, layout)
    workdirs.check_resume(config, workdir)
    task = build_task(config)
    model, params, tokenizer = load_model(config, task, layout, require_trained_head=True)
    splits = {s: encode_split(task, s, tokenizer, config, train=False)
              for s in (*config.eval_splits, *config.predict_splits)}
    workdirs.record(config, workdir)
    scores = evaluate_splits(make_eval_step(model, layout.params(model), layout), params, task,
                             splits, config, tokenizer.pad_token_id, layout, model.config,
                             os.path.join(workdir, "predictions"))
    results = {"task": task.name, "model": config.model, "eval": scores}
    workdirs.write_results(workdir, results)
    return results
