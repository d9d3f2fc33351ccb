r"""Addition with PPO: a critic, GAE, the KL penalty in the reward (adaptive), the EOS trick.

    python experiments/train.py --config=configs/arithmetic_ppo.py --workdir=/tmp/arith_ppo

The same SFT stage as the default experiment, then PPO in the style of "N implementation details
of RLHF with PPO": the critic starts from the SFT policy, the score sits on the last token, a k1
KL penalty to the reference is added to every token's reward, advantages are whitened, and a
response that runs out of tokens without EOS scores -1.
"""

import ml_collections

from rl_jax.config import default_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    c = default_config()
    c.rl.estimator = "gae"
    c.rl.group_size = 1  # PPO needs no groups; more prompts instead
    c.rl.num_prompts = 256
    c.rl.epochs = 2
    c.rl.whiten_advantages = True
    c.rl.eos_trick = True
    c.kl.coef = 0.05
    c.kl.in_reward = True
    c.kl.target = 0.5
    c.loss.vf_coef = 0.5
    return c
