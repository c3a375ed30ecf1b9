"""Preemption: a spot or preemptible TPU VM gets a SIGTERM about 30 seconds before it is taken.

While a loop runs (`watch()`), a SIGTERM lets the step in flight finish; the loop then checkpoints
that step and raises `Preempted`, which the command line reports in one line and turns into exit
status 75 (EX_TEMPFAIL, "try again"), so a restart loop can tell a preemption from a failure.
Running the same command again resumes from that step exactly. In a multi-host run every host
must save the same step: JAX's preemption service (started by jax.distributed) catches the
SIGTERM on any host and `reached` becomes True on all of them at one agreed step.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

import jax
from jax.experimental import multihost_utils

EXIT_STATUS = 75  # sysexits.h EX_TEMPFAIL: the run stopped for a reason outside it; run it again


class Preempted(Exception):
    """The run was asked to stop and saved the state of `step` in each of `workdirs`."""

    def __init__(self, step: int, workdirs: list[str]):
        self.step, self.workdirs = step, workdirs
        super().__init__(f"preempted (SIGTERM): saved step {step} in {', '.join(workdirs)}")


class Notice:
    """Whether the run has been asked to stop, checked once per step by every process."""

    def __init__(self):
        self.signalled = False

    def reached(self, step: int) -> bool:
        """True at the step every process saves: at once in one process, at the step the JAX
        preemption service agrees on across several."""
        if jax.process_count() > 1:
            return multihost_utils.reached_preemption_sync_point(step)
        return self.signalled


@contextlib.contextmanager
def watch() -> Iterator[Notice]:
    """A Notice for the loop, SIGTERM noted (not fatal) while the block runs. Across processes
    JAX's own handler listens instead; off the main thread no handler can be set."""
    notice = Notice()
    if jax.process_count() > 1 or threading.current_thread() is not threading.main_thread():
        yield notice
        return

    def note(signum, frame):
        notice.signalled = True

    previous = signal.signal(signal.SIGTERM, note)
    try:
        yield notice
    finally:
        signal.signal(signal.SIGTERM, previous)
