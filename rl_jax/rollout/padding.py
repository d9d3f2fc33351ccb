"""Host-side (NumPy) preparation of prompt batches: left padding, length buckets, length checks."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def bucket_length(length: int, minimum: int) -> int:
    """The smallest power of two >= max(length, minimum)."""
    target = max(int(length), int(minimum), 1)
    return 1 << (target - 1).bit_length()


def choose_buckets(
    longest_prompt: int,
    max_new_tokens: int,
    max_len: int,
    min_prompt_bucket: int,
    min_new_tokens_bucket: int,
) -> tuple[int, int]:
    """Prompt bucket P and new-token bucket N with P + N <= max_len.

    Both are powers of two (at least the given minimums) unless that would overflow `max_len`;
    then they are cut down to what fits (still >= the real lengths, which `check_prompt_lengths`
    guarantees), so near the context limit a few extra shapes can compile.
    """
    new_bucket = min(bucket_length(max_new_tokens, min_new_tokens_bucket), max_len - longest_prompt)
    new_bucket = max(new_bucket, max_new_tokens)
    prompt_bucket = min(bucket_length(longest_prompt, min_prompt_bucket), max_len - new_bucket)
    return max(prompt_bucket, longest_prompt), new_bucket


def check_prompt_lengths(lengths: Sequence[int], max_new_tokens: int, max_len: int) -> None:
    """Raises ValueError for an empty prompt or one with len + max_new_tokens > max_len."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    for index, length in enumerate(lengths):
        if length < 1:
            raise ValueError(f"prompt {index} is empty; every prompt needs at least one token")
        if length + max_new_tokens > max_len:
            raise ValueError(
                f"prompt {index} has {length} tokens; with max_new_tokens={max_new_tokens} that "
                f"is {length + max_new_tokens} > max_len={max_len} (the model's context)"
            )


def rows_from_padded(tokens: np.ndarray, mask: np.ndarray) -> list[np.ndarray]:
    """Real tokens of each row of a padded batch (left, right or mixed padding).

    tokens, mask: [batch, time] -> list of 1-D int32 arrays.
    """
    tokens = np.asarray(tokens)
    mask = np.asarray(mask).astype(bool)
    if tokens.shape != mask.shape or tokens.ndim != 2:
        raise ValueError(f"tokens {tokens.shape} and mask {mask.shape} must be equal [batch, time]")
    return [row[keep].astype(np.int32) for row, keep in zip(tokens, mask, strict=True)]


def left_pad(
    prompts: Sequence[Sequence[int] | np.ndarray], length: int, pad_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """Left-pads token lists to `length`.

    Returns:
      tokens: [batch, length] int32, pad_id before each prompt.
      mask: [batch, length] int32, 1 on real tokens.
    """
    tokens = np.full((len(prompts), length), pad_id, np.int32)
    mask = np.zeros((len(prompts), length), np.int32)
    for row, prompt in enumerate(prompts):
        if len(prompt) > length:
            raise ValueError(f"prompt {row} has {len(prompt)} tokens > padded length {length}")
        if len(prompt):
            tokens[row, length - len(prompt) :] = np.asarray(prompt, np.int32)
            mask[row, length - len(prompt) :] = 1
    return tokens, mask


def right_pad(rows: Sequence[Sequence[int]], pad_id: int, max_len: int) -> tuple[np.ndarray, ...]:
    """Right-pads token lists (training sequences) to a bucketed width.

    Returns:
      tokens: [batch, L] int32, ``pad_id`` after each row; ``L`` is the smallest power of two >= the
        longest row (and >= 16), at most ``max_len``.
      mask: [batch, L] int32, 1 on real tokens.
    """
    width = min(bucket_length(max(len(r) for r in rows), 16), max_len)
    tokens = np.full((len(rows), width), pad_id, np.int32)
    mask = np.zeros((len(rows), width), np.int32)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return tokens, mask
