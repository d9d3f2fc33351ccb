"""Integer addition and multiplication: ``"123+456="`` -> ``"975"`` (579 reversed).

The result is written least significant digit first by default: a small left-to-right transformer
can then emit each digit from the operand digits and one carry, which makes addition learnable.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from rl_jax.data.example import Example, GeneratedTask

ARITHMETIC_OPS = ("+", "*")
# A well-formed arithmetic completion is a non-empty string of digits.
ARITHMETIC_FORMAT = r"[0-9]+"


@dataclasses.dataclass(frozen=True)
class ArithmeticTask(GeneratedTask):
    """``a op b`` with both operands uniform in ``[min_value, max_value]``.

    Example (``op="+"``, ``reverse_answer=True``): prompt ``"123+456="``, target and answer
    ``"975"``. ``info`` holds ``operands`` (a, b), ``op`` and ``format``.
    """

    op: str = "+"
    min_value: int = 10
    max_value: int = 999
    reverse_answer: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.op not in ARITHMETIC_OPS:
            raise ValueError(f"op must be one of {ARITHMETIC_OPS}, got {self.op!r}")
        if not 0 <= self.min_value <= self.max_value:
            raise ValueError(
                f"need 0 <= min_value <= max_value, got {self.min_value}, {self.max_value}"
            )

    def sample(self, rng: np.random.Generator) -> Example:
        """Draw one problem from ``rng``."""
        a, b = (int(x) for x in rng.integers(self.min_value, self.max_value, size=2, endpoint=True))
        result = str(a + b if self.op == "+" else a * b)
        if self.reverse_answer:
            result = result[::-1]
        info = {"operands": (a, b), "op": self.op, "format": ARITHMETIC_FORMAT}
        return Example(prompt=f"{a}{self.op}{b}=", target=result, answer=result, info=info)
