"""The errors a user can fix, and the one exit status every command gives them.

Bad input, or a run that cannot go on (a config field, a data row, a checkpoint that does not fit,
a file the disk refuses, a non-finite loss), raises a subclass of `UserError` whose message is one
sentence naming the culprit. Every command (main, predict, export, plan, the sweep runner, the corpus
preparation) prints it as `error: <sentence>` and exits with `EXIT_STATUS`; anything else is a bug
and keeps its traceback. A preemption is neither: it exits 75 (train/preemption.py).
"""

EXIT_STATUS = 2


class UserError(Exception):
    """A problem the user can fix, stated in one sentence."""
