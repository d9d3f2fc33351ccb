"""Every choice of the RL algorithm, by name: advantage estimators, policy losses, importance
corrections for the sampler/trainer mismatch, and score shaping.

A config names its choices (``rl.estimator``, ``loss.policy_loss``, ``loss.is_correction``);
``rl_jax.config.check_config`` accepts exactly the names registered here and the RL step calls the
registered function. Each entry is a thin adapter from ``RLSettings`` to a pure function of
arrays in ``rl_jax.advantages``, ``rl_jax.losses``, ``rl_jax.mismatch`` or ``shaping``, where the
math and its test live.

Adding a policy loss: write the function and its test next to the others in ``rl_jax/losses.py``
and ``tests/test_losses.py``, then add one entry to ``POLICY_LOSSES`` below (a loss with its own
hyperparameters also adds them to the ``loss`` section of ``rl_jax.config.default_config`` and to
``RLSettings``, read in ``RLSettings.from_config``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

import rl_jax

Metrics = dict[str, jax.Array]


# Every adapter takes the RLSettings first (``s`` or ``settings``).


# --- Advantage estimators -------------------------------------------------------------------------
# (settings, scores [batch], response_mask [batch, R], values [batch, R] | None,
#  token_kl [batch, R] | None, kl_coef, rollout: RolloutBatch)
#   -> (advantages [batch, R], returns [batch, R] | None)
# ``rollout`` carries what an estimator reads besides the scores (``Estimator.reads``): the
# correctness indicator, or the per-step rewards.


def _token_rewards(settings, scores, mask, token_kl, kl_coef) -> jax.Array:
    """``[batch, R]``: the sequence score on the last real token (right padding), minus
    ``kl_coef * KL`` on every token when ``kl_in_reward``."""
    last = jnp.cumsum(mask[:, ::-1], axis=1)[:, ::-1] == 1
    rewards = jnp.where(last & (mask > 0), scores[:, None], 0.0)
    if settings.kl_in_reward:
        rewards = rewards - kl_coef * token_kl * mask
    return rewards


def _gae(settings, scores, mask, values, token_kl, kl_coef, rollout):
    rewards = _token_rewards(settings, scores, mask, token_kl, kl_coef)
    return rl_jax.gae(rewards, values, mask, gamma=settings.gamma, lam=settings.lam)


def _reinforce_pp(settings, scores, mask, values, token_kl, kl_coef, rollout):
    rewards = _token_rewards(settings, scores, mask, token_kl, kl_coef)
    adv, _ = rl_jax.gae(rewards, jnp.zeros_like(mask), mask, gamma=settings.gamma, lam=1.0)
    return rl_jax.whiten(adv, mask), None


def _grpo(settings, scores, mask, values, token_kl, kl_coef, rollout):
    return rl_jax.group_advantages(scores, settings.group_size, scale="group")[:, None] * mask, None


def _dr_grpo(settings, scores, mask, values, token_kl, kl_coef, rollout):
    return rl_jax.group_advantages(scores, settings.group_size, scale="none")[:, None] * mask, None


def _rloo(settings, scores, mask, values, token_kl, kl_coef, rollout):
    return rl_jax.rloo_advantages(scores, settings.group_size)[:, None] * mask, None


def _reinforce_pp_baseline(settings, scores, mask, values, token_kl, kl_coef, rollout):
    return rl_jax.reinforce_pp_baseline_advantages(scores, mask, settings.group_size), None


def _rft(settings, scores, mask, values, token_kl, kl_coef, rollout):
    return rl_jax.rft_gradient_coefficient(rollout.correct, mask), None


def _grpo_process(settings, scores, mask, values, token_kl, kl_coef, rollout):
    advantages = rl_jax.process_advantages(
        rollout.step_rewards, rollout.step_ends, mask, settings.group_size
    )
    return advantages, None


@dataclasses.dataclass(frozen=True)
class Estimator:
    """An advantage estimator and what it needs.

    critic: it reads a value model's ``V(s_t)`` (and trains one).
    grouped: its baseline comes from the other responses of a prompt (``group_size >= 2``).
    whitens: it whitens its own output, so ``rl.whiten_advantages`` does not apply.
    uses_token_rewards: it reads per-token rewards, so ``kl.in_reward`` can act on it.
    reads: what its coefficient is made of: ``"scores"`` (the shaped sequence scores),
      ``"correct"`` (the correctness indicator ``I(o)`` of ``rewards.correctness``, unshaped) or
      ``"steps"`` (per-step rewards from ``rl.step_rewards``).
    sampler: the policy its responses are drawn from: ``"policy"`` (the one being trained) or
      ``"reference"`` (the initial policy, frozen: RFT's offline data).
    policy_loss: the one ``loss.policy_loss`` it is defined with (None: any).
    """

    fn: Callable[..., tuple[jax.Array, jax.Array | None]]
    critic: bool = False
    grouped: bool = False
    whitens: bool = False
    uses_token_rewards: bool = False
    reads: str = "scores"
    sampler: str = "policy"
    policy_loss: str | None = None


ESTIMATORS: dict[str, Estimator] = {
    "gae": Estimator(_gae, critic=True, uses_token_rewards=True),
    "grpo": Estimator(_grpo, grouped=True),
    "dr_grpo": Estimator(_dr_grpo, grouped=True),
    "rloo": Estimator(_rloo, grouped=True),
    "reinforce_pp": Estimator(_reinforce_pp, whitens=True, uses_token_rewards=True),
    "reinforce_pp_baseline": Estimator(_reinforce_pp_baseline, grouped=True, whitens=True),
    # DeepSeekMath's unified paradigm (§5.2): SFT on the correct responses, sampled from the
    # frozen initial policy (RFT) or from the current one (Online RFT); GC = I(o).
    "rft": Estimator(_rft, reads="correct", sampler="reference", policy_loss="likelihood"),
    "online_rft": Estimator(_rft, reads="correct", policy_loss="likelihood"),
    # GRPO with process supervision (§4.1.3): step rewards normalised over the group.
    "grpo_process": Estimator(_grpo_process, grouped=True, reads="steps"),
}


# --- Policy losses --------------------------------------------------------------------------------
# (settings, logprobs, old_logprobs, advantages, mask [batch, R], key) -> (loss, metrics)


def _agg(s) -> dict[str, Any]:
    return dict(agg=s.agg, max_len=s.max_len, count_empty_rows=s.count_empty_rows)


def _clip(s) -> dict[str, float]:
    return dict(clip_low=s.clip_low, clip_high=s.clip_high)


def _ppo(s, logprobs, old_logprobs, adv, mask, key):
    return rl_jax.policy_loss(logprobs, old_logprobs, adv, mask, **_clip(s),
                              dual_clip=s.dual_clip, ratio_level=s.ratio_level, **_agg(s))


def _cispo(s, logprobs, old_logprobs, adv, mask, key):
    return rl_jax.cispo_loss(logprobs, old_logprobs, adv, mask, **_clip(s), **_agg(s))


def _gmpo(s, logprobs, old_logprobs, adv, mask, key):
    return rl_jax.gmpo_loss(logprobs, old_logprobs, adv, mask, clip_low=s.gmpo_clip,
                            clip_high=s.gmpo_clip, count_empty_rows=s.count_empty_rows)


def _clip_cov(s, logprobs, old_logprobs, adv, mask, key):
    return rl_jax.clip_cov_loss(logprobs, old_logprobs, adv, mask, key, **_clip(s),
                                cov_ratio=s.cov_ratio, cov_lower=s.cov_lower,
                                cov_upper=s.cov_upper, **_agg(s))


def _likelihood(s, logprobs, old_logprobs, adv, mask, key):
    return rl_jax.likelihood_loss(logprobs, old_logprobs, adv, mask, **_agg(s))


def _kl_cov(s, logprobs, old_logprobs, adv, mask, key):
    return rl_jax.kl_cov_loss(logprobs, old_logprobs, adv, mask, kl_ratio=s.cov_ratio,
                              kl_coef=s.kl_cov_coef, **_agg(s))


@dataclasses.dataclass(frozen=True)
class PolicyLoss:
    """A policy loss and what it reads.

    needs_key: it draws random numbers (a PRNG key per minibatch).
    uses_agg: it reduces token terms with ``loss.agg`` (otherwise it has its own reduction).
    """

    fn: Callable[..., tuple[jax.Array, Metrics]]
    needs_key: bool = False
    uses_agg: bool = True


POLICY_LOSSES: dict[str, PolicyLoss] = {
    "ppo": PolicyLoss(_ppo),
    "cispo": PolicyLoss(_cispo),
    "gmpo": PolicyLoss(_gmpo, uses_agg=False),
    "clip_cov": PolicyLoss(_clip_cov, needs_key=True),
    "kl_cov": PolicyLoss(_kl_cov),
    "likelihood": PolicyLoss(_likelihood),
    "sapo": PolicyLoss(lambda s, logprobs, old_logprobs, adv, mask, key: rl_jax.losses.sapo_loss(
        logprobs, old_logprobs, adv, mask, tau_pos=s.sapo_tau_pos, tau_neg=s.sapo_tau_neg,
        **_agg(s))),
}


# --- Importance corrections for the sampler/trainer mismatch --------------------------------------
# (settings, old_logprobs, sampler_logprobs, response_mask [batch, R])
#   -> (weights [batch, R], policy_mask [batch, R], metrics); "none" applies no correction.


def _band(s) -> dict[str, float]:
    return dict(low=s.is_low, high=s.is_high)


IS_CORRECTIONS: dict[str, Callable[..., tuple[jax.Array, jax.Array, Metrics]]] = {
    "token_tis": lambda s, *a: rl_jax.token_tis(*a, cap=s.is_cap),
    "seq_tis": lambda s, *a: rl_jax.sequence_tis(*a, cap=s.is_cap),
    "token_mis": lambda s, *a: rl_jax.token_masked_is(*a, **_band(s)),
    "seq_mis": lambda s, *a: rl_jax.sequence_masked_is(*a, **_band(s), level="product"),
    "seq_mis_geo": lambda s, *a: rl_jax.sequence_masked_is(*a, **_band(s), level="geometric"),
}
NO_CORRECTION = "none"
