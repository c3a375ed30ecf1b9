"""Process-wide JAX settings are named, applied once at an entry point, never by building a step."""

import subprocess
import sys

import pytest

import distilbert_jax as dj
from distilbert_jax import settings


def test_settings_are_named_with_their_defaults():
    assert settings.Settings() == settings.Settings(
        unroll_threefry_on_cpu=True, deterministic_ops=True, compilation_cache_dir=None,
        compilation_cache_min_seconds=0.5, cpu_collectives="gloo")
    with pytest.raises(TypeError, match=r"no setting \['unrol'\]"):
        dj.configure(unrol=True)


PROBE = """
import jax, jax.numpy as jnp, optax
from jax.extend.random import threefry2x32_p
from jax.interpreters import mlir
from distilbert_jax import sharding
from distilbert_jax.train import state as train_state
from distilbert_jax.train.step import make_step
rules = mlir._platform_specific_lowerings["cpu"]
before = rules.get(threefry2x32_p)
layout = sharding.Layout(sharding.make_mesh("dp"), sharding.RULES)
loss = lambda p, f, b, k: (jnp.sum(p["w"] * b["inputs"]["input_ids"]), {})
make_step(loss, optax.sgd(0.1), layout, None)
print(rules.get(threefry2x32_p) is before)
"""


def test_building_a_step_changes_no_lowering():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True)
    assert out.stdout.strip().splitlines()[-1] == "True", out.stderr[-2000:]
