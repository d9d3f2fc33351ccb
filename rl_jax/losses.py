"""Policy and value losses, their aggregation over tokens, log-probabilities and entropy.

Token arrays are ``[batch, time]`` over response tokens with ``mask`` 1 for real tokens. Every loss
is a *loss* (minimised): the policy loss is the negative clipped surrogate objective.

Policy losses: ``policy_loss`` (PPO/GRPO/DAPO/GSPO/GSPO-token), ``cispo_loss``, ``gmpo_loss``,
``clip_cov_loss``, ``kl_cov_loss``. Sampler/trainer mismatch corrections, applied with the
sampler's log-probs: ``token_tis``, ``sequence_tis``, ``token_masked_is``, ``sequence_masked_is``.
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


def cispo_loss(
    logprobs: jax.Array,
    old_logprobs: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    *,
    clip_low: float = 1.0,
    clip_high: float = 0.2,
    agg: AggMode = "token-mean",
    max_len: int | None = None,
    count_empty_rows: bool = False,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    r"""CISPO (MiniMax-M1, 2025): clip the importance-sampling weight, never the token's gradient.

    Per token::

        loss_t = -sg(clip(rho_t, 1 - clip_low, 1 + clip_high)) * A_t * log pi(y_t)

    so ``grad loss_t = -clip(rho_t) * A_t * grad log pi(y_t)``: unlike PPO, a token whose ratio
    left the range still contributes, with a bounded weight. The loss *value* is the weighted
    log-likelihood, not a surrogate near ``-A``. MiniMax-M1 sets no lower bound (the default
    ``clip_low=1.0`` clips at ratio 0, a no-op) and tunes ``clip_high``. Reduced with
    ``aggregate(..., agg)`` like ``policy_loss``; verl's ``cispo`` loss is the same formula
    (verl also clamps the log-ratio to ``[-20, 20]``).

    Args:
      logprobs, old_logprobs, advantages, mask, agg, max_len, count_empty_rows: as
        ``policy_loss``.
      clip_low, clip_high: the weight is clipped to ``[1 - clip_low, 1 + clip_high]``.

    Returns:
      ``(loss, metrics)``: ``clip_frac_low`` and ``clip_frac_high`` (shares of real tokens whose
      weight was clipped from below / above, whatever the sign of ``A``), ``approx_kl``,
      ``ratio_mean``, ``ratio_min``, ``ratio_max``.
    """
    chex.assert_rank([logprobs, old_logprobs, mask], 2)
    chex.assert_equal_shape([logprobs, old_logprobs, mask])
    real = mask.astype(bool)
    advantages = _per_token(advantages, mask).astype(jnp.float32)
    log_ratio = _log_ratio(logprobs, old_logprobs, mask, "token")
    ratio = jax.lax.stop_gradient(jnp.exp(log_ratio))
    weight = jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high)
    per_token = -weight * advantages * jnp.where(real, logprobs, 0.0)
    loss = aggregate(per_token, mask, agg, max_len=max_len, count_empty_rows=count_empty_rows)
    metrics = {
        "clip_frac_low": masked_mean((ratio < 1.0 - clip_low) * 1.0, mask),
        "clip_frac_high": masked_mean((ratio > 1.0 + clip_high) * 1.0, mask),
        **_ratio_metrics(log_ratio, mask),
    }
    return loss, metrics


def sapo_loss(
    logprobs: jax.Array,
    old_logprobs: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    *,
    tau_pos: float = 1.0,
    tau_neg: float = 1.05,
    agg: AggMode = "token-mean",
    max_len: int | None = None,
    count_empty_rows: bool = False,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    r"""SAPO (Gao et al. 2025, "Soft Adaptive Policy Optimization"): a soft gate in place of
    PPO's hard clip.

    Per token, with ``rho_t = pi(y_t) / pi_old(y_t)`` and a temperature chosen by the sign of the
    advantage (``tau = tau_pos`` where ``A_t > 0``, else ``tau_neg``)::

        f(rho) = (4 / tau) * sigmoid(tau * (rho - 1))
        loss_t = -f(rho_t) * A_t

    so ``grad loss_t = -4 sigmoid(u)(1 - sigmoid(u)) * A_t * grad rho_t`` with
    ``u = tau (rho_t - 1)``: equal to the unclipped policy gradient on-policy (``rho = 1``: the
    gate's slope is 1) and decaying smoothly as the ratio leaves 1, faster for larger ``tau``
    (``tau_neg > tau_pos`` damps negative-advantage tokens more, the paper's choice). No token's
    gradient is cut to zero, unlike a hard clip. Reduced with ``aggregate(..., agg)``.

    Args:
      logprobs, old_logprobs, advantages, mask, agg, max_len, count_empty_rows: as
        ``policy_loss``.
      tau_pos, tau_neg: the gate temperatures for positive and non-positive advantages (> 0).

    Returns:
      ``(loss, metrics)``: ``gate_mean`` (mean of the gate's slope ``4 s (1 - s)`` over real
      tokens: 1 on-policy, less off-policy), ``approx_kl``, ``ratio_mean``, ``ratio_min``,
      ``ratio_max``.
    """
    chex.assert_rank([logprobs, old_logprobs, mask], 2)
    chex.assert_equal_shape([logprobs, old_logprobs, mask])
    advantages = _per_token(advantages, mask).astype(jnp.float32)
    log_ratio = _log_ratio(logprobs, old_logprobs, mask, "token")
    tau = jnp.where(advantages > 0, tau_pos, tau_neg)
    gate = jax.nn.sigmoid(tau * (jnp.exp(log_ratio) - 1.0))
    per_token = -(4.0 / tau) * gate * advantages
    loss = aggregate(per_token, mask, agg, max_len=max_len, count_empty_rows=count_empty_rows)
    slope = jax.lax.stop_gradient(4.0 * gate * (1.0 - gate))
    metrics = {"gate_mean": masked_mean(slope, mask), **_ratio_metrics(log_ratio, mask)}
    return loss, metrics


def likelihood_loss(
    logprobs: jax.Array,
    old_logprobs: jax.Array,
    coefficients: jax.Array,
    mask: jax.Array,
    *,
    agg: AggMode = "token-mean",
    max_len: int | None = None,
    count_empty_rows: bool = False,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    r"""The weighted log-likelihood: the loss whose gradient is the unified paradigm's
    (DeepSeekMath eq. 5, §5.2)::

        loss_t = -GC_t * log pi(y_t)        so        grad loss_t = -GC_t * grad log pi(y_t)

    With ``GC = I(o)`` (``rft_gradient_coefficient``) it is SFT on the correct responses: RFT and
    Online RFT. No ratio, no clip: the old log-probs only feed the ratio metrics. Reduced with
    ``aggregate(..., agg)`` like ``policy_loss``.

    Args:
      logprobs, old_logprobs, mask, agg, max_len, count_empty_rows: as ``policy_loss``.
      coefficients: ``[batch, time]`` (or ``[batch]``) gradient coefficients ``GC``.

    Returns:
      ``(loss, metrics)``: ``approx_kl``, ``ratio_mean``, ``ratio_min``, ``ratio_max`` of
      ``pi / pi_old`` (how far the update moved from the sampling weights).
    """
    chex.assert_rank([logprobs, old_logprobs, mask], 2)
    chex.assert_equal_shape([logprobs, old_logprobs, mask])
    real = mask.astype(bool)
    coefficients = _per_token(coefficients, mask).astype(jnp.float32)
    per_token = -coefficients * jnp.where(real, logprobs, 0.0)
    loss = aggregate(per_token, mask, agg, max_len=max_len, count_empty_rows=count_empty_rows)
    log_ratio = _log_ratio(logprobs, old_logprobs, mask, "token")
    return loss, _ratio_metrics(jax.lax.stop_gradient(log_ratio), mask)


def _sequence_mean(per_seq: jax.Array, mask: jax.Array, count_empty_rows: bool) -> jax.Array:
    """Mean of ``[batch]`` values over the rows with a real token (or over all rows)."""
    nonempty = mask.sum(axis=1) > 0
    total = jnp.where(nonempty, per_seq, 0.0).sum()
    count = jnp.float32(mask.shape[0]) if count_empty_rows else nonempty.sum() * 1.0
    return total / jnp.maximum(count, 1.0)


def gmpo_loss(
    logprobs: jax.Array,
    old_logprobs: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    *,
    clip_low: float = 0.4,
    clip_high: float = 0.4,
    count_empty_rows: bool = False,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    r"""GMPO (Zhao et al. 2025, "Geometric-Mean Policy Optimization", arXiv 2507.20673).

    GRPO's objective with the arithmetic mean over tokens replaced by the geometric mean, and
    PPO's clip applied per token in log space. With ``l_t = log pi(y_t) - log pi_old(y_t)`` over
    the ``|o_i|`` real tokens of response ``i`` and its advantage ``A_i``::

        l~_t   = sgn(A_i) * min(sgn(A_i) * l_t, sgn(A_i) * clip(l_t, -clip_low, clip_high))
        loss_i = -A_i * exp((1 / |o_i|) * sum_t l~_t)

    i.e. the paper's ``{prod_t |min(rho_t A_i, clip(rho_t, e^-eps_low, e^eps_high) A_i)|}^{1/|o_i|}
    * sgn(A_i)`` written in log space (the paper's code and verl's ``geo_mean`` loss compute it this
    way). The loss is the mean of ``loss_i`` over responses (rows with a real token; all rows
    with ``count_empty_rows``, which is what verl's ``torch.mean`` does). The paper's default is
    ``eps_low = eps_high = 0.4`` in log space, a ratio range ``(e^-0.4, e^0.4) = (0.67, 1.49)``.

    Args:
      logprobs, old_logprobs, mask: as ``policy_loss``.
      advantages: ``[batch]``, or ``[batch, time]`` reduced to the mean over each row's real tokens
        (as verl does; the paper has one advantage per response).
      clip_low, clip_high: the clip range ``[-clip_low, clip_high]`` of the *log* ratio.
      count_empty_rows: count rows without real tokens in the mean over responses.

    Returns:
      ``(loss, metrics)``: ``clip_frac_high`` (share of real tokens with ``A > 0`` and
      ``l_t > clip_high``: clipped, no gradient), ``clip_frac_low`` (``A < 0`` and
      ``l_t < -clip_low``), ``approx_kl`` and the token ``ratio_*`` metrics, and
      ``seq_ratio_mean`` (mean over responses of the clipped geometric-mean ratio).
    """
    chex.assert_rank([logprobs, old_logprobs, mask], 2)
    chex.assert_equal_shape([logprobs, old_logprobs, mask])
    seq_adv = advantages if advantages.ndim == 1 else masked_mean(advantages, mask, axis=1)
    chex.assert_equal(seq_adv.shape[0], mask.shape[0])
    seq_adv = seq_adv.astype(jnp.float32)
    log_ratio = _log_ratio(logprobs, old_logprobs, mask, "token")
    sign = jnp.sign(seq_adv)[:, None]
    clipped = jnp.clip(log_ratio, -clip_low, clip_high)
    kept = sign * jnp.minimum(sign * log_ratio, sign * clipped)
    seq_ratio = jnp.exp(masked_mean(kept, mask, axis=1))
    loss = _sequence_mean(-seq_adv * seq_ratio, mask, count_empty_rows)
    log_ratio_sg = jax.lax.stop_gradient(log_ratio)
    metrics = {
        "clip_frac_low": masked_mean(((log_ratio_sg < -clip_low) & (sign < 0)) * 1.0, mask),
        "clip_frac_high": masked_mean(((log_ratio_sg > clip_high) & (sign > 0)) * 1.0, mask),
        **_ratio_metrics(log_ratio, mask),
        "seq_ratio_mean": _sequence_mean(jax.lax.stop_gradient(seq_ratio), mask, False),
    }
    return loss, metrics


def token_covariance(logprobs: jax.Array, advantages: jax.Array, mask: jax.Array) -> jax.Array:
    r"""Centred per-token covariance of log-prob and advantage (Cui et al. 2025, Eq. 10-11).

    ``cov_t = (log pi_t - mean(log pi)) * (A_t - mean(A))`` where both means run over the real
    tokens of the batch. No gradient; 0 at padding.

    Args:
      logprobs: ``[batch, time]`` log-probs of the taken tokens (current policy).
      advantages: ``[batch]`` or ``[batch, time]``.
      mask: ``[batch, time]`` 1 for real tokens.

    Returns:
      ``[batch, time]`` covariances.
    """
    logprobs = jax.lax.stop_gradient(logprobs.astype(jnp.float32))
    advantages = jax.lax.stop_gradient(_per_token(advantages, mask).astype(jnp.float32))
    cov = (logprobs - masked_mean(logprobs, mask)) * (advantages - masked_mean(advantages, mask))
    return jnp.where(mask.astype(bool), cov, 0.0)


def _count_from_ratio(ratio: float, mask: jax.Array) -> jax.Array:
    """``max(floor(ratio * number of real tokens), 1)``, the selection size of verl's Cov losses."""
    return jnp.maximum(jnp.floor(ratio * mask.astype(jnp.float32).sum()), 1.0).astype(jnp.int32)


def _rank_select(priority: jax.Array, eligible: jax.Array, count: jax.Array) -> jax.Array:
    """The ``count`` eligible positions of highest ``priority`` (fewer if fewer are eligible)."""
    flat = jnp.where(eligible, priority, -jnp.inf).reshape(-1)
    order = jnp.argsort(-flat, stable=True)
    rank = jnp.zeros(flat.shape, jnp.int32).at[order].set(jnp.arange(flat.size, dtype=jnp.int32))
    return eligible & (rank.reshape(priority.shape) < count)


def clip_cov_loss(
    logprobs: jax.Array,
    old_logprobs: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    key: jax.Array,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    cov_ratio: float = 2e-4,
    cov_lower: float = 1.0,
    cov_upper: float = 5.0,
    agg: AggMode = "token-mean",
    max_len: int | None = None,
    count_empty_rows: bool = False,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    r"""Clip-Cov (Cui et al. 2025, "The Entropy Mechanism of RL for Reasoning LMs", Sec. 4).

    PPO's clipped loss (as ``policy_loss``), except that a random subset of tokens with a large
    covariance ``cov_t`` (``token_covariance``) loses its gradient::

        eligible = {t real : cov_lower < cov_t < cov_upper, PPO's clip not active at t}
        I        = floor(cov_ratio * N) (at least 1) tokens drawn uniformly from eligible
        loss_t   = 0 for t in I, else the PPO loss

    with ``N`` the number of real tokens. As in verl's ``compute_policy_loss_clip_cov`` the
    selected tokens' loss terms are multiplied by 0 (no value, no gradient) but stay in the
    aggregation denominator. Defaults are verl's (``clip_cov_ratio=2e-4``, ``clip_cov_lb=1``,
    ``clip_cov_ub=5``). Under micro-batching the selection runs per call, as in verl.

    Args:
      logprobs, old_logprobs, advantages, mask, clip_low, clip_high, agg, max_len,
        count_empty_rows: as ``policy_loss``.
      key: PRNG key for the random subset; the selection is a deterministic function of it.
      cov_ratio: share of real tokens to detach.
      cov_lower, cov_upper: the covariance band ``(cov_lower, cov_upper)`` of eligible tokens.

    Returns:
      ``(loss, metrics)``: ``policy_loss``'s clip and ratio metrics, ``cov_clip_frac`` (share
      of real tokens detached) and ``cov_clip_tokens`` (their number in this call: a minibatch).
    """
    chex.assert_rank([logprobs, old_logprobs, mask], 2)
    chex.assert_equal_shape([logprobs, old_logprobs, mask])
    real = mask.astype(bool)
    advantages = _per_token(advantages, mask).astype(jnp.float32)
    log_ratio = _log_ratio(logprobs, old_logprobs, mask, "token")
    ratio = jnp.exp(log_ratio)
    per_token, clip_active = _ppo_terms(ratio, advantages, clip_low, clip_high)
    cov = token_covariance(logprobs, advantages, mask)
    eligible = real & ~jax.lax.stop_gradient(clip_active) & (cov > cov_lower) & (cov < cov_upper)
    priority = jax.random.uniform(key, mask.shape)
    detached = _rank_select(priority, eligible, _count_from_ratio(cov_ratio, mask))
    per_token = jnp.where(detached, 0.0, per_token)
    loss = aggregate(per_token, mask, agg, max_len=max_len, count_empty_rows=count_empty_rows)
    metrics = {
        **_clip_fracs(ratio, advantages, mask, clip_low, clip_high),
        "cov_clip_frac": masked_mean(detached * 1.0, mask),
        "cov_clip_tokens": jnp.sum(detached * 1.0),
        **_ratio_metrics(log_ratio, mask),
    }
    return loss, metrics


def kl_cov_loss(
    logprobs: jax.Array,
    old_logprobs: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    *,
    kl_ratio: float = 2e-3,
    kl_coef: float = 1.0,
    agg: AggMode = "token-mean",
    max_len: int | None = None,
    count_empty_rows: bool = False,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    r"""KL-Cov (Cui et al. 2025, "The Entropy Mechanism of RL for Reasoning LMs", Sec. 4).

    The unclipped policy-gradient surrogate, with a KL penalty on the tokens of largest
    covariance ``cov_t`` (``token_covariance``)::

        I      = the floor(kl_ratio * N) (at least 1) real tokens of largest cov_t
        loss_t = -rho_t * A_t + kl_coef * |log pi(y_t) - log pi_old(y_t)| * [t in I]

    with ``N`` the number of real tokens. There is no ratio clipping: the penalty replaces it, as
    in the paper and verl's ``compute_policy_loss_kl_cov``. Ties are broken by position. The paper
    reports ``k = 2e-3`` for Qwen2.5-7B and ``2e-4`` for 32B; verl's default ``kl_cov_ratio`` is
    ``2e-4`` and its ``ppo_kl_coef`` is 1.

    Args:
      logprobs, old_logprobs, advantages, mask, agg, max_len, count_empty_rows: as
        ``policy_loss``.
      kl_ratio: share of real tokens that get the penalty.
      kl_coef: the penalty coefficient.

    Returns:
      ``(loss, metrics)``: ``kl_cov_frac`` (share of real tokens penalised), ``kl_cov_tokens``
      (their number in this call: a minibatch), ``abs_log_ratio``
      (mean ``|log rho|``), ``approx_kl`` and the ratio metrics.
    """
    chex.assert_rank([logprobs, old_logprobs, mask], 2)
    chex.assert_equal_shape([logprobs, old_logprobs, mask])
    real = mask.astype(bool)
    advantages = _per_token(advantages, mask).astype(jnp.float32)
    log_ratio = _log_ratio(logprobs, old_logprobs, mask, "token")
    cov = token_covariance(logprobs, advantages, mask)
    penalised = _rank_select(cov, real, _count_from_ratio(kl_ratio, mask))
    per_token = -advantages * jnp.exp(log_ratio)
    # |x| written sign(x) * x: its gradient at x = 0 is 0 (as torch's abs), where jnp.abs gives 1,
    # which would push every selected token down when the ratio is exactly 1 (a single pass).
    abs_log_ratio = jnp.sign(jax.lax.stop_gradient(log_ratio)) * log_ratio
    per_token = per_token + jnp.where(penalised, kl_coef * abs_log_ratio, 0.0)
    loss = aggregate(per_token, mask, agg, max_len=max_len, count_empty_rows=count_empty_rows)
    metrics = {
        "kl_cov_frac": masked_mean(penalised * 1.0, mask),
        "kl_cov_tokens": jnp.sum(penalised * 1.0),
        "abs_log_ratio": masked_mean(jnp.abs(jax.lax.stop_gradient(log_ratio)), mask),
        **_ratio_metrics(log_ratio, mask),
    }
    return loss, metrics


# Sampler/trainer mismatch corrections. Each returns ``(weights, mask, metrics)``: per-token
# importance weights ``[batch, time]`` (no gradient, 0 at dropped or padding tokens) that multiply
# the per-token policy loss (equivalently the advantages, since they are >= 0), and the mask to
# use in the policy loss in place of ``mask``. Corrections compose: multiply the weights, take the
# product of the masks.


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
