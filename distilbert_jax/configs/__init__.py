"""The config files the jobs start from, shipped inside the package.

`--config` takes a path; `configs/<name>.py` (as the README writes it), `<name>.py` or `<name>`
also names the packaged file when no such file exists where the command runs, so every documented
command works from any directory, with or without a checkout.
"""

from __future__ import annotations

import os

HERE = os.path.dirname(os.path.abspath(__file__))


def packaged() -> list[str]:
    """The names of the packaged config files: custom, distill, glue, ..."""
    return sorted(f[:-3] for f in os.listdir(HERE) if f.endswith(".py") and f != "__init__.py")


def resolve(spec: str) -> str:
    """`path[:arg]` with `path` replaced by the packaged file it names, when it is not a file here."""
    path, colon, arg = spec.partition(":")
    if os.path.exists(path) or os.path.dirname(path) not in ("", "configs"):
        return spec
    name = os.path.basename(path).removesuffix(".py")
    if name not in packaged():
        return spec
    return os.path.join(HERE, name + ".py") + colon + arg
