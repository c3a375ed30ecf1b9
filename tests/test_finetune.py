"""End to end on tiny data, one test per task family, through the same loop users run."""

import csv
import json
import os

import jax
import numpy as np
import pytest

import distilbert_jax as dj
from distilbert_jax.data import Features
from distilbert_jax.train import finetune
from conftest import (PADDED_AND_PACKED, assert_same_training, read_results, step_metrics, tiny_config,
                      write_sst2, write_stsb)

LEARN_STEPS = 30  # enough updates for a tiny model to learn each toy task below exactly


def test_glue_classification_end_to_end(tiny_model, tmp_path):
    data = write_sst2(tmp_path / "SST-2")
    workdir = tmp_path / "run"
    results = finetune.train_and_evaluate(
        tiny_config(tiny_model, data, "sst2", predict_splits=("test",), max_steps=LEARN_STEPS),
        str(workdir))
    assert results["eval"]["dev"]["accuracy"] == 1.0  # the two sentences differ in every row
    assert read_results(workdir)["eval"] == results["eval"]
    with open(workdir / "predictions" / "test" / "SST-2.tsv") as f:
        assert f.read().splitlines()[0] == "index\tprediction"
    lines = [json.loads(l) for l in open(workdir / "metrics.jsonl")]
    assert {"train/loss", "train/lr", "perf/steps_per_sec"} <= set(lines[0])
    assert any("eval/dev/accuracy" in l and "eval/dev/loss" in l for l in lines)
    assert os.listdir(workdir / "tb")
    saved = json.load(open(workdir / "config.json"))
    assert saved["task"] == "sst2" and saved["max_steps"] == LEARN_STEPS
    model, _ = dj.from_pretrained(workdir / "model")
    assert isinstance(model, dj.DistilBertForSequenceClassification)
    assert model.config.id2label == ("negative", "positive")

    evaluated = finetune.evaluate_only(tiny_config(str(workdir / "model"), data, "sst2", job="evaluate"),
                                       str(tmp_path / "eval"))
    assert evaluated["eval"]["dev"] == pytest.approx(results["eval"]["dev"])


def test_glue_regression_with_a_bert_and_accumulation(tiny_bert, tmp_path):
    data = write_stsb(tmp_path / "STS-B")
    results = finetune.train_and_evaluate(
        tiny_config(tiny_bert, data, "stsb", grad_accum_steps=2), str(tmp_path / "run"))
    assert set(results["eval"]["dev"]) == {"pearson", "spearmanr", "loss"}
    model, _ = dj.from_pretrained(tmp_path / "run" / "model")
    assert isinstance(model, dj.BertForSequenceClassification) and model.config.num_labels == 1


@pytest.mark.parametrize("packing", PADDED_AND_PACKED)
def test_token_classification_end_to_end(tiny_model, tmp_path, packing):
    data = tmp_path / "conll"
    os.makedirs(data)
    sentence = "john NNP B-NP B-PER\nlives VBZ B-VP O\nin IN B-PP O\nparis NNP B-NP B-LOC\n. . O O\n\n"
    for name in ("train.txt", "valid.txt"):
        (data / name).write_text("-DOCSTART- -X- -X- O\n\n" + sentence * 20)
    results = finetune.train_and_evaluate(tiny_config(tiny_model, data, "conll2003", packing=packing),
                                          str(tmp_path / "run"))
    assert {"precision", "recall", "f1", "accuracy"} <= set(results["eval"]["dev"])
    lines = (tmp_path / "run" / "predictions" / "dev" / "conll2003_dev.txt").read_text().splitlines()
    assert lines[0].split()[:2] == ["john", "B-PER"]


@pytest.mark.parametrize("packing", PADDED_AND_PACKED)
def test_question_answering_end_to_end(tiny_model, tmp_path, packing):
    data = tmp_path / "squad"
    os.makedirs(data)
    context = "paris is a city . london is a city . the movie was good ."
    qas = [{"id": f"q{i}", "question": "what is a city ?",
            "answers": [{"text": "paris", "answer_start": 0}, {"text": "paris is", "answer_start": 0}]}
           for i in range(24)]
    for name in ("train-v1.1.json", "dev-v1.1.json"):
        (data / name).write_text(json.dumps({"version": "1.1", "data": [
            {"title": "t", "paragraphs": [{"context": context, "qas": qas}]}]}))
    config = tiny_config(tiny_model, data, "squad", max_length=24, max_steps=LEARN_STEPS,
                         packing=packing)
    config.task_options = {"doc_stride": 8}
    results = finetune.train_and_evaluate(config, str(tmp_path / "run"))
    assert {"exact_match", "f1", "loss"} == set(results["eval"]["dev"])
    predictions = json.load(open(tmp_path / "run" / "predictions" / "dev" / "squad_dev_predictions.json"))
    assert set(predictions) == {f"q{i}" for i in range(24)}
    # the context is longer than a window: the answer must be found in the right one, mapped
    # back to the right characters
    assert set(predictions.values()) == {"paris"} and results["eval"]["dev"]["exact_match"] == 100.0


@pytest.mark.parametrize("packing", PADDED_AND_PACKED)
def test_multiple_choice_end_to_end(tiny_model, tmp_path, packing):
    data = tmp_path / "swag"
    os.makedirs(data)
    for name in ("train.csv", "val.csv"):
        with open(data / name, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["video-id", "fold-ind", "startphrase", "sent1", "sent2", "gold-source",
                        "ending0", "ending1", "ending2", "ending3", "label"])
            wrong = ["was good", "is a movie and it was not good at all", "ran"]
            for i in range(16):  # the gold ending, "saw paris", moves to position i % 4
                endings = wrong[: i % 4] + ["saw paris"] + wrong[i % 4:]
                w.writerow(["v", i, "s", "he went to the city", "he", "gold", *endings, i % 4])
    results = finetune.train_and_evaluate(
        tiny_config(tiny_model, data, "swag", max_steps=LEARN_STEPS, packing=packing),
        str(tmp_path / "run"))
    assert results["eval"]["dev"]["accuracy"] == 1.0
    model, _ = dj.from_pretrained(tmp_path / "run" / "model")
    assert isinstance(model, dj.DistilBertForMultipleChoice)


def test_bfloat16_compute_keeps_float32_params(tiny_model, tmp_path):
    data = write_sst2(tmp_path / "SST-2")
    losses = {}
    for dtype in ("float32", "bfloat16"):
        finetune.train_and_evaluate(tiny_config(tiny_model, data, "sst2", dtype=dtype, max_steps=2,
                                                log_every=1), str(tmp_path / dtype))
        lines = [json.loads(l) for l in open(tmp_path / dtype / "metrics.jsonl")]
        losses[dtype] = lines[0]["train/loss"]
    # the same first update in bf16 compute: its loss within bf16's rounding of float32's
    assert losses["bfloat16"] == pytest.approx(losses["float32"], rel=2e-2)
    assert losses["bfloat16"] != losses["float32"]  # and it really computed in bf16
    model, params = dj.from_pretrained(tmp_path / "bfloat16" / "model")
    assert all(v.dtype == np.float32 for v in jax.tree.leaves(params))


def test_task_distillation_from_a_fine_tuned_bert_teacher(tiny_model, tiny_bert, tmp_path):
    """The second distillation step: a DistilBERT student learns from a fine-tuned BERT teacher."""
    data = write_sst2(tmp_path / "SST-2")
    finetune.train_and_evaluate(tiny_config(tiny_bert, data, "sst2"), str(tmp_path / "teacher"))
    results = finetune.train_and_evaluate(
        tiny_config(tiny_model, data, "sst2", teacher=str(tmp_path / "teacher" / "model"),
                    max_steps=LEARN_STEPS, log_every=1), str(tmp_path / "student"))
    assert results["teacher"] == str(tmp_path / "teacher" / "model")
    lines = [json.loads(l) for l in open(tmp_path / "student" / "metrics.jsonl") if "train/loss" in l]
    for line in lines:  # the logged total is the configured mix of the two terms
        assert line["train/loss"] == pytest.approx(0.5 * line["train/loss_task"] + 0.5 * line["train/loss_soft"],
                                                   rel=1e-5)
    assert np.mean([l["train/loss_soft"] for l in lines[-3:]]) < np.mean([l["train/loss_soft"] for l in lines[:3]])
    with pytest.raises(finetune.TrainingError, match="needs a sequence_classification head"):
        finetune.train_and_evaluate(tiny_config(tiny_model, data, "sst2", teacher=tiny_bert),
                                    str(tmp_path / "bad"))


def test_task_distillation_terms_against_numpy():
    from types import SimpleNamespace as NS
    from distilbert_jax import losses
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    T = 2.0
    ls = s / T - np.log(np.exp(s / T).sum(-1, keepdims=True))
    lt = t / T - np.log(np.exp(t / T).sum(-1, keepdims=True))
    kl = (np.exp(lt) * (lt - ls)).sum(-1).mean() * T * T
    mask = np.ones((4, 5))
    got = losses.task_distillation_loss("sequence_classification", NS(logits=s), NS(logits=t), mask, T)
    np.testing.assert_allclose(got, kl, rtol=1e-5)
    reg = losses.task_distillation_loss("sequence_classification", NS(logits=s[:, :1]), NS(logits=t[:, :1]),
                                        mask, T, "regression")
    np.testing.assert_allclose(reg, np.mean((s[:, 0] - t[:, 0]) ** 2), rtol=1e-5)
    qa = losses.task_distillation_loss("question_answering", NS(start_logits=s, end_logits=t),
                                       NS(start_logits=t, end_logits=s), np.ones((4, 3)), T)
    kl_ts = (np.exp(ls) * (ls - lt)).sum(-1).mean() * T * T
    np.testing.assert_allclose(qa, (kl + kl_ts) / 2, rtol=1e-5)


def _cross_entropy(logits, label) -> float:
    logits = np.asarray(logits, np.float64)
    return float(np.log(np.exp(logits - logits.max()).sum()) + logits.max() - logits[label])


def _features(lengths, targets) -> Features:
    inputs = {"input_ids": [np.ones(n, np.int32) for n in lengths]}
    return Features(inputs, targets, [], np.arange(len(lengths)))


def test_eval_loss_is_the_heads_loss_over_the_whole_split():
    rng = np.random.default_rng(0)
    sizes = dj.DistilBertConfig(num_labels=3)
    # One label per row: the mean over rows.
    logits, labels = rng.normal(size=(5, 3)).astype(np.float32), np.array([0, 2, 1, 1, 0])
    loss = finetune.split_loss("sequence_classification", _features([4, 2, 7, 3, 5], {"labels": labels}),
                               {"logits": logits}, sizes)
    assert loss == pytest.approx(np.mean([_cross_entropy(l, y) for l, y in zip(logits, labels)]), rel=1e-6)
    # Per-token labels, rows of their own lengths: the mean over the labelled tokens (-100 is not one).
    lengths = [3, 5, 2]
    labels = [np.array([0, -100, 2]), np.array([1, 1, -100, 0, 2]), np.array([-100, 1])]
    logits = [rng.normal(size=(n, 3)).astype(np.float32) for n in lengths]
    loss = finetune.split_loss("token_classification", _features(lengths, {"labels": labels}),
                               {"logits": logits}, sizes)
    kept = [_cross_entropy(l[t], y[t]) for l, y in zip(logits, labels) for t in range(len(y)) if y[t] >= 0]
    assert loss == pytest.approx(np.mean(kept), rel=1e-6)
    # Spans: start and end over each row's own tokens, whatever the longest row.
    lengths, starts, ends = [4, 6], np.array([1, 0]), np.array([3, 5])
    start_logits = [rng.normal(size=n).astype(np.float32) for n in lengths]
    end_logits = [rng.normal(size=n).astype(np.float32) for n in lengths]
    loss = finetune.split_loss(
        "question_answering", _features(lengths, {"start_positions": starts, "end_positions": ends}),
        {"start_logits": start_logits, "end_logits": end_logits}, sizes)
    expected = np.mean([(_cross_entropy(s, a) + _cross_entropy(e, b)) / 2
                        for s, e, a, b in zip(start_logits, end_logits, starts, ends)])
    assert loss == pytest.approx(expected, rel=1e-6)


def test_remat_trains_the_same_run(tiny_model, tmp_path):
    """remat="full" recomputes every block in the backward, dropout included: the same draws, so the
    same loss at every update and the same dev metrics as remat="none"."""
    data = write_sst2(tmp_path / "SST-2")
    runs = {}
    for remat in ("none", "full"):
        config = tiny_config(tiny_model, data, "sst2", max_steps=6, log_every=1, remat=remat,
                             save_model=False)
        workdir = str(tmp_path / remat)
        runs[remat] = (finetune.train_and_evaluate(config, workdir), step_metrics(workdir, "train/loss"))
    assert_same_training(runs["full"], runs["none"], steps=6)
