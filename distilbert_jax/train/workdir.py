"""A run's workdir: probed before anything is loaded, never reused under a config that would change
the result, and given its config (config.json, plus every start in config_history.jsonl) only once a
start has passed every check.
"""

from __future__ import annotations

import datetime
import json
import os
import tempfile
import uuid

import jax

from distilbert_jax import storage
from distilbert_jax.config import ConfigError

# Fields that change nothing a run computes (when and where it logs, evaluates, checkpoints and
# writes, and how it is laid out on devices, since a sharded run equals the single-device run):
# they may differ when a workdir is resumed. Every other field must match.
FREE_FIELDS = frozenset({
    "log_every", "eval_every", "checkpoint_every", "keep_checkpoints", "eval_batch_size",
    "eval_splits", "predict_splits", "limit_eval_examples", "save_model", "mesh", "rules",
    "allow_config_change", "export", "deterministic", "remat", "compilation_cache",
    "sweep",  # the GLUE grid, held by the configs of runs made before it moved to SWEEP in glue.py
})


# Fields added after runs already existed: a saved config without one ran as this value does.
ADDED_FIELDS = {"packing": False, "matmul_precision": "auto", "warmup_steps": 0}


def probe(workdir: str) -> str:
    """Refuses, in one sentence, a workdir this process cannot create or write; leaves nothing
    behind. Returns its absolute path (a remote one as it is)."""
    if not workdir:
        raise ConfigError("--workdir is empty; give the directory for the run's checkpoints and results.")
    if storage.is_remote(workdir):
        return _probe_remote(workdir)
    if os.path.islink(workdir) and not os.path.exists(workdir):
        raise ConfigError(f"The workdir {workdir!r} is a link to {os.readlink(workdir)!r}, which does not exist.")
    path = os.path.abspath(workdir)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"The workdir {workdir!r} is a file, not a directory.")
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ConfigError(f"The workdir {workdir!r} cannot be created: {existing} is a file.")
    try:
        fd, probe_file = tempfile.mkstemp(dir=existing, prefix=".write-probe-")
        os.close(fd)
        os.remove(probe_file)
    except OSError as e:
        raise ConfigError(f"The workdir {workdir!r} cannot be written: {existing} refuses new files "
                          f"({e.strerror}).") from None
    return path


def _probe_remote(workdir: str) -> str:
    """probe for an object-store workdir: an object written and removed under it."""
    probe_file = storage.join(workdir, f".write-probe-{uuid.uuid4().hex}")
    try:
        storage.write_text(probe_file, "")
        storage.filesystem(probe_file).rm_file(probe_file)
    except storage.WriteError as e:
        raise ConfigError(f"The workdir {workdir!r} cannot be written: {e}") from None
    except Exception as e:  # the store's own error: no bucket, no credentials, no network
        raise ConfigError(f"The workdir {workdir!r} cannot be written: {storage.first_line(e)}.") from None
    return workdir


def saved_config(workdir: str) -> dict | None:
    """The config.json of the run this workdir holds (None for a fresh workdir)."""
    path = storage.join(workdir, "config.json")
    if not storage.exists(path):
        return None
    try:
        saved = json.loads(storage.read_text(path))
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not the JSON config a run writes ({e}); use a new workdir.") from None
    if not isinstance(saved, dict):
        raise ConfigError(f"{path} holds a JSON {type(saved).__name__}, not a run's config; use a new workdir.")
    return saved


def changed_fields(saved: dict, config) -> list[str]:
    """The fields (dotted for nested ones) whose values in `config` differ from `saved`, except
    FREE_FIELDS (at the top or nested); a field `saved` predates counts at its ADDED_FIELDS value."""
    def flat(tree, prefix=""):
        out = {}
        for key, value in tree.items():
            if isinstance(value, dict) and value:
                out.update(flat(value, f"{prefix}{key}."))
            else:
                out[prefix + key] = value
        return out
    wanted = flat(json.loads(json.dumps(config.to_dict(), default=str)))
    saved = flat(saved)
    for key in wanted:  # a stage's config nested in the miniature's counts the same way
        if key not in saved and key.split(".")[-1] in ADDED_FIELDS:
            saved[key] = ADDED_FIELDS[key.split(".")[-1]]
    free = lambda key: key.split(".")[0] in FREE_FIELDS or key.split(".")[-1] in FREE_FIELDS
    return sorted(k for k in set(saved) | set(wanted) if not free(k) and saved.get(k) != wanted.get(k))


def check_resume(config, workdir: str) -> None:
    """Refuses to run `config` in a workdir holding a run of another config (one that would give
    other results), unless `config.allow_config_change` says it is deliberate."""
    saved = saved_config(workdir)
    if saved is None:
        return
    changed = changed_fields(saved, config)
    if changed and not config.get("allow_config_change", False):
        values = "; ".join(f"{k}: {_get(saved, k)!r} -> {_get(config.to_dict(), k)!r}" for k in changed[:6])
        raise ConfigError(
            f"{workdir} holds a run with other values of {changed} ({values}); use a new workdir, "
            "or pass --config.allow_config_change=True to continue it under this config deliberately.")


def _get(tree, dotted: str):
    for key in dotted.split("."):
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def record(config, workdir: str) -> None:
    """Writes config.json (this start's fields) and appends this start to config_history.jsonl,
    so the config of every earlier start stays on record. Call it once every check has passed."""
    if jax.process_index() != 0:
        return
    storage.makedirs(workdir)
    fields = json.loads(json.dumps(config.to_dict(), default=str))
    storage.write_json(storage.join(workdir, "config.json"), fields)
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    with storage.appending(storage.join(workdir, "config_history.jsonl")) as f:
        f.write(json.dumps({"started": started, "config": fields}) + "\n")


def run_once(job, config, workdir: str) -> dict:
    """The results of `job(config, workdir)`: read back when the job already finished there under
    this config (another config is refused, as every start refuses it), else from running it now."""
    path = storage.join(workdir, "results.json")
    if storage.exists(path):
        check_resume(config, workdir)
    else:
        job(config, workdir)
    return json.loads(storage.read_text(path))


def write_results(workdir: str, results: dict, name: str = "results.json") -> None:
    """A job's summary (process 0 writes it)."""
    if jax.process_index() == 0:
        storage.write_json(storage.join(workdir, name), results)
