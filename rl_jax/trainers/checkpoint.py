"""Orbax checkpoints of a training stage: the train state (params, optimizer) and JSON metadata.

One ``CheckpointManager`` per stage directory, with two named items: ``state`` (a pytree of arrays,
restored against a template so optimizer containers and shardings come back as they were saved)
and ``meta`` (step, data position, KL coefficient, whether the stage finished, ...). The PRNG state
needs no item: every random draw of step ``s`` comes from ``fold_in(root_key, s)``.

Saves are asynchronous: ``save`` returns once the arrays are copied off the devices, and Orbax
writes them in a background thread while training goes on; the next save, a restore and
``close`` wait for it. Across processes each one writes its own shards (Orbax's process 0 the
metadata); the NaN/inf check runs on the devices, and a restore reads into the shardings the
state will have, so no process ever needs an array it does not hold.

A checkpoint that cannot be read (a truncated data file, a missing manifest or item, an empty step
directory) is reported in one line and moved aside to ``<stage dir>.damaged/<step>`` (never
deleted), and the newest readable one is restored instead. A checkpoint of another model shape is
not damage: it stays a ``CheckpointMismatchError``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils


class CheckpointMismatchError(ValueError):
    """A readable checkpoint whose arrays do not fit the model and optimizer of this config."""


class CheckpointDamagedError(RuntimeError):
    """A checkpoint whose files cannot be read."""


def one_line(error: BaseException, limit: int = 160) -> str:
    """``"<type>: <first line>"`` of ``error``, at most ``limit`` characters (TensorStore and
    Hugging Face errors run to hundreds of lines)."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _shapes(tree: Any) -> list[tuple[tuple[int, ...], str]]:
    leaves = jax.tree.leaves(tree, is_leaf=lambda x: hasattr(x, "shape") and hasattr(x, "dtype"))
    return sorted((tuple(x.shape), str(np.dtype(x.dtype))) for x in leaves)


class Checkpointer:
    """Saves every ``every`` steps (and on demand), keeps the last ``keep``, restores the newest
    readable one."""

    def __init__(self, directory: str | os.PathLike, *, every: int, keep: int):
        if every < 1 or keep < 1:
            raise ValueError(f"checkpoint.every and checkpoint.keep must be >= 1: {every}, {keep}")
        self.directory = os.path.abspath(os.fspath(directory))
        self.every = every
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "meta": ocp.JsonCheckpointHandler(),
            },
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def reached_preemption(self, step: int) -> bool:
        """Orbax's multi-host preemption sync point (JAX's coordination service caught a
        SIGTERM on some host): every process sees it at the same ``step``. False in one process."""
        return self._manager.reached_preemption(step)

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        """Saves ``state`` and ``meta`` at ``step``; raises if any array is NaN or inf."""
        bad = nonfinite_leaves(state)
        if bad:
            raise FloatingPointError(
                f"not saving step {step} to {self.directory}: non-finite values in {bad[:5]}"
            )
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )

    def wait(self) -> None:
        """Blocks until the running asynchronous save (if any) is on disk."""
        self._manager.wait_until_finished()

    def read_meta(self, step: int) -> dict[str, Any]:
        """The ``meta`` item of ``step`` (JSON), without touching the arrays."""
        path = os.path.join(self.directory, str(step), "meta", "metadata")
        try:
            with open(path, encoding="utf-8") as f:
                return json.load(f)
        except (OSError, ValueError) as error:
            raise CheckpointDamagedError(f"meta item: {one_line(error)}") from error

    def _restore_step(
        self, template: Any, step: int, shardings: Any = None
    ) -> tuple[Any, dict[str, Any]]:
        """``(state, meta)`` of ``step``, or CheckpointDamagedError / CheckpointMismatchError."""
        step_dir = os.path.join(self.directory, str(step))
        if not os.path.isdir(step_dir) or not os.listdir(step_dir):
            raise CheckpointDamagedError("the step directory is empty")
        meta = self.read_meta(step)
        try:
            saved = self._manager.item_metadata(step)["state"]
            saved_shapes = _shapes(saved.tree if hasattr(saved, "tree") else saved)
        except Exception as error:  # noqa: BLE001 - any failure to read the metadata is damage
            raise CheckpointDamagedError(f"state metadata: {one_line(error)}") from error
        if not saved_shapes:
            raise CheckpointDamagedError("state metadata: no arrays")
        wanted = _shapes(template)
        if saved_shapes != wanted:
            diff = sorted(set(saved_shapes) ^ set(wanted))[:3]
            raise CheckpointMismatchError(
                f"checkpoint {step_dir} does not match the model and optimizer of this config "
                f"(another model shape or algorithm?): {len(saved_shapes)} saved arrays vs "
                f"{len(wanted)} here; differing (shape, dtype): {diff}"
            )
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
        if shardings is not None:  # each process reads only its own shards
            abstract = jax.tree.map(
                lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                abstract, shardings,
            )
        try:
            restored = self._manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
            )
        except Exception as error:  # noqa: BLE001 - shapes matched: what is left is damage
            raise CheckpointDamagedError(f"state arrays: {one_line(error)}") from error
        return restored["state"], meta

    def restore(
        self, template: Any, step: int | None = None, shardings: Any = None
    ) -> tuple[Any, dict[str, Any]] | None:
        """Restores ``(state, meta)`` into ``template``'s structure: of ``step``, or of the newest
        readable checkpoint (default). ``None`` when there is no readable checkpoint.

        ``shardings`` (a tree of ``template``'s structure): the arrays come back placed so, each
        process reading its own shards (needed when the state spans processes); default: as
        ``template``'s arrays are placed.

        Each unreadable checkpoint is reported in one line and moved aside to
        ``<directory>.damaged/<step>`` (so that the step can be saved again); nothing is deleted.

        Raises:
          CheckpointMismatchError: a readable checkpoint of another model shape or algorithm.
          CheckpointDamagedError: ``step`` was given and cannot be read.
        """
        self.wait()
        if step is not None:
            return self._restore_step(template, step, shardings)
        for candidate in reversed(self.all_steps()):
            try:
                return self._restore_step(template, candidate, shardings)
            except CheckpointDamagedError as error:
                moved = self._move_aside(candidate)
                older = [s for s in self.all_steps() if s < candidate]
                then = f"trying step {older[-1]}" if older else "no older checkpoint: starting over"
                print(f"{self.directory}/{candidate}: cannot be read ({error}); moved to {moved}; "
                      f"{then}")
        return None

    def _move_aside(self, step: int) -> str:
        target_dir = self.directory + ".damaged"
        target = os.path.join(target_dir, str(step))
        if jax.process_index() == 0:  # one process moves it; the others wait for that
            os.makedirs(target_dir, exist_ok=True)
            if os.path.exists(target):
                target = f"{target}-{time.strftime('%Y%m%d-%H%M%S')}"
            shutil.move(os.path.join(self.directory, str(step)), target)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"checkpoint moved aside: {step}")
        self._manager.reload()
        return target

    def close(self) -> None:
        """Waits for the running save, then releases the manager."""
        self._manager.wait_until_finished()
        self._manager.close()


@jax.jit
def _nonfinite(state: Any) -> Any:
    """Per floating leaf, whether any element is NaN or inf (a replicated scalar: computed where
    the shards are, so it works on arrays that span processes)."""
    return jax.tree.map(
        lambda x: ~jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.floating)
        else jnp.zeros((), bool),
        state,
    )


def nonfinite_leaves(state: Any) -> list[str]:
    """The paths of ``state``'s floating leaves holding a NaN or inf."""
    flags = jax.device_get(_nonfinite(state))
    return [jax.tree_util.keystr(path) for path, bad in jax.tree_util.tree_leaves_with_path(flags)
            if bool(bad)]
