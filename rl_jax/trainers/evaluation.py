"""Held-out evaluation: greedy pass@1, and pass@k / maj@k from k samples per prompt.

The eval set is sampled in chunks no larger than the RL rollout batch
(``EvalSettings.rows_per_call = rl.num_prompts * rl.group_size`` rows a sampler call), so its
memory is the rollout's whatever ``eval.num_examples``.
"""

from __future__ import annotations

import collections
from collections.abc import Hashable, Sequence
from typing import Any

import jax
import numpy as np

from rl_jax import rewards
from rl_jax.parallel import to_host
from rl_jax.settings import EvalSettings


def eval_chunks(num_prompts: int, prompts_per_call: int) -> list[slice]:
    """Consecutive slices ``[c * m, (c + 1) * m)`` of ``num_prompts`` prompts, ``m =
    prompts_per_call`` (the last may be shorter): the prompts of sampler call ``c``."""
    if prompts_per_call < 1:
        raise ValueError(f"prompts_per_call must be >= 1, got {prompts_per_call}")
    return [slice(s, min(s + prompts_per_call, num_prompts))
            for s in range(0, num_prompts, prompts_per_call)]


def majority_correct(answers: Sequence[Hashable | None], correct: np.ndarray) -> float:
    """maj@k of one prompt: the correctness of the most frequent answer among its ``k`` samples.

    ``answers``: ``[k]`` each sample's extracted answer (``rewards.extract_answers``), None where
    it has none; ``correct``: ``[k]`` each sample's correctness. Samples without an answer do not
    vote; ties go to the answer seen first; the winner's score is that of its first sample. No
    answer at all scores 0.
    """
    votes = collections.Counter(a for a in answers if a is not None)
    if not votes:
        return 0.0
    top = max(votes, key=lambda a: (votes[a], -answers.index(a)))
    return float(correct[answers.index(top)])


def evaluate(
    ctx: Any, params: Any, key: jax.Array, settings: EvalSettings, *, k: int = 0
) -> dict[str, float]:
    """Scores the policy ``params`` on ``ctx.eval_examples`` with the correctness reward.

    Returns ``pass@1`` (greedy), and with ``k > 1`` also ``pass@k`` (any of ``k`` samples at the
    rollout temperature is correct) and ``maj@k`` (``majority_correct``: the vote is over the
    answers the correctness reward extracts, e.g. GSM8K's final number, not whole texts). Also the
    mean greedy response length, and the mean of every reward function of
    ``settings.rewards.weights`` over the greedy responses (``reward/<name>``).

    Sampler calls take at most ``R = settings.rows_per_call`` rows: greedy decoding ``R``
    prompts a call (the same texts as one call over all prompts, which greedy decoding does not
    depend on), sampling ``max(1, R // k)`` prompts a call, call ``c`` with the key
    ``fold_in(fold_in(key, 1), c)`` (so the draws are a function of ``key`` and ``R``).
    """
    examples = ctx.eval_examples
    correctness = settings.rewards.correctness
    weights = settings.rewards.weights
    sampling = settings.sampling
    rows_per_call = settings.rows_per_call
    prompts = ctx.encode_prompts(examples)
    texts, lengths = [], []
    for part in eval_chunks(len(prompts), rows_per_call):
        out = ctx.sampler.generate(params, prompts[part], key,
                                   max_new_tokens=sampling.max_new_tokens, greedy=True)
        # The whole output on every process (an all-gather when the mesh spans processes).
        texts += ctx.decode_responses(to_host(out.response_tokens), to_host(out.response_mask))
        lengths.append(to_host(out.response_lengths))
    correct = rewards.combine_rewards({correctness: 1.0}, texts, examples)[0]
    result = {
        "pass@1": float(np.mean(correct)),
        "length": float(np.mean(np.concatenate(lengths))),
    }
    if len(weights):
        per_fn = rewards.combine_rewards(dict(weights), texts, examples)[1]
        result.update({f"reward/{name}": float(np.mean(v)) for name, v in per_fn.items()})
    if k > 1:
        sample_key = jax.random.fold_in(key, 1)
        texts = []
        for c, part in enumerate(eval_chunks(len(prompts), max(1, rows_per_call // k))):
            out = ctx.sampler.generate(
                params,
                prompts[part],
                jax.random.fold_in(sample_key, c),
                n=k,
                max_new_tokens=sampling.max_new_tokens,
                temperature=sampling.temperature,
            )
            texts += ctx.decode_responses(to_host(out.response_tokens), to_host(out.response_mask))
        repeated = [ex for ex in examples for _ in range(k)]
        sample_correct = rewards.combine_rewards({correctness: 1.0}, texts, repeated)[0]
        sample_correct = sample_correct.reshape(len(examples), k)
        answers = rewards.extract_answers(correctness, texts)
        result[f"pass@{k}"] = float(np.mean(sample_correct.max(axis=1)))
        result[f"maj@{k}"] = float(np.mean([
            majority_correct(answers[i * k:(i + 1) * k], sample_correct[i])
            for i in range(len(examples))
        ]))
    return result
