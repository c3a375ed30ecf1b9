"""Multi-host start-up on JAX's own runtime: `jax.distributed.initialize` from flags or the environment.

On TPU VMs (and SLURM) JAX finds the coordinator itself; elsewhere pass the coordinator address, the
number of processes and this process's id. Must run before anything touches a JAX device.
"""

from __future__ import annotations

import jax


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
    """Joins this process to the others (every process of the job calls it with the same address)."""
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU hosts talk over gloo
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
