"""Addition with an optional scratchpad: the response's length is the policy's own choice.

Prompt ``"58+67="``; the answer is the sum written least significant digit first (``"521"``), as
in ``ArithmeticTask``. Before it, a response may write up to one note per column, the column's
digit sum with the carry in (least significant column first), then ``">"``::

    "521"          no working
    "15>521"       the first column: 8 + 7 = 15
    "15,12>521"    both columns: 8 + 7 = 15, then 5 + 6 + 1 = 12

All three are correct: the ``final_answer`` reward reads only the text after the last ``">"``
(the whole response when there is none). The notes are true working (a note's tens digit is the
next column's carry), so a longer response may be a more accurate one, but nothing in the reward
asks for any length: how much to write is the policy's choice. SFT targets draw the number of
notes uniformly from 0 to the number of columns, so the policy starts with a spread of lengths
for RL to move (Dr. GRPO, Liu et al. 2025, §3).

Steps (process supervision): each note, with the separator after it, is a step, and the answer is
the last; ``gold_steps`` checks each against the true working.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from rl_jax.data.example import Example, GeneratedTask

SCRATCHPAD_SEPARATOR = ">"
# Notes (comma-separated column sums) then ">", optional; then the reversed sum.
SCRATCHPAD_FORMAT = r"([0-9]+(,[0-9]+)*>)?[0-9]+"


def column_notes(a: int, b: int) -> list[str]:
    """The digit sum of each column of ``a + b`` with the carry in, least significant first.

    ``column_notes(58, 67) == ["15", "12"]``: ``8 + 7 = 15``, then ``5 + 6 + 1 = 12``; a final
    carry is not a column (``"521"`` already ends in it).
    """
    if a < 0 or b < 0:
        raise ValueError(f"operands must be >= 0, got {a}, {b}")
    notes, carry = [], 0
    for i in range(max(len(str(a)), len(str(b)))):
        total = (a // 10**i) % 10 + (b // 10**i) % 10 + carry
        notes.append(str(total))
        carry = total // 10
    return notes


def final_answer(completion: str) -> str:
    """The text after the last ``">"`` of the stripped completion (all of it when there is none)."""
    return completion.strip().rsplit(SCRATCHPAD_SEPARATOR, 1)[-1].strip()


@dataclasses.dataclass(frozen=True)
class ScratchpadAdditionTask(GeneratedTask):
    """``a + b`` with both operands uniform in ``[min_value, max_value]``; SFT targets carry
    ``k`` notes, ``k`` uniform in ``[0, columns]``.

    ``answer`` is the reversed sum alone; ``target`` is ``",".join(notes[:k]) + ">" + answer``
    (just ``answer`` when ``k = 0``). ``info`` holds ``operands``, ``notes`` (all columns) and
    ``format``.
    """

    min_value: int = 10
    max_value: int = 999
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.min_value <= self.max_value:
            raise ValueError(
                f"need 0 <= min_value <= max_value, got {self.min_value}, {self.max_value}"
            )

    def sample(self, rng: np.random.Generator) -> Example:
        """Draw one problem, and the number of notes of its SFT target, from ``rng``."""
        a, b = (int(x) for x in rng.integers(self.min_value, self.max_value, size=2, endpoint=True))
        answer = str(a + b)[::-1]
        notes = column_notes(a, b)
        k = int(rng.integers(0, len(notes), endpoint=True))
        target = ",".join(notes[:k]) + SCRATCHPAD_SEPARATOR + answer if k else answer
        info = {"operands": (a, b), "notes": tuple(notes), "format": SCRATCHPAD_FORMAT}
        return Example(prompt=f"{a}+{b}=", target=target, answer=answer, info=info)


def step_ends(completion: str) -> list[int]:
    """The character index where each step of a scratchpad completion ends: each note's
    separator (``","`` or ``">"``), then the completion's last character (the answer).
    ``step_ends("15,13>531") == [2, 5, 8]``; an empty completion has no step. The segmentation
    alone, read without the example (a process reward model scores these steps)."""
    if not completion:
        return []
    ends, start = [], 0
    separator = completion.rfind(SCRATCHPAD_SEPARATOR)
    if separator >= 0:
        for note in completion[:separator].split(","):
            ends.append(start + len(note))
            start = ends[-1] + 1
    return [*ends, len(completion) - 1]


def gold_steps(completion: str, example: Example) -> list[tuple[int, float]]:
    """The steps of a scratchpad completion and their gold rewards: ``[(end, reward), ...]``.

    Step ``j < k`` is note ``j`` with the separator after it (``","`` or ``">"``); ``end`` is the
    separator's character index, and ``reward`` is 1.0 when the note equals the true column sum
    ``example.info["notes"][j]`` (a note past the last column is wrong). The last step is the
    answer: it ends at the completion's last character and is rewarded 1.0 when
    ``final_answer(completion) == example.answer``. ``"15,13>531"`` for ``58+67``: notes 15 (right)
    and 13 (wrong), answer wrong: ``[(2, 1.0), (5, 0.0), (8, 0.0)]``. An empty completion has no
    step.
    """
    ends = step_ends(completion)
    if not ends:
        return []
    gold = example.info["notes"]
    separator = completion.rfind(SCRATCHPAD_SEPARATOR)
    notes = completion[:separator].split(",") if separator >= 0 else []
    steps = [(end, float(j < len(gold) and note.strip() == gold[j]))
             for j, (end, note) in enumerate(zip(ends, notes, strict=False))]
    steps.append((ends[-1], float(final_answer(completion) == example.answer)))
    return steps


FILLER = " "
FILLER_FORMAT = r"[0-9]+"  # of the stripped response: the filler is whitespace


@dataclasses.dataclass(frozen=True)
class FillerAdditionTask(GeneratedTask):
    """``a + b`` whose response may run on with unscored filler: length that does not help.

    A response is the reversed sum, then ``k`` filler spaces (``"521" + " " * k`` for
    ``58+67``); the ``exact_match`` reward compares the stripped response with the answer, so
    every ``k`` is right with the right sum. The filler carries no working and comes after the
    answer (the answer's digits keep the positions the plain task gives them), so a response's
    length is the policy's choice and nothing else: a pressure on length can only come from the
    loss (Dr. GRPO, Liu et al. 2025, §3.1). SFT targets draw ``k`` uniformly from
    ``[0, max_filler]``, so RL starts from a spread of lengths. ``info`` holds ``operands`` and
    ``format``.
    """

    min_value: int = 10
    max_value: int = 999
    max_filler: int = 12
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.min_value <= self.max_value:
            raise ValueError(
                f"need 0 <= min_value <= max_value, got {self.min_value}, {self.max_value}"
            )
        if self.max_filler < 0:
            raise ValueError(f"max_filler must be >= 0, got {self.max_filler}")

    def sample(self, rng: np.random.Generator) -> Example:
        """Draw one problem, and the filler length of its SFT target, from ``rng``."""
        a, b = (int(x) for x in rng.integers(self.min_value, self.max_value, size=2, endpoint=True))
        answer = str(a + b)[::-1]
        k = int(rng.integers(0, self.max_filler, endpoint=True))
        info = {"operands": (a, b), "format": FILLER_FORMAT}
        return Example(prompt=f"{a}+{b}=", target=answer + FILLER * k, answer=answer, info=info)
