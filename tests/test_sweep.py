"""The sweep runner, the Table 1 aggregation, and the TPU launch script in dry-run mode."""

import csv
import json
import os
import subprocess

import pytest

from distilbert_jax.experiments import sweep
from conftest import write_sst2

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_sweep_runs_the_grid_and_writes_the_table(tiny_model, tmp_path, capsys):
    data = write_sst2(tmp_path / "SST-2")
    root = tmp_path / "sweep"
    common = [f"--set=model={tiny_model}", f"--set=data_dir={data}", "--set=max_steps=2",
              "--set=batch_size=8", "--set=eval_batch_size=8", "--set=max_length=48",
              "--set=buckets=[16, 48]", "--set=save_model=false"]
    sweep.main(["run", "--config=configs/glue.py", "--tasks=sst2", "--lrs=1e-3,1e-4",
                "--seeds=1,2", f"--root={root}", *common])
    runs = sorted(os.listdir(root / "sst2"))
    assert runs == ["lr0.0001_seed1", "lr0.0001_seed2", "lr0.001_seed1", "lr0.001_seed2"]
    table = (root / "table.md").read_text()
    assert table.startswith("| Model | Score | sst2 |")
    rows = list(csv.reader(open(root / "table.csv")))
    assert rows[0] == ["task", "score", "best_lr", "seeds"] and rows[1][0] == "sst2" and rows[1][3] == "2"
    scores = {lr: sorted(100 * json.load(open(root / "sst2" / f"lr{lr}_seed{s}" / "results.json"))
                         ["eval"]["dev"]["accuracy"] for s in (1, 2)) for lr in ("0.001", "0.0001")}
    best = max(scores, key=lambda lr: sum(scores[lr]) / 2)
    assert float(rows[1][1]) == pytest.approx(sum(scores[best]) / 2, abs=0.01)
    assert (root / "table.png").stat().st_size > 1000
    # a second call skips finished runs and only rebuilds the table
    sweep.main(["run", "--config=configs/glue.py", "--tasks=sst2", "--lrs=1e-3,1e-4",
                "--seeds=1,2", f"--root={root}", *common])
    assert "| this sweep |" in capsys.readouterr().out
    # ... but a finished run is not passed off as one of another config
    assert sweep.main(["run", "--config=configs/glue.py", "--tasks=sst2", "--lrs=1e-3", "--seeds=1",
                       f"--root={root}", *common, "--set=max_steps=3"]) == 2
    assert "holds a run with other values of ['max_steps']" in capsys.readouterr().err


def test_sweep_on_tpu_prints_one_launch_line_per_run(capsys):
    sweep.main(["run", "--config=configs/glue.py", "--tasks=rte,mrpc", "--lrs=2e-5", "--seeds=1,2",
                "--root=runs/glue", "--launcher=tpu", "--set=model=distilbert-base-uncased"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4
    assert lines[0] == ("launch/tpu.sh run configs/glue.py:rte runs/glue/rte/lr2e-05_seed1 "
                        "--config.lr=2e-05 --config.seed=1 --config.model=distilbert-base-uncased")


def test_launch_script_dry_run():
    env = {**os.environ, "TPU_NAME": "t1", "ZONE": "z1", "ACCELERATOR": "v4-16", "BUCKET": "b1"}
    run = lambda *args: subprocess.run(["bash", "launch/tpu.sh", "--dry-run", *args], cwd=REPO, env=env,
                                       capture_output=True, text=True, check=True).stdout
    assert run("create").strip() == ("gcloud compute tpus tpu-vm create t1 --accelerator-type=v4-16 "
                                     "--version=tpu-ubuntu2204-base --zone=z1")
    setup = run("setup")
    assert "tpu-vm scp /tmp/distilbert-jax.tar.gz t1:/tmp/ --worker=all --zone=z1" in setup
    assert "gcsfuse" not in setup and "distilbert-jax\\[tpu\\,gcs\\]" in setup
    started = run("run", "configs/glue.py:sst2", "runs/sst2", "--config.lr=3e-5")
    assert "--worker=all" in started and "--multihost" in started
    assert "--workdir=gs://b1/runs/sst2" in started and "--config.lr=3e-5" in started
    assert "-eq\\ 75" in started  # runs again after a preemption, stops on anything else
    assert "--worker=0" in run("tail", "runs/sst2")
    assert run("plan", "configs/glue.py:sst2", "--config.batch_size=64").strip() == (
        "python -m distilbert_jax.plan --config=configs/glue.py:sst2 --topology=v4-16 "
        "--config.batch_size=64")
    spot = subprocess.run(["bash", "launch/tpu.sh", "--dry-run", "create"], cwd=REPO, check=True,
                          env={**env, "SPOT": "1", "QUEUED": "1"}, capture_output=True, text=True).stdout
    assert spot.strip() == ("gcloud compute tpus queued-resources create t1 --node-id=t1 "
                            "--accelerator-type=v4-16 --runtime-version=tpu-ubuntu2204-base --spot --zone=z1")
    assert run("delete").strip() == "gcloud compute tpus tpu-vm delete t1 --quiet --zone=z1"
