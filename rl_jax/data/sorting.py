"""Sorting a list of integers: ``"5,3,9:"`` -> ``"3,5,9"``."""

from __future__ import annotations

import dataclasses

import numpy as np

from rl_jax.data.example import Example, GeneratedTask

# A well-formed sorting completion is comma-separated integers, no spaces.
SORTING_FORMAT = r"[0-9]+(,[0-9]+)*"


@dataclasses.dataclass(frozen=True)
class SortingTask(GeneratedTask):
    """Sort ``length`` integers, ``length`` uniform in ``[min_length, max_length]`` and values
    uniform in ``[0, max_value]`` (repeats allowed).

    Prompt: the values joined by ``","`` then ``":"``; target and answer: the values in ascending
    order joined by ``","``. ``info`` holds ``values`` (the unsorted tuple) and ``format``.
    """

    min_length: int = 2
    max_length: int = 8
    max_value: int = 99
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.min_length <= self.max_length:
            raise ValueError(
                f"need 1 <= min_length <= max_length, got {self.min_length}, {self.max_length}"
            )
        if self.max_value < 0:
            raise ValueError(f"max_value must be >= 0, got {self.max_value}")

    def sample(self, rng: np.random.Generator) -> Example:
        """Draw one list from ``rng``."""
        length = int(rng.integers(self.min_length, self.max_length, endpoint=True))
        values = tuple(int(v) for v in rng.integers(0, self.max_value, size=length, endpoint=True))
        answer = ",".join(str(v) for v in sorted(values))
        prompt = ",".join(str(v) for v in values) + ":"
        info = {"values": values, "format": SORTING_FORMAT}
        return Example(prompt=prompt, target=answer, answer=answer, info=info)
