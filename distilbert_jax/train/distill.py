"""Pre-training distillation, the paper's recipe: `distill(config, workdir)`.

A DistilBERT student (initialised from every other teacher layer, or at random) learns from a frozen
BERT teacher on masked text with the triple loss: α_ce·T²·KL(teacher ‖ student) + α_mlm·MLM +
α_cos·(1 − cos) of the last hidden states. Masking happens on device inside the jitted step, from
the step's key; the teacher runs in eval mode in the same step, under stop_gradient, sharded by the
same rules as the student. Resume order as in fine-tuning: this workdir's checkpoint, else the
teacher-initialised (or random) student.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import flax.traverse_util
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

from distilbert_jax import hf, losses, modeling, sharding, student
from distilbert_jax.config import ConfigError
from distilbert_jax.data import corpus
from distilbert_jax.data.task import prefetch
from distilbert_jax.tokenizer import Tokenizer
from distilbert_jax.train import loop
from distilbert_jax.train import state as train_state
from distilbert_jax.train.checkpoint import Checkpoints
from distilbert_jax.train.finetune import DTYPES, write_config, write_json
from distilbert_jax.train.logging import MetricWriter, Progress

log = logging.getLogger(__name__)


def default_config() -> ml_collections.ConfigDict:
    """The released DistilBERT's recipe (RECIPE.md §1-4), on a teacher and corpus of your choice."""
    c = ml_collections.ConfigDict()
    c.job = "distill"
    c.teacher = "bert-base-uncased"  # HF checkpoint dir, hub id, or packaged:all-MiniLM-L6-v2
    c.teacher_dtype = "float32"  # "bfloat16" halves the teacher's cost
    c.corpus_files = ()  # plain-text files (one sequence per line) or "tfds:<name>[:<split>]"
    c.corpus_dir = ""  # the prepared corpus (default <workdir>/corpus, prepared on first run)
    c.max_length = 512
    c.student_layers = 6
    c.student_init = "teacher"  # or "random" (the paper's ablation)
    c.freeze_positions = True  # the reference trained with BERT's positions frozen
    c.dtype = "float32"
    c.seed = 56
    c.mesh = "dp"
    c.rules = sharding.RULES

    c.temperature = 2.0
    c.alpha_ce = 5.0
    c.alpha_mlm = 2.0
    c.alpha_cos = 1.0
    c.alpha_mse = 0.0
    c.restrict_ce_to_mask = False
    c.mlm_mask_prop = 0.15
    c.word_mask = 0.8
    c.word_keep = 0.1
    c.word_rand = 0.1
    c.mlm_smoothing = 0.7

    c.batch_size = 4000  # sequences per update ("up to 4K examples per batch")
    c.grad_accum_steps = 50
    c.num_epochs = 3.0
    c.max_steps = 0
    c.lr = 5e-4
    c.adam_b1 = 0.9
    c.adam_b2 = 0.98
    c.adam_eps = 1e-6
    c.weight_decay = 0.0
    c.warmup_ratio = 0.05
    c.max_grad_norm = 5.0
    c.length_multiple = 32  # batches are padded to a multiple of this (few compiled shapes)

    c.log_every = 50
    c.checkpoint_every = 500
    c.keep_checkpoints = 2
    c.save_model = True  # save_pretrained(<workdir>/student), loadable as DistilBertForMaskedLM
    return c


def check_recipe(config) -> None:
    """Refuses recipes the reference's sanity checks refuse, before any compute."""
    alphas = {k: config[k] for k in ("alpha_ce", "alpha_mlm", "alpha_cos", "alpha_mse")}
    if min(alphas.values()) < 0 or sum(alphas.values()) <= 0:
        raise ConfigError(f"The loss weights {alphas} must be non-negative with a positive sum.")
    shares = config.word_mask + config.word_keep + config.word_rand
    if abs(shares - 1.0) > 1e-6:
        raise ConfigError(f"word_mask + word_keep + word_rand = {shares:g}, not 1.")
    if not 0 < config.mlm_mask_prop < 1:
        raise ConfigError(f"mlm_mask_prop={config.mlm_mask_prop} must be in (0, 1).")
    if config.student_init not in ("teacher", "random"):
        raise ConfigError(f"student_init={config.student_init!r} must be 'teacher' or 'random'.")
    if config.temperature <= 0:
        raise ConfigError(f"temperature={config.temperature} must be positive.")


def load_teacher(config, mesh, rules):
    """(teacher model, params, tokenizer): with its MLM head when the checkpoint has one."""
    directory = hf.resolve(config.teacher)
    saved, architectures = hf.read_config(directory)
    if saved.model_type != "bert":
        raise ConfigError(f"The teacher {config.teacher} is a {saved.model_type!r} model; "
                          "distillation needs a BERT teacher.")
    head = hf.head_from_architectures("bert", architectures)
    needs_logits = config.alpha_ce > 0 or config.alpha_mse > 0
    if head != "masked_lm" and needs_logits:
        raise ConfigError(
            f"The teacher {config.teacher} has no masked-LM head ({architectures}), so it gives no "
            "soft targets: set --config.alpha_ce=0 --config.alpha_mse=0 (cosine + MLM only), or "
            "use a teacher with an MLM head.")
    model, params = hf.from_pretrained(directory, head="masked_lm" if needs_logits else "base",
                                       dtype=DTYPES[config.teacher_dtype],
                                       shardings=sharding.param_placement(mesh, rules))
    return model, params, Tokenizer.from_pretrained(directory)


def build_student(config, teacher, teacher_params, tokenizer, mesh):
    """The student model and its initial params (teacher layers, or random)."""
    cfg = student.student_config(teacher.config, config.student_layers)
    model = modeling.DistilBertForMaskedLM(cfg, dtype=DTYPES[config.dtype])
    if tokenizer.vocab_size != cfg.vocab_size:
        raise ConfigError(f"The tokenizer has {tokenizer.vocab_size} tokens but the student's "
                          f"vocab_size is {cfg.vocab_size}; teacher and student must share a vocabulary.")
    with jax.default_device(jax.local_devices(backend="cpu")[0]):  # built on the host, then placed
        params = jax.device_get(hf.init_params(model, config.seed))
    if config.student_init == "teacher":
        layers = student.teacher_layers(teacher.config.num_hidden_layers, config.student_layers)
        params, fresh = student.init_from_teacher(params, sharding.to_host(teacher_params, mesh), layers)
        log.info("Student layers from teacher layers %s%s", layers,
                 f"; fresh: {', '.join(fresh)}" if fresh else "")
    return model, params


def load_corpus(config, tokenizer, workdir: str) -> corpus.Corpus:
    """The prepared corpus, tokenising `corpus_files` first if needed (process 0 only; the others
    wait for it, so no two processes write the same files)."""
    corpus_dir = config.corpus_dir or os.path.join(workdir, "corpus")
    if not os.path.exists(os.path.join(corpus_dir, "meta.json")):
        if not config.corpus_files:
            raise ConfigError(f"No prepared corpus in {corpus_dir} and no corpus_files to prepare one.")
        if jax.process_index() == 0:
            corpus.prepare(list(config.corpus_files), tokenizer, corpus_dir, config.max_length)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("corpus prepared")
    return corpus.Corpus.load(corpus_dir)


def corpus_batches(data: corpus.Corpus, config, pad_id: int, mesh, start: int):
    """Global length-grouped batches from batch `start` on, each process loading its own share."""
    return prefetch(sharding.put_batch(b, mesh, config.batch_size) for b in data.batches(
        config.batch_size, config.seed, start, pad_id, config.length_multiple,
        process=(jax.process_index(), jax.process_count())))


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


def make_distill_step(student_model, teacher_model, tx, config, mask, state_shardings,
                      teacher_shardings, mesh, rules):
    """One update: mask on device, teacher forward (frozen), student forward, triple loss.

    Vocabulary logits cost most of a small model's step; when no term needs them at every token
    (restrict_ce_to_mask, or no soft targets), both models compute them at the MLM targets only.
    """
    terms_weights = dict(temperature=config.temperature, alpha_ce=config.alpha_ce,
                         alpha_mlm=config.alpha_mlm, alpha_cos=config.alpha_cos,
                         alpha_mse=config.alpha_mse, restrict_ce_to_mask=config.restrict_ce_to_mask)
    teacher_logits = isinstance(teacher_model, modeling.BertForMaskedLM)
    at_targets = config.restrict_ce_to_mask or not teacher_logits

    def loss_fn(params, teacher_params, batch, key):
        mask_key, dropout_key = jax.random.split(key)
        ids, labels = mask(mask_key, batch)
        positions = None
        if at_targets:
            positions, labels = corpus.target_positions(labels, config.mlm_mask_prop)
        attention = batch["attention_mask"]
        teacher_out = teacher_model.apply(
            {"params": teacher_params}, ids, attention_mask=attention, output_hidden_states=True,
            **({"logit_positions": positions} if teacher_logits else {}))
        t_logits = jax.lax.stop_gradient(teacher_out.logits) if teacher_logits else None
        t_hidden = jax.lax.stop_gradient(teacher_out.hidden_states[-1])
        out = student_model.apply({"params": params}, ids, attention_mask=attention,
                                  deterministic=False, rngs={"dropout": dropout_key},
                                  output_hidden_states=True, logit_positions=positions)
        return losses.distillation_loss(out.logits, t_logits, out.hidden_states[-1], t_hidden,
                                        attention, labels, **terms_weights)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    accum = config.grad_accum_steps

    def step(state, teacher_params, batch):
        key = jax.random.fold_in(state.rng, state.step)
        micro = jax.tree.map(lambda x: x.reshape(accum, -1, *x.shape[1:]), batch)

        def body(carry, xs):
            index, micro_batch = xs
            (loss, terms), grads = grad_fn(state.params, teacher_params, micro_batch,
                                           jax.random.fold_in(key, index))
            return jax.tree.map(jnp.add, carry, (loss, terms, grads)), None

        shapes = jax.eval_shape(grad_fn, state.params, teacher_params,
                                jax.tree.map(lambda x: x[0], micro), key)
        (loss_shape, terms_shape), grads_shape = shapes
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                             (loss_shape, terms_shape, grads_shape))
        (loss, terms, grads), _ = jax.lax.scan(body, zeros, (jnp.arange(accum), micro))
        loss, terms, grads = jax.tree.map(lambda x: x / accum, (loss, terms, grads))
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"distill/loss": loss, **{f"distill/loss_{k}": v for k, v in terms.items()},
                   "train/grad_norm": train_state.global_norm(grads),
                   "train/param_norm": train_state.global_norm(params),
                   "batch/tokens": jnp.sum(batch["attention_mask"])}
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    replicated = NamedSharding(mesh, PartitionSpec())
    jitted = jax.jit(step, in_shardings=(state_shardings, teacher_shardings,
                                         sharding.batch_sharding(mesh)),
                     out_shardings=(state_shardings, replicated), donate_argnums=0)
    return sharding.in_mesh(jitted, mesh, rules)


def frozen_where(predicate):
    """An optax mask builder: True for the parameters whose path satisfies `predicate`."""
    return lambda params: flax.traverse_util.unflatten_dict(
        {path: predicate(path) for path in flax.traverse_util.flatten_dict(params)})


def train_on_corpus(config, workdir: str, model, params, data: corpus.Corpus, tokenizer, frozen,
                    make_step, mesh, rules):
    """The loop both corpus jobs share: AdamW with the config's schedule (parameters `frozen` says
    stay fixed), resumed from this workdir's checkpoint, over length-grouped corpus batches.

    `make_step(tx, state_shardings)` returns the jitted `(state, batch) -> (state, metrics)`.
    Returns (final state, total steps, the step this run started at).
    """
    steps_per_epoch = len(data.lengths) // config.batch_size
    total = config.max_steps if config.max_steps > 0 else int(config.num_epochs * steps_per_epoch)
    schedule = train_state.linear_schedule(config.lr, total, int(config.warmup_ratio * total))
    tx = train_state.adamw(schedule, b1=config.adam_b1, b2=config.adam_b2, eps=config.adam_eps,
                           weight_decay=config.weight_decay, max_grad_norm=config.max_grad_norm,
                           frozen=frozen)
    state_shardings = train_state.shardings(hf.abstract_params(model), tx, mesh, rules)
    state = train_state.create(jax.device_put(params, state_shardings.params), tx, config.seed,
                               state_shardings)
    checkpoints = Checkpoints(workdir, config.keep_checkpoints)
    if checkpoints.latest_step() is not None:
        state = checkpoints.restore(state)
        log.info("Resumed from %s at step %d", workdir, int(state.step))
    start = int(state.step)
    batches = corpus_batches(data, config, tokenizer.pad_token_id, mesh, start)
    writer = MetricWriter(workdir)
    state = loop.run(state, make_step(tx, state_shardings), batches,
                     loop.Schedule(total, config.log_every, config.checkpoint_every),
                     workdir=workdir, checkpoints=checkpoints, writer=writer,
                     progress=Progress(total, config.batch_size, start), learning_rate=schedule)
    checkpoints.close()
    writer.close()
    return state, total, start


def distill(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Distils a student from `config.teacher` on `config.corpus_*`; returns the run's summary."""
    check_recipe(config)
    mesh, rules = sharding.from_config(config)
    teacher, teacher_params, tokenizer = load_teacher(config, mesh, rules)
    student_model, params = build_student(config, teacher, teacher_params, tokenizer, mesh)
    if student_model.config.dim != teacher.config.hidden_size:
        raise ConfigError(f"The student's dim ({student_model.config.dim}) differs from the teacher's "
                          f"hidden_size ({teacher.config.hidden_size}); the cosine loss needs them equal.")
    data = load_corpus(config, tokenizer, workdir)
    if data.counts.shape[0] != student_model.config.vocab_size:
        raise ConfigError(f"The corpus {config.corpus_dir or os.path.join(workdir, 'corpus')} was "
                          f"tokenised with a {data.counts.shape[0]}-token vocabulary, "
                          f"the student has {student_model.config.vocab_size}.")
    os.makedirs(workdir, exist_ok=True)
    write_config(config, workdir)

    frozen = frozen_where(lambda path: "position_embeddings" in path) if config.freeze_positions else None
    teacher_shardings = sharding.tree_shardings(hf.abstract_params(teacher), mesh, rules)
    mask = masker(config, data.counts, tokenizer, student_model.config.vocab_size)

    def make_step(tx, state_shardings):
        step = make_distill_step(student_model, teacher, tx, config, mask, state_shardings,
                                 teacher_shardings, mesh, rules)
        return lambda state, batch: step(state, teacher_params, batch)

    state, total, start = train_on_corpus(config, workdir, student_model, params, data, tokenizer,
                                          frozen, make_step, mesh, rules)
    if config.save_model:
        params = sharding.to_host(state.params, mesh)
        if jax.process_index() == 0:
            hf.save_pretrained(os.path.join(workdir, "student"), student_model, params, tokenizer)
    results = {"teacher": config.teacher, "student_layers": config.student_layers,
               "sequences": int(len(data.lengths)), "total_steps": total, "steps_this_run": total - start}
    write_json(os.path.join(workdir, "results.json"), results)
    return results


def fit_teacher_head(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Gives a bare BERT teacher (all-MiniLM-L6-v2 ships without one) a masked-LM head: the
    transform and output bias are trained on the corpus with MLM, the encoder and the tied word
    embeddings frozen. Saves `<workdir>/teacher`, a BertForMaskedLM to distil from with α_ce > 0."""
    mesh, rules = sharding.from_config(config)
    directory = hf.resolve(config.teacher)
    model, params = hf.from_pretrained(directory, head="masked_lm", seed=config.seed,
                                       shardings=sharding.param_placement(mesh, rules))
    tokenizer = Tokenizer.from_pretrained(directory)
    data = load_corpus(config, tokenizer, workdir)
    os.makedirs(workdir, exist_ok=True)
    write_config(config, workdir)
    mask = masker(config, data.counts, tokenizer, model.config.vocab_size)

    def loss_fn(params, batch, key):
        params = {"bert": jax.lax.stop_gradient(params["bert"]), "cls": params["cls"]}
        ids, labels = mask(key, batch)
        positions, labels = corpus.target_positions(labels, config.mlm_mask_prop)
        out = model.apply({"params": params}, ids, attention_mask=batch["attention_mask"],
                          logit_positions=positions)
        return losses.masked_lm_loss(out.logits, labels)

    def make_step(tx, state_shardings):
        def step(state, batch):
            loss, grads = jax.value_and_grad(loss_fn)(state.params, batch,
                                                      jax.random.fold_in(state.rng, state.step))
            updates, opt_state = tx.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
            return (state.replace(step=state.step + 1, params=params, opt_state=opt_state),
                    {"head/mlm_loss": loss, "batch/tokens": jnp.sum(batch["attention_mask"])})
        return sharding.in_mesh(jax.jit(
            step, in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
            out_shardings=(state_shardings, NamedSharding(mesh, PartitionSpec())), donate_argnums=0),
            mesh, rules)

    state, total, _ = train_on_corpus(config, workdir, model, params, data, tokenizer,
                                      frozen_where(lambda path: path[0] != "cls"), make_step, mesh, rules)
    params = sharding.to_host(state.params, mesh)
    if jax.process_index() == 0:
        hf.save_pretrained(os.path.join(workdir, "teacher"), model, params, tokenizer)
    results = {"teacher": config.teacher, "total_steps": total,
               "saved": os.path.join(workdir, "teacher")}
    write_json(os.path.join(workdir, "results.json"), results)
    return results
