"""Workdirs on Google Cloud Storage (gs://, served here by a local emulator): checkpoints written by
orbax natively, every other file as whole objects, and every reliability behaviour of a local
workdir: exact resume, the config guard, results, metrics and the exported model in the bucket."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import safetensors.numpy

from distilbert_jax import storage
from distilbert_jax.train import preemption
from conftest import write_config_file, write_sst2
from test_resume import CLI_RUN, assert_same_weights, final_weights

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read(path):
    return storage.filesystem(path).cat_file(path)


def bucket_weights(workdir):
    return safetensors.numpy.load(read(f"{workdir}/model/model.safetensors"))


def upload(local_dir, remote_dir):
    storage.filesystem(remote_dir).put(str(local_dir), remote_dir, recursive=True)


def main_on_gs(gcs, tmp_path, workdir, *overrides, wait_for_step=None, until=None, then=None):
    """The command line on a gs:// workdir, in a process of its own (a process that imported
    TensorFlow, as the export tests do, sends etils.epath's gs:// through TensorFlow's client, which
    the emulator cannot serve); with `wait_for_step`, SIGTERM once metrics.jsonl reaches that step;
    with `until` and `then`, then(process) once until() holds."""
    env = {**os.environ, **gcs.environment, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    # checkpoint.USE_OCDBT off, as the gcs fixture turns it off in this process (conftest.gcs)
    command = [sys.executable, "-c", "from distilbert_jax.train import checkpoint; checkpoint.USE_OCDBT = "
               "False; from distilbert_jax import main; main.cli()", f"--config={tmp_path / 'cfg.py'}",
               f"--workdir={workdir}", *overrides]
    if wait_for_step is None and until is None:
        return subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    if wait_for_step is not None:
        until = lambda: storage.exists(f"{workdir}/metrics.jsonl") and any(  # noqa: E731
            json.loads(line)["step"] >= wait_for_step
            for line in read(f"{workdir}/metrics.jsonl").decode().splitlines())
        then = lambda process: process.send_signal(signal.SIGTERM)  # noqa: E731
    # stderr to a file, not a pipe: a pipe nobody reads until the end can fill and stall the run
    with open(tmp_path / "stderr.txt", "w+") as err_file:
        process = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                                   stderr=err_file, text=True)
        while process.poll() is None and not until():
            time.sleep(0.2)
        then(process)
        process.wait(timeout=600)
        err_file.seek(0)
        err = err_file.read()
    return subprocess.CompletedProcess(command, process.returncode, "", err)


def uninterrupted_local_run(tiny_model, tmp_path):
    """The 40-step run of tmp_path/cfg.py in tmp_path/local, the reference a gs:// run must equal;
    returns its data folder."""
    data = write_sst2(tmp_path / "SST-2", n_train=64)
    write_config_file(tmp_path / "cfg.py", tiny_model, data, max_steps=40, **CLI_RUN)
    local = subprocess.run([sys.executable, "-m", "distilbert_jax.main", f"--config={tmp_path / 'cfg.py'}",
                            f"--workdir={tmp_path / 'local'}"], env={**os.environ, "PYTHONPATH": REPO},
                           cwd=REPO, capture_output=True, text=True, timeout=600)
    assert local.returncode == 0, local.stderr[-2000:]
    return data


def test_a_run_on_gs_preempted_resumes_exactly_and_keeps_its_files_there(gcs, tiny_model, tmp_path):
    data = uninterrupted_local_run(tiny_model, tmp_path)
    workdir = "gs://bkt/runs/sst2"
    # the model and the data on gs:// too
    upload(tiny_model, "gs://bkt/models/tiny")
    upload(data, "gs://bkt/data/SST-2")
    inputs = ["--config.model=gs://bkt/models/tiny", "--config.data_dir=gs://bkt/data/SST-2",
              "--config.log_every=5"]
    stopped = main_on_gs(gcs, tmp_path, workdir, *inputs, wait_for_step=10)
    assert stopped.returncode == preemption.EXIT_STATUS, stopped.stderr[-2000:]
    resumed = main_on_gs(gcs, tmp_path, workdir, *inputs)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_same_weights(final_weights(tmp_path / "local"), bucket_weights(workdir))
    names = {p.rstrip("/").rsplit("/", 1)[-1] for p in storage.filesystem(workdir).ls(workdir, detail=False)}
    assert {"config.json", "config_history.jsonl", "metrics.jsonl", "results.json", "model",
            "checkpoints", "tb"} <= names, names
    assert not [n for n in names if n.startswith(".")]  # no probes, no temporaries
    assert json.loads(read(f"{workdir}/results.json"))["total_steps"] == 40
    assert len(read(f"{workdir}/config_history.jsonl").decode().splitlines()) == 2  # both starts
    steps = [json.loads(line)["step"] for line in read(f"{workdir}/metrics.jsonl").decode().splitlines()
             if "train/loss" in line]
    assert steps == sorted(set(steps)) and steps[-1] == 40
    other = main_on_gs(gcs, tmp_path, workdir, *inputs, "--config.lr=0.01")  # the guard, on gs://
    assert other.returncode == 2
    assert other.stderr.strip().splitlines()[-1].startswith(f"error: {workdir} holds a run with other values of ['lr']")


def test_a_gs_path_without_gcsfs_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gcsfs" else real(name, *a))
    with pytest.raises(storage.WriteError, match=r"needs the gcs extra: pip install 'distilbert-jax\[gcs\]'"):
        storage.write_text("gs://bkt/x.txt", "x")


def test_a_remote_input_is_read_through_a_local_copy_fetched_again_only_when_changed(gcs, tmp_path):
    fs = storage.filesystem("gs://bkt")
    fs.pipe_file("gs://bkt/model/config.json", b'{"a": 1}')
    fs.pipe_file("gs://bkt/model/model.safetensors", b"weights")
    fs.pipe_file("gs://bkt/model/sub/vocab.txt", b"[PAD]")
    local = storage.local_copy("gs://bkt/model")
    assert local.startswith(os.environ["DISTILBERT_JAX_CACHE"])
    assert sorted(os.listdir(local)) == [".remote-checksums.json", "config.json", "model.safetensors", "sub"]
    assert open(os.path.join(local, "sub", "vocab.txt")).read() == "[PAD]"
    weights = os.path.join(local, "model.safetensors")
    before = os.stat(weights).st_mtime_ns
    fs.pipe_file("gs://bkt/model/config.json", b'{"a": 2}')
    assert storage.local_copy("gs://bkt/model") == local
    assert open(os.path.join(local, "config.json")).read() == '{"a": 2}'
    assert os.stat(weights).st_mtime_ns == before  # unchanged: not fetched again
    assert storage.local_copy("gs://bkt/model/config.json") == os.path.join(local, "config.json")
    shapes_only = storage.local_copy("gs://bkt/model", patterns=("*.json",))
    assert shapes_only == local
    with pytest.raises(storage.ReadError, match=r"^gs://bkt/nothing does not exist"):
        storage.local_copy("gs://bkt/nothing")


def test_a_corpus_prepared_for_a_gs_workdir_is_kept_in_the_bucket_and_reused(gcs, tiny_model, tmp_path, monkeypatch):
    import ml_collections

    import distilbert_jax as dj
    from distilbert_jax.data import corpus
    from distilbert_jax.train import distill
    fs = storage.filesystem("gs://bkt")
    fs.pipe_file("gs://bkt/text/wiki.txt", "\n".join(
        f"the film number {i} is a gripping and moving story about growing up ." for i in range(50)).encode())
    tokenizer = dj.Tokenizer.from_pretrained(tiny_model)
    config = ml_collections.ConfigDict(dict(corpus_dir="", corpus_files=("gs://bkt/text/wiki.txt",),
                                            max_length=32, teacher="teacher"))
    loaded = distill.load_corpus(config, tokenizer, "gs://bkt/run")
    assert set(corpus.FILES) <= {p.rsplit("/", 1)[-1] for p in fs.ls("gs://bkt/run/corpus", detail=False)}
    # a new VM (an empty cache), the text gone from the bucket: the prepared corpus is read back
    monkeypatch.setenv("DISTILBERT_JAX_CACHE", str(tmp_path / "new-vm"))
    fs.rm("gs://bkt/text/wiki.txt")  # the prepared corpus is taken by the files' own (gs://) names
    again = distill.load_corpus(config, tokenizer, "gs://bkt/run")
    assert again.tokens.tolist() == loaded.tokens.tolist() and len(again.lengths) == len(loaded.lengths) > 0


def test_an_export_written_to_gs_serves_a_pipeline_read_from_gs(gcs, tmp_path):
    pytest.importorskip("jax2onnx")
    import distilbert_jax as dj
    from distilbert_jax import export
    from conftest import FIXTURES
    source = os.path.join(FIXTURES, "pipelines", "distilbert_sentiment")
    local = export.export(source, tmp_path / "local", format="onnx")
    remote = export.export(source, "gs://bkt/exports/sst2", format="onnx")
    names = {p.rsplit("/", 1)[-1] for p in storage.filesystem(remote).ls(remote, detail=False)}
    assert {"model.onnx", "config.json", "export.json"} <= names, names
    texts = ["a gripping film", "not good at all"]
    assert dj.pipeline("text-classification", model=remote)(texts) == \
        dj.pipeline("text-classification", model=local)(texts)  # the same graph, the same answers
    with pytest.raises(export.ExportError, match=r"^--output=gs://bkt/exports/sst2 already exists"):
        export.export(source, remote, format="onnx")


def test_a_store_that_refuses_writes_mid_run_stops_it_in_one_sentence_and_the_checkpoint_resumes(
        gcs, tiny_model, tmp_path):
    """The bucket refuses every write once checkpoint 20 is committed (a revoked permission: 403,
    which no client retries): the run stops with one sentence and status 2; once writes are allowed
    again, the same command resumes from step 20 and ends where an uninterrupted run ends."""
    uninterrupted_local_run(tiny_model, tmp_path)
    workdir = "gs://bkt/runs/refused"
    # orbax marks a finished step on gs:// with this file, written last (the item's own
    # default/commit_success.txt comes before the step's metadata is final)
    committed = lambda: storage.exists(f"{workdir}/checkpoints/20/commit_success.txt")  # noqa: E731
    refused = main_on_gs(gcs, tmp_path, workdir, until=committed, then=lambda _: gcs.refuse_writes())
    assert refused.returncode == 2, refused.stderr[-3000:]
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: cannot write ") and workdir in errors[0], \
        refused.stderr[-3000:]
    gcs.refuse_writes(False)
    resumed = main_on_gs(gcs, tmp_path, workdir)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads(read(f"{workdir}/results.json"))["steps_this_run"] == 20
    assert_same_weights(final_weights(tmp_path / "local"), bucket_weights(workdir))
