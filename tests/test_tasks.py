"""Tasks on the real evaluation data (the folder $DISTILBERT_JAX_EVALDATA names, by default an
`evaldata` folder two levels above this one, present in CI) and on hand-made cases."""

import json
import os
import sys
import types

import numpy as np
import pytest

import distilbert_jax as dj
from distilbert_jax import metrics
from distilbert_jax.data import DataError, get_task
from distilbert_jax.data.task import Features, collate

EVALDATA = os.environ.get("DISTILBERT_JAX_EVALDATA") or os.path.join(
    os.path.dirname(__file__), "..", "..", "shared", "evaldata")
needs_evaldata = pytest.mark.skipif(not os.path.isdir(EVALDATA),
                                    reason=f"no evaluation data in {EVALDATA}")

# Split sizes: the official GLUE / TFDS sizes.
GLUE_SIZES = {"cola": (8551, 1043, 1063), "sst2": (67349, 872, 1821), "mrpc": (3668, 408, 1725),
              "stsb": (5749, 1500, 1379), "rte": (2490, 277, 3000), "wnli": (635, 71, 146)}
FOLDERS = {"cola": "CoLA", "sst2": "SST-2", "mrpc": "MRPC", "stsb": "STS-B", "rte": "RTE", "wnli": "WNLI"}


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
    return dj.Tokenizer.from_pretrained(minilm_dir)


@needs_evaldata
@pytest.mark.parametrize("name", sorted(GLUE_SIZES))
def test_glue_split_sizes_and_labels(name):
    task = get_task(name, os.path.join(EVALDATA, "glue", FOLDERS[name]))
    train, dev, test = (task.load(s) for s in ("train", "dev", "test"))
    assert (len(train), len(dev), len(test)) == GLUE_SIZES[name]
    assert all(e.label == -1 for e in test)
    if task.label_names:
        assert {e.label for e in dev} == set(range(task.num_labels))
    else:
        assert 0.0 <= min(e.label for e in dev) and max(e.label for e in dev) <= 5.0
    assert [e.index for e in test[:3]] == [0, 1, 2]


@needs_evaldata
def test_qnli_dev_and_mrpc_label_balance():
    dev = get_task("qnli", os.path.join(EVALDATA, "glue", "QNLI")).load("dev")
    assert len(dev) == 5463 and sum(e.label == 0 for e in dev) == 2702  # 2,702 entailment
    mrpc = get_task("mrpc", os.path.join(EVALDATA, "glue", "MRPC")).load("dev")
    assert sum(e.label for e in mrpc) == 279  # 279 paraphrases / 129 not


def test_glue_from_tfds_records(monkeypatch):
    """The TFDS path, fed by a stand-in for tfds.data_source with TFDS's record layout."""
    records = [{"sentence1": b"A man sleeps.", "sentence2": b"A person rests.", "label": 0, "idx": 7},
               {"sentence1": b"It rains.", "sentence2": b"It is dry.", "label": 1, "idx": 8}]
    mnli = [{"premise": b"p", "hypothesis": b"h", "label": 2, "idx": 0}]
    calls = []
    fake = types.SimpleNamespace(data_source=lambda name, split: calls.append((name, split))
                                 or (mnli if "mnli" in name else records))
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake)
    examples = get_task("rte", source="tfds").load("dev")
    assert calls == [("glue/rte", "validation")]
    assert [(e.texts, e.label, e.index) for e in examples] == [
        (("A man sleeps.", "A person rests."), 0, 7), (("It rains.", "It is dry."), 1, 8)]
    assert get_task("mnli", source="tfds").load("dev")[0].texts == ("p", "h")
    assert calls[-1] == ("glue/mnli", "validation_matched")


def test_glue_test_predictions_in_server_format(tmp_path, tokenizer):
    (tmp_path / "test.tsv").write_text("index\tsentence1\tsentence2\n0\ta\tb\n1\tc\td\n")
    task = get_task("rte", str(tmp_path))
    features = task.encode(task.load("test"), tokenizer, 32)
    path = task.write_predictions(features, {"logits": np.array([[2.0, 1.0], [0.0, 3.0]])},
                                  str(tmp_path / "out"), "test")
    assert os.path.basename(path) == "RTE.tsv"
    assert open(path).read() == "index\tprediction\n0\tentailment\n1\tnot_entailment\n"


@needs_evaldata
def test_squad_dev_windows_recover_the_answers(tokenizer):
    task = get_task("squad", os.path.join(EVALDATA, "squad"), doc_stride=32)
    examples = task.load("dev")
    assert len(examples) == 10570
    sample = examples[:300]
    features = task.encode(sample, tokenizer, 128)
    assert len(features) > len(sample)  # long contexts make several windows
    recovered = total = 0
    for row in range(len(features)):
        start, end = features.targets["start_positions"][row], features.targets["end_positions"][row]
        if start == 0:
            continue
        example = sample[features.row_to_example[row]]
        offsets = features.extras["offsets"][row]
        span = example.context[offsets[start][0]:offsets[end][1]]
        total += 1
        recovered += metrics.normalize_answer(span) == metrics.normalize_answer(example.answers[0])
    # the rest begin or end inside a word piece ('gold' in 'golden'), as in transformers' run_qa
    assert total > 250 and recovered / total > 0.95


def _squad_features(context, question_id="q", answers=("paris",)):
    example = dj.data.squad.SquadExample(question_id, "where?", context, list(answers),
                                         [context.find(a) for a in answers])
    offsets = [None, None, (0, 5), (6, 8), (9, 10), (11, 15), None]  # [CLS] q [SEP] paris is a city [SEP]
    return Features({"input_ids": [np.zeros(7, np.int32)]}, {}, [example], np.array([0]),
                    {"offsets": [offsets]})


def test_squad_decoding_picks_the_best_valid_span():
    task = get_task("squad", "unused")
    features = _squad_features("paris is a city")
    start = np.array([0.0, 9.0, 5.0, 1.0, 0.0, 0.0, 9.0])  # high scores outside the context are ignored
    end = np.array([0.0, 0.0, 1.0, 4.0, 0.0, 2.0, 9.0])
    answers, _ = task.postprocess(features, {"start_logits": [start], "end_logits": [end]})
    assert answers == {"q": "paris is"}
    end_before_start = np.array([0.0, 0.0, 6.0, 0.0, 0.0, 0.0, 0.0])
    answers, _ = task.postprocess(features, {"start_logits": [np.roll(end_before_start, 3)],
                                             "end_logits": [end_before_start]})
    assert answers["q"] != ""  # a valid span is still chosen (end >= start enforced)
    assert task.evaluate(features, {"start_logits": [start], "end_logits": [end]}) == {
        "exact_match": 0.0, "f1": pytest.approx(100 * 2 / 3)}  # 'paris is' vs 'paris'


def test_squad_v2_null_answer_threshold():
    task = get_task("squad_v2", "unused")
    features = _squad_features("paris is a city", answers=())
    start = np.array([8.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0])
    end = np.array([8.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0])
    answers, odds = task.postprocess(features, {"start_logits": [start], "end_logits": [end]})
    assert answers == {"q": ""} and odds["q"] == pytest.approx(16.0 - 4.0)
    task.null_score_diff_threshold = 20.0
    answers, _ = task.postprocess(features, {"start_logits": [start], "end_logits": [end]})
    assert answers == {"q": "paris"}


def test_ner_labels_on_first_sub_token(tokenizer, tmp_path):
    (tmp_path / "train.txt").write_text("Peter NNP B-NP B-PER\nBlackburnshire NNP I-NP I-PER\n")
    task = get_task("conll2003", str(tmp_path))
    features = task.encode(task.load("train"), tokenizer, 32)
    ids, labels = features.inputs["input_ids"][0], features.targets["labels"][0]
    pieces = tokenizer.convert_ids_to_tokens(ids)
    assert pieces[0] == "[CLS]" and pieces[-1] == "[SEP]" and len(pieces) > 4
    names = task.label_names
    assert [names[l] if l >= 0 else None for l in labels] == (
        [None, "B-PER", "I-PER"] + [None] * (len(pieces) - 3))
    batch = collate(features, [0], 16, tokenizer.pad_token_id)
    assert batch["targets"]["labels"][0, len(pieces):].tolist() == [-100] * (16 - len(pieces))
    assert batch["inputs"]["attention_mask"][0].tolist() == [1] * len(pieces) + [0] * (16 - len(pieces))


@needs_evaldata
def test_conll_files_in_both_layouts():
    iob1 = get_task("conll2003", os.path.join(EVALDATA, "conll2003"), layout="iob1").load("dev")
    iob2 = get_task("conll2003", os.path.join(EVALDATA, "conll2003", "iob2")).load("dev")
    assert len(iob1) == len(iob2) == 3250
    entities = lambda data: sum(len(metrics.get_entities(s.tags)) for s in data)
    assert entities(iob1) == entities(iob2) == 5942  # same chunks, read from IOB1 and from IOB2


def test_bad_squad_and_conll_files(tmp_path):
    (tmp_path / "dev-v1.1.json").write_text("{not json")
    with pytest.raises(DataError, match="is not a SQuAD JSON file"):
        get_task("squad", str(tmp_path)).load("dev")
    (tmp_path / "valid.txt").write_text("word NNP B-NP B-FOO\n")
    with pytest.raises(DataError, match=r"valid.txt:1: tag 'B-FOO' is not one of"):
        get_task("conll2003", str(tmp_path)).load("dev")


@pytest.mark.reference
@needs_evaldata
def test_squad_metric_equals_the_official_algorithm():
    """EM/F1 of a predictions file through ours and through transformers' port of the official script."""
    squad_metrics = pytest.importorskip("transformers.data.metrics.squad_metrics")
    with open(os.path.join(EVALDATA, "squad", "dev-v1.1.json")) as f:
        data = json.load(f)["data"]
    rng = np.random.default_rng(0)
    golds, predictions = {}, {}
    for article in data:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                answers = [a["text"] for a in qa["answers"]]
                golds[qa["id"]] = answers
                words = paragraph["context"].split()
                start = int(rng.integers(0, len(words)))
                # a mix of exact answers, partial overlaps and misses
                predictions[qa["id"]] = (answers[0] if rng.random() < 0.5
                                         else " ".join(words[start:start + int(rng.integers(1, 6))]))
    ours = metrics.squad_v1(predictions, golds)
    official_em = np.mean([max(squad_metrics.compute_exact(a, predictions[q]) for a in golds[q])
                           for q in golds]) * 100
    official_f1 = np.mean([max(squad_metrics.compute_f1(a, predictions[q]) for a in golds[q])
                           for q in golds]) * 100
    assert ours["exact_match"] == pytest.approx(official_em, abs=1e-9)
    assert ours["f1"] == pytest.approx(official_f1, abs=1e-9)
