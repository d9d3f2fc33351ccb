"""The typed batches of an RL step: what ``prepare`` reads and what ``update`` trains on.

Layout: ``tokens``/``mask`` are ``[batch, P + R]`` (the left-padded prompt, then the response);
every per-token array of the response is ``[batch, R]``; logits at position ``P - 1 + t``
predict response token ``t``. Both are pytrees (``flax.struct``), so they shard, shuffle and
scan like the arrays they hold; a field that is ``None`` holds no array.
"""

from __future__ import annotations

import jax
from flax import struct


@struct.dataclass
class RolloutBatch:
    """Sampled and scored responses, as ``prepare`` reads them."""

    tokens: jax.Array  # [batch, P + R] int32: prompt then response
    mask: jax.Array  # [batch, P + R] float32: 1 on real tokens
    response_mask: jax.Array  # [batch, R] float32
    sampler_logprobs: jax.Array  # [batch, R] the sampler's log-probs of the response tokens
    scores: jax.Array  # [batch] the shaped sequence reward
    truncated: jax.Array  # [batch] float32: 1.0 where the response has no EOS
    # What an estimator reads besides the scores (``Estimator.reads``); None when none does.
    correct: jax.Array | None = None  # [batch] float32: I(o), 1.0 where the answer is correct
    step_rewards: jax.Array | None = None  # [batch, S] float32: each step's reward
    step_ends: jax.Array | None = None  # [batch, S] int32: the token a step ends at, -1: none


@struct.dataclass
class TrainBatch:
    """A rollout with what ``prepare`` added: the rows ``update`` shuffles into minibatches.

    ``loss_mask`` is where every loss term aggregates (the response mask without the rows
    overlong filtering drops; None: ``response_mask``); ``policy_mask`` is where the policy loss
    aggregates (``loss_mask`` with a mismatch correction's masked tokens removed; None:
    ``loss_mask``).
    """

    tokens: jax.Array  # [batch, P + R]
    mask: jax.Array  # [batch, P + R]
    response_mask: jax.Array  # [batch, R]
    sampler_logprobs: jax.Array  # [batch, R]
    advantages: jax.Array  # [batch, R]
    loss_mask: jax.Array | None = None  # [batch, R]; with overlong filtering
    policy_mask: jax.Array | None = None  # [batch, R]; with a mismatch correction
    old_logprobs: jax.Array | None = None  # [batch, R]; None in a single pass (the update's own)
    ref_logprobs: jax.Array | None = None  # [batch, R]; with a KL term in the loss
    old_values: jax.Array | None = None  # [batch, R]; with a critic
    returns: jax.Array | None = None  # [batch, R]; with a critic
    loss_key: jax.Array | None = None  # a PRNG key per minibatch, for a policy loss that draws
