"""Rollouts: a jitted, bucketed KV-cache sampler for causal language models.

`Sampler` is the high-level entry point; `decode` is the pure core it jits (prefill, then a
`lax.while_loop` of decode steps), generic over a model `apply_fn` and a cache initialiser.
Logprobs are always under the tempered unfiltered distribution log_softmax(logits / temperature).
"""

from rl_jax.rollout.decode import (
    DecodeOutput,
    DecodeSettings,
    cache_batch_axes,
    cache_length_axes,
    decode,
    stage_ends,
)
from rl_jax.rollout.padding import bucket_length, choose_buckets, left_pad, right_pad
from rl_jax.rollout.sampler import SampleOutput, Sampler
from rl_jax.rollout.sampling import (
    bisect_threshold,
    filter_logits,
    keep_mask,
    sample_from_probs,
    select_tokens,
    top_k_threshold,
    top_p_threshold,
    top_p_threshold_unsorted,
)

__all__ = [
    "DecodeOutput",
    "DecodeSettings",
    "SampleOutput",
    "Sampler",
    "bisect_threshold",
    "bucket_length",
    "cache_batch_axes",
    "cache_length_axes",
    "choose_buckets",
    "decode",
    "filter_logits",
    "keep_mask",
    "left_pad",
    "right_pad",
    "sample_from_probs",
    "select_tokens",
    "stage_ends",
    "top_k_threshold",
    "top_p_threshold",
    "top_p_threshold_unsorted",
]
