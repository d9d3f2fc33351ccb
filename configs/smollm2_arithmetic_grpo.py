r"""GRPO from the pretrained SmolLM2-135M-Instruct on arithmetic questions in words (float32, CPU).

    python tools/fetch_model.py   # once: ~/.cache/rl_jax/SmolLM2-135M-Instruct.Q4_1.gguf
    python experiments/train.py --config=configs/smollm2_arithmetic_grpo.py --workdir=/tmp/smollm2
    python experiments/train.py --config=configs/smollm2_arithmetic_grpo.py:shuffled \
        --workdir=/tmp/smollm2_shuffled      # the control: rewards permuted across each batch

Prompts ``"What is 13 + 8? Answer with the number only."`` (operands 0..20) go through the model's
chat template (the GGUF's ChatML, with its default system prompt); the reward is 1 when the last
number of the reply equals the sum (``last_number``: lenient, so ``"13 + 8 = 21"`` counts). About
a quarter of the 441 questions are held out by a fixed hash of the unordered pair, so a held-out
``a + b`` is never trained on in either order; evaluation draws only from the held-out questions.
The base model answers some of these questions and misses others (docs/results.md), so groups of 8
samples carry signal. No SFT stage and no reference model (kl.coef = 0); everything in float32
(bf16 is slower than float32 on a CPU). ``:ppo`` swaps GRPO for PPO with a critic (GAE).
Another model or location: ``--config.model.path=FILE.gguf`` (or a Hugging Face directory).
"""

from pathlib import Path

import ml_collections

from rl_jax.config import default_config

# Where tools/fetch_model.py puts the model.
SMOLLM2_GGUF = Path.home() / ".cache" / "rl_jax" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variants = ("grpo", "shuffled", "ppo")
    arg = arg or "grpo"
    if arg not in variants:
        raise ValueError(f"smollm2_arithmetic_grpo.py:{arg}: expected one of {variants}")
    c = default_config()
    c.stages = ("rl",)
    c.task.name = "word_arithmetic"
    c.task.kwargs = ml_collections.ConfigDict(
        dict(ops=("+",), min_value=0, max_value=20, eval_fraction=0.25)
    )
    c.task.chat_template = True
    c.model.path = str(SMOLLM2_GGUF)
    c.model.dtype = "float32"
    c.model.logits_chunk = 32  # live logits [rows, 32, 49152] float32: the vocabulary is large
    c.rollout.max_new_tokens = 32
    c.rollout.temperature = 1.0
    c.rewards.weights = ml_collections.ConfigDict(dict(last_number=1.0))
    c.rewards.correctness = "last_number"
    c.rl.steps = 40
    c.rl.num_prompts = 4
    c.rl.group_size = 8
    c.rl.num_minibatches = 2  # 2 AdamW updates of 16 responses a step
    c.rl.optim.lr = 1e-5
    c.rl.optim.warmup_steps = 0
    c.rl.shuffle_rewards = arg == "shuffled"
    c.kl.coef = 0.0
    c.loss.agg = "token-mean"
    c.eval.num_examples = 128
    c.eval.every = 3
    c.eval.k = 0  # greedy pass@1 only (sampling k answers per prompt costs k rollouts here)
    c.checkpoint.every = 3
    c.log.every = 1
    c.log.samples_every = 3
    if arg == "ppo":
        c.rl.estimator = "gae"
        c.rl.group_size = 1
        c.rl.num_prompts = 64
    return c
