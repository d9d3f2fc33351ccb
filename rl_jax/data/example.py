"""The unit of data (``Example``), the task interface, and the seeded random streams.

Randomness: batch ``step`` of a generated task is drawn from ``np.random.default_rng([seed, step])``
and nothing else, so a batch is a pure function of ``(seed, step, batch_size)`` and a resumed run
draws the same batches as an uninterrupted one. Held-out sets use ``[seed, 0, EVAL_STREAM]``:
numpy's ``SeedSequence`` pads short entropy with zeros, so ``[seed, step]`` is ``[seed, step, 0]``
and differs from every eval stream in its third word.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

# "eval" in ASCII; any non-zero third word keeps eval streams apart from training streams.
EVAL_STREAM = 0x6576616C


@dataclasses.dataclass(frozen=True)
class Example:
    """One prompt with its reference completion and ground truth.

    Attributes:
      prompt: text given to the model.
      target: the SFT completion, what a perfect model writes after ``prompt`` (no EOS); ``""``
        when no reference completion is known.
      answer: the ground truth the reward functions compare with.
      info: task-specific data, e.g. countdown ``numbers`` and ``target``, and ``format``: a regex
        that a well-formed completion (stripped) matches in full (see ``rewards.format_reward``).
        Treat as read-only.
    """

    prompt: str
    target: str
    answer: str
    info: Mapping[str, Any] = dataclasses.field(default_factory=dict)


class Task(Protocol):
    """What the RL loop needs from a task: seeded training batches and a fixed held-out set."""

    def batch(self, step: int, batch_size: int) -> list[Example]:
        """The ``batch_size`` examples of training step ``step`` (a pure function of its args)."""
        ...

    def eval_set(self, n: int) -> list[Example]:
        """The first ``n`` examples of a fixed held-out set."""
        ...


def check_batch_args(step: int, batch_size: int) -> None:
    """Raise ``ValueError`` unless ``step >= 0`` and ``batch_size >= 0``."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if batch_size < 0:
        raise ValueError(f"batch_size must be >= 0, got {batch_size}")


def train_rng(seed: int, step: int) -> np.random.Generator:
    """The generator for training step ``step``: ``default_rng([seed, step])``."""
    return np.random.default_rng([seed, step])


def eval_rng(seed: int) -> np.random.Generator:
    """The generator of the held-out stream, distinct from every ``train_rng(seed, step)``."""
    return np.random.default_rng([seed, 0, EVAL_STREAM])


class GeneratedTask:
    """Base for tasks that draw examples from a seeded generator; subclasses define ``sample``.

    Subclasses are frozen dataclasses with a ``seed`` field.
    """

    seed: int

    def sample(self, rng: np.random.Generator) -> Example:
        """Draw one example from ``rng``."""
        raise NotImplementedError

    def batch(self, step: int, batch_size: int) -> list[Example]:
        """``batch_size`` examples drawn in order from ``default_rng([seed, step])``."""
        check_batch_args(step, batch_size)
        rng = train_rng(self.seed, step)
        return [self.sample(rng) for _ in range(batch_size)]

    def eval_set(self, n: int) -> list[Example]:
        """``n`` examples from the held-out stream; ``eval_set(m)`` is a prefix of ``eval_set(n)``
        for ``m <= n``."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        rng = eval_rng(self.seed)
        return [self.sample(rng) for _ in range(n)]
