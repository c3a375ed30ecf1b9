"""GLUE: all nine tasks from the original TSV layout or TFDS `glue/*`, with the official metrics.

Each task is one `GlueSpec` line; adding a GLUE-like task (single sentence or pair, classification or
regression) is one more spec. TSVs are read as TFDS does: tab-separated, quoting off; CoLA train/dev
have no header.
"""

from __future__ import annotations

import csv
import dataclasses
import os

import numpy as np

from distilbert_jax import metrics, storage
from distilbert_jax.data.task import DataError, Features, Task, check_file

csv.field_size_limit(1 << 24)


@dataclasses.dataclass(frozen=True)
class GlueSpec:
    directory: str  # folder name in the GLUE download, also the submission file stem
    text: tuple[str, ...]  # one or two text columns
    label: str | None  # label column (None: regression score column given by `score`)
    labels: tuple[str, ...] | None  # label values as written in the files, in id order
    label_names: tuple[str, ...] | None  # human names in id order (TFDS's ClassLabel names)
    metrics: tuple[str, ...]
    dev_files: tuple[str, ...] = ("dev.tsv",)
    test_files: tuple[str, ...] = ("test.tsv",)
    headerless_columns: tuple[str, ...] | None = None  # CoLA train/dev
    tfds_text: tuple[str, ...] | None = None  # TFDS feature names when they differ from `text`


SPECS = {
    "cola": GlueSpec("CoLA", ("sentence",), "label", ("0", "1"), ("unacceptable", "acceptable"),
                     ("matthews_correlation",),
                     headerless_columns=("source", "label", "original_label", "sentence")),
    "sst2": GlueSpec("SST-2", ("sentence",), "label", ("0", "1"), ("negative", "positive"),
                     ("accuracy",)),
    "mrpc": GlueSpec("MRPC", ("#1 String", "#2 String"), "Quality", ("0", "1"),
                     ("not_equivalent", "equivalent"), ("accuracy", "f1"),
                     tfds_text=("sentence1", "sentence2")),
    "stsb": GlueSpec("STS-B", ("sentence1", "sentence2"), "score", None, None,
                     ("pearson", "spearmanr")),
    "qqp": GlueSpec("QQP", ("question1", "question2"), "is_duplicate", ("0", "1"),
                    ("not_duplicate", "duplicate"), ("accuracy", "f1")),
    "mnli": GlueSpec("MNLI", ("sentence1", "sentence2"), "gold_label",
                     ("entailment", "neutral", "contradiction"),
                     ("entailment", "neutral", "contradiction"), ("accuracy",),
                     dev_files=("dev_matched.tsv", "dev_mismatched.tsv"),
                     test_files=("test_matched.tsv", "test_mismatched.tsv"),
                     tfds_text=("premise", "hypothesis")),
    "qnli": GlueSpec("QNLI", ("question", "sentence"), "label", ("entailment", "not_entailment"),
                     ("entailment", "not_entailment"), ("accuracy",)),
    "rte": GlueSpec("RTE", ("sentence1", "sentence2"), "label", ("entailment", "not_entailment"),
                    ("entailment", "not_entailment"), ("accuracy",)),
    "wnli": GlueSpec("WNLI", ("sentence1", "sentence2"), "label", ("0", "1"),
                     ("not_entailment", "entailment"), ("accuracy",)),
}
_SUBMISSION_NAMES = {"dev_matched.tsv": "MNLI-m", "dev_mismatched.tsv": "MNLI-mm",
                     "test_matched.tsv": "MNLI-m", "test_mismatched.tsv": "MNLI-mm"}
_TFDS_SPLITS = {"train": "train", "dev": "validation", "test": "test"}


@dataclasses.dataclass
class GlueExample:
    texts: tuple[str, ...]
    label: float | int  # class id, regression score, or -1 when unlabelled (test)
    index: int  # row index in its file (the GLUE submission "index")


class GlueTask(Task):
    """One GLUE task (or a GLUE-like one given its `spec`). `data_dir` holds the task folder's TSVs;
    source='tfds' reads TFDS instead.

    For MNLI the dev split is `dev_matched.tsv`; pass split='dev_mismatched' for the other one.
    """

    def __init__(self, name: str, data_dir: str | None = None, source: str = "tsv",
                 spec: GlueSpec | None = None):
        if spec is None and name not in SPECS:
            raise DataError(f"Unknown GLUE task {name!r}; choose one of {sorted(SPECS)}.")
        if source not in ("tsv", "tfds"):
            raise DataError(f"source={source!r} must be 'tsv' or 'tfds'.")
        self.name, self.spec, self.data_dir, self.source = name, spec or SPECS[name], data_dir, source
        self.head = "sequence_classification"
        self.problem_type = "regression" if self.spec.labels is None else "single_label_classification"
        self.metric_for_best = self.spec.metrics[0]

    @property
    def label_names(self):
        return self.spec.label_names

    # --- loading --------------------------------------------------------------------------------------
    def split_file(self, split: str) -> str:
        spec = self.spec
        files = {"train": "train.tsv", "dev": spec.dev_files[0], "test": spec.test_files[0],
                 "dev_mismatched": spec.dev_files[-1], "test_mismatched": spec.test_files[-1]}
        if split not in files:
            raise DataError(f"Unknown split {split!r} for GLUE {self.name}; use one of {sorted(files)}.")
        if self.data_dir is None:
            raise DataError(f"GLUE {self.name}: set data_dir to the folder holding {files[split]}.")
        return os.path.join(self.data_dir, files[split])

    def load(self, split: str) -> list[GlueExample]:
        if self.source == "tfds":
            return self._load_tfds(split)
        path = check_file(self.split_file(split))
        with open(path, encoding="utf-8-sig", newline="") as f:
            rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
        if not rows:
            raise DataError(f"{path} is empty.")
        headerless = self.spec.headerless_columns and split in ("train", "dev")
        header = list(self.spec.headerless_columns) if headerless else rows[0]
        body = rows if headerless else rows[1:]
        first_line = 1 if headerless else 2
        missing = [c for c in self.spec.text if c not in header]
        if missing:
            raise DataError(f"{path}: header {header} lacks column(s) {missing}.")
        labelled = self.spec.label in header
        examples = []
        for n, row in enumerate(body):
            line = first_line + n
            if len(row) != len(header):
                raise DataError(f"{path}:{line}: expected {len(header)} tab-separated fields, "
                                f"found {len(row)}.")
            values = dict(zip(header, row))
            label = self._parse_label(values[self.spec.label], path, line) if labelled else -1
            index = int(values["index"]) if "index" in values and values["index"].isdigit() else n
            examples.append(GlueExample(tuple(values[c] for c in self.spec.text), label, index))
        if not examples:
            raise DataError(f"{path} has no examples, only a header.")
        return examples

    def _parse_label(self, value: str, path: str, line: int):
        if self.spec.labels is None:
            try:
                return float(value)
            except ValueError:
                raise DataError(f"{path}:{line}: score {value!r} is not a number.") from None
        if value not in self.spec.labels:
            raise DataError(f"{path}:{line}: label {value!r} is not one of {list(self.spec.labels)}.")
        return self.spec.labels.index(value)

    def _load_tfds(self, split: str) -> list[GlueExample]:
        try:
            import tensorflow_datasets as tfds
        except ImportError:
            raise DataError("source='tfds' needs tensorflow-datasets: pip install -e '.[tfds]'.") from None
        tfds_split = _TFDS_SPLITS.get(split, split)
        if self.name == "mnli" and tfds_split in ("validation", "test"):
            tfds_split += "_matched"
        source = tfds.data_source(f"glue/{self.name}", split=tfds_split)
        columns = self.spec.tfds_text or self.spec.text
        examples = []
        for record in source:
            texts = tuple(_text(record[c]) for c in columns)
            label = record["label"]
            label = float(label) if self.spec.labels is None else int(label)
            examples.append(GlueExample(texts, label, int(record["idx"])))
        return examples

    # --- encoding and metrics --------------------------------------------------------------------------
    def encode(self, examples, tokenizer, max_length):
        texts = [e.texts[0] for e in examples]
        pairs = [e.texts[1] for e in examples] if len(self.spec.text) == 2 else None
        enc = tokenizer(texts, pairs, truncation=True, max_length=max_length,
                        return_token_type_ids=True)
        inputs = {k: [np.asarray(row, np.int32) for row in enc[k]] for k in ("input_ids", "token_type_ids")}
        dtype = np.float32 if self.spec.labels is None else np.int32
        labels = np.array([e.label for e in examples], dtype)
        return Features(inputs, {"labels": labels}, examples, np.arange(len(examples)))

    def predictions(self, outputs) -> np.ndarray:
        logits = np.asarray(outputs["logits"])
        return logits[:, 0] if self.spec.labels is None else logits.argmax(-1)

    def evaluate(self, features, outputs):
        preds = self.predictions(outputs)
        refs = np.array([e.label for e in features.examples])
        if np.any(refs == -1) and self.spec.labels is not None:
            raise DataError(f"GLUE {self.name}: this split has no labels to evaluate against.")
        return {m: metrics.GLUE_METRICS[m](preds, refs) for m in self.spec.metrics}

    def write_predictions(self, features, outputs, directory, split):
        """`<TASK>.tsv` with `index<TAB>prediction`, the GLUE server's format."""
        preds = self.predictions(outputs)
        stem = _SUBMISSION_NAMES.get(os.path.basename(self.split_file(split)), self.spec.directory)
        path = os.path.join(directory, f"{stem}.tsv")
        storage.makedirs(directory)
        values = (f"{pred:.3f}" if self.spec.labels is None else self.spec.labels[int(pred)]
                  for pred in preds)
        storage.write_text(path, "index\tprediction\n" + "".join(
            f"{example.index}\t{value}\n" for example, value in zip(features.examples, values)))
        return path


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
