"""Named meshes and the logical-axis rules that place parameters and activations on them.

Every parameter carries logical axis names (`embed`, `heads`, `mlp`, ...) as NNX metadata;
`ShardingRules` maps each name to mesh axes. Keeping the mapping in one small table means a
user who wants pure data parallelism, FSDP or tensor parallelism changes the mesh shape, not
the model.

Meshes use `AxisType.Auto` on purpose: the model annotates parameters and a few activations and
lets XLA propagate the rest. (JAX 0.10 defaults `jax.make_mesh` to Explicit axes, which would
require a sharding in the type of every intermediate.)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")


@dataclasses.dataclass(frozen=True)
class ShardingRules:
    """Logical axis name -> mesh axis name(s) or None (replicated)."""

    rules: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
        # parameters
        ("vocab", "tensor"),
        ("embed", "fsdp"),
        ("heads", "tensor"),
        ("kv_heads", "tensor"),
        ("head_dim", None),
        ("mlp", "tensor"),
        ("norm", None),
        ("value", None),
        # activations
        ("act_batch", ("data", "fsdp")),
        ("act_seq", None),
        ("act_embed", None),
        ("act_heads", "tensor"),
        ("act_kv_heads", "tensor"),
        ("act_mlp", "tensor"),
        ("act_vocab", "tensor"),
    )

    def mesh_axes(self, logical: str | None) -> tuple[str, ...]:
        if logical is None:
            return ()
        table = dict(self.rules)
        if logical not in table:
            raise KeyError(f"no sharding rule for logical axis {logical!r}; known: {sorted(table)}")
        target = table[logical]
        if target is None:
            return ()
        return (target,) if isinstance(target, str) else tuple(target)

    def spec(self, logical_axes: Sequence[str | None], shape: Sequence[int],
             mesh: Mesh) -> PartitionSpec:
        """PartitionSpec for an array of `shape` whose dims are named `logical_axes`.

        A mesh axis is dropped for a dim it does not divide (for example 4 KV heads on a tensor
        axis of 8): that dim is then replicated over it, which is correct and usually what one
        wants, rather than an error deep inside XLA. Mesh axes the mesh lacks, or that an
        earlier dim already uses, are dropped too.
        """
        if len(logical_axes) != len(shape):
            raise ValueError(f"logical axes {tuple(logical_axes)} do not match shape "
                             f"{tuple(shape)}")
        used: set[str] = set()
        out = []
        for name, size in zip(logical_axes, shape):
            axes = []
            for axis in self.mesh_axes(name):
                if axis not in mesh.shape or axis in used:
                    continue
                if size % (math.prod(mesh.shape[a] for a in axes) * mesh.shape[axis]) == 0:
                    axes.append(axis)
            used.update(axes)
            out.append(_entry(axes))
        return PartitionSpec(*out)

    def sharding(self, logical_axes: Sequence[str | None], shape: Sequence[int],
                 mesh: Mesh) -> NamedSharding:
        return NamedSharding(mesh, self.spec(logical_axes, shape, mesh))


DEFAULT_RULES = ShardingRules()


def _entry(axes: list[str]):
    """A PartitionSpec entry over mesh `axes`: None for none, the axis for one, else a tuple."""
    if not axes:
        return None
    return axes[0] if len(axes) == 1 else tuple(axes)


def canonical_spec(spec: PartitionSpec, mesh: Mesh) -> PartitionSpec:
    """The same placement written as jit returns it: no size-1 mesh axes, no trailing Nones.

    PartitionSpecs compare literally, so an array placed with `P(("data", "fsdp"), None)` on a
    mesh with data=1 comes back from a jitted step as `P("fsdp")`, and feeding it to the same
    step again compiles that step a second time. Arrays that go round a loop of jitted calls
    (donated buffers, training state) should be placed with the canonical spec.
    """
    entries = []
    for entry in spec:
        names = (entry,) if isinstance(entry, str) else entry or ()
        entries.append(_entry([a for a in names if mesh.shape[a] > 1]))
    while entries and entries[-1] is None:
        entries.pop()
    return PartitionSpec(*entries)


def make_mesh(shape: dict[str, int] | None = None,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh over `data`, `fsdp` and `tensor` (Auto axis types). One size may be -1 to take the
    remaining devices; the default puts every device on `fsdp`."""
    devices = list(devices if devices is not None else jax.devices())
    shape = dict(shape or {"data": 1, "fsdp": -1, "tensor": 1})
    unknown = set(shape) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"unknown mesh axes {sorted(unknown)}; use {MESH_AXES}")
    sizes = [shape.get(a, 1) for a in MESH_AXES]
    if sizes.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1; got {shape}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"mesh {shape} cannot use {len(devices)} devices: {known} does not "
                             "divide it")
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ValueError(
            f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices; {len(devices)} "
            "are available"
        )
    # jax.make_mesh orders devices by the physical topology (ICI rings on TPU).
    return jax.make_mesh(sizes, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                         devices=devices)


def constrain(x: jax.Array, logical_axes: Sequence[str | None],
              rules: ShardingRules = DEFAULT_RULES) -> jax.Array:
    """Activation sharding hint; a no-op unless a mesh is set with `jax.set_mesh`."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, rules.spec(logical_axes, x.shape, mesh))
