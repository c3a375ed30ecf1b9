"""The paper in miniature on a tiny teacher and tiny GLUE folders: every stage runs, the tables hold
every model, dev text never reaches the corpus, and a second run reuses every finished stage."""

import os

import numpy as np
import pytest

from distilbert_jax.experiments import miniature
from distilbert_jax.config import ConfigError
from conftest import make_tiny_model_dir, write_sst2, write_stsb

DEV_ONLY = "mary john paris london"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("miniature")
    teacher = make_tiny_model_dir(root / "teacher", "bert_mlm")
    glue_dir = root / "glue"
    write_sst2(glue_dir / "SST-2")
    write_stsb(glue_dir / "STS-B")
    with open(glue_dir / "SST-2" / "dev.tsv", "a") as f:
        f.write(f"{DEV_ONLY}\t1\n")
    rng = np.random.default_rng(0)
    words = ["the", "movie", "was", "good", "and", "film", "is", "great", "city", "not", "bad"]
    corpus = root / "wiki.txt"
    corpus.write_text("\n".join(" ".join(rng.choice(words, rng.integers(12, 40))) for _ in range(120)))
    return teacher, str(glue_dir), str(corpus)


def tiny(teacher, glue_dir, corpus):
    c = miniature.default_config()
    c.teacher, c.glue_dir, c.corpus_files = teacher, glue_dir, (corpus,)
    c.tasks, c.speed_task, c.compilation_cache = ("sst2", "stsb"), "stsb", False
    c.variants = ("triple_loss", "no_cos")  # one ablation: every variant takes the same path
    for stage in (c.head, c.distill):
        stage.update(max_length=64, length_multiple=16, batch_size=16, max_steps=3, log_every=1)
    c.distill.student_layers = 1
    c.finetune.update(max_steps=2, batch_size=8, eval_batch_size=8, max_length=48, buckets=(16, 48),
                      limit_train_examples=0, log_every=1)
    return c


@pytest.mark.slow  # every stage of the study, twice
def test_every_stage_runs_and_a_rerun_reuses_them(setup, tmp_path):
    config = tiny(*setup)
    workdir = str(tmp_path / "run")
    summary = miniature.run(config, workdir)

    assert set(summary["scores"]) == {"teacher", "triple_loss", "no_cos"}
    assert all(set(s) == {"sst2", "stsb"} for s in summary["scores"].values())
    speed = summary["speed"]
    assert speed["teacher"]["parameters"] > speed["triple_loss"]["parameters"] > 0
    assert speed["teacher"]["examples"] == 10  # STS-B dev
    assert all(r > 0 for r in summary["distill_tokens_per_sec"].values())
    tables = open(os.path.join(workdir, "tables.md")).read()
    for needle in ("Table 1", "Table 3", "Table 4", "| student (triple loss) |", "| no_cos |",
                   "of the teacher's score"):
        assert needle in tables

    text = open(os.path.join(workdir, "text", "glue.txt")).read()
    assert "the movie was good great" in text and "a city of 3 the city 0" in text
    assert DEV_ONLY not in text  # dev splits are scored on, never trained on

    stage = os.path.join(workdir, "glue", "no_cos", "stsb", "seed42", "results.json")
    before = os.path.getmtime(stage)
    again = miniature.run(config, workdir)
    assert os.path.getmtime(stage) == before
    assert again["scores"] == summary["scores"]
    config.distill.max_steps = 4  # a finished stage is never reused under another config
    with pytest.raises(ConfigError, match=r"holds a run with other values of \['distill.max_steps'\]"):
        miniature.run(config, workdir)


@pytest.mark.parametrize("field, value", [("variants", ("triple_loss", "no_mlm_please")),
                                          ("tasks", ("sst2", "sst3"))])
def test_unknown_variant_or_task_is_refused(setup, tmp_path, field, value):
    config = tiny(*setup)
    config[field] = value
    with pytest.raises(ConfigError, match=value[1]):
        miniature.run(config, str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run")
