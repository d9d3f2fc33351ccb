"""Policy and value losses, their aggregation over tokens, log-probabilities and entropy.

Token arrays are ``[batch, time]`` over response tokens with ``mask`` 1 for real tokens. Every loss
is a *loss* (minimised): the policy loss is the negative clipped surrogate objective.
"""

from __future__ import annotations

from typing import Literal

import chex
import jax
import jax.numpy as jnp

from rl_jax.advantages import masked_mean

AggMode = Literal[
    "token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"
]
AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")


def aggregate_terms(
    per_token: jax.Array,
    mask: jax.Array,
    mode: AggMode,
    *,
    max_len: int | None = None,
    count_empty_rows: bool = False,
) -> tuple[jax.Array, jax.Array]:
    r"""The numerator and denominator of a masked token-loss reduction.

    ``aggregate = numerator / denominator``. Summing both over micro-batches and dividing once gives
    exactly the reduction over the whole batch, so gradient accumulation is exact. With ``L_b`` the
    number of real tokens of row ``b`` and ``B'`` the number of rows with ``L_b > 0``:

      * ``"token-mean"`` (DAPO): ``sum_{b,t} x / sum_b L_b``;
      * ``"seq-mean-token-mean"`` (original GRPO): ``sum_b (sum_t x / L_b)`` over ``B'``;
      * ``"seq-mean-token-sum"``: ``sum_b sum_t x`` over ``B'``;
      * ``"seq-mean-token-sum-norm"`` (Dr. GRPO): ``sum_b (sum_t x / max_len)`` over ``B'``.

    By default rows with no real token (e.g. padding rows added to fill a batch, or empty
    responses) count in no denominator, as in verl. ``count_empty_rows=True`` makes ``B'`` the full
    batch size in the three ``seq-mean-*`` modes, as TRL's ``loss_type="grpo"`` (a ``.mean()`` over
    all rows) and ``"dr_grpo"`` (``/ (batch * max_completion_length)``) do; ``token-mean`` is
    unchanged (an empty row adds no token).

    Args:
      per_token: ``[batch, time]`` per-token values.
      mask: ``[batch, time]`` 1 for real tokens.
      mode: one of ``AGG_MODES``.
      max_len: the constant normaliser of ``"seq-mean-token-sum-norm"``; defaults to ``time``.
        Pass it explicitly (e.g. the generation budget) when micro-batches have different widths.
      count_empty_rows: count rows without real tokens in the ``seq-mean-*`` denominators (TRL).

    Returns:
      ``(numerator, denominator)``, two float32 scalars.
    """
    chex.assert_rank([per_token, mask], 2)
    chex.assert_equal_shape([per_token, mask])
    mask = mask.astype(jnp.float32)
    row_sums = (per_token.astype(jnp.float32) * mask).sum(axis=1)
    row_lens = mask.sum(axis=1)
    if count_empty_rows:
        num_rows = jnp.float32(per_token.shape[0])
    else:
        num_rows = (row_lens > 0).sum().astype(jnp.float32)
    if mode == "token-mean":
        return row_sums.sum(), row_lens.sum()
    if mode == "seq-mean-token-mean":
        return (row_sums / jnp.maximum(row_lens, 1.0)).sum(), num_rows
    if mode == "seq-mean-token-sum":
        return row_sums.sum(), num_rows
    if mode == "seq-mean-token-sum-norm":
        norm = per_token.shape[1] if max_len is None else max_len
        return row_sums.sum() / norm, num_rows
    raise ValueError(f"Unknown aggregation mode {mode!r}; expected one of {AGG_MODES}.")


def aggregate(
    per_token: jax.Array,
    mask: jax.Array,
    mode: AggMode,
    *,
    max_len: int | None = None,
    count_empty_rows: bool = False,
) -> jax.Array:
    """Masked reduction of ``[batch, time]`` per-token values to a scalar (see ``aggregate_terms``).

    Returns 0 when the mask is empty.
    """
    numerator, denominator = aggregate_terms(
        per_token, mask, mode, max_len=max_len, count_empty_rows=count_empty_rows
    )
    return numerator / jnp.maximum(denominator, 1.0)


def token_logprobs(logits: jax.Array, tokens: jax.Array, *, temperature: float = 1.0) -> jax.Array:
    r"""``log softmax(logits / T)[token]`` at each position, without a log-softmax of the vocab.

    ``log p(y_t) = z_{t, y_t} - logsumexp_v z_{t, v}`` with ``z = logits / T``.

    Args:
      logits: ``[batch, time, vocab]``; position ``t`` predicts ``tokens[:, t]``.
      tokens: ``[batch, time]`` integer token ids.
      temperature: the sampling temperature the tokens were drawn with.

    Returns:
      ``[batch, time]`` float32 log-probabilities.
    """
    chex.assert_rank([logits, tokens], [3, 2])
    z = logits.astype(jnp.float32) / temperature
    picked = jnp.take_along_axis(z, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return picked - jax.nn.logsumexp(z, axis=-1)


def entropy(logits: jax.Array) -> jax.Array:
    r"""Entropy of ``softmax(logits)`` at each position: ``H = logsumexp(z) - sum_v p_v z_v``.

    Args:
      logits: ``[batch, time, vocab]``.

    Returns:
      ``[batch, time]`` entropies in nats.
    """
    chex.assert_rank(logits, 3)
    z = logits.astype(jnp.float32)
    return jax.nn.logsumexp(z, axis=-1) - (jax.nn.softmax(z, axis=-1) * z).sum(axis=-1)


def _per_token(advantages: jax.Array, mask: jax.Array) -> jax.Array:
    """Broadcast ``[batch]`` advantages over time; pass ``[batch, time]`` through."""
    if advantages.ndim == 1:
        chex.assert_equal(advantages.shape[0], mask.shape[0])
        return jnp.broadcast_to(advantages[:, None], mask.shape)
    chex.assert_equal_shape([advantages, mask])
    return advantages


RatioLevel = Literal["token", "sequence", "sequence-token"]


def _log_ratio(
    logprobs: jax.Array, old_logprobs: jax.Array, mask: jax.Array, ratio_level: RatioLevel
) -> jax.Array:
    """``[batch, time]`` log importance ratio ``log pi - log pi_old`` (0 at padding).

    ``"sequence"``: every token carries the row's mean log-ratio (GSPO), whose gradient reaches all
    the row's tokens. ``"sequence-token"`` (GSPO-token): the same value, written
    ``sg(mean) + log pi_t - sg(log pi_t)``, so token ``t``'s term differentiates through
    ``log pi_t`` only.
    """
    real = mask.astype(bool)
    log_ratio = jnp.where(real, logprobs - jax.lax.stop_gradient(old_logprobs), 0.0)
    if ratio_level == "token":
        return log_ratio
    seq_log_ratio = masked_mean(log_ratio, mask, axis=1)[:, None]
    if ratio_level == "sequence":
        return jnp.where(real, seq_log_ratio, 0.0)
    if ratio_level == "sequence-token":
        own = logprobs - jax.lax.stop_gradient(logprobs)
        return jnp.where(real, jax.lax.stop_gradient(seq_log_ratio) + own, 0.0)
    raise ValueError(
        f"ratio_level must be 'token', 'sequence' or 'sequence-token', got {ratio_level!r}."
    )


def _ratio_metrics(log_ratio: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
    """k3 estimate of KL(pi_old || pi) and the ratio's mean, min and max over real tokens."""
    real = mask.astype(bool)
    log_ratio = jax.lax.stop_gradient(log_ratio)
    ratio = jnp.exp(log_ratio)
    return {
        "approx_kl": masked_mean(ratio - 1.0 - log_ratio, mask),
        "ratio_mean": masked_mean(ratio, mask),
        "ratio_min": jnp.min(jnp.where(real, ratio, jnp.inf)),
        "ratio_max": jnp.max(jnp.where(real, ratio, -jnp.inf)),
    }


def _ppo_terms(
    ratio: jax.Array, advantages: jax.Array, clip_low: float, clip_high: float
) -> tuple[jax.Array, jax.Array]:
    """PPO's per-token loss ``max(-A rho, -A clip(rho))`` and where the clipped term is active."""
    unclipped = -advantages * ratio
    clipped = -advantages * jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high)
    return jnp.maximum(unclipped, clipped), clipped > unclipped


def _clip_fracs(
    ratio: jax.Array, advantages: jax.Array, mask: jax.Array, clip_low: float, clip_high: float
) -> dict[str, jax.Array]:
    """Shares of real tokens where PPO's clip cuts the gradient, below and above the range."""
    ratio = jax.lax.stop_gradient(ratio)
    return {
        "clip_frac_low": masked_mean(((ratio < 1.0 - clip_low) & (advantages < 0)) * 1.0, mask),
        "clip_frac_high": masked_mean(((ratio > 1.0 + clip_high) & (advantages > 0)) * 1.0, mask),
    }


def policy_loss(
    logprobs: jax.Array,
    old_logprobs: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
    ratio_level: RatioLevel = "token",
    agg: AggMode = "token-mean",
    max_len: int | None = None,
    count_empty_rows: bool = False,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    r"""PPO's clipped surrogate loss, with the variants the RL-for-LLM papers compare.

    Per token, with ratio ``rho = pi(y_t) / pi_old(y_t)`` and advantage ``A``::

        loss_t = -min(rho * A, clip(rho, 1 - clip_low, 1 + clip_high) * A)

    * ``clip_high > clip_low`` is DAPO's clip-higher.
    * ``dual_clip = c > 1`` (Ye et al. 2020): where ``A < 0`` the loss is also capped at ``-c * A``,
      so a huge ratio on a bad token cannot blow up the update.
    * ``ratio_level="sequence"`` (GSPO, Zheng et al. 2025): every token of a response uses the
      sequence ratio ``s_i = exp(mean_t (log pi - log pi_old))`` over its real tokens; use it with
      ``[batch]`` advantages and ``agg="seq-mean-token-mean"`` for GSPO as published.
    * ``ratio_level="sequence-token"`` (GSPO-token, verl's ``gspo`` loss): token ``t`` uses
      ``s_{i,t} = sg(s_i) * pi(y_t) / sg(pi(y_t))``, equal in value to ``s_i`` but differentiating
      through its own token only, so a per-token advantage ``A_{i,t}`` steers its own token. With
      one advantage per response and ``seq-mean-token-mean`` the gradient equals GSPO's. verl also
      clamps the log-ratio at 10 before the exponential; rl_jax does not.

    The token losses are reduced by ``aggregate(loss_t, mask, agg, max_len=max_len,
    count_empty_rows=count_empty_rows)``.

    Args:
      logprobs: ``[batch, time]`` log-probs of the taken tokens under the policy being optimised.
      old_logprobs: ``[batch, time]`` log-probs under the policy that sampled them (no gradient).
      advantages: ``[batch]`` (broadcast over tokens) or ``[batch, time]``.
      mask: ``[batch, time]`` 1 for real tokens.
      clip_low, clip_high: the clip range ``[1 - clip_low, 1 + clip_high]`` of the ratio.
      dual_clip: the dual-clip constant ``c > 1``, or None.
      ratio_level: ``"token"`` (PPO/GRPO), ``"sequence"`` (GSPO) or ``"sequence-token"``.
      agg: how token losses are reduced, one of ``AGG_MODES``.
      max_len: normaliser for ``agg="seq-mean-token-sum-norm"``.
      count_empty_rows: count rows without real tokens in ``seq-mean-*`` denominators (TRL).

    Returns:
      ``(loss, metrics)``: the scalar loss and token-mean metrics ``clip_frac_low`` (share of
      tokens with ``A < 0`` and ratio below ``1 - clip_low``, where the gradient is cut),
      ``clip_frac_high`` (``A > 0`` and ratio above ``1 + clip_high``), ``dual_clip_frac``,
      ``approx_kl`` (k3 estimate of KL(pi_old || pi): ``rho - 1 - log rho``), ``ratio_mean``,
      ``ratio_min`` and ``ratio_max``.
    """
    chex.assert_rank([logprobs, old_logprobs, mask], 2)
    chex.assert_equal_shape([logprobs, old_logprobs, mask])
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1 (or None), got {dual_clip}.")
    real = mask.astype(bool)
    advantages = _per_token(advantages, mask).astype(jnp.float32)
    log_ratio = _log_ratio(logprobs, old_logprobs, mask, ratio_level)
    ratio = jnp.exp(log_ratio)
    per_token, _ = _ppo_terms(ratio, advantages, clip_low, clip_high)
    dual_active = jnp.zeros_like(real)
    if dual_clip is not None:
        cap = -dual_clip * advantages
        dual_active = (advantages < 0) & (per_token > cap)
        per_token = jnp.where(advantages < 0, jnp.minimum(per_token, cap), per_token)
    loss = aggregate(per_token, mask, agg, max_len=max_len, count_empty_rows=count_empty_rows)
    metrics = {
        **_clip_fracs(ratio, advantages, mask, clip_low, clip_high),
        "dual_clip_frac": masked_mean(jax.lax.stop_gradient(dual_active) * 1.0, mask),
        **_ratio_metrics(log_ratio, mask),
    }
    return loss, metrics


def value_loss(
    values: jax.Array,
    old_values: jax.Array,
    returns: jax.Array,
    mask: jax.Array,
    *,
    clip: float | None = 0.2,
    agg: AggMode = "token-mean",
    max_len: int | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    r"""PPO's clipped value loss.

    Per token::

        loss_t = 0.5 * max((V - R)^2, (clip(V, V_old - c, V_old + c) - R)^2)

    and ``0.5 * (V - R)^2`` with ``clip=None``; reduced with ``aggregate(..., agg)``.

    Args:
      values: ``[batch, time]`` values of the critic being optimised.
      old_values: ``[batch, time]`` values at rollout time (no gradient).
      returns: ``[batch, time]`` regression targets (e.g. GAE returns).
      mask: ``[batch, time]`` 1 for real tokens.
      clip: the clip range ``c`` around ``old_values``, or None for plain MSE.
      agg: how token losses are reduced, one of ``AGG_MODES``.
      max_len: normaliser for ``agg="seq-mean-token-sum-norm"``.

    Returns:
      ``(loss, metrics)`` with ``explained_variance`` (``1 - Var[R - V] / Var[R]`` over real
      tokens), ``value_clip_frac`` (share of tokens where the clipped term is the larger one),
      ``value_mean`` and ``return_mean``.
    """
    chex.assert_rank([values, old_values, returns, mask], 2)
    chex.assert_equal_shape([values, old_values, returns, mask])
    values = values.astype(jnp.float32)
    returns = jax.lax.stop_gradient(returns.astype(jnp.float32))
    unclipped = jnp.square(values - returns)
    if clip is None:
        per_token = 0.5 * unclipped
        clip_active = jnp.zeros(values.shape, bool)
    else:
        old_values = jax.lax.stop_gradient(old_values.astype(jnp.float32))
        clipped = jnp.square(jnp.clip(values, old_values - clip, old_values + clip) - returns)
        per_token = 0.5 * jnp.maximum(unclipped, clipped)
        clip_active = clipped > unclipped
    loss = aggregate(per_token, mask, agg, max_len=max_len)

    values_sg = jax.lax.stop_gradient(values)
    residual = returns - values_sg
    var_returns = masked_mean(jnp.square(returns - masked_mean(returns, mask)), mask)
    var_residual = masked_mean(jnp.square(residual - masked_mean(residual, mask)), mask)
    metrics = {
        "explained_variance": 1.0 - var_residual / jnp.maximum(var_returns, 1e-8),
        "value_clip_frac": masked_mean(jax.lax.stop_gradient(clip_active) * 1.0, mask),
        "value_mean": masked_mean(values_sg, mask),
        "return_mean": masked_mean(returns, mask),
    }
    return loss, metrics
