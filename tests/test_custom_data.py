"""Fine-tuning on your own files (CSV/TSV/JSON lines, labels read from the training file), the best
evaluation exported, and early stopping that a resumed run repeats."""

import json
import os

import numpy as np
import pytest

import distilbert_jax as dj
from distilbert_jax import jobs, predict
from distilbert_jax.data import DataError, get_task
from distilbert_jax.data.custom import TokenClassificationTask
from distilbert_jax.train import loop
from distilbert_jax.train.checkpoint import Checkpoints
from conftest import tiny_config

GOOD, BAD = "the movie was good great .", "the movie was bad not good ."


def write_reviews(folder, ext=".csv", n_train=48, n_dev=12):
    """Reviews with three labels named by the user (stars), in a CSV, TSV or JSON-lines file."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    texts = {"five": GOOD, "one": BAD, "three": "the film was not bad and not great ."}
    for split, n in (("train", n_train), ("dev", n_dev)):
        rows = [(texts[s], s) for s in rng.choice(sorted(texts), n)]
        with open(os.path.join(folder, split + ext), "w", encoding="utf-8") as f:
            if ext == ".jsonl":
                f.writelines(json.dumps({"review": t, "stars": s}) + "\n" for t, s in rows)
            else:
                sep = "\t" if ext == ".tsv" else ","
                f.write(f"review{sep}stars\n" + "".join(f"{t}{sep}{s}\n" for t, s in rows))
    return str(folder)


def custom_config(model, data, **overrides):
    config = tiny_config(model, data, "text_classification", **overrides)
    config.task_options = {"text_columns": ("review",), "label_column": "stars"}
    return config


@pytest.mark.parametrize("ext", [".csv", ".tsv", ".jsonl"])
def test_labels_come_from_the_training_file(ext, tmp_path):
    task = get_task("text_classification", write_reviews(tmp_path / "d", ext),
                    text_columns=("review",), label_column="stars")
    assert task.label_names == ("five", "one", "three")
    examples = task.load("dev")
    assert len(examples) == 12 and examples[0].texts[0] in (GOOD, BAD, "the film was not bad and not great .")


def test_fine_tune_on_a_csv_and_export_the_best_evaluation(tiny_model, tmp_path):
    data = write_reviews(tmp_path / "reviews")
    workdir = tmp_path / "run"
    results = jobs.run(custom_config(tiny_model, data, max_steps=30, eval_every=5, lr=3e-3), str(workdir))
    assert results["eval"]["dev"]["accuracy"] == 1.0  # three distinct sentences, three labels
    model, params = dj.from_pretrained(workdir / "model")
    assert model.config.id2label == ("five", "one", "three")
    assert results["exported_step"] == results["best_step"]
    with Checkpoints(str(workdir), best_metric="accuracy") as checkpoints:
        best = checkpoints.restore_best(params)
    for a, b in zip(jax_leaves(best), jax_leaves(params)):
        np.testing.assert_array_equal(a, b)  # model/ holds exactly the best evaluation's params
    lines = (workdir / "predictions" / "dev" / "text_classification.tsv").read_text().splitlines()
    assert lines[0] == "index\tprediction" and {l.split("\t")[1] for l in lines[1:]} <= {"five", "one", "three"}
    assert "| dev | accuracy | 1.0000 |" in (workdir / "model" / "README.md").read_text()
    assert oct(os.stat(workdir / "model" / "model.safetensors").st_mode & 0o044) == oct(0o044)

    # then classify new sentences in a file with the exported model, through the command
    (tmp_path / "new.jsonl").write_text(json.dumps({"id": "a", "review": GOOD}) + "\n"
                                        + json.dumps({"id": "b", "review": BAD}) + "\n")
    assert predict.main([f"--model={workdir / 'model'}", "--task=text-classification", "--text_column=review",
                  f"--input={tmp_path / 'new.jsonl'}", f"--output={tmp_path / 'out.jsonl'}"]) == 0
    out = [json.loads(l) for l in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [(o["id"], o["label"]) for o in out] == [("a", "five"), ("b", "one")]


def jax_leaves(tree):
    import jax
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_token_classification_from_json_lines(tiny_model, tmp_path):
    folder = tmp_path / "tags"
    os.makedirs(folder)
    row = {"tokens": ["john", "lives", "in", "paris", "."], "ner_tags": ["B-PER", "O", "O", "B-LOC", "O"]}
    for split in ("train", "dev"):
        (folder / f"{split}.jsonl").write_text((json.dumps(row) + "\n") * 24)
    config = tiny_config(tiny_model, folder, "token_classification", max_steps=40, lr=5e-3)
    results = jobs.run(config, str(tmp_path / "run"))
    assert results["eval"]["dev"]["f1"] == 1.0
    model, _ = dj.from_pretrained(tmp_path / "run" / "model")
    assert model.config.id2label == ("O", "B-LOC", "B-PER")


@pytest.mark.parametrize("line, message", [
    ({"tokens": ["a", "b"], "ner_tags": "B-PER O"}, "train.jsonl:2: 'tokens' and 'ner_tags' must be lists"),
    ({"tokens": ["a", "b"], "ner_tags": ["O"]}, "train.jsonl:2: 2 tokens but 1 tags"),
    ({"tokens": ["a", "b"]}, r"train.jsonl:2: the row has no 'ner_tags' field \(it has \['tokens'\]\)"),
])
def test_bad_token_files_are_refused_when_the_label_set_is_read(line, message, tmp_path):
    good = {"tokens": ["john", "lives"], "ner_tags": ["B-PER", "O"]}
    (tmp_path / "train.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(line) + "\n")
    with pytest.raises(DataError, match=message):
        TokenClassificationTask(str(tmp_path))


@pytest.mark.parametrize("content, message", [
    ("review,stars\n", r"train.csv has no examples"),
    ("review,stars\ngood,five\nbad\n", r"train.csv:3: 1 cells but the header has 2 columns"),
    ("text,stars\ngood,five\nbad,one\n", r"train.csv has no column 'review' \(its columns: text, stars\)"),
    ("review,stars\ngood,five\nbad,five\n", r"holds 1 distinct label\(s\) \['five'\]; classification needs at least 2"),
])
def test_bad_files_are_one_sentence_naming_file_and_line(content, message, tmp_path):
    os.makedirs(tmp_path / "d")
    (tmp_path / "d" / "train.csv").write_text(content)
    with pytest.raises(DataError, match=message):
        get_task("text_classification", str(tmp_path / "d"), text_columns=("review",),
                 label_column="stars").load("train")


def test_a_dev_label_the_training_file_lacks_names_its_line(tmp_path):
    data = write_reviews(tmp_path / "d")
    with open(os.path.join(data, "dev.csv"), "a") as f:
        f.write("a new kind of review,four\n")
    task = get_task("text_classification", data, text_columns=("review",), label_column="stars")
    with pytest.raises(DataError, match=r"dev.csv:14: label 'four' is not one of \['five', 'one', 'three'\]"):
        task.load("dev")


class Counter:
    """A stand-in train state and step for the loop: the step only counts."""
    def __init__(self, step=0):
        self.step = step


def test_early_stopping_stops_after_an_evaluation_and_a_resumed_run_stops_there(tmp_path):
    saved = []

    class Saves:
        def save(self, step, state):
            saved.append(step)

        def wait(self):
            pass

        def latest_step(self):
            return saved[-1] if saved else None

    class Quiet:
        def write(self, *a):
            pass

        def report(self, *a):
            pass

        def rates(self, step):
            return {}

    stop = lambda step: step >= 6
    step_fn = lambda state, batch: (Counter(state.step + 1), {})
    batches = iter(range(100))
    kwargs = dict(workdir=str(tmp_path), checkpoints=Saves(), writer=Quiet(), progress=Quiet(),
                  evaluate=lambda state, step: {"dev": {"accuracy": 0.5}}, stop=stop)
    state = loop.run(Counter(), step_fn, batches, loop.Schedule(20, 100, 100, 3), **kwargs)
    assert state.step == 6 and saved == [6]  # the evaluation at 6 stopped it, and 6 was saved
    state = loop.run(Counter(6), step_fn, batches, loop.Schedule(20, 100, 100, 3), **kwargs)
    assert state.step == 6 and saved == [6]  # resumed: stops before any step, as the first run did
