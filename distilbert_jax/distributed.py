"""Multi-host start-up on JAX's own runtime: `jax.distributed.initialize` from flags or the environment.

On TPU VMs (and SLURM) JAX finds the coordinator itself; elsewhere pass the coordinator address, the
number of processes and this process's id. Must run before anything touches a JAX device.
"""

from __future__ import annotations

import os

import jax

DETERMINISTIC_OPS = "--xla_gpu_deterministic_ops=true"


def use_deterministic_ops(enabled: bool = True) -> None:
    """`deterministic=True` (every job's default): XLA runs a GPU's reductions (scatter-adds such as
    the embedding gradient, atomics) in a fixed order, so a resumed run repeats the uninterrupted one
    bit for bit there too. CPUs and TPUs are deterministic already; the flag does nothing on them.
    XLA reads it when the backend starts, so this must run before anything touches a device."""
    flags = os.environ.get("XLA_FLAGS", "")
    if enabled and "xla_gpu_deterministic_ops" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {DETERMINISTIC_OPS}".strip()


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
    """Joins this process to the others (every process of the job calls it with the same address).
    CPU hosts exchange collectives as `settings.configure(cpu_collectives=...)` chose (gloo)."""
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
