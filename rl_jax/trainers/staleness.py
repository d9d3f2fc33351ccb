"""Off-policy rollouts with a staleness bound (``rl.max_staleness = k``): the schedule, the
version stamps and the pending queue that a checkpoint saves.

Versions: the policy of version ``v`` is the policy after ``v`` updates (``TrainState.step``).
Step ``s`` trains version ``s`` into ``s + 1``. On-policy (``k = 0``) step ``s`` trains on a
rollout sampled by version ``s``; with ``k >= 1`` on one sampled by version ``max(0, s - k)``::

    version(s) = max(0, s - k)          staleness(s) = s - version(s) = min(s, k)

The queue: before step ``s`` trains, the rollout of step ``s + k`` is sampled by the policy of
step ``s`` (the only params that exist then, so that sampling can run while step ``s`` trains);
the rollouts of steps ``0 .. k`` all come from version 0. Between steps the queue holds the
rollouts of steps ``s + 1 .. s + k`` (``Pending``: rollout, version, the step it is for, its
host metrics); it goes into the checkpoint's host state (``encode_pending``), so a resumed run
trains on the very rollouts an uninterrupted one would. Every rollout row carries its version
(``Round.version``).

Each rollout is drawn with the PRNG key and data position the step it is for would use
on-policy, so ``k = 0`` through this queue is today's loop, operation for operation.

Late samples (``rl.stale_policy``): with dynamic sampling a round can hold more informative
groups than a step wants. ``"wait"`` drops that surplus (the on-policy behaviour: a short batch
waits for fresh rounds and is topped up with masked fillers), so every trained row has staleness
<= k. ``"drop"`` and ``"keep"`` put it in a carry buffer (``add_to_carry``, at most
``num_prompts`` groups, the newest kept) from which later short batches take groups, oldest
first, in place of their fillers (``use_carry``). A carried group sampled by version ``v`` is
late at step ``s`` when ``s - v > k``: ``"drop"`` discards it, ``"keep"`` trains on it with the
configured ``loss.is_correction`` (its rows keep their own sampler log-probs and version). The
counts are metrics (``late_dropped``, ``late_kept``, ``carried_used``, ``carry_evicted``,
``carry_groups``), so the bias each choice brings is visible.
"""

from __future__ import annotations

import base64
import dataclasses
import io
from collections.abc import Callable
from typing import Any

import numpy as np


def sampling_version(step: int, max_staleness: int) -> int:
    """The policy version that samples the rollout of step ``step``: ``max(0, step - k)``."""
    return max(0, step - max_staleness)


@dataclasses.dataclass
class Pending:
    """A rollout sampled ahead: for step ``step``, by the policy of version ``version``."""

    step: int
    version: int
    rollout: Any  # rl_jax.trainers.rl.Round
    metrics: dict[str, float]  # its rollout metrics (collect's), written with step ``step``
    fillers: int = 0  # its last groups are fillers (dynamic sampling fell short; masks zeroed)


def staleness_metrics(versions: np.ndarray, step: int) -> dict[str, float]:
    """``staleness_mean`` / ``staleness_max``: ``step - version`` over the rows trained on at
    ``step`` (``versions`` ``[rows]``)."""
    staleness = step - np.asarray(versions, np.int64)
    return {"staleness_mean": float(staleness.mean()), "staleness_max": float(staleness.max())}


def _encode_arrays(arrays: dict[str, np.ndarray]) -> str:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _decode_arrays(text: str) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(base64.b64decode(text)), allow_pickle=False) as loaded:
        return {name: loaded[name] for name in loaded.files}


def encode_round(rollout: Any) -> dict[str, Any]:
    """A JSON-able, exact copy of a ``Round`` (a dataclass of arrays, a dict of reward arrays and
    a list of texts): the arrays as one base64 ``.npz`` (dtypes and bits kept), the texts as a
    list."""
    arrays, absent = {}, []
    for field in dataclasses.fields(rollout):
        value = getattr(rollout, field.name)
        if field.name == "texts":
            continue
        if value is None:
            absent.append(field.name)
        elif isinstance(value, dict):
            arrays.update({f"{field.name}/{k}": np.asarray(v) for k, v in value.items()})
            arrays[f"{field.name}/"] = np.asarray(list(value), dtype=str)  # the keys, in order
        else:
            arrays[field.name] = np.asarray(value)
    return {"arrays": _encode_arrays(arrays), "texts": list(rollout.texts), "absent": absent}


def decode_round(cls: type, encoded: dict[str, Any]) -> Any:
    """The ``cls`` (``Round``) that ``encode_round`` encoded."""
    arrays = _decode_arrays(encoded["arrays"])
    values: dict[str, Any] = {"texts": list(encoded["texts"])}
    values.update({name: None for name in encoded["absent"]})
    for field in dataclasses.fields(cls):
        if f"{field.name}/" in arrays:
            keys = [str(k) for k in arrays[f"{field.name}/"]]
            values[field.name] = {k: arrays[f"{field.name}/{k}"] for k in keys}
        elif field.name in arrays:
            values[field.name] = arrays[field.name]
    return cls(**values)


def encode_pending(queue: list[Pending]) -> list[dict[str, Any]]:
    """The queue as JSON (the checkpoint's host state): exact, see ``encode_round``."""
    return [{"step": p.step, "version": p.version, "rollout": encode_round(p.rollout),
             "metrics": dict(p.metrics), "fillers": p.fillers} for p in queue]


def decode_pending(cls: type, encoded: list[dict[str, Any]]) -> list[Pending]:
    """The queue ``encode_pending`` encoded (``cls``: the ``Round`` class)."""
    return [Pending(step=int(p["step"]), version=int(p["version"]),
                    rollout=decode_round(cls, p["rollout"]), metrics=dict(p["metrics"]),
                    fillers=int(p["fillers"]))
            for p in encoded]


def _groups(rollout: Any, group_size: int) -> int:
    return 0 if rollout is None else len(rollout.scores) // group_size


def _take_groups(rollout: Any, groups: np.ndarray, group_size: int) -> Any:
    """The rows of ``groups`` (indices of consecutive ``group_size``-row groups); None if empty."""
    if len(groups) == 0:
        return None
    return rollout.rows((groups[:, None] * group_size + np.arange(group_size)).reshape(-1))


def add_to_carry(
    carry: Any, surplus: Any, *, group_size: int, max_groups: int, concat: Callable
) -> tuple[Any, int]:
    """``carry`` then ``surplus`` (each a ``Round`` of whole groups, or None), cut to the newest
    ``max_groups`` groups: ``(carry, evicted groups)``. ``concat``: joins Rounds."""
    parts = [r for r in (carry, surplus) if r is not None]
    if not parts:
        return None, 0
    joined = concat(parts) if len(parts) > 1 else parts[0]
    total = _groups(joined, group_size)
    evicted = max(total - max_groups, 0)
    return _take_groups(joined, np.arange(evicted, total), group_size), evicted


def use_carry(
    batch: Any, fillers: int, carry: Any, *, step: int, max_staleness: int, policy: str,
    group_size: int, concat: Callable,
) -> tuple[Any, Any, dict[str, float]]:
    """Replaces the last ``fillers`` groups of ``batch`` (masked fillers) with carried groups,
    oldest first. ``(batch, carry, metrics)``.

    A carried group (rows stamped ``version``) is late at ``step`` when ``step - version >
    max_staleness``. ``policy="drop"``: late groups leave the carry first (``late_dropped``);
    ``"keep"``: they are used like any other (``late_kept`` counts the late ones used).
    ``carried_used``: carried groups put in the batch.
    """
    if policy not in ("drop", "keep"):
        raise ValueError(f"use_carry: policy must be 'drop' or 'keep', got {policy!r}")
    n = group_size
    metrics = {"late_dropped": 0.0, "late_kept": 0.0, "carried_used": 0.0}
    if carry is not None:
        late = step - carry.version[::n].astype(np.int64) > max_staleness
        if policy == "drop":
            metrics["late_dropped"] = float(late.sum())
            carry = _take_groups(carry, np.flatnonzero(~late), n)
    use = min(fillers, _groups(carry, n))
    if use:
        total, rows = _groups(carry, n), len(batch.scores)
        taken = _take_groups(carry, np.arange(use), n)
        carry = _take_groups(carry, np.arange(use, total), n)
        real = batch.rows(np.arange(rows - fillers * n))
        rest = batch.rows(np.arange(rows - (fillers - use) * n, rows))
        batch = concat([real, taken, rest])
        metrics["carried_used"] = float(use)
        metrics["late_kept"] = float(np.sum(step - taken.version[::n].astype(np.int64)
                                            > max_staleness))
    return batch, carry, metrics
