"""Choosing the next token from logits: greedy, temperature, top-k and top-p (nucleus).

All functions are pure and work on one decode step, `logits: [batch, vocab]` float32.

Logprob convention (used by everything in `rl_jax.rollout`): the logprob returned for a token is
under the tempered, *unfiltered* distribution, log_softmax(logits / temperature)[token], whatever
top-k / top-p filter was used to draw it. That is the quantity a trainer recomputes from a forward
pass, so PPO/GRPO ratios start at exactly 1. For greedy decoding it is the same formula with the
temperature passed in (1.0 by default).
"""

from __future__ import annotations

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


def filter_logits(
    scaled_logits: jax.Array,
    top_p: jax.Array,
    *,
    top_k: int | None,
    use_top_p: bool,
) -> jax.Array:
    """Sets the logits of tokens outside the top-k / top-p set to -inf.

    Order as in Hugging Face: temperature (already applied), then top-k, then top-p on the
    distribution renormalised over the top-k tokens. Tokens tied with the threshold logit are kept,
    so a tie can let more than k tokens through.

    Args:
      scaled_logits: [batch, vocab] logits / temperature.
      top_p: scalar in (0, 1]; ignored unless `use_top_p`.
      top_k: static number of tokens kept, or None for no top-k filter.
      use_top_p: static; whether to apply the nucleus filter (needs a full-vocabulary sort when
        `top_k` is None, so it is compiled in only when asked for).

    Returns:
      [batch, vocab] filtered logits.
    """
    if top_k is None and not use_top_p:
        return scaled_logits
    if top_k is not None:
        sorted_logits = jax.lax.top_k(scaled_logits, top_k)[0]
    else:
        sorted_logits = -jnp.sort(-scaled_logits, axis=-1)
    if use_top_p:
        threshold = top_p_threshold(sorted_logits, top_p)
    else:
        threshold = sorted_logits[:, -1]
    return jnp.where(scaled_logits >= threshold[:, None], scaled_logits, _MASKED)


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
    if greedy:
        tokens = jnp.argmax(scaled, axis=-1)
    else:
        filtered = filter_logits(scaled, top_p, top_k=top_k, use_top_p=use_top_p)
        tokens = jax.random.categorical(key, filtered, axis=-1)
    tokens = tokens.astype(jnp.int32)
    log_probs = jax.nn.log_softmax(scaled, axis=-1)
    chosen = jnp.take_along_axis(log_probs, tokens[:, None], axis=-1)[:, 0]
    return tokens, chosen
