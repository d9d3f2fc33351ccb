"""rl_jax: reinforcement learning for language models (PPO, GRPO, reward models) in JAX and Flax.

The math is a set of pure, jit-compatible functions of arrays, exported here; models live in
``rl_jax.models``, the sampler in ``rl_jax.rollout`` and devices in ``rl_jax.parallel``.
"""

from rl_jax.advantages import (
    gae,
    group_advantages,
    masked_mean,
    masked_var,
    reinforce_pp_baseline_advantages,
    rloo_advantages,
    whiten,
)
from rl_jax.kl import adaptive_kl_update, kl
from rl_jax.losses import (
    AGG_MODES,
    aggregate,
    aggregate_terms,
    entropy,
    policy_loss,
    token_logprobs,
    value_loss,
)
from rl_jax.reward_losses import listwise_loss, pairwise_loss, ranking_loss

__all__ = [
    "AGG_MODES",
    "adaptive_kl_update",
    "aggregate",
    "aggregate_terms",
    "entropy",
    "gae",
    "group_advantages",
    "kl",
    "listwise_loss",
    "masked_mean",
    "masked_var",
    "pairwise_loss",
    "policy_loss",
    "ranking_loss",
    "reinforce_pp_baseline_advantages",
    "rloo_advantages",
    "token_logprobs",
    "value_loss",
    "whiten",
]
