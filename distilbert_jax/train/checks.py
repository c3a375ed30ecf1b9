"""`start`: the preamble every job runs before loading or writing anything, and `validate(config,
layout)`, the check of its config there (batch sizes that fit the mesh and the accumulation, known
compute dtypes, bucket lengths, a distillation recipe the reference accepts). What the model can
hold is `models.check_fits`, run on the checkpoint before its weights load."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from distilbert_jax import sharding
from distilbert_jax.config import ConfigError
from distilbert_jax.models import check_matmul_precision, check_remat
from distilbert_jax.train import workdir as workdirs

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def dtype(config, field: str = "dtype"):
    """The jnp dtype a config field names, or one sentence listing the known names."""
    name = config[field]
    if name not in DTYPES:
        raise ConfigError(f"{field}={name!r} is not one of {sorted(DTYPES)}.")
    return DTYPES[name]


DISTILL_JOBS = ("distill", "fit_teacher_head")


def layout_for(config) -> sharding.Layout:
    """The Layout a job's config asks for (`mesh`, `rules`), the config validated on it."""
    placed = sharding.Layout.from_config(config)
    validate(config, placed)
    return placed


def start(runs: Sequence[tuple[Any, str]], check: Callable = layout_for):
    """A job's preamble for its (config, workdir) runs (one, or K stacked that differ only in values),
    before anything loads or is written, so a refused start leaves nothing behind: every workdir
    probed, `check` run on the first config, every workdir's earlier run compared with its config.
    Returns what `check` returns: by default the Layout the job runs on (`jobs.run` passes it in)."""
    for _, workdir in runs:
        workdirs.probe(workdir)
    checked = check(runs[0][0])
    for config, workdir in runs:
        workdirs.check_resume(config, workdir)
    return checked


def validate(config, layout=None) -> None:
    """The one check of a job's config, before it loads or writes anything: each refusal one
    sentence naming the field. Every job's config holds default.get_config()'s fields; those of
    its own job (configs/default.py: finetune, distill) are checked by `config.job` (the miniature
    checks its own fields: experiments/miniature.py). `layout`
    (the mesh the job runs on) checks that batches split over it."""
    dtype(config)
    check_matmul_precision(config.matmul_precision)
    check_remat(config.remat)
    _check_ints(config, positive=("batch_size", "grad_accum_steps", "max_length", "log_every",
                                  "checkpoint_every", "keep_checkpoints"), non_negative=("max_steps",))
    if config.batch_size % config.grad_accum_steps:
        raise ConfigError(f"batch_size={config.batch_size} is not a multiple of "
                          f"grad_accum_steps={config.grad_accum_steps}.")
    sizes = {"batch_size / grad_accum_steps": config.batch_size // config.grad_accum_steps}
    if config.job in DISTILL_JOBS:
        dtype(config, "teacher_dtype")
        _check_ints(config, non_negative=("logit_chunk",))
        _check_recipe(config)
    else:
        _check_ints(config, positive=("eval_batch_size",),
                    non_negative=("eval_every", "limit_train_examples", "limit_eval_examples",
                                  "early_stopping_patience"))
        if config.export not in ("best", "last"):
            raise ConfigError(f"export={config.export!r} must be 'best' or 'last'.")
        buckets = config.buckets
        if (isinstance(buckets, str) or not all(isinstance(b, int) and b > 0 for b in buckets)
                or not buckets):
            raise ConfigError(f"buckets={buckets!r} must be a tuple of positive lengths, e.g. (32, 64, 128).")
        sizes["eval_batch_size"] = config.eval_batch_size
    if layout is None:
        return
    for name, size in sizes.items():
        if size % layout.data_ways or size % jax.process_count():
            raise ConfigError(
                f"{name}={size} must be a multiple of the {layout.data_ways} devices a batch is split "
                f"over (mesh {dict(layout.mesh.shape)}) and of {jax.process_count()} processes.")


def _check_ints(config, positive=(), non_negative=()) -> None:
    for field in positive:
        if not isinstance(config[field], int) or config[field] < 1:
            raise ConfigError(f"{field}={config[field]!r} must be a positive integer.")
    for field in non_negative:
        if not isinstance(config[field], int) or config[field] < 0:
            raise ConfigError(f"{field}={config[field]!r} must be a non-negative integer.")


def _check_recipe(config) -> None:
    """Refuses distillation recipes the reference's sanity checks refuse."""
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
