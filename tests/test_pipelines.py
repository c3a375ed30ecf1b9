"""dj.pipeline against transformers' own pipelines: the committed fixtures in fixtures/pipelines
(written by fixtures/make_pipeline_reference.py) hold each call's inputs, options and transformers'
output. Labels, tokens, words, answers and character offsets must be equal; scores and vectors
within 1e-4."""

import dataclasses
import functools
import json
import os

import numpy as np
import pytest

import distilbert_jax as dj
from conftest import FIXTURES
from distilbert_jax import pipelines, tasks

PIPELINE_FIXTURES = os.path.join(FIXTURES, "pipelines")
CASES = sorted(f[:-5] for f in os.listdir(PIPELINE_FIXTURES) if f.endswith(".json"))
TOL = 1e-4


def load_case(case):
    with open(os.path.join(PIPELINE_FIXTURES, f"{case}.json"), encoding="utf-8") as f:
        return json.load(f)


def model_path(model):
    return model if model.startswith("packaged:") else os.path.join(PIPELINE_FIXTURES, model)


@functools.lru_cache(maxsize=None)
def cached_pipeline(task, model, packing=False):
    return dj.pipeline(task, model=model_path(model), packing=packing)


def differences(ours, reference, where="output"):
    """Asserts structure and every label/offset/token equal; returns (max abs, max rel) over floats."""
    ref_a = _numeric_array(reference)
    if ref_a is not None:
        ours_a = np.asarray(ours, np.float64)
        assert ours_a.shape == ref_a.shape, f"{where}: shape {ours_a.shape} != {ref_a.shape}"
        diff = np.abs(ours_a - ref_a)
        return float(diff.max()), float((diff / np.maximum(np.abs(ref_a), 1e-12)).max())
    if isinstance(reference, dict):
        assert isinstance(ours, dict) and set(ours) == set(reference), \
            f"{where}: keys {sorted(ours) if isinstance(ours, dict) else type(ours)} != {sorted(reference)}"
        found = [differences(ours[k], reference[k], f"{where}.{k}") for k in reference]
    elif isinstance(reference, list):
        assert isinstance(ours, list) and len(ours) == len(reference), \
            f"{where}: {type(ours).__name__} of {len(ours) if isinstance(ours, list) else '?'} != list of {len(reference)}"
        found = [differences(o, r, f"{where}[{i}]") for i, (o, r) in enumerate(zip(ours, reference))]
    elif isinstance(reference, float):
        assert isinstance(ours, float), f"{where}: {ours!r} is not a float"
        return abs(ours - reference), abs(ours - reference) / max(abs(reference), 1e-12)
    else:
        assert ours == reference and type(ours) is type(reference), f"{where}: {ours!r} != {reference!r}"
        return 0.0, 0.0
    return (max((a for a, _ in found), default=0.0), max((r for _, r in found), default=0.0))


def _numeric_array(value):
    """A nested list of floats of one shape as an array, else None."""
    first = value
    while isinstance(first, list) and first:
        first = first[0]
    if not isinstance(value, list) or not isinstance(first, float):
        return None
    try:
        return np.asarray(value, np.float64)
    except ValueError:  # ragged: texts of different lengths
        return None


@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("case", CASES)
def test_pipeline_matches_transformers(case, packing):
    """Every task, with texts padded to buckets or packed several to a row (the same answers)."""
    fixture = load_case(case)
    pipe = cached_pipeline(fixture["task"], fixture["model"], packing)
    for call in fixture["calls"]:
        ours = pipe(call["inputs"], **call["kwargs"])
        abs_diff, _ = differences(ours, call["output"], f"{case} {call['kwargs']}")
        assert abs_diff <= TOL, (case, call["kwargs"], abs_diff)


def test_results_do_not_depend_on_batching():
    """One text alone, in a batch of 1, or among others in any bucket: the same answer."""
    fixture = load_case("question_answering")
    call = fixture["calls"][1]
    small = dj.pipeline("question-answering", model=model_path("distilbert_qa"), batch_size=1,
                        buckets=(8,))
    differences(small(call["inputs"], **call["kwargs"]), call["output"])
    ner = load_case("token_classification")["calls"][3]
    one_by_one = [cached_pipeline("token-classification", "distilbert_ner")(t, **ner["kwargs"])
                  for t in ner["inputs"]]
    differences(one_by_one, ner["output"])


def test_one_compile_per_shape():
    pipe = dj.pipeline("text-classification", model=model_path("distilbert_sentiment"),
                       batch_size=4, buckets=(16, 32), matmul_precision="highest")
    pipe(["john is in paris."] * 3)    # 10 tokens: bucket 16, batch padded to 4
    pipe(["mary is in london."] * 4)   # the same shape
    pipe(["the film was good"])        # a batch of 1: one more
    pipe(["the film was good and the city was great " * 2] * 2)  # bucket 32, batch 2: one more
    assert pipe._apply._cache_size() == 3


def test_batches_are_powers_of_two_up_to_batch_size():
    pipe = dj.pipeline("text-classification", model=model_path("distilbert_sentiment"), batch_size=6,
                       buckets=(16,))
    shapes, apply = [], pipe._apply
    pipe._apply = lambda params, batch: shapes.append(batch["input_ids"].shape) or apply(params, batch)
    pipe(["john is in paris."] * 9)  # a full batch of 6, then 3 texts padded to 4 rows
    assert shapes == [(6, 16), (4, 16)]


def test_token_classification_stride_reads_long_texts(tmp_path):
    pipe = cached_pipeline("token-classification", "distilbert_ner")
    text = " ".join(["john is in paris and mary is in london."] * 12)  # > 64 tokens
    entities = pipe(text, aggregation_strategy="first", stride=16)
    assert entities and all(text[e["start"]:e["end"]].replace(" ", "") ==
                            e["word"].replace(" ", "") for e in entities)
    assert max(e["end"] for e in entities) > len(text) // 2  # the later windows were read


def test_sentence_embeddings_on_a_plain_checkpoint(tiny_bert):
    pipe = dj.pipeline("sentence-embeddings", model=tiny_bert)
    vectors = pipe(["john is in paris", "mary"], return_tensors=True)
    features = dj.pipeline("feature-extraction", model=tiny_bert)(["john is in paris", "mary"],
                                                                    return_tensors=True)
    np.testing.assert_allclose(vectors[1], features[1][0].mean(0), rtol=1e-5, atol=1e-6)
    assert vectors.shape == (2, 32) and not np.allclose(np.linalg.norm(vectors, axis=-1), 1.0)
    unit = pipe("mary", normalize=True)
    assert isinstance(unit, list) and abs(np.linalg.norm(unit) - 1.0) < 1e-5


@pytest.mark.parametrize("fixture", ["distilbert_sentiment", "bert_qa"])
def test_features_of_a_model_with_a_head_come_from_its_encoder(fixture):
    directory = model_path(fixture)
    pair = dj.from_pretrained(directory)
    for task in ("feature-extraction", "sentence-embeddings"):
        ours = dj.pipeline(task, model=pair, tokenizer=directory)("john is in paris", return_tensors=True)
        loaded = dj.pipeline(task, model=directory)("john is in paris", return_tensors=True)
        np.testing.assert_array_equal(ours, loaded)


def test_lengths_and_vocabularies_the_model_cannot_hold_are_refused(tiny_model):
    with pytest.raises(pipelines.PipelineError, match="max_length=1000 is longer than .* positions"):
        dj.pipeline("text-classification", model=model_path("distilbert_sentiment"), max_length=1000)
    model, params = dj.from_pretrained(model_path("distilbert_sentiment"))
    small = model.clone(config=dataclasses.replace(model.config, vocab_size=10))
    with pytest.raises(pipelines.PipelineError, match="vocabulary of .* tokens, more than the model's vocab_size"):
        dj.pipeline("text-classification", model=(small, params), tokenizer=model_path("distilbert_sentiment"))


def test_a_loaded_model_and_tokenizer_pair(tiny_model):
    model, params = dj.from_pretrained(os.path.join(PIPELINE_FIXTURES, "distilbert_sentiment"))
    tok = dj.Tokenizer.from_pretrained(tiny_model)
    pipe = dj.pipeline("sentiment-analysis", model=(model, params), tokenizer=tok)
    assert pipe(["the film was good"])[0]["label"] in ("NEGATIVE", "NEUTRAL", "POSITIVE")


@pytest.mark.parametrize("task, model, inputs, kwargs, message", [
    ("summarization", "distilbert_sentiment", "x", {}, "Unknown task 'summarization'"),
    ("fill-mask", "distilbert_sentiment", "x", {},
     "is a DistilBertForSequenceClassification; the 'fill-mask' pipeline needs a "
     "DistilBertForMaskedLM or BertForMaskedLM checkpoint"),
    ("ner", "distilbert_encoder", "x", {}, "is a DistilBertModel; the 'ner' pipeline needs a "
     "DistilBertForTokenClassification or BertForTokenClassification checkpoint"),
    ("question-answering", "distilbert_ner", "x", {}, "needs a DistilBertForQuestionAnswering"),
    ("text-classification", "distilbert_sentiment", [], {}, "empty list"),
    ("text-classification", "distilbert_sentiment", "", {}, "the input is an empty string"),
    ("text-classification", "distilbert_sentiment", ["ok", 3], {}, "input 1 is a int, not a string"),
    ("text-classification", "distilbert_sentiment", "ok", {"topk": 2}, "has no option 'topk'"),
    ("text-classification", "distilbert_sentiment", "ok", {"function_to_apply": "relu"},
     "function_to_apply='relu' is not one of"),
    ("fill-mask", "distilbert_fill_mask", "no mask here", {}, "has no [MASK] token"),
    ("question-answering", "distilbert_qa", {"question": "who?", "context": ""}, {},
     "the input's context is an empty string"),
    ("question-answering", "distilbert_qa", {"question": "who?"}, {}, "with 'question' and 'context'"),
    ("token-classification", "distilbert_ner", "x", {"aggregation_strategy": "longest"},
     "aggregation_strategy='longest' is not one of"),
    ("token-classification", "distilbert_ner", "x", {"stride": 8}, "stride needs an aggregation"),
])
def test_bad_input_is_one_sentence(task, model, inputs, kwargs, message):
    with pytest.raises(pipelines.PipelineError) as e:
        pipe = cached_pipeline(task, model)
        pipe(inputs, **kwargs)
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_each_task_the_registry_gives_a_pipeline_has_one_reading_its_entry():
    assert set(pipelines.PIPELINES) == {name for name, spec in tasks.TASKS.items() if spec.pipeline}
    for name, cls in pipelines.PIPELINES.items():
        spec = tasks.TASKS[name]
        assert (cls.task, cls.head, cls.per_token) == (name, spec.head, spec.per_token)

