"""Every job a config can name (`config.job`) and the programs each compiles.

`run(config, workdir)` is the one dispatch: the command line, sweeps and the miniature call it.
"""

from __future__ import annotations

from distilbert_jax.config import ConfigError
from distilbert_jax.experiments import miniature
from distilbert_jax.train import distill, finetune

JOBS = {"finetune": finetune.train_and_evaluate, "evaluate": finetune.evaluate_only,
        "distill": distill.distill, "fit_teacher_head": distill.fit_teacher_head,
        "miniature": miniature.run}
# What each job compiles: `(config, layout, runs=1) -> [Program]` (train/programs.py), from which the
# plan (plan.py) compiles exactly what a run runs. The miniature is a sequence of these jobs.
PROGRAMS = {"finetune": finetune.programs, "evaluate": finetune.programs,
            "distill": distill.programs, "fit_teacher_head": distill.programs}


def run(config, workdir: str):
    """Runs the job `config.job` names in `workdir`; returns its results."""
    if config.job not in JOBS:
        raise ConfigError(f"job={config.job!r} is not one of {sorted(JOBS)}.")
    return JOBS[config.job](config, workdir)
