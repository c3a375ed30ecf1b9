"""Every file the project writes goes through here, on a local disk or an object store, and every
remote input (a model, a data folder, a corpus on gs://) is read through a local copy.

`atomic(path)` is the one atomic writer: the caller writes a temporary file beside `path`, which is
renamed onto `path` only when the block finishes, so a reader (or a run killed mid-write) sees the
old content or the new, never part of either. A write the disk refuses (full, read-only, the folder
gone) is one `WriteError` naming the path, the temporary file removed and `path` untouched.

A path with a scheme (`gs://bucket/run/...`, any fsspec opens) is written without renames,
which object stores do not have: the temporary file is local and is uploaded as one object when the
block finishes (an object appears whole or not at all), and an appended log is the object rewritten
whole with the new lines. Reading such paths needs the `gcs` extra (gcsfs).
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import importlib.util
import io
import json
import os
import shutil
import tempfile
from typing import IO, Iterator

from distilbert_jax.errors import UserError


def is_remote(path: str | os.PathLike) -> bool:
    """True for a path with a scheme (gs://, s3://, ...), which fsspec opens."""
    return "://" in os.fspath(path)


def filesystem(path: str | os.PathLike):
    """The fsspec filesystem of a remote path (gcsfs for gs://); without it, one sentence naming
    the extra."""
    path = os.fspath(path)
    if path.startswith("gs://") and importlib.util.find_spec("gcsfs") is None:
        raise WriteError(errno.ENOPROTOOPT, f"{path} is on Google Cloud Storage, which needs the gcs "
                         "extra: pip install 'distilbert-jax[gcs]'.")
    import fsspec
    return fsspec.core.url_to_fs(path)[0]


def resolve(path: str | os.PathLike) -> str:
    """An absolute local path, or a remote one as it is."""
    return os.fspath(path) if is_remote(path) else os.path.abspath(path)


def join(path: str | os.PathLike, *parts: str) -> str:
    """os.path.join, for remote paths too."""
    return os.path.join(os.fspath(path), *parts)


def exists(path: str | os.PathLike) -> bool:
    return filesystem(path).exists(os.fspath(path)) if is_remote(path) else os.path.exists(path)


def occupied(path: str | os.PathLike) -> bool:
    """True when `path` holds something: a file, or a folder with files (on an object store, a
    folder exists only while it holds objects)."""
    if is_remote(path):
        return exists(path)
    return os.path.exists(path) and not (os.path.isdir(path) and not os.listdir(path))


def read_text(path: str | os.PathLike) -> str:
    """A text file's content (UTF-8), local or remote."""
    if is_remote(path):
        return filesystem(path).cat_file(os.fspath(path)).decode("utf-8")
    with open(path, encoding="utf-8") as f:
        return f.read()


def cache_root() -> str:
    """Where remote inputs are copied: $DISTILBERT_JAX_CACHE, else ~/.cache/distilbert_jax."""
    return os.environ.get("DISTILBERT_JAX_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "distilbert_jax")


def cache_path(path: str | os.PathLike) -> str:
    """The local folder that stands for the remote `path` (gs://b/x -> <cache_root>/remote/gs/b/x)."""
    scheme, rest = os.fspath(path).split("://", 1)
    return os.path.join(cache_root(), "remote", scheme, rest.rstrip("/"))


def local_copy(path: str | os.PathLike, patterns: tuple[str, ...] | None = None) -> str:
    """A local path to read `path` from: a local path as it is; a remote file or folder (a model,
    a data folder, a corpus file) copied under `cache_root()`, each object fetched again only when
    its checksum changed. With `patterns` (fnmatch), only the files of a folder whose names match.

    Readers that need a real file (memory maps, tokenizers, safetensors, csv) then work unchanged."""
    path = os.fspath(path)
    if not is_remote(path):
        return path
    scheme, local = path.split("://", 1)[0], cache_path(path)
    fs = filesystem(path)
    try:
        if fs.isfile(path):
            objects, local_dir = {path: fs.info(path)}, os.path.dirname(local)
            names = {path: os.path.basename(local)}
        else:
            objects = {f"{scheme}://{name}" if "://" not in name else name: info
                       for name, info in fs.find(path, detail=True).items()}
            names = {o: os.path.relpath(o, path) for o in objects}
            objects = {o: i for o, i in objects.items()
                       if patterns is None or any(fnmatch.fnmatch(os.path.basename(o), p) for p in patterns)}
            local_dir = local
        if not objects:
            raise ReadError(f"{path} does not exist (no file or folder there).")
        manifest_path = os.path.join(local_dir, ".remote-checksums.json")
        manifest = json.loads(read_text(manifest_path)) if os.path.exists(manifest_path) else {}
        fetched = False
        for remote, info in objects.items():
            target = os.path.join(local_dir, names[remote])
            checksum = str(info.get("md5Hash") or info.get("etag") or info.get("size"))
            if manifest.get(names[remote]) != checksum or not os.path.exists(target):
                makedirs(os.path.dirname(target))
                with atomic(target) as tmp:
                    fs.get_file(remote, tmp)
                manifest[names[remote]], fetched = checksum, True
        if fetched:
            write_json(manifest_path, manifest)
    except (ReadError, WriteError):
        raise
    except Exception as e:  # the store's client error: one sentence naming the path
        raise ReadError(f"cannot read {path}: {first_line(e)}") from None
    return local


def upload_files(local_dir: str, remote_dir: str, names: tuple[str, ...]) -> None:
    """Copies `names` from `local_dir` to `remote_dir` in order, each as one whole object (so the
    last, e.g. a folder's completion marker, appears only once the others are there)."""
    for name in names:
        with atomic(join(remote_dir, name)) as tmp:
            shutil.copyfile(os.path.join(local_dir, name), tmp)


class ReadError(UserError):
    """A remote input could not be read: one sentence naming it."""


def makedirs(path: str | os.PathLike) -> None:
    """The folder and its parents (on an object store, where folders are name prefixes, nothing)."""
    if not is_remote(path):
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as e:
            raise write_error(path, e) from None


class WriteError(UserError, OSError):
    """A file could not be written: one sentence naming it and the reason."""

    def __str__(self) -> str:  # the sentence, without OSError's "[Errno 28] " prefix
        return self.strerror or super().__str__()


# Why a write was refused, by errno, in words (the same for a file and for an orbax checkpoint).
_REFUSALS = {errno.ENOSPC: "no space left on the device", errno.EROFS: "the folder is read-only",
             errno.EACCES: "the folder is not writable", errno.EPERM: "the folder is not writable",
             errno.ENOENT: "its folder does not exist (or was removed)",
             errno.EFBIG: "the file is larger than this process may write (ulimit -f)"}


def refusal(code: int | None, error: BaseException) -> str:
    """Why the write of `error` (errno `code`) was refused, as words; else the error's first line."""
    return _REFUSALS.get(code) or first_line(error)


def write_error(path: str | os.PathLike, error: OSError) -> WriteError:
    """`error` (ENOSPC, EROFS, EACCES, ENOENT, ...) as one sentence naming `path`."""
    return WriteError(error.errno, f"cannot write {os.fspath(path)}: "
                                   f"{_REFUSALS.get(error.errno) or error.strerror or first_line(error)}")


@contextlib.contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Around a write to `path`: a refused local write (OSError) or any error of a remote store's
    client (gcsfs, aiohttp, google-cloud-storage) becomes one WriteError naming `path`."""
    try:
        yield
    except WriteError:
        raise
    except Exception as e:
        if is_remote(path):
            raise WriteError(errno.EIO, f"cannot write {os.fspath(path)}: {first_line(e)}") from None
        if isinstance(e, OSError):
            raise write_error(path, e) from None
        raise


@contextlib.contextmanager
def atomic(path: str | os.PathLike) -> Iterator[str]:
    """Yields the temporary path to write; on success it replaces `path`, on any failure it is
    removed and `path` keeps its previous content. OSErrors become one WriteError naming `path`."""
    path = os.fspath(path)
    if is_remote(path):
        with _uploaded(path) as tmp:
            yield tmp
        return
    tmp = f"{path}.{os.getpid()}.tmp"  # a process's own: two filling one cache never collide
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
def _uploaded(path: str) -> Iterator[str]:
    """A local temporary file, uploaded to the remote `path` as one object when the block ends
    well; on any failure nothing is uploaded and the object keeps its previous content."""
    fd, tmp = tempfile.mkstemp(prefix=".upload-")
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            data = f.read()
        with writing(path):
            filesystem(path).pipe_file(path, data)
    finally:
        with contextlib.suppress(OSError):
            os.remove(tmp)


def first_line(error: BaseException) -> str:
    """An error's first non-empty line (at most 200 characters): the sentence a message leads with."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return (lines[0] if lines else type(error).__name__)[:200]


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike, last: tuple[str, ...] = ()) -> Iterator[str]:
    """`atomic` for a folder: yields a staging folder beside `path` (which must not exist, or be
    empty) to fill; on success it is renamed to `path`, on any failure removed with its contents.
    A remote folder is staged locally and uploaded file by file, each file one whole object, the
    files named in `last` (a folder's completion marker) after every other."""
    if is_remote(path):
        staging = tempfile.mkdtemp(prefix=".upload-")
        try:
            yield staging
            names = sorted(os.path.relpath(os.path.join(root, name), staging)
                           for root, _, files in os.walk(staging) for name in files)
            upload_files(staging, os.fspath(path), sorted(names, key=lambda name: name in last))
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return
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
    every line already written stays, but a refused write is still one WriteError naming `path`.
    A remote log is rewritten whole, the earlier lines and the new ones, as one object."""
    if is_remote(path):
        lines = io.StringIO()
        yield lines
        with writing(path):
            earlier = read_text(path) if exists(path) else ""
        write_text(os.fspath(path), earlier + lines.getvalue())
        return
    try:
        with open(path, "a", encoding="utf-8") as f:
            yield f
    except OSError as e:
        if isinstance(e, WriteError):
            raise
        raise write_error(path, e) from None
