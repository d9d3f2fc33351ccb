r"""The default experiment: a small transformer learns 3-digit addition, SFT then GRPO.

    python experiments/train.py --config=configs/arithmetic_grpo.py --workdir=/tmp/arith

SFT stops when greedy held-out accuracy reaches ``sft.stop_accuracy`` (a start with signal for
GRPO), then GRPO trains on exact-match rewards. The answer is written reversed (least significant
digit first), which makes addition learnable for a 2-layer model. Every field is documented in
``rl_jax/config.py``; override any, e.g. ``--config.rl.steps=100 --config.loss.clip_high=0.28``.

``model.logits_chunk=0``: with a 259-token vocabulary the full logits are small. The chunked LM
head (the library default, for large vocabularies) changes float rounding, and how soon SFT leaves
its loss plateau depends on that rounding: with the full logits seed 0 leaves it (docs/results.md).
"""

import ml_collections

from rl_jax.config import default_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    c = default_config()
    c.model.logits_chunk = 0
    return c
