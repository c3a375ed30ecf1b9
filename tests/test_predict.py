"""python -m distilbert_jax.predict end to end on the tiny pipeline checkpoints: once as a
subprocess, otherwise through main(argv)."""

import csv
import io
import json
import os
import subprocess
import sys

import pytest

import distilbert_jax as dj
from distilbert_jax import predict
from test_pipelines import PIPELINE_FIXTURES, cached_pipeline, differences

SENTIMENT = os.path.join(PIPELINE_FIXTURES, "distilbert_sentiment")
NER = os.path.join(PIPELINE_FIXTURES, "distilbert_ner")
QA = os.path.join(PIPELINE_FIXTURES, "distilbert_qa")
TEXTS = ["the movie was good", "it was not bad, mary", "john is in paris"]


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_command_line_text_file_to_jsonl(tmp_path):
    source = write(tmp_path / "reviews.txt", "\n".join(TEXTS[:2]) + "\n\n" + TEXTS[2] + "\n")
    out = tmp_path / "predictions.jsonl"
    run = subprocess.run([sys.executable, "-m", "distilbert_jax.predict", f"--model={SENTIMENT}",
                          "--task=text-classification", f"--input={source}", f"--output={out}",
                          "--batch_size=2"],
                         capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)),
                         env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(__file__))})
    assert run.returncode == 0, run.stderr
    assert "predict: 3 rows in" in run.stderr and "rows/s" in run.stderr
    expected = cached_pipeline("text-classification", "distilbert_sentiment")(TEXTS)
    # another batch size pads to other shapes: equal up to float rounding
    assert differences(read_jsonl(out), [{"text": t, **e} for t, e in zip(TEXTS, expected)])[0] < 1e-5


def test_jsonl_with_ids_pairs_and_options(tmp_path):
    rows = [{"id": "a", "text": TEXTS[0]}, {"id": "b", "text": TEXTS[1], "text_pair": TEXTS[2]}]
    source = write(tmp_path / "in.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    out = str(tmp_path / "out.jsonl")
    assert predict.main([f"--model={SENTIMENT}", "--task=sentiment-analysis", f"--input={source}",
                         f"--output={out}", "--packing", '--options={"top_k": null}']) == 0
    pipe = cached_pipeline("text-classification", "distilbert_sentiment")
    got = read_jsonl(out)
    assert [g["id"] for g in got] == ["a", "b"] and got[1]["text_pair"] == TEXTS[2]
    expected = pipe({"text": TEXTS[1], "text_pair": TEXTS[2]}, top_k=None)
    assert differences(got[1]["predictions"], expected)[0] < 1e-5


def test_csv_in_and_out_for_token_classification(tmp_path):
    source = write(tmp_path / "in.csv", 'sentence,id\n"mary, john and paris",1\njohnny is in london,2\n')
    out = str(tmp_path / "out.csv")
    assert predict.main([f"--model={NER}", "--task=ner", f"--input={source}", f"--output={out}",
                         "--text_column=sentence", '--options={"aggregation_strategy": "first"}']) == 0
    with open(out, encoding="utf-8") as f:
        got = list(csv.DictReader(f))
    pipe = cached_pipeline("token-classification", "distilbert_ner")
    assert [g["id"] for g in got] == ["1", "2"]
    expected = pipe("mary, john and paris", aggregation_strategy="first")
    assert differences(json.loads(got[0]["entities"]), expected)[0] < 1e-5


def test_csv_output_has_every_field_some_row_has(tmp_path):
    rows = [{"text": TEXTS[0]}, {"text": TEXTS[1], "id": "b"}, {"text": TEXTS[2], "text_pair": TEXTS[0]}]
    source = write(tmp_path / "in.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    out = str(tmp_path / "out.csv")
    assert predict.main([f"--model={SENTIMENT}", "--task=text-classification", f"--input={source}",
                         f"--output={out}"]) == 0
    with open(out, encoding="utf-8") as f:
        got = list(csv.DictReader(f))
    assert set(got[0]) == {"text", "id", "text_pair", "label", "score"}
    assert [(g["id"], g["text_pair"]) for g in got] == [("", ""), ("b", ""), ("", TEXTS[0])]


def test_question_answering_from_jsonl_on_stdin(monkeypatch, capsys):
    context = "john and mary live in paris. the city is good and the film was great."
    monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps({"question": "who?", "context": context}) + "\n"))
    assert predict.main([f"--model={QA}", "--task=question-answering", "--input=-"]) == 0
    got = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    answer = dj.pipeline("question-answering", model=QA)(question="who?", context=context)
    assert differences(got, [{"question": "who?", **answer}])[0] < 1e-5


@pytest.mark.parametrize("name, content, args, message", [
    (None, None, [], "--input={tmp}/missing.txt does not exist."),
    ("in.jsonl", '{"text": "good"}\n{"sentence": "bad"}\n', [],
     "in.jsonl:2: the row has no 'text' field (it has ['sentence']); pass --text_column=NAME."),
    ("in.jsonl", '{"text": "good"}\n{"text": "bad"\n', [], "in.jsonl:2: not valid JSON"),
    ("in.jsonl", '{"text": "good"}\n\n{"text": ""}\n', [],
     "in.jsonl:3: the 'text' field is \"\", not a non-empty text."),
    ("in.csv", "sentence,id\ngood,1\n", [], "in.csv has no column 'text' (its columns: sentence, id)"),
    ("in.csv", "text,id\ngood,1\nbad\n", [], "in.csv:3: 1 cells but the header has 2 columns."),
    ("in.txt", "good\n", ["--task=question-answering"], "question-answering needs question and context"),
    ("in.txt", "good\n", ["--task=summarization"], "--task='summarization' is not one of"),
    ("in.txt", "good\n", ["--options={top_k: 2}"], "--options is not valid JSON"),
    ("in.txt", "good\n", ['--options={"topk": 2}'], "has no option 'topk'"),
    ("in.txt", "good\n", ["--task=fill-mask"], "needs a DistilBertForMaskedLM or BertForMaskedLM"),
    ("in.txt", "\n\n", [], "in.txt has no rows to predict."),
])
def test_bad_input_is_one_sentence_and_writes_nothing(tmp_path, capsys, name, content, args, message):
    source = write(tmp_path / name, content) if name else str(tmp_path / "missing.txt")
    out = tmp_path / "out.jsonl"
    argv = [f"--model={SENTIMENT}", "--task=text-classification", f"--input={source}",
            f"--output={out}", *args]
    assert predict.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message.format(tmp=tmp_path) in err[0], err
    assert not out.exists() and not list(out.parent.glob(f"{out.name}*.tmp"))
