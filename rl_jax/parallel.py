"""Data parallelism (and FSDP) over all devices with a ``jax.sharding.Mesh`` and ``jax.jit``.

The mesh has two axes: ``"data"`` and ``"fsdp"``. A batch is split along its leading dimension
over both axes (every device gets different examples); parameters are replicated over ``"data"``
and, when ``fsdp > 1``, each large parameter is split over ``"fsdp"`` along one of its dimensions.
The step function itself is ordinary single-device code: ``jax.jit`` with these shardings inserts
the gradient all-reduce (what ``pmap`` + ``pmean`` did by hand). There is no ``shard_map`` here,
which avoids its trap: with ``check_vma=True`` the gradient of a replicated parameter is already
summed over devices, and a ``pmean`` on top multiplies it by the device count.

The work is split, not only the results: the batch arrays of a step are sharded, and every
function that builds its own batch inside ``jit`` (a shuffle, a repeat) re-constrains it with
``constrain_rows``; without that, XLA may gather a whole batch onto every device and run the model
on all of it there (same results, ``devices`` times the work). Functions that take host arrays of
any row count (the sampler, reward scoring) place them with ``place_rows``, which pads the rows to
a multiple of the device count; the caller drops the padded rows of the result.

Across hosts (processes), call ``jax.distributed.initialize()`` first; ``jax.devices()`` then
lists every process's devices. Each process holds a contiguous block of a batch's rows,
``process_rows``: it loads only those examples (``process_share``), ``shard_batch`` assembles the
global batch from every process's block, ``local_rows`` brings a global array's block to the host,
``to_host`` the whole array (an all-gather), and ``process_max`` agrees on a padded width.
``np.asarray`` of an array that spans other processes' devices fails: use these instead.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA = "data"
FSDP = "fsdp"
BATCH_AXES = (DATA, FSDP)


def make_mesh(*, fsdp: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ``("data", "fsdp")`` mesh over ``devices`` (default: all devices of all hosts).

    ``jax.make_mesh`` orders the devices by the physical topology (TPU torus, GPU NVLink
    islands within a host), so an FSDP group, which all-gathers parameters every layer, is made
    of neighbouring devices; the data axis, which all-reduces once per step, spans the slower
    links. The axes are ``Auto`` (XLA propagates the shardings; ``make_mesh``'s own default
    would be ``Explicit``).

    Args:
      fsdp: how many devices share (shard) one copy of the parameters; ``data = len(devices) //
        fsdp`` copies exist.
      devices: the devices to use.
    """
    devices = list(jax.devices() if devices is None else devices)
    if fsdp < 1 or len(devices) % fsdp:
        raise ValueError(f"fsdp={fsdp} must be >= 1 and divide the device count {len(devices)}.")
    return jax.make_mesh(
        (len(devices) // fsdp, fsdp), BATCH_AXES, (AxisType.Auto, AxisType.Auto), devices=devices
    )


def split_mesh(mesh: Mesh, rollout_devices: int) -> tuple[Mesh, Mesh | None]:
    """``(trainer mesh, sampler mesh)``: the last ``rollout_devices`` devices of ``mesh`` (in its
    order) form the sampler's ``("data", "fsdp")`` mesh (fsdp 1: each holds whole weights), the
    others the trainer's, with ``mesh``'s fsdp. ``rollout_devices = 0``: ``(mesh, None)``.

    Raises:
      ValueError: ``rollout_devices`` not in ``[0, devices)``, or the trainer's devices do not
        divide by ``mesh``'s fsdp.
    """
    devices = list(mesh.devices.flat)
    if not 0 <= rollout_devices < len(devices):
        raise ValueError(f"rollout_devices = {rollout_devices}: expected 0 <= it < the mesh's "
                         f"{len(devices)} devices")
    if rollout_devices == 0:
        return mesh, None
    trainer, sampler = devices[:-rollout_devices], devices[-rollout_devices:]
    return make_mesh(fsdp=mesh.shape[FSDP], devices=trainer), make_mesh(devices=sampler)


def replicated(mesh: Mesh) -> NamedSharding:
    """The sharding of an array that every device holds whole (metrics, scalars)."""
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """The sharding of a batch array: leading dimension split over every device of the mesh."""
    return NamedSharding(mesh, P(BATCH_AXES))


def num_batch_devices(mesh: Mesh) -> int:
    """How many ways a batch is split: every device of the mesh (both axes)."""
    return int(np.prod([mesh.shape[axis] for axis in BATCH_AXES]))


def constrain_rows(tree: Any, mesh: Mesh, axis: int = 0) -> Any:
    """``with_sharding_constraint``: dimension ``axis`` of every leaf split over all devices.

    For use inside ``jit``, on batches built there (``x[perm]``, a reshape into minibatches):
    each device then keeps, and computes on, only its share of the rows.
    """
    sharding = NamedSharding(mesh, P(*([None] * axis), BATCH_AXES))
    return jax.lax.with_sharding_constraint(tree, jax.tree.map(lambda _: sharding, tree))


def place_rows(arrays: Any, mesh: Mesh) -> tuple[Any, int]:
    """Host arrays ``[rows, ...]`` of any row count, split over the mesh: ``(placed, rows)``.

    The rows are padded to a multiple of the device count by repeating the last row (a valid
    input for every model function); the caller drops rows ``rows:`` of the result. Every host
    passes the same (global) arrays.
    """
    leaves = jax.tree.leaves(arrays)
    rows = int(np.shape(leaves[0])[0])
    pad = -rows % num_batch_devices(mesh)
    sharding = batch_sharding(mesh)

    def place(x):
        x = np.asarray(x)
        if x.shape[0] != rows:
            raise ValueError(f"place_rows: leaves with {x.shape[0]} and {rows} rows")
        if pad:
            x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)])
        return jax.device_put(x, sharding)

    return jax.tree.map(place, arrays), rows


def process_rows(mesh: Mesh, rows: int) -> slice:
    """The rows ``[start, stop)`` of a ``rows``-row batch that this process's devices hold.

    A batch is split over the mesh's devices in mesh order; ``make_mesh`` keeps each process's
    devices together, so this is one block (process ``p`` of ``n`` equal ones: ``[p * rows / n,
    (p + 1) * rows / n)``). One process: every row.

    Raises:
      ValueError: ``rows`` does not divide by the device count, or this process's rows are not
        one block (a hand-made mesh that interleaves processes).
    """
    devices = num_batch_devices(mesh)
    if rows % devices:
        raise ValueError(f"a batch of {rows} rows does not split over the {devices} devices")
    indices = batch_sharding(mesh).addressable_devices_indices_map((rows,)).values()
    bounds = sorted((index[0].start or 0, index[0].stop or rows) for index in indices)
    start, stop = bounds[0][0], bounds[-1][1]
    if stop - start != rows // devices * len(bounds):
        raise ValueError(f"process {jax.process_index()}'s rows of the mesh are not one block: "
                         f"{bounds}; build the mesh with make_mesh")
    return slice(start, stop)


def process_share(items: Sequence[Any], mesh: Mesh) -> list[Any]:
    """This process's block of a global batch ``items`` (``process_rows``): what it loads."""
    return list(items[process_rows(mesh, len(items))])


def local_rows(x: Any, mesh: Mesh) -> np.ndarray:
    """This process's rows (``process_rows``) of ``x`` ``[rows, ...]``, as a host array.

    ``x`` may be a host array, a global ``jax.Array`` split over the batch axes (its own shards
    are read: no transfer between processes), or any other global array (then gathered first).
    """
    if not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated:
        host = np.asarray(x if not isinstance(x, jax.Array) or x.is_fully_addressable
                          else x.addressable_data(0))
        return host[process_rows(mesh, host.shape[0])]
    rows = process_rows(mesh, x.shape[0])
    blocks = {}
    for shard in x.addressable_shards:
        index = shard.index
        full = all(i == slice(None) or (i.start in (None, 0) and i.stop in (None, d))
                   for i, d in zip(index[1:], x.shape[1:], strict=True))
        if full:
            blocks[index[0].start or 0] = shard
    parts, at = [], rows.start
    while at < rows.stop and at in blocks:
        part = np.asarray(blocks[at].data)
        parts.append(part)
        at += part.shape[0]
    if at != rows.stop:  # not split over the batch axes as expected: gather it
        return to_host(x)[rows]
    return np.concatenate(parts)


def to_host(x: Any) -> np.ndarray:
    """The whole of ``x`` as a host array, on every process (an all-gather across processes when
    ``x`` spans other processes' devices; every process must call it)."""
    if not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated:
        return np.asarray(x if not isinstance(x, jax.Array) or x.is_fully_addressable
                          else x.addressable_data(0))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def gather_rows(x: np.ndarray) -> np.ndarray:
    """Every process's host block ``[rows, ...]``, concatenated in process order (the global
    batch; equal shapes on every process). One process: ``x`` itself."""
    if jax.process_count() == 1:
        return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(np.asarray(x), tiled=True))


def process_max(value: int) -> int:
    """The largest ``value`` over processes (e.g. the padded width of a batch whose rows each
    process encodes itself, so that every block has one shape)."""
    if jax.process_count() == 1:
        return int(value)
    return int(np.max(multihost_utils.process_allgather(np.int64(value))))


def _param_spec(shape: tuple[int, ...], fsdp: int, min_size: int) -> P:
    """Split the largest dimension divisible by ``fsdp`` over ``"fsdp"``; else replicate."""
    if fsdp == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
        if shape[dim] % fsdp == 0:
            spec = [None] * len(shape)
            spec[dim] = FSDP
            return P(*spec)
    return P()


def param_sharding(params: Any, mesh: Mesh, *, min_size: int = 2**14) -> Any:
    """Shardings for a pytree of parameters (or optimizer state): FSDP over ``"fsdp"``.

    Arrays with fewer than ``min_size`` elements, or with no dimension divisible by the ``fsdp``
    axis size, are replicated. With ``fsdp == 1`` everything is replicated (pure data parallelism).
    """
    fsdp = mesh.shape[FSDP]
    return jax.tree.map(
        lambda x: NamedSharding(mesh, _param_spec(tuple(np.shape(x)), fsdp, min_size)), params
    )


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Place a host's batch on the mesh, split along the leading dimension.

    Every leaf must have a leading batch dimension divisible by the number of devices this host
    feeds. Across hosts, each host passes its own part; the global batch is their concatenation.

    Raises:
      ValueError: naming the leaf whose leading dimension does not divide.
    """
    sharding = batch_sharding(mesh)
    local_devices = len(mesh.local_devices)

    def place(path, x):
        x = np.asarray(x)
        if x.ndim == 0 or x.shape[0] % local_devices:
            raise ValueError(
                f"batch leaf {jax.tree_util.keystr(path) or '<root>'} has shape {x.shape}: its "
                f"leading (batch) dimension must be a multiple of the {local_devices} local "
                "devices."
            )
        global_shape = (x.shape[0] * jax.process_count(), *x.shape[1:])
        return jax.make_array_from_process_local_data(sharding, x, global_shape)

    return jax.tree_util.tree_map_with_path(place, batch)


def data_parallel_step(
    step_fn: Callable[[Any, Any], tuple[Any, Any]],
    mesh: Mesh,
    state_sharding: Any,
    *,
    donate_state: bool = True,
) -> Callable[[Any, Any], tuple[Any, Any]]:
    """``jax.jit`` of ``step_fn(state, batch) -> (new_state, metrics)`` over the mesh.

    The state keeps ``state_sharding`` (from ``param_sharding`` or ``replicated``), the batch is
    split over all devices, the metrics come back replicated. ``step_fn`` computes means over the
    whole (global) batch as if it were on one device; XLA adds the cross-device reductions.
    With ``donate_state`` the old state's buffers are reused for the new one.
    """
    return jax.jit(
        step_fn,
        in_shardings=(state_sharding, batch_sharding(mesh)),
        out_shardings=(state_sharding, replicated(mesh)),
        donate_argnums=(0,) if donate_state else (),
    )


_DOT = re.compile(r"= (\w+)\[([\d,]*)\]\S* dot\(")


def program_devices(compiled: jax.stages.Compiled | jax.stages.Lowered) -> frozenset:
    """The devices a compiled program runs on: the union of its inputs' and outputs' sharding
    device sets (a ``Lowered`` is compiled here)."""
    if isinstance(compiled, jax.stages.Lowered):
        compiled = compiled.compile()
    shardings = jax.tree.leaves((compiled.input_shardings, compiled.output_shardings))
    return frozenset(device for sharding in shardings for device in sharding.device_set)


def compiled_work(compiled: jax.stages.Compiled | jax.stages.Lowered) -> dict[str, Any]:
    """What one device computes in a compiled function (``jax.jit(f).lower(*args).compile()``,
    which can then be called with ``args``; a ``Lowered`` is compiled here), read from the
    per-device program.

    Returns ``largest_dot`` (the output shape of its largest dot, e.g. the LM head's
    ``[rows * time, vocab]``), ``dot_elements`` (that shape's size), ``temp_bytes`` (XLA's
    temporary buffers) and ``flops`` (XLA's cost analysis; a loop body counts once). A
    data-parallel function on ``d`` devices should show ``1/d`` of the one-device numbers.
    """
    if isinstance(compiled, jax.stages.Lowered):
        compiled = compiled.compile()
    shapes = [
        tuple(int(d) for d in dims.split(",") if d) for _, dims in _DOT.findall(compiled.as_text())
    ]
    largest = max(shapes, key=lambda s: int(np.prod(s, dtype=np.int64)), default=())
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    return {
        "largest_dot": largest,
        "dot_elements": int(np.prod(largest, dtype=np.int64)),
        "temp_bytes": int(compiled.memory_analysis().temp_size_in_bytes),
        "flops": float((cost or {}).get("flops", 0.0)),
    }
