"""The fields of an experiment config (``configs/*.py`` start from ``default_config()``).

The defaults are the default experiment: a small transformer learns 3-digit addition from scratch,
SFT then GRPO. Every field is read by ``rl_jax.trainers``; a config file or a command-line
override (``--config.loss.clip_high=0.28``) changes it, and an unknown field is an error.
"""

import ml_collections

from rl_jax.optim import optim_config


def default_config() -> ml_collections.ConfigDict:
    """Every field of an experiment config, with its meaning; configs/*.py override some."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.stages = ("sft", "rl")  # of "sft", "rm", "rl", run in that order; a finished one is skipped

    c.task = ml_collections.ConfigDict()
    c.task.name = "addition"  # rl_jax.data.make_task name
    c.task.kwargs = ml_collections.ConfigDict(dict(min_value=10, max_value=999))

    c.model = ml_collections.ConfigDict()
    c.model.path = ""  # a local Hugging Face directory, or "" for a fresh model trained here
    c.model.model_type = "qwen2"
    c.model.vocab_size = 259  # of the byte-level BPE trained on the task (259 = bytes + 3 special)
    c.model.hidden_size = 64
    c.model.intermediate_size = 256
    c.model.num_layers = 2
    c.model.num_heads = 4
    c.model.num_kv_heads = 2
    c.model.max_len = 64  # context of a fresh model
    c.model.init_std = 0.1  # of a fresh model (0.02, as in HF configs, trains slowly at width 64)
    c.model.dtype = "float32"
    c.model.remat = False

    c.rollout = ml_collections.ConfigDict()
    c.rollout.max_new_tokens = 8
    c.rollout.temperature = 1.0
    c.rollout.top_k = 0  # 0 = off
    c.rollout.top_p = 1.0  # 1.0 = off

    c.rewards = ml_collections.ConfigDict()
    c.rewards.weights = ml_collections.ConfigDict(dict(exact_match=1.0))  # name -> weight
    c.rewards.correctness = "exact_match"  # the reward that defines accuracy / pass@k
    # Weight of the learned reward (the "rm" stage's model, normalised) in the RL score; 0 = none.
    c.rewards.model_weight = 0.0

    c.sft = ml_collections.ConfigDict()
    c.sft.steps = 3000  # at most
    c.sft.batch_size = 64
    c.sft.eval_every = 50
    c.sft.stop_accuracy = 0.3  # greedy held-out accuracy that ends SFT
    c.sft.optim = optim_config(lr=3e-3, warmup_steps=50)
    c.sft.progress_bar = True  # tqdm bar on stderr

    c.rm = ml_collections.ConfigDict()  # the reward-model stage (rl_jax/trainers/reward_model.py)
    c.rm.data = "synthetic"  # synthetic | pairs | rankings | hh_rlhf (see rl_jax.data.preferences)
    c.rm.path = ""  # the preference file (not synthetic)
    c.rm.skip_invalid = False  # skip (and count) malformed rows and rows too long, don't fail
    c.rm.truncate_prompts = False  # cut prompts from the left to fit the context (else an error)
    c.rm.eval_size = 256  # held-out prompts (file rows, or synthetic prompts with gold labels)
    c.rm.num_prompts = 2048  # synthetic: training prompts
    c.rm.num_responses = 4  # synthetic: K policy samples ranked per prompt
    c.rm.gold = "digits_gold"  # synthetic: the reward function that plays the labeller
    c.rm.label_noise = 0.0  # synthetic: Gumbel scale of the labeller's noise (0 = noiseless)
    c.rm.loss = "ranking"  # pairwise (K = 2, with margins) | ranking (InstructGPT) | listwise (PL)
    c.rm.init_path = ""  # a Hugging Face directory to start from ("" = the policy after SFT)
    c.rm.steps = 500
    c.rm.batch_size = 32  # prompts a step, each with all its responses
    c.rm.eval_every = 100
    c.rm.optim = optim_config(lr=1e-3, warmup_steps=20)
    c.rm.progress_bar = True

    c.rl = ml_collections.ConfigDict()
    c.rl.steps = 1000
    c.rl.estimator = "grpo"  # gae | grpo | dr_grpo | rloo | reinforce_pp
    c.rl.num_prompts = 32
    c.rl.group_size = 8
    c.rl.epochs = 1  # passes over each rollout batch
    c.rl.num_minibatches = 4  # updates per pass
    c.rl.gamma = 1.0  # GAE / REINFORCE++ discount
    c.rl.lam = 0.95  # GAE lambda
    c.rl.whiten_advantages = False
    c.rl.whiten_rewards = False  # scale each batch's scores to unit variance (PPO-RLHF)
    c.rl.dynamic_sampling = False  # DAPO: drop groups with equal rewards and sample more
    c.rl.max_extra_rounds = 2  # cap on the extra sampling rounds of dynamic sampling
    c.rl.overlong_buffer = 0  # DAPO soft overlong punishment over the last N tokens (0 = off)
    c.rl.overlong_penalty = 1.0
    c.rl.eos_trick = False  # PPO: a response without EOS scores missing_eos_score
    c.rl.missing_eos_score = -1.0
    c.rl.critic_init = "policy"  # gae: the critic starts from the "policy" or the "reward_model"
    c.rl.optim = optim_config(lr=3e-4)
    c.rl.progress_bar = True

    c.loss = ml_collections.ConfigDict()
    c.loss.clip_low = 0.2
    c.loss.clip_high = 0.2  # > clip_low: DAPO clip-higher
    c.loss.dual_clip = 0.0  # > 1 enables dual clip (0 = off)
    c.loss.ratio_level = "token"  # token | sequence (GSPO)
    c.loss.agg = "token-mean"  # see rl_jax.AGG_MODES
    c.loss.vf_coef = 0.1  # value-loss weight (critic only)
    c.loss.value_clip = 0.2  # 0 = plain MSE
    c.loss.tis_cap = 0.0  # truncated importance sampling cap (0 = off)

    c.kl = ml_collections.ConfigDict()
    c.kl.coef = 0.0  # GRPO beta (in_reward=False) or PPO penalty (in_reward=True); 0 = no reference
    c.kl.estimator = "k3"  # of the KL loss term
    c.kl.in_reward = False  # PPO: -coef * k1 in the token rewards
    c.kl.target = 0.0  # > 0: adaptive coefficient (Ziegler et al.) aiming at this KL
    c.kl.horizon = 10000

    c.eval = ml_collections.ConfigDict()
    c.eval.num_examples = 256
    c.eval.every = 50
    c.eval.k = 4  # pass@k and maj@k with k samples (0 = greedy pass@1 only)

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every = 100
    c.checkpoint.keep = 2

    c.log = ml_collections.ConfigDict()
    c.log.every = 50
    c.log.samples_every = 100  # 0 = never
    return c
