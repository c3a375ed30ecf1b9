"""Device mesh, logical-axis rules, and placing params, train states and batches on the mesh.

Sharding is declared once: every parameter and key activation carries logical axis names (see
`models/layers.py`); rules (a config's `rules`, `RULES` by default) map those names to the mesh axes `data`, `fsdp` and `tensor`,
and to the optional `runs` axis over which a stacked sweep spreads its runs (logical name `runs`,
the leading axis of every stacked leaf). The mesh shape picks the strategy with the same rules: all devices on `data` is data parallel, on `fsdp` shards
parameters and optimiser state, on `tensor` splits attention heads, FFN columns and the vocabulary.
A dimension a mesh axis does not divide stays whole (e.g. a 30,522-row vocabulary on 4 devices).
A `Layout` (mesh + rules) is the one value every job passes around to place things.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from distilbert_jax import models
from distilbert_jax.config import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")
RUNS = "runs"  # the optional mesh axis of stacked runs (train/step.make_stacked_step)

# (logical name, mesh axes); the first matching rule whose mesh axes are free wins.
RULES: tuple[tuple[str, Any], ...] = (
    ("runs", RUNS),  # stacked runs: each device group trains its own runs
    ("batch", ("data", "fsdp")),  # activations: the batch is split over every data-like axis
    ("length", None),
    ("act_embed", None),
    ("act_mlp", "tensor"),
    ("vocab", "tensor"),  # parameters
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("embed", "fsdp"),
    ("hidden", None),
    ("position", None),
    ("token_types", None),
    ("classes", None),
    ("norm", None),
)

# Mesh shapes for the usual strategies (-1: the remaining devices).
PRESETS = {
    "dp": (("data", -1), ("fsdp", 1), ("tensor", 1)),
    "fsdp": (("data", 1), ("fsdp", -1), ("tensor", 1)),
    "tp": (("data", 1), ("fsdp", 1), ("tensor", -1)),
    "fsdp_tp": (("data", 1), ("fsdp", -1), ("tensor", 2)),
    "dp_tp": (("data", -1), ("fsdp", 1), ("tensor", 2)),
    "runs": ((RUNS, -1), ("data", 1), ("fsdp", 1), ("tensor", 1)),  # stacked runs over every device
}


def make_mesh(shape: str | Sequence[tuple[str, int]] = "dp", devices=None) -> Mesh:
    """A mesh from a preset name, "data:2,fsdp:-1,tensor:2" (optionally with "runs:N" first), or
    (axis, size) pairs; one size may be -1 (the remaining devices)."""
    axes = _parse_mesh(shape)
    devices = np.asarray(jax.devices() if devices is None else devices)
    names = [name for name, _ in axes]
    if sorted(n for n in names if n != RUNS) != sorted(MESH_AXES) or names.count(RUNS) > 1:
        raise ConfigError(f"mesh axes {names} must be exactly {list(MESH_AXES)}, optionally with {RUNS!r}.")
    sizes = [size for _, size in axes]
    if sizes.count(-1) > 1:
        raise ConfigError(f"mesh {axes}: at most one axis may be -1.")
    known = int(np.prod([s for s in sizes if s != -1]))
    if devices.size % known:
        raise ConfigError(f"mesh {axes} does not fit {devices.size} devices.")
    sizes = [devices.size // known if s == -1 else s for s in sizes]
    if int(np.prod(sizes)) != devices.size:
        raise ConfigError(f"mesh {dict(zip(names, sizes))} needs {int(np.prod(sizes))} devices, "
                         f"{devices.size} are available.")
    if devices.flat[0].platform == "tpu":  # neighbours on the torus stay neighbours on the mesh
        grid = mesh_utils.create_device_mesh(sizes, list(devices.flat), allow_split_physical_axes=True)
    else:
        grid = devices.reshape(sizes)
    return Mesh(grid, names)


def _parse_mesh(shape) -> tuple[tuple[str, int], ...]:
    if not isinstance(shape, str):
        return tuple((str(name), int(size)) for name, size in shape)
    if shape in PRESETS:
        return PRESETS[shape]
    try:
        return tuple((name.strip(), int(size)) for name, size in
                     (item.split(":") for item in shape.split(",")))
    except ValueError:
        raise ConfigError(f"mesh {shape!r} is neither a preset ({', '.join(PRESETS)}) nor "
                         "'data:N,fsdp:N,tensor:N'.") from None


def spec_for(names: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules) -> PartitionSpec:
    """Logical names -> a PartitionSpec, leaving whole any dimension its mesh axes do not divide."""
    spec = nn.logical_to_mesh_axes(tuple(names), rules)
    fitted = []
    for dim, axes in zip(shape, spec):
        size = _ways(mesh, axes)
        fitted.append(axes if size > 1 and dim % size == 0 else None)
    return PartitionSpec(*fitted)


def _ways(mesh: Mesh, axes) -> int:
    """How many devices a PartitionSpec entry (None, an axis, or a tuple of axes) splits over."""
    group = (axes,) if isinstance(axes, str) else tuple(axes or ())
    return int(np.prod([mesh.shape[a] for a in group])) if group else 1


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where everything lives: a device mesh and the logical-axis rules that map names onto it.

    Every placement (params, train states, batches, jitted steps) goes through one Layout, so the
    rules of a run's config are honoured everywhere and never silently replaced by a default.
    """
    mesh: Mesh
    rules: tuple

    @classmethod
    def from_config(cls, config, devices=None) -> "Layout":
        """The mesh (`config.mesh`) and rules (`config.rules`) a job's config asks for."""
        return cls(make_mesh(config.mesh, devices), tuple(tuple(rule) for rule in config.rules))

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    @property
    def batch(self) -> NamedSharding:
        """Batches split along their first axis over the mesh axes the rules give `batch`."""
        return NamedSharding(self.mesh, PartitionSpec(nn.logical_to_mesh_axes(("batch",), self.rules)[0]))

    @property
    def runs_ways(self) -> int:
        """How many device groups stacked runs are spread over (1 on a mesh without a runs axis)."""
        return int(self.mesh.shape.get(RUNS, 1))

    def stacked(self, shardings):
        """The shardings of a tree stacked on a new leading runs axis, each leaf otherwise placed
        as `shardings` places it: the runs axis over the mesh axes the rules give `runs`."""
        axes = nn.logical_to_mesh_axes(("runs",), self.rules)[0]
        axes = axes if self.runs_ways > 1 and axes is not None else None
        return jax.tree.map(lambda s: NamedSharding(self.mesh, PartitionSpec(axes, *s.spec)), shardings)

    def put_stacked_batch(self, batch):
        """`put_batch` for K batches stacked on a leading runs axis (rows on the second axis)."""
        sharding = self.stacked(self.batch)
        return jax.tree.map(lambda v: jax.make_array_from_process_local_data(
            sharding, v, (v.shape[0], v.shape[1] * jax.process_count(), *v.shape[2:])), batch)

    @property
    def data_ways(self) -> int:
        """How many slices a batch is split into (batch sizes must be multiples of it)."""
        return _ways(self.mesh, self.batch.spec[0])

    def shardings(self, boxed_abstract):
        """NamedShardings for a tree whose leaves are `nn.LogicallyPartitioned` (others replicated)."""
        def one(leaf):
            if isinstance(leaf, nn.LogicallyPartitioned):
                if not hasattr(leaf.value, "shape"):  # e.g. optax's MaskedNode: no array to place
                    return leaf.value
                return NamedSharding(self.mesh, spec_for(leaf.names, leaf.value.shape, self.mesh, self.rules))
            return self.replicated
        return jax.tree.map(one, boxed_abstract, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))

    def params(self, model):
        """Where each of `model`'s params goes (the `shardings` argument of hf.from_pretrained)."""
        return self.shardings(models.abstract_params(model))

    def put_batch(self, batch):
        """A global batch (a tree of arrays) from this process's rows: every process holds an
        equal contiguous slice of each array's first axis."""
        return jax.tree.map(lambda v: jax.make_array_from_process_local_data(
            self.batch, v, (v.shape[0] * jax.process_count(), *v.shape[1:])), batch)

    def jit(self, fn, in_shardings, out_shardings, donate_argnums=()):
        """`jax.jit` with explicit shardings, run with the mesh and rules in scope so activation
        constraints by logical name take effect."""
        jitted = jax.jit(fn, in_shardings=in_shardings, out_shardings=out_shardings,
                         donate_argnums=donate_argnums)

        def in_scope(method):
            def call(*args, **kwargs):
                with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
                    return method(*args, **kwargs)
            return call
        wrapped = in_scope(jitted)
        wrapped.lower = in_scope(jitted.lower)  # the compiled program, e.g. for its HLO or cost
        return wrapped

    def to_host(self, tree):
        """A sharded tree as numpy arrays on every process (gathered through a replicated copy)."""
        gathered = jax.jit(lambda t: t, out_shardings=self.replicated)(tree)
        return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), gathered)
