"""The job configs, one `get_config(arg)` file per job family, all built on default.py.

This folder is installed with the package as `distilbert_jax.configs` (pyproject.toml maps it), so
an installed copy holds the same files as a checkout. ml_collections opens `--config=PATH` relative
to the working directory only; `resolve` gives the one rule that makes the documented
`--config=configs/glue.py:rte` work from any folder: a `configs/<name>.py` that is not a file
where the command runs is this package's `<name>.py`. A file of that path in the working directory
(your own copy of a config) comes first.
"""

from __future__ import annotations

import os

HERE = os.path.dirname(os.path.abspath(__file__))
PREFIX = "configs/"
NOT_JOBS = ("__init__", "default")  # the package itself, and the base the job configs build on


def packaged() -> list[str]:
    """The names of the installed job config files: custom, distill, glue, ..."""
    return sorted(f[:-3] for f in os.listdir(HERE) if f.endswith(".py") and f[:-3] not in NOT_JOBS)


def resolve(spec: str) -> str:
    """`configs/<name>.py[:arg]` as the installed file when no such file is in the working
    directory; any other spec unchanged (the loader reports a missing file)."""
    path, colon, arg = spec.partition(":")
    name = path.removeprefix(PREFIX)
    if os.path.exists(path) or not path.startswith(PREFIX) or os.path.basename(name) != name \
            or name.removesuffix(".py") not in packaged():
        return spec
    return os.path.join(HERE, name) + colon + arg
