"""The official metrics, in NumPy: GLUE as `evaluate` defines them, SQuAD v1.1/v2.0, seqeval entity F1.

GLUE (huggingface/evaluate `metrics/glue`): accuracy; binary F1 with positive class 1 (MRPC, QQP);
Matthews correlation (CoLA, as sklearn); Pearson and Spearman (STS-B, as scipy). SQuAD: the official
evaluate-v1.1.py normalisation, exact match and token F1, max over gold answers, x100.
"""

from __future__ import annotations

import collections
import re
import string
from typing import Iterable, Mapping, Sequence

import numpy as np


# --- GLUE --------------------------------------------------------------------------------------------

def accuracy(predictions, references) -> float:
    return float(np.mean(np.asarray(predictions) == np.asarray(references)))


def binary_f1(predictions, references) -> float:
    """F1 of the positive class 1 (sklearn's f1_score default); 0 when there are no true positives."""
    p, r = np.asarray(predictions) == 1, np.asarray(references) == 1
    tp = np.sum(p & r)
    return float(2 * tp / (np.sum(p) + np.sum(r))) if tp else 0.0


def matthews_corrcoef(predictions, references) -> float:
    """Multi-class Matthews correlation as sklearn computes it (0 when undefined)."""
    p, r = np.asarray(predictions), np.asarray(references)
    labels = np.union1d(p, r)
    confusion = np.array([[np.sum((r == a) & (p == b)) for b in labels] for a in labels], np.float64)
    t_k, p_k = confusion.sum(axis=1), confusion.sum(axis=0)
    c, s = np.trace(confusion), confusion.sum()
    cov_ytyp = c * s - t_k @ p_k
    cov_ypyp = s * s - p_k @ p_k
    cov_ytyt = s * s - t_k @ t_k
    if cov_ypyp * cov_ytyt == 0:
        return 0.0
    return float(cov_ytyp / np.sqrt(cov_ytyt * cov_ypyp))


def pearson(predictions, references) -> float:
    x, y = np.asarray(predictions, np.float64), np.asarray(references, np.float64)
    x, y = x - x.mean(), y - y.mean()
    return float(np.sum(x * y) / np.sqrt(np.sum(x * x) * np.sum(y * y)))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties sharing their average rank (scipy.stats.rankdata 'average')."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    boundaries = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1], True])
    ranks = np.empty(len(x), np.float64)
    for start, end in zip(boundaries[:-1], boundaries[1:]):
        ranks[order[start:end]] = (start + end + 1) / 2
    return ranks


def spearman(predictions, references) -> float:
    return pearson(_average_ranks(np.asarray(predictions, np.float64)),
                   _average_ranks(np.asarray(references, np.float64)))


GLUE_METRICS = {
    "accuracy": accuracy, "f1": binary_f1, "matthews_correlation": matthews_corrcoef,
    "pearson": pearson, "spearmanr": spearman,
}


def glue_score(scores: Mapping[str, float]) -> float:
    """A task's score in a GLUE table: the mean of its metrics x 100 (the benchmark's convention for
    MRPC, STS-B and QQP), leaving out the evaluation loss that is reported beside them."""
    return 100 * float(np.mean([v for k, v in scores.items() if k != "loss"]))


# --- SQuAD ---------------------------------------------------------------------------------------------

def normalize_answer(text: str) -> str:
    """Lower-case, drop ASCII punctuation, drop the words a/an/the, collapse whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match_score(prediction: str, gold: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(gold)


def f1_score(prediction: str, gold: str) -> float:
    pred_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred_tokens), overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_v1(predictions: Mapping[str, str], golds: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """{question id: answer} against {question id: gold answers}; missing questions score 0."""
    em = f1 = 0.0
    for qid, answers in golds.items():
        if qid not in predictions:
            continue
        em += max(exact_match_score(predictions[qid], a) for a in answers)
        f1 += max(f1_score(predictions[qid], a) for a in answers)
    return {"exact_match": 100.0 * em / len(golds), "f1": 100.0 * f1 / len(golds)}


def squad_v2(predictions: Mapping[str, str], golds: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """SQuAD 2.0: a question with no gold answer is right only when the prediction is empty."""
    scores = {"exact": 0.0, "f1": 0.0}
    has_ans, no_ans = [], []
    for qid, answers in golds.items():
        answers = [a for a in answers if normalize_answer(a)] or [""]
        pred = predictions.get(qid, "")
        em = max(float(normalize_answer(pred) == normalize_answer(a)) for a in answers)
        f1 = max((float(normalize_answer(pred) == normalize_answer(a)) if not normalize_answer(a)
                  or not normalize_answer(pred) else f1_score(pred, a)) for a in answers)
        (has_ans if answers != [""] else no_ans).append((em, f1))
        scores["exact"] += em
        scores["f1"] += f1
    n = len(golds)
    out = {"exact": 100.0 * scores["exact"] / n, "f1": 100.0 * scores["f1"] / n, "total": n}
    for name, group in (("HasAns", has_ans), ("NoAns", no_ans)):
        if group:
            out[f"{name}_exact"] = 100.0 * sum(e for e, _ in group) / len(group)
            out[f"{name}_f1"] = 100.0 * sum(f for _, f in group) / len(group)
    return out


# --- Token classification (seqeval, default mode) -----------------------------------------------------

def get_entities(tags: Sequence[str]) -> set[tuple[str, int, int]]:
    """Chunks (type, start, end) from IOB1 or IOB2 tags, with conlleval's start/end rules."""
    chunks, start, kind = set(), None, None
    previous_prefix, previous_kind = "O", ""
    for i, tag in enumerate(list(tags) + ["O"]):
        prefix, _, this_kind = tag.partition("-") if tag != "O" else ("O", "", "")
        ends = previous_prefix != "O" and (
            prefix in ("O", "B", "S") or this_kind != previous_kind
            or (previous_prefix == "E") or (previous_prefix == "S"))
        if ends and start is not None:
            chunks.add((kind, start, i - 1))
            start = None
        begins = prefix in ("B", "S") or (prefix in ("I", "E") and (
            previous_prefix == "O" or this_kind != previous_kind or previous_prefix in ("E", "S")))
        if begins:
            start, kind = i, this_kind
        previous_prefix, previous_kind = prefix, this_kind
    return chunks


def entity_f1(predictions: Iterable[Sequence[str]], references: Iterable[Sequence[str]]) -> dict:
    """Micro-averaged entity precision, recall and F1 over sentences, as seqeval's default mode."""
    n_pred = n_gold = n_correct = 0
    correct_tokens = total_tokens = 0
    for pred, gold in zip(predictions, references):
        p, g = get_entities(pred), get_entities(gold)
        n_pred, n_gold, n_correct = n_pred + len(p), n_gold + len(g), n_correct + len(p & g)
        correct_tokens += sum(a == b for a, b in zip(pred, gold))
        total_tokens += len(gold)
    precision = n_correct / n_pred if n_pred else 0.0
    recall = n_correct / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1,
            "accuracy": correct_tokens / total_tokens if total_tokens else 0.0}
