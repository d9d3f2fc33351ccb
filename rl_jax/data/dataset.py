"""A fixed list of examples served with the task interface: seeded epochs, a held-out set."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rl_jax.data.example import Example, check_batch_args, eval_rng


class EvalSizeError(ValueError):
    """``eval_size`` rows cannot be held out of a file of ``num_examples`` rows."""

    def __init__(self, eval_size: int, num_examples: int) -> None:
        super().__init__(f"need 0 <= eval_size < len(examples) = {num_examples}, got {eval_size}")
        self.eval_size, self.num_examples = eval_size, num_examples


class FileDataset:
    """Training batches from a fixed list of examples, reshuffled every epoch from the seed.

    The training rows form one stream: epoch ``e`` is the rows in the order
    ``default_rng([seed, e]).permutation(num_train)``, and batch ``step`` is the stream's items
    ``[step * batch_size, (step + 1) * batch_size)`` (crossing into the next epoch when needed).
    So ``(seed, step, batch_size)`` fixes the rows, with no iterator state; a run must keep
    ``batch_size`` fixed for the stream to be read without repeats or gaps.

    The held-out set is either ``eval_examples`` (e.g. a separate test file), or ``eval_size``
    rows taken out of ``examples`` by a seeded draw from the eval stream, or empty.
    """

    def __init__(
        self,
        examples: Sequence[Example],
        *,
        seed: int = 0,
        eval_examples: Sequence[Example] | None = None,
        eval_size: int = 0,
    ) -> None:
        if eval_examples is not None and eval_size:
            raise ValueError("give eval_examples or eval_size, not both")
        if not 0 <= eval_size < len(examples):
            raise EvalSizeError(eval_size, len(examples))
        self.seed = seed
        order = eval_rng(seed).permutation(len(examples)) if eval_size else np.arange(0)
        held_out = {int(i) for i in order[:eval_size]}
        self.train: tuple[Example, ...] = tuple(
            ex for i, ex in enumerate(examples) if i not in held_out
        )
        if eval_examples is not None:
            self.eval: tuple[Example, ...] = tuple(eval_examples)
        else:
            self.eval = tuple(examples[int(i)] for i in order[:eval_size])

    def __len__(self) -> int:
        """The number of training examples."""
        return len(self.train)

    def _epoch_order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.train))

    def batch(self, step: int, batch_size: int) -> list[Example]:
        """The training examples of step ``step`` (see the class docstring)."""
        check_batch_args(step, batch_size)
        num_train = len(self.train)
        start = step * batch_size
        orders: dict[int, np.ndarray] = {}
        rows = []
        for i in range(start, start + batch_size):
            epoch, position = divmod(i, num_train)
            if epoch not in orders:
                orders[epoch] = self._epoch_order(epoch)
            rows.append(self.train[int(orders[epoch][position])])
        return rows

    def eval_set(self, n: int) -> list[Example]:
        """The first ``n`` held-out examples; ValueError if fewer exist."""
        if not 0 <= n <= len(self.eval):
            raise ValueError(f"need 0 <= n <= {len(self.eval)} held-out examples, got {n}")
        return list(self.eval[:n])
