"""Typed settings of a run: the config turned, once, into one frozen dataclass per part.

``RunSettings.from_config(config)`` (``trainers.run.run`` calls it right after ``check_config``)
reads every field the stages use; below ``run`` no code reads the ``ConfigDict``: each stage and
helper receives the part it uses (``run_rl`` an ``RLStageSettings``, ``evaluate`` an
``EvalSettings``, ``loop.run_stage`` a ``LoopSettings``, ...). A part that several stages share
(``SamplingSettings``, ``RewardSettings``, ``EvalSettings``, ``LoopSettings``) is built once and
the same object sits in each stage's settings.

No field has a default: ``rl_jax.config.default_config`` is the one place a default lives. Tests
build settings the way a run does, ``from_config`` of a config with overrides.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from typing import Any

import ml_collections

from rl_jax import data
from rl_jax.algorithm import RLSettings, ScoreShaping
from rl_jax.data import StepChecker, StepSegmenter
from rl_jax.optim import OptimSettings


def _frozen_dict(section: ml_collections.ConfigDict) -> Mapping[str, Any]:
    """A read-only copy of a config section of free keys (``task.kwargs``, ``rewards.weights``),
    in its order."""
    return types.MappingProxyType(section.to_dict())


@dataclasses.dataclass(frozen=True)
class TaskSettings:
    """The task (``task``) and how its prompts are written; ``seed`` draws its splits."""

    name: str
    kwargs: Mapping[str, Any]
    chat_template: bool
    system_prompt: str
    seed: int

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> TaskSettings:
        task = config.task
        return cls(name=task.name, kwargs=_frozen_dict(task.kwargs),
                   chat_template=task.chat_template, system_prompt=task.system_prompt,
                   seed=config.seed)


@dataclasses.dataclass(frozen=True)
class LoraSettings:
    """``model.lora``: rank 0 means no adapters."""

    rank: int
    alpha: float
    targets: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class ModelSettings:
    """The policy (``model``): a file (``path``) or a fresh model of the architecture fields,
    initialised from ``seed``."""

    path: str
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    max_len: int
    init_std: float
    dtype: str
    param_dtype: str
    lora: LoraSettings
    remat: str
    scan_layers: bool
    logits_chunk: int
    attention_impl: str
    seed: int

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> ModelSettings:
        m = config.model
        return cls(
            path=m.path, model_type=m.model_type, vocab_size=m.vocab_size,
            hidden_size=m.hidden_size, intermediate_size=m.intermediate_size,
            num_layers=m.num_layers, num_heads=m.num_heads, num_kv_heads=m.num_kv_heads,
            max_len=m.max_len, init_std=m.init_std, dtype=m.dtype, param_dtype=m.param_dtype,
            lora=LoraSettings(rank=m.lora.rank, alpha=m.lora.alpha,
                              targets=tuple(m.lora.targets)),
            remat=m.remat, scan_layers=m.scan_layers, logits_chunk=m.logits_chunk,
            attention_impl=m.attention_impl, seed=config.seed,
        )


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    """How responses are sampled (``rollout``); ``top_k`` 0 and ``top_p`` 1 are off."""

    max_new_tokens: int
    temperature: float
    top_k: int
    top_p: float
    extra_eos_ids: tuple[int, ...]

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> SamplingSettings:
        r = config.rollout
        return cls(max_new_tokens=r.max_new_tokens, temperature=r.temperature, top_k=r.top_k,
                   top_p=r.top_p, extra_eos_ids=tuple(r.extra_eos_ids))


@dataclasses.dataclass(frozen=True)
class RewardSettings:
    """The rewards (``rewards``): rule-based ``weights`` (name -> weight), the learned reward's
    ``model_weight``, and the reward that defines accuracy (``correctness``)."""

    weights: Mapping[str, float]
    correctness: str
    model_weight: float

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> RewardSettings:
        r = config.rewards
        return cls(weights=_frozen_dict(r.weights), correctness=r.correctness,
                   model_weight=r.model_weight)


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """Held-out evaluation (``trainers.evaluation.evaluate``): ``num_examples`` prompts, sampled
    in calls of at most ``rows_per_call`` rows (the RL rollout batch, ``rl.num_prompts *
    rl.group_size``); ``k`` samples a prompt for RL's pass@k and maj@k."""

    num_examples: int
    k: int
    rows_per_call: int
    sampling: SamplingSettings
    rewards: RewardSettings


@dataclasses.dataclass(frozen=True)
class LoopSettings:
    """The cadence of every stage's loop (``loop.run_stage``): evaluation, summary line, sample
    texts and checkpoints every so many steps (0 = never; the last step always evaluates, logs
    and saves)."""

    eval_every: int
    log_every: int
    samples_every: int
    progress_bar: bool
    checkpoint_every: int
    checkpoint_keep: int

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> LoopSettings:
        return cls(eval_every=config.eval.every, log_every=config.log.every,
                   samples_every=config.log.samples_every, progress_bar=config.log.progress_bar,
                   checkpoint_every=config.checkpoint.every, checkpoint_keep=config.checkpoint.keep)


@dataclasses.dataclass(frozen=True)
class SFTSettings:
    """The SFT stage (``sft``): ``steps`` at most, stopped at ``stop_accuracy`` (greedy pass@1)."""

    steps: int
    batch_size: int
    stop_accuracy: float
    optim: OptimSettings
    logits_chunk: int
    seed: int
    evaluation: EvalSettings
    loop: LoopSettings


@dataclasses.dataclass(frozen=True)
class RMSettings:
    """The reward-model stage (``rm``); ``dtype`` / ``param_dtype`` load ``init_path``, and
    ``sampling`` draws the synthetic preferences."""

    data: str
    path: str
    skip_invalid: bool
    truncate_prompts: bool
    eval_size: int
    num_prompts: int
    num_responses: int
    gold: str
    label_noise: float
    loss: str
    comparisons: str
    init_path: str
    steps: int
    batch_size: int
    optim: OptimSettings
    dtype: str
    param_dtype: str
    seed: int
    sampling: SamplingSettings
    loop: LoopSettings


@dataclasses.dataclass(frozen=True)
class PRMSettings:
    """The process reward model stage (``prm``): ``num_responses`` samples of the policy for each
    of ``num_prompts`` prompts (``eval_size`` held-out prompts), labelled by the task's gold step
    ``checker``; ``steps`` updates of ``batch_size`` responses. ``max_steps`` (the rollout's
    ``max_new_tokens``) bounds the steps of a response."""

    num_prompts: int
    num_responses: int
    eval_size: int
    steps: int
    batch_size: int
    optim: OptimSettings
    seed: int
    max_steps: int
    checker: StepChecker | None  # None: the task declares no steps (then no prm stage runs)
    sampling: SamplingSettings
    loop: LoopSettings


@dataclasses.dataclass(frozen=True)
class RolloutSettings:
    """What one RL step's rollout reads (``trainers.rl.collect``): ``num_prompts`` prompts with
    ``group_size`` responses each, DAPO's dynamic sampling, the shuffled-reward control, the
    rewards and the score shaping (``ScoreShaping``, built here once)."""

    num_prompts: int
    group_size: int
    dynamic_sampling: bool
    max_extra_rounds: int
    shuffle_rewards: bool
    seed: int
    sampling: SamplingSettings
    rewards: RewardSettings
    shaping: ScoreShaping
    # rl.step_rewards: "none", "gold" (the task's gold step checker, step_checker) or "model"
    # (the process reward model on the steps of step_segmenter); see rl_jax.data.steps.
    step_rewards: str
    step_checker: StepChecker | None
    step_segmenter: StepSegmenter | None


@dataclasses.dataclass(frozen=True)
class RLStageSettings:
    """The RL stage: the step's options (``algorithm``), the rollout, the optimizer, the critic's
    start, the KL coefficient (initial, and the adaptive controller's target and horizon), the
    divergence guard, whether it follows an SFT stage (whose LoRA adapters it folds), and iterative
    RL: the learned reward retrained every ``reward_refresh_every`` steps (0 = never) with a share
    ``reward_replay`` of earlier data."""

    steps: int
    optim: OptimSettings
    critic_init: str
    kl_coef: float
    kl_target: float
    kl_horizon: int
    max_approx_kl: float
    after_sft: bool
    seed: int
    reward_refresh_every: int
    reward_replay: float
    stale_policy: str  # with algorithm.max_staleness >= 1: "wait", "drop" or "keep" (staleness.py)
    algorithm: RLSettings
    rollout: RolloutSettings
    evaluation: EvalSettings
    loop: LoopSettings


@dataclasses.dataclass(frozen=True)
class MemorySettings:
    """The start-up memory check (``memory``): ``device_gb`` 0 = the device's own limit."""

    device_gb: float
    check: bool


@dataclasses.dataclass(frozen=True)
class MeshSettings:
    """How the run's devices are used (``mesh``): ``rollout_devices`` (the last ones) form the
    RL sampler's own mesh, the trainer keeps the others (``parallel.split_mesh``); 0 = shared."""

    rollout_devices: int


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """Every part of a run, from one checked config (``from_config``)."""

    stages: tuple[str, ...]
    task: TaskSettings
    model: ModelSettings
    sampling: SamplingSettings
    rewards: RewardSettings
    evaluation: EvalSettings
    loop: LoopSettings
    sft: SFTSettings
    rm: RMSettings
    prm: PRMSettings
    rl: RLStageSettings
    memory: MemorySettings
    mesh: MeshSettings

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> RunSettings:
        """The settings of a config that ``check_config`` validated."""
        sampling = SamplingSettings.from_config(config)
        reward = RewardSettings.from_config(config)
        loop = LoopSettings.from_config(config)
        rl, sft, rm, prm = config.rl, config.sft, config.rm, config.prm
        evaluation = EvalSettings(
            num_examples=config.eval.num_examples, k=config.eval.k,
            rows_per_call=rl.num_prompts * rl.group_size, sampling=sampling, rewards=reward,
        )
        rollout = RolloutSettings(
            num_prompts=rl.num_prompts, group_size=rl.group_size,
            dynamic_sampling=rl.dynamic_sampling, max_extra_rounds=rl.max_extra_rounds,
            shuffle_rewards=rl.shuffle_rewards, seed=config.seed, sampling=sampling,
            rewards=reward, shaping=ScoreShaping.from_config(config),
            step_rewards=rl.step_rewards,
            step_checker=(data.STEP_CHECKERS[config.task.name] if rl.step_rewards == "gold"
                          else None),
            step_segmenter=(data.STEP_SEGMENTERS[config.task.name]
                            if rl.step_rewards == "model" else None),
        )
        return cls(
            stages=tuple(config.stages),
            task=TaskSettings.from_config(config),
            model=ModelSettings.from_config(config),
            sampling=sampling,
            rewards=reward,
            evaluation=evaluation,
            loop=loop,
            sft=SFTSettings(
                steps=sft.steps, batch_size=sft.batch_size, stop_accuracy=sft.stop_accuracy,
                optim=OptimSettings.from_config(sft.optim),
                logits_chunk=config.model.logits_chunk, seed=config.seed,
                evaluation=evaluation, loop=loop,
            ),
            rm=RMSettings(
                data=rm.data, path=rm.path, skip_invalid=rm.skip_invalid,
                truncate_prompts=rm.truncate_prompts, eval_size=rm.eval_size,
                num_prompts=rm.num_prompts, num_responses=rm.num_responses, gold=rm.gold,
                label_noise=rm.label_noise, loss=rm.loss, comparisons=rm.comparisons,
                init_path=rm.init_path, steps=rm.steps, batch_size=rm.batch_size,
                optim=OptimSettings.from_config(rm.optim), dtype=config.model.dtype,
                param_dtype=config.model.param_dtype, seed=config.seed, sampling=sampling,
                loop=loop,
            ),
            prm=PRMSettings(
                num_prompts=prm.num_prompts, num_responses=prm.num_responses,
                eval_size=prm.eval_size, steps=prm.steps, batch_size=prm.batch_size,
                optim=OptimSettings.from_config(prm.optim), seed=config.seed,
                max_steps=config.rollout.max_new_tokens,
                checker=data.STEP_CHECKERS.get(config.task.name), sampling=sampling, loop=loop,
            ),
            rl=RLStageSettings(
                steps=rl.steps, optim=OptimSettings.from_config(rl.optim),
                critic_init=rl.critic_init, kl_coef=config.kl.coef, kl_target=config.kl.target,
                kl_horizon=config.kl.horizon, max_approx_kl=rl.max_approx_kl,
                after_sft="sft" in config.stages, seed=config.seed,
                reward_refresh_every=rl.reward_refresh_every, reward_replay=rl.reward_replay,
                stale_policy=rl.stale_policy, algorithm=RLSettings.from_config(config),
                rollout=rollout,
                evaluation=evaluation, loop=loop,
            ),
            memory=MemorySettings(device_gb=config.memory.device_gb, check=config.memory.check),
            mesh=MeshSettings(rollout_devices=config.mesh.rollout_devices),
        )
