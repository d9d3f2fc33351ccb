"""Choosing the next token from logits: greedy, temperature, top-k and top-p (nucleus).

All functions are pure and work on one decode step, `logits: [batch, vocab]` float32.

Logprob convention (used by everything in `rl_jax.rollout`): the logprob returned for a token is
under the tempered, *unfiltered* distribution, log_softmax(logits / temperature)[token], whatever
top-k / top-p filter was used to draw it. That is the quantity a trainer recomputes from a forward
pass, so PPO/GRPO ratios start at exactly 1. For greedy decoding it is the same formula with the
temperature passed in (1.0 by default).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

_MASKED = -jnp.inf


def top_p_threshold(sorted_logits: jax.Array, top_p: jax.Array) -> jax.Array:
    """Smallest logit kept by nucleus filtering.

    Keeps the smallest prefix of the sorted tokens whose probability mass reaches `top_p`: token j
    (in descending order) is kept iff the mass of the tokens before it is < top_p; the first token
    is always kept.

    Args:
      sorted_logits: [batch, k] tempered logits sorted in descending order (k may be the full
        vocabulary or the output of a top-k filter; the probabilities are renormalised over k).
      top_p: scalar in (0, 1].

    Returns:
      [batch] the smallest kept logit; keep every token whose logit is >= it.
    """
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    num_kept = jnp.maximum(jnp.sum(mass_before < top_p, axis=-1), 1)
    return jnp.take_along_axis(sorted_logits, (num_kept - 1)[:, None], axis=-1)[:, 0]


def bisect_threshold(
    scaled_logits: jax.Array,
    measure: Callable[[jax.Array], jax.Array],
    target: jax.Array,
    num_iterations: int = 32,
) -> jax.Array:
    """The largest t in [min logit, max logit] with measure(t) >= target, per row, by bisection.

    `measure(t)` ([batch] -> [batch]) must not increase with t (a count or a probability mass
    of the tokens with logit >= t). Sorting instead costs ~8 ms a step on 64 x 1024 logits on a
    2-core CPU (and XLA's top-k inside a loop costs as much); 32 masked reductions cost well under
    1 ms. Invariant: measure(low) >= target > measure(high). After 32 halvings the interval is
    below float32 resolution for any realistic logit range, so {logit >= t} equals the set the
    sorted definition keeps (ties with the threshold are kept).

    Args:
      scaled_logits: [batch, vocab] finite tempered logits.
      measure: non-increasing function of the threshold.
      target: [batch] or scalar.
      num_iterations: bisection steps (static).

    Returns:
      [batch] threshold; keep every token whose logit is >= it.
    """
    top = jnp.max(scaled_logits, axis=-1)
    low = jnp.min(scaled_logits, axis=-1)  # keeps everything: measure(low) is the maximum

    def halve(_, bounds):
        low, high = bounds
        middle = low + (high - low) / 2
        enough = measure(middle) >= target
        return jnp.where(enough, middle, low), jnp.where(enough, high, middle)

    low, _ = jax.lax.fori_loop(0, num_iterations, halve, (low, top))
    # The bisection never returns `high` itself: handle "the top tokens alone suffice" here.
    return jnp.where(measure(top) >= target, top, low)


def top_k_threshold(scaled_logits: jax.Array, top_k: int) -> jax.Array:
    """[batch] the k-th largest logit of scaled_logits [batch, vocab], without sorting.

    k >= vocab keeps everything (the threshold is the smallest logit).
    """

    def count(threshold: jax.Array) -> jax.Array:
        return jnp.sum(scaled_logits >= threshold[:, None], axis=-1)

    return bisect_threshold(scaled_logits, count, jnp.int32(top_k))


def top_p_threshold_unsorted(
    scaled_logits: jax.Array, probs: jax.Array, top_p: jax.Array
) -> jax.Array:
    """The nucleus threshold of `top_p_threshold` without sorting the vocabulary.

    Args:
      scaled_logits: [batch, vocab] tempered logits (finite).
      probs: [batch, vocab] non-negative, proportional to the distribution being filtered
        (softmax(scaled_logits), or that restricted to the top-k set); need not sum to 1.
      top_p: scalar in (0, 1].

    Returns:
      [batch] the largest t such that the tokens with logit >= t hold >= top_p of the mass.
    """

    def kept_mass(threshold: jax.Array) -> jax.Array:
        return jnp.sum(jnp.where(scaled_logits >= threshold[:, None], probs, 0.0), axis=-1)

    return bisect_threshold(scaled_logits, kept_mass, top_p * jnp.sum(probs, axis=-1))


def keep_mask(
    scaled_logits: jax.Array,
    probs: jax.Array,
    top_p: jax.Array,
    *,
    top_k: int | None,
    use_top_p: bool,
) -> jax.Array | None:
    """Which tokens survive top-k then top-p filtering; None when no filter is on.

    Order as in Hugging Face: temperature (already applied), then top-k, then top-p on the
    distribution renormalised over the top-k tokens. Tokens tied with a threshold logit are kept,
    so a tie can let more than k tokens through. Both thresholds come from `bisect_threshold`
    (no sort).

    Args:
      scaled_logits: [batch, vocab] logits / temperature.
      probs: [batch, vocab] softmax(scaled_logits) (used by top-p).
      top_p: scalar in (0, 1]; ignored unless `use_top_p`.
      top_k: static number of tokens kept, or None for no top-k filter.
      use_top_p: static; whether to apply the nucleus filter.

    Returns:
      [batch, vocab] bool, or None.
    """
    if top_k is None and not use_top_p:
        return None
    threshold = None
    if top_k is not None:
        threshold = top_k_threshold(scaled_logits, top_k)
    if use_top_p:
        if threshold is not None:
            probs = jnp.where(scaled_logits >= threshold[:, None], probs, 0.0)
        nucleus = top_p_threshold_unsorted(scaled_logits, probs, top_p)
        threshold = nucleus if threshold is None else jnp.maximum(threshold, nucleus)
    return scaled_logits >= threshold[:, None]


def filter_logits(
    scaled_logits: jax.Array,
    top_p: jax.Array,
    *,
    top_k: int | None,
    use_top_p: bool,
) -> jax.Array:
    """scaled_logits [batch, vocab] with tokens outside the top-k / top-p set at -inf.

    See `keep_mask` for the filter semantics.
    """
    probs = jax.nn.softmax(scaled_logits, axis=-1)
    keep = keep_mask(scaled_logits, probs, top_p, top_k=top_k, use_top_p=use_top_p)
    return scaled_logits if keep is None else jnp.where(keep, scaled_logits, _MASKED)


def sample_from_probs(key: jax.Array, probs: jax.Array, block_size: int = 64) -> jax.Array:
    """Draws one token per row from unnormalised probabilities by inverse-CDF sampling.

    One uniform u per row is scaled by the row's total mass; the token is the first index whose
    cumulative mass exceeds it. The cumulative sum has two levels, first over blocks of
    `block_size` tokens, then inside the chosen block, so float32 rounding is relative to a
    block's mass rather than to 1 (a flat cumsum over 150k tokens would blur the tail). A token
    with zero mass is never drawn. Needs one random number per row instead of one per token as
    the Gumbel trick does (jax.random.categorical), which is ~10x cheaper on CPU.

    Args:
      key: PRNG key.
      probs: [batch, vocab] non-negative float32, each row with positive total.
      block_size: tokens per block (static).

    Returns:
      [batch] int32 token ids.
    """
    batch, vocab = probs.shape
    num_blocks = -(-vocab // block_size)
    blocks = jnp.pad(probs, ((0, 0), (0, num_blocks * block_size - vocab)))
    blocks = blocks.reshape(batch, num_blocks, block_size)
    block_mass = jnp.sum(blocks, axis=-1)  # [B, num_blocks]
    block_cdf = jnp.cumsum(block_mass, axis=-1)
    tiny = jnp.finfo(jnp.float32).tiny
    target = jax.random.uniform(key, (batch,), jnp.float32, minval=tiny) * block_cdf[:, -1]
    block = jnp.sum(block_cdf < target[:, None], axis=-1)  # [B]
    mass_before = jnp.take_along_axis(block_cdf - block_mass, block[:, None], axis=-1)[:, 0]
    inner_cdf = jnp.cumsum(jnp.take_along_axis(blocks, block[:, None, None], axis=1)[:, 0], -1)
    # Rounding can put the residual a hair outside (0, block mass]; clamp it back inside.
    residual = jnp.clip(target - mass_before, tiny, inner_cdf[:, -1])
    offset = jnp.sum(inner_cdf < residual[:, None], axis=-1)
    return (block * block_size + offset).astype(jnp.int32)


def select_tokens(
    logits: jax.Array,
    key: jax.Array,
    temperature: jax.Array,
    top_p: jax.Array,
    *,
    greedy: bool,
    top_k: int | None,
    use_top_p: bool,
) -> tuple[jax.Array, jax.Array]:
    """Picks one token per row and returns it with its logprob.

    Args:
      logits: [batch, vocab] float32 next-token logits.
      key: PRNG key for this step.
      temperature: scalar > 0.
      top_p: scalar in (0, 1]; used only if `use_top_p`.
      greedy: static; argmax of the logits instead of sampling (filters are then irrelevant).
      top_k: static top-k size or None.
      use_top_p: static; whether nucleus filtering is on.

    Returns:
      tokens: [batch] int32.
      logprobs: [batch] float32, log_softmax(logits / temperature)[token] (tempered, unfiltered).
    """
    scaled = logits.astype(jnp.float32) / temperature
    log_probs = jax.nn.log_softmax(scaled, axis=-1)
    if greedy:
        tokens = jnp.argmax(scaled, axis=-1).astype(jnp.int32)
    else:
        probs = jnp.exp(log_probs)
        keep = keep_mask(scaled, probs, top_p, top_k=top_k, use_top_p=use_top_p)
        if keep is not None:
            probs = jnp.where(keep, probs, 0.0)
        tokens = sample_from_probs(key, probs)
    chosen = jnp.take_along_axis(log_probs, tokens[:, None], axis=-1)[:, 0]
    return tokens, chosen
