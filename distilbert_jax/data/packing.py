"""Packed batches: the examples of a batch share rows, so the model computes real tokens, not padding.

Packing is a layout, not a new recipe: a packed batch holds the very batch the unpacked path would
(same examples, same order, same example-layout inputs and targets, so losses and metrics see the
same values) plus `inputs["packing"]`, which says where each example's tokens sit in `rows` rows of
`length` slots (see `models.Packing`). The model scatters the example tokens into those rows on
device, runs the encoder on them and gathers its outputs back, so nothing downstream changes.

Examples are placed by first-fit decreasing; the row count is rounded up (`round_up`, in units of
the data-parallel ways), so XLA compiles a handful of shapes.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np


def first_fit_decreasing(lengths: np.ndarray, capacity: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(row, offset) of each sequence and the number of rows used: longest first, each into the
    first row with room. Empty sequences take no room (row -1)."""
    rows = np.full(len(lengths), -1, np.int64)
    offsets = np.zeros(len(lengths), np.int64)
    free: list[int] = []  # room left in each open row
    for i in np.argsort(-np.asarray(lengths), kind="stable"):
        n = int(lengths[i])
        if n == 0:
            continue
        if n > capacity:
            raise ValueError(f"a sequence of {n} tokens cannot be packed into rows of {capacity}.")
        row = next((r for r, room in enumerate(free) if room >= n), len(free))
        if row == len(free):
            free.append(capacity)
        rows[i], offsets[i] = row, capacity - free[row]
        free[row] -= n
    return rows, offsets, len(free)


def sequence_lengths(attention_mask: np.ndarray) -> np.ndarray:
    """Real tokens of every sequence (choices flattened); refuses a mask that is not a prefix of
    ones (left padding, holes), which packing would read wrongly."""
    mask = attention_mask.reshape(-1, attention_mask.shape[-1]).astype(bool)
    lengths = mask.sum(-1)
    if not np.array_equal(mask, np.arange(mask.shape[-1])[None] < lengths[:, None]):
        raise ValueError("packing needs right-padded rows: every attention mask a run of ones "
                         "followed by zeros.")
    return lengths


def layout(attention_mask: np.ndarray, rows: int, length: int, first_row: int = 0
           ) -> dict[str, np.ndarray]:
    """`models.Packing`'s arrays for one batch: token_index shaped like `attention_mask`, and
    segment_ids / position_ids [rows, length]; indices count from row `first_row` of what the
    model sees (a block that is not the first of its micro-batch)."""
    lengths = sequence_lengths(attention_mask)
    row_of, offset_of, used = first_fit_decreasing(lengths, length)
    if used > rows:
        raise ValueError(f"{used} rows are needed to pack this batch, {rows} were given.")
    example_length = attention_mask.shape[-1]
    token_index = np.full((len(lengths), example_length), -1, np.int32)
    segment_ids = np.zeros((rows, length), np.int32)
    position_ids = np.zeros((rows, length), np.int32)
    segments_in_row = np.zeros(rows, np.int32)
    for i, n in enumerate(lengths):
        if n == 0:
            continue
        row, start = int(row_of[i]), int(offset_of[i])
        segments_in_row[row] += 1
        token_index[i, :n] = (first_row + row) * length + start + np.arange(n)
        segment_ids[row, start:start + n] = segments_in_row[row]
        position_ids[row, start:start + n] = np.arange(n)
    return {"token_index": token_index.reshape(attention_mask.shape),
            "segment_ids": segment_ids, "position_ids": position_ids}


ROW_COUNTS = sorted({1 << k for k in range(32)} | {3 << k for k in range(32)})  # 1 2 3 4 6 8 12 ...


def round_up(n: int) -> int:
    """The smallest of ROW_COUNTS that holds n rows: at most a third of the rows go spare, and
    about two shapes compile per doubling of the rows a batch needs."""
    return next(count for count in ROW_COUNTS if count >= n)


@dataclasses.dataclass(frozen=True)
class Packer:
    """Packs a global batch into rows of `length`, block by block: the batch is cut into as many
    equal blocks as both the processes (each loads its own share) and the micro-batches (each one
    model call, see train/step.py) need, every block gets the same row count (the most any needs,
    rounded up in units of `row_multiple`), and a block's rows follow its predecessor's in its
    micro-batch.
    So the processes agree on the global shape, and splitting the rows into micro-batches splits
    the examples with them. Each micro-batch's rows divide evenly over the `data_ways` devices."""
    length: int
    data_ways: int = 1
    micro_batches: int = 1

    def rows_for(self, blocks: list[np.ndarray], unit: int = 1) -> int:
        """The row count every block gets: the most any block's masks need, rounded up on the
        ladder in units of `unit` rows."""
        needed = max(first_fit_decreasing(sequence_lengths(mask), self.length)[2] for mask in blocks)
        return unit * round_up(-(-needed // unit))

    def block_rows(self, batch: dict, process_count: int = 1) -> int:
        """The row count every block of the global `batch` needs."""
        n, masks = self._blocks(batch, process_count)
        return self.rows_for(masks, self.data_ways // math.gcd(self.data_ways, n // self.micro_batches))

    def __call__(self, batch: dict, process: tuple[int, int] = (0, 1), rows: int = 0) -> dict:
        """This process's share of the global `batch` ({"inputs": ..., ...}), with its layout;
        every block gets `rows` rows if that is more than it needs (runs stacked together)."""
        index, count = process
        n, masks = self._blocks(batch, count)
        per_micro = n // self.micro_batches  # blocks that make up one micro-batch
        rows = max(rows, self.block_rows(batch, count))
        mine = range(index * n // count, (index + 1) * n // count)
        blocks = [layout(masks[b], rows, self.length, first_row=(b % per_micro) * rows) for b in mine]
        local = share(batch, process)
        local["inputs"]["packing"] = {k: np.concatenate([block[k] for block in blocks])
                                      for k in blocks[0]}
        return local

    def _blocks(self, batch: dict, process_count: int) -> tuple[int, list[np.ndarray]]:
        """The blocks' count and attention masks: one block per (process, micro-batch)."""
        n = int(np.lcm(process_count, self.micro_batches))
        return n, [share(batch, (b, n))["inputs"]["attention_mask"] for b in range(n)]


def share(batch, process: tuple[int, int]):
    """The process's contiguous block of the rows of a global batch (an array, or nested dicts of
    arrays, copied as dicts)."""
    index, count = process
    def take(tree):
        if isinstance(tree, dict):
            return {k: take(v) for k, v in tree.items()}
        per = tree.shape[0] // count
        return tree[index * per:(index + 1) * per]
    return take(batch)
