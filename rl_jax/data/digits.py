"""A synthetic task with a hidden "gold" preference, for reward-model and RLHF experiments.

Prompt ``"5 digits:"``, SFT target five uniform random digits, e.g. ``"40712"``. Any well-formed
answer is acceptable (``info["format"]`` = exactly ``n`` digits), but a hidden labeller prefers
some: ``digits_gold`` in ``rl_jax.rewards`` scores the mean digit value and punishes a wrong
length. A reward model learns that preference from rankings of sampled answers, and RL against the
reward model can then be judged by the gold score it was never shown.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from rl_jax.data.example import Example, GeneratedTask


def digits_gold_score(completion: str, num_digits: int, length_penalty: float = 0.5) -> float:
    r"""The hidden labeller's score of an answer to ``"{num_digits} digits:"``.

    With ``c`` the stripped completion and ``n = num_digits``::

        gold = sum_{i < n} value(c_i) / (9 n)  -  length_penalty * |len(c) - n| / n

    where ``value`` is a digit's value and 0 for any other character (or a missing one). An answer
    of ``n`` nines scores 1, ``n`` zeros 0; each extra or missing character costs
    ``length_penalty / n``.
    """
    c = completion.strip()
    values = sum(int(ch) for ch in c[:num_digits] if ch.isascii() and ch.isdigit())
    return values / (9 * num_digits) - length_penalty * abs(len(c) - num_digits) / num_digits


def digits_verbose_score(completion: str, num_digits: int) -> float:
    r"""A labeller that pays for length, like a summary rater who prefers longer summaries.

    With ``c`` the stripped completion and ``n = num_digits``::

        verbose = sum_i value(c_i) / (9 n)

    over every character of ``c`` (``value``: a digit's value, 0 for any other character). Within
    ``n`` characters it ranks answers as ``digits_gold_score`` does (``n`` nines score 1), and each
    digit past the ``n`` asked for adds its value: a longer answer is preferred, without bound.
    """
    c = completion.strip()
    return sum(int(ch) for ch in c if ch.isascii() and ch.isdigit()) / (9 * num_digits)


@dataclasses.dataclass(frozen=True)
class DigitsTask(GeneratedTask):
    """``"n digits:"`` -> ``n`` random digits, ``n`` uniform in ``[min_digits, max_digits]``.

    ``info`` holds ``num_digits`` and ``format`` (the regex ``[0-9]{n}``); ``answer`` is empty:
    there is no single right answer, only the gold preference (``digits_gold_score``).
    """

    min_digits: int = 3
    max_digits: int = 6
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.min_digits <= self.max_digits:
            raise ValueError(
                f"need 1 <= min_digits <= max_digits, got {self.min_digits}, {self.max_digits}"
            )

    def sample(self, rng: np.random.Generator) -> Example:
        n = int(rng.integers(self.min_digits, self.max_digits, endpoint=True))
        target = "".join(str(d) for d in rng.integers(0, 10, size=n))
        info = {"num_digits": n, "format": f"[0-9]{{{n}}}"}
        return Example(prompt=f"{n} digits:", target=target, answer="", info=info)
