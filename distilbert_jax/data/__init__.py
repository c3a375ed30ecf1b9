"""Benchmarks as `Task`s: GLUE (nine tasks), SQuAD v1.1/v2.0, CoNLL-2003 NER, SWAG multiple choice,
and your own data: text and token classification from CSV/TSV/JSON lines (`custom.py`)."""

from __future__ import annotations

from distilbert_jax.data.task import DataError, Features, Task


def get_task(name: str, data_dir: str | None = None, source: str = "local", **options) -> Task:
    """The task called `name` reading from `data_dir` (source 'local' files or 'tfds')."""
    from distilbert_jax import storage
    from distilbert_jax.data import custom, glue, ner, squad, swag

    if data_dir and source == "local":  # gs://...: read from a local copy (TFDS reads gs:// itself)
        data_dir = storage.local_copy(data_dir)
    if name in glue.SPECS:
        return glue.GlueTask(name, data_dir, "tfds" if source == "tfds" else "tsv")
    factories = {
        "squad": lambda: squad.SquadTask(data_dir, version_2=False, source=source, **options),
        "squad_v2": lambda: squad.SquadTask(data_dir, version_2=True, source=source, **options),
        "conll2003": lambda: ner.ConllTask(data_dir, **options),
        "swag": lambda: swag.SwagTask(data_dir, **options),
        "text_classification": lambda: custom.TextClassificationTask(data_dir, **options),
        "token_classification": lambda: custom.TokenClassificationTask(data_dir, **options),
    }
    if name not in factories:
        raise DataError(f"Unknown task {name!r}; choose one of {sorted([*glue.SPECS, *factories])}.")
    return factories[name]()


__all__ = ["DataError", "Features", "Task", "get_task"]
