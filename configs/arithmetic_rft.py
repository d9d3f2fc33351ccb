r"""DeepSeekMath's unified paradigm (Shao et al. 2024, §5.2) on scratchpad addition: one RL loop,
four methods that differ only in their data source and gradient coefficient.

    python experiments/train.py --config=configs/arithmetic_rft.py:rft --workdir=/tmp/rft
    python experiments/train.py --config=configs/arithmetic_rft.py:online_rft --workdir=/tmp/orft
    python experiments/train.py --config=configs/arithmetic_rft.py:grpo --workdir=/tmp/grpo
    python experiments/train.py --config=configs/arithmetic_rft.py:grpo_process \
        --workdir=/tmp/grpo_process
    python experiments/train.py --config=configs/arithmetic_rft.py:grpo_prm --workdir=/tmp/prm
    python experiments/train.py --config=configs/arithmetic_rft.py:grpo_iterative \
        --workdir=/tmp/iterative

The task is ``addition_scratchpad`` (``rl_jax/data/scratchpad.py``): a response may write the
column sums as working notes before its reversed answer (``"15,12>521"`` for 58+67), and the
``final_answer`` reward reads the answer only. After SFT:

* ``rft``: responses sampled from the SFT policy (frozen), the correct ones fine-tuned on
  (``GC = I(o)``, ``loss.policy_loss='likelihood'``);
* ``online_rft``: the same, sampled from the policy being trained;
* ``grpo``: outcome supervision, ``GC = (r - mean) / std`` of the group;
* ``grpo_process``: process supervision with the task's gold step checker (each note and the
  answer is a step, rewarded 1 when it is right: ``rl.step_rewards='gold'``);
* ``grpo_prm``: process supervision with a learned process reward model: the ``prm`` stage trains
  it on the SFT policy's samples labelled by the gold step checker, and RL rewards each step with
  its probability that the step is right (``rl.step_rewards='model'``);
* ``grpo_iterative``: ``grpo_prm`` with iterative RL (§4.2): every 50 RL steps the process reward
  model trains further on the current policy's samples, 10% of its training set replayed from
  the earlier rounds (``rl.reward_refresh_every``, ``rl.reward_replay``).

Every field is documented in ``rl_jax/config.py``.
"""

import ml_collections

from rl_jax.config import default_config

VARIANTS = ("rft", "online_rft", "grpo", "grpo_process", "grpo_prm", "grpo_iterative")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = arg or "rft"
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
    c = default_config()
    c.model.logits_chunk = 0  # as configs/arithmetic_grpo.py: a small vocabulary
    c.task.name = "addition_scratchpad"
    c.rewards.weights = {"final_answer": 1.0}
    c.rewards.correctness = "final_answer"
    c.rollout.max_new_tokens = 20  # a full scratchpad is at most 14 tokens, EOS included
    c.rl.steps = 200
    c.rl.estimator = "grpo_process" if variant.startswith("grpo_") else variant
    if variant in ("rft", "online_rft"):
        c.loss.policy_loss = "likelihood"
    if variant == "grpo_process":
        c.rl.step_rewards = "gold"
    if variant in ("grpo_prm", "grpo_iterative"):
        c.stages = ("sft", "prm", "rl")
        c.rl.step_rewards = "model"
    if variant == "grpo_iterative":
        c.rl.reward_refresh_every = 50
        c.rl.reward_replay = 0.1
    return c
