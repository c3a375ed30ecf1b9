"""Files written atomically: a reader (or a run killed mid-write) sees the old content or the new,
never part of either. Every JSON and text artefact of a run is written through here."""

from __future__ import annotations

import json
import os


def write_text(path: str, text: str) -> None:
    """Writes `text` to `path` through a temporary file in the same folder, then renames it."""
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def write_json(path: str, value) -> None:
    """`value` as indented JSON (values JSON cannot hold are written as their str())."""
    write_text(path, json.dumps(value, indent=2, default=str) + "\n")
