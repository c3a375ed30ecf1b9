"""Your own data, no code needed: text classification (one text or a pair, any label set, or a
regression score) from CSV, TSV or JSON lines with named columns, and token classification from
JSON lines in the Hugging Face `datasets` style ({"tokens": [...], "ner_tags": [...]}).

A data folder holds `train.<ext>` and optionally `dev.<ext>` (or `validation`/`valid`) and
`test.<ext>`, where <ext> is csv, tsv or jsonl. The label set is read from the training file.
"""

from __future__ import annotations

import csv
import io
import json
import os
from typing import Iterator

from distilbert_jax.data.glue import GlueExample, GlueSpec, GlueTask
from distilbert_jax.data.ner import ConllTask, Sentence
from distilbert_jax.data.task import DataError

KINDS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}  # extension -> format
SPLIT_NAMES = {"train": ("train",), "dev": ("dev", "validation", "valid"), "test": ("test",)}


def split_file(data_dir: str | None, split: str, task: str) -> str:
    """The one file of `split` in `data_dir` (train.csv, dev.tsv, validation.jsonl, ...)."""
    if not data_dir:
        raise DataError(f"{task}: set data_dir to the folder holding train.csv (or .tsv, .jsonl).")
    if split not in SPLIT_NAMES:
        raise DataError(f"Unknown split {split!r} for {task}; use one of {sorted(SPLIT_NAMES)}.")
    found = [os.path.join(data_dir, stem + ext) for stem in SPLIT_NAMES[split] for ext in KINDS
             if os.path.isfile(os.path.join(data_dir, stem + ext))]
    if not found:
        names = ", ".join(f"{stem}.csv/.tsv/.jsonl/.json" for stem in SPLIT_NAMES[split])
        raise DataError(f"{task}: no {split} file in {data_dir!r} (looked for {names}).")
    if len(found) > 1:
        raise DataError(f"{task}: {data_dir!r} holds several {split} files {found}; keep one.")
    return found[0]


class MissingColumn(DataError):
    """A file or row lacks a column the task (or command) reads; `.column` names it."""

    def __init__(self, message: str, column: str):
        super().__init__(message)
        self.column = column


def read_text(path: str) -> str:
    """A UTF-8 text file's contents, without a byte-order mark; anything else is one DataError."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            return f.read().lstrip("\ufeff")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text (byte {e.start}).") from None


def parse_records(name: str, text: str, kind: str, columns=()) -> Iterator[tuple[int, dict]]:
    """(line number, record) of JSON lines (kind "jsonl") or of a CSV/TSV with a header row
    ("csv"/"tsv"), blank rows skipped. A file or row without one of `columns` (MissingColumn), or a
    row that does not parse, is one DataError naming `name` (and the line). The tasks and the
    predict command read their files through here."""
    if kind == "jsonl":
        for line_number, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{name}:{line_number}: not valid JSON ({e.msg} at column {e.colno}).") from None
            if not isinstance(record, dict):
                raise DataError(f"{name}:{line_number}: a JSON {type(record).__name__}, not an object "
                                "of named fields.")
            for column in columns:
                if column not in record:
                    raise MissingColumn(f"{name}:{line_number}: the row has no {column!r} field (it "
                                        f"has {sorted(record)}).", column)
            yield line_number, record
        return
    reader = csv.reader(io.StringIO(text), delimiter="\t" if kind == "tsv" else ",")
    header = next(reader, None)
    if not header:
        raise DataError(f"{name} is empty; a {kind.upper()} file starts with a header row naming its columns.")
    for column in columns:
        if column not in header:
            raise MissingColumn(f"{name} has no column {column!r} (its columns: {', '.join(header)}).",
                                column)
    for row in reader:
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise DataError(f"{name}:{reader.line_num}: {len(row)} cells but the header has "
                            f"{len(header)} columns.")
        yield reader.line_num, dict(zip(header, row))


def read_records(path: str, columns=()) -> list[tuple[int, dict]]:
    """`parse_records` of a .csv, .tsv or .jsonl file, each record holding `columns`."""
    records = list(parse_records(path, read_text(path), KINDS[os.path.splitext(path)[1].lower()], columns))
    if not records:
        raise DataError(f"{path} has no examples.")
    return records


def _sorted_labels(values) -> tuple[str, ...]:
    """Label names in id order: numerically when every label is a number, else alphabetically."""
    values = set(values)
    try:
        return tuple(sorted(values, key=float))
    except ValueError:
        return tuple(sorted(values))


class TextClassificationTask(GlueTask):
    """One text (or a pair) -> one of the labels found in the training file, or a score."""

    def __init__(self, data_dir: str | None, text_columns=("text",), label_column: str = "label",
                 regression: bool = False, labels=(), name: str = "text_classification"):
        if not 1 <= len(text_columns) <= 2:
            raise DataError(f"text_columns={tuple(text_columns)} must name one column or a pair.")
        self.data_dir, self.name = data_dir, name
        self.text_columns, self.label_column = tuple(text_columns), label_column
        if regression:
            labels, metric_names = None, ("pearson", "spearmanr")
        else:
            labels = tuple(str(l) for l in labels) or self._training_labels()
            metric_names = ("accuracy", "f1") if len(labels) == 2 else ("accuracy",)
        spec = GlueSpec(name, self.text_columns, label_column, labels, labels, metric_names)
        super().__init__(name, data_dir, "tsv", spec=spec)

    def _training_labels(self) -> tuple[str, ...]:
        path = split_file(self.data_dir, "train", self.name)
        labels = _sorted_labels(str(r[self.label_column]) for _, r in read_records(path, (self.label_column,)))
        if len(labels) < 2:
            raise DataError(f"{path}: column {self.label_column!r} holds {len(labels)} distinct "
                            f"label(s) {list(labels)}; classification needs at least 2.")
        return labels

    def split_file(self, split: str) -> str:
        return split_file(self.data_dir, split, self.name)

    def load(self, split: str) -> list[GlueExample]:
        path = self.split_file(split)
        examples = []
        for n, record in read_records(path, self.text_columns):
            texts = tuple(str(record[c]) for c in self.text_columns)
            label = (self._parse_label(str(record[self.label_column]), path, n)
                     if self.label_column in record else -1)  # test files may have no labels
            examples.append(GlueExample(texts, label, len(examples)))
        return examples


class TokenClassificationTask(ConllTask):
    """Words -> one tag each, from JSON lines {"tokens": [...], "ner_tags": [...]}; tags are the
    names (e.g. "B-PER"), or ids with `labels` giving their names."""

    def __init__(self, data_dir: str | None, tokens_column: str = "tokens",
                 tags_column: str = "ner_tags", labels=(), name: str = "token_classification"):
        self.name, self.data_dir = name, data_dir
        self.tokens_column, self.tags_column = tokens_column, tags_column
        self._labels = tuple(labels) or self._training_labels()

    def _training_labels(self) -> tuple[str, ...]:
        tags = {str(t) for _, _, tags in self._sentences("train") for t in tags}
        return ("O",) * ("O" in tags) + _sorted_labels(tags - {"O"})

    def _sentences(self, split: str) -> Iterator[tuple[tuple[str, int], list, list]]:
        """((path, line), words, tags) of every record, both lists of the same length."""
        path = split_file(self.data_dir, split, self.name)
        for n, record in read_records(path, (self.tokens_column, self.tags_column)):
            words, tags = record[self.tokens_column], record[self.tags_column]
            if not isinstance(words, list) or not isinstance(tags, list):
                raise DataError(f"{path}:{n}: {self.tokens_column!r} and {self.tags_column!r} must be lists.")
            if len(words) != len(tags):
                raise DataError(f"{path}:{n}: {len(words)} tokens but {len(tags)} tags.")
            yield (path, n), words, tags

    def load(self, split: str) -> list[Sentence]:
        return [Sentence([str(w) for w in words], [self._tag(t, *where) for t in tags])
                for where, words, tags in self._sentences(split)]

    def _tag(self, tag, path: str, line: int) -> str:
        if isinstance(tag, int) and str(tag) not in self._labels:
            if not 0 <= tag < len(self._labels):
                raise DataError(f"{path}:{line}: tag id {tag} is outside the {len(self._labels)} labels.")
            return self._labels[tag]
        if str(tag) not in self._labels:
            raise DataError(f"{path}:{line}: tag {tag!r} is not one of {list(self._labels)}.")
        return str(tag)
