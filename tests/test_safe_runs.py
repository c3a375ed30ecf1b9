"""Runs are never lost or silently wrong: the workdir guard, checks before any write, refused
lengths, and a non-finite stop that says what it keeps. Each case hashes the workdir before and
after, so "nothing written" is checked, not assumed."""

import hashlib
import json
import os
import shutil

import numpy as np
import pytest

from distilbert_jax import jobs
from distilbert_jax.config import ConfigError
from distilbert_jax.data import DataError
from distilbert_jax.hf import CheckpointError
from distilbert_jax.train import finetune, loop
from distilbert_jax.train.checkpoint import Checkpoints
from conftest import make_tiny_model_dir, tiny_config, write_config_file, write_sst2


def snapshot(directory) -> dict[str, str]:
    """Every file under `directory` (relative path -> sha256); {} when it does not exist."""
    out = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def finished(tiny_model, tmp_path_factory):
    """A finished tiny SST-2 run: (its config, its workdir, the data folder)."""
    root = tmp_path_factory.mktemp("finished")
    data = write_sst2(root / "SST-2")
    config = tiny_config(tiny_model, data, "sst2")
    finetune.train_and_evaluate(config, str(root / "run"))
    return config, root / "run", data


@pytest.fixture
def copy_of(finished, tmp_path):
    """A fresh copy of the finished run's workdir (tests may resume it)."""
    config, workdir, data = finished
    target = tmp_path / "run"
    shutil.copytree(workdir, target)
    return config.copy_and_resolve_references(), target, data


# --- 1: a workdir is never reused under a config that changes the result ---------------------------

@pytest.mark.parametrize("field, value", [("lr", 5e-4), ("max_steps", 6), ("seed", 7), ("batch_size", 4)])
def test_resuming_under_another_config_is_refused_naming_the_fields(copy_of, field, value):
    config, workdir, _ = copy_of
    before = snapshot(workdir)
    config[field] = value
    with pytest.raises(ConfigError, match=rf"holds a run with other values of \['{field}'\].*"
                                          r"allow_config_change=True"):
        jobs.run(config, str(workdir))
    assert snapshot(workdir) == before


def test_remat_may_change_on_resume(copy_of):
    """remat trades memory for time and leaves the numbers alone, so a run may resume under another."""
    config, workdir, _ = copy_of
    config.remat = "full"
    assert jobs.run(config, str(workdir))["steps_this_run"] == 0  # finished already: nothing to redo


def test_another_model_in_the_workdir_is_refused(copy_of, tiny_bert):
    config, workdir, _ = copy_of
    before = snapshot(workdir)
    config.model = tiny_bert
    with pytest.raises(ConfigError, match=r"other values of \['model'\]"):
        jobs.run(config, str(workdir))
    config.allow_config_change = True  # deliberately: then the checkpoint itself does not fit
    with pytest.raises(CheckpointError, match=r"The checkpoint at step 4 in .* does not fit this run's model"):
        jobs.run(config, str(workdir))
    assert snapshot(workdir) == before


def test_fields_that_change_no_result_may_differ_and_every_start_is_kept(copy_of):
    config, workdir, _ = copy_of
    config.log_every, config.eval_batch_size, config.checkpoint_every = 1, 4, 1
    jobs.run(config, str(workdir))  # resumes the finished run: nothing left to train
    history = [json.loads(l) for l in (workdir / "config_history.jsonl").read_text().splitlines()]
    assert [h["config"]["log_every"] for h in history] == [2, 1]
    assert json.loads((workdir / "config.json").read_text())["log_every"] == 1


def test_a_deliberate_change_continues_the_run_and_keeps_both_configs(copy_of):
    config, workdir, _ = copy_of
    config.max_steps, config.allow_config_change = 6, True
    results = jobs.run(config, str(workdir))
    assert results["steps_this_run"] == 2 and results["total_steps"] == 6
    history = [json.loads(l) for l in (workdir / "config_history.jsonl").read_text().splitlines()]
    assert [h["config"]["max_steps"] for h in history] == [4, 6]


# --- 2: a start that fails writes nothing ----------------------------------------------------------

@pytest.mark.parametrize("overrides, error, message", [
    ({"batch_size": 0}, ConfigError, r"batch_size=0 must be a positive integer"),
    ({"batch_size": 6, "grad_accum_steps": 4}, ConfigError, r"batch_size=6 is not a multiple of grad_accum_steps=4"),
    ({"buckets": ("a", "b", "c")}, ConfigError, r"buckets=\('a', 'b', 'c'\) must be a tuple of positive lengths"),
    ({"dtype": "bf16"}, ConfigError, r"dtype='bf16' is not one of"),
    ({"remat": "all"}, ConfigError, r"remat='all' is not one of \('none', 'dots', 'full'\)"),
    ({"max_length": 100}, ConfigError, r"max_length=100 is longer than .* has 64 positions"),
    ({"predict_splits": ("test",)}, DataError, r"test.tsv' does not exist"),
    ({"batch_size": 64}, DataError, r"training split has 48 rows, fewer than one batch of batch_size=64"),
])
def test_a_failed_start_changes_nothing_in_the_workdir(copy_of, overrides, error, message):
    config, workdir, data = copy_of
    os.remove(os.path.join(data, "test.tsv")) if "predict_splits" in overrides else None
    before = snapshot(workdir)
    config.update(allow_config_change=True, **overrides)  # past the guard: the check itself must hold
    try:
        with pytest.raises(error, match=message):
            jobs.run(config, str(workdir))
    finally:
        write_sst2(data)
    assert snapshot(workdir) == before


def test_a_failed_first_start_creates_no_workdir(tiny_model, tmp_path):
    data = write_sst2(tmp_path / "SST-2")
    for overrides in ({"batch_size": 0}, {"max_length": 100}, {"mesh": "data:3,fsdp:1,tensor:1"}):
        with pytest.raises(ConfigError):
            jobs.run(tiny_config(tiny_model, data, "sst2", **overrides), str(tmp_path / "new"))
        assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("kind", ["empty", "file", "dangling link", "under a file", "under /proc"])
def test_an_unwritable_workdir_is_refused_before_anything_loads(kind, tmp_path, monkeypatch):
    (tmp_path / "a_file").write_text("x")
    os.symlink(tmp_path / "gone", tmp_path / "link")
    workdir, message = {
        "empty": ("", "--workdir is empty"),
        "file": (str(tmp_path / "a_file"), "is a file, not a directory"),
        "dangling link": (str(tmp_path / "link"), "is a link to .* which does not exist"),
        "under a file": (str(tmp_path / "a_file" / "run"), "cannot be created: .* is a file"),
        "under /proc": ("/proc/distilbert_jax_run", "cannot be written"),
    }[kind]
    monkeypatch.setattr(finetune, "build_task", lambda c: pytest.fail("loaded data before the probe"))
    config = tiny_config("/nonexistent/model", tmp_path, "sst2")
    with pytest.raises(ConfigError, match=message):
        jobs.run(config, workdir)


# --- 3: what the model cannot hold is refused, not computed as NaN ---------------------------------

def test_a_vocabulary_larger_than_the_model_is_refused(tmp_path):
    model = make_tiny_model_dir(tmp_path / "model")
    with open(os.path.join(model, "vocab.txt"), "a", encoding="utf-8") as f:
        f.write("".join(f"extra{i}\n" for i in range(10)))  # 109 tokens, the model embeds 99
    data = write_sst2(tmp_path / "SST-2")
    with pytest.raises(ConfigError, match=r"a vocabulary of 109 tokens, more than the model's vocab_size \(99\)"):
        jobs.run(tiny_config(model, data, "sst2"), str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_evaluation_beyond_the_positions_is_refused(finished, tmp_path):
    config, workdir, data = finished
    evaluate = tiny_config(str(workdir / "model"), data, "sst2", job="evaluate", max_length=65)
    with pytest.raises(ConfigError, match=r"max_length=65 is longer than .* has 64 positions"):
        jobs.run(evaluate, str(tmp_path / "eval"))
    assert not (tmp_path / "eval").exists()


# --- 4: a non-finite run stops before saving and says truthfully what is kept ----------------------

def test_a_non_finite_step_is_never_saved_and_the_message_names_what_is_kept(tiny_model, tmp_path):
    data = write_sst2(tmp_path / "SST-2")
    workdir = tmp_path / "run"
    config = tiny_config(tiny_model, data, "sst2", max_steps=12, log_every=1, checkpoint_every=1,
                         lr=1e9, max_grad_norm=0.0, save_model=False)
    with pytest.raises(loop.TrainingError) as failure:
        jobs.run(config, str(workdir))
    message = str(failure.value)
    assert "the run stopped before saving that state" in message
    with Checkpoints(str(workdir)) as checkpoints:
        latest = checkpoints.latest_step()
    if latest is None:
        assert "no checkpoint had been saved, so a rerun starts from step 0" in message
    else:
        assert f"the last checkpoint, step {latest}, is kept" in message
        assert (workdir / "checkpoints" / str(latest)).is_dir()
        bad_step = int(message.split(" at step ")[1].split(",")[0])
        assert latest < bad_step  # the non-finite state itself was never written
    assert not any(p.endswith("tmp") for p in os.listdir(workdir / "checkpoints"))


def test_finite_check_covers_norms_not_only_losses(tmp_path):
    class NoCheckpoints:
        def wait(self):
            pass

        def latest_step(self):
            return None
    with pytest.raises(loop.TrainingError, match=r"train/param_norm became inf at step 3"):
        loop._check_finite(3, {"train/loss": np.float32(0.5), "train/param_norm": np.float32(np.inf)},
                           NoCheckpoints(), str(tmp_path))
    loop._check_finite(3, {"train/loss": np.float32(0.5), "batch/tokens": np.float32(np.nan)},
                       NoCheckpoints(), str(tmp_path))  # not a loss or a norm: not a stop


def test_the_command_line_stops_a_non_finite_run_in_one_sentence(tiny_model, tmp_path):
    """Exit 2, the sentence last, and no shutdown noise from unfinished asynchronous saves."""
    import subprocess
    import sys
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    data = write_sst2(tmp_path / "SST-2")
    write_config_file(tmp_path / "cfg.py", tiny_model, data, max_steps=12, log_every=1, checkpoint_every=1,
                lr=1e9, max_grad_norm=0.0)
    result = subprocess.run([sys.executable, "-m", "distilbert_jax.main", f"--config={tmp_path / 'cfg.py'}",
                             f"--workdir={tmp_path / 'run'}"], cwd=repo, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    assert lines[-1].startswith("error: train/") and "the run stopped before saving that state" in lines[-1]
    assert "Event loop is closed" not in result.stderr and "Traceback" not in result.stderr


def test_the_command_line_stops_a_refused_checkpoint_in_one_sentence(tiny_model, tmp_path):
    """The disk refuses writes from the second checkpoint on (`ulimit -f` set at that save): exit 2,
    the sentence last, the first checkpoint restorable, and no process-wide hook installed that
    could hide a library's traceback (orbax logs its own, which may print above the sentence)."""
    import subprocess
    import sys
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    data = write_sst2(tmp_path / "SST-2")
    write_config_file(tmp_path / "cfg.py", tiny_model, data, max_steps=4, checkpoint_every=2, save_model=False)
    script = (
        "import resource, signal, sys, threading\n"
        "from distilbert_jax import main\n"
        "from distilbert_jax.train import checkpoint\n"
        "save = checkpoint.Checkpoints.save\n"
        "def refused_after_the_first(self, step, state):\n"
        "    if self.latest_step() is not None:\n"
        "        self.wait()  # the first checkpoint is on disk: the disk fills after it\n"
        "        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))\n"
        "    save(self, step, state)\n"
        "checkpoint.Checkpoints.save = refused_after_the_first\n"
        "try:\n"
        "    main.cli()\n"
        "finally:\n"
        "    print('hooks untouched:', sys.unraisablehook is sys.__unraisablehook__\n"
        "          and threading.excepthook is threading.__excepthook__)\n")
    result = subprocess.run([sys.executable, "-c", script, f"--config={tmp_path / 'cfg.py'}",
                             f"--workdir={tmp_path / 'run'}"], cwd=repo, capture_output=True, text=True,
                            timeout=300)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr[-3000:]
    assert lines[-1].startswith("error: cannot write ") and "ulimit -f" in lines[-1], lines[-1]
    assert "hooks untouched: True" in result.stdout
    with Checkpoints(str(tmp_path / "run")) as checkpoints:
        assert checkpoints.latest_step() == 2
    resumed = subprocess.run([sys.executable, "-m", "distilbert_jax.main", f"--config={tmp_path / 'cfg.py'}",
                              f"--workdir={tmp_path / 'run'}"], cwd=repo, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]  # the same command resumes from step 2


def test_a_field_added_since_a_run_started_counts_at_what_the_run_did():
    """A workdir written before `packing` existed resumes unpacked, and only unpacked."""
    from distilbert_jax.train import finetune, workdir
    config = finetune.default_config()
    saved = json.loads(json.dumps(config.to_dict(), default=str))
    del saved["packing"]
    assert workdir.changed_fields(saved, config) == []
    config.packing = True
    assert workdir.changed_fields(saved, config) == ["packing"]
