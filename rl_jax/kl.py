"""KL divergence to the reference policy: per-token estimators and the adaptive coefficient."""

from __future__ import annotations

from typing import Literal

import chex
import jax
import jax.numpy as jnp

KLEstimator = Literal["k1", "k2", "k3"]


def kl(logprobs: jax.Array, ref_logprobs: jax.Array, *, estimator: KLEstimator) -> jax.Array:
    r"""Per-token estimate of KL(pi || pi_ref) from tokens sampled from ``pi`` (Schulman 2020).

    With ``d = log pi(y) - log pi_ref(y)`` for a sampled token ``y``:

      * ``"k1"``: ``d``; unbiased, high variance, can be negative (the PPO-RLHF reward penalty);
      * ``"k2"``: ``0.5 * d^2``; biased, low variance, non-negative;
      * ``"k3"``: ``exp(-d) + d - 1``; unbiased, low variance, non-negative (GRPO's loss term).

    Args:
      logprobs: ``[...]`` log-probs of the sampled tokens under the policy.
      ref_logprobs: same shape, under the reference policy.
      estimator: ``"k1"``, ``"k2"`` or ``"k3"``.

    Returns:
      Per-token estimates, same shape as the inputs (mask them before reducing).
    """
    chex.assert_equal_shape([logprobs, ref_logprobs])
    d = logprobs.astype(jnp.float32) - ref_logprobs.astype(jnp.float32)
    if estimator == "k1":
        return d
    if estimator == "k2":
        return 0.5 * jnp.square(d)
    if estimator == "k3":
        return jnp.expm1(-d) + d
    raise ValueError(f"estimator must be 'k1', 'k2' or 'k3', got {estimator!r}.")


def adaptive_kl_update(
    coef: jax.Array | float,
    observed_kl: jax.Array | float,
    *,
    target: float,
    horizon: float,
    n_steps: int,
) -> jax.Array:
    r"""The adaptive KL-penalty controller of Ziegler et al. (2019).

    ``e = clip(KL / target - 1, -0.2, 0.2)`` and ``beta <- beta * (1 + e * n_steps / horizon)``:
    the coefficient grows when the observed KL is above the target and shrinks below it, by at most
    20% per ``horizon`` samples.

    Args:
      coef: the current coefficient ``beta``.
      observed_kl: the KL measured on the latest batch (e.g. the mean per-sequence KL).
      target: the KL to aim for.
      horizon: the number of samples over which the error is corrected.
      n_steps: samples seen since the last update (usually the rollout batch size).

    Returns:
      The new coefficient (a float32 scalar).
    """
    error = jnp.clip(jnp.asarray(observed_kl, jnp.float32) / target - 1.0, -0.2, 0.2)
    return jnp.asarray(coef, jnp.float32) * (1.0 + error * n_steps / horizon)
