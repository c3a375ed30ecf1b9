"""SQuAD v1.1 and v2.0: windows over long contexts, n-best span decoding, the official EM/F1.

Each question becomes one or more windows `[CLS] question [SEP] context-slice [SEP]` of at most
`max_length` tokens, overlapping by `doc_stride`. Training targets are the answer's token span, or
[CLS] when the window does not hold the answer (and for unanswerable v2 questions). Predictions take
the best-scoring valid span over a question's windows (start <= end, at most `max_answer_length`
tokens, inside the context); for v2 the empty answer wins when the [CLS] score beats it by more than
`null_score_diff_threshold`.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from distilbert_jax import metrics, storage
from distilbert_jax.data.task import DataError, Features, Task, check_file


@dataclasses.dataclass
class SquadExample:
    id: str
    question: str
    context: str
    answers: list[str]
    answer_starts: list[int]

    @property
    def is_impossible(self) -> bool:
        return not self.answers


def read_squad(path: str) -> list[SquadExample]:
    """Questions of a SQuAD-format JSON file (v1.1 or v2.0)."""
    with open(check_file(path), encoding="utf-8") as f:
        try:
            data = json.load(f)["data"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise DataError(f"{path} is not a SQuAD JSON file ({type(e).__name__}: {e}).") from None
    examples = []
    for a, article in enumerate(data):
        for p, paragraph in enumerate(article.get("paragraphs", [])):
            context = paragraph.get("context")
            for q, qa in enumerate(paragraph.get("qas", [])):
                where = f"{path}: data[{a}].paragraphs[{p}].qas[{q}]"
                if context is None or "id" not in qa or "question" not in qa:
                    raise DataError(f"{where} lacks a context, id or question.")
                answers = [] if qa.get("is_impossible") else qa.get("answers", [])
                for answer in answers:
                    start, text = answer.get("answer_start", -1), answer.get("text", "")
                    if not 0 <= start <= len(context) - len(text):
                        raise DataError(f"{where}: answer_start {start} lies outside the context.")
                    found = context[start:start + len(text)]
                    if found != text:
                        raise DataError(
                            f"{path}: question {qa['id']!r} has the answer {text!r} at answer_start "
                            f"{start}, but the context there reads {found!r}; fix answer_start "
                            "(it counts characters of the context from 0).")
                examples.append(SquadExample(qa["id"], qa["question"], context,
                                             [x["text"] for x in answers],
                                             [x["answer_start"] for x in answers]))
    if not examples:
        raise DataError(f"{path} holds no questions.")
    return examples


class SquadTask(Task):
    head = "question_answering"

    def __init__(self, data_dir: str | None, version_2: bool = False, source: str = "local",
                 doc_stride: int = 128, max_answer_length: int = 30, n_best: int = 20,
                 null_score_diff_threshold: float = 0.0, train_file: str = "",
                 dev_file: str = ""):
        self.version_2 = version_2
        self.name = "squad_v2" if version_2 else "squad"
        version = "v2.0" if version_2 else "v1.1"
        self.files = {"train": train_file or f"train-{version}.json",
                      "dev": dev_file or f"dev-{version}.json"}
        if source == "local" and not data_dir:
            raise DataError(f"{self.name}: set data_dir to the folder holding {sorted(self.files.values())}.")
        self.data_dir, self.source = data_dir, source
        self.doc_stride, self.max_answer_length, self.n_best = doc_stride, max_answer_length, n_best
        self.null_score_diff_threshold = null_score_diff_threshold
        self.metric_for_best = "f1"

    @property
    def label_names(self):
        return None

    def load(self, split: str) -> list[SquadExample]:
        if split not in self.files:
            raise DataError(f"Unknown split {split!r} for {self.name}; use one of {sorted(self.files)}.")
        if self.source == "tfds":
            return self._load_tfds(split)
        return read_squad(os.path.join(self.data_dir, self.files[split]))

    def _load_tfds(self, split: str) -> list[SquadExample]:
        try:
            import tensorflow_datasets as tfds
        except ImportError:
            raise DataError("source='tfds' needs tensorflow-datasets: pip install -e '.[tfds]'.") from None
        name = "squad/v2.0" if self.version_2 else "squad/v1.1"
        records = tfds.data_source(name, split="train" if split == "train" else "validation")
        decode = lambda v: v.decode("utf-8") if isinstance(v, bytes) else str(v)
        return [SquadExample(decode(r["id"]), decode(r["question"]), decode(r["context"]),
                             [decode(t) for t in r["answers"]["text"]],
                             [int(s) for s in r["answers"]["answer_start"]]) for r in records]

    # --- encoding -------------------------------------------------------------------------------------
    def encode(self, examples, tokenizer, max_length):
        enc = tokenizer([e.question.lstrip() for e in examples], [e.context for e in examples],
                        truncation="only_second", max_length=max_length, stride=self.doc_stride,
                        return_overflowing_tokens=True, return_offsets_mapping=True,
                        return_token_type_ids=True, return_special_tokens_mask=True)
        starts, ends, context_offsets = [], [], []
        for f, sample in enumerate(enc["overflow_to_sample_mapping"]):
            in_context = [t == 1 and s == 0 for t, s in
                          zip(enc["token_type_ids"][f], enc["special_tokens_mask"][f])]
            offsets = [o if c else None for o, c in zip(enc["offset_mapping"][f], in_context)]
            context_offsets.append(offsets)
            start, end = self._target(examples[sample], offsets)
            starts.append(start)
            ends.append(end)
        inputs = {k: [np.asarray(row, np.int32) for row in enc[k]] for k in ("input_ids", "token_type_ids")}
        targets = {"start_positions": np.asarray(starts, np.int32),
                   "end_positions": np.asarray(ends, np.int32)}
        return Features(inputs, targets, examples, np.asarray(enc["overflow_to_sample_mapping"]),
                        {"offsets": context_offsets})

    @staticmethod
    def _target(example: SquadExample, offsets) -> tuple[int, int]:
        """Token span of the first answer in this window, or (0, 0) ([CLS]) when it is not inside."""
        if example.is_impossible:
            return 0, 0
        start_char = example.answer_starts[0]
        end_char = start_char + len(example.answers[0])
        positions = [i for i, o in enumerate(offsets) if o is not None]
        if not positions or offsets[positions[0]][0] > start_char or offsets[positions[-1]][1] < end_char:
            return 0, 0
        start = next(i for i in positions if offsets[i][1] > start_char)
        end = next(i for i in reversed(positions) if offsets[i][0] < end_char)
        return start, end

    # --- decoding and metrics ---------------------------------------------------------------------------
    def postprocess(self, features, outputs) -> tuple[dict[str, str], dict[str, float]]:
        """({question id: answer text}, {question id: null score - best span score})."""
        by_example: dict[int, list[int]] = {}
        for row, example in enumerate(features.row_to_example):
            by_example.setdefault(int(example), []).append(row)
        answers, null_odds = {}, {}
        for index, rows in by_example.items():
            example = features.examples[index]
            best_score, best_text, null_score = -np.inf, "", np.inf
            for row in rows:
                start, end = np.asarray(outputs["start_logits"][row]), np.asarray(outputs["end_logits"][row])
                offsets = features.extras["offsets"][row]
                null_score = min(null_score, float(start[0] + end[0]))
                for i in np.argsort(start)[::-1][: self.n_best]:
                    for j in np.argsort(end)[::-1][: self.n_best]:
                        if (i >= len(offsets) or j >= len(offsets) or offsets[i] is None
                                or offsets[j] is None or j < i or j - i + 1 > self.max_answer_length):
                            continue
                        score = float(start[i] + end[j])
                        if score > best_score:
                            best_score = score
                            best_text = example.context[offsets[i][0]:offsets[j][1]]
            null_odds[example.id] = null_score - best_score
            if self.version_2 and null_odds[example.id] > self.null_score_diff_threshold:
                best_text = ""
            answers[example.id] = best_text
        return answers, null_odds

    def evaluate(self, features, outputs):
        predictions, _ = self.postprocess(features, outputs)
        golds = {e.id: e.answers for e in features.examples}
        if self.version_2:
            return metrics.squad_v2(predictions, golds)
        return metrics.squad_v1(predictions, golds)

    def write_predictions(self, features, outputs, directory, split):
        """predictions.json ({id: answer}, the official format) and, for v2, null_odds.json."""
        predictions, null_odds = self.postprocess(features, outputs)
        storage.makedirs(directory)
        files = {f"{self.name}_{split}_predictions.json": predictions}
        if self.version_2:
            files[f"{self.name}_{split}_null_odds.json"] = null_odds
        for name, value in files.items():
            storage.write_text(os.path.join(directory, name), json.dumps(value, ensure_ascii=False))
        return os.path.join(directory, f"{self.name}_{split}_predictions.json")
