"""Process-wide JAX settings, each named with its default, applied once at an entry point.

Every command (`startup.command`) calls `configure` before anything touches a device; a notebook
or a script that wants the same behaviour calls `dj.configure()` itself (nothing else in the
package changes JAX for the whole process: building a model, a step or a pipeline never does).

    import distilbert_jax as dj
    dj.configure()                                   # the defaults below
    dj.configure(unroll_threefry_on_cpu=False, compilation_cache_dir="/tmp/xla_cache")
"""

from __future__ import annotations

import dataclasses

import jax

from distilbert_jax import distributed, threefry


@dataclasses.dataclass(frozen=True)
class Settings:
    # Dropout's random bits on a CPU: JAX's Threefry hash compiled straight-line instead of as a
    # loop (threefry.py): the same bits, a training update up to a fifth faster, about 2 s more
    # compile time per training step shape. Once on, it stays on for the process.
    unroll_threefry_on_cpu: bool = True
    # GPU reductions (scatter-adds, atomics) in a fixed order, so a resumed run repeats an
    # uninterrupted one bit for bit there too; nothing changes on CPU and TPU. XLA reads it when
    # the backend starts: it takes effect only if set before the first device is touched.
    deterministic_ops: bool = True
    # A folder for XLA's persistent compilation cache (compiled programs reused across runs and
    # processes; the miniature's students share shapes). None leaves JAX's own setting.
    compilation_cache_dir: str | None = None
    compilation_cache_min_seconds: float = 0.5  # cache only programs that took this long to compile
    # How CPU processes of a multi-host job exchange collectives; used once jax.distributed
    # joins processes (`--multihost`). None leaves JAX's own choice.
    cpu_collectives: str | None = "gloo"


def configure(**overrides) -> Settings:
    """Applies `Settings(**overrides)` to this process and returns it; an unknown name is refused."""
    known = {f.name for f in dataclasses.fields(Settings)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(f"configure() has no setting {unknown}; the settings are {sorted(known)}.")
    settings = Settings(**overrides)
    if settings.unroll_threefry_on_cpu:
        threefry.unroll_on_cpu()
    distributed.use_deterministic_ops(settings.deterministic_ops)
    if settings.compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", settings.compilation_cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs",
                          settings.compilation_cache_min_seconds)
    if settings.cpu_collectives:
        jax.config.update("jax_cpu_collectives_implementation", settings.cpu_collectives)
    return settings
