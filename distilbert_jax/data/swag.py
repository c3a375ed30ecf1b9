"""Multiple choice on SWAG-format CSV (`sent1`, `sent2`, `ending0..3`, `label`), scored by accuracy.

Each example becomes [choices, length] rows: first segment `sent1`, second `sent2 + " " + ending_i`,
as transformers' run_swag builds them.
"""

from __future__ import annotations

import csv
import dataclasses
import os

import numpy as np

from distilbert_jax import metrics
from distilbert_jax.data.task import DataError, Features, Task, check_file

ENDINGS = ("ending0", "ending1", "ending2", "ending3")
FILES = {"train": "train.csv", "dev": "val.csv", "test": "test.csv"}


@dataclasses.dataclass
class ChoiceExample:
    context: str
    start: str
    endings: tuple[str, ...]
    label: int  # -1 when unlabelled


class SwagTask(Task):
    head = "multiple_choice"
    metric_for_best = "accuracy"
    choices = len(ENDINGS)

    def __init__(self, data_dir: str | None, name: str = "swag"):
        if not data_dir:
            raise DataError(f"{name}: set data_dir to the folder holding {sorted(FILES.values())}.")
        self.name, self.data_dir = name, data_dir

    @property
    def label_names(self):
        return None

    @property
    def num_labels(self) -> int:
        return 2  # unused by the multiple-choice head, which scores each choice with one logit

    def load(self, split: str) -> list[ChoiceExample]:
        if split not in FILES:
            raise DataError(f"Unknown split {split!r} for {self.name}; use one of {sorted(FILES)}.")
        path = check_file(os.path.join(self.data_dir, FILES[split]))
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in ("sent1", "sent2", *ENDINGS) if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(f"{path}: header lacks column(s) {missing}.")
            examples = []
            for row in reader:
                line = reader.line_num
                if None in row or any(row[c] is None for c in ("sent1", "sent2", *ENDINGS)):
                    raise DataError(f"{path}:{line}: wrong number of fields.")
                label = row.get("label")
                if label not in (None, "") and label not in ("0", "1", "2", "3"):
                    raise DataError(f"{path}:{line}: label {label!r} is not one of 0, 1, 2, 3.")
                examples.append(ChoiceExample(row["sent1"], row["sent2"],
                                              tuple(row[c] for c in ENDINGS),
                                              int(label) if label not in (None, "") else -1))
        if not examples:
            raise DataError(f"{path} has no examples, only a header.")
        return examples

    def encode(self, examples, tokenizer, max_length):
        firsts = [e.context for e in examples for _ in ENDINGS]
        seconds = [f"{e.start} {ending}" for e in examples for ending in e.endings]
        enc = tokenizer(firsts, seconds, truncation=True, max_length=max_length,
                        return_token_type_ids=True)
        keys = ["input_ids", "attention_mask", "token_type_ids"]
        inputs = {k: [] for k in keys}
        for i in range(len(examples)):
            choices = enc["input_ids"][i * 4:(i + 1) * 4]
            width = max(len(r) for r in choices)
            for k in keys:
                stacked = np.full((4, width), tokenizer.pad_token_id if k == "input_ids" else 0, np.int32)
                for j, r in enumerate(choices):
                    stacked[j, : len(r)] = 1 if k == "attention_mask" else enc[k][i * 4 + j]
                inputs[k].append(stacked)
        labels = np.array([e.label for e in examples], np.int32)
        return Features(inputs, {"labels": labels}, examples, np.arange(len(examples)))

    def evaluate(self, features, outputs):
        preds = np.asarray(outputs["logits"]).argmax(-1)
        return {"accuracy": metrics.accuracy(preds, [e.label for e in features.examples])}
