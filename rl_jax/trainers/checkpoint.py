"""Orbax checkpoints of a training stage: the train state (params, optimizer) and JSON metadata.

One ``CheckpointManager`` per stage directory, with two named items: ``state`` (a pytree of arrays,
restored against a template so optimizer containers and shardings come back as they were saved)
and ``meta`` (step, data position, KL coefficient, whether the stage finished, ...). The PRNG state
needs no item: every random draw of step ``s`` comes from ``fold_in(root_key, s)``.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


class Checkpointer:
    """Saves every ``every`` steps (and on demand), keeps the last ``keep``, restores the latest."""

    def __init__(self, directory: str | os.PathLike, *, every: int, keep: int):
        if every < 1 or keep < 1:
            raise ValueError(f"checkpoint.every and checkpoint.keep must be >= 1: {every}, {keep}")
        self.directory = os.path.abspath(os.fspath(directory))
        self.every = every
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        """Saves ``state`` and ``meta`` at ``step``; raises if any array is NaN or inf."""
        bad = [
            jax.tree_util.keystr(path)
            for path, x in jax.tree_util.tree_leaves_with_path(state)
            if np.issubdtype(np.dtype(x.dtype), np.floating) and not bool(np.isfinite(x).all())
        ]
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
        self._manager.wait_until_finished()

    def restore(self, template: Any, step: int | None = None) -> tuple[Any, dict[str, Any]]:
        """Restores ``(state, meta)`` at ``step`` (default: latest) into ``template``'s structure.

        Raises:
          ValueError: naming the checkpoint when its arrays do not fit the template (a checkpoint
            of another model shape or another algorithm).
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
        try:
            restored = self._manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
                ),
            )
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(
                f"checkpoint {self.directory} step {step} does not match the model and optimizer "
                f"of this config (another model shape or algorithm?): {error}"
            ) from error
        return restored["state"], restored["meta"]

    def close(self) -> None:
        self._manager.close()
