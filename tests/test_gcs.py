"""Workdirs on Google Cloud Storage (gs://, served here by a local emulator): checkpoints written by
orbax natively, every other file as whole objects, and every reliability behaviour of a local
workdir: exact resume, the config guard, results, metrics and the exported model in the bucket."""

import importlib.util
import json

import pytest
import safetensors.numpy
from etils import epath

from distilbert_jax import io
from distilbert_jax.config import ConfigError
from distilbert_jax.train import finetune
from conftest import crashing_at, tiny_config, write_sst2
from test_resume import assert_same_weights, final_weights


def bucket_weights(workdir):
    return safetensors.numpy.load(epath.Path(workdir, "model", "model.safetensors").read_bytes())


def test_a_run_on_gs_resumes_exactly_and_keeps_its_files_there(gcs, tiny_model, tmp_path, monkeypatch):
    data = write_sst2(tmp_path / "SST-2")
    config = tiny_config(tiny_model, data, "sst2", max_steps=6, eval_every=6, log_every=2,
                         checkpoint_every=3)
    finetune.train_and_evaluate(config, str(tmp_path / "local"))
    workdir = "gs://bkt/runs/sst2"
    real = finetune.make_step
    monkeypatch.setattr(finetune, "make_step", crashing_at(4, real))  # dies running step 5
    with pytest.raises(KeyboardInterrupt):
        finetune.train_and_evaluate(config, workdir)
    monkeypatch.setattr(finetune, "make_step", real)
    results = finetune.train_and_evaluate(config, workdir)
    assert results["steps_this_run"] == 3  # from the step-3 checkpoint
    assert_same_weights(final_weights(tmp_path / "local"), bucket_weights(workdir))
    names = {p.name for p in epath.Path(workdir).iterdir()}
    assert {"config.json", "config_history.jsonl", "metrics.jsonl", "results.json", "model",
            "checkpoints", "best", "tb"} <= names, names
    assert json.loads(epath.Path(workdir, "results.json").read_text())["total_steps"] == 6
    starts = epath.Path(workdir, "config_history.jsonl").read_text().splitlines()
    assert len(starts) == 2  # both starts on record
    steps = [json.loads(line)["step"] for line in epath.Path(workdir, "metrics.jsonl").read_text().splitlines()
             if "train/loss" in line]
    assert steps[-1] == 6
    assert not [p for p in epath.Path(workdir).iterdir() if p.name.startswith(".")]  # no probes, no temporaries


def test_the_guard_refuses_another_config_on_gs(gcs, tiny_model, tmp_path):
    data = write_sst2(tmp_path / "SST-2")
    config = tiny_config(tiny_model, data, "sst2", max_steps=2)
    finetune.train_and_evaluate(config, "gs://bkt/run")
    config.lr = 1e-2
    with pytest.raises(ConfigError, match=r"gs://bkt/run holds a run with other values of \['lr'\]"):
        finetune.train_and_evaluate(config, "gs://bkt/run")


def test_a_gs_path_without_gcsfs_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gcsfs" else real(name, *a))
    with pytest.raises(io.WriteError, match=r"needs the gcs extra: pip install 'distilbert-jax\[gcs\]'"):
        io.write_text("gs://bkt/x.txt", "x")
