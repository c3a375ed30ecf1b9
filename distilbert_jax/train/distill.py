"""Pre-training distillation, the paper's recipe: `distill(config, workdir)`.

A DistilBERT student (initialised from every other teacher layer, or at random) learns from a frozen
BERT teacher on masked text with the triple loss: α_ce·T²·KL(teacher ‖ student) + α_mlm·MLM +
α_cos·(1 − cos) of the last hidden states. Masking happens on device inside the jitted step, from
the step's key; the teacher runs in eval mode in the same step, under stop_gradient, sharded by the
same rules as the student. Resume order as in fine-tuning: this workdir's checkpoint, else the
teacher-initialised (or random) student.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import Any, Callable

import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from distilbert_jax import hf, losses, models, sharding, storage, student
from distilbert_jax.configs import default
from distilbert_jax.config import ConfigError
from distilbert_jax.data import corpus
from distilbert_jax.data.packing import Packer
from distilbert_jax.data.task import DataError, packer_for, prefetch
from distilbert_jax.tokenizer import Tokenizer
from distilbert_jax.train import checks, loop, programs as programs_lib, workdir as workdirs
from distilbert_jax.train import state as train_state
from distilbert_jax.train.checkpoint import Checkpoints
from distilbert_jax.train.reporting import MetricWriter, Progress
from distilbert_jax.train.programs import Program
from distilbert_jax.train.step import computed_tokens, make_step

log = logging.getLogger(__name__)


# The fields are defined (and commented) once, in configs/default.py.
default_config = default.distill


def teacher_head(config, directory: str, tokenizer) -> str:
    """The head the teacher runs with (masked_lm where a term needs its logits, else base), after
    refusing a teacher that cannot serve the recipe or hold its sequences."""
    saved, architectures = hf.read_config(directory)
    models.check_fits(saved, config.teacher, config.max_length, tokenizer.vocab_size)
    if saved.model_type != "bert":
        raise ConfigError(f"The teacher {config.teacher} is a {saved.model_type!r} model; "
                          "distillation needs a BERT teacher.")
    needs_logits = config.alpha_ce > 0 or config.alpha_mse > 0
    if hf.head_from_architectures("bert", architectures) != "masked_lm" and needs_logits:
        raise ConfigError(
            f"The teacher {config.teacher} has no masked-LM head ({architectures}), so it gives no "
            "soft targets: set --config.alpha_ce=0 --config.alpha_mse=0 (cosine + MLM only), or "
            "use a teacher with an MLM head.")
    return "masked_lm" if needs_logits else "base"


def teacher_args(config, directory: str, tokenizer) -> dict[str, Any]:
    """How the recipe builds its teacher (`hf.build_model` / `hf.from_pretrained` arguments)."""
    return dict(head=teacher_head(config, directory, tokenizer),
                dtype=checks.dtype(config, "teacher_dtype"), matmul_precision=config.matmul_precision)


@dataclasses.dataclass(frozen=True)
class Teacher:
    """The model a corpus job's loss reads but never trains: its params and where they live."""
    params: Any
    shardings: Any


def load_teacher(config, layout: sharding.Layout) -> tuple[Any, Teacher, Tokenizer]:
    """(teacher model, its params placed by `layout`, tokenizer)."""
    directory = hf.resolve(config.teacher)
    tokenizer = Tokenizer.from_pretrained(directory)
    args = teacher_args(config, directory, tokenizer)
    shardings = layout.params(hf.build_model(directory, **args))
    model, params = hf.from_pretrained(directory, shardings=lambda _: shardings, **args)
    return model, Teacher(params, shardings), tokenizer


def student_model(config, teacher_config, tokenizer):
    """The DistilBERT student of `teacher_config`'s width with `student_layers` layers (no params)."""
    cfg = student.student_config(teacher_config, config.student_layers)
    if tokenizer.vocab_size != cfg.vocab_size:
        raise ConfigError(f"The tokenizer has {tokenizer.vocab_size} tokens but the student's "
                          f"vocab_size is {cfg.vocab_size}; teacher and student must share a vocabulary.")
    if cfg.dim != teacher_config.hidden_size:
        raise ConfigError(f"The student's dim ({cfg.dim}) differs from the teacher's hidden_size "
                          f"({teacher_config.hidden_size}); the cosine loss needs them equal.")
    return models.DistilBertForMaskedLM(cfg, dtype=checks.dtype(config),
                                        matmul_precision=config.matmul_precision, remat=config.remat)


def build_student(config, teacher, teacher_params, tokenizer, layout: sharding.Layout):
    """The student model and its initial params (teacher layers, or random)."""
    model = student_model(config, teacher.config, tokenizer)
    with jax.default_device(jax.local_devices(backend="cpu")[0]):  # built on the host, then placed
        params = jax.device_get(models.init_params(model, config.seed))
    if config.student_init == "teacher":
        layers = student.teacher_layers(teacher.config.num_hidden_layers, config.student_layers)
        params, fresh = student.init_from_teacher(params, layout.to_host(teacher_params), layers)
        log.info("Student layers from teacher layers %s%s", layers,
                 f"; fresh: {', '.join(fresh)}" if fresh else "")
    return model, params


def load_corpus(config, tokenizer, workdir: str) -> corpus.Corpus:
    """The prepared corpus of `corpus_files` (tokenised first if needed, by process 0 only, the
    others waiting, so no two processes write the same files), or the one in `corpus_dir`; either
    way made with this tokenizer and no longer than `max_length`."""
    corpus_dir = config.corpus_dir or storage.join(workdir, "corpus")
    remote = storage.is_remote(corpus_dir)  # memory-mapped, so read from this host's disk: a
    local_dir = storage.cache_path(corpus_dir) if remote else corpus_dir  # gs:// one is copied
    if jax.process_index() == 0:
        prepared = remote and storage.exists(storage.join(corpus_dir, corpus.META))
        if prepared:
            storage.local_copy(corpus_dir)
        if config.corpus_files:  # a corpus there must be of these files
            corpus.prepare(list(config.corpus_files), tokenizer, local_dir, config.max_length)
            if remote and not prepared:  # kept in the bucket for the next run (or a new VM)
                storage.upload_files(local_dir, corpus_dir, corpus.FILES)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("corpus prepared")
        if remote and jax.process_index() > 0:
            storage.local_copy(corpus_dir)
    if not os.path.exists(os.path.join(local_dir, corpus.META)):
        raise ConfigError(f"No prepared corpus in {corpus_dir} and no corpus_files to prepare one.")
    corpus_dir = local_dir
    corpus.check_tokenizer(corpus_dir, tokenizer, tokenizer_name=f"the tokenizer of {config.teacher}")
    made_at = corpus.read_meta(corpus_dir).get("max_length", 0)
    if made_at > config.max_length:
        raise DataError(f"The corpus in {corpus_dir} holds sequences of up to {made_at} tokens, more "
                        f"than max_length={config.max_length}; prepare one at that length or set "
                        f"max_length={made_at}.")
    return corpus.Corpus.load(corpus_dir)


def corpus_batches(data: corpus.Corpus, config, pad_id: int, layout: sharding.Layout, start: int):
    """Global length-grouped batches ({"inputs": ...}) from batch `start` on, each process loading
    its own share."""
    return prefetch(layout.put_batch(b) for b in data.batches(
        config.batch_size, config.seed, start, pad_id, config.length_multiple,
        process=(jax.process_index(), jax.process_count()), packer=packer_of(config, layout.data_ways)))


def packer_of(config, data_ways: int) -> Packer | None:
    """The Packer of a corpus job's config (None unless `packing`): rows of max_length."""
    return packer_for(config.packing, config.max_length, data_ways, config.grad_accum_steps)


def masker(config, token_counts, tokenizer, vocab_size: int):
    """(key, batch) -> (corrupted ids, MLM labels): masking smoothed by the corpus's token counts,
    at the config's rates."""
    probs = jnp.asarray(corpus.token_probs(token_counts, tokenizer.all_special_ids, config.mlm_smoothing))

    def mask(key, batch):
        return corpus.mask_tokens(
            key, batch["input_ids"], batch["attention_mask"], probs, mask_prop=config.mlm_mask_prop,
            word_mask=config.word_mask, word_keep=config.word_keep, word_rand=config.word_rand,
            mask_id=tokenizer.mask_token_id, vocab_size=vocab_size)
    return mask


def distill_loss(student_model, teacher_model, config, mask):
    """The triple loss `(params, teacher_params, batch, key) -> (loss, terms)`: mask on device,
    teacher forward (frozen), student forward.

    Vocabulary logits cost most of a small model's step and most of a big batch's memory. When no
    term needs them at every token (restrict_ce_to_mask, or no soft targets), both models make them
    at the MLM targets only; when the soft targets cover every token of a micro-batch longer than
    `logit_chunk` tokens, they are made that many tokens at a time (losses.chunked_soft_target_sums).
    """
    terms_weights = dict(temperature=config.temperature, alpha_ce=config.alpha_ce,
                         alpha_mlm=config.alpha_mlm, alpha_cos=config.alpha_cos,
                         alpha_mse=config.alpha_mse, restrict_ce_to_mask=config.restrict_ce_to_mask)
    teacher_logits = isinstance(teacher_model, models.BertForMaskedLM)
    at_targets = config.restrict_ce_to_mask or not teacher_logits

    def loss_fn(params, teacher_params, batch, key):
        mask_key, dropout_key = jax.random.split(key)
        ids, labels = mask(mask_key, batch["inputs"])
        tokens = computed_tokens(batch["inputs"])
        chunked = not at_targets and 0 < config.logit_chunk < tokens
        positions = teacher_positions = None
        if at_targets or chunked:
            positions, labels = corpus.target_positions(labels, config.mlm_mask_prop, tokens)
            teacher_positions = jnp.zeros((0,), jnp.int32) if chunked else positions
        inputs = {**batch["inputs"], "input_ids": ids}
        teacher_out = teacher_model.apply(
            {"params": teacher_params}, **models.model_inputs(teacher_model, inputs),
            output_hidden_states=True, **({"logit_positions": teacher_positions} if teacher_logits else {}))
        t_logits = jax.lax.stop_gradient(teacher_out.logits) if teacher_logits else None
        t_hidden = jax.lax.stop_gradient(teacher_out.hidden_states[-1])
        out = student_model.apply({"params": params}, **models.model_inputs(student_model, inputs),
                                  deterministic=False, rngs={"dropout": dropout_key},
                                  output_hidden_states=True, logit_positions=positions)
        soft_sums = None
        if chunked:
            soft_sums = losses.chunked_soft_target_sums(
                lambda h: student_model.apply({"params": params}, None, final_hidden=h).logits,
                lambda h: jax.lax.stop_gradient(
                    teacher_model.apply({"params": teacher_params}, None, final_hidden=h).logits),
                out.hidden_states[-1], t_hidden, hidden_states_mask(inputs), config.temperature,
                config.logit_chunk, mse=config.alpha_mse > 0)
        return losses.distillation_loss(out.logits, t_logits, out.hidden_states[-1], t_hidden,
                                        inputs["attention_mask"], labels, soft_sums=soft_sums,
                                        hidden_mask=hidden_states_mask(inputs), **terms_weights)
    return loss_fn


def hidden_states_mask(inputs):
    """The real tokens of a model's `hidden_states`: in the packed rows' layout when packed."""
    if "packing" in inputs:
        return inputs["packing"]["segment_ids"] > 0
    return inputs["attention_mask"]


def frozen_positions(config):
    """The distillation's frozen parameters: the position embeddings, as the reference trained."""
    return frozen_where(lambda path: "position_embeddings" in path) if config.freeze_positions else None


def frozen_where(predicate):
    """An optax mask builder: True for the parameters whose path satisfies `predicate`."""
    return lambda params: flax.traverse_util.unflatten_dict(
        {path: predicate(path) for path in flax.traverse_util.flatten_dict(params)})


def head_fit_loss(model, config, mask):
    """fit_teacher_head's loss: MLM at the targets, the encoder held fixed (only `cls` learns)."""
    def loss_fn(params, _, batch, key):
        params = {"bert": jax.lax.stop_gradient(params["bert"]), "cls": params["cls"]}
        ids, labels = mask(key, batch["inputs"])
        positions, labels = corpus.target_positions(labels, config.mlm_mask_prop,
                                                    computed_tokens(batch["inputs"]))
        out = model.apply({"params": params}, **models.model_inputs(
            model, {**batch["inputs"], "input_ids": ids}), logit_positions=positions)
        return losses.masked_lm_loss(out.logits, labels), {}
    return loss_fn


@dataclasses.dataclass(frozen=True)
class Objective:
    """What a corpus job trains: `model`, by `loss(params, teacher params, batch, key) -> (loss,
    terms)` (see step.make_step), the params `frozen` marks held fixed (an optax mask builder, or
    None), the teacher's params' shardings (None: no teacher) and the prefix of its metrics."""
    model: Any
    loss: Callable
    frozen: Callable | None = None
    teacher_shardings: Any = None
    prefix: str = "train"


def corpus_step(config, objective: Objective, layout: sharding.Layout, total_steps: int):
    """(the jitted step, its optimiser, the state's shardings) of a corpus job: AdamW with the
    config's schedule. The run and the plan build it here."""
    tx, schedule = train_state.optimizer(config, total_steps, frozen=objective.frozen)
    state_shardings = train_state.shardings(objective.model, tx, layout)
    step = make_step(objective.loss, tx, layout, state_shardings, config.grad_accum_steps,
                     objective.teacher_shardings, objective.prefix, learning_rate=schedule)
    return step, tx, state_shardings


def train_on_corpus(config, workdir: str, layout: sharding.Layout, objective: Objective, params,
                    data: corpus.Corpus, pad_id: int, teacher_params=None):
    """The loop both corpus jobs share: `corpus_step`, from `params` or this workdir's checkpoint,
    over length-grouped corpus batches, the loss reading `teacher_params`.

    Returns (final state, total steps, the step this run started at).
    """
    steps_per_epoch = len(data.lengths) // config.batch_size
    if steps_per_epoch == 0 and config.max_steps <= 0:
        raise ConfigError(f"The corpus has {len(data.lengths)} sequences, fewer than one batch of "
                          f"batch_size={config.batch_size}.")
    total = config.max_steps if config.max_steps > 0 else int(config.num_epochs * steps_per_epoch)
    step, tx, state_shardings = corpus_step(config, objective, layout, total)
    state = train_state.place(params, tx, config.seed, state_shardings)
    with Checkpoints(workdir, config.keep_checkpoints) as checkpoints:
        if checkpoints.latest_step() is not None:
            state = checkpoints.restore(state)
            log.info("Resumed from %s at step %d", workdir, int(state.step))
        workdirs.record(config, workdir)  # every check has passed: this start is on record
        start = int(state.step)
        batches = corpus_batches(data, config, pad_id, layout, start)
        with MetricWriter(workdir) as writer:
            state = loop.run(state, lambda state, batch: step(state, teacher_params, batch), batches,
                             loop.Schedule(total, config.log_every, config.checkpoint_every),
                             workdir=workdir, checkpoints=checkpoints, writer=writer,
                             progress=Progress(total, config.batch_size, start))
    return state, total, start


def programs(config, layout: sharding.Layout, runs: int = 1) -> list[Program]:
    """The step a distillation (or a teacher-head fit) of `config` compiles on `layout`, for its
    longest sequences: from the teacher's config.json and vocabulary alone."""
    checks.validate(config, layout)
    if runs > 1:
        raise ConfigError(f"job={config.job!r} cannot be stacked; only job='finetune' can.")
    directory = hf.resolve(config.teacher, weights=False)
    tokenizer = Tokenizer.from_pretrained(directory)
    counts = np.ones(tokenizer.vocab_size, np.int64)  # the corpus's counts change values, not shapes
    if config.job == "distill":
        args = teacher_args(config, directory, tokenizer)
        teacher = hf.build_model(directory, **args)
        model = student_model(config, teacher.config, tokenizer)
        loss = distill_loss(model, teacher, config, masker(config, counts, tokenizer, model.config.vocab_size))
        objective = Objective(model, loss, frozen_positions(config), layout.params(teacher), "distill")
    else:
        teacher, model = None, head_model(config, directory, tokenizer)
        objective = Objective(model, head_fit_loss(model, config, masker(
            config, counts, tokenizer, model.config.vocab_size)), frozen_encoder, prefix="head")
    step, tx, shardings = corpus_step(config, objective, layout, max(config.max_steps, 1))
    length = -(-config.max_length // config.length_multiple) * config.length_multiple
    ones = np.ones((config.batch_size, length), np.int32)
    batch = programs_lib.pack({"inputs": {"input_ids": ones, "attention_mask": ones}},
                              packer_of(config, layout.data_ways))
    tokens = programs_lib.computed_tokens(batch)
    at_targets = config.restrict_ce_to_mask or not isinstance(teacher, models.BertForMaskedLM)
    logit_tokens = min(tokens, math.ceil(config.mlm_mask_prop * tokens) + 1) if at_targets else tokens
    if teacher is None:  # the encoder runs forward only; the head also backward
        flops = (programs_lib.encoder_flops(model.config, tokens, length, False, logit_tokens)
                 + 2 * 2 * model.config.hidden_size * (model.config.hidden_size + model.config.vocab_size)
                 * logit_tokens)
    else:
        flops = (programs_lib.encoder_flops(model.config, tokens, length, True, logit_tokens)
                 + programs_lib.encoder_flops(teacher.config, tokens, length, False,
                                              logit_tokens if args["head"] == "masked_lm" else 0))
    teacher_params = None if teacher is None else programs_lib.abstract(
        nn.meta.unbox(models.abstract_params(teacher)), objective.teacher_shardings)
    inputs = (programs_lib.abstract(train_state.abstract(model, tx), shardings), teacher_params,
              programs_lib.abstract_batch(batch, layout))
    return [Program("train_step", step, inputs, tokens, flops, calls=config.max_steps or None)]


def head_model(config, directory: str, tokenizer):
    """fit_teacher_head's model, the teacher with a masked-LM head, from its config.json (no weights
    are read), after refusing sequences or a vocabulary it cannot hold."""
    models.check_fits(hf.read_config(directory)[0], config.teacher, config.max_length,
                      tokenizer.vocab_size)
    return hf.build_model(directory, "masked_lm", dtype=checks.dtype(config),
                          matmul_precision=config.matmul_precision)


def distill(config: ml_collections.ConfigDict, workdir: str,
            layout: sharding.Layout | None = None) -> dict[str, Any]:
    """Distils a student from `config.teacher` on `config.corpus_*`, on `layout` (from the job's
    preamble, `checks.start`, which runs here when none is given); returns the run's summary."""
    if layout is None:
        layout = checks.start([(config, workdir)])
    teacher, placed, tokenizer = load_teacher(config, layout)
    model, params = build_student(config, teacher, placed.params, tokenizer, layout)
    data = load_corpus(config, tokenizer, workdir)  # tokenised with the student's vocabulary
    mask = masker(config, data.counts, tokenizer, model.config.vocab_size)
    objective = Objective(model, distill_loss(model, teacher, config, mask), frozen_positions(config),
                          placed.shardings, "distill")
    state, total, start = train_on_corpus(config, workdir, layout, objective, params, data,
                                          tokenizer.pad_token_id, placed.params)
    if config.save_model:
        params = layout.to_host(state.params)
        if jax.process_index() == 0:
            hf.save_pretrained(os.path.join(workdir, "student"), model, params, tokenizer)
    results = {"teacher": config.teacher, "student_layers": config.student_layers,
               "sequences": int(len(data.lengths)), "total_steps": total, "steps_this_run": total - start}
    workdirs.write_results(workdir, results)
    return results


def frozen_encoder(params):
    """fit_teacher_head's frozen parameters: everything but the MLM head (`cls`)."""
    return frozen_where(lambda path: path[0] != "cls")(params)


def fit_teacher_head(config: ml_collections.ConfigDict, workdir: str,
                     layout: sharding.Layout | None = None) -> dict[str, Any]:
    """Gives a bare BERT teacher (all-MiniLM-L6-v2 ships without one) a masked-LM head: the
    transform and output bias are trained on the corpus with MLM, the encoder and the tied word
    embeddings frozen. Saves `<workdir>/teacher`, a BertForMaskedLM to distil from with α_ce > 0.
    Runs on `layout` (from the job's preamble, `checks.start`, which runs here when none is given)."""
    if layout is None:
        layout = checks.start([(config, workdir)])
    directory = hf.resolve(config.teacher)
    tokenizer = Tokenizer.from_pretrained(directory)
    model = head_model(config, directory, tokenizer)
    shardings = layout.params(model)
    _, params = hf.from_pretrained(directory, head="masked_lm", seed=config.seed,
                                   dtype=checks.dtype(config), shardings=lambda _: shardings,
                                   matmul_precision=config.matmul_precision)
    data = load_corpus(config, tokenizer, workdir)
    mask = masker(config, data.counts, tokenizer, model.config.vocab_size)
    objective = Objective(model, head_fit_loss(model, config, mask), frozen_encoder, prefix="head")
    state, total, _ = train_on_corpus(config, workdir, layout, objective, params, data,
                                      tokenizer.pad_token_id)
    params = layout.to_host(state.params)
    if jax.process_index() == 0:
        hf.save_pretrained(os.path.join(workdir, "teacher"), model, params, tokenizer)
    results = {"teacher": config.teacher, "total_steps": total,
               "saved": os.path.join(workdir, "teacher")}
    workdirs.write_results(workdir, results)
    return results
