r"""GSM8K with GRPO from a Hugging Face checkpoint (a local directory; nothing is downloaded).

    python experiments/train.py --config=configs/gsm8k_grpo.py --workdir=/tmp/gsm8k \
        --config.model.path=/path/to/Qwen2.5-0.5B-Instruct \
        --config.task.kwargs.path=/path/to/gsm8k/train.jsonl

DeepSeekMath's GRPO: 8 samples per prompt, group-normalised advantages, k3 KL to the reference
with beta 0.04, sequence-mean-token-mean loss; reward 1 for the right number after ``####`` plus
0.1 for the format.
"""

import ml_collections

from rl_jax.config import default_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    c = default_config()
    c.stages = ("rl",)
    c.task.name = "gsm8k"
    c.task.kwargs = ml_collections.ConfigDict(dict(path="", eval_size=256))
    c.model.path = ""  # required: a local Hugging Face directory
    c.model.dtype = "bfloat16"
    c.rollout.max_new_tokens = 256
    c.rewards.weights = ml_collections.ConfigDict(dict(gsm8k=1.0, format=0.1))
    c.rewards.correctness = "gsm8k"
    c.rl.num_prompts = 16
    c.rl.group_size = 8
    c.rl.optim.lr = 1e-6
    c.rl.optim.warmup_steps = 10
    c.kl.coef = 0.04
    c.loss.agg = "seq-mean-token-mean"
    c.eval.num_examples = 128
    return c
