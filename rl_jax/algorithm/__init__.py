"""The RL algorithm: typed settings, the registries of its choices, typed batches, and the one
builder of the RL step. Above the math (``rl_jax.losses``, ``advantages``, ``kl``, ``mismatch``)
and below the trainers."""

from rl_jax.algorithm.batch import RolloutBatch, TrainBatch
from rl_jax.algorithm.registry import (
    ESTIMATORS,
    IS_CORRECTIONS,
    NO_CORRECTION,
    POLICY_LOSSES,
    Estimator,
    PolicyLoss,
)
from rl_jax.algorithm.settings import RLSettings
from rl_jax.algorithm.shaping import ScoreShaping, shape_scores
from rl_jax.algorithm.step import RLStep, build_rl_step, policy_token_stats

__all__ = [
    "ESTIMATORS",
    "IS_CORRECTIONS",
    "NO_CORRECTION",
    "POLICY_LOSSES",
    "Estimator",
    "PolicyLoss",
    "RLSettings",
    "RLStep",
    "RolloutBatch",
    "ScoreShaping",
    "TrainBatch",
    "build_rl_step",
    "policy_token_stats",
    "shape_scores",
]
