"""Reward functions for generated and file tasks, chosen by name.

Every reward function has one signature::

    fn(completions: Sequence[str], examples: Sequence[Example]) -> np.ndarray  # [batch] float32

``completions[i]`` is the decoded response to ``examples[i].prompt`` with EOS removed. Scores are
0 or 1 (``digits_gold`` and ``digits_verbose`` are graded). Pick functions by name and mix them
with ``combine_rewards``, e.g.
``combine_rewards({"countdown": 1.0, "format": 0.1}, completions, examples)``.

  * ``"exact_match"``: ``completion.strip() == example.answer`` (arithmetic, sorting).
  * ``"final_answer"``: the text after the completion's last ``">"`` (all of it when there is
    none), stripped, equals ``example.answer``: the scratchpad task, whose working is not scored.
  * ``"gsm8k"``: the number after the last ``"####"`` equals ``example.answer`` as a decimal
    (commas dropped, ``"3.0" == "3"``); no ``"####"`` or no number after it scores 0.
  * ``"countdown"``: the stripped completion is an expression over the example's
    ``info["numbers"]``, each used exactly once, equal to ``info["target"]``; see
    ``rl_jax.data.countdown`` (``ast`` with a node whitelist, never ``eval``).
  * ``"format"``: the stripped completion fully matches the regex ``example.info["format"]``
    that every task puts there (digits for arithmetic, ``"1,2,3"`` for sorting, expression
    characters for countdown, ending in ``"#### <number>"`` for GSM8K).
  * ``"last_number"``: the last number in the completion (``extract_last_number``: commas in
    thousands groups dropped, a ``-`` counts only when no digit is right before it) equals
    ``example.answer`` as a decimal; no number scores 0. Lenient, for chat replies such as
    ``"7 + 5 = 12."`` (word arithmetic).
  * ``"digits_gold"``: the hidden labeller of the digits task, ``digits_gold_score`` (mean digit
    value minus a length penalty; see ``rl_jax.data.digits``).
  * ``"digits_verbose"``: a labeller of the digits task that pays for length,
    ``digits_verbose_score`` (the digit values of the whole completion: every extra digit adds).

Each reward also names the answer it reads in a completion (``extract_answers``), what maj@k votes
over: GSM8K's number after the last ``"####"`` (a ``Decimal``, so ``"5"`` and ``"5.0"`` agree),
countdown's expression without whitespace, and the stripped completion for the others; a
completion without one (``None``: no ``"####"`` number, or nothing but whitespace) does not vote.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

import numpy as np

from rl_jax.data.countdown import is_countdown_solution
from rl_jax.data.digits import digits_gold_score, digits_verbose_score
from rl_jax.data.example import Example
from rl_jax.data.scratchpad import final_answer

RewardFn = Callable[[Sequence[str], Sequence[Example]], np.ndarray]

_GSM8K_NUMBER = re.compile(r"\s*(-?[0-9][0-9,]*(?:\.[0-9]+)?)")
# A number in free text: a sign unless a digit is right before it (then it is an operator),
# thousands groups, decimals; never starting in the middle of another number.
_NUMBER = re.compile(r"(?<![0-9])-?[0-9]+(?:,[0-9]{3})*(?:\.[0-9]+)?")


def _check_batch(completions: Sequence[str], examples: Sequence[Example]) -> None:
    if len(completions) != len(examples):
        raise ValueError(
            f"got {len(completions)} completions for {len(examples)} examples; expected one each"
        )


def _info(example: Example, key: str, reward: str) -> Any:
    """``example.info[key]``, or a ValueError saying which reward needed it."""
    if key not in example.info:
        raise ValueError(
            f"reward {reward!r} needs info[{key!r}]; example {example.prompt[:40]!r} has "
            f"info keys {sorted(example.info)}"
        )
    return example.info[key]


def _scores(values: Sequence[bool]) -> np.ndarray:
    return np.asarray(values, dtype=np.float32).reshape(len(values))


def exact_match_reward(completions: Sequence[str], examples: Sequence[Example]) -> np.ndarray:
    """``[batch]`` 1.0 where ``completion.strip() == example.answer``, else 0.0."""
    _check_batch(completions, examples)
    return _scores([c.strip() == ex.answer for c, ex in zip(completions, examples, strict=True)])


def final_answer_reward(completions: Sequence[str], examples: Sequence[Example]) -> np.ndarray:
    """``[batch]`` 1.0 where the text after the last ``">"`` equals ``example.answer``, else 0.0."""
    _check_batch(completions, examples)
    return _scores(
        [final_answer(c) == ex.answer for c, ex in zip(completions, examples, strict=True)]
    )


def extract_gsm8k_answer(completion: str) -> Decimal | None:
    """The number after the last ``"####"`` (commas dropped), or None if there is none."""
    start = completion.rfind("####")
    if start < 0:
        return None
    match = _GSM8K_NUMBER.match(completion, start + 4)
    return Decimal(match.group(1).replace(",", "")) if match else None


def _decimal_answer(answer: str) -> Decimal:
    try:
        return Decimal(answer.replace(",", "").strip())
    except InvalidOperation as err:
        raise ValueError(f"GSM8K answer {answer!r} is not a number") from err


def gsm8k_reward(completions: Sequence[str], examples: Sequence[Example]) -> np.ndarray:
    """``[batch]`` 1.0 where the number after the completion's last ``"####"`` equals the answer.

    Equality is numeric (``Decimal``): ``"1,000" == "1000"``, ``"3.0" == "3"``.
    """
    _check_batch(completions, examples)
    scores = []
    for completion, example in zip(completions, examples, strict=True):
        answer = _decimal_answer(example.answer)
        predicted = extract_gsm8k_answer(completion)
        scores.append(predicted is not None and predicted == answer)
    return _scores(scores)


def countdown_reward(completions: Sequence[str], examples: Sequence[Example]) -> np.ndarray:
    """``[batch]`` 1.0 where the completion is an expression using ``info["numbers"]`` exactly
    once each (as a multiset) that equals ``info["target"]``; malformed or ``x/0`` score 0."""
    _check_batch(completions, examples)
    return _scores(
        [
            is_countdown_solution(
                c, _info(ex, "numbers", "countdown"), _info(ex, "target", "countdown")
            )
            for c, ex in zip(completions, examples, strict=True)
        ]
    )


def format_reward(completions: Sequence[str], examples: Sequence[Example]) -> np.ndarray:
    """``[batch]`` 1.0 where ``completion.strip()`` fully matches the regex ``info["format"]``."""
    _check_batch(completions, examples)
    return _scores(
        [
            re.fullmatch(_info(ex, "format", "format"), c.strip()) is not None
            for c, ex in zip(completions, examples, strict=True)
        ]
    )


def extract_last_number(completion: str) -> Decimal | None:
    """The last number in ``completion`` as a Decimal, or None if it has none.

    ``"7 + 5 = 12."`` -> 12; ``"1,234"`` -> 1234; ``"3.50"`` -> 3.50; ``"9 - 4 = -5"`` -> -5;
    in ``"9-4"`` the minus is an operator, so -> 4.
    """
    numbers = _NUMBER.findall(completion)
    return Decimal(numbers[-1].replace(",", "")) if numbers else None


def last_number_reward(completions: Sequence[str], examples: Sequence[Example]) -> np.ndarray:
    """``[batch]`` 1.0 where the completion's last number (``extract_last_number``) equals
    ``example.answer`` numerically (``"12.0" == "12"``), else 0.0."""
    _check_batch(completions, examples)
    scores = []
    for completion, example in zip(completions, examples, strict=True):
        predicted = extract_last_number(completion)
        scores.append(predicted is not None and predicted == _decimal_answer(example.answer))
    return _scores(scores)


def digits_gold_reward(completions: Sequence[str], examples: Sequence[Example]) -> np.ndarray:
    """``[batch]`` gold scores of the digits task (``info["num_digits"]``)."""
    _check_batch(completions, examples)
    return np.asarray(
        [
            digits_gold_score(c, _info(ex, "num_digits", "digits_gold"))
            for c, ex in zip(completions, examples, strict=True)
        ],
        np.float32,
    )


def digits_verbose_reward(completions: Sequence[str], examples: Sequence[Example]) -> np.ndarray:
    """``[batch]`` length-paying scores of the digits task (``info["num_digits"]``)."""
    _check_batch(completions, examples)
    return np.asarray(
        [
            digits_verbose_score(c, _info(ex, "num_digits", "digits_verbose"))
            for c, ex in zip(completions, examples, strict=True)
        ],
        np.float32,
    )


REWARD_FNS: dict[str, RewardFn] = {
    "exact_match": exact_match_reward,
    "final_answer": final_answer_reward,
    "gsm8k": gsm8k_reward,
    "countdown": countdown_reward,
    "format": format_reward,
    "digits_gold": digits_gold_reward,
    "digits_verbose": digits_verbose_reward,
    "last_number": last_number_reward,
}


def _stripped_answer(completion: str) -> str | None:
    return completion.strip() or None


def _expression_answer(completion: str) -> str | None:
    return "".join(completion.split()) or None


# reward name -> the answer a completion gives under it (None: no answer); see extract_answers.
ANSWER_FNS: dict[str, Callable[[str], Hashable | None]] = {
    "exact_match": _stripped_answer,
    "gsm8k": extract_gsm8k_answer,
    "countdown": _expression_answer,
    "format": _stripped_answer,
    "digits_gold": _stripped_answer,
    "digits_verbose": _stripped_answer,
    "final_answer": lambda completion: final_answer(completion) or None,
    "last_number": extract_last_number,
}


def extract_answers(name: str, completions: Sequence[str]) -> list[Hashable | None]:
    """``[batch]`` the answer each completion gives as reward ``name`` reads it (module
    docstring), ``None`` where it gives none: the classes maj@k votes over."""
    get_reward_fn(name)  # an unknown name is the same error as for the reward itself
    return [ANSWER_FNS[name](c) for c in completions]


def get_reward_fn(name: str) -> RewardFn:
    """The reward function called ``name``; ValueError listing the known names otherwise."""
    if name not in REWARD_FNS:
        raise ValueError(f"unknown reward {name!r}; known rewards: {', '.join(sorted(REWARD_FNS))}")
    return REWARD_FNS[name]


def combine_rewards(
    weights: Mapping[str, float],
    completions: Sequence[str],
    examples: Sequence[Example],
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Weighted sum of named rewards: ``total = sum_name weights[name] * reward_name``.

    Args:
      weights: reward name -> weight; at least one name.
      completions: ``[batch]`` decoded responses (EOS removed).
      examples: ``[batch]`` the examples they answer.

    Returns:
      ``(total, per_function)``: ``total`` ``[batch]`` float32, and each named reward's unweighted
      ``[batch]`` float32 scores (for logging).

    Raises:
      ValueError: for empty weights or an unknown name (listing the known ones), before any
        reward is computed.
    """
    if not weights:
        raise ValueError(f"weights is empty; expected some of: {', '.join(sorted(REWARD_FNS))}")
    fns = {name: get_reward_fn(name) for name in weights}
    _check_batch(completions, examples)
    per_function = {name: fn(completions, examples) for name, fn in fns.items()}
    total = np.zeros(len(completions), dtype=np.float32)
    for name, scores in per_function.items():
        total += np.float32(weights[name]) * scores
    return total, per_function
