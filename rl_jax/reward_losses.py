"""Reward-model losses from human preferences: pairs (Bradley-Terry) and K-wise rankings."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp


def pairwise_loss(
    chosen: jax.Array, rejected: jax.Array, *, margin: jax.Array | float | None = None
) -> jax.Array:
    r"""Bradley-Terry loss: ``mean_b -log sigmoid(r^+_b - r^-_b - m_b)``.

    Args:
      chosen: ``[batch]`` rewards of the preferred responses.
      rejected: ``[batch]`` rewards of the other responses.
      margin: optional scalar or ``[batch]`` margin ``m`` (Llama 2's preference-strength margin).

    Returns:
      The scalar loss; it decreases as ``chosen - rejected`` grows.
    """
    chex.assert_rank([chosen, rejected], 1)
    chex.assert_equal_shape([chosen, rejected])
    diff = chosen.astype(jnp.float32) - rejected.astype(jnp.float32)
    if margin is not None:
        diff = diff - margin
    return -jax.nn.log_sigmoid(diff).mean()


def _check_ranking(scores: jax.Array, ranks: jax.Array, mask: jax.Array) -> None:
    chex.assert_rank([scores, ranks, mask], 2)
    chex.assert_equal_shape([scores, ranks, mask])


def ranking_loss(scores: jax.Array, ranks: jax.Array, mask: jax.Array) -> jax.Array:
    r"""InstructGPT's loss over all ordered pairs of K ranked responses per prompt (Ouyang 2022).

    For every prompt ``p`` and every pair ``(i, j)`` of its present responses with
    ``ranks[p, i] < ranks[p, j]`` (``i`` better; equal ranks form no pair)::

        loss = mean over all such pairs of  -log sigmoid(scores[p, i] - scores[p, j])

    All ``K(K-1)/2`` pairs of a prompt come from one ``[K, K]`` difference matrix, so a prompt's
    responses are scored once. With ``K = 2`` this equals ``pairwise_loss``.

    Args:
      scores: ``[prompts, K]`` rewards of the responses.
      ranks: ``[prompts, K]`` integer ranks, 0 = best.
      mask: ``[prompts, K]`` 1 for a present response, 0 for a missing one.

    Returns:
      The scalar loss (0 if there is no pair).
    """
    _check_ranking(scores, ranks, mask)
    scores = scores.astype(jnp.float32)
    present = mask.astype(bool)
    diff = scores[:, :, None] - scores[:, None, :]  # [prompts, K, K]: s_i - s_j
    is_pair = (
        (ranks[:, :, None] < ranks[:, None, :]) & present[:, :, None] & present[:, None, :]
    )
    pair_losses = jnp.where(is_pair, -jax.nn.log_sigmoid(diff), 0.0)
    return pair_losses.sum() / jnp.maximum(is_pair.sum(), 1)


def listwise_loss(scores: jax.Array, ranks: jax.Array, mask: jax.Array) -> jax.Array:
    r"""Plackett-Luce negative log-likelihood of each prompt's ranking, averaged over prompts.

    The ranking is drawn best first, each time from the responses not yet placed::

        NLL_p = sum_i [ logsumexp_{j : rank_j >= rank_i} s_j  -  s_i ]

    over the present responses ``i`` of prompt ``p``. For strict rankings this is the exact
    Plackett-Luce likelihood; tied responses share a risk set (Breslow's approximation). With
    ``K = 2`` it equals ``pairwise_loss``.

    Args:
      scores: ``[prompts, K]`` rewards of the responses.
      ranks: ``[prompts, K]`` integer ranks, 0 = best.
      mask: ``[prompts, K]`` 1 for a present response.

    Returns:
      The scalar mean NLL over prompts that have at least one response.
    """
    _check_ranking(scores, ranks, mask)
    scores = scores.astype(jnp.float32)
    present = mask.astype(bool)
    # risk[p, i, j]: response j is still unplaced when response i is drawn.
    risk = (ranks[:, None, :] >= ranks[:, :, None]) & present[:, None, :]
    # A finite fill keeps gradients finite for rows with no present response.
    log_denominators = jax.nn.logsumexp(jnp.where(risk, scores[:, None, :], -1e30), axis=-1)
    per_response = jnp.where(present, log_denominators - scores, 0.0)
    has_any = present.any(axis=1)
    return per_response.sum() / jnp.maximum(has_any.sum(), 1)
