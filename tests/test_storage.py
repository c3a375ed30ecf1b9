"""One atomic writer: a write the disk refuses is one sentence naming the path, and what was there
before is intact (files, models, checkpoints)."""

import errno
import os

import numpy as np
import pytest

from distilbert_jax import errors, hf, storage
from distilbert_jax.train.checkpoint import Checkpoints


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
