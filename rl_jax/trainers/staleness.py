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
"""

from __future__ import annotations

import base64
import dataclasses
import io
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
             "metrics": dict(p.metrics)} for p in queue]


def decode_pending(cls: type, encoded: list[dict[str, Any]]) -> list[Pending]:
    """The queue ``encode_pending`` encoded (``cls``: the ``Round`` class)."""
    return [Pending(step=int(p["step"]), version=int(p["version"]),
                    rollout=decode_round(cls, p["rollout"]), metrics=dict(p["metrics"]))
            for p in encoded]
