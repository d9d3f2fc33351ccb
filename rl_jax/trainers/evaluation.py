"""Held-out evaluation: greedy pass@1, and pass@k / maj@k from k samples per prompt."""

from __future__ import annotations

import collections
from typing import Any

import jax
import numpy as np

from rl_jax import rewards
from rl_jax.parallel import to_host


def evaluate(ctx: Any, params: Any, key: jax.Array, *, k: int = 0) -> dict[str, float]:
    """Scores the policy ``params`` on ``ctx.eval_examples`` with the correctness reward.

    Returns ``pass@1`` (greedy), and with ``k > 1`` also ``pass@k`` (any of ``k`` samples at the
    rollout temperature is correct) and ``maj@k`` (the most frequent of the ``k`` answers, ties to
    the first seen, is correct). Also the mean greedy response length, and the mean of every
    reward function of ``rewards.weights`` over the greedy responses (``reward/<name>``).
    """
    cfg = ctx.config
    examples = ctx.eval_examples
    correctness = cfg.rewards.correctness
    ctx.sampler.params = params
    prompts = ctx.encode_prompts(examples)
    out = ctx.sampler.generate(prompts, key, max_new_tokens=cfg.rollout.max_new_tokens, greedy=True)
    # The whole output on every process (an all-gather when the mesh spans processes).
    texts = ctx.decode_responses(to_host(out.response_tokens), to_host(out.response_mask))
    correct = rewards.combine_rewards({correctness: 1.0}, texts, examples)[0]
    result = {
        "pass@1": float(np.mean(correct)),
        "length": float(np.mean(to_host(out.response_lengths))),
    }
    if len(cfg.rewards.weights):
        per_fn = rewards.combine_rewards(cfg.rewards.weights.to_dict(), texts, examples)[1]
        result.update({f"reward/{name}": float(np.mean(v)) for name, v in per_fn.items()})
    if k > 1:
        out = ctx.sampler.generate(
            prompts,
            jax.random.fold_in(key, 1),
            n=k,
            max_new_tokens=cfg.rollout.max_new_tokens,
            temperature=cfg.rollout.temperature,
        )
        texts = ctx.decode_responses(to_host(out.response_tokens), to_host(out.response_mask))
        repeated = [ex for ex in examples for _ in range(k)]
        sample_correct = rewards.combine_rewards({correctness: 1.0}, texts, repeated)[0]
        sample_correct = sample_correct.reshape(len(examples), k)
        result[f"pass@{k}"] = float(np.mean(sample_correct.max(axis=1)))
        majority = []
        for i in range(len(examples)):
            answers = [texts[i * k + j].strip() for j in range(k)]
            top = collections.Counter(answers).most_common(1)[0][0]
            majority.append(sample_correct[i, answers.index(top)])
        result[f"maj@{k}"] = float(np.mean(majority))
    return result
