"""The checks every training job runs on its config before loading anything or writing anything:
batch sizes that fit the mesh and the accumulation, known compute dtypes and bucket lengths. What
the model can hold is `modeling.check_fits`, run on the checkpoint before its weights load."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from distilbert_jax.config import ConfigError
from distilbert_jax.modeling import check_matmul_precision, check_remat

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def dtype(config, field: str = "dtype"):
    """The jnp dtype a config field names, or one sentence listing the known names."""
    name = config[field]
    if name not in DTYPES:
        raise ConfigError(f"{field}={name!r} is not one of {sorted(DTYPES)}.")
    return DTYPES[name]


def check_training(config, layout) -> None:
    """Refuses a training config whose sizes cannot run: each in one sentence naming the field."""
    for field in ("dtype", "teacher_dtype"):
        if field in config:
            dtype(config, field)
    check_matmul_precision(config.get("matmul_precision", "auto"))
    check_remat(config.get("remat", "none"))
    for field in ("batch_size", "grad_accum_steps", "eval_batch_size", "max_length", "log_every",
                  "checkpoint_every", "keep_checkpoints"):
        if field in config and (not isinstance(config[field], int) or config[field] < 1):
            raise ConfigError(f"{field}={config[field]!r} must be a positive integer.")
    for field in ("max_steps", "eval_every", "limit_train_examples", "limit_eval_examples",
                  "early_stopping_patience"):
        if field in config and (not isinstance(config[field], int) or config[field] < 0):
            raise ConfigError(f"{field}={config[field]!r} must be a non-negative integer.")
    if config.get("export", "last") not in ("best", "last"):
        raise ConfigError(f"export={config.export!r} must be 'best' or 'last'.")
    if "buckets" in config:
        buckets = config.buckets
        if (isinstance(buckets, str) or not all(isinstance(b, int) and b > 0 for b in buckets)
                or not buckets):
            raise ConfigError(f"buckets={buckets!r} must be a tuple of positive lengths, e.g. (32, 64, 128).")
    if config.batch_size % config.grad_accum_steps:
        raise ConfigError(f"batch_size={config.batch_size} is not a multiple of "
                          f"grad_accum_steps={config.grad_accum_steps}.")
    sizes = {"batch_size / grad_accum_steps": config.batch_size // config.grad_accum_steps}
    if "eval_batch_size" in config:
        sizes["eval_batch_size"] = config.eval_batch_size
    for name, size in sizes.items():
        if size % layout.data_ways or size % jax.process_count():
            raise ConfigError(
                f"{name}={size} must be a multiple of the {layout.data_ways} devices a batch is split "
                f"over (mesh {dict(layout.mesh.shape)}) and of {jax.process_count()} processes.")
