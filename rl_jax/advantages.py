"""Advantage estimators: GAE (PPO), group-relative (GRPO, Dr. GRPO, REINFORCE++), RLOO.

Conventions (all functions):
  * token arrays are ``[batch, time]`` over response tokens; ``mask`` is 1 for a real token and 0
    for padding (left, right or interior: padding positions are skipped, never read);
  * per-response arrays are ``[batch]`` with groups contiguous: rows ``[g * n, (g + 1) * n)`` are
    the ``n = group_size`` responses to prompt ``g``, so ``batch = num_prompts * group_size``.
"""

from __future__ import annotations

from typing import Literal

import chex
import jax
import jax.numpy as jnp

GroupScale = Literal["group", "batch", "none"]


def gae(
    rewards: jax.Array,
    values: jax.Array,
    mask: jax.Array,
    *,
    gamma: float,
    lam: float,
) -> tuple[jax.Array, jax.Array]:
    r"""Generalised advantage estimation (Schulman et al. 2016) over response tokens.

    Walking backwards over the real tokens of each row, with ``t + 1`` the next *real* token::

        delta_t = r_t + gamma * V_{t+1} - V_t
        A_t     = delta_t + gamma * lam * A_{t+1}
        R_t     = A_t + V_t

    The response ends at its last real token, so the value and advantage after it are 0.
    Padding positions get ``A = R = 0``; their rewards and values are never read, so extra padding
    anywhere in a row leaves the real positions unchanged.

    Args:
      rewards: ``[batch, time]`` per-token rewards (e.g. the score on the last token minus a KL
        penalty on every token).
      values: ``[batch, time]`` critic values ``V(s_t)``.
      mask: ``[batch, time]`` 1 for real tokens, 0 for padding.
      gamma: discount.
      lam: GAE lambda; ``lam = 1`` gives Monte-Carlo returns minus values, ``lam = 0`` one-step TD.

    Returns:
      ``(advantages, returns)``, both ``[batch, time]``, zero at padding.
    """
    chex.assert_rank([rewards, values, mask], 2)
    chex.assert_equal_shape([rewards, values, mask])
    real = mask.astype(bool)
    rewards = jnp.where(real, rewards, 0.0).astype(jnp.float32)
    values = jnp.where(real, values, 0.0).astype(jnp.float32)

    def step(carry, xs):
        next_value, next_adv = carry
        reward, value, is_real = xs
        delta = reward + gamma * next_value - value
        adv = delta + gamma * lam * next_adv
        # A padding position passes the carry through untouched and outputs 0.
        new_carry = (jnp.where(is_real, value, next_value), jnp.where(is_real, adv, next_adv))
        return new_carry, jnp.where(is_real, adv, 0.0)

    zeros = jnp.zeros(rewards.shape[0], jnp.float32)
    # Scan over time (axis 0 after the transpose), from the last token to the first.
    _, advantages = jax.lax.scan(step, (zeros, zeros), (rewards.T, values.T, real.T), reverse=True)
    advantages = advantages.T
    returns = jnp.where(real, advantages + values, 0.0)
    return advantages, returns


def _grouped(rewards: jax.Array, group_size: int) -> jax.Array:
    """``[batch]`` -> ``[num_prompts, group_size]``, with a clear error if it does not divide."""
    chex.assert_rank(rewards, 1)
    if group_size < 1 or rewards.shape[0] % group_size:
        raise ValueError(
            f"rewards has {rewards.shape[0]} rows, which is not a multiple of "
            f"group_size={group_size}; expected batch = num_prompts * group_size."
        )
    return rewards.astype(jnp.float32).reshape(-1, group_size)


def group_advantages(
    rewards: jax.Array,
    group_size: int,
    *,
    scale: GroupScale = "group",
    eps: float = 1e-6,
) -> jax.Array:
    r"""GRPO's group-relative advantages (Shao et al. 2024), one per response.

    ``A_i = (r_i - mean_g(r)) / (s + eps)`` where ``mean_g`` is the mean over the response's group
    and ``s`` depends on ``scale``:

      * ``"group"``: the sample standard deviation (``ddof=1``) of the group, as TRL and Tunix do
        (needs ``group_size >= 2``);
      * ``"batch"``: the sample standard deviation (``ddof=1``) of all rewards in the batch, the
        global scale of REINFORCE++ with a group baseline;
      * ``"none"``: no division at all, ``A_i = r_i - mean_g(r)`` (Dr. GRPO, Liu et al. 2025).

    A group whose rewards are all equal gets advantage 0 (never NaN).

    Args:
      rewards: ``[batch]`` scalar reward per response, groups contiguous.
      group_size: responses per prompt.
      scale: ``"group"``, ``"batch"`` or ``"none"``.
      eps: added to the standard deviation.

    Returns:
      ``[batch]`` advantages; each group's advantages sum to zero.
    """
    grouped = _grouped(rewards, group_size)
    centered = grouped - grouped.mean(axis=1, keepdims=True)
    if scale == "none":
        return centered.reshape(-1)
    if scale == "group":
        if group_size < 2:
            raise ValueError("scale='group' needs group_size >= 2 for a sample std (ddof=1).")
        std = jnp.std(grouped, axis=1, ddof=1, keepdims=True)
    elif scale == "batch":
        if grouped.size < 2:
            raise ValueError("scale='batch' needs at least 2 rewards for a sample std (ddof=1).")
        std = jnp.std(grouped, ddof=1)
    else:
        raise ValueError(f"scale must be 'group', 'batch' or 'none', got {scale!r}.")
    return (centered / (std + eps)).reshape(-1)


def rloo_advantages(rewards: jax.Array, group_size: int) -> jax.Array:
    r"""REINFORCE leave-one-out advantages (Kool et al. 2019; Ahmadian et al. 2024).

    ``A_i = r_i - 1/(n-1) * sum_{j != i} r_j = n/(n-1) * (r_i - mean_g(r))`` over the ``n``
    responses of the group.

    Args:
      rewards: ``[batch]`` scalar reward per response, groups contiguous.
      group_size: responses per prompt, at least 2.

    Returns:
      ``[batch]`` advantages.
    """
    if group_size < 2:
        raise ValueError(f"rloo_advantages needs group_size >= 2, got {group_size}.")
    grouped = _grouped(rewards, group_size)
    others_mean = (grouped.sum(axis=1, keepdims=True) - grouped) / (group_size - 1)
    return (grouped - others_mean).reshape(-1)


def masked_mean(x: jax.Array, mask: jax.Array, axis=None) -> jax.Array:
    """Mean of ``x`` over positions where ``mask`` is 1; 0 where there are none."""
    mask = mask.astype(x.dtype)
    return (x * mask).sum(axis) / jnp.maximum(mask.sum(axis), 1.0)


def masked_var(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Unbiased (``ddof=1``) variance of ``x`` over the positions where ``mask`` is 1."""
    mask = mask.astype(x.dtype)
    count = mask.sum()
    mean = (x * mask).sum() / jnp.maximum(count, 1.0)
    return (jnp.square(x - mean) * mask).sum() / jnp.maximum(count - 1.0, 1.0)


def whiten(
    x: jax.Array, mask: jax.Array, *, shift_mean: bool = True, eps: float = 1e-8
) -> jax.Array:
    r"""Masked whitening: ``(x - mean) / sqrt(var + eps)`` over the real positions.

    ``mean`` and ``var`` (unbiased, ``ddof=1``) are taken over all positions where ``mask`` is 1.
    With ``shift_mean=False`` the mean is added back (only the scale changes), as is usual for
    rewards. Padding positions are 0 in the output.

    Args:
      x: any shape, e.g. ``[batch, time]`` advantages.
      mask: same shape as ``x``, 1 for real entries.
      shift_mean: whether the output has mean 0 (True) or keeps the mean of ``x`` (False).
      eps: added to the variance.
    """
    chex.assert_equal_shape([x, mask])
    x = x.astype(jnp.float32)
    mean = masked_mean(x, mask)
    whitened = (x - mean) * jax.lax.rsqrt(masked_var(x, mask) + eps)
    if not shift_mean:
        whitened = whitened + mean
    return jnp.where(mask.astype(bool), whitened, 0.0)
