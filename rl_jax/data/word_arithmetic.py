"""Arithmetic questions in words, for chat models: ``"What is 7 + 5? Answer with the number
only."`` -> ``"12"``.

Made for RL from a small pretrained instruct model (SmolLM2-135M-Instruct), which answers such
questions right often enough, but not always, for GRPO's groups to carry signal. The reward
``last_number`` (``rl_jax.rewards``) reads the model's reply leniently: the last integer in it
must equal ``answer``, so ``"7 + 5 = 12."`` counts as right.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from rl_jax.data.example import Example, GeneratedTask, check_batch_args, eval_rng, train_rng

WORD_ARITHMETIC_OPS = ("+", "-", "*")
WORD_ARITHMETIC_TEMPLATE = "What is {a} {op} {b}? Answer with the number only."
# A well-formed reply is the bare (possibly negative) integer.
WORD_ARITHMETIC_FORMAT = r"-?[0-9]+"


@dataclasses.dataclass(frozen=True)
class WordArithmeticTask(GeneratedTask):
    """``a op b`` as a question, both operands uniform in ``[min_value, max_value]`` and ``op``
    uniform over ``ops``.

    Example: prompt ``"What is 23 + 48? Answer with the number only."``, target and answer
    ``"71"``; ``info`` holds ``operands`` (a, b), ``op`` and ``format``.

    ``eval_fraction > 0`` makes the held-out set disjoint from training: the questions
    ``(a, op, b)`` with ``held_out_unit(a, op, b) < eval_fraction`` (a fixed hash, about that share
    of them) are drawn only by ``eval_set``, all others only by ``batch`` (rejection sampling).
    For a commutative ``op`` the hash is of the unordered pair, so ``b op a`` (same answer) is
    held out with ``a op b``.
    """

    ops: tuple[str, ...] = ("+",)
    min_value: int = 1
    max_value: int = 99
    template: str = WORD_ARITHMETIC_TEMPLATE
    eval_fraction: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        ops = tuple(self.ops)  # ml_collections hands lists back
        object.__setattr__(self, "ops", ops)
        if not ops or any(op not in WORD_ARITHMETIC_OPS for op in ops):
            raise ValueError(f"ops must be a non-empty subset of {WORD_ARITHMETIC_OPS}, got {ops}")
        if not 0 <= self.min_value <= self.max_value:
            raise ValueError(
                f"need 0 <= min_value <= max_value, got {self.min_value}, {self.max_value}"
            )
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        for field in ("{a}", "{op}", "{b}"):
            if field not in self.template:
                raise ValueError(f"template must contain {field}, got {self.template!r}")

    def sample(self, rng: np.random.Generator, held_out: bool | None = None) -> Example:
        """Draw one question from ``rng``: any (``held_out=None``), or only held-out ones (True) or
        only training ones (False), redrawing until it is (see ``eval_fraction``)."""
        for _ in range(100_000):
            a, b = (int(x) for x in rng.integers(self.min_value, self.max_value, size=2,
                                                 endpoint=True))
            op = self.ops[int(rng.integers(len(self.ops)))]
            if held_out is None or (held_out_unit(a, op, b) < self.eval_fraction) == held_out:
                break
        else:
            raise ValueError(f"no {'held-out' if held_out else 'training'} question in 100,000 "
                             f"draws: eval_fraction = {self.eval_fraction} leaves none")
        result = str(a + b if op == "+" else a - b if op == "-" else a * b)
        info = {"operands": (a, b), "op": op, "format": WORD_ARITHMETIC_FORMAT}
        prompt = self.template.format(a=a, op=op, b=b)
        return Example(prompt=prompt, target=result, answer=result, info=info)

    def batch(self, step: int, batch_size: int) -> list[Example]:
        """``batch_size`` training questions drawn from ``default_rng([seed, step])``."""
        check_batch_args(step, batch_size)
        rng = train_rng(self.seed, step)
        held_out = False if self.eval_fraction else None
        return [self.sample(rng, held_out) for _ in range(batch_size)]

    def eval_set(self, n: int) -> list[Example]:
        """``n`` questions of the held-out stream (only held-out ones with ``eval_fraction``);
        ``eval_set(m)`` is a prefix of ``eval_set(n)`` for ``m <= n``."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        rng = eval_rng(self.seed)
        held_out = True if self.eval_fraction else None
        return [self.sample(rng, held_out) for _ in range(n)]


COMMUTATIVE_OPS = ("+", "*")


def held_out_unit(a: int, op: str, b: int) -> float:
    """A fixed pseudo-random number in [0, 1) for the question ``a op b`` (from its MD5), the same
    in every process and Python version. For a commutative ``op`` it depends on ``{a, b}`` only,
    so ``a op b`` and ``b op a`` fall on the same side of the held-out split."""
    if op in COMMUTATIVE_OPS:
        a, b = min(a, b), max(a, b)
    digest = hashlib.md5(f"{a}{op}{b}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64
