"""One atomic writer: a write the disk refuses is one sentence naming the path, and what was there
before is intact (files, models, checkpoints)."""

import contextlib
import errno
import os
import resource
import signal
import threading

import numpy as np
import pytest

from distilbert_jax import errors, hf, storage
from distilbert_jax.train.checkpoint import Checkpoints
from distilbert_jax.train.reporting import MetricWriter


def test_a_full_disk_keeps_the_old_file_and_names_the_path(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    storage.write_json(str(path), {"a": 1})
    before = path.read_bytes()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(storage.WriteError) as e:
        storage.write_json(str(path), {"a": 2})
    assert str(e.value) == f"cannot write {path}: no space left on the device"
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["results.json"]


def test_a_vanished_folder_is_one_sentence(tmp_path):
    with pytest.raises(storage.WriteError, match=r"^cannot write .*gone.*x.txt: its folder does not exist"):
        storage.write_text(str(tmp_path / "gone" / "x.txt"), "x")


def test_a_failure_inside_the_block_leaves_nothing(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with storage.atomic(str(path)) as tmp:
            open(tmp, "w").write("half")
            raise RuntimeError("killed")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["model.safetensors"]


def test_save_pretrained_on_a_full_disk_keeps_the_previous_model(tiny_model, tmp_path, monkeypatch):
    model, params = hf.from_pretrained(tiny_model)
    out = tmp_path / "model"
    hf.save_pretrained(out, model, params)
    before = {p: (out / p).read_bytes() for p in os.listdir(out)}

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(hf.safetensors.numpy, "save_file", full)
    with pytest.raises(storage.WriteError, match=r"model.safetensors: no space left on the device"):
        hf.save_pretrained(out, model, params)
    assert {p: (out / p).read_bytes() for p in os.listdir(out)} == before


def test_a_refused_checkpoint_is_one_sentence_and_the_earlier_ones_stay(tmp_path, monkeypatch):
    state = {"w": np.arange(4.0)}
    with Checkpoints(str(tmp_path)) as checkpoints:
        checkpoints.save(1, state)
    with Checkpoints(str(tmp_path)) as checkpoints:
        def full(*args, **kwargs):  # what orbax raises from tensorstore on a full disk
            raise ValueError("RESOURCE_EXHAUSTED: Error writing ...: No space left on device "
                             "[os_error_code='28']")
        monkeypatch.setattr(checkpoints.latest, "save", full)
        with pytest.raises(storage.WriteError) as e:
            checkpoints.save(2, state)
        assert str(e.value) == (f"cannot write a checkpoint in {tmp_path / 'checkpoints'}: no space "
                                "left on the device; the checkpoints written before it are intact")
        assert checkpoints.latest_step() == 1
    assert issubclass(storage.WriteError, errors.UserError)  # main prints it as one line and exits 2


@contextlib.contextmanager
def file_size_limit(limit: int):
    """Writes beyond `limit` bytes fail with EFBIG in this process (the kernel's `ulimit -f`): a
    disk that refuses a write, without root or a full disk; SIGXFSZ ignored so the write errors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def test_a_background_save_refused_is_one_sentence_where_it_is_awaited(tmp_path):
    """Orbax's asynchronous write fails in its own threads; the error is raised at the wait (or the
    close), once, and the checkpoint before it restores."""
    small, big = {"w": np.arange(4.0)}, {"w": np.random.default_rng(0).random(100_000)}  # incompressible
    with Checkpoints(str(tmp_path)) as checkpoints:
        checkpoints.save(1, small)
    with pytest.raises(storage.WriteError) as e:
        with file_size_limit(64 * 1024), Checkpoints(str(tmp_path)) as checkpoints:
            checkpoints.save(2, big)  # returns: the arrays are written in the background
            checkpoints.wait()
    assert str(e.value) == (f"cannot write a checkpoint in {tmp_path / 'checkpoints'}: the file is larger "
                            "than this process may write (ulimit -f); the checkpoints written before it are intact")
    with Checkpoints(str(tmp_path)) as checkpoints:
        assert checkpoints.latest_step() == 1
        np.testing.assert_array_equal(checkpoints.restore(small)["w"], small["w"])


def test_a_refused_metrics_write_is_raised_by_the_write(tmp_path):
    """TensorBoard events are written on the caller's thread: no writer thread to die, or to block."""
    with MetricWriter(str(tmp_path)) as writer:
        writer.write(1, {"train/loss": 0.5})
        with file_size_limit(os.path.getsize(tmp_path / "metrics.jsonl")), pytest.raises(storage.WriteError) as e:
            writer.write(2, {f"train/{'x' * 500}{i}": 0.5 for i in range(20)})
    assert str(e.value).startswith("cannot write ") and "ulimit -f" in str(e.value)
    assert not any(type(t).__name__ == "_EventLoggerThread" for t in threading.enumerate())
