"""Reward-model losses from human preferences: pairs (Bradley-Terry) and K-wise rankings; and a
process reward model's per-step loss."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

# The losses a reward-model stage can train with (``rm.loss``; ``preference_loss`` dispatches).
RM_LOSSES = ("pairwise", "ranking", "listwise")


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


def preference_loss(
    scores: jax.Array, ranks: jax.Array, present: jax.Array, margin: jax.Array, loss: str
) -> jax.Array:
    """The ``loss`` (one of ``RM_LOSSES``) of ``[P, K]`` scores; ``margin`` ``[P]`` (pairwise)."""
    if loss == "pairwise":
        if scores.shape[1] != 2:
            raise ValueError(
                f"the pairwise loss needs K = 2 responses a prompt, got {scores.shape[1]}"
            )
        first_better = ranks[:, 0] < ranks[:, 1]
        chosen = jnp.where(first_better, scores[:, 0], scores[:, 1])
        rejected = jnp.where(first_better, scores[:, 1], scores[:, 0])
        return pairwise_loss(chosen, rejected, margin=margin)
    if loss == "ranking":
        return ranking_loss(scores, ranks, present)
    if loss == "listwise":
        return listwise_loss(scores, ranks, present)
    raise ValueError(f"unknown reward-model loss {loss!r}; known: {RM_LOSSES}")


def pair_accuracy(scores: jax.Array, ranks: jax.Array, present: jax.Array) -> jax.Array:
    """Fraction of ordered pairs (``rank_i < rank_j``, both present) with ``score_i > score_j``;
    ties count 1/2, no pair gives 0. scores, ranks, present: ``[prompts, K]``."""
    live = present.astype(bool)
    pairs = (ranks[:, :, None] < ranks[:, None, :]) & live[:, :, None] & live[:, None, :]
    diff = scores[:, :, None] - scores[:, None, :]
    right = jnp.where(diff > 0, 1.0, jnp.where(diff == 0, 0.5, 0.0))
    return (right * pairs).sum() / jnp.maximum(pairs.sum(), 1)


def process_reward_loss(
    token_logits: jax.Array, step_ends: jax.Array, step_labels: jax.Array
) -> tuple[jax.Array, dict[str, jax.Array]]:
    r"""A process reward model's loss (Lightman et al. 2023; DeepSeekMath §4.1.3's step rewards):
    per-step binary cross-entropy on the step-end tokens.

    With ``z_{b,s} = token_logits[b, step_ends[b, s]]`` the model's logit at the token where step
    ``s`` of response ``b`` ends and ``y_{b,s}`` its 0/1 label (e.g. a gold step checker's)::

        loss = mean_{(b, s) : step_ends[b, s] >= 0} -[y log sigmoid(z) + (1 - y) log sigmoid(-z)]

    Args:
      token_logits: ``[batch, time]`` the model's step-correctness logit at every response token.
      step_ends: ``[batch, S]`` int, the token index where step ``s`` ends, ``-1`` for no step.
      step_labels: ``[batch, S]`` 1.0 where the step is right, 0.0 where not.

    Returns:
      ``(loss, metrics)``: ``step_accuracy``, the share of steps whose logit has the label's sign
      (``z > 0`` for 1). Both 0 when there is no step.
    """
    chex.assert_rank([token_logits, step_ends, step_labels], 2)
    chex.assert_equal_shape([step_ends, step_labels])
    chex.assert_equal(token_logits.shape[0], step_ends.shape[0])
    valid = step_ends >= 0
    logits = jnp.take_along_axis(
        token_logits.astype(jnp.float32), jnp.maximum(step_ends, 0), axis=1
    )
    labels = step_labels.astype(jnp.float32)
    per_step = -(labels * jax.nn.log_sigmoid(logits) + (1.0 - labels) * jax.nn.log_sigmoid(-logits))
    count = jnp.maximum(valid.sum(), 1).astype(jnp.float32)
    loss = jnp.where(valid, per_step, 0.0).sum() / count
    right = jnp.where(valid, (logits > 0) == (labels > 0.5), False)
    return loss, {"step_accuracy": right.sum() / count}
