"""Process supervision: the tasks that declare reasoning steps, their gold step checkers, and the
mapping of steps from characters to response tokens.

A gold step checker is a pure function ``(completion, example) -> [(end, reward), ...]``: each
step's last character index in the completion and its 0/1 reward. ``STEP_CHECKERS`` names the
tasks that have one (``rl.step_rewards = "gold"`` needs it; so does the ``prm`` stage, whose
labels it makes). A step segmenter ``completion -> [end, ...]`` gives the same ends without
reading the example: ``STEP_SEGMENTERS``, what ``rl.step_rewards = "model"`` scores. A task with
steps has both.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from rl_jax.data import scratchpad
from rl_jax.data.example import Example

StepChecker = Callable[[str, Example], list[tuple[int, float]]]
StepSegmenter = Callable[[str], list[int]]

STEP_CHECKERS: dict[str, StepChecker] = {
    "addition_scratchpad": scratchpad.gold_steps,
}
STEP_SEGMENTERS: dict[str, StepSegmenter] = {
    "addition_scratchpad": scratchpad.step_ends,
}


def step_token_ends(
    char_ends: Sequence[int], token_text_ends: np.ndarray, length: int
) -> np.ndarray:
    """The response token index where each step ends: ``[len(char_ends)]`` int32.

    Step ``j`` ends on the token holding its last character ``char_ends[j]``: the first ``t`` with
    ``token_text_ends[t] > char_ends[j]``, where ``token_text_ends`` ``[n]`` is the length of the
    text the first ``t + 1`` tokens decode to. The last step ends on the response's last token
    ``length - 1`` (its EOS, when it has one), so every real token belongs to a step.
    """
    if not len(char_ends):
        return np.zeros(0, np.int32)
    ends = np.searchsorted(np.asarray(token_text_ends), np.asarray(char_ends), side="right")
    ends = np.minimum(ends, length - 1).astype(np.int32)
    ends[-1] = length - 1
    return ends


def step_arrays(
    steps: Sequence[Sequence[tuple[int, float]]],
    token_text_ends: Sequence[np.ndarray],
    lengths: np.ndarray,
    num_steps: int,
) -> tuple[np.ndarray, np.ndarray]:
    """``(step_rewards, step_ends)``, ``[batch, num_steps]`` float32 and int32 (``-1``: no step),
    of a batch of responses: ``steps[b]`` from a gold step checker, ``token_text_ends[b]`` as
    ``step_token_ends`` reads it, ``lengths`` ``[batch]`` the responses' token counts. A response
    with more than ``num_steps`` steps keeps its first ``num_steps - 1`` and its last."""
    rewards = np.zeros((len(steps), num_steps), np.float32)
    ends = np.full((len(steps), num_steps), -1, np.int32)
    for b, row in enumerate(steps):
        if not row or lengths[b] == 0:
            continue
        if len(row) > num_steps:
            row = [*row[: num_steps - 1], row[-1]]
        token_ends = step_token_ends([end for end, _ in row], token_text_ends[b], int(lengths[b]))
        ends[b, : len(row)] = token_ends
        rewards[b, : len(row)] = [reward for _, reward in row]
    return rewards, ends
