"""The fields of an experiment config (``configs/*.py`` start from ``default_config()``).

The defaults are the default experiment: a small transformer learns 3-digit addition from scratch,
SFT then GRPO. A config file or a command-line override (``--config.loss.clip_high=0.28``)
changes a field, and an unknown field is an error. ``check_config`` validates the whole config
before any stage runs; ``trainers.run`` calls it, then reads every field once into typed settings
(``rl_jax.settings.RunSettings.from_config``), which the stages receive.

Fields shared by every stage (SFT, reward model, RL):
  * ``eval.every``: the evaluation cadence of every stage (and the last step of each);
  * ``log.every``, ``log.samples_every``, ``log.progress_bar``: one summary line, sample texts,
    the tqdm bar on stderr;
  * ``checkpoint.every`` / ``checkpoint.keep``;
  * PRNG keys: every random draw comes from ``fold_in(fold_in(key(seed), stream), step)`` with a
    named stream (``"sft"``, ``"rm"``, ``"prm"``, ``"rl"``, and ``"eval/<stage>"`` for each
    stage's evaluation at step ``step``): see ``rl_jax.trainers.setup.stage_key``.
"""

from __future__ import annotations

import os
import typing
from collections.abc import Mapping

import ml_collections

from rl_jax import algorithm, data, rewards
from rl_jax.kl import KLEstimator
from rl_jax.losses import AGG_MODES
from rl_jax.models import LORA_TARGETS, SUPPORTED_MODEL_TYPES
from rl_jax.models.config import REMAT_POLICIES
from rl_jax.optim import SCHEDULES, optim_config
from rl_jax.reward_losses import RM_LOSSES

STAGES = ("sft", "rm", "prm", "rl")
# The algorithm's choices are the names registered in rl_jax.algorithm.registry.
ESTIMATORS = tuple(algorithm.ESTIMATORS)
POLICY_LOSSES = tuple(algorithm.POLICY_LOSSES)
IS_CORRECTIONS = (algorithm.NO_CORRECTION, *algorithm.IS_CORRECTIONS)
# Estimators with a baseline from the other responses of a prompt.
GROUP_ESTIMATORS = tuple(name for name, e in algorithm.ESTIMATORS.items() if e.grouped)
RM_COMPARISONS = ("grouped", "shuffled_pairs")
RM_DATA = ("synthetic",) + data.PREFERENCE_FORMATS
# rl.step_rewards: none, the task's gold step checker, or the "prm" stage's model.
STEP_REWARDS = ("none", "gold", "model")
DTYPES = ("float32", "bfloat16", "float16")
PARAM_DTYPES = ("float32", "bfloat16")


def default_config() -> ml_collections.ConfigDict:
    """Every field of an experiment config, with its meaning; configs/*.py override some."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.stages = ("sft", "rl")  # of STAGES, in that order; a finished one is only restored

    c.task = ml_collections.ConfigDict()
    c.task.name = "addition"  # rl_jax.data.make_task name
    c.task.kwargs = ml_collections.ConfigDict(dict(min_value=10, max_value=999))
    # Prompts as the user's turn of the tokenizer's chat template (instruct models; needs
    # model.path), ending with the assistant's header; the rewards read the reply only.
    c.task.chat_template = False
    c.task.system_prompt = ""  # with chat_template: a system message first ("" = none)

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
    # Compute dtype of activations (bfloat16: each layer casts the weights at use); log-probs,
    # softmax and losses are float32 whatever it is.
    c.model.dtype = "float32"
    # Storage dtype of the parameters, hence of the optimizer state: float32 master weights.
    # bfloat16 storage rounds small updates away (AdamW at lr 1e-6 moves few bf16 weights).
    c.model.param_dtype = "float32"
    # LoRA (rl_jax.models.lora): adapters W + (alpha / rank) A B on the named projections; only
    # they train (the base is frozen: the reference policy with the adapters off). rank 0 = off.
    c.model.lora = ml_collections.ConfigDict()
    c.model.lora.rank = 0
    c.model.lora.alpha = 16.0
    c.model.lora.targets = LORA_TARGETS  # a non-empty subset of LORA_TARGETS (HF module names)
    # Per-layer activation checkpointing (jax.checkpoint policy): none | full (recompute each
    # layer in the backward) | dots_saveable | dots_with_no_batch_dims_saveable (keep matmuls)
    c.model.remat = "none"
    # Decoder layers stacked ([num_layers, ...] params) and run in one lax.scan (MaxText's
    # scan_layers): one compiled layer body; HF/GGUF files are converted when loaded and saved.
    c.model.scan_layers = False
    # Positions per chunk of the LM head in the losses: the live logits are [batch, chunk, vocab]
    # float32, never [batch, time, vocab] (rl_jax.chunked); 0 = the whole sequence at once.
    c.model.logits_chunk = 128
    # The training forward's attention: matmul (rl_jax's) | xla | cudnn (both through
    # jax.nn.dot_product_attention; cudnn needs a GPU and dtype=bfloat16). Fresh models only.
    c.model.attention_impl = "matmul"

    c.rollout = ml_collections.ConfigDict()
    c.rollout.max_new_tokens = 8
    c.rollout.temperature = 1.0
    c.rollout.top_k = 0  # 0 = off
    c.rollout.top_p = 1.0  # 1.0 = off
    # More ids that end a response (e.g. Llama 3's <|eot_id|>), added to the tokenizer's, the
    # model config's and generation_config.json's EOS ids (rl_jax.trainers.setup.resolve_eos_ids).
    c.rollout.extra_eos_ids = ()

    c.rewards = ml_collections.ConfigDict()
    c.rewards.weights = ml_collections.ConfigDict(dict(exact_match=1.0))  # name -> weight
    c.rewards.correctness = "exact_match"  # the reward that defines accuracy / pass@k
    # Weight of the learned reward (the "rm" stage's model, normalised) in the RL score; 0 = none.
    c.rewards.model_weight = 0.0

    c.sft = ml_collections.ConfigDict()
    c.sft.steps = 3000  # at most
    c.sft.batch_size = 64
    c.sft.stop_accuracy = 0.3  # greedy held-out accuracy (at an eval step) that ends SFT
    c.sft.optim = optim_config(lr=3e-3, warmup_steps=50)

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
    # grouped: a batch element is a prompt with all its K responses (InstructGPT) | shuffled_pairs:
    # each ranking expanded into its K(K-1)/2 pairs, shuffled across the data, batches of pairs
    c.rm.comparisons = "grouped"
    c.rm.init_path = ""  # a Hugging Face directory to start from ("" = the policy after SFT)
    c.rm.steps = 500
    c.rm.batch_size = 32  # prompts a step, each with all its responses
    c.rm.optim = optim_config(lr=1e-3, warmup_steps=20)

    # The process reward model stage (rl_jax/trainers/process_reward.py): num_responses samples of
    # the policy (after SFT) for each of num_prompts training prompts, every step labelled by the
    # task's gold step checker; per-step binary cross-entropy on the step-end tokens.
    c.prm = ml_collections.ConfigDict()
    c.prm.num_prompts = 256
    c.prm.num_responses = 4
    c.prm.eval_size = 64  # held-out prompts (of the evaluation set), labelled the same way
    c.prm.steps = 200
    c.prm.batch_size = 32  # responses a step
    c.prm.optim = optim_config(lr=1e-3, warmup_steps=20)

    c.rl = ml_collections.ConfigDict()
    c.rl.steps = 1000
    # gae (PPO) | grpo | dr_grpo | rloo | reinforce_pp (return-to-go, whitened; no baseline) |
    # reinforce_pp_baseline (REINFORCE++ with a group baseline: centred per group, then whitened) |
    # rft (DeepSeekMath: SFT on the correct responses of the initial policy, sampled afresh each
    # step but never from the trained one) | online_rft (the same on the current policy's samples;
    # both need loss.policy_loss='likelihood') | grpo_process (GRPO on per-step rewards, with
    # rl.step_rewards)
    c.rl.estimator = "grpo"
    # Per-step rewards for grpo_process: none | gold (the task's gold step checker,
    # rl_jax.data.steps.STEP_CHECKERS) | model (the "prm" stage's process reward model: sigmoid of
    # its logit at each step's last token, the steps from rl_jax.data.steps.STEP_SEGMENTERS)
    c.rl.step_rewards = "none"
    # Iterative RL (DeepSeekMath §4.2, Figure 6): every N RL steps each learned reward RL reads
    # (the "rm" stage's with rewards.model_weight != 0 and rm.data='synthetic'; the "prm" stage's
    # with rl.step_rewards='model') trains further, with its stage's settings, on new samples of
    # the current policy plus a share reward_replay of its earlier training data; then RL
    # continues (rl_jax/trainers/reward_rounds.py). 0 = off.
    c.rl.reward_refresh_every = 0
    c.rl.reward_replay = 0.1  # the share of replayed (earlier) items in a refresh's training set
    c.rl.num_prompts = 32
    c.rl.group_size = 8
    c.rl.epochs = 1  # passes over each rollout batch
    c.rl.num_minibatches = 4  # updates per pass
    c.rl.gamma = 1.0  # GAE / REINFORCE++ discount
    c.rl.lam = 0.95  # GAE lambda
    c.rl.whiten_advantages = False
    c.rl.whiten_rewards = False  # scale each batch's scores to unit variance (PPO-RLHF)
    c.rl.dynamic_sampling = False  # DAPO: drop groups with equal rewards and sample more
    # Control run: permute the training scores across the batch (seeded), so they carry no signal;
    # accuracy and reward metrics still report the true scores.
    c.rl.shuffle_rewards = False
    c.rl.max_extra_rounds = 2  # cap on the extra sampling rounds of dynamic sampling
    c.rl.overlong_buffer = 0  # DAPO soft overlong punishment over the last N tokens (0 = off)
    # DAPO overlong filtering: responses without EOS within max_new_tokens count in no loss term
    # (their group still sets the advantage baseline; see algorithm.step.overlong_filter_mask)
    c.rl.overlong_filter = False
    c.rl.overlong_penalty = 1.0
    c.rl.eos_trick = False  # PPO: a response without EOS scores missing_eos_score
    c.rl.missing_eos_score = -1.0
    c.rl.critic_init = "policy"  # gae: the critic starts from the "policy" or the "reward_model"
    # Shared-prefix forward (rl_jax.models.prefix): each prompt runs once for its group_size
    # responses in prepare, the update and the reference (and the critic); the update then
    # shuffles whole groups into minibatches. Needs group_size >= 2.
    c.rl.shared_prefix = False
    c.rl.optim = optim_config(lr=3e-4)
    # Off-policy rollouts (rl_jax.trainers.staleness): the rollouts trained on at step s were
    # sampled by the policy of step s - max_staleness (0 = on-policy: sample, then train). The
    # behaviour log-probs of loss.is_correction are then the sampling policy's.
    c.rl.max_staleness = 0
    # With max_staleness >= 1, what happens to leftover groups (dynamic sampling's surplus) that
    # would be trained on more than max_staleness steps after they were sampled: "wait" (never
    # kept: a short batch waits for fresh rounds), "drop" (kept in a buffer, dropped once too old)
    # or "keep" (kept, trained on with loss.is_correction). "" = not set (max_staleness = 0).
    c.rl.stale_policy = ""
    # Divergence guard: stop the run (before the step is checkpointed) when a step's approx_kl,
    # the k3 estimate of KL(pi_old || pi) between the rollout policy and the policy being updated,
    # averaged over the step's minibatch updates, exceeds this (nats/token; 0 = off). Healthy PPO
    # steps stay near 1e-3..1e-2. Blind when rl.epochs * rl.num_minibatches == 1 (one update: it
    # is measured before the update, always 0).
    c.rl.max_approx_kl = 1.0

    c.loss = ml_collections.ConfigDict()
    # ppo (clipped ratio) | cispo (MiniMax-M1: clipped, stop-gradient weight on every token's
    # log-prob) | gmpo (geometric mean of token ratios, clipped in log space) | clip_cov | kl_cov
    # (Cui et al. 2025: detach, or KL-penalise, the tokens of largest log-prob/advantage covariance)
    # | sapo (Gao et al. 2025: a soft sigmoid gate on the ratio in place of the clip) | likelihood
    # (-A * log pi, no ratio or clip: the SFT-like loss of rft and online_rft)
    c.loss.policy_loss = "ppo"
    c.loss.clip_low = 0.2
    c.loss.clip_high = 0.2  # > clip_low: DAPO clip-higher
    c.loss.dual_clip = 0.0  # > 1 enables dual clip (0 = off)
    c.loss.ratio_level = "token"  # token | sequence (GSPO) | sequence-token (GSPO-token); ppo only
    c.loss.count_empty_rows = False  # True: empty responses count in seq-mean denominators (TRL)
    c.loss.gmpo_clip = 0.4  # gmpo: clip of the token log-ratio, in log space
    c.loss.cov_ratio = 2e-4  # clip_cov: share of tokens detached; kl_cov: share penalised
    c.loss.cov_lower = 1.0  # clip_cov: the covariance band its tokens are drawn from
    c.loss.cov_upper = 5.0
    c.loss.kl_cov_coef = 1.0  # kl_cov: weight of |log ratio| on the chosen tokens
    # sapo: temperatures of the soft gate for positive / other advantages (the paper's values)
    c.loss.sapo_tau_pos = 1.0
    c.loss.sapo_tau_neg = 1.05
    c.loss.agg = "token-mean"  # see rl_jax.AGG_MODES
    c.loss.vf_coef = 0.1  # value-loss weight (critic only)
    c.loss.value_clip = 0.2  # 0 = plain MSE
    # Sampler/trainer mismatch (rl_jax.mismatch), with the sampler's log-probs: none | token_tis
    # (truncated IS) | seq_tis (sequence TIS) | token_mis (IcePop: tokens outside the band masked) |
    # seq_mis (responses whose ratio product leaves the band masked) | seq_mis_geo (geometric mean)
    c.loss.is_correction = "none"
    c.loss.is_cap = 2.0  # token_tis / seq_tis truncation
    c.loss.is_low = 0.5  # *_mis: the band [is_low, is_high] the ratio must stay in
    c.loss.is_high = 2.0

    c.kl = ml_collections.ConfigDict()
    c.kl.coef = 0.0  # GRPO beta (in_reward=False) or PPO penalty (in_reward=True); 0 = no reference
    c.kl.estimator = "k3"  # of the KL loss term
    c.kl.in_reward = False  # PPO: -coef * k1 in the token rewards
    c.kl.target = 0.0  # > 0: adaptive coefficient (Ziegler et al.) aiming at this KL
    c.kl.horizon = 10000

    c.eval = ml_collections.ConfigDict()
    c.eval.num_examples = 256
    c.eval.every = 50  # every stage's evaluation cadence (0 = only at a stage's last step)
    c.eval.k = 4  # pass@k and maj@k with k samples (0 = greedy pass@1 only)

    c.memory = ml_collections.ConfigDict()  # the start-up estimate (rl_jax.memory)
    # GiB a device may use; 0 = the device's own bytes_limit (none on CPU: then nothing is checked)
    c.memory.device_gb = 0.0
    c.memory.check = True  # raise before compiling when the estimate exceeds it (False: print only)

    c.mesh = ml_collections.ConfigDict()  # how the run's devices are used (rl_jax.parallel)
    # Devices of the RL sampler's own mesh (the last ones); the trainer keeps the others. Weights
    # go to the sampler after each update; with rl.max_staleness >= 1 the sampling of step s + k
    # runs while step s trains. 0 = the sampler shares the trainer's devices.
    c.mesh.rollout_devices = 0

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every = 100
    c.checkpoint.keep = 2

    c.log = ml_collections.ConfigDict()
    c.log.every = 50
    c.log.samples_every = 100  # 0 = never
    c.log.progress_bar = True  # a tqdm bar on stderr for each stage
    return c


class ConfigError(ValueError):
    """A config value that is not allowed: names every bad field, its value and what is allowed."""


def check_config(config: ml_collections.ConfigDict, num_devices: int = 1) -> None:
    """Validates every field ``config.stages`` reads, before any model is built or data loaded.

    Args:
      config: the experiment config.
      num_devices: the devices of the mesh the run will use (batches must split evenly over them).

    Raises:
      ConfigError: listing every bad field as ``config.<field> = <value>: expected ...``.
    """
    errors: list[str] = []

    def bad(field: str, value, expected: str) -> None:
        errors.append(f"config.{field} = {value!r}: expected {expected}")

    def choice(field: str, allowed) -> None:
        value = _get(config, field)
        if value not in allowed:
            bad(field, value, "one of " + ", ".join(repr(a) for a in allowed))

    def at_least(field: str, low: float) -> None:
        value = _get(config, field)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= low:
            bad(field, value, f"a number >= {low}")

    def divides(field: str, size: int, what: str) -> None:
        if size % num_devices:
            expected = f"{what} = {size} to be a multiple of the {num_devices} devices"
            bad(field, _get(config, field), expected)

    stages = tuple(config.stages)
    rollout_devices = config.mesh.rollout_devices
    if isinstance(rollout_devices, bool) or not isinstance(rollout_devices, int) or not (
        0 <= rollout_devices < num_devices
    ):
        bad("mesh.rollout_devices", rollout_devices, f"an int in [0, {num_devices}) (the "
            f"sampler's devices; the trainer keeps the rest of the {num_devices})")
    elif rollout_devices:
        rows = config.rl.num_prompts * config.rl.group_size
        if rows % rollout_devices:
            bad("mesh.rollout_devices", rollout_devices, f"a divisor of the rollout batch "
                f"rl.num_prompts * rl.group_size = {rows} (the sampler splits its rows)")
        if "rl" not in stages:
            bad("mesh.rollout_devices", rollout_devices, "0 without an 'rl' stage (only RL "
                "samples on its own devices)")
        num_devices -= rollout_devices  # every batch check below is of the trainer's devices
    if not stages or any(s not in STAGES for s in stages) or list(stages) != sorted(
        set(stages), key=STAGES.index
    ):
        bad("stages", stages, f"a non-empty subset of {STAGES}, in that order, without repeats")
    choice("task.name", sorted(data.TASKS))
    choice("model.model_type", SUPPORTED_MODEL_TYPES)
    choice("model.dtype", DTYPES)
    choice("model.param_dtype", PARAM_DTYPES)
    _check_lora(config, bad)
    choice("model.attention_impl", ("matmul", "xla", "cudnn"))
    choice("model.remat", REMAT_POLICIES)
    choice("model.scan_layers", (False, True))
    at_least("model.logits_chunk", 0)
    if config.model.attention_impl != "matmul" and config.model.path:
        bad("model.attention_impl", config.model.attention_impl, "'matmul' with model.path set "
            "(the option applies to a fresh model only)")
    if config.model.attention_impl == "cudnn" and config.model.dtype != "bfloat16":
        bad("model.attention_impl", "cudnn", "dtype='bfloat16' for cuDNN's kernels")
    model_path = config.model.path
    is_gguf_file = model_path.endswith(".gguf") and os.path.isfile(model_path)
    if model_path and not (os.path.isdir(model_path) or is_gguf_file):
        bad("model.path", model_path, "an existing local Hugging Face model directory "
            "(config.json, *.safetensors, tokenizer), a .gguf file, or '' for a fresh model")
    # (ConfigDict keeps each field's type: chat_template is a bool, system_prompt a str.)
    if config.task.chat_template and not model_path:
        bad("task.chat_template", True, "False without model.path (a tokenizer trained here has "
            "no chat template)")
    if config.task.system_prompt and not config.task.chat_template:
        bad("task.system_prompt", config.task.system_prompt, "'' with task.chat_template=False "
            "(a system message exists only in a chat template)")
    extra_eos = config.rollout.extra_eos_ids
    if not isinstance(extra_eos, tuple | list) or not all(
        isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in extra_eos
    ):
        bad("rollout.extra_eos_ids", extra_eos, "a tuple of token ids (ints >= 0)")
    path = config.task.kwargs.get("path", "")
    if path and not os.path.isfile(path):
        bad("task.kwargs.path", path, "an existing data file")
    for field in ("seed", "checkpoint.every", "checkpoint.keep", "log.every"):
        at_least(field, 0 if field == "seed" else 1)
    at_least("log.samples_every", 0)
    at_least("memory.device_gb", 0)
    choice("memory.check", (False, True))
    at_least("eval.every", 0)
    if "rl" in stages or "sft" in stages:
        at_least("rollout.max_new_tokens", 1)
        at_least("eval.num_examples", 1)
    if not isinstance(config.rl.shuffle_rewards, bool):
        bad("rl.shuffle_rewards", config.rl.shuffle_rewards, "True or False")
    rollout = config.rollout
    if not rollout.temperature > 0:
        bad("rollout.temperature", rollout.temperature, "a number > 0")
    if not 0 < rollout.top_p <= 1:
        bad("rollout.top_p", rollout.top_p, "a number in (0, 1] (1 = off)")
    at_least("rollout.top_k", 0)
    names = sorted(rewards.REWARD_FNS)
    for name in config.rewards.weights:
        if name not in rewards.REWARD_FNS:
            bad(f"rewards.weights.{name}", config.rewards.weights[name], f"a reward of {names}")
    choice("rewards.correctness", names)
    if "sft" in stages:
        _check_stage(config, "sft", at_least, divides, bad)
        if not 0 <= config.sft.stop_accuracy <= 1.01:
            bad("sft.stop_accuracy", config.sft.stop_accuracy, "a number in [0, 1] (> 1 = never)")
    if "rm" in stages:
        _check_stage(config, "rm", at_least, divides, bad)
        choice("rm.data", RM_DATA)
        choice("rm.loss", RM_LOSSES)
        choice("rm.comparisons", RM_COMPARISONS)
        choice("rm.gold", names)
        at_least("rm.num_responses", 2)
        at_least("rm.label_noise", 0)
        if config.rm.data != "synthetic" and not os.path.isfile(config.rm.path):
            bad("rm.path", config.rm.path,
                f"an existing preference file for rm.data={config.rm.data!r}")
        rm = config.rm
        if rm.loss == "pairwise" and rm.data == "synthetic" and rm.num_responses != 2:
            bad("rm.num_responses", config.rm.num_responses, "2 with rm.loss='pairwise'")
    if "prm" in stages:
        _check_stage(config, "prm", at_least, divides, bad)
        for field in ("prm.num_prompts", "prm.num_responses", "prm.eval_size"):
            at_least(field, 1)
        if config.task.name not in data.STEP_CHECKERS:
            bad("stages", stages, f"no 'prm' with task.name={config.task.name!r}: the task "
                "declares no steps to label (tasks with a gold step checker: "
                + ", ".join(sorted(data.STEP_CHECKERS)) + ")")
    if "rl" in stages:
        _check_rl(config, stages, choice, at_least, divides, bad)
    _check_ignored(config, stages, bad)
    if errors:
        raise ConfigError("invalid config:\n  " + "\n  ".join(errors))


def _check_lora(config, bad) -> None:
    """``model.lora``: an integer rank >= 0; with rank > 0, alpha > 0 and known targets."""
    lora = config.model.lora
    if isinstance(lora.rank, bool) or not isinstance(lora.rank, int) or lora.rank < 0:
        bad("model.lora.rank", lora.rank, "an integer >= 0 (0 = no adapters)")
        return
    if lora.rank == 0:
        return
    if config.model.scan_layers:
        bad("model.scan_layers", True, "False with model.lora.rank > 0 (adapters are added to "
            "listed layers only)")
    if isinstance(lora.alpha, bool) or not isinstance(lora.alpha, (int, float)) or not (
        lora.alpha > 0
    ):
        bad("model.lora.alpha", lora.alpha, "a number > 0 (the adapter scale is alpha / rank)")
    targets = lora.targets
    if isinstance(targets, str) or not targets or any(t not in LORA_TARGETS for t in targets):
        bad("model.lora.targets", targets, f"a non-empty tuple of {LORA_TARGETS}")
    elif len(set(targets)) != len(targets):
        bad("model.lora.targets", targets, "each projection once")


def _check_stage(config, name: str, at_least, divides, bad) -> None:
    """``<name>.steps``, ``<name>.batch_size`` and ``<name>.optim``."""
    section = config[name]
    at_least(f"{name}.steps", 1)
    at_least(f"{name}.batch_size", 1)
    batch = section.batch_size * (section.num_responses if name == "rm" else 1)
    divides(f"{name}.batch_size", batch, "the batch (rows)")
    _check_optim(config, f"{name}.optim", at_least, bad)


def _check_optim(config, field: str, at_least, bad) -> None:
    optim = _get(config, field)
    if optim.decay not in SCHEDULES:
        bad(f"{field}.decay", optim.decay, "one of " + ", ".join(map(repr, SCHEDULES)))
    if not optim.lr >= 0:
        bad(f"{field}.lr", optim.lr, "a number >= 0")
    for name in ("warmup_steps", "weight_decay", "max_grad_norm", "eps"):
        at_least(f"{field}.{name}", 0)
    at_least(f"{field}.grad_accum_steps", 1)
    for name in ("b1", "b2"):
        if not 0 <= optim[name] < 1:
            bad(f"{field}.{name}", optim[name], "a number in [0, 1)")


def _check_rl(config, stages, choice, at_least, divides, bad) -> None:
    rl, loss, kl = config.rl, config.loss, config.kl
    choice("rl.estimator", ESTIMATORS)
    choice("rl.critic_init", ("policy", "reward_model"))
    choice("rl.overlong_filter", (False, True))
    choice("rl.shared_prefix", (False, True))
    choice("loss.agg", AGG_MODES)
    choice("loss.ratio_level", ("token", "sequence", "sequence-token"))
    choice("loss.policy_loss", POLICY_LOSSES)
    choice("loss.is_correction", IS_CORRECTIONS)
    if loss.policy_loss != "ppo" and (loss.ratio_level != "token" or loss.dual_clip):
        bad("loss.policy_loss", loss.policy_loss, "'ppo' with loss.ratio_level != 'token' or "
            "loss.dual_clip (both are options of the clipped PPO objective)")
    for field in ("loss.gmpo_clip", "loss.cov_ratio", "loss.kl_cov_coef", "loss.sapo_tau_pos",
                  "loss.sapo_tau_neg"):
        if not _get(config, field) > 0:
            bad(field, _get(config, field), "a number > 0")
    if not loss.cov_lower < loss.cov_upper:
        bad("loss.cov_upper", loss.cov_upper, f"> loss.cov_lower = {loss.cov_lower}")
    if not loss.is_cap >= 1:
        bad("loss.is_cap", loss.is_cap, "a number >= 1")
    if not 0 <= loss.is_low <= 1 <= loss.is_high:
        bad("loss.is_low", (loss.is_low, loss.is_high), "0 <= loss.is_low <= 1 <= loss.is_high")
    choice("kl.estimator", typing.get_args(KLEstimator))
    for field in ("rl.steps", "rl.num_prompts", "rl.group_size", "rl.epochs", "rl.num_minibatches"):
        at_least(field, 1)
    for field in ("rl.max_approx_kl", "rl.max_extra_rounds", "rl.overlong_buffer",
                  "rl.overlong_penalty", "kl.coef",
                  "kl.target", "loss.vf_coef", "loss.value_clip"):
        at_least(field, 0)
    at_least("kl.horizon", 1)
    for field in ("loss.clip_low", "loss.clip_high"):
        at_least(field, 0)
    if not 0 <= loss.clip_low <= 1:
        bad("loss.clip_low", loss.clip_low, "a number in [0, 1] (1: no lower bound)")
    if loss.dual_clip and not loss.dual_clip > 1:
        bad("loss.dual_clip", loss.dual_clip, "0 (off) or a number > 1")
    for field in ("rl.lam", "rl.gamma"):
        if not 0 <= _get(config, field) <= 1:
            bad(field, _get(config, field), "a number in [0, 1]")
    if rl.estimator in GROUP_ESTIMATORS and rl.group_size < 2:
        bad("rl.group_size", rl.group_size, f">= 2 for the group estimator {rl.estimator!r}")
    budget = config.rollout.max_new_tokens
    if rl.overlong_buffer >= budget > 0:
        bad("rl.overlong_buffer", rl.overlong_buffer, f"< rollout.max_new_tokens = {budget}")
    rows = rl.num_prompts * rl.group_size
    divides("rl.num_prompts", rows, "rl.num_prompts * rl.group_size")
    if rl.num_minibatches >= 1 and rows % rl.num_minibatches:
        bad("rl.num_minibatches", rl.num_minibatches, f"a divisor of the rollout batch {rows}")
    elif rl.num_minibatches >= 1:  # each minibatch is split over the devices too
        divides("rl.num_minibatches", rows // rl.num_minibatches,
                "the rows of a minibatch, rl.num_prompts * rl.group_size / rl.num_minibatches,")
    if rl.shared_prefix is True:
        _check_shared_prefix(rl, divides, bad)
    _check_estimator(config, stages, choice, bad)
    _check_refresh(config, at_least, bad)
    token_rewards = [name for name, e in algorithm.ESTIMATORS.items() if e.uses_token_rewards]
    if kl.in_reward and kl.coef > 0 and rl.estimator not in token_rewards:
        bad("kl.in_reward", True, f"False with rl.estimator={rl.estimator!r} (a KL in the reward "
            "needs per-token rewards: gae or reinforce_pp; use a KL loss term instead)")
    critic = rl.estimator in algorithm.ESTIMATORS and algorithm.ESTIMATORS[rl.estimator].critic
    critic_from_rm = critic and rl.critic_init == "reward_model"
    needs_rm = config.rewards.model_weight != 0 or critic_from_rm
    if needs_rm and "rm" not in stages:
        bad("stages", tuple(stages), "to include 'rm' for rewards.model_weight != 0 or "
            "rl.critic_init='reward_model'")
    if not len(config.rewards.weights) and not config.rewards.model_weight:
        bad("rewards.weights", {}, "at least one reward (or rewards.model_weight > 0)")
    _check_optim(config, "rl.optim", at_least, bad)
    _check_staleness(config, at_least, bad)


STALE_POLICIES = ("wait", "drop", "keep")


def _check_staleness(config, at_least, bad) -> None:
    """``rl.max_staleness`` and ``rl.stale_policy`` (``rl_jax.trainers.staleness``)."""
    rl = config.rl
    at_least("rl.max_staleness", 0)
    k = rl.max_staleness
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        if rl.stale_policy != "":
            bad("rl.stale_policy", rl.stale_policy, "'' (the default) with rl.max_staleness = "
                f"{k!r} (on-policy: no sample is ever late)")
        return
    if rl.stale_policy not in STALE_POLICIES:
        bad("rl.stale_policy", rl.stale_policy, "one of " + ", ".join(map(repr, STALE_POLICIES))
            + f" with rl.max_staleness = {k} (what happens to samples older than that)")
    elif rl.stale_policy != "wait" and not rl.dynamic_sampling:
        bad("rl.stale_policy", rl.stale_policy, "'wait' without rl.dynamic_sampling=True (only "
            "its surplus groups can outlive the staleness bound)")
    if algorithm.ESTIMATORS.get(rl.estimator) and algorithm.ESTIMATORS[rl.estimator].sampler \
            == "reference":
        bad("rl.max_staleness", k, f"0 with rl.estimator={rl.estimator!r} (it samples the "
            "frozen initial policy: no policy version to be stale)")


def _check_shared_prefix(rl, divides, bad) -> None:
    """A shared prompt needs a group to share it over, and whole groups in every minibatch and
    on every device (a group's rows are contiguous; its prompt is computed where they are)."""
    if rl.group_size < 2:
        bad("rl.shared_prefix", True, f"False with rl.group_size = {rl.group_size} (a prompt is "
            "shared by the group_size >= 2 responses of its group)")
    elif rl.num_minibatches < 1 or rl.num_prompts % rl.num_minibatches:
        bad("rl.num_minibatches", rl.num_minibatches, f"a divisor of rl.num_prompts = "
            f"{rl.num_prompts} with rl.shared_prefix=True (a minibatch holds whole groups)")
    else:
        divides("rl.num_minibatches", rl.num_prompts // rl.num_minibatches,
                "the prompts of a minibatch (whole groups on each device with "
                "rl.shared_prefix=True), rl.num_prompts / rl.num_minibatches,")


def _check_estimator(config, stages, choice, bad) -> None:
    """What the estimator's registry entry asks for: its one policy loss, and the step rewards
    (from a task that declares steps; a learned one from the ``prm`` stage) of an estimator that
    reads them."""
    rl = config.rl
    choice("rl.step_rewards", STEP_REWARDS)
    if rl.step_rewards in ("gold", "model") and config.task.name not in data.STEP_CHECKERS:
        bad("rl.step_rewards", rl.step_rewards, f"'none' with task.name={config.task.name!r}: the "
            "task declares no steps (tasks with a gold step checker: "
            + ", ".join(sorted(data.STEP_CHECKERS)) + ")")
    if rl.step_rewards == "model" and "prm" not in stages:
        bad("stages", tuple(stages), "to include 'prm' for rl.step_rewards='model' (the process "
            "reward model it reads is trained by that stage)")
    if "prm" in stages and rl.step_rewards != "model":
        bad("stages", tuple(stages), f"no 'prm' with rl.step_rewards={rl.step_rewards!r} (RL "
            "would not read the process reward model; use rl.step_rewards='model')")
    entry = algorithm.ESTIMATORS.get(rl.estimator)
    if entry is None:
        return
    if entry.policy_loss is not None and config.loss.policy_loss != entry.policy_loss:
        bad("loss.policy_loss", config.loss.policy_loss, f"{entry.policy_loss!r} with "
            f"rl.estimator={rl.estimator!r} (its gradient is GC * grad log pi, no ratio)")
    if entry.reads == "steps" and rl.step_rewards == "none":
        bad("rl.step_rewards", rl.step_rewards, f"'gold' or 'model' with rl.estimator="
            f"{rl.estimator!r} (it reads per-step rewards)")


def _check_refresh(config, at_least, bad) -> None:
    """Iterative RL: a refresh needs a learned reward to retrain (the reward model of
    rewards.model_weight != 0 with synthetic labels, or the process reward model of
    rl.step_rewards='model') and must fall inside the run."""
    rl = config.rl
    at_least("rl.reward_refresh_every", 0)
    refresh = rl.reward_refresh_every
    if not refresh > 0:
        return
    outcome = config.rewards.model_weight != 0
    if rl.step_rewards != "model" and not outcome:
        bad("rl.reward_refresh_every", refresh, "0 without a learned reward to retrain (it "
            "retrains the reward model of rewards.model_weight != 0 and the process reward model "
            f"of rl.step_rewards='model'; rl.step_rewards={rl.step_rewards!r}, "
            "rewards.model_weight=0)")
    elif outcome and config.rm.data != "synthetic":
        bad("rl.reward_refresh_every", refresh, f"0 with rm.data={config.rm.data!r} (a refresh "
            "labels the policy's new samples: rm.data='synthetic')")
    elif refresh >= rl.steps:
        bad("rl.reward_refresh_every", refresh, f"< rl.steps = {rl.steps} (no refresh would "
            "happen), or 0")
    elif isinstance(rl.max_staleness, int) and rl.max_staleness > 0:
        bad("rl.reward_refresh_every", refresh, f"0 with rl.max_staleness = {rl.max_staleness} "
            "(rollouts sampled ahead would be scored by the reward model of the segment before "
            "its refresh)")
    if not 0 <= rl.reward_replay < 1:
        bad("rl.reward_replay", rl.reward_replay, "a number in [0, 1) (the share of earlier "
            "data in a refresh's training set)")


# Fields of a fresh model's architecture: a model file (``model.path``) brings its own.
FRESH_MODEL_FIELDS = ("model_type", "vocab_size", "hidden_size", "intermediate_size",
                      "num_layers", "num_heads", "num_kv_heads", "max_len", "init_std")


def _check_ignored(config, stages, bad) -> None:
    """Fields moved from their default where the rest of the config leaves them unread: refused,
    so that a run trains what its config says (a default value always passes)."""
    default = default_config()

    def unused(field: str, ignored: bool, why: str) -> None:
        value, usual = _get(config, field), _get(default, field)
        same = tuple(value) == tuple(usual) if isinstance(usual, tuple | list) else value == usual
        if ignored and not same:
            bad(field, value, f"{usual!r} (the default) {why}")

    if config.model.path:
        for name in FRESH_MODEL_FIELDS:
            unused(f"model.{name}", True, "with model.path set (the model file sets it)")
    lora = config.model.lora
    for name in ("alpha", "targets"):
        unused(f"model.lora.{name}", lora.rank == 0, "with model.lora.rank = 0 (no adapters)")
    if "rm" in stages:
        data = config.rm.data
        unused("rm.path", data == "synthetic", "with rm.data='synthetic' (sampled preferences)")
        for name in ("num_prompts", "num_responses", "gold", "label_noise"):
            unused(f"rm.{name}", data != "synthetic", f"with rm.data={data!r} (it sets the "
                   "synthetic preferences)")
    for name in ("num_prompts", "num_responses", "eval_size", "steps", "batch_size"):
        unused(f"prm.{name}", "prm" not in stages, "without the 'prm' stage in config.stages")
    if "rl" not in stages:
        return
    rl, loss, kl = config.rl, config.loss, config.kl
    unused("rl.reward_replay", rl.reward_refresh_every == 0, "with rl.reward_refresh_every = 0 "
           "(no refresh to replay earlier data in)")
    # What the chosen estimator and loss read, from their registry entries (a bad name was
    # already reported by choice(); it reads everything here, so nothing more is said of it).
    reads_all = algorithm.Estimator(None, critic=True, uses_token_rewards=True)
    estimator = algorithm.ESTIMATORS.get(rl.estimator, reads_all)
    loss_entry = algorithm.POLICY_LOSSES.get(loss.policy_loss, algorithm.PolicyLoss(None))
    critic = estimator.critic
    kl_in_reward = kl.in_reward and kl.coef > 0
    kl_loss = kl.coef > 0 and not kl.in_reward
    policy_loss = loss.policy_loss
    unused("kl.in_reward", kl.coef == 0, "with kl.coef = 0 (no KL penalty to put in the reward)")
    unused("kl.target", not kl_in_reward, "without kl.in_reward=True and kl.coef > 0 (the "
           "adaptive controller only sets the coefficient of the KL in the reward)")
    unused("kl.horizon", not (kl_in_reward and kl.target > 0), "without an adaptive KL "
           "coefficient (kl.target > 0, kl.in_reward=True, kl.coef > 0)")
    unused("kl.estimator", not kl_loss, "without a KL loss term (kl.coef > 0 with "
           "kl.in_reward=False; the KL in the reward is k1)")
    own_reduction = not loss_entry.uses_agg and not kl_loss and not critic
    unused("loss.agg", own_reduction, f"with loss.policy_loss={policy_loss!r} and no KL loss "
           "term or critic (the loss reduces each response its own way, e.g. GMPO's geometric "
           "mean)")
    unused("loss.count_empty_rows", policy_loss != "gmpo" and loss.agg == "token-mean",
           "with loss.agg='token-mean' (it changes the seq-mean-* denominators and GMPO's)")
    for field in ("loss.clip_low", "loss.clip_high"):
        unused(field, policy_loss in ("gmpo", "kl_cov", "sapo", "likelihood"),
               f"with loss.policy_loss={policy_loss!r} (gmpo clips with loss.gmpo_clip; kl_cov "
               "and likelihood do not clip; sapo gates softly with loss.sapo_tau_*)")
    unused("loss.gmpo_clip", policy_loss != "gmpo", "without loss.policy_loss='gmpo'")
    unused("loss.cov_ratio", policy_loss not in ("clip_cov", "kl_cov"),
           "without loss.policy_loss='clip_cov' or 'kl_cov'")
    for field in ("loss.cov_lower", "loss.cov_upper"):
        unused(field, policy_loss != "clip_cov", "without loss.policy_loss='clip_cov'")
    unused("loss.kl_cov_coef", policy_loss != "kl_cov", "without loss.policy_loss='kl_cov'")
    for field in ("loss.sapo_tau_pos", "loss.sapo_tau_neg"):
        unused(field, policy_loss != "sapo", "without loss.policy_loss='sapo'")
    correction = loss.is_correction
    unused("loss.is_cap", correction not in ("token_tis", "seq_tis"),
           "without loss.is_correction='token_tis' or 'seq_tis'")
    for field in ("loss.is_low", "loss.is_high"):
        unused(field, correction not in ("token_mis", "seq_mis", "seq_mis_geo"),
               "without loss.is_correction='token_mis', 'seq_mis' or 'seq_mis_geo'")
    for field in ("loss.vf_coef", "loss.value_clip", "rl.lam", "rl.critic_init"):
        unused(field, not critic, f"with rl.estimator={rl.estimator!r} (no critic: only 'gae' "
               "has one)")
    unused("rl.gamma", not estimator.uses_token_rewards, f"with rl.estimator="
           f"{rl.estimator!r} (only 'gae' and 'reinforce_pp' discount)")
    unused("rl.step_rewards", rl.estimator in algorithm.ESTIMATORS and estimator.reads != "steps",
           f"with rl.estimator={rl.estimator!r} (only 'grpo_process' reads step rewards)")
    if estimator.reads != "scores":
        why = (f"with rl.estimator={rl.estimator!r} (its coefficient is made of "
               + ("the correctness indicator" if estimator.reads == "correct" else "step rewards")
               + ", not the scores)")
        for field in ("rl.whiten_rewards", "rl.shuffle_rewards", "rl.dynamic_sampling",
                      "rl.overlong_buffer", "rl.eos_trick"):
            unused(field, True, why)
    if estimator.reads == "correct":
        unused("rl.whiten_advantages", True, f"with rl.estimator={rl.estimator!r} (its "
               "coefficient is the indicator I(o))")
    if estimator.sampler == "reference":
        unused("loss.is_correction", True, f"with rl.estimator={rl.estimator!r} (its samples come "
               "from the initial policy: nothing to correct for the sampler)")
    unused("rl.whiten_advantages", estimator.whitens,
           f"with rl.estimator={rl.estimator!r} (its advantages are always whitened)")
    unused("rl.max_extra_rounds", not rl.dynamic_sampling, "without rl.dynamic_sampling=True")
    unused("rl.overlong_penalty", rl.overlong_buffer == 0, "with rl.overlong_buffer = 0")
    unused("rl.missing_eos_score", not rl.eos_trick, "without rl.eos_trick=True")
    unused("rl.max_approx_kl", rl.max_approx_kl > 0 and rl.epochs * rl.num_minibatches == 1,
           "or 0 with one update a rollout (rl.epochs * rl.num_minibatches = 1: approx_kl is "
           "measured before that update, always 0)")


def _get(config: ml_collections.ConfigDict, field: str):
    node = config
    for part in field.split("."):
        node = node[part]
    return node


def flat_fields(
    config: ml_collections.ConfigDict | Mapping[str, typing.Any],
) -> dict[str, typing.Any]:
    """Every leaf field of a config, or of its JSON form, by dotted name:
    ``{"rl.optim.lr": 3e-4, "task.kwargs.max_value": 999, ...}``. The values are the config's
    own (not copied); an empty section is a leaf (``{}``), so it is not lost."""
    out: dict[str, typing.Any] = {}

    def visit(node, prefix: str) -> None:
        if isinstance(node, (ml_collections.ConfigDict, Mapping)) and len(node):
            for key, value in node.items():
                visit(value, f"{prefix}{key}.")
        else:
            out[prefix[:-1]] = node

    visit(config, "")
    return out
