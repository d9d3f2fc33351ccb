"""Score shaping: changes to a response's sequence score before advantages, on the host.

Pure NumPy functions of ``[batch]`` arrays; ``shape_scores`` applies the configured ones in order
(the soft overlong punishment, then the EOS trick).
"""

from __future__ import annotations

import dataclasses

import ml_collections
import numpy as np


def overlong_punishment(lengths: np.ndarray, max_new_tokens: int, buffer: int,
                        penalty: float) -> np.ndarray:
    """DAPO's soft overlong punishment ``[batch]`` (to subtract from the scores).

    With budget ``N = max_new_tokens`` and buffer ``b``, a response of length ``L`` is punished
    ``penalty * clip((L - (N - b)) / b, 0, 1)``: nothing up to ``N - b`` tokens, then linearly up
    to ``penalty`` at ``N``.
    """
    start = max_new_tokens - buffer
    return penalty * np.clip((lengths - start) / buffer, 0.0, 1.0)


def eos_trick(scores: np.ndarray, truncated: np.ndarray, missing_eos_score: float) -> np.ndarray:
    """The EOS trick (Huang et al., "N implementation details of RLHF with PPO"): a response that
    hit the budget without EOS (``truncated``, ``[batch]`` bool) scores ``missing_eos_score``
    instead of its reward."""
    return np.where(truncated, np.float32(missing_eos_score), scores)


@dataclasses.dataclass(frozen=True)
class ScoreShaping:
    """Which shaping applies (the ``rl`` section's fields; their defaults are the config's):
    ``overlong_buffer = 0`` and ``eos_trick = False`` leave scores unchanged."""

    max_new_tokens: int
    overlong_buffer: int
    overlong_penalty: float
    eos_trick: bool
    missing_eos_score: float

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> ScoreShaping:
        rl = config.rl
        return cls(
            max_new_tokens=config.rollout.max_new_tokens,
            overlong_buffer=rl.overlong_buffer,
            overlong_penalty=rl.overlong_penalty,
            eos_trick=rl.eos_trick,
            missing_eos_score=rl.missing_eos_score,
        )


def shape_scores(shaping: ScoreShaping, scores: np.ndarray, lengths: np.ndarray,
                 truncated: np.ndarray) -> np.ndarray:
    """``[batch]`` float32 scores after the configured shaping: ``scores``, response ``lengths``
    (tokens) and ``truncated`` (no EOS) are ``[batch]``."""
    scores = scores.astype(np.float32).copy()
    if shaping.overlong_buffer > 0:
        scores -= overlong_punishment(lengths, shaping.max_new_tokens, shaping.overlong_buffer,
                                      shaping.overlong_penalty)
    if shaping.eos_trick:
        scores = eos_trick(scores, truncated, shaping.missing_eos_score)
    return scores
