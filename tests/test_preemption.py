"""A SIGTERM (a spot TPU VM's preemption notice) lets the step in flight finish, saves that step,
exits with status 75, and the same command resumes to the parameters of an uninterrupted run."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from distilbert_jax.train import finetune, preemption
from distilbert_jax.train.checkpoint import Checkpoints
from conftest import tiny_config, write_config_file, write_sst2
from test_resume import CLI_RUN, assert_same_weights, final_weights

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def terminated_at(step: int, make_step):
    """A stand-in for `make_step` whose step sends this process a SIGTERM while it runs from state
    `step` (so the notice arrives during step + 1); every step is the real one."""
    def make(*args, **kwargs):
        real = make_step(*args, **kwargs)

        def run(state, *rest):
            if int(np.max(state.step.addressable_data(0))) == step:  # stacked: one per run
                os.kill(os.getpid(), signal.SIGTERM)
            return real(state, *rest)
        return run
    return make


def test_sigterm_saves_the_step_in_flight_and_resumes_exactly(tiny_model, tmp_path, monkeypatch):
    data = write_sst2(tmp_path / "SST-2")
    config = tiny_config(tiny_model, data, "sst2", max_steps=10, checkpoint_every=100, log_every=1)
    finetune.train_and_evaluate(config, str(tmp_path / "straight"))
    real = finetune.make_step
    monkeypatch.setattr(finetune, "make_step", terminated_at(5, real))
    with pytest.raises(preemption.Preempted) as stopped:
        finetune.train_and_evaluate(config, str(tmp_path / "preempted"))
    assert stopped.value.step == 6  # the step in flight finished and was saved, not step 0
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone with the loop
    with Checkpoints(str(tmp_path / "preempted")) as saved:
        assert saved.latest_step() == 6
    monkeypatch.setattr(finetune, "make_step", real)
    results = finetune.train_and_evaluate(config, str(tmp_path / "preempted"))
    assert results["steps_this_run"] == 4
    assert_same_weights(final_weights(tmp_path / "straight"), final_weights(tmp_path / "preempted"))


def test_a_stacked_sweep_saves_every_run(tiny_model, tmp_path, monkeypatch):
    data = write_sst2(tmp_path / "SST-2")
    configs = [tiny_config(tiny_model, data, "sst2", max_steps=8, checkpoint_every=100, seed=seed)
               for seed in (1, 2)]
    dirs = [str(tmp_path / f"run{i}") for i in range(2)]
    real = finetune.make_stacked_step
    monkeypatch.setattr(finetune, "make_stacked_step", terminated_at(3, real))
    with pytest.raises(preemption.Preempted) as stopped:
        finetune.train_and_evaluate_stacked(configs, dirs)
    assert stopped.value.step == 4 and stopped.value.workdirs == dirs
    for directory in dirs:
        with Checkpoints(directory) as saved:
            assert saved.latest_step() == 4


def test_the_command_exits_75_naming_the_step_and_the_command_that_resumes(tiny_model, tmp_path):
    data = write_sst2(tmp_path / "SST-2", n_train=64)
    steps = 400
    write_config_file(tmp_path / "cfg.py", tiny_model, data, max_steps=steps, **CLI_RUN)
    command = [sys.executable, "-m", "distilbert_jax.main", f"--config={tmp_path / 'cfg.py'}",
               "--config.log_every=1", "--config.checkpoint_every=1000"]
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    workdir = tmp_path / "run"
    process = subprocess.Popen(command + [f"--workdir={workdir}"], env=env, cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics = workdir / "metrics.jsonl"
    while process.poll() is None and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        time.sleep(0.01)  # until training has passed step 3
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=300)
    assert process.returncode == preemption.EXIT_STATUS, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("preempted (SIGTERM): saved step ") and "run the same command to resume" in last
    step = int(last.split("saved step ")[1].split()[0])
    assert 3 <= step < steps and not (workdir / "results.json").exists()
    with Checkpoints(str(workdir)) as saved:
        assert saved.latest_step() == step
    resumed = subprocess.run(command + [f"--workdir={workdir}"], env=env, cwd=REPO,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    straight = subprocess.run(command + [f"--workdir={tmp_path / 'straight'}"], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=600)
    assert straight.returncode == 0, straight.stderr[-2000:]
    assert_same_weights(final_weights(tmp_path / "straight"), final_weights(workdir))
