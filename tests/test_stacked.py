"""Stacked sweeps: K runs trained in one program equal the same runs trained alone, and a killed
stacked sweep resumes every run where it stopped."""

import os

import jax
import numpy as np
import pytest

from distilbert_jax.config import ConfigError
from distilbert_jax.train import finetune
from conftest import read_results, step_metrics, tiny_config, write_sst2
from test_resume import assert_same_weights, final_weights

# Two seeds x two learning rates; patience 1 so that runs stop early on their own evaluations.
POINTS = [(1, 1e-3), (2, 1e-3), (1, 3e-2), (2, 3e-4)]


def configs(tiny_model, data, **overrides):
    fields = dict(max_steps=8, log_every=1, eval_every=2, checkpoint_every=2,
                  early_stopping_patience=1, **overrides)
    out = []
    for seed, lr in POINTS:
        c = tiny_config(tiny_model, data, "sst2", **fields)
        c.seed, c.lr = seed, lr
        out.append(c)
    return out


def differences(stacked, alone):
    """Max |stacked - alone| over the train losses at every step, the dev metrics and the params
    (all but the attention key bias, whose gradient is rounding noise: conftest.compared_after_training)."""
    losses = np.abs(np.subtract(step_metrics(stacked, "train/loss"), step_metrics(alone, "train/loss")))
    a, b = read_results(stacked)["eval"]["dev"], read_results(alone)["eval"]["dev"]
    wa, wb = final_weights(stacked), final_weights(alone)
    params = max(float(np.max(np.abs(wa[k] - wb[k]))) for k in wb if not k.endswith("k_lin.bias"))
    return float(losses.max()), max(abs(a[k] - b[k]) for k in b), params


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_sst2(tmp_path_factory.mktemp("stacked") / "SST-2")


def test_stacked_runs_equal_the_runs_alone(tiny_model, data, tmp_path):
    cs = configs(tiny_model, data)
    dirs = [str(tmp_path / f"stacked{i}") for i in range(len(cs))]
    stacked = finetune.train_and_evaluate_stacked(cs, dirs)
    stopped = []
    for i, c in enumerate(cs):
        alone = finetune.train_and_evaluate(c, str(tmp_path / f"alone{i}"))
        for key in ("exported_step", "best_step", "stopped_early_at", "total_steps"):
            assert stacked[i].get(key) == alone.get(key), (i, key)
        assert len(step_metrics(dirs[i], "train/loss")) == alone["steps_this_run"]
        loss, metric, params = differences(dirs[i], str(tmp_path / f"alone{i}"))
        print(f"run {i}: max |diff| loss {loss:.2e} dev metric {metric:.2e} params {params:.2e}")
        np.testing.assert_allclose(step_metrics(dirs[i], "train/loss"),
                                   step_metrics(str(tmp_path / f"alone{i}"), "train/loss"), rtol=1e-5)
        assert metric <= 1e-5 and params <= 1e-5, (i, metric, params)
        stopped.append("stopped_early_at" in alone)
    assert any(stopped) and not all(stopped), stopped  # one stops early while the others go on
