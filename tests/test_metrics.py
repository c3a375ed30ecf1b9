"""Each metric against hand-computed values, then against the reference implementations."""

import numpy as np
import pytest

from distilbert_jax import metrics


def test_glue_metrics_by_hand():
    preds, refs = [1, 1, 1, 0], [1, 0, 1, 1]  # TP=2 FP=1 FN=1 TN=0
    assert metrics.accuracy(preds, refs) == 0.5
    assert metrics.binary_f1(preds, refs) == pytest.approx(2 / 3)
    assert metrics.matthews_corrcoef(preds, refs) == pytest.approx(-1 / 3)  # (0 - 1) / sqrt(3*3*1*1)
    assert metrics.matthews_corrcoef([1, 1, 1], [1, 1, 1]) == 0.0  # undefined -> 0, as sklearn
    assert metrics.binary_f1([0, 0], [0, 0]) == 0.0
    assert metrics.pearson([1, 2, 3], [1, 2, 4]) == pytest.approx(3 / np.sqrt(2 * 42 / 9))
    # ties share ranks: x ranks [1, 2.5, 2.5, 4], y ranks [1, 3, 2, 4]
    assert metrics.spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / np.sqrt(4.5 * 5))


def test_squad_normalisation_and_scores_by_hand():
    assert metrics.normalize_answer("The  Quick, brown fox!") == "quick brown fox"
    assert metrics.normalize_answer("an apple’s “core”") == "apple’s “core”"  # ASCII punctuation only
    assert metrics.f1_score("the cat sat", "a cat sat down") == pytest.approx(0.8)  # P=1, R=2/3
    assert metrics.f1_score("dog", "cat") == 0.0
    assert metrics.exact_match_score("The Beatles.", "beatles")
    scores = metrics.squad_v1({"q1": "Denver Broncos", "q2": "in 1990"},
                              {"q1": ["Denver Broncos", "Broncos"], "q2": ["1990s"], "q3": ["x"]})
    # q1: EM 1, F1 1; q2: EM 0, F1 0 ('in 1990' vs '1990s'); q3 missing: 0
    assert scores == {"exact_match": pytest.approx(100 / 3), "f1": pytest.approx(100 / 3)}


def test_squad_v2_by_hand():
    scores = metrics.squad_v2({"a": "", "b": "Paris", "c": ""},
                              {"a": [], "b": ["Paris"], "c": ["London"]})
    assert scores["exact"] == pytest.approx(200 / 3)
    assert scores["HasAns_exact"] == 50.0 and scores["NoAns_exact"] == 100.0


def test_entities_iob1_and_iob2_by_hand():
    assert metrics.get_entities(["B-PER", "I-PER", "O", "B-LOC"]) == {("PER", 0, 1), ("LOC", 3, 3)}
    # IOB1: an entity starts with I-; B- only splits two adjacent entities of one type
    assert metrics.get_entities(["I-PER", "I-PER", "B-PER", "O", "I-LOC"]) == {
        ("PER", 0, 1), ("PER", 2, 2), ("LOC", 4, 4)}
    assert metrics.get_entities(["I-ORG", "I-LOC"]) == {("ORG", 0, 0), ("LOC", 1, 1)}
    scores = metrics.entity_f1([["B-PER", "I-PER", "O", "B-ORG"]], [["B-PER", "I-PER", "O", "B-LOC"]])
    assert (scores["precision"], scores["recall"], scores["f1"]) == (0.5, 0.5, 0.5)


def test_against_sklearn_scipy_and_seqeval():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    stats = pytest.importorskip("scipy.stats")
    seqeval = pytest.importorskip("seqeval.metrics")
    rng = np.random.default_rng(0)
    for _ in range(20):
        refs, preds = rng.integers(0, 3, 200), rng.integers(0, 3, 200)
        assert metrics.matthews_corrcoef(preds, refs) == pytest.approx(
            sklearn_metrics.matthews_corrcoef(refs, preds))
        b_refs, b_preds = refs % 2, preds % 2
        assert metrics.binary_f1(b_preds, b_refs) == pytest.approx(sklearn_metrics.f1_score(b_refs, b_preds))
        x, y = rng.normal(size=100), rng.integers(0, 6, 100).astype(float)  # y has ties
        assert metrics.pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0])
        assert metrics.spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0])
    tags = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "I-ORG"]
    gold = [[tags[i] for i in rng.integers(0, 6, 12)] for _ in range(50)]
    pred = [[tags[i] for i in rng.integers(0, 6, 12)] for _ in range(50)]
    ours = metrics.entity_f1(pred, gold)
    assert ours["f1"] == pytest.approx(seqeval.f1_score(gold, pred))
    assert ours["precision"] == pytest.approx(seqeval.precision_score(gold, pred))
    assert ours["recall"] == pytest.approx(seqeval.recall_score(gold, pred))
