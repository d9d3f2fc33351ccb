"""Advantage estimators: GAE (PPO), group-relative (GRPO, Dr. GRPO), REINFORCE++ with a group
baseline, RLOO.

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


def _centered(grouped: jax.Array) -> jax.Array:
    """``x - mean_g(x)`` per row of ``[num_prompts, n]``, exactly 0 on a row of equal values.

    Each row is first shifted by its own first element, ``d = x - x_0`` (exact, and 0 for every
    element of an all-equal row), then ``d - mean(d)``. The shift leaves the result unchanged in
    exact arithmetic, but in float32 ``x - mean(x)`` is off by an ulp when ``x`` is not
    representable (seven copies of 0.7 give ``x - mean = 6e-8``), which the ``1 / (std + eps)``
    scale then blows up to ``0.06``.
    """
    shifted = grouped - grouped[:, :1]
    return shifted - shifted.mean(axis=1, keepdims=True)


def group_advantages(
    rewards: jax.Array,
    group_size: int,
    *,
    scale: GroupScale = "group",
    eps: float = 1e-6,
) -> jax.Array:
    r"""Group-relative advantages, one per response: GRPO, Dr. GRPO and TRL's batch scaling.

    ``A_i = (r_i - mean_g(r)) / (s + eps)`` where ``mean_g`` is the mean over the response's group
    and ``s`` depends on ``scale``:

      * ``"group"``: GRPO (Shao et al. 2024): the sample standard deviation (``ddof=1``) of the
        group, as TRL and Tunix do (needs ``group_size >= 2``);
      * ``"batch"``: the sample standard deviation (``ddof=1``) of the *raw* rewards of the whole
        batch, TRL's ``scale_rewards="batch"``. This is **not** REINFORCE++ with a baseline, which
        whitens the group-centred scores over the batch's tokens: see
        ``reinforce_pp_baseline_advantages``;
      * ``"none"``: no division at all, ``A_i = r_i - mean_g(r)`` (Dr. GRPO, Liu et al. 2025).

    A group whose rewards are all equal gets advantage exactly 0 for any float32 value (the group
    is centred on one of its own elements before the mean is taken; see ``_centered``).

    Args:
      rewards: ``[batch]`` scalar reward per response, groups contiguous.
      group_size: responses per prompt.
      scale: ``"group"``, ``"batch"`` or ``"none"``.
      eps: added to the standard deviation.

    Returns:
      ``[batch]`` advantages; each group's advantages sum to zero.
    """
    grouped = _grouped(rewards, group_size)
    centered = _centered(grouped)
    if scale == "none":
        return centered.reshape(-1)
    if scale == "group":
        if group_size < 2:
            raise ValueError("scale='group' needs group_size >= 2 for a sample std (ddof=1).")
        std = jnp.sqrt(jnp.square(centered).sum(axis=1, keepdims=True) / (group_size - 1))
    elif scale == "batch":
        if grouped.size < 2:
            raise ValueError("scale='batch' needs at least 2 rewards for a sample std (ddof=1).")
        std = jnp.std(grouped - grouped[0, 0], ddof=1)
    else:
        raise ValueError(f"scale must be 'group', 'batch' or 'none', got {scale!r}.")
    return (centered / (std + eps)).reshape(-1)


def rloo_advantages(rewards: jax.Array, group_size: int) -> jax.Array:
    r"""REINFORCE leave-one-out advantages (Kool et al. 2019; Ahmadian et al. 2024).

    ``A_i = r_i - 1/(n-1) * sum_{j != i} r_j = n/(n-1) * (r_i - mean_g(r))`` over the ``n``
    responses of the group. A group of equal rewards gets exactly 0 for any float32 value.

    Args:
      rewards: ``[batch]`` scalar reward per response, groups contiguous.
      group_size: responses per prompt, at least 2.

    Returns:
      ``[batch]`` advantages.
    """
    if group_size < 2:
        raise ValueError(f"rloo_advantages needs group_size >= 2, got {group_size}.")
    grouped = _grouped(rewards, group_size)
    # Shifting by the group's first element changes nothing in exact arithmetic and makes an
    # all-equal group exactly 0 in float32 (``sum - r_i`` is otherwise off by an ulp).
    shifted = grouped - grouped[:, :1]
    others_mean = (shifted.sum(axis=1, keepdims=True) - shifted) / (group_size - 1)
    return (shifted - others_mean).reshape(-1)


def masked_mean(x: jax.Array, mask: jax.Array, axis=None) -> jax.Array:
    """Mean of ``x`` over positions where ``mask`` is 1; 0 where there are none."""
    mask = mask.astype(x.dtype)
    return (x * mask).sum(axis) / jnp.maximum(mask.sum(axis), 1.0)


def _first_real(x: jax.Array, mask: jax.Array) -> jax.Array:
    """The value of ``x`` at its first real position (0 when there is none), a shift reference."""
    flat_mask = mask.reshape(-1).astype(bool)
    return jnp.where(flat_mask.any(), x.reshape(-1)[jnp.argmax(flat_mask)], 0.0)


def masked_var(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Unbiased (``ddof=1``) variance of ``x`` over the positions where ``mask`` is 1.

    Computed on ``x - x_ref`` with ``x_ref`` a real element, so equal values give exactly 0.
    """
    x = x - _first_real(x, mask)
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

    If all real entries are equal the output is exactly 0 (``shift_mean=True``) or exactly ``x``
    (``shift_mean=False``) for any float32 value: ``x`` is shifted by one of its real entries before
    the mean is taken, otherwise the ulp error of the mean is multiplied by ``1 / sqrt(eps)``.

    Args:
      x: any shape, e.g. ``[batch, time]`` advantages.
      mask: same shape as ``x``, 1 for real entries.
      shift_mean: whether the output has mean 0 (True) or keeps the mean of ``x`` (False).
      eps: added to the variance.
    """
    chex.assert_equal_shape([x, mask])
    x = x.astype(jnp.float32)
    ref = _first_real(x, mask)
    shifted = jnp.where(mask.astype(bool), x - ref, 0.0)
    shifted_mean = masked_mean(shifted, mask)
    whitened = (shifted - shifted_mean) * jax.lax.rsqrt(masked_var(shifted, mask) + eps)
    if not shift_mean:
        whitened = whitened + (ref + shifted_mean)
    return jnp.where(mask.astype(bool), whitened, 0.0)


def reinforce_pp_baseline_advantages(
    scores: jax.Array,
    response_mask: jax.Array,
    group_size: int,
    *,
    eps: float = 1e-8,
) -> jax.Array:
    r"""REINFORCE++ with a group baseline (Hu et al. 2025, Eq. 6-8; verl's
    ``reinforce_plus_plus_baseline``), for one outcome score per response.

    Each score is centred on its group's mean, broadcast over the response's tokens, then
    whitened over *all real tokens of the batch*::

        A'_i     = r_i - mean_g(r)                         (group baseline)
        A_{i,t}  = (A'_i - mean_{b,t}(A')) / sqrt(var_{b,t}(A') + eps)

    where ``mean_{b,t}`` and ``var_{b,t}`` (``ddof=1``) run over the real tokens of the batch, so
    a long response weighs more in the batch statistics than a short one. Compare
    ``group_advantages(scale="batch")`` (TRL), which divides the centred score by the std of the
    raw rewards over responses and does not re-centre.

    With ``group_size=1`` there is no baseline (``A' = r``), as in verl, where a prompt with a
    single response gets baseline 0; this is then REINFORCE++ without a baseline for an outcome
    reward and ``gamma = 1``. A batch whose centred scores are all equal (e.g. every group
    all-equal) gets exactly 0.

    Args:
      scores: ``[batch]`` scalar reward per response, groups contiguous.
      response_mask: ``[batch, time]`` 1 for real response tokens.
      group_size: responses per prompt.
      eps: added to the variance (verl uses 1e-8).

    Returns:
      ``[batch, time]`` advantages, 0 at padding.
    """
    chex.assert_rank([scores, response_mask], [1, 2])
    chex.assert_equal(scores.shape[0], response_mask.shape[0])
    if group_size == 1:
        centered = scores.astype(jnp.float32)
    else:
        centered = group_advantages(scores, group_size, scale="none")
    token_scores = jnp.broadcast_to(centered[:, None], response_mask.shape)
    return whiten(token_scores, response_mask, eps=eps)


# --- The unified paradigm (DeepSeekMath, Shao et al. 2024, §5.2) ---------------------------------
# Every method's gradient is E[ GC(q, o, t) * grad log pi(o_t | q, o_<t) ]: the methods differ in
# their data source (which policy samples o) and their gradient coefficient GC.


def rft_gradient_coefficient(correct: jax.Array, mask: jax.Array) -> jax.Array:
    r"""The gradient coefficient of RFT and Online RFT (DeepSeekMath eq. 10, §5.2.1)::

        GC_RFT(q, o, t) = GC_OnlineRFT(q, o, t) = I(o)

    with ``I(o)`` 1 when the answer of ``o`` is correct, else 0: a correct response's tokens are
    fine-tuned on as SFT data, the others count for nothing (no penalty). RFT and Online RFT differ
    only in their data source: the SFT (initial) policy, or the policy being trained.

    Args:
      correct: ``[batch]`` the correctness reward of each response; ``I(o) = 1[correct > 0]``.
      mask: ``[batch, time]`` 1 for real response tokens.

    Returns:
      ``[batch, time]`` float32 coefficients, ``correct[b]`` on each real token, 0 at padding.
    """
    chex.assert_rank([correct, mask], [1, 2])
    chex.assert_equal(correct.shape[0], mask.shape[0])
    indicator = (correct > 0).astype(jnp.float32)
    return indicator[:, None] * mask.astype(jnp.float32)


def grpo_gradient_coefficient(
    advantages: jax.Array,
    logprobs: jax.Array,
    ref_logprobs: jax.Array,
    kl_coef: float,
    mask: jax.Array,
) -> jax.Array:
    r"""GRPO's gradient coefficient (DeepSeekMath eq. 21, §5.2.1 and Appendix A.1.6)::

        GC_GRPO(q, o, t) = A_hat_t + beta * (pi_ref(o_t | o_<t) / pi(o_t | o_<t) - 1)

    ``A_hat_t`` is the group-normalised advantage (outcome: the response's ``(r - mean) / std``;
    process: ``process_advantages``) and the second term is the gradient of the k3 KL estimate
    ``pi_ref / pi - log(pi_ref / pi) - 1`` with respect to ``log pi``, with the sign that makes it
    a coefficient: ``d k3 / d log pi = 1 - pi_ref / pi``. At ratio 1 the gradient of GRPO's loss
    (``-A_hat * ratio + beta * k3``, summed over tokens) with respect to ``log pi_t`` is
    ``-GC_GRPO(t)``.

    Args:
      advantages: ``[batch, time]`` the normalised advantages ``A_hat``.
      logprobs: ``[batch, time]`` ``log pi(o_t | q, o_<t)`` of the policy.
      ref_logprobs: ``[batch, time]`` the reference policy's.
      kl_coef: ``beta``.
      mask: ``[batch, time]`` 1 for real response tokens.

    Returns:
      ``[batch, time]`` float32 coefficients, 0 at padding.
    """
    chex.assert_rank([advantages, logprobs, ref_logprobs, mask], 2)
    chex.assert_equal_shape([advantages, logprobs, ref_logprobs, mask])
    real = mask.astype(bool)
    log_ratio = jnp.where(real, ref_logprobs - logprobs, 0.0).astype(jnp.float32)
    coefficient = advantages.astype(jnp.float32) + kl_coef * (jnp.exp(log_ratio) - 1.0)
    return jnp.where(real, coefficient, 0.0)


def process_advantages(
    step_rewards: jax.Array,
    step_ends: jax.Array,
    mask: jax.Array,
    group_size: int,
    *,
    eps: float = 1e-6,
) -> jax.Array:
    r"""GRPO with process supervision (DeepSeekMath §4.1.3): step rewards normalised over the
    group, each token's advantage the sum of the normalised rewards of the steps ending at or
    after it.

    Response ``i`` of a group of ``G`` has ``K_i`` steps; step ``j`` ends at token ``e_{i,j}`` and
    has reward ``r_{i,j}``. With ``R = {r_{i,j}}`` every step reward of the group's ``G``
    responses::

        r_tilde_{i,j} = (r_{i,j} - mean(R)) / (std(R) + eps)
        A_hat_{i,t}   = sum_{j : e_{i,j} >= t} r_tilde_{i,j}

    ``std`` is the sample standard deviation (``ddof=1``, as ``group_advantages``; 0 when the
    group has a single step). A group whose step rewards are all equal gets advantage 0.

    Args:
      step_rewards: ``[batch, S]`` the reward of step ``s`` of each response (read where
        ``step_ends >= 0``).
      step_ends: ``[batch, S]`` int, the response token index where step ``s`` ends, ``-1`` for
        no step (a response's steps need not be sorted; several may end at one token).
      mask: ``[batch, time]`` 1 for real response tokens.
      group_size: responses per prompt ``G``; groups are contiguous rows.
      eps: added to the standard deviation.

    Returns:
      ``[batch, time]`` advantages, 0 at padding.
    """
    chex.assert_rank([step_rewards, step_ends, mask], 2)
    chex.assert_equal_shape([step_rewards, step_ends])
    chex.assert_equal(step_rewards.shape[0], mask.shape[0])
    batch, time = mask.shape
    num_steps = step_rewards.shape[1]
    if group_size < 1 or batch % group_size:
        raise ValueError(f"{batch} rows is not a multiple of group_size={group_size}")
    valid = step_ends >= 0
    rewards = jnp.where(valid, step_rewards, 0.0).astype(jnp.float32)
    grouped_valid = valid.reshape(-1, group_size * num_steps).astype(jnp.float32)
    grouped = rewards.reshape(-1, group_size * num_steps)
    count = grouped_valid.sum(1, keepdims=True)
    mean = grouped.sum(1, keepdims=True) / jnp.maximum(count, 1.0)
    centered = (grouped - mean) * grouped_valid
    std = jnp.sqrt(jnp.square(centered).sum(1, keepdims=True) / jnp.maximum(count - 1.0, 1.0))
    normalised = (centered / (std + eps)).reshape(batch, num_steps)
    # Each step's normalised reward on its end token, then the reverse cumulative sum over time:
    # token t collects the steps ending at t or later.
    at_end = (step_ends[:, :, None] == jnp.arange(time)[None, None, :]) & valid[:, :, None]
    per_token = (normalised[:, :, None] * at_end).sum(1)
    advantages = jnp.cumsum(per_token[:, ::-1], axis=1)[:, ::-1]
    return advantages * mask.astype(jnp.float32)
