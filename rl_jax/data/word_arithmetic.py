"""Arithmetic questions in words, for chat models: ``"What is 7 + 5? Answer with the number
only."`` -> ``"12"``.

Made for RL from a small pretrained instruct model (SmolLM2-135M-Instruct), which answers such
questions right often enough, but not always, for GRPO's groups to carry signal. The reward
``last_integer`` (``rl_jax.rewards``) reads the model's reply leniently: the last integer in it
must equal ``answer``, so ``"7 + 5 = 12."`` counts as right.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from rl_jax.data.example import Example, GeneratedTask

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
    """

    ops: tuple[str, ...] = ("+",)
    min_value: int = 1
    max_value: int = 99
    template: str = WORD_ARITHMETIC_TEMPLATE
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
        for field in ("{a}", "{op}", "{b}"):
            if field not in self.template:
                raise ValueError(f"template must contain {field}, got {self.template!r}")

    def sample(self, rng: np.random.Generator) -> Example:
        """Draw one question from ``rng``."""
        a, b = (int(x) for x in rng.integers(self.min_value, self.max_value, size=2, endpoint=True))
        op = self.ops[int(rng.integers(len(self.ops)))]
        result = str(a + b if op == "+" else a - b if op == "-" else a * b)
        info = {"operands": (a, b), "op": op, "format": WORD_ARITHMETIC_FORMAT}
        prompt = self.template.format(a=a, op=op, b=b)
        return Example(prompt=prompt, target=result, answer=result, info=info)
