"""Orbax checkpoints: the latest N train states for resuming, and the best params by eval metric.

Orbax writes each step to a temporary directory and renames it when complete (on gs://, where a
rename is not atomic, it writes in place and commits with a marker file), so a run killed at any
moment leaves the previous checkpoints intact. Saves are asynchronous: a save the disk refuses
(full, read-only, the folder gone) surfaces at the next save, wait or close as one storage.WriteError
naming the directory, and leaving the `with` block waits for every background write, so no orbax
thread is still writing when the process exits. Orbax itself logs each such failure (with its
traceback, through absl) from the thread that met it; those lines stay, the sentence comes last.
States are saved as plain nested dicts
(`flax.serialization.to_state_dict`) and restored onto the structure of a freshly built state.
"""

from __future__ import annotations

import contextlib
import logging
import re

import flax.serialization
import jax
import orbax.checkpoint as ocp

from distilbert_jax import storage
from distilbert_jax.hf import CheckpointError


# Orbax's OCDBT layout (one small database per checkpoint, few objects: what it recommends on GCS).
# The tests' local GCS emulator lacks the conditional writes its manifest needs, so they turn it off.
USE_OCDBT = True

# A step's folder is created by save() itself, so a read-only or vanished workdir fails there. Created
# in the background (orbax's default), a refused mkdir left orbax's other save threads waiting 20
# minutes for its signal, and the process could not exit until they gave up (orbax 0.11.36).
_OPTIONS = dict(create=True, async_options=ocp.AsyncOptions(create_directories_asynchronously=False))


class Checkpoints:
    """`<workdir>/checkpoints` (latest `keep` states) and `<workdir>/best` (best params, one), on a
    local disk or a gs:// bucket (orbax writes there itself, marking a finished checkpoint by a commit
    file instead of a folder rename)."""

    def __init__(self, workdir: str, keep: int = 2, best_metric: str | None = None,
                 best_mode: str = "max"):
        self.latest = ocp.CheckpointManager(
            storage.resolve(storage.join(workdir, "checkpoints")),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, **_OPTIONS),
            item_handlers=ocp.StandardCheckpointHandler(use_ocdbt=USE_OCDBT))
        self.best = None
        if best_metric:
            self.best = ocp.CheckpointManager(
                storage.resolve(storage.join(workdir, "best")),
                options=ocp.CheckpointManagerOptions(
                    max_to_keep=1, best_fn=lambda m: m[best_metric], best_mode=best_mode, **_OPTIONS),
                item_handlers=ocp.StandardCheckpointHandler(use_ocdbt=USE_OCDBT))

    def latest_step(self) -> int | None:
        with self._writing(self.latest):  # orbax may re-raise an asynchronous save's failure here
            return self.latest.latest_step()

    def save(self, step: int, state) -> None:
        with self._writing(self.latest):
            self.latest.save(step, args=ocp.args.StandardSave(flax.serialization.to_state_dict(state)))

    @contextlib.contextmanager
    def _writing(self, manager):
        """Orbax's errors from writing (this save, or an earlier asynchronous one) as one
        storage.WriteError naming the directory."""
        try:
            yield
        except Exception as e:  # orbax re-raises tensorstore's ValueError or an OSError
            if isinstance(e, storage.WriteError):
                raise
            raise _write_error(manager.directory, e) from None

    def restore(self, target, step: int | None = None):
        """The saved state at `step` (default latest), placed like `target`; a checkpoint of
        another shape (another model in this workdir) is one sentence, not orbax's traceback."""
        step = self.latest.latest_step() if step is None else step
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct,
                                flax.serialization.to_state_dict(target))
        try:
            restored = self.latest.restore(step, args=ocp.args.StandardRestore(abstract))
        except (ValueError, KeyError, TypeError) as e:
            detail = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
            raise CheckpointError(
                f"The checkpoint at step {step} in {self.latest.directory} does not fit this run's "
                f"model and optimiser ({detail[:200]}); use a new workdir.") from None
        return flax.serialization.from_state_dict(target, restored)

    def save_best(self, step: int, params, metrics: dict[str, float]) -> None:
        if self.best is not None:
            with self._writing(self.best):
                self.best.save(step, args=ocp.args.StandardSave(params), metrics=metrics)

    def best_step(self) -> int | None:
        return None if self.best is None else self.best.best_step()

    def restore_best(self, target_params):
        """The params of the best evaluation, placed like `target_params`."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target_params)
        return self.best.restore(self.best.best_step(), args=ocp.args.StandardRestore(abstract))

    def wait(self) -> None:
        """Blocks until every asynchronous save has finished (or failed)."""
        for manager in (self.latest, self.best):
            if manager is not None:
                with self._writing(manager):
                    manager.wait_until_finished()

    def close(self, quietly: bool = False) -> None:
        """Waits for every asynchronous write, then releases the managers. A write that failed is one
        storage.WriteError, raised once both are closed; `quietly` (another error is on its way
        out) logs its sentence instead."""
        failure = None
        for manager in (self.latest, self.best):
            if manager is None:
                continue
            try:
                with self._writing(manager):
                    manager.close()  # waits first: a failed save is raised here
            except storage.WriteError as e:
                failure = failure or e
                # releases orbax's threads; a failure another of its threads re-raises here is the
                # same refused write, reported once
                with contextlib.suppress(Exception):
                    manager.close()
        if failure is not None:
            if not quietly:
                raise failure
            logging.getLogger(__name__).error("a checkpoint write failed too: %s", failure)

    def __enter__(self) -> "Checkpoints":
        return self

    def __exit__(self, exc_type, *_) -> None:
        self.close(quietly=exc_type is not None)


def _write_error(directory, error: Exception) -> storage.WriteError:
    """Orbax's failure (a tensorstore ValueError such as 'RESOURCE_EXHAUSTED ... No space left on
    device [os_error_code='28']', or an OSError) as one sentence naming the directory."""
    code = getattr(error, "errno", None)
    match = re.search(r"os_error_code='(\d+)'", str(error))
    if code is None and match:
        code = int(match.group(1))
    return storage.WriteError(code, f"cannot write a checkpoint in {directory}: "  # this save's, or an earlier one's
                              f"{storage.refusal(code, error)}; the checkpoints written before it are intact")
