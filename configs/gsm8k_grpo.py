r"""GSM8K with GRPO from a pretrained model (a local directory or .gguf file; nothing downloads).

    python experiments/train.py --config=configs/gsm8k_grpo.py --workdir=/tmp/gsm8k \
        --config.model.path=/path/to/Qwen2.5-0.5B-Instruct \
        --config.task.kwargs.path=/path/to/gsm8k/train.jsonl

DeepSeekMath's GRPO: 8 samples per prompt, group-normalised advantages, k3 KL to the reference
with beta 0.04, sequence-mean-token-mean loss; reward 1 for the right number after ``####`` plus
0.1 for the format.

Prompts go through the model's chat template (``task.chat_template=True``, for an instruct model):
the question is the user's turn and ``task.system_prompt`` asks for the ``#### <number>`` line that
the reward reads. A model path is required, and its tokenizer must have a chat template. For a
base model, ``gsm8k_grpo.py:plain`` writes the plain ``"Question: ...\nAnswer:\n"`` prompt
instead (after BOS).

The data defaults to the 200-question fixture ``tests/fixtures/gsm8k_200.jsonl`` (50 held out);
with the real training file (7,473 questions) the same held-out size applies unless overridden
(``--config.task.kwargs.eval_size``, ``--config.eval.num_examples``).
"""

from pathlib import Path

import ml_collections

from rl_jax.config import default_config

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "gsm8k_200.jsonl"
SYSTEM_PROMPT = (
    "Solve the math problem step by step. End your reply with a last line '#### <number>' "
    "holding only the final numeric answer."
)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """``arg``: None or "chat" (the chat template), or "plain" (no template: base models)."""
    if arg not in (None, "", "chat", "plain"):
        raise ValueError(f"configs/gsm8k_grpo.py:{arg}: expected 'chat' (default) or 'plain'")
    chat = arg != "plain"
    c = default_config()
    c.stages = ("rl",)
    c.task.name = "gsm8k"
    c.task.kwargs = ml_collections.ConfigDict(dict(path=str(FIXTURE), eval_size=50))
    if chat:
        c.task.kwargs.template = "{question}"  # the user's turn is the question itself
    c.task.chat_template = chat
    c.task.system_prompt = SYSTEM_PROMPT if chat else ""
    c.model.path = ""  # required: a local Hugging Face directory or .gguf file
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
    c.eval.num_examples = 50  # <= task.kwargs.eval_size
    return c
