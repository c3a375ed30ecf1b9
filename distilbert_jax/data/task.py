"""The `Task` seam and the batching every task shares.

A task knows its data (local files in the original formats, or TFDS), its head and label space, how to
encode examples with the tokenizer, and how to turn model outputs into the official metric. The
training loop only sees `Features` and padded numpy batches, so one loop serves every benchmark.
"""

from __future__ import annotations

import abc
import dataclasses
import itertools
import os
import queue
import threading
from typing import Any, Iterator, Sequence

import jax
import numpy as np

from distilbert_jax import tasks
from distilbert_jax.data.packing import Packer
from distilbert_jax.errors import UserError
from distilbert_jax.losses import IGNORE_INDEX


class DataError(UserError, ValueError):
    """A data file is missing or malformed; the message names the file (and line)."""


@dataclasses.dataclass
class Features:
    """An encoded split: one row per model input, ragged along the sequence axis.

    inputs: input_ids and token_type_ids, each row [length] or [choices, length]; an
      attention_mask only where rows are not all real tokens (uneven choices). Which of them a
      model reads is decided by `models.model_inputs`.
    targets: training labels per row: a scalar, or a [length] array for per-token labels.
    examples / row_to_example: the raw examples and which one each row came from (QA windows).
    extras: per-row data the metric needs (offsets, word ids).
    """
    inputs: dict[str, list[np.ndarray]]
    targets: dict[str, Any]
    examples: list
    row_to_example: np.ndarray
    extras: dict[str, list] = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.inputs["input_ids"])

    def lengths(self) -> np.ndarray:
        return np.array([ids.shape[-1] for ids in self.inputs["input_ids"]])


class Task(abc.ABC):
    """What a benchmark must say about itself for the shared fine-tuning loop."""

    name: str
    head: str  # a key of models.MODEL_CLASSES[family]
    problem_type: str | None = None
    metric_for_best: str  # the key of evaluate()'s dict that picks the best checkpoint
    choices: int = 0  # multiple choice: the rows [choices, length] each example becomes

    @property
    @abc.abstractmethod
    def label_names(self) -> tuple[str, ...] | None:
        """Label names in id order (None for regression and span tasks)."""

    @property
    def num_labels(self) -> int:
        return len(self.label_names) if self.label_names else (1 if self.head != "question_answering" else 2)

    @abc.abstractmethod
    def load(self, split: str) -> list:
        """Raw examples of a split; a DataError names the file and line of any bad row."""

    @abc.abstractmethod
    def encode(self, examples: list, tokenizer, max_length: int) -> Features:
        """Tokenised rows (with token types) and their training targets."""

    @abc.abstractmethod
    def evaluate(self, features: Features, outputs: dict[str, list]) -> dict[str, float]:
        """The official metric(s) from per-row model outputs (logits, trimmed to each row's length)."""

    def write_predictions(self, features: Features, outputs: dict[str, list], directory: str,
                          split: str) -> str | None:
        """Writes predictions in the benchmark's submission format; returns the file path."""
        return None

    @property
    def per_token_outputs(self) -> bool:
        """Whether the head's outputs have a length axis (trimmed to each row's length)."""
        return bool(tasks.for_head(self.head).per_token)

    def example_features(self, rows: int, length: int) -> Features:
        """`rows` placeholder rows of `length` tokens with this task's inputs and targets: the
        shapes of its longest batches, which the plan compiles for (no file is read)."""
        shape = (self.choices, length) if self.choices else (length,)
        inputs = {"input_ids": [np.ones(shape, np.int32)] * rows,
                  "token_type_ids": [np.zeros(shape, np.int32)] * rows}
        if self.head == "question_answering":
            targets = {"start_positions": [0] * rows, "end_positions": [0] * rows}
        elif self.head == "token_classification":
            targets = {"labels": [np.zeros(length, np.int32)] * rows}
        else:
            targets = {"labels": np.zeros(rows, np.float32 if self.problem_type == "regression" else np.int32)}
        return Features(inputs, targets, [None] * rows, np.arange(rows))


def check_file(path: str) -> str:
    if not os.path.isfile(path):
        raise DataError(f"Data file {path!r} does not exist.")
    return path


# --- batching ---------------------------------------------------------------------------------------

def bucket_for(length: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds `length` (so XLA compiles one shape per bucket)."""
    for bucket in buckets:
        if length <= bucket:
            return bucket
    return int(length)


def packer_for(packing: bool, length: int, data_ways: int = 1, micro_batches: int = 1) -> Packer | None:
    """The Packer of rows of `length` (None unless `packing`), each micro-batch's rows split evenly
    over the `data_ways` devices."""
    return Packer(length, data_ways, micro_batches) if packing else None


def collate(features: Features, rows: Sequence[int], length: int, pad_id: int,
            batch_size: int | None = None) -> dict[str, dict[str, np.ndarray]]:
    """{"inputs": ..., "targets": ...}: rows padded to `length` (and the batch to `batch_size`
    with empty rows, whose outputs the caller drops) as numpy arrays.

    input_ids pad with `pad_id`, token types with 0, per-token labels with -100.
    """
    batch_size = batch_size or len(rows)
    first = features.inputs["input_ids"][rows[0] if len(rows) else 0]  # shape template
    shape = (batch_size, *first.shape[:-1], length)
    inputs = {"input_ids": np.full(shape, pad_id, np.int32),
              "attention_mask": np.zeros(shape, np.int32)}
    if "token_type_ids" in features.inputs:
        inputs["token_type_ids"] = np.zeros(shape, np.int32)
    for i, row in enumerate(rows):
        ids = features.inputs["input_ids"][row][..., :length]
        n = ids.shape[-1]
        inputs["input_ids"][i, ..., :n] = ids
        for key in ("attention_mask", "token_type_ids"):
            if key in features.inputs:  # multiple choice carries its own mask for uneven choices
                inputs[key][i, ..., :n] = features.inputs[key][row][..., :length]
        if "attention_mask" not in features.inputs:
            inputs["attention_mask"][i, ..., :n] = 1
    targets = {}
    for key, values in features.targets.items():
        sample = values[rows[0] if len(rows) else 0]
        if np.ndim(sample) == 0:
            column = np.zeros((batch_size,), np.asarray(values).dtype)
            column[: len(rows)] = np.asarray(values)[np.asarray(rows, int)]
        else:
            column = np.full((batch_size, length), IGNORE_INDEX, np.int32)
            for i, row in enumerate(rows):
                column[i, : len(values[row][:length])] = values[row][:length]
        targets[key] = column
    return {"inputs": inputs, "targets": targets}


def train_batches(features: Features, batch_size: int, seed: int, start_step: int, pad_id: int,
                  buckets: Sequence[int], process: tuple[int, int] = (0, 1),
                  packer: Packer | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Endless shuffled batches; batch k is a pure function of (seed, k), so resuming is exact.

    Each epoch is a fresh permutation from (seed, epoch); the last incomplete batch is dropped.
    With `process=(index, count)` each process collates only its contiguous share of the rows,
    padded to the bucket of the whole global batch so every process agrees on the shape. With a
    `packer`, the same batch is packed (see data/packing.py).
    """
    _check_train_rows(features, batch_size, process)
    lengths = features.lengths()
    for step in itertools.count(start_step):
        rows = batch_rows(len(features), batch_size, seed, step)
        length = bucket_for(int(lengths[rows].max()), buckets)
        if packer is None:
            yield collate(features, _share(rows, batch_size, process), length, pad_id)
        else:
            yield packer(collate(features, rows, length, pad_id), process)


def stacked_train_batches(features: Features, batch_size: int, seeds: Sequence[int], start_step: int,
                          pad_id: int, buckets: Sequence[int],
                          process: tuple[int, int] = (0, 1),
                          packer: Packer | None = None) -> Iterator[dict[str, np.ndarray]]:
    """The `train_batches` of one seed per stacked run, stacked on a leading runs axis: at each
    step every run's own batch, all padded to the longest of their buckets (and, packed, to the
    most rows any of them needs). Padding is masked out of every loss and does not move dropout's
    bits, so only the summation order of the padded slots can differ."""
    _check_train_rows(features, batch_size, process)
    lengths = features.lengths()
    for step in itertools.count(start_step):
        rows = [batch_rows(len(features), batch_size, seed, step) for seed in seeds]
        length = max(bucket_for(int(lengths[r].max()), buckets) for r in rows)
        if packer is None:
            batches = [collate(features, _share(r, batch_size, process), length, pad_id) for r in rows]
        else:
            whole = [collate(features, r, length, pad_id) for r in rows]
            most = max(packer.block_rows(b, process[1]) for b in whole)
            batches = [packer(b, process, rows=most) for b in whole]
        yield jax.tree.map(lambda *arrays: np.stack(arrays), *batches)


def batch_rows(n_rows: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """The rows of training batch `step` for `seed`: epoch e is the permutation drawn from (seed, e)."""
    epoch, index = divmod(step, n_rows // batch_size)
    order = np.random.default_rng([seed, epoch]).permutation(n_rows)
    return order[index * batch_size:(index + 1) * batch_size]


def _check_train_rows(features: Features, batch_size: int, process: tuple[int, int]) -> None:
    _check_shares(batch_size, process)
    if len(features) // batch_size == 0:
        raise DataError(f"{len(features)} training rows cannot fill one batch of {batch_size}.")


def eval_batches(features: Features, batch_size: int, pad_id: int,
                 buckets: Sequence[int], process: tuple[int, int] = (0, 1),
                 packer: Packer | None = None) -> Iterator[tuple[np.ndarray, dict]]:
    """(global rows, local batch) over every row once, sorted by length so padding is small.

    Every batch has `batch_size` slots (empty rows fill the last one); slot i of the global batch
    holds `rows[i]`. With a `packer`, each batch is packed (see data/packing.py).
    """
    _check_shares(batch_size, process)
    lengths = features.lengths()
    order = np.argsort(lengths, kind="stable")
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        length = bucket_for(int(lengths[rows].max()), buckets)
        if packer is None:
            local = _share(rows, batch_size, process)
            yield rows, collate(features, local, length, pad_id, batch_size // process[1])
        else:
            yield rows, packer(collate(features, rows, length, pad_id, batch_size), process)


def _check_shares(batch_size: int, process: tuple[int, int]) -> None:
    if batch_size % process[1]:
        raise DataError(f"batch size {batch_size} is not divisible by {process[1]} processes.")


def _share(rows: np.ndarray, batch_size: int, process: tuple[int, int]) -> np.ndarray:
    """The rows in this process's contiguous block of the batch's slots."""
    per = batch_size // process[1]
    return rows[process[0] * per:(process[0] + 1) * per]


def prefetch(iterator: Iterator, size: int = 2) -> Iterator:
    """Runs `iterator` in a background thread, `size` items ahead, so the step never waits on the host."""
    items: queue.Queue = queue.Queue(maxsize=size)
    done = object()

    def worker():
        try:
            for item in iterator:
                items.put(item)
        except BaseException as e:  # re-raised in the consumer
            items.put(e)
        items.put(done)

    threading.Thread(target=worker, daemon=True).start()
    while (item := items.get()) is not done:
        if isinstance(item, BaseException):
            raise item
        yield item
