"""A trained reward model as a scoring function of token rows (the RL stage's learned reward)."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rl_jax import models, parallel


@dataclasses.dataclass
class LearnedReward:
    """A trained reward model and its normalisation: ``score = (r - mean) / std``.

    With ``mesh``, the rows to score go in split over its devices (padded to a multiple of the
    device count with copies of the last row, whose scores are dropped) and the parameters are
    read with the sharding they have; without, every device scores every row.
    """

    graphdef: nnx.GraphDef
    params: Any
    mean: float
    std: float
    mesh: jax.sharding.Mesh | None = None

    @functools.cached_property
    def _apply(self):
        def apply(params, tokens, mask):
            return models.apply_model(
                self.graphdef, params, tokens, models.positions_from_mask(mask), mask
            )

        if self.mesh is None:
            return jax.jit(apply)
        return jax.jit(apply, out_shardings=parallel.batch_sharding(self.mesh))

    def _inputs(self, tokens: np.ndarray, mask: np.ndarray) -> tuple[tuple, int]:
        """The jitted scorer's arguments, and the number of real rows."""
        arrays = (np.asarray(tokens), np.asarray(mask, np.int32))
        if self.mesh is None:
            return (self.params, *map(jnp.asarray, arrays)), len(arrays[0])
        placed, rows = parallel.place_rows(arrays, self.mesh)
        return (self.params, *placed), rows

    def lower(self, tokens: np.ndarray, mask: np.ndarray) -> jax.stages.Lowered:
        """The scoring program of ``raw(tokens, mask)``, lowered: for
        ``rl_jax.parallel.compiled_work``."""
        return self._apply.lower(*self._inputs(tokens, mask)[0])

    def raw(self, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """``[batch]`` rewards of ``[batch, time]`` token rows (any padding) as the model gives."""
        args, rows = self._inputs(tokens, mask)
        return np.asarray(self._apply(*args))[:rows]

    def __call__(self, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """``[batch]`` normalised rewards of ``[batch, time]`` token rows."""
        return ((self.raw(tokens, mask) - self.mean) / self.std).astype(np.float32)
