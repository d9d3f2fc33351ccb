"""The RL loop: one loop for PPO, GRPO and their variants (``rl_jax.algorithm``: the jitted parts).

Each iteration: take prompts -> sample ``group_size`` responses each -> score them with the reward
functions and/or a learned reward model (optionally dropping groups whose rewards are all equal and
sampling more: DAPO's dynamic sampling) -> shape the scores (DAPO's soft overlong punishment, PPO's
missing-EOS score) -> ``prepare`` (old and reference log-probs, values, advantages) -> ``update``.
The shared ``loop.run_stage`` does the rest (metrics, evaluation, checkpoints with the data position
and KL coefficient as host state).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import rl_jax
from rl_jax import models, parallel, rewards
from rl_jax.algorithm import RolloutBatch, build_rl_step, shape_scores
from rl_jax.learned_reward import LearnedReward
from rl_jax.optim import make_optimizer
from rl_jax.rollout import Sampler
from rl_jax.settings import RewardSettings, RLStageSettings, RolloutSettings
from rl_jax.train_state import TrainState, init_state
from rl_jax.trainers.evaluation import evaluate
from rl_jax.trainers.loop import Stage, StageResult, run_stage
from rl_jax.trainers.process_reward import response_steps, step_scores
from rl_jax.trainers.setup import Context, stage_key
from rl_jax.trainers.staleness import (
    Pending,
    add_to_carry,
    decode_pending,
    decode_round,
    encode_pending,
    encode_round,
    staleness_metrics,
    use_carry,
)

LOSS_METRICS = ("loss", "policy_loss", "value_loss", "kl_loss", "grad_norm")


@dataclasses.dataclass
class Round:
    """One sampling round: ``num_prompts * group_size`` responses and their scores (host arrays)."""

    prompt_tokens: np.ndarray
    prompt_mask: np.ndarray
    response_tokens: np.ndarray
    response_mask: np.ndarray
    sampler_logprobs: np.ndarray
    scores: np.ndarray  # shaped reward used for training
    rewards: dict[str, np.ndarray]  # per reward function, unshaped
    correct: np.ndarray
    truncated: np.ndarray  # [rows] bool: no EOS (hit max_new_tokens), see missing_eos
    texts: list[str]
    # With rl.step_rewards: each step's reward and end token ([rows, max_new_tokens]; -1: none).
    step_rewards: np.ndarray | None = None
    step_ends: np.ndarray | None = None
    # [rows] int32: the policy version (TrainState.step) that sampled each row (staleness.py).
    version: np.ndarray | None = None

    def rows(self, index: np.ndarray) -> Round:
        def take(x):
            if x is None:
                return None
            if isinstance(x, dict):
                return {k: v[index] for k, v in x.items()}
            return [x[i] for i in index] if isinstance(x, list) else x[index]

        return Round(**{f.name: take(getattr(self, f.name)) for f in dataclasses.fields(self)})


def missing_eos(response_tokens: np.ndarray, response_mask: np.ndarray, eos_ids) -> np.ndarray:
    """``[batch]`` True where a response does not end with EOS (it hit ``max_new_tokens``, or is
    empty): ``response_tokens``, ``response_mask`` ``[batch, time]``, the mask covering the EOS."""
    lengths = np.asarray(response_mask).sum(1).astype(np.int64)
    last = np.asarray(response_tokens)[np.arange(len(lengths)), np.maximum(lengths - 1, 0)]
    return ~np.isin(last, np.asarray(eos_ids)) | (lengths == 0)


# Third word of the reward-shuffle generator's seed ("shuf" in ASCII): apart from the data streams.
SHUFFLE_STREAM = 0x73687566


def shuffle_scores(scores: np.ndarray, seed: int, position: int) -> np.ndarray:
    """The shuffled-reward control: ``scores[perm]``, ``[batch]``, with ``perm`` a permutation of
    the whole batch (across groups) drawn from ``default_rng([seed, position, SHUFFLE_STREAM])``.

    Keeps the batch's multiset of scores (so reward scale and the share of informative groups stay
    about the same) but unties each score from its response.
    """
    perm = np.random.default_rng([seed, position, SHUFFLE_STREAM]).permutation(len(scores))
    return scores[perm]


def step_rewards_of(ctx: Context, settings: RolloutSettings, out, texts: list[str],
                    examples: list, process_reward: LearnedReward | None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """``(step_rewards, step_ends)`` ``[rows, max_new_tokens]`` of the responses
    (``rl_jax.data.steps``): with ``settings.step_rewards == "gold"`` the task's gold step checker
    gives the steps and their rewards; with ``"model"`` the task's segmenter gives the steps and
    ``process_reward`` scores them (``process_reward.step_scores``: the sigmoid of its logit at
    each step's last token of ``prompt + response``)."""
    width = np.asarray(out.response_mask).shape[1]
    if settings.step_rewards == "gold":
        steps = [settings.step_checker(text, ex) for text, ex in zip(texts, examples, strict=True)]
        return response_steps(ctx, steps, out.response_tokens, out.response_mask, width)
    steps = [[(end, 0.0) for end in settings.step_segmenter(text)] for text in texts]
    _, ends = response_steps(ctx, steps, out.response_tokens, out.response_mask, width)
    tokens = np.concatenate([out.prompt_tokens, out.response_tokens], 1)
    mask = np.concatenate([out.prompt_mask, out.response_mask], 1)
    prompt_width = np.asarray(out.prompt_tokens).shape[1]
    at = np.where(ends >= 0, ends + prompt_width, -1)  # the prompts are left-padded to one width
    return step_scores(process_reward.raw(tokens, mask), at), ends


def score_responses(
    settings: RewardSettings, out, texts: list[str], examples: list,
    reward_model: LearnedReward | None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The weighted reward of sampled responses and each reward's own scores.

    ``settings.weights`` names rule-based rewards (weight 0 only logs one, e.g. a gold reward);
    with ``settings.model_weight > 0`` the learned reward's normalised score is added as
    ``model``.
    """
    total, per_fn = np.zeros(len(texts), np.float32), {}
    if len(settings.weights):
        total, per_fn = rewards.combine_rewards(dict(settings.weights), texts, examples)
    if settings.model_weight:
        tokens = np.concatenate([out.prompt_tokens, out.response_tokens], 1)
        mask = np.concatenate([out.prompt_mask, out.response_mask], 1)
        per_fn["model"] = reward_model(tokens, mask)
        total = total + np.float32(settings.model_weight) * per_fn["model"]
    return total, per_fn


def sample_round(
    ctx: Context,
    settings: RolloutSettings,
    policy_params: Any,
    position: int,
    key: jax.Array,
    reward_model: LearnedReward | None = None,
    process_reward: LearnedReward | None = None,
) -> tuple[Round, float]:
    """Samples (from ``policy_params``) and scores the prompts of data position ``position``
    (``reward_model``: the learned outcome reward; ``process_reward``: the process reward model of
    ``step_rewards="model"``); also the scoring seconds."""
    examples = ctx.task.batch(position, settings.num_prompts)
    n = settings.group_size
    sampling = settings.sampling
    out = ctx.sampler.generate(
        policy_params,
        ctx.encode_prompts(examples),
        key,
        n=n,
        max_new_tokens=sampling.max_new_tokens,
        temperature=sampling.temperature,
        top_k=sampling.top_k or None,
        top_p=sampling.top_p,
    )
    # Every process passed every prompt (one decode program, one prompt width); from here on each
    # keeps its own block of the rows (parallel.process_rows): its responses, texts and rewards.
    mesh = ctx.sampler.mesh
    share = slice(None) if mesh is None else parallel.process_rows(mesh, len(examples) * n)
    out = out._replace(**{
        name: np.asarray(x) if mesh is None else parallel.local_rows(x, mesh)
        for name, x in out._asdict().items() if np.ndim(x) > 0
    })
    response_mask = np.asarray(out.response_mask)
    start = time.perf_counter()
    texts = ctx.decode_responses(out.response_tokens, response_mask)
    repeated = [ex for ex in examples for _ in range(n)][share]
    total, per_fn = score_responses(settings.rewards, out, texts, repeated, reward_model)
    correct = rewards.combine_rewards({settings.rewards.correctness: 1.0}, texts, repeated)[0]
    lengths = response_mask.sum(1)
    truncated = missing_eos(out.response_tokens, response_mask, ctx.eos_ids)
    scores = shape_scores(settings.shaping, total, lengths, truncated)
    if settings.shuffle_rewards:
        scores = shuffle_scores(scores, settings.seed, position)
    steps = {}
    if settings.step_rewards != "none":
        steps = dict(zip(("step_rewards", "step_ends"),
                         step_rewards_of(ctx, settings, out, texts, repeated, process_reward),
                         strict=True))
    scoring_seconds = time.perf_counter() - start
    round_ = Round(
        **steps,
        prompt_tokens=np.asarray(out.prompt_tokens),
        prompt_mask=np.asarray(out.prompt_mask),
        response_tokens=np.asarray(out.response_tokens),
        response_mask=response_mask,
        sampler_logprobs=np.asarray(out.response_logprobs),
        scores=scores,
        rewards=per_fn,
        correct=np.asarray(correct, np.float32),
        truncated=truncated,
        texts=texts,
    )
    return round_, scoring_seconds


def _concat(rounds: list[Round], pad_id: int) -> Round:
    """Concatenates rounds, left-padding prompts to the widest prompt bucket."""
    width = max(r.prompt_tokens.shape[1] for r in rounds)
    pad = {"prompt_tokens": pad_id, "prompt_mask": 0}

    def join(name, parts):
        if name in pad:
            parts = [np.pad(x, ((0, 0), (width - x.shape[1], 0)), constant_values=pad[name])
                     for x in parts]
        if name == "rewards":
            return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        if parts[0] is None:
            return None
        return sum(parts, []) if name == "texts" else np.concatenate(parts)

    names = [f.name for f in dataclasses.fields(Round)]
    return Round(**{name: join(name, [getattr(r, name) for r in rounds]) for name in names})


def collect(
    ctx: Context,
    settings: RolloutSettings,
    policy_params: Any,
    position: int,
    key: jax.Array,
    reward_model: LearnedReward | None = None,
    process_reward: LearnedReward | None = None,
) -> tuple[Round, int, dict[str, float]]:
    """The rollout batch of one step, sampled from ``policy_params``, with dynamic sampling when
    configured.

    Returns the batch (``num_prompts * group_size`` rows), the next data position and metrics.
    With dynamic sampling, groups whose scores are all equal are dropped and new prompts are
    sampled (at most ``max_extra_rounds`` more rounds); if the batch is still not full, dropped
    groups fill it with their response masks zeroed, so they count in no loss.
    """
    return collect_with_surplus(ctx, settings, policy_params, position, key, reward_model,
                                process_reward)[:3]


def collect_with_surplus(
    ctx: Context,
    settings: RolloutSettings,
    policy_params: Any,
    position: int,
    key: jax.Array,
    reward_model: LearnedReward | None = None,
    process_reward: LearnedReward | None = None,
) -> tuple[Round, int, dict[str, float], Round | None, int]:
    """``collect``'s batch, position and metrics, then what it leaves over: the informative
    groups of the last round beyond the ``num_prompts`` wanted (None without any), and the
    number of groups at the batch's end that are fillers (masks zeroed: dynamic sampling fell
    short). ``rl_jax.trainers.staleness.use_carry`` trains on those surplus groups later."""
    rl = settings
    n, wanted = rl.group_size, rl.num_prompts
    kept: list[Round] = []
    dropped: list[Round] = []
    surplus: list[Round] = []
    first: Round | None = None
    num_kept = 0
    rounds = 0
    generated = 0.0
    scoring = 0.0
    while num_kept < wanted and rounds <= (rl.max_extra_rounds if rl.dynamic_sampling else 0):
        batch, seconds = sample_round(
            ctx, settings, policy_params, position, jax.random.fold_in(key, rounds), reward_model,
            process_reward,
        )
        scoring += seconds
        position += 1
        rounds += 1
        generated += float(batch.response_mask.sum())
        first = first or batch
        if not rl.dynamic_sampling:
            kept.append(batch)
            num_kept = wanted
            break
        grouped = batch.scores.reshape(-1, n)
        informative = grouped.max(1) > grouped.min(1)
        rows = lambda groups: (groups[:, None] * n + np.arange(n)).reshape(-1)  # noqa: E731
        take = np.flatnonzero(informative)[: wanted - num_kept]
        surplus.append(batch.rows(rows(np.flatnonzero(informative)[wanted - num_kept:])))
        kept.append(batch.rows(rows(take)))
        num_kept += len(take)
        dropped.append(batch.rows(rows(np.flatnonzero(~informative))))
    fillers = wanted - num_kept
    if num_kept < wanted:
        filler = _concat(dropped, ctx.tokenizer.pad_token_id)
        filler = filler.rows(np.arange((wanted - num_kept) * n))
        filler.response_mask = np.zeros_like(filler.response_mask)
        kept.append(filler)
    out = _concat(kept, ctx.tokenizer.pad_token_id)
    grouped = parallel.gather_rows(first.scores).reshape(-1, n)
    # Rollout statistics of the first round: the policy's own performance, before any filtering;
    # over the global batch (every process's rows).
    metrics = rollout_metrics(first, group_size=n) | {
        "zero_adv_groups": float(np.mean(grouped.max(1) == grouped.min(1))),
        "sampling_rounds": float(rounds),
        "generated_tokens": float(parallel.gather_rows(np.float64([generated])).sum()),
        "time_scoring": scoring,
    }
    extra = [r for r in surplus if len(r.scores)]
    extra = _concat(extra, ctx.tokenizer.pad_token_id) if extra else None
    return out, position, metrics, extra, fillers


def rollout_metrics(batch: Round, group_size: int | None = None) -> dict[str, float]:
    """Reward, accuracy, response length (all, correct, incorrect) and truncated share of a round,
    over every process's rows of it (``parallel.gather_rows``).

    ``length_incorrect``: the mean response length (tokens, EOS included) of the rows with
    ``correct == 0`` (0.0 when every row is correct); ``length_correct`` likewise.
    ``truncated_correct``: the share of correct rows that are truncated (0.0 with none correct);
    ``truncated_incorrect``: the share of all rows that are truncated and not correct.
    With ``group_size`` (consecutive rows of a prompt), ``length_ratio_in_group``: the mean over
    groups of ``max |o| / min |o|``, how far apart GRPO's 1/|o| weights of a group are. With step
    rewards, ``step_reward`` (the mean over all steps) and ``steps`` (per response).
    """
    lengths = parallel.gather_rows(batch.response_mask.sum(1).astype(np.float32))
    correct_values = parallel.gather_rows(batch.correct)
    correct = correct_values > 0
    truncated = parallel.gather_rows(batch.truncated.astype(np.float32))

    def mean(x):
        return float(np.mean(x)) if len(x) else 0.0

    metrics = {
        "score": mean(parallel.gather_rows(batch.scores)),
        "accuracy": mean(correct_values),
        "length": mean(lengths),
        "length_correct": mean(lengths[correct]),
        "length_incorrect": mean(lengths[~correct]),
        "truncated": mean(truncated),
        "truncated_correct": mean(truncated[correct]),
        "truncated_incorrect": mean(truncated * ~correct),
    }
    if group_size is not None:
        grouped = lengths.reshape(-1, group_size)
        metrics["length_ratio_in_group"] = mean(grouped.max(1) / np.maximum(grouped.min(1), 1.0))
    metrics.update({f"reward/{k}": mean(parallel.gather_rows(v)) for k, v in batch.rewards.items()})
    if batch.step_rewards is not None:  # the share of right steps, and steps per response
        ends = parallel.gather_rows(batch.step_ends)
        metrics["step_reward"] = mean(parallel.gather_rows(batch.step_rewards)[ends >= 0])
        metrics["steps"] = float(np.mean((ends >= 0).sum(1)))
    return metrics


def device_batch(batch: Round) -> RolloutBatch:
    """The host arrays ``prepare`` reads: tokens, masks, scores, sampler log-probs, truncation."""
    return RolloutBatch(
        tokens=np.concatenate([batch.prompt_tokens, batch.response_tokens], 1).astype(np.int32),
        mask=np.concatenate([batch.prompt_mask, batch.response_mask], 1).astype(np.float32),
        response_mask=batch.response_mask.astype(np.float32),
        sampler_logprobs=batch.sampler_logprobs.astype(np.float32),
        scores=batch.scores.astype(np.float32),
        truncated=batch.truncated.astype(np.float32),
        correct=batch.correct.astype(np.float32),
        step_rewards=None if batch.step_rewards is None else batch.step_rewards.astype(np.float32),
        step_ends=None if batch.step_ends is None else batch.step_ends.astype(np.int32),
    )


def init_params(
    ctx: Context, policy_params, settings: RLStageSettings,
    reward_model: LearnedReward | None = None,
) -> tuple[dict[str, Any], Any]:
    """The trained parameters (policy, and a critic for GAE) and the value graphdef (or None).

    The critic starts from the policy's backbone with a fresh head (``rl.critic_init="policy"``)
    or from the whole reward model, head included (``"reward_model"``, as in InstructGPT), its head
    rescaled to the normalised reward ``(r - mean) / std`` that RL trains on.
    """
    params = {"policy": policy_params}
    value_graphdef = None
    if settings.algorithm.has_critic:
        rngs = nnx.Rngs(settings.seed + 1)
        if settings.critic_init == "policy":
            policy = nnx.merge(ctx.graphdef, policy_params)
            critic = models.ValueModel.from_policy(policy, rngs=rngs)
        else:
            model_config = nnx.merge(reward_model.graphdef, reward_model.params).config
            critic = models.ValueModel(model_config, rngs=rngs)
            nnx.update(critic, jax.tree.map(jnp.copy, reward_model.params))
            # The RL score is the normalised reward (r - mean) / std: so is the critic's head.
            critic.score.kernel[...] = critic.score.kernel[...] / reward_model.std
            critic.score.bias[...] = (critic.score.bias[...] - reward_model.mean) / reward_model.std
        value_graphdef, params["value"] = nnx.split(critic)
    return params, value_graphdef


def run_rl(
    ctx: Context,
    mesh: jax.sharding.Mesh,
    policy_params: Any,
    settings: RLStageSettings,
    reward_model: LearnedReward | None = None,
    process_reward: LearnedReward | None = None,
    refresh: Callable[..., tuple[LearnedReward | None, LearnedReward | None]] | None = None,
    rollout_mesh: jax.sharding.Mesh | None = None,
) -> StageResult:
    """Trains the policy from ``policy_params`` (also the frozen reference) against the reward
    functions, ``reward_model`` and ``process_reward`` (``rl.step_rewards="model"``) in
    ``workdir/rl`` (resumed, or only restored when finished).

    Iterative RL (``settings.reward_refresh_every = N > 0``): the run is cut into segments that
    end at steps ``N, 2N, ...`` and ``settings.steps``; each segment's last step evaluates and
    saves (the loop's rule for a stage's last step). After segment ``k``, ``refresh(k, policy,
    reward_model, process_reward)`` returns the learned rewards retrained on the policy of step
    ``kN`` (round ``k`` of ``run_rm`` / ``run_prm``, each a stage of its own:
    ``trainers.reward_rounds``), and the next segment restores RL from step ``kN`` and scores with
    them. A restart runs the same sequence: finished segments and refreshes are only restored.

    With ``rollout_mesh`` (devices apart from ``mesh``'s: ``parallel.split_mesh``) the rollouts
    are sampled there: before each sampling the weights go to it with ``jax.device_put``,
    resharded to the sampler's layout. With ``rl.max_staleness = k >= 1`` as well, the sampling
    of step ``s + k`` runs in a thread, on those devices, while step ``s`` trains on the others.

    With LoRA adapters in ``policy_params`` the reference is the policy with its adapters off
    (``models.adapters_off``: the frozen base, no second copy of the weights). Adapters trained
    by an earlier stage (SFT) are first folded into the base, so the reference is the policy RL
    starts from.
    """
    algorithm = settings.algorithm
    lora = models.has_adapters(policy_params)
    if lora and settings.after_sft:
        policy_params = models.fold_adapters(ctx.graphdef, policy_params)
    updates = settings.steps * algorithm.epochs * algorithm.num_minibatches
    tx = make_optimizer(settings.optim, updates)
    params, value_graphdef = init_params(ctx, policy_params, settings, reward_model)
    state, sharding = init_state(params, tx, mesh)
    ref_params = None
    if (algorithm.needs_reference or algorithm.samples_from_reference) and not lora:
        ref_params = jax.device_put(
            jax.tree.map(jnp.copy, policy_params), parallel.param_sharding(policy_params, mesh)
        )
    # Every part runs on each device's share of the rows: prepare and update take the batch split
    # (update re-splits its shuffled minibatches), the sampler and reward model split theirs.
    rl_step = build_rl_step(
        algorithm, tx, ctx.graphdef, value_graphdef, mesh=mesh, state_sharding=sharding
    )
    ctx.check_mesh(mesh)
    latest: list[Round] = []  # the last rollout batch, for the samples text
    # The restore template of the segments after the first (the first one's state is donated).
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    # The learned rewards of the running segment.
    current = {"outcome": reward_model, "process": process_reward}
    k = algorithm.max_staleness
    carrying = k > 0 and settings.stale_policy in ("drop", "keep")  # dynamic sampling's surplus
    group_size = settings.rollout.group_size

    def concat(parts: list[Round]) -> Round:
        return _concat(parts, ctx.tokenizer.pad_token_id)

    sampling_ctx, to_sampler = ctx, lambda params: params
    if rollout_mesh is not None:
        sampling_ctx = dataclasses.replace(ctx, sampler=Sampler.from_model(
            ctx.policy, eos_ids=ctx.eos_ids, pad_id=ctx.sampler.pad_id, mesh=rollout_mesh))
        sampler_sharding = parallel.param_sharding(policy_params, rollout_mesh)

        def to_sampler(params):
            # Copied before the update (which donates the state) is dispatched.
            return jax.block_until_ready(jax.device_put(params, sampler_sharding))

    overlap = rollout_mesh is not None and k >= 1
    executor = ThreadPoolExecutor(1, thread_name_prefix="rl-sampler") if overlap else None

    def produce(t: int, version: int, params: Any, position: int):
        """The rollout of step ``t``, sampled by ``params`` (policy version ``version``) from
        data position ``position``; the next position; its surplus groups (when carried)."""
        t0 = time.perf_counter()
        key = stage_key(settings.seed, "rl", t)
        surplus, fillers = None, 0
        if carrying:
            rollout, position, metrics, surplus, fillers = collect_with_surplus(
                sampling_ctx, settings.rollout, params, position, key, current["outcome"],
                current["process"],
            )
        else:
            rollout, position, metrics = collect(
                sampling_ctx, settings.rollout, params, position, key, current["outcome"],
                current["process"],
            )
        metrics["time_sampling"] = time.perf_counter() - t0 - metrics["time_scoring"]
        for part in (rollout, surplus):
            if part is not None:
                part.version = np.full(len(part.scores), version, np.int32)
        return Pending(t, version, rollout, metrics, fillers), position, surplus

    def add_surplus(carry: Round | None, surplus: Round | None) -> tuple[Round | None, int]:
        if not carrying:
            return carry, 0
        return add_to_carry(carry, surplus, group_size=group_size,
                            max_groups=settings.rollout.num_prompts, concat=concat)

    def settle(host: dict):
        """``(queue, position, carry, finished, evicted)`` of ``host`` once its running sampling
        (if any) has finished and joined the queue (a pure function of ``host``)."""
        queue, position, carry = list(host["pending"]), host["position"], host["carry"]
        finished, evicted = [], 0
        if host["running"] is not None:
            entry, position, surplus = host["running"].result()
            queue.append(entry)
            finished.append(entry)
            carry, evicted = add_surplus(carry, surplus)
        return queue, position, carry, finished, evicted

    def batch(step: int, state: TrainState, host: dict):
        """Sample and score (host) the rollouts due, then ``prepare`` (device) step ``step``'s
        rollout; the next KL coefficient. With ``k >= 1`` the rollout of step ``step + k`` is
        sampled by the policy of step ``step`` after this step's rollout is taken (in a thread
        with a rollout mesh: it finishes during ``update``, and the next step, or a checkpoint,
        waits for it); the rollouts of steps ``0 .. k - 1`` by version 0, at step 0."""
        # RFT's data source is the initial policy, frozen; every other estimator samples the
        # policy being trained.
        sampling_params = state.params["policy"]
        if algorithm.samples_from_reference:
            sampling_params = models.adapters_off(sampling_params) if lora else ref_params
        sampling_params = to_sampler(sampling_params)
        queue, position, carry, produced, evicted = settle(host)
        while not queue or queue[-1].step < step + max(k - 1, 0):
            t = queue[-1].step + 1 if queue else step
            entry, position, surplus = produce(t, step, sampling_params, position)
            queue.append(entry)
            produced.append(entry)
            carry, out = add_surplus(carry, surplus)
            evicted += out
        entry = queue.pop(0)
        if entry.step != step:
            raise RuntimeError(f"rl step {step}: the queue's next rollout is for step {entry.step}")
        rollout, metrics = entry.rollout, dict(entry.metrics)
        if carrying:
            rollout, carry, carried = use_carry(
                rollout, entry.fillers, carry, step=step, max_staleness=k,
                policy=settings.stale_policy, group_size=group_size, concat=concat,
            )
            metrics.update(carried)
        elif k:
            metrics.update(late_dropped=0.0, late_kept=0.0)
        running = None
        if k and overlap:
            running = executor.submit(produce, step + k, step, sampling_params, position)
        elif k:
            ahead, position, surplus = produce(step + k, step, sampling_params, position)
            queue.append(ahead)
            produced.append(ahead)
            carry, out = add_surplus(carry, surplus)
            evicted += out
        if carrying:
            metrics.update(carry_evicted=float(evicted), carry_groups=float(
                0 if carry is None else len(carry.scores) // group_size))
        # The time spent sampling and scoring in this call (in a thread: finished by it).
        metrics.update({name: sum(p.metrics[name] for p in produced)
                        for name in ("time_sampling", "time_scoring")})
        if k:
            metrics.update(staleness_metrics(rollout.version, step))
        latest[:] = [rollout]
        arrays = parallel.shard_batch(device_batch(rollout), mesh)
        kl_coef = host["kl_coef"]
        reference = ref_params if algorithm.needs_reference else None
        if algorithm.needs_reference and lora:
            reference = models.adapters_off(state.params["policy"])
        train_batch, prep_metrics = rl_step.prepare(
            state.params, reference, arrays, jnp.float32(kl_coef)
        )
        if algorithm.kl_in_reward and settings.kl_target > 0:  # needs this step's KL on the host
            kl_coef = float(
                rl_jax.adaptive_kl_update(
                    kl_coef,
                    float(prep_metrics["kl_ref"]),
                    target=settings.kl_target,
                    horizon=settings.kl_horizon,
                    n_steps=len(rollout.scores),
                )
            )
        metrics["kl_coef"] = kl_coef
        new_host = {"position": position, "kl_coef": kl_coef, "pending": queue, "carry": carry,
                    "running": running}
        return (train_batch, prep_metrics), metrics, new_host

    def step(state: TrainState, batch):
        train_batch, prep_metrics = batch
        state, metrics = rl_step.update(state, train_batch)
        return state, {**prep_metrics, **metrics}

    def finish_metrics(metrics: dict[str, float]) -> dict[str, float]:
        used = metrics["time_sampling"] + metrics["time_scoring"]
        return metrics | {
            "time_update": max(metrics["step_time"] - used, 0.0),
            "tokens_per_second": metrics["generated_tokens"] / metrics["step_time"],
        }

    def evaluate_policy(number: int, state: TrainState) -> dict[str, float]:
        key = stage_key(settings.seed, "eval/rl", number)
        evaluation = settings.evaluation
        return evaluate(ctx, state.params["policy"], key, evaluation, k=evaluation.k)

    def samples() -> str:
        texts, scores = latest[0].texts[:3], latest[0].scores[:3]
        return "\n".join(f"  {t!r} -> {s:+.2f}" for t, s in zip(texts, scores, strict=True))

    def encode_host(host: dict) -> dict:
        queue, position, carry, _, _ = settle(host)  # waits for a running sampling
        return {"position": position, "kl_coef": host["kl_coef"], "pending": encode_pending(queue),
                "carry": None if carry is None else encode_round(carry)}

    def decode_host(host: dict) -> dict:
        # (a checkpoint written before rl.max_staleness existed has no queue and no carry)
        carry = host.get("carry")
        return host | {"pending": decode_pending(Round, host.get("pending", [])),
                       "carry": None if carry is None else decode_round(Round, carry),
                       "running": None}

    def segment(end: int, template) -> Stage:
        return Stage(
            "rl", end, template, sharding, step, batch,
            host={"position": 0, "kl_coef": settings.kl_coef, "pending": [], "carry": None,
                  "running": None},
            evaluate=evaluate_policy,
            finish_metrics=finish_metrics,
            loss_names=LOSS_METRICS,
            log_names=("score", "accuracy", "eval/pass@1", "kl_ref", "entropy", "clip_frac_high",
                       "length", "tokens_per_second"),
            samples=samples,
            limits={"approx_kl": (settings.max_approx_kl, "rl.max_approx_kl")},
            encode_host=encode_host,
            decode_host=decode_host,
        )

    every = settings.reward_refresh_every
    ends = [*range(every, settings.steps, every), settings.steps] if every else [settings.steps]
    try:
        result = run_stage(segment(ends[0], state), settings.loop, ctx.workdir)
        for round_, end in enumerate(ends[1:], start=1):
            current["outcome"], current["process"] = refresh(
                round_, result.state.params["policy"], current["outcome"], current["process"])
            result = run_stage(segment(end, abstract), settings.loop, ctx.workdir)
        return result
    finally:
        if executor is not None:
            executor.shutdown(wait=True)
