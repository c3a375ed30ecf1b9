"""Token classification on CoNLL-2003-format files, scored with seqeval-style entity F1.

Files: one token a line (`word POS chunk TAG`, the tag last), a blank line between sentences,
`-DOCSTART-` lines skipped; IOB1 (the original eng.* files) and IOB2 both work. Each word's label goes
on its first sub-token; the other sub-tokens get -100, as transformers' run_ner does.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from distilbert_jax import metrics, storage
from distilbert_jax.data.task import DataError, Features, Task, check_file
from distilbert_jax.losses import IGNORE_INDEX

# transformers' conll2003 label order.
CONLL_LABELS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")
LAYOUTS = {  # split -> file name, for the two layouts in which CoNLL-2003 circulates
    "iob1": {"train": "eng.train", "dev": "eng.testa", "test": "eng.testb"},
    "iob2": {"train": "train.txt", "dev": "valid.txt", "test": "test.txt"},
}


@dataclasses.dataclass
class Sentence:
    words: list[str]
    tags: list[str]


def read_conll(path: str, labels: tuple[str, ...]) -> list[Sentence]:
    """Sentences of a CoNLL file; a line without a tag, or a tag outside `labels`, names its line."""
    sentences, words, tags = [], [], []
    with open(check_file(path), encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            line = line.strip()
            if not line or line.startswith("-DOCSTART-"):
                if words:
                    sentences.append(Sentence(words, tags))
                    words, tags = [], []
                continue
            fields = line.split()
            if len(fields) < 2:
                raise DataError(f"{path}:{line_number}: expected 'word ... TAG', found {line!r}.")
            if fields[-1] not in labels:
                raise DataError(f"{path}:{line_number}: tag {fields[-1]!r} is not one of {list(labels)}.")
            words.append(fields[0])
            tags.append(fields[-1])
    if words:
        sentences.append(Sentence(words, tags))
    if not sentences:
        raise DataError(f"{path} holds no sentences.")
    return sentences


class ConllTask(Task):
    """CoNLL-2003 NER (or any CoNLL-format tagging with `labels`)."""

    head = "token_classification"
    metric_for_best = "f1"

    def __init__(self, data_dir: str | None, layout: str = "iob2",
                 labels: tuple[str, ...] = CONLL_LABELS, name: str = "conll2003"):
        if layout not in LAYOUTS:
            raise DataError(f"layout={layout!r} must be one of {sorted(LAYOUTS)}.")
        if not data_dir:
            raise DataError(f"{name}: set data_dir to the folder holding {sorted(LAYOUTS[layout].values())}.")
        self.name, self.data_dir, self.layout, self._labels = name, data_dir, layout, tuple(labels)

    @property
    def label_names(self):
        return self._labels

    def load(self, split: str) -> list[Sentence]:
        files = LAYOUTS[self.layout]
        if split not in files:
            raise DataError(f"Unknown split {split!r} for {self.name}; use one of {sorted(files)}.")
        return read_conll(os.path.join(self.data_dir, files[split]), self._labels)

    def encode(self, examples, tokenizer, max_length):
        enc = tokenizer([s.words for s in examples], is_split_into_words=True, truncation=True,
                        max_length=max_length, return_token_type_ids=True, return_word_ids=True)
        label_ids = {label: i for i, label in enumerate(self._labels)}
        labels, word_ids = [], []
        for sentence, words in zip(examples, enc["word_ids"]):
            row, previous = [], None
            for w in words:
                row.append(label_ids[sentence.tags[w]] if w is not None and w != previous else IGNORE_INDEX)
                previous = w
            labels.append(np.asarray(row, np.int32))
            word_ids.append(words)
        inputs = {k: [np.asarray(row, np.int32) for row in enc[k]] for k in ("input_ids", "token_type_ids")}
        return Features(inputs, {"labels": labels}, examples, np.arange(len(examples)),
                        {"word_ids": word_ids})

    def word_predictions(self, features, outputs) -> list[list[str]]:
        """One tag per word from its first sub-token; words cut off by truncation are tagged O."""
        predicted = []
        for sentence, words, logits in zip(features.examples, features.extras["word_ids"],
                                           outputs["logits"]):
            tags = ["O"] * len(sentence.words)
            ids = np.asarray(logits).argmax(-1)
            seen = set()
            for position, w in enumerate(words):
                if w is not None and w not in seen:
                    tags[w] = self._labels[int(ids[position])]
                    seen.add(w)
            predicted.append(tags)
        return predicted

    def evaluate(self, features, outputs):
        return metrics.entity_f1(self.word_predictions(features, outputs),
                                 [s.tags for s in features.examples])

    def write_predictions(self, features, outputs, directory, split):
        """CoNLL format: `word gold predicted` per line, blank line between sentences (conlleval's input)."""
        storage.makedirs(directory)
        path = os.path.join(directory, f"{self.name}_{split}.txt")
        storage.write_text(path, "".join(
            "".join(f"{word} {gold} {pred}\n" for word, gold, pred in zip(s.words, s.tags, tags)) + "\n"
            for s, tags in zip(features.examples, self.word_predictions(features, outputs))))
        return path

