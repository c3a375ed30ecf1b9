"""Bad input: one clear sentence naming the culprit, a non-zero exit, nothing in the workdir damaged."""

import json
import os
import subprocess
import sys

import pytest

from distilbert_jax import jobs
from distilbert_jax.data import DataError
from distilbert_jax.hf import CheckpointError
from distilbert_jax.train import finetune
from conftest import make_tiny_model_dir, tiny_config, write_sst2

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_main(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "distilbert_jax.main", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)




def test_unknown_task_and_missing_file_are_one_sentence(tmp_path):
    result = run_main("--config=configs/smoke.py", f"--workdir={tmp_path / 'w'}", "--config.task=sst3")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: Unknown task 'sst3'; choose one of ['cola', 'conll2003', 'mnli', 'mrpc', 'qnli', "
        "'qqp', 'rte', 'squad', 'squad_v2', 'sst2', 'stsb', 'swag', 'text_classification', "
        "'token_classification', 'wnli'].")
    result = run_main("--config=configs/smoke.py", f"--workdir={tmp_path / 'w'}",
                      f"--config.data_dir={tmp_path / 'nowhere'}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"error: Data file '{tmp_path / 'nowhere' / 'train.tsv'}' does not exist.")
    assert not (tmp_path / "w").exists()


def test_malformed_row_and_bad_label_name_file_and_line(tiny_model, tmp_path):
    data = write_sst2(tmp_path / "SST-2")
    lines = (data / "train.tsv").read_text().splitlines()
    (data / "train.tsv").write_text("\n".join(lines[:5] + ["no label here"] + lines[5:]) + "\n")
    with pytest.raises(DataError, match=r"train.tsv:6: expected 2 tab-separated fields, found 1"):
        jobs.run(tiny_config(tiny_model, data, "sst2"), str(tmp_path / "w"))
    (data / "train.tsv").write_text("\n".join(lines[:3] + ["fine\t7"] + lines[3:]) + "\n")
    with pytest.raises(DataError, match=r"train.tsv:4: label '7' is not one of \['0', '1'\]"):
        jobs.run(tiny_config(tiny_model, data, "sst2"), str(tmp_path / "w"))


def test_checkpoint_whose_head_does_not_fit_the_task(tiny_model, tmp_path):
    data = write_sst2(tmp_path / "SST-2")
    with pytest.raises(finetune.TrainingError, match="needs a sequence_classification head"):
        jobs.run(tiny_config(tiny_model, data, "sst2", job="evaluate"), str(tmp_path / "w"))
    three_classes = make_tiny_model_dir(tmp_path / "seqcls", "distilbert_seqcls")  # with a vocabulary
    with pytest.raises(CheckpointError, match="does not fit"):  # 3 classes where the task has 2
        jobs.run(tiny_config(three_classes, data, "sst2"), str(tmp_path / "w"))


def test_a_failed_start_leaves_an_existing_run_untouched(tiny_model, tmp_path):
    data = write_sst2(tmp_path / "SST-2")
    workdir = tmp_path / "run"
    finetune.train_and_evaluate(tiny_config(tiny_model, data, "sst2"), str(workdir))
    before = {p: (workdir / p).read_bytes() for p in ("config.json", "results.json")}
    with pytest.raises(DataError):
        jobs.run(tiny_config(tiny_model, tmp_path / "missing", "sst2", allow_config_change=True),
                 str(workdir))
    assert {p: (workdir / p).read_bytes() for p in before} == before
    assert json.loads(before["config.json"])["data_dir"] == str(data)


@pytest.mark.parametrize("args, message", [
    (["--config=configs/nothere.py"], "error: cannot load --config=configs/nothere.py: [Errno 2] No such file"),
    (["--config=configs/glue.py:sst3"], "error: Unknown GLUE task 'sst3'"),
    (["--config=configs/smoke.py", "--config.lr=abc"], "error: flag --config.lr=abc: could not convert"),
    (["--config=configs/smoke.py", "--config.learning_rate=1"], "error: the config has no field 'learning_rate'"),
])
def test_bad_config_flags_are_one_line(args, message, tmp_path):
    # Run away from the checkout: configs/<name>.py names the packaged config from any directory.
    result = run_main(*args, f"--workdir={tmp_path / 'w'}", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().startswith(message) and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "w").exists()
