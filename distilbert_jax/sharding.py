"""Device mesh, logical-axis rules, and placing params, train states and batches on the mesh.

Sharding is declared once: every parameter and key activation carries logical axis names (see
`layers.py`); `RULES` map those names to the mesh axes `data`, `fsdp` and `tensor`. The mesh shape
picks the strategy with the same rules: all devices on `data` is data parallel, on `fsdp` shards
parameters and optimiser state, on `tensor` splits attention heads, FFN columns and the vocabulary.
A dimension a mesh axis does not divide stays whole (e.g. a 30,522-row vocabulary on 4 devices).
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from distilbert_jax.config import ConfigError

log = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "tensor")

# (logical name, mesh axes); the first matching rule whose mesh axes are free wins.
RULES: tuple[tuple[str, Any], ...] = (
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
}


def make_mesh(shape: str | Sequence[tuple[str, int]] = "dp", devices=None) -> Mesh:
    """A mesh from a preset name, "data:2,fsdp:-1,tensor:2", or (axis, size) pairs; one size may
    be -1 (the remaining devices)."""
    axes = _parse_mesh(shape)
    devices = np.asarray(jax.devices() if devices is None else devices)
    names = [name for name, _ in axes]
    if sorted(names) != sorted(MESH_AXES):
        raise ConfigError(f"mesh axes {names} must be exactly {list(MESH_AXES)}.")
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
    return Mesh(devices.reshape(sizes), names)


def from_config(config) -> tuple[Mesh, tuple]:
    """The mesh and the logical-axis rules a job's config asks for."""
    return make_mesh(config.mesh), tuple(tuple(rule) for rule in config.rules)


def param_placement(mesh: Mesh, rules=RULES):
    """model -> where each of its params goes (the `shardings` argument of hf.from_pretrained)."""
    from distilbert_jax.hf import abstract_params
    return lambda model: tree_shardings(abstract_params(model), mesh, rules)


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


def spec_for(names: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
             rules=RULES) -> PartitionSpec:
    """Logical names -> a PartitionSpec, leaving whole any dimension its mesh axes do not divide."""
    spec = nn.logical_to_mesh_axes(tuple(names), rules)
    fitted = []
    for dim, axes in zip(shape, spec):
        group = (axes,) if isinstance(axes, str) else tuple(axes or ())
        size = int(np.prod([mesh.shape[a] for a in group])) if group else 1
        fitted.append(axes if size > 1 and dim % size == 0 else None)
    return PartitionSpec(*fitted)


def tree_shardings(boxed_abstract, mesh: Mesh, rules=RULES):
    """NamedShardings for a tree whose leaves are `nn.LogicallyPartitioned` (others: replicated)."""
    def one(leaf):
        if isinstance(leaf, nn.LogicallyPartitioned):
            if not hasattr(leaf.value, "shape"):  # e.g. optax's MaskedNode: no array to place
                return leaf.value
            return NamedSharding(mesh, spec_for(leaf.names, leaf.value.shape, mesh, rules))
        return NamedSharding(mesh, PartitionSpec())
    return jax.tree.map(one, boxed_abstract, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Batches split along their first axis over the data-like mesh axes."""
    return NamedSharding(mesh, spec_for(("batch",), (mesh.shape["data"] * mesh.shape["fsdp"],), mesh))


def put_batch(batch: dict[str, np.ndarray], mesh: Mesh, global_rows: int) -> dict[str, jax.Array]:
    """A global batch from this process's rows (every process holds only its own slice)."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v, (global_rows, *v.shape[1:]))
            for k, v in batch.items()}


def in_mesh(fn, mesh: Mesh, rules=RULES):
    """`fn` run with `mesh` and `rules` in scope, so activation constraints by name take effect."""
    def wrapped(*args, **kwargs):
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
            return fn(*args, **kwargs)
    return wrapped


def to_host(tree, mesh: Mesh):
    """A sharded tree as numpy arrays on every process (gathered through a replicated copy)."""
    replicated = NamedSharding(mesh, PartitionSpec())
    gathered = jax.jit(lambda t: t, out_shardings=replicated)(tree)
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), gathered)
