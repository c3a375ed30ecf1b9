"""The distillation corpus: binarisation, token counts, length-grouped batches, MLM masking.

`prepare` tokenises plain-text files (one sequence per line) or TFDS text datasets once with the teacher's tokenizer into
a compact on-disk form: `[CLS] … [SEP]` sequences split at `max_length`, those of ≤ 11 tokens or at
least half [UNK] dropped (the reference's cleaning), plus a token-count file. It works in chunks of
lines, each written atomically, so an interrupted preparation resumes where it stopped; the chunks
are reused only for the same files (same sizes and times), tokenizer, max_length and chunk size, and
meta.json, written last, marks a finished corpus. meta.json records the tokenizer's fingerprint, so a
corpus is never used with another vocabulary (`check_tokenizer`).

Masking follows the reference distiller, per batch: `ceil(mask_prop · real tokens)` positions are
drawn without replacement with probability ∝ max(count, 1)^-smoothing (special tokens never), then
80% become [MASK], 10% a random token, 10% stay; labels are the original ids there, -100 elsewhere.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import math
import os
import sys
import time
from typing import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from distilbert_jax import storage
from distilbert_jax.data.packing import Packer, share
from distilbert_jax.data.task import DataError
from distilbert_jax.losses import IGNORE_INDEX

MIN_LENGTH = 12  # sequences of 11 tokens or fewer are dropped


def token_probs(counts: np.ndarray, special_ids: Sequence[int], smoothing: float = 0.7) -> np.ndarray:
    """Selection weight of each vocabulary id: max(count, 1)^-smoothing, 0 for special tokens."""
    probs = np.maximum(np.asarray(counts, np.float64), 1.0) ** (-smoothing)
    probs[list(special_ids)] = 0.0
    return probs.astype(np.float32)


def mask_tokens(key: jax.Array, input_ids: jax.Array, attention_mask: jax.Array,
                probs: jax.Array, *, mask_prop: float = 0.15, word_mask: float = 0.8,
                word_keep: float = 0.1, word_rand: float = 0.1, mask_id: int, vocab_size: int):
    """(corrupted ids, labels) for one batch, on device and deterministic in `key`.

    Sampling without replacement ∝ weights is the Gumbel-top-k trick: perturb log-weights with
    Gumbel noise and keep the n largest; n varies per batch, so it is a rank threshold, not a shape.
    """
    select_key, action_key, random_key = jax.random.split(key, 3)
    real = attention_mask.astype(bool)
    weights = jnp.where(real, probs[input_ids], 0.0)
    n_targets = jnp.ceil(mask_prop * jnp.sum(real)).astype(jnp.int32)
    n_targets = jnp.minimum(n_targets, jnp.sum(weights > 0))
    flat = weights.reshape(-1)
    scores = jnp.where(flat > 0, jnp.log(jnp.where(flat > 0, flat, 1.0))
                       + jax.random.gumbel(select_key, flat.shape), -jnp.inf)
    ranks = jnp.empty_like(flat, jnp.int32).at[jnp.argsort(-scores)].set(
        jnp.arange(flat.size, dtype=jnp.int32))
    selected = (ranks < n_targets).reshape(input_ids.shape)

    action = jax.random.choice(action_key, 3, input_ids.shape,
                               p=jnp.array([word_mask, word_keep, word_rand]))
    random_ids = jax.random.randint(random_key, input_ids.shape, 0, vocab_size, input_ids.dtype)
    replaced = jnp.where(action == 0, mask_id, jnp.where(action == 1, input_ids, random_ids))
    corrupted = jnp.where(selected, replaced, input_ids)
    labels = jnp.where(selected, input_ids, IGNORE_INDEX)
    return corrupted, labels


def target_positions(labels: jax.Array, mask_prop: float, max_real: int | None = None):
    """(flat indices of the MLM targets, their labels), padded to a static ceil(mask_prop · n),
    n the batch's size or `max_real`, a static bound on its real tokens (its packed rows' size).

    `mask_tokens` never selects more than that many tokens (one slot spare for float32 rounding), so
    every target is kept; padding slots point at token 0 with label -100. Lets the loss compute
    vocabulary logits at the targets only.
    """
    flat = labels.reshape(-1)
    n = flat.size if max_real is None else min(flat.size, max_real)
    size = min(flat.size, math.ceil(mask_prop * n) + 1)
    is_target = flat != IGNORE_INDEX
    positions = jnp.nonzero(is_target, size=size, fill_value=0)[0]
    valid = jnp.arange(size) < jnp.sum(is_target)
    return positions, jnp.where(valid, flat[positions], IGNORE_INDEX)


# --- preparation ----------------------------------------------------------------------------------------

def split_sequence(ids: np.ndarray, max_length: int, cls_id: int, sep_id: int) -> list[np.ndarray]:
    """[CLS] … [SEP] pieces of at most max_length tokens, cut as the reference cuts long sequences."""
    if len(ids) <= max_length:
        return [ids]
    pieces = []
    for start in range(0, len(ids), max_length - 2):
        piece = ids[start:start + max_length - 2]
        if piece[0] != cls_id:
            piece = np.insert(piece, 0, cls_id)
        if piece[-1] != sep_id:
            piece = np.append(piece, sep_id)
        pieces.append(piece)
    return pieces


def clean(sequences: list[np.ndarray], unk_id: int, max_unk_fraction: float = 0.5) -> list[np.ndarray]:
    """Drops sequences of ≤ 11 tokens and those at least `max_unk_fraction` [UNK]."""
    return [s for s in sequences
            if len(s) >= MIN_LENGTH and np.mean(s == unk_id) < max_unk_fraction]


TFDS_PREFIX = "tfds:"  # a source "tfds:<name>[:<split>]" reads a TFDS dataset's `text` feature


def _lines(sources: Sequence[str]) -> Iterator[str]:
    """Non-empty stripped lines of every source: text files, or TFDS documents split at newlines."""
    for source in sources:
        for text in _tfds_texts(source) if source.startswith(TFDS_PREFIX) else _file_lines(source):
            for line in text.splitlines():
                line = line.strip()
                if line:
                    yield line


def _file_lines(path: str) -> Iterator[str]:
    n = 0
    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                yield line
    except UnicodeDecodeError:
        raise DataError(f"Corpus file {path!r} is not UTF-8 text (after line {n}).") from None


def _tfds_texts(source: str) -> Iterator[str]:
    """The `text` feature of each record of "tfds:<name>[:<split>]" (e.g. tfds:wikipedia/20230601.en)."""
    name, _, split = source[len(TFDS_PREFIX):].partition(":")
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise DataError(f"The corpus source {source!r} needs tensorflow-datasets: "
                        "pip install -e '.[tfds]'.") from None
    for record in tfds.data_source(name, split=split or "train"):
        text = record["text"]
        yield text.decode("utf-8") if isinstance(text, bytes) else str(text)


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of the vocabulary in id order: equal exactly when every id means the same token."""
    vocab = sorted(tokenizer.backend.get_vocab().items(), key=lambda kv: kv[1])
    return hashlib.sha256("\n".join(f"{i}\t{t}" for t, i in vocab).encode("utf-8")).hexdigest()


def read_meta(corpus_dir: str) -> dict:
    """A prepared corpus's meta.json (which exists only once preparation finished)."""
    path = os.path.join(corpus_dir, META)
    if not os.path.isfile(path):
        raise DataError(f"{corpus_dir} is not a prepared corpus (no meta.json: its preparation never "
                        "finished); run prepare first.")
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise DataError(f"{path} is not valid JSON ({e}).") from None


def check_tokenizer(corpus_dir: str, tokenizer, tokenizer_name: str = "the tokenizer") -> None:
    """Refuses a corpus tokenised with another vocabulary than `tokenizer`'s (one sentence).

    Corpora prepared before meta.json held a fingerprint are checked on vocab_size only.
    """
    meta = read_meta(corpus_dir)
    saved = meta.get("tokenizer_sha256")
    if saved is None:
        if meta.get("vocab_size", tokenizer.vocab_size) != tokenizer.vocab_size:
            raise DataError(f"The corpus in {corpus_dir} was tokenised with a vocabulary of "
                            f"{meta['vocab_size']} tokens but {tokenizer_name} has "
                            f"{tokenizer.vocab_size}; prepare the corpus again with it.")
        return
    mine = tokenizer_fingerprint(tokenizer)
    if saved != mine:
        raise DataError(
            f"The corpus in {corpus_dir} was tokenised with another vocabulary (sha256 {saved[:12]}) "
            f"than {tokenizer_name} (sha256 {mine[:12]}, {tokenizer.vocab_size} tokens); prepare the "
            "corpus again with this tokenizer, into another directory.")


def _recipe(files: Sequence[str], tokenizer, max_length: int, chunk_lines: int) -> dict:
    """What the chunks of a preparation depend on: a resumed run reuses them only if it matches."""
    sources = []
    for f in files:
        if f.startswith(TFDS_PREFIX):
            sources.append([f])
        else:
            stat = os.stat(f)
            sources.append([os.path.abspath(f), stat.st_size, stat.st_mtime_ns])
    return {"sources": sources, "max_length": max_length, "chunk_lines": chunk_lines,
            "tokenizer_sha256": tokenizer_fingerprint(tokenizer)}


RECIPE = "prepare.json"  # next to the chunks of a preparation in progress
META = "meta.json"  # written last: a folder holding it is a finished corpus
FILES = ("tokens.npy", "lengths.npy", "token_counts.npy", META)  # a finished corpus, in writing order


def _start_or_resume(out_dir: str, recipe: dict) -> None:
    """Keeps the chunks of an interrupted preparation with the same recipe; deletes any others."""
    recipe_path = os.path.join(out_dir, RECIPE)
    previous = None
    if os.path.exists(recipe_path):
        with open(recipe_path, encoding="utf-8") as f:
            try:
                previous = json.load(f)
            except json.JSONDecodeError:
                previous = None
    if previous != recipe:
        stale = glob.glob(os.path.join(out_dir, "part-*.npz"))
        if stale:
            print(f"corpus: discarding {len(stale)} chunk(s) in {out_dir} left by an unfinished "
                  "preparation of other files or with another tokenizer", file=sys.stderr, flush=True)
        for part in stale:
            os.remove(part)
        storage.write_json(recipe_path, recipe)


def prepare(files: Sequence[str], tokenizer, out_dir: str, max_length: int = 512,
            chunk_lines: int = 20_000, log_every_s: float = 10.0) -> dict:
    """Tokenises `files` (text files, local or gs://, or "tfds:<name>[:<split>]" sources) into `out_dir`
    (tokens.npy, lengths.npy, token_counts.npy, meta.json).

    Resumable: chunk k covers lines [k·chunk_lines, (k+1)·chunk_lines) and is skipped when its file
    exists and was written for the same files, tokenizer, max_length and chunk_lines (else the old
    chunks are deleted). An `out_dir` already holding a finished corpus is returned as is when it
    was made with the same tokenizer, files and max_length, and refused otherwise.
    Returns meta.json's contents.
    """
    meta_path = os.path.join(out_dir, META)
    if os.path.exists(meta_path):
        return _existing(out_dir, files, tokenizer, max_length)
    named, files = list(files), [storage.local_copy(f) for f in files]  # gs:// files read from a copy
    paths = [f for f in files if not f.startswith(TFDS_PREFIX)]
    for path in paths:
        if os.path.isdir(path):
            raise DataError(f"Corpus file {path!r} is a folder, not a file; pass the text files in it.")
        if not os.path.isfile(path):
            raise DataError(f"Corpus file {path!r} does not exist.")
    os.makedirs(out_dir, exist_ok=True)
    _start_or_resume(out_dir, _recipe(files, tokenizer, max_length, chunk_lines))
    dtype = np.uint16 if tokenizer.vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32
    start, total_bytes = time.perf_counter(), sum(os.path.getsize(f) for f in paths)
    lines, chunk, done_lines, last_log = [], 0, 0, start
    for line in _lines(files):
        lines.append(line)
        if len(lines) == chunk_lines:
            _write_chunk(out_dir, chunk, lines, tokenizer, max_length, dtype)
            chunk, done_lines, lines = chunk + 1, done_lines + len(lines), []
            if time.perf_counter() - last_log > log_every_s:
                last_log = time.perf_counter()
                print(f"corpus: {done_lines} lines, {done_lines / (last_log - start):.0f} lines/s",
                      file=sys.stderr, flush=True)
    if lines:
        _write_chunk(out_dir, chunk, lines, tokenizer, max_length, dtype)
    parts = sorted(glob.glob(os.path.join(out_dir, "part-*.npz")))
    if not parts:
        raise DataError(f"The corpus files {list(files)} hold no text.")
    tokens, lengths = [], []
    for part in parts:
        with np.load(part) as data:
            tokens.append(data["tokens"])
            lengths.append(data["lengths"])
    tokens, lengths = np.concatenate(tokens), np.concatenate(lengths)
    if not len(lengths):
        raise DataError(f"No sequence of {MIN_LENGTH} tokens or more in {list(files)}.")
    counts = np.bincount(tokens, minlength=tokenizer.vocab_size).astype(np.int64)
    for name, array in (("tokens", tokens), ("lengths", lengths), ("token_counts", counts)):
        with storage.atomic_open(os.path.join(out_dir, name + ".npy"), "wb") as f:
            np.save(f, array)
    meta = {"files": named, "sequences": int(len(lengths)), "tokens": int(len(tokens)),
            "max_length": max_length, "vocab_size": tokenizer.vocab_size,
            "tokenizer_sha256": tokenizer_fingerprint(tokenizer),
            "seconds": round(time.perf_counter() - start, 1), "bytes": total_bytes}
    storage.write_json(meta_path, meta)
    for part in parts:
        os.remove(part)
    os.remove(os.path.join(out_dir, RECIPE))
    return meta


def _existing(out_dir: str, files: Sequence[str], tokenizer, max_length: int) -> dict:
    """A finished corpus in `out_dir`, if it is the one asked for; it is never overwritten."""
    meta = read_meta(out_dir)
    check_tokenizer(out_dir, tokenizer)
    same_files = [storage.resolve(f) if not f.startswith(TFDS_PREFIX) else f
                  for f in meta.get("files", files)] == [
        storage.resolve(f) if not f.startswith(TFDS_PREFIX) else f for f in files]
    if not same_files or meta.get("max_length", max_length) != max_length:
        raise DataError(
            f"{out_dir} already holds a corpus of {meta.get('files')} at max_length="
            f"{meta.get('max_length')}, not of {list(files)} at max_length={max_length}; "
            "choose another output directory or delete that one.")
    return meta


def _write_chunk(out_dir, chunk, lines, tokenizer, max_length, dtype):
    path = os.path.join(out_dir, f"part-{chunk:06d}.npz")
    if os.path.exists(path):
        return
    sequences = []
    for token_ids in tokenizer.ids(lines):
        ids = np.array([tokenizer.cls_token_id, *token_ids, tokenizer.sep_token_id], dtype)
        sequences.extend(split_sequence(ids, max_length, tokenizer.cls_token_id, tokenizer.sep_token_id))
    sequences = clean(sequences, tokenizer.unk_token_id)
    tokens = np.concatenate(sequences) if sequences else np.zeros((0,), dtype)
    lengths = np.array([len(s) for s in sequences], np.int32)
    with storage.atomic_open(path, "wb") as f:
        np.savez(f, tokens=tokens, lengths=lengths)


# --- batches --------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Corpus:
    """A prepared corpus in memory: concatenated token ids and per-sequence lengths."""
    tokens: np.ndarray
    lengths: np.ndarray
    counts: np.ndarray

    @classmethod
    def load(cls, directory: str) -> "Corpus":
        read_meta(directory)  # written last: without it the arrays may be from an unfinished run
        paths = {n: os.path.join(directory, n + ".npy") for n in ("tokens", "lengths", "token_counts")}
        missing = [p for p in paths.values() if not os.path.exists(p)]
        if missing:
            raise DataError(f"{directory} is not a prepared corpus (missing {missing}); run prepare first.")
        return cls(*(np.load(p) for p in paths.values()))

    def __post_init__(self):
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)])

    def sequence(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i]:self.offsets[i + 1]]

    def batches(self, batch_size: int, seed: int, start_step: int, pad_id: int,
                length_multiple: int = 32, pool: int = 50, process: tuple[int, int] = (0, 1),
                packer: Packer | None = None) -> Iterator[dict[str, dict[str, np.ndarray]]]:
        """Endless length-grouped batches ({"inputs": ...}); batch k depends only on (seed, k), so
        resuming is exact.

        Each epoch shuffles the sequences, sorts pools of `pool` batches by length (the reference's
        length grouping) and shuffles the batches; a batch is padded to a multiple of
        `length_multiple`, so XLA compiles a handful of shapes. Each process takes its share; with
        a `packer` the same batch is packed (data/packing.py).
        """
        per_epoch = len(self.lengths) // batch_size
        if per_epoch == 0:
            raise DataError(f"{len(self.lengths)} sequences cannot fill one batch of {batch_size}.")
        if batch_size % process[1]:
            raise DataError(f"batch size {batch_size} is not divisible by {process[1]} processes.")
        epoch_batches, epoch = None, -1
        step = start_step
        while True:
            e, index = divmod(step, per_epoch)
            if e != epoch:
                epoch, epoch_batches = e, self._epoch(batch_size, seed, e, pool)
            rows = epoch_batches[index]
            length = int(-(-self.lengths[rows].max() // length_multiple) * length_multiple)
            if packer is None:
                yield {"inputs": self._collate(share(rows, process), length, pad_id)}
            else:
                yield packer({"inputs": self._collate(rows, length, pad_id)}, process)
            step += 1

    def _collate(self, rows: np.ndarray, length: int, pad_id: int) -> dict[str, np.ndarray]:
        """input_ids and attention_mask of `rows`, right-padded to `length`."""
        ids = np.full((len(rows), length), pad_id, np.int32)
        for r, i in enumerate(rows):
            seq = self.sequence(i)
            ids[r, :len(seq)] = seq
        mask = np.arange(length)[None] < self.lengths[rows][:, None]
        return {"input_ids": ids, "attention_mask": mask.astype(np.int32)}

    def _epoch(self, batch_size: int, seed: int, epoch: int, pool: int) -> list[np.ndarray]:
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(len(self.lengths))
        batches = []
        size = batch_size * pool
        for start in range(0, len(order) - batch_size + 1, size):
            group = order[start:start + size]
            group = group[np.argsort(self.lengths[group], kind="stable")]
            batches.extend(group[i:i + batch_size] for i in range(0, len(group) - batch_size + 1, batch_size))
        return [batches[i] for i in rng.permutation(len(batches))]


def main(argv=None) -> None:
    """python -m distilbert_jax.data.corpus --tokenizer=<teacher dir> --out=<dir> FILE [FILE ...]"""
    import argparse

    from distilbert_jax import hf
    from distilbert_jax.tokenizer import Tokenizer

    parser = argparse.ArgumentParser(description="Tokenise text files (one sequence per line) "
                                                 "into a distillation corpus.")
    parser.add_argument("files", nargs="+", help='text files, or "tfds:<name>[:<split>]" '
                                                 "(e.g. tfds:wikipedia/20230601.en)")
    parser.add_argument("--tokenizer", required=True, help="the teacher's checkpoint dir or hub id")
    parser.add_argument("--out", required=True)
    parser.add_argument("--max_length", type=int, default=512)
    args = parser.parse_args(argv)
    tokenizer = Tokenizer.from_pretrained(hf.resolve(args.tokenizer))
    print(json.dumps(prepare(args.files, tokenizer, args.out, args.max_length), indent=2))


if __name__ == "__main__":  # the module is the program: the entry points' start-up (startup.py)
    from distilbert_jax import startup
    sys.exit(startup.command(main))
