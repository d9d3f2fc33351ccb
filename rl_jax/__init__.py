"""rl_jax: reinforcement learning for language models (PPO, GRPO, reward models) in JAX and Flax.

The math is a set of pure, jit-compatible functions of arrays, exported here; models live in
``rl_jax.models``, the sampler in ``rl_jax.rollout`` and devices in ``rl_jax.parallel``.
"""

from rl_jax.advantages import (
    gae,
    group_advantages,
    grpo_gradient_coefficient,
    masked_mean,
    masked_var,
    process_advantages,
    reinforce_pp_baseline_advantages,
    rft_gradient_coefficient,
    rloo_advantages,
    whiten,
)
from rl_jax.kl import adaptive_kl_update, kl
from rl_jax.losses import (
    AGG_MODES,
    aggregate,
    aggregate_terms,
    cispo_loss,
    clip_cov_loss,
    entropy,
    gmpo_loss,
    kl_cov_loss,
    likelihood_loss,
    policy_loss,
    token_covariance,
    token_logprobs,
    value_loss,
)
from rl_jax.mismatch import (
    behaviour_weight_stats,
    sequence_masked_is,
    sequence_tis,
    token_masked_is,
    token_tis,
)
from rl_jax.reward_losses import (
    listwise_loss,
    pairwise_loss,
    process_reward_loss,
    ranking_loss,
)

__all__ = [
    "AGG_MODES",
    "adaptive_kl_update",
    "aggregate",
    "aggregate_terms",
    "behaviour_weight_stats",
    "cispo_loss",
    "clip_cov_loss",
    "entropy",
    "gae",
    "gmpo_loss",
    "group_advantages",
    "grpo_gradient_coefficient",
    "kl",
    "kl_cov_loss",
    "likelihood_loss",
    "listwise_loss",
    "masked_mean",
    "masked_var",
    "pairwise_loss",
    "policy_loss",
    "process_advantages",
    "process_reward_loss",
    "ranking_loss",
    "reinforce_pp_baseline_advantages",
    "rft_gradient_coefficient",
    "rloo_advantages",
    "sequence_masked_is",
    "sequence_tis",
    "token_covariance",
    "token_logprobs",
    "token_masked_is",
    "token_tis",
    "value_loss",
    "whiten",
]
