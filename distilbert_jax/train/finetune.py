"""One fine-tuning loop for every task: `train_and_evaluate(config, workdir)` and `evaluate_only`.

Resume order: this workdir's latest checkpoint -> the `config.model` checkpoint (HF layout, hub id,
or `packaged:all-MiniLM-L6-v2`). Batch k and the dropout key of step k depend only on (seed, k), so a
resumed run ends with the same parameters as an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from distilbert_jax import hf, losses, sharding
from distilbert_jax.data import Features, Task, get_task
from distilbert_jax.data.task import eval_batches, prefetch, train_batches
from distilbert_jax.tokenizer import Tokenizer
from distilbert_jax.train import loop
from distilbert_jax.train import state as train_state
from distilbert_jax.train.checkpoint import Checkpoints
from distilbert_jax.train.logging import MetricWriter, Progress
from distilbert_jax.train.loop import TrainingError

log = logging.getLogger(__name__)
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


# --- configuration ---------------------------------------------------------------------------------

def default_config() -> ml_collections.ConfigDict:
    """Fields shared by every fine-tuning job (SQuAD, NER, SWAG configs start from here too)."""
    c = ml_collections.ConfigDict()
    c.job = "finetune"  # or "evaluate" (a fine-tuned checkpoint on eval_splits)
    c.task = "sst2"
    c.data_dir = ""  # folder with the task's files (GLUE TSVs, SQuAD JSON, CoNLL files)
    c.data_source = "local"  # or "tfds"
    c.task_options = ml_collections.ConfigDict()
    c.model = "distilbert-base-uncased"  # HF checkpoint dir, hub id, or packaged:all-MiniLM-L6-v2
    c.model_overrides = ml_collections.ConfigDict()  # config fields to change, e.g. dropout
    c.dtype = "float32"  # compute dtype; "bfloat16" on TPU (params stay float32)
    c.seed = 42
    c.mesh = "dp"  # a sharding.PRESETS name, or "data:2,fsdp:-1,tensor:2" (-1: the remaining devices)
    c.rules = sharding.RULES  # logical axis name -> mesh axes

    c.max_length = 128
    c.buckets = (32, 64, 128, 256, 384, 512)  # padded lengths: one compiled shape per bucket
    c.batch_size = 32  # examples per optimiser update
    c.grad_accum_steps = 1  # micro-batches per update (batch_size must be a multiple)
    c.eval_batch_size = 64
    c.num_epochs = 3.0
    c.max_steps = 0  # > 0 overrides num_epochs
    c.limit_train_examples = 0  # > 0 keeps the first N training examples (quick runs)
    c.limit_eval_examples = 0

    c.lr = 2e-5
    c.warmup_ratio = 0.0
    c.warmup_steps = 0  # > 0 overrides warmup_ratio
    c.weight_decay = 0.0
    c.adam_b1 = 0.9
    c.adam_b2 = 0.999
    c.adam_eps = 1e-8
    c.max_grad_norm = 1.0

    c.log_every = 50
    c.eval_every = 0  # steps; 0 = once per epoch
    c.checkpoint_every = 500
    c.keep_checkpoints = 2
    c.eval_splits = ("dev",)
    c.predict_splits = ()  # e.g. ("test",): GLUE-server / SQuAD prediction files
    c.save_model = True  # save_pretrained(<workdir>/model) at the end, loadable by transformers

    # The second distillation step: a teacher fine-tuned on this task (empty: plain fine-tuning).
    c.teacher = ""
    c.task_alpha = 0.5
    c.distill_alpha = 0.5
    c.distill_temperature = 2.0
    return c


# --- building blocks ------------------------------------------------------------------------------------

def build_task(config) -> Task:
    return get_task(config.task, config.data_dir or None, config.data_source,
                    **dict(config.get("task_options", {})))


def load_model(config, task: Task, mesh, rules, require_trained_head: bool = False,
               path: str | None = None):
    """(model, params, tokenizer) with the task's head and label space on `path` (default
    `config.model`), params placed on `mesh` by `rules`."""
    path = path or config.model
    overrides = dict(config.get("model_overrides", {}))
    if task.label_names:
        overrides["id2label"] = tuple(task.label_names)
    if task.problem_type:
        overrides["problem_type"] = task.problem_type
    if config.dtype not in DTYPES:
        raise TrainingError(f"dtype={config.dtype!r} is not one of {sorted(DTYPES)}.")
    directory = hf.resolve(path)
    if require_trained_head:
        saved, architectures = hf.read_config(directory)
        head = hf.head_from_architectures(saved.model_type, architectures)
        if head != task.head:
            raise TrainingError(
                f"{path} is a {head} checkpoint ({architectures}); task {task.name} needs a "
                f"{task.head} head. Fine-tune it first, or evaluate a checkpoint trained on this task.")
    model, params = hf.from_pretrained(directory, head=task.head, num_labels=task.num_labels,
                                       dtype=DTYPES[config.dtype], seed=config.seed,
                                       shardings=sharding.param_placement(mesh, rules), **overrides)
    tokenizer = Tokenizer.from_pretrained(directory)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise TrainingError(f"The tokenizer's vocabulary ({tokenizer.vocab_size}) is larger than "
                            f"the model's vocab_size ({model.config.vocab_size}).")
    return model, params, tokenizer


def encode_split(task: Task, split: str, tokenizer, config, token_types: bool,
                 train: bool) -> Features:
    """A split's examples (the first `limit_*_examples` if set), encoded; BERT gets token types."""
    examples = task.load(split)
    limit = config.get("limit_train_examples" if train else "limit_eval_examples", 0)
    if limit:
        examples = examples[:limit]
    return task.encode(examples, tokenizer, config.max_length, token_types, train)


def model_inputs(model, batch) -> dict:
    """The batch entries `model` takes: DistilBERT has no token types (a BERT teacher may)."""
    keys = MODEL_INPUTS if model.config.model_type == "bert" else MODEL_INPUTS[:2]
    return {k: batch[k] for k in keys if k in batch}


def make_train_step(model, head: str, tx, accum_steps: int, state_shardings, mesh, rules,
                    teacher=None, teacher_shardings=None, distillation=None) -> Callable:
    """The jitted update: dropout key fold_in(rng, step), micro-batches by lax.scan, explicit
    in/out shardings, the state donated. With a fine-tuned `teacher`, the loss is
    task_alpha·task loss + distill_alpha·soft-target loss (`distillation` holds the alphas and T);
    the step then takes the teacher's params as its second argument."""

    def loss_fn(params, teacher_params, batch, key):
        targets = {k: v for k, v in batch.items() if k not in MODEL_INPUTS and k != "weights"}
        out = model.apply({"params": params}, **model_inputs(model, batch), deterministic=False,
                          rngs={"dropout": key})
        loss = losses.head_loss(head, out, targets, model.config)
        if teacher is None:
            return loss
        teacher_out = jax.lax.stop_gradient(
            teacher.apply({"params": teacher_params}, **model_inputs(teacher, batch)))
        soft = losses.task_distillation_loss(head, out, teacher_out, batch["attention_mask"],
                                             distillation["temperature"], model.config.problem_type)
        return distillation["task_alpha"] * loss + distillation["distill_alpha"] * soft

    grad_fn = jax.value_and_grad(loss_fn)

    def step(state: train_state.TrainState, teacher_params, batch):
        key = jax.random.fold_in(state.rng, state.step)
        if accum_steps == 1:
            loss, grads = grad_fn(state.params, teacher_params, batch, key)
        else:
            micro = jax.tree.map(lambda x: x.reshape(accum_steps, -1, *x.shape[1:]), batch)

            def body(carry, xs):
                index, micro_batch = xs
                loss, grads = grad_fn(state.params, teacher_params, micro_batch,
                                      jax.random.fold_in(key, index))
                return jax.tree.map(jnp.add, carry, (loss, grads)), None

            zeros = (jnp.zeros(()), jax.tree.map(jnp.zeros_like, state.params))
            (loss, grads), _ = jax.lax.scan(body, zeros, (jnp.arange(accum_steps), micro))
            loss, grads = jax.tree.map(lambda x: x / accum_steps, (loss, grads))
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = jax.tree.map(lambda p, u: p + u, state.params, updates)
        metrics = {"train/loss": loss, "train/grad_norm": train_state.global_norm(grads),
                   "train/param_norm": train_state.global_norm(params),
                   "batch/tokens": jnp.sum(batch["attention_mask"])}
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    replicated = NamedSharding(mesh, PartitionSpec())
    jitted = jax.jit(step, in_shardings=(state_shardings, teacher_shardings or replicated,
                                         sharding.batch_sharding(mesh)),
                     out_shardings=(state_shardings, replicated), donate_argnums=0)
    return sharding.in_mesh(jitted, mesh, rules)


def make_eval_step(model, param_shardings, mesh, rules) -> Callable:
    def step(params, batch):
        out = model.apply({"params": params}, **model_inputs(model, batch))
        return {k: getattr(out, k).astype(jnp.float32)
                for k in ("logits", "start_logits", "end_logits") if getattr(out, k, None) is not None}
    jitted = jax.jit(step, in_shardings=(param_shardings, sharding.batch_sharding(mesh)),
                     out_shardings=NamedSharding(mesh, PartitionSpec()))
    return sharding.in_mesh(jitted, mesh, rules)


def predict(eval_step, params, task: Task, features: Features, batch_size: int, pad_id: int,
            buckets, mesh) -> dict[str, Any]:
    """Model outputs for every row: arrays [rows, ...], or per-row lists trimmed to each row's length."""
    lengths = features.lengths()
    collected: dict[str, list] = {}
    order: list[int] = []
    process = (jax.process_index(), jax.process_count())
    for rows, batch in prefetch(eval_batches(features, batch_size, pad_id, buckets, process)):
        inputs = sharding.put_batch({k: v for k, v in batch.items() if k in MODEL_INPUTS}, mesh,
                                    batch_size)
        out = {k: np.asarray(v.addressable_data(0)) for k, v in eval_step(params, inputs).items()}
        for key, value in out.items():
            for i, row in enumerate(rows):
                collected.setdefault(key, []).append(
                    value[i, : lengths[row]] if task.per_token_outputs else value[i])
        order.extend(int(r) for r in rows)
    inverse = np.argsort(order)
    outputs = {k: [v[i] for i in inverse] for k, v in collected.items()}
    return outputs if task.per_token_outputs else {k: np.stack(v) for k, v in outputs.items()}


def evaluate_splits(eval_step, params, task, splits: dict[str, Features], config, pad_id, mesh,
                    predictions_dir: str | None = None) -> dict[str, dict[str, float]]:
    results = {}
    for split, features in splits.items():
        outputs = predict(eval_step, params, task, features, config.eval_batch_size, pad_id,
                          tuple(config.buckets), mesh)
        if predictions_dir and jax.process_index() == 0:
            path = task.write_predictions(features, outputs, os.path.join(predictions_dir, split), split)
            log.info("Wrote %s predictions to %s", split, path)
        if not split.startswith("test"):  # test splits have no labels: predictions only
            results[split] = task.evaluate(features, outputs)
    return results


# --- the jobs -------------------------------------------------------------------------------------------

def check_batch_sizes(config, mesh) -> None:
    data_ways = mesh.shape["data"] * mesh.shape["fsdp"]
    micro = config.batch_size // max(config.grad_accum_steps, 1)
    if config.batch_size % config.grad_accum_steps:
        raise TrainingError(f"batch_size={config.batch_size} is not a multiple of "
                            f"grad_accum_steps={config.grad_accum_steps}.")
    for name, size in (("batch_size / grad_accum_steps", micro),
                       ("eval_batch_size", config.eval_batch_size)):
        if size % data_ways or size % jax.process_count():
            raise TrainingError(f"{name}={size} must be a multiple of the {data_ways} data-parallel "
                                f"devices (mesh {dict(mesh.shape)}) and of {jax.process_count()} processes.")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Fine-tunes `config.model` on `config.task`, evaluating and checkpointing as configured."""
    mesh, rules = sharding.from_config(config)
    check_batch_sizes(config, mesh)
    task = build_task(config)
    model, params, tokenizer = load_model(config, task, mesh, rules)
    teacher = teacher_params = teacher_shardings = None
    if config.teacher:
        teacher, teacher_params, teacher_tokenizer = load_model(
            config, task, mesh, rules, require_trained_head=True, path=config.teacher)
        if teacher_tokenizer.backend.get_vocab() != tokenizer.backend.get_vocab():
            raise TrainingError(f"The teacher {config.teacher} tokenizes differently from "
                                f"{config.model}; task distillation needs one vocabulary.")
        teacher_shardings = sharding.tree_shardings(hf.abstract_params(teacher), mesh, rules)
    token_types = any(m is not None and m.config.model_type == "bert" for m in (model, teacher))
    train = encode_split(task, "train", tokenizer, config, token_types, train=True)
    evals = {s: encode_split(task, s, tokenizer, config, token_types, train=False)
             for s in config.eval_splits}
    os.makedirs(workdir, exist_ok=True)  # only once every input has been checked
    write_config(config, workdir)
    steps_per_epoch = len(train) // config.batch_size
    total_steps = config.max_steps if config.max_steps > 0 else int(config.num_epochs * steps_per_epoch)
    warmup = config.warmup_steps or int(config.warmup_ratio * total_steps)
    schedule = train_state.linear_schedule(config.lr, total_steps, warmup)
    tx = train_state.adamw(schedule, b1=config.adam_b1, b2=config.adam_b2, eps=config.adam_eps,
                           weight_decay=config.weight_decay, max_grad_norm=config.max_grad_norm)
    state_shardings = train_state.shardings(hf.abstract_params(model), tx, mesh, rules)
    state = train_state.create(params, tx, config.seed, state_shardings)
    del params

    checkpoints = Checkpoints(workdir, config.keep_checkpoints, task.metric_for_best)
    if checkpoints.latest_step() is not None:
        state = checkpoints.restore(state)  # onto this run's shardings, whatever mesh wrote it
        log.info("Resumed from %s at step %d", workdir, int(state.step))
    start = int(state.step)
    distillation = {"task_alpha": config.task_alpha, "distill_alpha": config.distill_alpha,
                    "temperature": config.distill_temperature}
    train_step = make_train_step(model, task.head, tx, config.grad_accum_steps, state_shardings,
                                 mesh, rules, teacher, teacher_shardings, distillation)
    eval_step = make_eval_step(model, state_shardings.params, mesh, rules)
    writer = MetricWriter(workdir)
    process = (jax.process_index(), jax.process_count())
    batches = prefetch(sharding.put_batch(batch, mesh, config.batch_size) for batch in train_batches(
        train, config.batch_size, config.seed, start, tokenizer.pad_token_id, tuple(config.buckets),
        process))
    results: dict[str, Any] = {"task": task.name, "model": config.model, "total_steps": total_steps,
                               "train_examples": len(train), "mesh": dict(mesh.shape),
                               "teacher": config.teacher or None}
    evaluate = lambda params, splits, predictions=None: evaluate_splits(
        eval_step, params, task, splits, config, tokenizer.pad_token_id, mesh, predictions)

    tests = {s: encode_split(task, s, tokenizer, config, token_types, train=False)
             for s in config.predict_splits}
    predictions_dir = os.path.join(workdir, "predictions")
    final: dict[str, dict[str, float]] = {}

    def evaluate_and_keep_best(state, step):
        """Dev metrics (and best params); at the last step also test predictions and files."""
        last = step == total_steps
        scores = evaluate(state.params, {**evals, **tests} if last else evals,
                          predictions_dir if last else None)
        if scores:
            checkpoints.save_best(step, state.params, next(iter(scores.values())))
        if last:
            final.update(scores)
        return scores

    started = time.perf_counter()
    state = loop.run(
        state, lambda state, batch: train_step(state, teacher_params, batch), batches,
        loop.Schedule(total_steps, config.log_every, config.checkpoint_every,
                      config.eval_every or steps_per_epoch),
        workdir=workdir, checkpoints=checkpoints, writer=writer,
        progress=Progress(total_steps, config.batch_size, start), learning_rate=schedule,
        evaluate=evaluate_and_keep_best)
    train_seconds = time.perf_counter() - started
    if not final:  # the run had already finished: evaluate what it left
        final = evaluate(state.params, {**evals, **tests}, predictions_dir)
    results.update({"eval": final, "train_seconds_this_run": train_seconds,
                    "steps_this_run": total_steps - start})
    if checkpoints.best_step() is not None:
        results["best_step"] = checkpoints.best_step()
    checkpoints.close()
    writer.close()
    if config.save_model:
        params = sharding.to_host(state.params, mesh)
        if jax.process_index() == 0:
            hf.save_pretrained(os.path.join(workdir, "model"), model, params, tokenizer)
    write_json(os.path.join(workdir, "results.json"), results)
    return results


def evaluate_only(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Evaluates a fine-tuned checkpoint (`config.model`) on `config.eval_splits` (+ predictions)."""
    mesh, rules = sharding.from_config(config)
    check_batch_sizes(config, mesh)
    task = build_task(config)
    model, params, tokenizer = load_model(config, task, mesh, rules, require_trained_head=True)
    token_types = model.config.model_type == "bert"
    splits = {s: encode_split(task, s, tokenizer, config, token_types, train=False)
              for s in (*config.eval_splits, *config.predict_splits)}
    os.makedirs(workdir, exist_ok=True)
    write_config(config, workdir)
    param_shardings = sharding.tree_shardings(hf.abstract_params(model), mesh, rules)
    scores = evaluate_splits(make_eval_step(model, param_shardings, mesh, rules), params, task,
                             splits, config, tokenizer.pad_token_id, mesh,
                             os.path.join(workdir, "predictions"))
    results = {"task": task.name, "model": config.model, "eval": scores}
    write_json(os.path.join(workdir, "results.json"), results)
    return results


def write_config(config, workdir: str) -> None:
    """Every field the run used, next to its checkpoints (config.json)."""
    write_json(os.path.join(workdir, "config.json"), config.to_dict())


def write_json(path: str, value) -> None:
    if jax.process_index() != 0:
        return
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2, default=str)
        f.write("\n")
    os.replace(path + ".tmp", path)

