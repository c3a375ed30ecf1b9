"""Entry point for every job:

    python -m distilbert_jax.main --config=configs/glue.py:sst2 --workdir=/path/run [--config.lr=3e-5 ...]

`config.job` picks the job (see `jobs.JOBS`: 'finetune', 'evaluate', 'distill', 'fit_teacher_head'
or 'miniature'); the work lives in importable functions that tests and notebooks call directly.
"""

import logging
import re
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from distilbert_jax import distributed, jobs

_CONFIG = config_flags.DEFINE_config_file("config", None, "A configs/*.py file, e.g. configs/glue.py:sst2.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Join a multi-host job through jax.distributed "
                               "(TPU VMs find their peers; elsewhere give the three flags below).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "How many processes the job has.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in the job.")

def parse_flags(argv):
    """absl's flag parsing, with an unknown or ill-typed --config.field as one sentence, not a trace."""
    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError) as e:  # ml_collections: no such field
        field = str(e).strip("\"'")
        print(f"error: the config has no field {field!r}; see the config file for the fields it has.",
              file=sys.stderr)
    except (flags.Error, TypeError, ValueError) as e:  # e.g. a bad type, or get_config(arg) refusing arg
        print(f"error: {_last_line(e)}", file=sys.stderr)
    sys.exit(2)


def _last_line(error: Exception) -> str:
    """The informative line of an ml_collections error, which embeds a whole traceback."""
    line = [x.strip() for x in str(error).splitlines() if x.strip()][-1]
    return re.sub(r"^\w+(Error|Exception): ", "", line)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if _MULTIHOST.value or _COORDINATOR.value:
        distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax's per-save INFO lines drown the progress
    logging.getLogger("distilbert_jax").setLevel(logging.INFO)
    try:
        config = _CONFIG.value
        config.job  # the file is loaded lazily: a missing one fails here
    except OSError as e:
        print(f"error: cannot load --config={config_flags.get_config_filename(flags.FLAGS['config'])}: "
              f"{_last_line(e)}", file=sys.stderr)
        sys.exit(2)
    try:
        results = jobs.run(config, _WORKDIR.value)
    except jobs.USER_ERRORS as e:  # one clear sentence, a non-zero exit
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    print("results:", results.get("eval", results))


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main, flags_parser=parse_flags)
