"""Per-token log-probabilities and entropy from final hidden states, the LM head applied in chunks.

The float32 logits of a sequence are the largest activation of an LLM update: at the Qwen2.5
vocabulary (151,936 tokens) one position's logits take 0.6 MB, so ``[batch, time, vocab]`` is
622 MB per 1,024-token row, and an update holds several such buffers (the logits, their softmax
and its gradient). Here the head is applied to ``chunk_size`` positions at a time inside a
``lax.scan``, each chunk under ``jax.checkpoint``: the forward keeps only each chunk's
``[batch, time]`` outputs, and the backward recomputes one chunk's logits at a time. The largest
live logits buffer is then ``[batch, chunk_size, vocab]``. The numbers are those of
``rl_jax.token_logprobs`` and ``rl_jax.entropy`` on the full logits (same formulas, per chunk).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from rl_jax.losses import entropy, token_logprobs

DEFAULT_CHUNK = 128  # positions per head application: [batch, 128, vocab] float32 at most


def head_logits(hidden: jax.Array, head: jax.Array, *, vocab_major: bool) -> jax.Array:
    """The bias-free LM head in float32: ``hidden @ head`` (or ``hidden @ head.T``).

    Args:
      hidden: ``[..., hidden]`` final (normed) hidden states, any float dtype.
      head: ``[vocab, hidden]`` when ``vocab_major`` (a tied input embedding), else
        ``[hidden, vocab]`` (an ``lm_head`` kernel); used in its stored layout, never transposed.
      vocab_major: which of the two layouts ``head`` has.

    Returns:
      ``[..., vocab]`` float32 logits.
    """
    hidden, head = hidden.astype(jnp.float32), head.astype(jnp.float32)
    spec = "...h,vh->...v" if vocab_major else "...h,hv->...v"
    return jnp.einsum(spec, hidden, head)


def chunked_token_stats(
    hidden: jax.Array,
    head: jax.Array,
    tokens: jax.Array,
    *,
    vocab_major: bool,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK,
    with_entropy: bool = False,
) -> tuple[jax.Array, jax.Array | None]:
    r"""Log-prob of each token (and the entropy) without ``[batch, time, vocab]`` logits.

    With ``z = head_logits(hidden) / T`` at each position::

        log p(y_t) = z_{t, y_t} - logsumexp_v z_{t, v}
        H_t        = logsumexp_v z_{t, v} - sum_v softmax(z_t)_v z_{t, v}

    computed ``chunk_size`` positions (of the time axis, all rows together) at a time: a
    ``lax.scan`` over chunks whose body is ``jax.checkpoint``-ed, so neither the forward nor the
    backward pass holds more than one ``[batch, chunk_size, vocab]`` chunk of logits (and its
    softmax / gradient). The last chunk is zero-padded; padded positions are dropped. The
    gradient flows to ``hidden`` and ``head`` through the log-probs only: the entropy is a
    metric and carries no gradient.

    Args:
      hidden: ``[batch, time, hidden]``; position ``t`` predicts ``tokens[:, t]``.
      head: the LM head weight, see ``head_logits``.
      tokens: ``[batch, time]`` integer token ids.
      vocab_major: the layout of ``head`` (True: ``[vocab, hidden]``, a tied embedding).
      temperature: the sampling temperature ``T`` of the tokens.
      chunk_size: positions per chunk (>= 1); the live logits are ``[batch, chunk_size, vocab]``.
      with_entropy: also return the entropy of ``softmax(z)``.

    Returns:
      ``(logprobs, entropy)``: ``[batch, time]`` float32 each; ``entropy`` is None unless
      ``with_entropy``.
    """
    chex.assert_rank([hidden, head, tokens], [3, 2, 2])
    chex.assert_equal_shape_prefix([hidden, tokens], 2)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    batch, time, width = hidden.shape
    size = min(chunk_size, time)
    num_chunks = -(-time // size)
    pad = num_chunks * size - time
    hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
    tokens = jnp.pad(tokens.astype(jnp.int32), ((0, 0), (0, pad)))
    # [num_chunks, batch, size, ...]: the scan runs over chunks of time, keeping the batch axis
    # whole (so a batch-sharded input stays sharded inside the loop).
    hidden_chunks = hidden.reshape(batch, num_chunks, size, width).swapaxes(0, 1)
    token_chunks = tokens.reshape(batch, num_chunks, size).swapaxes(0, 1)

    @jax.checkpoint
    def one_chunk(head, h, y):
        logits = head_logits(h, head, vocab_major=vocab_major)
        logprobs = token_logprobs(logits, y, temperature=temperature)
        if not with_entropy:
            return logprobs, None
        return logprobs, entropy(jax.lax.stop_gradient(logits) / temperature)

    def body(carry, xs):
        return carry, one_chunk(head, *xs)

    _, (logprobs, ent) = jax.lax.scan(body, None, (hidden_chunks, token_chunks))

    def unchunk(x):  # [num_chunks, batch, size] -> [batch, time]
        return x.swapaxes(0, 1).reshape(batch, num_chunks * size)[:, :time]

    return unchunk(logprobs), (unchunk(ent) if with_entropy else None)
