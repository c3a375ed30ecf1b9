"""Metrics a person can plot (TensorBoard events + metrics.jsonl) and a progress line with an ETA.

Only process 0 writes; every other process gets writers that do nothing. Both files are written on
the calling thread, so a write the disk refuses is raised where it is made (one storage.WriteError).
"""

from __future__ import annotations

import contextlib
import json
import sys
import time

import jax

from distilbert_jax import storage


class MetricWriter:
    """Scalars to `<workdir>/tb` (TensorBoard) and `<workdir>/metrics.jsonl` (one JSON per write).

    The events go through tensorboardX's synchronous EventsWriter, flushed at each write, not its
    SummaryWriter: that one writes from a thread which, on a full disk, dies with its own traceback
    and leaves the next scalars blocking on its full queue (measured with tensorboardX 2.6.5)."""

    def __init__(self, workdir: str):
        self.enabled = jax.process_index() == 0
        if not self.enabled:
            return
        from tensorboardX.event_file_writer import EventsWriter
        storage.makedirs(workdir)
        self.tb_dir = storage.join(workdir, "tb")
        storage.makedirs(self.tb_dir)
        self.tb = self._guarded(EventsWriter, storage.join(self.tb_dir, "events"), path=self.tb_dir)
        self.path = storage.join(workdir, "metrics.jsonl")
        # a local log stays open and is flushed line by line; a remote one (an object store has no
        # append) is kept here, read once, and uploaded whole at each write
        if storage.is_remote(self.path):
            self.jsonl = None
            self.remote_log = self._guarded(
                lambda: storage.read_text(self.path) if storage.exists(self.path) else "")
        else:
            self.jsonl = self._guarded(open, self.path, "a", encoding="utf-8")

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.summary import scalar
        scalars = {k: float(v) for k, v in scalars.items()}
        now = time.time()
        for key, value in scalars.items():
            event = Event(wall_time=now, step=step, summary=scalar(key, value))
            self._guarded(self.tb.write_event, event, path=self.tb_dir)
        self._guarded(self.tb.flush, path=self.tb_dir)
        line = json.dumps({"step": step, **scalars}) + "\n"
        if self.jsonl is None:
            self.remote_log += line
            storage.write_text(self.path, self.remote_log)
        else:
            self._guarded(self.jsonl.write, line)
            self._guarded(self.jsonl.flush)

    def _guarded(self, call, *args, path: str | None = None, **kwargs):
        """`call(...)`, a refused write (full disk, folder gone) as one storage.WriteError naming
        `path` (default metrics.jsonl)."""
        with storage.writing(path or self.path):
            return call(*args, **kwargs)

    def close(self) -> None:
        if self.enabled:
            self._guarded(self.tb.close, path=self.tb_dir)
            if self.jsonl is not None:
                self._guarded(self.jsonl.close)

    def __enter__(self) -> "MetricWriter":
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.close()
        else:  # an error is on its way out: close without raising another
            with contextlib.suppress(OSError):
                self.close()


class Progress:
    """Prints `step/total, loss, steps/s, examples/s, ETA` (process 0 only)."""

    def __init__(self, total_steps: int, examples_per_step: int, start_step: int = 0,
                 stream=sys.stdout):
        self.total, self.per_step, self.stream = total_steps, examples_per_step, stream
        self.last_step, self.last_time = start_step, time.perf_counter()
        self.enabled = jax.process_index() == 0

    def rates(self, step: int) -> dict[str, float]:
        """Throughput since the previous call, and resets the window."""
        now = time.perf_counter()
        steps_per_s = (step - self.last_step) / max(now - self.last_time, 1e-9)
        self.last_step, self.last_time = step, now
        return {"perf/steps_per_sec": steps_per_s,
                "perf/examples_per_sec": steps_per_s * self.per_step}

    def report(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        rate = scalars.get("perf/steps_per_sec", 0.0)
        eta = (self.total - step) / rate if rate > 0 else float("nan")
        shown = " ".join(f"{k.split('/')[-1]}={v:.4g}" for k, v in scalars.items())
        print(f"[{step}/{self.total}] {shown} eta={_duration(eta)}", file=self.stream, flush=True)


def _duration(seconds: float) -> str:
    if seconds != seconds:  # NaN
        return "?"
    minutes, s = divmod(int(seconds), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}h{m:02d}m{s:02d}s" if hours else f"{m}m{s:02d}s"
