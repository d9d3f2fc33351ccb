r"""A reward model on Anthropic HH-RLHF pairs (the shipped 400-row fixture): tiny, from scratch.

    python experiments/train.py --config=configs/hh_rm.py --workdir=/tmp/hh_rm

A smoke run of the real data path: dialogues split at the last ``"\n\nAssistant:"`` into a prompt
and the chosen / rejected responses, a byte-level BPE trained on the dialogues, prompts cut from
the left to fit the context, the Bradley-Terry pairwise loss, held-out pair accuracy on 100 pairs.
A from-scratch model this small learns little about harmlessness: above chance is the bar.
Point ``rm.path`` (and ``task.kwargs.path``) at another file of the same format to train on it,
e.g. the full ``harmless-base/test.jsonl.gz``.
"""

import ml_collections

from rl_jax.config import default_config
from rl_jax.data import HH_RLHF_PATH


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    c = default_config()
    c.stages = ("rm",)
    # The task supplies the tokenizer's training text (prompt + chosen response).
    c.task.name = "hh_rlhf"
    c.task.kwargs = ml_collections.ConfigDict(dict(path=str(HH_RLHF_PATH)))
    c.model.vocab_size = 1024
    c.model.max_len = 512
    c.eval.num_examples = 0
    c.rm.data = "hh_rlhf"
    c.rm.path = str(HH_RLHF_PATH)
    c.rm.skip_invalid = True
    c.rm.truncate_prompts = True
    c.rm.eval_size = 100
    c.rm.loss = "pairwise"
    c.rm.steps = 100
    c.rm.batch_size = 16
    c.eval.every = 25
    c.rm.optim.lr = 1e-4  # the 300 training pairs are memorised within ~100 steps at 3e-4
    return c
