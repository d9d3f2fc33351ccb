"""Rollouts: a jitted, bucketed KV-cache sampler for causal language models.

`Sampler` is the high-level entry point; `decode` is the pure core it jits (prefill, then a
`lax.while_loop` of decode steps), generic over a model `apply_fn` and a cache initialiser.
Logprobs are always under the tempered unfiltered distribution log_softmax(logits / temperature).
"""

from rl_jax.rollout.decode import DecodeOutput, DecodeSettings, decode, positions_from_mask
from rl_jax.rollout.padding import bucket_length, choose_buckets, left_pad
from rl_jax.rollout.sampler import SampleOutput, Sampler
from rl_jax.rollout.sampling import filter_logits, select_tokens, top_p_threshold

__all__ = [
    "DecodeOutput",
    "DecodeSettings",
    "SampleOutput",
    "Sampler",
    "bucket_length",
    "choose_buckets",
    "decode",
    "filter_logits",
    "left_pad",
    "positions_from_mask",
    "select_tokens",
    "top_p_threshold",
]
