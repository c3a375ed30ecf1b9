"""The start-up every command-line entry point shares: `--config=FILE[:arg]` with `--config.<field>=`
overrides parsed by ml_collections, and `command`: the package's logging, the process-wide
settings, and one exit status for each way a command ends (0, a fixable error 2, a preemption 75)."""

import logging
import os
import re
import sys
from typing import Callable, Sequence

import ml_collections
from absl import flags
from absl import logging as absl_logging
from ml_collections import config_flags

from distilbert_jax import configs, errors, settings
from distilbert_jax.config import ConfigError
from distilbert_jax.train import preemption

CONFIG = config_flags.DEFINE_config_file("config", None, "A configs/*.py file, e.g. configs/glue.py:sst2.",
                                         lock_config=True)


def parse_flags(argv):
    """absl's flag parsing, with --config resolved (`configs.resolve`) and an unknown or ill-typed
    --config.field as one sentence, not a trace."""
    argv = _resolve_config(argv)
    try:
        return flags.FLAGS(argv)
    except Exception as e:
        print(f"error: {_flag_error(e, argv)}", file=sys.stderr)
    sys.exit(errors.EXIT_STATUS)


def _flag_error(error: Exception, argv: Sequence[str]) -> str:
    """What went wrong parsing `--config` and its overrides in argv, as one sentence."""
    if isinstance(error, (AttributeError, KeyError)):  # ml_collections: no such field
        return _no_such_field(error, argv)
    if isinstance(error, (flags.Error, TypeError, ValueError)):  # a bad type, or get_config refusing arg
        return _last_line(error)
    return _config_file_error(error, _config_arg(argv))  # the file itself: a syntax error, an import


def _config_slot(argv) -> tuple[int, str] | None:
    """Where --config's value is in argv: (index, "--config=") inline, or (index, "") after it."""
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return i, "--config="
        if arg == "--config" and i + 1 < len(argv):
            return i + 1, ""
    return None


def _resolve_config(argv: list[str]) -> list[str]:
    """argv with the value of --config passed through configs.resolve."""
    argv, slot = list(argv), _config_slot(argv)
    if slot is not None:
        i, prefix = slot
        argv[i] = prefix + configs.resolve(argv[i][len(prefix):])
    return argv


def _no_such_field(error: Exception, argv: Sequence[str] = ()) -> str:
    """ml_collections' KeyError("'lrr'\\nDid you mean \"lr\" instead of \"lrr\"?") as one sentence,
    naming the field by its whole path as argv gave it (task_options.label_colum, not label_colum)."""
    while error.args and isinstance(error.args[0], BaseException):  # a KeyError holding a KeyError
        error = error.args[0]
    text = str(error.args[0]) if error.args else str(error)
    lines = [x.strip() for x in text.splitlines() if x.strip()] or [""]
    field = lines[0].strip("\"'")
    given = [arg[len("--config."):].split("=", 1)[0] for arg in argv if arg.startswith("--config.")]
    field = next((key for key in given if key == field or key.endswith("." + field)), field)
    match = re.search(r'Did you mean "([^"]+)"', text)
    if match:
        return f"the config has no field {field!r} (did you mean {match.group(1)!r}?)"
    return f"the config has no field {field!r}; see the config file for the fields it has."


def _config_arg(argv) -> str:
    """The value of --config in argv (the file, with its :arg)."""
    slot = _config_slot(argv)
    return argv[slot[0]][len(slot[1]):] if slot else "?"


def _config_file_error(error: BaseException, config_arg: str) -> str:
    """'cannot load --config=F: <what> at line N.' for an exception raised loading the config file."""
    path = config_arg.split(":", 1)[0]
    if isinstance(error, SyntaxError):
        where = f" at line {error.lineno}" if error.lineno else ""
        return f"cannot load --config={config_arg}: {error.msg}{where}."
    line = None
    tb = error.__traceback__
    while tb is not None:  # the deepest frame in the config file itself
        if os.path.abspath(tb.tb_frame.f_code.co_filename) == os.path.abspath(path):
            line = tb.tb_lineno
        tb = tb.tb_next
    where = f" at line {line}" if line else ""
    message = _last_line(error) if str(error) else ""
    return f"cannot load --config={config_arg}: {type(error).__name__}: {message}{where}."


def _last_line(error: Exception) -> str:
    """The informative line of an ml_collections error, which embeds a whole traceback."""
    line = [x.strip() for x in str(error).splitlines() if x.strip()][-1]
    return re.sub(r"^\w+(Error|Exception): ", "", line)


def config_from(config_arg: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """What `--config=config_arg` with `--config.<field>=<value>` overrides gives main, parsed by
    ml_collections the same way, outside main's command line (the sweep's points); an unknown
    field or an ill-typed value is one ConfigError sentence."""
    values, argv = flags.FlagValues(), ["distilbert-jax", f"--config={configs.resolve(config_arg)}", *overrides]
    config_flags.DEFINE_config_file("config", None, flag_values=values, lock_config=True, sys_argv=argv)
    try:
        values(argv)
        return values.config
    except Exception as e:
        raise ConfigError(_flag_error(e, argv)) from None


def load_config():
    """The --config file's ConfigDict with its overrides applied, or exit 2 with one sentence."""
    try:
        config = CONFIG.value
        config.job  # the file is loaded lazily: a missing one fails here
        return config
    except OSError as e:
        print(f"error: cannot load --config={config_flags.get_config_filename(flags.FLAGS['config'])}: "
              f"{_last_line(e)} (the packaged configs are {', '.join(configs.packaged())}).",
              file=sys.stderr)
    except Exception as e:  # a syntax error or a failing get_config in the config file
        print(f"error: {_config_file_error(e, flags.FLAGS['config'].serialize().split('=', 1)[-1])}",
              file=sys.stderr)
    sys.exit(errors.EXIT_STATUS)


def setup_logging() -> None:
    """The package's notices as plain lines on stderr; absl (orbax's per-save INFO lines) at WARNING."""
    absl_logging.set_verbosity(absl_logging.WARNING)
    ours = logging.getLogger("distilbert_jax")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    ours.handlers, ours.propagate = [handler], False
    ours.setLevel(logging.INFO)


def command(body: Callable[[], object], resume: str = "run the same command to resume",
            **configure) -> int:
    """Runs a command's `body` as every entry point does and returns its exit status: the package's
    logging and the process-wide settings first (`settings.configure(**configure)`, before any
    device); a fixable error (errors.UserError) is one `error: <sentence>` line and status 2, a
    preemption whose state is saved one line ending in `resume` and status 75; anything else is a
    bug and keeps its traceback."""
    setup_logging()
    settings.configure(**configure)
    try:
        body()
    except errors.UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return errors.EXIT_STATUS
    except preemption.Preempted as e:
        print(f"{e}; {resume}", file=sys.stderr)
        return preemption.EXIT_STATUS
    return 0
