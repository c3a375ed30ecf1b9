"""Stacked sweeps: K runs trained in one program equal the same runs trained alone, and a killed
stacked sweep resumes every run where it stopped."""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from distilbert_jax import sharding
from distilbert_jax.config import ConfigError
from distilbert_jax.data.task import batch_rows
from distilbert_jax.experiments import sweep
from distilbert_jax.train import finetune, loop
import sharded_run
from conftest import adam_rounding_bound, read_results, step_metrics, tiny_config, write_sst2
from test_resume import assert_same_weights, final_weights

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Two seeds, two learning rates; patience 1, so the first run stops at step 4 on its own
# evaluations while the other goes on. Every stacked run here (and sharded_run's reference) has
# the same shapes and steps, so its step compiles once per session (conftest's compilation cache).
POINTS = [(3, 3e-3), (5, 3e-2)]


def configs(tiny_model, data, **overrides):
    fields = {**dict(max_steps=6, log_every=1, eval_every=2, checkpoint_every=2,
                     early_stopping_patience=1), **overrides}
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


LONG_ROWS = range(48, 52)  # train rows past the 16-token bucket, so batches fall in both buckets


@pytest.fixture(scope="module")
def mixed_lengths(tmp_path_factory):
    directory = write_sst2(tmp_path_factory.mktemp("mixed") / "SST-2")
    with open(os.path.join(directory, "train.tsv"), "a") as f:
        for i in LONG_ROWS:
            f.write(f"the movie was good , great , fine and {'very ' * (6 + i % 3)}good indeed .\t1\n")
    return directory


def test_stacked_runs_equal_the_runs_alone(tiny_model, data, tmp_path, monkeypatch):
    """... with the stacked loop held to jax.transfer_guard("disallow"), as test_step holds `run`."""
    real_run = loop.run_stacked

    def guarded(*args, **kwargs):
        with jax.transfer_guard("disallow"):
            return real_run(*args, **kwargs)
    monkeypatch.setattr(loop, "run_stacked", guarded)
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
        print(f"run {i} (stopped at {alone.get('stopped_early_at')}): max |diff| loss {loss:.2e} "
              f"dev metric {metric:.2e} params {params:.2e}")
        np.testing.assert_allclose(step_metrics(dirs[i], "train/loss"),
                                   step_metrics(str(tmp_path / f"alone{i}"), "train/loss"), rtol=1e-5)
        # The stacked program sums in another order than the run alone (a runs axis in every
        # reduction); Adam amplifies that rounding as adam_rounding_bound says.
        bound = adam_rounding_bound(c.lr, c.max_steps)
        assert metric <= 1e-5 and params <= bound, (i, metric, params, bound)
        stopped.append("stopped_early_at" in alone)
    assert any(stopped) and not all(stopped), stopped  # one stops early while the others go on


@pytest.mark.parametrize("packing", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_runs_padded_to_another_runs_bucket_equal_the_runs_alone(tiny_model, mixed_lengths, tmp_path,
                                                                packing):
    """At some step one run's batch holds a long row (bucket 48) and the other's does not (16 alone,
    padded to 48 stacked; packed, rows of 48 either way but not as many), with dropout on:
    dropout's bits do not depend on the padding, so the stacked runs still equal the runs alone."""
    holds_long = [[bool(set(batch_rows(52, 8, seed, step)) & set(LONG_ROWS)) for step in range(6)]
                  for seed, _ in POINTS]
    assert any(a != b for a, b in zip(*holds_long)), holds_long
    with open(os.path.join(tiny_model, "config.json")) as f:
        config = json.load(f)
    assert config["dropout"] > 0 and config["attention_dropout"] > 0
    cs = configs(tiny_model, mixed_lengths, early_stopping_patience=0, packing=packing)
    dirs = [str(tmp_path / f"stacked{i}") for i in range(len(cs))]
    finetune.train_and_evaluate_stacked(cs, dirs)
    for i, c in enumerate(cs):
        finetune.train_and_evaluate(c, str(tmp_path / f"alone{i}"))
        loss, metric, params = differences(dirs[i], str(tmp_path / f"alone{i}"))
        print(f"run {i}: max |diff| loss {loss:.2e} dev metric {metric:.2e} params {params:.2e}")
        np.testing.assert_allclose(step_metrics(dirs[i], "train/loss"),
                                   step_metrics(str(tmp_path / f"alone{i}"), "train/loss"), rtol=1e-5)
        # packed, the stacked rows outnumber a run's own, so XLA sums its weight gradients over
        # more slots in another order; Adam turns that rounding into up to 1% of an lr-sized step
        # where a gradient nearly cancels (measured: 2.3e-5 on one element of lin1 at lr 3e-3)
        assert metric <= 1e-5 and params <= (1e-4 if packing else 1e-5), (i, metric, params)


def test_sweep_stacked_writes_each_point_as_alone_and_the_table(tiny_model, data, tmp_path, capsys):
    root = tmp_path / "sweep"
    args = ["run", "--config=configs/glue.py", "--tasks=sst2", "--lrs=1e-3", "--seeds=1,2",
            f"--root={root}", "--stacked", f"--set=model={tiny_model}", f"--set=data_dir={data}",
            "--set=max_steps=6", "--set=batch_size=8", "--set=eval_batch_size=8",
            "--set=max_length=48", "--set=buckets=[16, 48]", "--set=save_model=false"]
    sweep.main(args)
    assert sorted(os.listdir(root / "sst2")) == ["lr0.001_seed1", "lr0.001_seed2"]
    for seed in (1, 2):
        workdir = root / "sst2" / f"lr0.001_seed{seed}"
        assert read_results(workdir)["stacked_runs"] == 2
        assert {"config.json", "metrics.jsonl", "checkpoints", "best"} <= set(os.listdir(workdir))
    assert (root / "table.md").read_text().startswith("| Model | Score | sst2 |")
    sweep.main(args)  # finished points are kept: nothing trains again
    assert "| this sweep |" in capsys.readouterr().out


def test_points_that_differ_in_shapes_fall_into_groups(tiny_model, data):
    cs = configs(tiny_model, data) + configs(tiny_model, data)
    cs[3].max_length = 32
    assert sweep.groups(cs) == [[0, 1, 2], [3]]
    with pytest.raises(ConfigError, match=r"may differ only in \['seed', 'lr'\]; these also "
                                          r"differ in \['max_length'\]"):
        finetune.check_stackable(cs, sharding.Layout.from_config(cs[0]))


def test_a_killed_stacked_sweep_resumes_every_run_where_it_stopped(tiny_model, data, tmp_path,
                                                                  monkeypatch):
    """Killed while running step 5; one run's step-4 checkpoint is then removed, so the runs
    resume at different steps (4 and 2): the behind run catches up while the other waits, and
    every run ends with the params of the uninterrupted stacked sweep."""
    cs = configs(tiny_model, data, early_stopping_patience=0, eval_every=1000)[:2]
    straight = [str(tmp_path / f"straight{i}") for i in range(2)]
    killed = [str(tmp_path / f"killed{i}") for i in range(2)]
    finetune.train_and_evaluate_stacked(cs, straight)

    real = finetune.make_stacked_step

    def crashing(*args, **kwargs):
        step = real(*args, **kwargs)

        def run(states, *rest):
            if int(jax.device_get(states.step).max()) == 4:
                raise KeyboardInterrupt("simulated crash")
            return step(states, *rest)
        return run
    monkeypatch.setattr(finetune, "make_stacked_step", crashing)
    with pytest.raises(KeyboardInterrupt):
        finetune.train_and_evaluate_stacked(cs, killed)
    monkeypatch.setattr(finetune, "make_stacked_step", real)
    behind = os.path.join(killed[1], "checkpoints", "4")
    if os.path.exists(behind):  # (the crash may have beaten the asynchronous save of step 4)
        shutil.rmtree(behind)
    results = finetune.train_and_evaluate_stacked(cs, killed)
    assert results[1]["steps_this_run"] == 4 and results[0]["steps_this_run"] in (2, 4)
    for a, b in zip(straight, killed):
        assert_same_weights(final_weights(a), final_weights(b))
        assert step_metrics(a, "train/loss")[-1] == step_metrics(b, "train/loss")[-1]


def stacked_run(tmp_path, devices, mesh, runs):
    out = tmp_path / f"stacked_{devices}_{mesh}.npz"
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
           "PYTHONPATH": REPO}
    result = subprocess.run([sys.executable, os.path.join(REPO, "tests", "sharded_run.py"),
                             f"--mesh={mesh}", f"--runs={runs}", f"--workdir={tmp_path / mesh}",
                             f"--out={out}"], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    with np.load(out) as saved:
        return {k: saved[k] for k in saved.files}, json.load(open(str(out) + ".json"))


@pytest.mark.slow  # the same runs over a mesh axis; one device by default
def test_stacked_runs_spread_over_a_runs_mesh_axis(tmp_path):
    """2 runs over a runs axis of 2 CPU devices equal the 2 runs stacked on one device (the same
    holds with each run split by heads inside its group, runs:2 x tensor:2 on 4 devices; left
    out here for its compile time)."""
    q = "distilbert/transformer/layer/0/attention/q_lin/kernel"
    params, info = stacked_run(tmp_path, 2, "runs", 2)
    reference, reference_info = sharded_run.run_stacked(str(tmp_path / "one"), "dp", 2)  # here: 1 device
    assert info["batch_spec"] == ["runs", ["data", "fsdp"]]
    assert reference_info["specs"][q] == [None, None, None]  # no runs axis in the mesh: whole
    assert info["specs"][q] == ["runs", None, None]  # [runs, embed, heads]
    np.testing.assert_allclose(info["losses"], reference_info["losses"], rtol=1e-5)
    for name, value in reference.items():
        if not name.endswith("k_lin/bias"):  # see conftest.compared_after_training
            np.testing.assert_allclose(params[name], value, rtol=1e-4, atol=1e-5, err_msg=name)


def test_runs_that_do_not_divide_the_runs_axis_are_refused(tmp_path):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "PYTHONPATH": REPO}
    result = subprocess.run([sys.executable, os.path.join(REPO, "tests", "sharded_run.py"),
                             "--mesh=runs", "--runs=3", f"--workdir={tmp_path}", f"--out={tmp_path / 'x'}"],
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    assert "3 stacked runs do not divide the mesh's runs axis of 4" in result.stderr
    assert not os.path.exists(tmp_path / "run" / "run0" / "config.json")  # refused before any write
