"""Every job a config can name (`config.job`) and the programs each compiles.

`run(config, workdir)` is the one dispatch (the command line and sweeps call it): it runs the job's
preamble (`checks.start`) and passes the job the Layout it built, as t5x passes its partitioner.
"""

from __future__ import annotations

from distilbert_jax.config import ConfigError
from distilbert_jax.experiments import miniature
from distilbert_jax.train import checks, distill, finetune

# `(config, workdir, layout=None) -> results`; the miniature, a sequence of the others, takes no layout.
JOBS = {"finetune": finetune.train_and_evaluate, "evaluate": finetune.evaluate_only,
        "distill": distill.distill, "fit_teacher_head": distill.fit_teacher_head,
        "miniature": miniature.run}
# What each job compiles: `(config, layout, runs=1) -> [Program]` (train/programs.py), from which the
# plan (plan.py) compiles exactly what a run runs. The miniature is a sequence of these jobs.
PROGRAMS = {"finetune": finetune.programs, "evaluate": finetune.programs,
            "distill": distill.programs, "fit_teacher_head": distill.programs}


def run(config, workdir: str):
    """Runs the job `config.job` names in `workdir` on the Layout its preamble built; returns its
    results."""
    if config.job not in JOBS:
        raise ConfigError(f"job={config.job!r} is not one of {sorted(JOBS)}.")
    if config.job == "miniature":  # checks its own fields, then starts each stage as a job
        return miniature.run(config, workdir)
    return JOBS[config.job](config, workdir, checks.start([(config, workdir)]))
