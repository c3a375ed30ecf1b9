"""Every file the project writes goes through here.

`atomic(path)` is the one atomic writer: the caller writes a temporary file beside `path`, which is
renamed onto `path` only when the block finishes, so a reader (or a run killed mid-write) sees the
old content or the new, never part of either. A write the disk refuses (full, read-only, the folder
gone) is one `WriteError` naming the path, the temporary file removed and `path` untouched.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from typing import IO, Iterator

from distilbert_jax.errors import UserError


class WriteError(UserError, OSError):
    """A file could not be written: one sentence naming it and the reason."""

    def __str__(self) -> str:  # the sentence, without OSError's "[Errno 28] " prefix
        return self.strerror or super().__str__()


def write_error(path: str | os.PathLike, error: OSError) -> WriteError:
    """`error` (ENOSPC, EROFS, EACCES, ENOENT, ...) as one sentence naming `path`."""
    reason = error.strerror or str(error) or type(error).__name__
    if error.errno == errno.ENOSPC:
        reason = "no space left on the device"
    elif error.errno == errno.ENOENT:
        reason = "its folder does not exist (or was removed)"
    elif error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        reason = f"the folder is not writable ({error.strerror})"
    return WriteError(error.errno, f"cannot write {os.fspath(path)}: {reason}")


@contextlib.contextmanager
def atomic(path: str | os.PathLike) -> Iterator[str]:
    """Yields the temporary path to write; on success it replaces `path`, on any failure it is
    removed and `path` keeps its previous content. OSErrors become one WriteError naming `path`."""
    path = os.fspath(path)
    tmp = path + ".tmp"
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(e, OSError) and not isinstance(e, WriteError):
            raise write_error(path, e) from None
        raise


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[str]:
    """`atomic` for a folder: yields a staging folder beside `path` (which must not exist, or be
    empty) to fill; on success it is renamed to `path`, on any failure removed with its contents."""
    path = os.path.abspath(os.fspath(path))
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        staging = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.partial-", dir=os.path.dirname(path))
    except OSError as e:
        raise write_error(path, e) from None
    try:
        yield staging
        if os.path.isdir(path):
            os.rmdir(path)  # empty: the finished folder takes its place
        os.replace(staging, path)
    except BaseException as e:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(e, OSError) and not isinstance(e, WriteError):
            raise write_error(path, e) from None
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator[IO]:
    """`open(...)` on `atomic(path)`'s temporary file (text files as UTF-8 unless told)."""
    if "b" not in mode:
        kwargs.setdefault("encoding", "utf-8")
    with atomic(path) as tmp:
        try:
            f = open(tmp, mode, **kwargs)
        except OSError as e:
            raise write_error(path, e) from None
        with f:
            yield f


def write_text(path: str, text: str) -> None:
    """Writes `text` to `path` atomically."""
    with atomic_open(path) as f:
        f.write(text)


def write_json(path: str, value) -> None:
    """`value` as indented JSON (values JSON cannot hold are written as their str())."""
    write_text(path, json.dumps(value, indent=2, default=str) + "\n")


@contextlib.contextmanager
def appending(path: str | os.PathLike) -> Iterator[IO]:
    """A log appended to line by line (metrics.jsonl, config_history.jsonl): not atomic, since
    every line already written stays, but a refused write is still one WriteError naming `path`."""
    try:
        with open(path, "a", encoding="utf-8") as f:
            yield f
    except OSError as e:
        if isinstance(e, WriteError):
            raise
        raise write_error(path, e) from None
