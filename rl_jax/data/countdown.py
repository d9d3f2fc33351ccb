"""Countdown: reach a target from given numbers with + - * / and parentheses, each number once.

Formats:
  * prompt: the numbers joined by ``","``, then ``">"``, the target and ``":"``, e.g.
    ``"30,100,93>23:"`` (numbers 30, 100, 93; target 23);
  * target (SFT completion): one equation without ``"="``, e.g. ``"100-93+30"`` for target 37;
  * answer: the target number as a string; ``info``: ``numbers`` (tuple), ``target`` (int),
    ``format``.

A completion is correct when, stripped, it is an expression over digits, ``+ - * / ( )`` and
spaces that uses exactly the given numbers (as a multiset) and equals the target in exact
rational arithmetic (``Fraction``), so ``"(1+2)/3*3"`` is 3 and non-integer steps are allowed.
Parsing goes through ``ast`` with a whitelist of node types; nothing is ever ``eval``-ed.
"""

from __future__ import annotations

import ast
import dataclasses
import itertools
import os
import re
from collections import Counter
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np

from rl_jax.data.example import Example, GeneratedTask
from rl_jax.data.jsonl import read_jsonl, row_error

# Characters a countdown completion may contain; also the completion format for the format reward.
COUNTDOWN_FORMAT = r"[0-9+\-*/() ]+"
# Longer completions are rejected before parsing (bounds parser and evaluator recursion).
MAX_EXPRESSION_CHARS = 256
# The countdown eval set shipped with the package (256 rows, 3 numbers; see files/README.md).
CD3_TEST_PATH = Path(__file__).parent / "files" / "cd3_test.jsonl"
_MAX_ATTEMPTS = 10_000

_BINARY_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}


@dataclasses.dataclass(frozen=True)
class _Node:
    """A sub-expression: exact value, text, and precedence (0: + -, 1: * /, 2: a number)."""

    value: Fraction
    text: str
    precedence: int


def _apply(left: Fraction, op: str, right: Fraction) -> Fraction:
    """``left op right`` for op in ``+ - * /`` (the caller rules out division by zero)."""
    if op == "+":
        return left + right
    if op == "-":
        return left - right
    if op == "*":
        return left * right
    return left / right


def _leaf(number: int) -> _Node:
    return _Node(Fraction(number), str(number), 2)


def _combine(left: _Node, op: str, right: _Node) -> _Node | None:
    """``left op right`` as text with only the parentheses its value needs; None for x / 0.

    Python parses ``a-b-c`` as ``(a-b)-c``, so the right operand needs parentheses under ``-``
    when it is a sum, under ``/`` when it is a sum or a product; the left operand needs them
    under ``*`` and ``/`` when it is a sum. Everything else is value-preserving
    (``a+(b-c) == a+b-c``, ``a*(b/c) == a*b/c`` in exact arithmetic).
    """
    if op == "/" and right.value == 0:
        return None
    left_text = f"({left.text})" if op in "*/" and left.precedence == 0 else left.text
    right_limit = {"+": -1, "-": 0, "*": 0, "/": 1}[op]
    right_text = f"({right.text})" if right.precedence <= right_limit else right.text
    text = f"{left_text}{op}{right_text}"
    return _Node(_apply(left.value, op, right.value), text, 0 if op in "+-" else 1)


def countdown_prompt(numbers: Sequence[int], target: int) -> str:
    """``"30,100,93>23:"`` for numbers (30, 100, 93) and target 23."""
    return ",".join(str(n) for n in numbers) + f">{target}:"


def _evaluate_node(node: ast.AST, numbers: list[int]) -> Fraction:
    """Evaluate a whitelisted ``ast`` node exactly, appending the numbers it uses."""
    if isinstance(node, ast.Constant) and type(node.value) is int:
        numbers.append(node.value)
        return Fraction(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY_OPS:
        left = _evaluate_node(node.left, numbers)
        right = _evaluate_node(node.right, numbers)
        op = _BINARY_OPS[type(node.op)]
        if op == "/" and right == 0:
            raise ValueError("division by zero")
        return _apply(left, op, right)
    raise ValueError(f"disallowed syntax: {type(node).__name__}")


def evaluate_expression(text: str) -> tuple[Fraction, tuple[int, ...]]:
    """Exact value of an arithmetic expression and the numbers it uses, left to right.

    Allowed: non-negative integer literals, binary ``+ - * /``, parentheses, spaces. Not allowed
    (ValueError): any other character or syntax (unary minus, ``**``, ``//``, names, calls,
    decimals), more than ``MAX_EXPRESSION_CHARS`` characters, division by zero.
    """
    text = text.strip()
    if not text or len(text) > MAX_EXPRESSION_CHARS:
        raise ValueError(f"expected 1 to {MAX_EXPRESSION_CHARS} characters, got {len(text)}")
    if not re.fullmatch(COUNTDOWN_FORMAT, text):
        raise ValueError(f"characters outside {COUNTDOWN_FORMAT!r}: {text!r}")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, RecursionError, MemoryError) as err:
        raise ValueError(f"not an expression: {text!r}") from err
    numbers: list[int] = []
    value = _evaluate_node(tree.body, numbers)
    return value, tuple(numbers)


def is_countdown_solution(expression: str, numbers: Sequence[int], target: int) -> bool:
    """True when ``expression`` uses exactly ``numbers`` (as a multiset) and equals ``target``.

    Malformed expressions and division by zero give False.
    """
    try:
        value, used = evaluate_expression(expression)
    except ValueError:
        return False
    return Counter(used) == Counter(numbers) and value == target


def solve_countdown(numbers: Sequence[int], target: int) -> str | None:
    """An expression using each of ``numbers`` once that equals ``target``, or None if none exists.

    Exhaustive search over every pair of the remaining sub-expressions, every operation and both
    operand orders, in a fixed order (so the result is deterministic). Intermediate values are
    exact rationals. The cost grows as ``n! * (n-1)! * 6^(n-1) / 2^(n-1)``: instant for 3 or 4
    numbers, a few seconds for 5 when there is no solution.
    """
    return _search([_leaf(n) for n in numbers], Fraction(target))


def _search(nodes: list[_Node], target: Fraction) -> str | None:
    if len(nodes) == 1:
        return nodes[0].text if nodes[0].value == target else None
    for i, j in itertools.combinations(range(len(nodes)), 2):
        rest = [node for k, node in enumerate(nodes) if k not in (i, j)]
        for left, right in ((nodes[i], nodes[j]), (nodes[j], nodes[i])):
            for op in "+-*/":
                combined = _combine(left, op, right)
                if combined is None:
                    continue
                found = _search([*rest, combined], target)
                if found is not None:
                    return found
    return None


@dataclasses.dataclass(frozen=True)
class CountdownTask(GeneratedTask):
    """Generated countdown problems that are solvable by construction.

    Draw ``num_numbers`` integers uniform in ``[min_number, max_number]``; then, until one node
    is left, pick two nodes at random and combine them with an operation chosen uniformly among
    those with a non-negative integer result (``a+b``, ``max-min``, ``a*b``, and ``a/b`` when
    ``b`` divides ``a``). The result is the target and the built expression the SFT target; draws
    whose target is outside ``[min_target, max_target]`` are rejected and drawn again.
    """

    num_numbers: int = 3
    min_number: int = 1
    max_number: int = 100
    min_target: int = 1
    max_target: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_numbers < 2:
            raise ValueError(f"num_numbers must be >= 2, got {self.num_numbers}")
        if not 1 <= self.min_number <= self.max_number:
            raise ValueError(
                f"need 1 <= min_number <= max_number, got {self.min_number}, {self.max_number}"
            )
        if not 0 <= self.min_target <= self.max_target:
            raise ValueError(
                f"need 0 <= min_target <= max_target, got {self.min_target}, {self.max_target}"
            )

    def _random_expression(self, numbers: Sequence[int], rng: np.random.Generator) -> _Node:
        nodes = [_leaf(n) for n in numbers]
        while len(nodes) > 1:
            i, j = (int(k) for k in rng.choice(len(nodes), size=2, replace=False))
            a, b = nodes[i], nodes[j]
            big, small = (a, b) if a.value >= b.value else (b, a)
            candidates = [(a, "+", b), (big, "-", small), (a, "*", b)]
            if b.value != 0 and a.value % b.value == 0:
                candidates.append((a, "/", b))
            if a.value != 0 and b.value % a.value == 0:
                candidates.append((b, "/", a))
            left, op, right = candidates[int(rng.integers(len(candidates)))]
            combined = _combine(left, op, right)
            assert combined is not None  # divisors are non-zero by construction
            nodes = [node for k, node in enumerate(nodes) if k not in (i, j)] + [combined]
        return nodes[0]

    def sample(self, rng: np.random.Generator) -> Example:
        """Draw one solvable problem from ``rng``."""
        for _ in range(_MAX_ATTEMPTS):
            numbers = tuple(
                int(n)
                for n in rng.integers(
                    self.min_number, self.max_number, size=self.num_numbers, endpoint=True
                )
            )
            expression = self._random_expression(numbers, rng)
            if self.min_target <= expression.value <= self.max_target:
                target = int(expression.value)
                return Example(
                    prompt=countdown_prompt(numbers, target),
                    target=expression.text,
                    answer=str(target),
                    info={"numbers": numbers, "target": target, "format": COUNTDOWN_FORMAT},
                )
        raise RuntimeError(
            f"no target in [min_target, max_target] after {_MAX_ATTEMPTS} draws: {self}"
        )


def _parse_int(text: str, path: str | os.PathLike, line: int, what: str) -> int:
    if not re.fullmatch(r"-?[0-9]+", text.strip()):
        raise row_error(path, line, f"{what} is {text!r}; expected an integer")
    return int(text)


def load_countdown(path: str | os.PathLike = CD3_TEST_PATH, solve: bool = True) -> list[Example]:
    """Countdown problems from a JSON-lines file of ``{"input": "30,100,93", "output": "23"}``.

    Args:
      path: the file; by default the 256-row 3-number test set shipped with the package.
      solve: find an equation by ``solve_countdown`` for each row and use it as the SFT target
        (every row of the shipped file has one); otherwise, or when none exists, target is ``""``.

    Raises:
      ValueError: naming the path and 1-based line, for a malformed row.
    """
    examples = []
    for line, row in read_jsonl(path, {"input": str, "output": str}):
        numbers = tuple(
            _parse_int(part, path, line, "an input number") for part in row["input"].split(",")
        )
        target = _parse_int(row["output"], path, line, "output")
        equation = solve_countdown(numbers, target) if solve else None
        examples.append(
            Example(
                prompt=countdown_prompt(numbers, target),
                target=equation or "",
                answer=str(target),
                info={"numbers": numbers, "target": target, "format": COUNTDOWN_FORMAT},
            )
        )
    return examples
