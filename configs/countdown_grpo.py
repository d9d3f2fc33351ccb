r"""Countdown with 3 numbers: reach the target with + - * / (GRPO, clip-higher, token-mean).

    python experiments/train.py --config=configs/countdown_grpo.py --workdir=/tmp/countdown

Prompts look like ``"30,100,93>23:"``; the reward checks that the completion uses each number
once and evaluates to the target. Training problems are generated; ``eval`` uses the generator's
held-out stream (the shipped ``rl_jax/data/files/cd3_test.jsonl`` has the same distribution).
"""

import ml_collections

from rl_jax.config import default_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    c = default_config()
    c.task.name = "countdown"
    c.task.kwargs = ml_collections.ConfigDict(dict(num_numbers=3))
    c.model.hidden_size = 128
    c.model.intermediate_size = 512
    c.model.num_layers = 4
    c.rollout.max_new_tokens = 16
    c.rewards.weights = ml_collections.ConfigDict(dict(countdown=1.0, format=0.1))
    c.rewards.correctness = "countdown"
    c.sft.stop_accuracy = 0.2
    c.loss.clip_high = 0.28
    return c
