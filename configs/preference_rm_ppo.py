r"""RLHF on a synthetic task with a hidden gold reward: SFT -> reward model from rankings -> PPO.

    python experiments/train.py --config=configs/preference_rm_ppo.py --workdir=/tmp/rlhf
    python experiments/train.py --config=configs/preference_rm_ppo.py:grpo --workdir=/tmp/rlhf_grpo
    python experiments/train.py --config=configs/preference_rm_ppo.py:rloo --workdir=/tmp/rlhf_rloo

The task asks for ``n`` digits (``"4 digits:"``); SFT teaches the format from random answers. A
hidden labeller (``digits_gold``: the mean digit value, minus a penalty per wrong character) ranks
``K = 4`` samples of the SFT policy per prompt, and a reward model started from the SFT policy
learns those rankings with InstructGPT's all-pairs loss. RL then maximises the learned reward,
normalised by its mean and std on the SFT policy's samples. The gold reward is never trained on:
``rewards.weights`` gives it weight 0, so it is only logged (``reward/digits_gold``) beside the
learned reward (``reward/model``) and the KL to the reference (``kl_ref``); over-optimisation shows
as the gold reward falling while the learned reward and the KL rise.

The argument picks the algorithm: ``ppo`` (default: critic started from the reward model, GAE, a k1
KL penalty in the token rewards), ``grpo`` or ``rloo`` (no critic, a k3 KL loss term).
"""

import ml_collections

from rl_jax.config import default_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    algorithm = arg or "ppo"
    if algorithm not in ("ppo", "grpo", "rloo"):
        raise ValueError(f"config argument {algorithm!r}: expected ppo, grpo or rloo")
    c = default_config()
    c.stages = ("sft", "rm", "rl")
    c.task.name = "digits"
    c.task.kwargs = ml_collections.ConfigDict(dict(min_digits=3, max_digits=6))
    c.rewards.weights = ml_collections.ConfigDict(dict(digits_gold=0.0))  # logged, not trained on
    c.rewards.correctness = "format"  # accuracy = well-formed answers (exactly n digits)
    c.rewards.model_weight = 1.0
    c.sft.stop_accuracy = 0.9
    c.eval.k = 0
    c.eval.every = 50  # every stage: SFT stops at an eval step; RL is evaluated at 50 and 100

    c.rm.data = "synthetic"
    c.rm.num_prompts = 2048
    c.rm.num_responses = 4
    c.rm.gold = "digits_gold"
    c.rm.loss = "ranking"
    c.rm.steps = 300

    c.rl.steps = 100
    c.rl.num_prompts = 64
    c.rl.group_size = 4
    c.rl.num_minibatches = 4
    c.log.every = 10
    c.log.samples_every = 25
    if algorithm == "ppo":
        c.rl.estimator = "gae"
        c.rl.critic_init = "reward_model"
        c.rl.epochs = 2
        c.rl.whiten_advantages = True
        c.kl.coef = 0.05
        c.kl.in_reward = True
        c.loss.vf_coef = 0.5
    else:
        c.rl.estimator = algorithm
        c.kl.coef = 0.05  # a k3 loss term (GRPO's beta)
    return c
