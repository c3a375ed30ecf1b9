"""A run killed at any moment resumes from its last checkpoint and ends with the same parameters."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import safetensors.numpy

from distilbert_jax.train import finetune
from conftest import PADDED_AND_PACKED, crashing_at, tiny_config, write_config_file, write_sst2

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def final_weights(workdir):
    return safetensors.numpy.load_file(os.path.join(workdir, "model", "model.safetensors"))


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


# A command-line run's cadence: checkpoints at 20, 40, ...; no eval until the end.
CLI_RUN = {"log_every": 50, "checkpoint_every": 20, "eval_every": 1000}


@pytest.mark.parametrize("packing", PADDED_AND_PACKED)
def test_crash_then_resume_equals_uninterrupted(tiny_model, tmp_path, monkeypatch, packing):
    data = write_sst2(tmp_path / "SST-2")
    config = tiny_config(tiny_model, data, "sst2", max_steps=10, packing=packing)
    finetune.train_and_evaluate(config, str(tmp_path / "straight"))

    real_step = finetune.make_step
    # dies while running step 7 (after the step-6 checkpoint)
    monkeypatch.setattr(finetune, "make_step", crashing_at(6, real_step))
    with pytest.raises(KeyboardInterrupt):
        finetune.train_and_evaluate(config, str(tmp_path / "resumed"))
    monkeypatch.setattr(finetune, "make_step", real_step)
    results = finetune.train_and_evaluate(config, str(tmp_path / "resumed"))
    # resumed from step 6, or from step 4 when the crash beat the asynchronous save of step 6
    assert results["steps_this_run"] in (4, 6)
    assert_same_weights(final_weights(tmp_path / "straight"), final_weights(tmp_path / "resumed"))


def test_sigkill_then_resume_equals_uninterrupted(tiny_model, tmp_path):
    data = write_sst2(tmp_path / "SST-2", n_train=64)
    steps = 160
    write_config_file(tmp_path / "cfg.py", tiny_model, data, max_steps=steps, **CLI_RUN)
    command = [sys.executable, "-m", "distilbert_jax.main", f"--config={tmp_path / 'cfg.py'}"]
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}

    killed = tmp_path / "killed"
    process = subprocess.Popen(command + [f"--workdir={killed}"], env=env, cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        done = [d for d in os.listdir(killed / "checkpoints") if d.isdigit()] \
            if (killed / "checkpoints").exists() else []
        if done:
            break
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "results.json").exists(), "the run finished before it could be killed"
    resumed = subprocess.run(command + [f"--workdir={killed}"], env=env, cwd=REPO,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    straight = tmp_path / "straight"
    finished = subprocess.run(command + [f"--workdir={straight}"], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert_same_weights(final_weights(straight), final_weights(killed))
