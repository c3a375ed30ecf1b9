"""Entry point for every job (also installed as the `distilbert-jax` command):

    python -m distilbert_jax.main --config=configs/glue.py:sst2 --workdir=/path/run [--config.lr=3e-5 ...]

Jobs (`--config.job`, set by each config file): finetune, evaluate (a fine-tuned checkpoint on
eval_splits, writing predictions), distill, fit_teacher_head, miniature.
Config files (configs/ at the top of the checkout, installed with the package, so configs/<name>.py
names the same file from any folder; then `:argument`):
  smoke.py                      the embedded default: MiniLM on the packaged SST-2 sample
  glue.py:<task>[,minilm]       cola sst2 mrpc stsb qqp mnli qnli rte wnli (data in glue/<Task>)
  squad.py:v1|v2   ner.py:iob2|iob1   swag.py
  custom.py:text|pair|regression|tokens   your own CSV/TSV/JSON-lines files in --config.data_dir
  distill.py:paper|minilm_head  distillation, and a masked-LM head for a bare teacher
  miniature.py:<data root>      the paper in miniature
Every field can be overridden with --config.<field>=<value>; configs/default.py defines and explains
each one, and an unknown field is refused with the closest name. The work lives in importable
functions (see `jobs.JOBS`) that tests and notebooks call directly.
"""

import json
import os
import shlex
import sys

from absl import app, flags

from distilbert_jax import distributed, jobs, startup

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Join a multi-host job through jax.distributed "
                               "(TPU VMs find their peers; elsewhere give the three flags below).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "How many processes the job has.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in the job.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    config = startup.load_config()

    def run():
        if _MULTIHOST.value or _COORDINATOR.value:
            distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
        print(results_table(jobs.run(config, _WORKDIR.value)))
    resume = "run the same command to resume: " + shlex.join(["python", "-m", "distilbert_jax.main", *sys.argv[1:]])
    # the process-wide settings, before anything touches a device (settings.py)
    sys.exit(startup.command(run, resume, deterministic_ops=config.deterministic, compilation_cache_dir=(
        os.path.join(os.path.abspath(_WORKDIR.value), "xla_cache") if config.compilation_cache else None)))


def results_table(results: dict) -> str:
    """A job's final metrics as a table a person reads (split, metric, value)."""
    scores = results.get("eval")
    if not isinstance(scores, dict) or not scores:
        return "results: " + json.dumps(results, default=str)
    rows = [(split, name, f"{value:.4f}") for split, metrics in scores.items()
            for name, value in metrics.items()]
    widths = [max(len(r[i]) for r in rows + [("split", "metric", "value")]) for i in range(3)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join([line(("split", "metric", "value")), line(["-" * w for w in widths])]
                     + [line(r) for r in rows])


def cli():
    """The `distilbert-jax` console script: `distilbert-jax --config=... --workdir=...`."""
    sys.modules["__main__"].__doc__ = __doc__  # absl prints it for --help
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main, flags_parser=startup.parse_flags)


if __name__ == "__main__":
    cli()
