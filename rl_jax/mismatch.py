"""Corrections for the mismatch between the sampler's and the trainer's log-probs.

The sampler (decoding with its own kernels, possibly another precision) and the trainer's forward
pass give slightly different log-probs for the same tokens. The policy loss's importance ratio is
taken against the trainer's old log-probs, so the samples are off-policy by
``w_t = pi_old(y_t) / pi_sampler(y_t)``. Each correction returns ``(weights, mask, metrics)``:
per-token weights (no gradient) that multiply the advantages, and a mask that drops tokens or
whole responses from the policy loss. Inputs are ``[batch, time]``; ``mask`` is 1 on real tokens.
"""

from __future__ import annotations

from typing import Literal

import chex
import jax
import jax.numpy as jnp

from rl_jax.advantages import masked_mean


def _mismatch_log_ratio(
    old_logprobs: jax.Array, sampler_logprobs: jax.Array, mask: jax.Array
) -> jax.Array:
    """``log pi_old - log pi_sampler`` at real tokens, 0 at padding, no gradient."""
    chex.assert_rank([old_logprobs, sampler_logprobs, mask], 2)
    chex.assert_equal_shape([old_logprobs, sampler_logprobs, mask])
    diff = old_logprobs.astype(jnp.float32) - sampler_logprobs.astype(jnp.float32)
    return jax.lax.stop_gradient(jnp.where(mask.astype(bool), diff, 0.0))


def _row_log_ratio(log_ratio: jax.Array, mask: jax.Array, level: str) -> jax.Array:
    """``[batch]`` log of the product (``"product"``) or geometric mean of the token ratios."""
    if level == "product":
        return log_ratio.sum(axis=1)
    if level == "geometric":
        return masked_mean(log_ratio, mask, axis=1)
    raise ValueError(f"level must be 'product' or 'geometric', got {level!r}.")


def token_tis(
    old_logprobs: jax.Array, sampler_logprobs: jax.Array, mask: jax.Array, *, cap: float
) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    r"""Token-level truncated importance sampling (Yao et al. 2025, "Your efficient RL framework
    secretly brings you off-policy RL training"): ``w_t = min(pi_old(y_t) / pi_sampler(y_t), cap)``.

    Args:
      old_logprobs: ``[batch, time]`` trainer log-probs at the sampling weights.
      sampler_logprobs: ``[batch, time]`` log-probs the sampler reported for the same tokens.
      mask: ``[batch, time]`` 1 for real tokens.
      cap: the truncation ``C``.

    Returns:
      ``(weights, mask, metrics)``; ``mask`` unchanged; metrics ``is_weight_mean`` and
      ``is_truncated_frac`` (share of real tokens at the cap).
    """
    log_ratio = _mismatch_log_ratio(old_logprobs, sampler_logprobs, mask)
    truncated = log_ratio > jnp.log(cap)
    weights = jnp.where(mask.astype(bool), jnp.exp(jnp.minimum(log_ratio, jnp.log(cap))), 0.0)
    metrics = {
        "is_weight_mean": masked_mean(weights, mask),
        "is_truncated_frac": masked_mean(truncated * 1.0, mask),
    }
    return weights, mask, metrics


def sequence_tis(
    old_logprobs: jax.Array, sampler_logprobs: jax.Array, mask: jax.Array, *, cap: float
) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    r"""Sequence-level truncated importance sampling (verl's ``rollout_is="sequence"``).

    ``w_i = min(prod_t pi_old(y_t) / pi_sampler(y_t), cap) = exp(min(sum_t log rho_t, log cap))``
    over the real tokens of response ``i``, on every token of the response (computed in log space,
    so a long response cannot overflow).

    Args:
      old_logprobs, sampler_logprobs, mask, cap: as ``token_tis``.

    Returns:
      ``(weights, mask, metrics)``; ``mask`` unchanged; metrics ``is_weight_mean`` (over responses
      with a real token) and ``is_truncated_frac`` (share of those responses at the cap).
    """
    log_ratio = _mismatch_log_ratio(old_logprobs, sampler_logprobs, mask)
    row = _row_log_ratio(log_ratio, mask, "product")
    row_weight = jnp.exp(jnp.minimum(row, jnp.log(cap)))
    weights = jnp.where(mask.astype(bool), row_weight[:, None], 0.0)
    nonempty = (mask.sum(axis=1) > 0) * 1.0
    metrics = {
        "is_weight_mean": masked_mean(row_weight, nonempty),
        "is_truncated_frac": masked_mean((row > jnp.log(cap)) * 1.0, nonempty),
    }
    return weights, mask, metrics


def token_masked_is(
    old_logprobs: jax.Array,
    sampler_logprobs: jax.Array,
    mask: jax.Array,
    *,
    low: float,
    high: float,
    reweight: bool = True,
) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    r"""Token-level masked importance sampling (IcePop, Ling team 2025; verl's ``token_k1``).

    With ``rho_t = pi_old(y_t) / pi_sampler(y_t)``, a token whose ratio leaves ``[low, high]`` is
    dropped from the loss::

        keep_t = low <= rho_t <= high
        w_t    = rho_t * keep_t   (reweight=True, IcePop's M(rho; low, high))
        w_t    = keep_t           (reweight=False, rejection only, as verl's ``rollout_rs``)

    Args:
      old_logprobs, sampler_logprobs, mask: as ``token_tis``.
      low, high: the band of kept ratios, ``0 < low <= 1 <= high``.
      reweight: multiply kept tokens by their ratio.

    Returns:
      ``(weights, new_mask, metrics)`` with ``new_mask = mask * keep`` and metrics
      ``is_masked_token_frac`` (share of real tokens dropped) and ``is_weight_mean`` (over kept
      tokens).
    """
    log_ratio = _mismatch_log_ratio(old_logprobs, sampler_logprobs, mask)
    keep = mask.astype(bool) & (log_ratio >= jnp.log(low)) & (log_ratio <= jnp.log(high))
    weights = jnp.where(keep, jnp.exp(log_ratio) if reweight else 1.0, 0.0)
    new_mask = keep.astype(mask.dtype)
    metrics = {
        "is_masked_token_frac": 1.0 - masked_mean(keep * 1.0, mask),
        "is_weight_mean": masked_mean(weights, new_mask),
    }
    return weights, new_mask, metrics


def sequence_masked_is(
    old_logprobs: jax.Array,
    sampler_logprobs: jax.Array,
    mask: jax.Array,
    *,
    low: float,
    high: float,
    level: Literal["geometric", "product"] = "geometric",
    reweight: bool = False,
) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    r"""Sequence-level masked importance sampling: drop whole responses whose ratio leaves a band.

    With ``log rho_t = log pi_old(y_t) - log pi_sampler(y_t)`` over the real tokens of response
    ``i``::

        level="geometric":  rho_i = exp(mean_t log rho_t)   (Geo-RS, verl's ``seq_mean_k1``)
        level="product":    rho_i = exp(sum_t log rho_t)    (Seq-MIS, verl's ``seq_sum_k1``)
        keep_i = low <= rho_i <= high
        w_{i,t} = keep_i * (rho_i if reweight else 1)

    The geometric mean does not grow with length, so it suits tight bands (e.g. ``[0.999, 1.001]``)
    on long responses; the product is the exact sequence ratio. A response without real tokens is
    never kept. Comparisons are made in log space.

    Args:
      old_logprobs, sampler_logprobs, mask: as ``token_tis``.
      low, high: the band of kept sequence ratios, ``0 < low <= 1 <= high``.
      level: ``"geometric"`` or ``"product"``.
      reweight: multiply kept responses by ``rho_i`` (Seq-MIS weighting; with ``"product"`` this is
        sequence TIS with rejection above ``high`` instead of truncation).

    Returns:
      ``(weights, new_mask, metrics)`` with ``new_mask = mask * keep_i`` and metrics
      ``is_masked_seq_frac`` (share of non-empty responses dropped) and ``is_masked_token_frac``.
    """
    log_ratio = _mismatch_log_ratio(old_logprobs, sampler_logprobs, mask)
    row = _row_log_ratio(log_ratio, mask, level)
    nonempty = mask.sum(axis=1) > 0
    keep = nonempty & (row >= jnp.log(low)) & (row <= jnp.log(high))
    row_weight = jnp.where(keep, jnp.exp(row) if reweight else 1.0, 0.0)
    new_mask = (mask.astype(bool) & keep[:, None]).astype(mask.dtype)
    weights = jnp.where(new_mask.astype(bool), row_weight[:, None], 0.0)
    metrics = {
        "is_masked_seq_frac": 1.0 - masked_mean(keep * 1.0, nonempty * 1.0),
        "is_masked_token_frac": 1.0 - masked_mean(new_mask.astype(jnp.float32), mask),
    }
    return weights, new_mask, metrics


def behaviour_weight_stats(
    logprobs: jax.Array, behaviour_logprobs: jax.Array, mask: jax.Array, *, low: float,
    high: float,
) -> dict[str, jax.Array]:
    r"""Statistics of the importance weights between the current policy and the behaviour policy
    (the one that sampled the tokens, possibly ``k`` updates older: ``rl.max_staleness``).

    ``w_t = pi(y_t) / mu(y_t) = exp(logprobs - behaviour_logprobs)`` over the real tokens::

        behaviour_iw_mean    = sum_t mask_t w_t / sum_t mask_t
        behaviour_iw_max     = max_{t: mask_t = 1} w_t      (0.0 without real tokens)
        behaviour_iw_clipped = share of real tokens with w_t outside [low, high]

    With ``[low, high] = [1 - clip_low, 1 + clip_high]`` the last is the share of tokens a PPO
    ratio taken against the behaviour policy would clip. No gradient.

    Args:
      logprobs: ``[batch, time]`` the current policy's log-probs of the sampled tokens.
      behaviour_logprobs: ``[batch, time]`` the sampler's log-probs of them.
      mask: ``[batch, time]`` 1 for real tokens.
      low, high: the band, ``0 <= low <= 1 <= high``.
    """
    log_ratio = _mismatch_log_ratio(logprobs, behaviour_logprobs, mask)
    real = mask.astype(bool)
    weights = jnp.where(real, jnp.exp(log_ratio), 0.0)
    outside = real & ((weights < low) | (weights > high))
    return {
        "behaviour_iw_mean": masked_mean(weights, mask),
        "behaviour_iw_max": jnp.max(weights),  # weights are 0 at padding and > 0 elsewhere
        "behaviour_iw_clipped": masked_mean(outside * 1.0, mask),
    }
