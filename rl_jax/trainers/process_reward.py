"""The process reward model stage (``prm``): a step-correctness logit at every token, trained with
per-step binary cross-entropy on the step-end tokens (Math-Shepherd, Wang et al. 2024;
DeepSeekMath §4.1.3).

How the training data is made: for each of ``num_prompts`` training prompts (the task's seeded
stream, as the reward-model stage takes them) ``num_responses`` responses are sampled from the
policy the stage starts from (the SFT policy; in a refresh, the RL policy of that moment), with
the rollout's budget and temperature. The task's gold step checker (``rl_jax.data.steps``) splits
each response into steps and labels each 1 (right) or 0 (wrong); ``data.step_token_ends`` maps each
step to the token it ends on (the last step to the response's last token, its EOS). A response
with no step (empty) is dropped. The held-out set is made the same way from ``eval_size`` prompts
of the evaluation set. The new items (``StepItem``: token ids, step-end indices, labels) of every
round are written to ``workdir/prm_data/<name>.json``, read back on a restart and by later
refreshes (replay: ``trainers.reward_rounds``).

The model is the policy's backbone with a scalar head (``models.ProcessRewardModel``, the critic's
and reward model's ``from_policy``), trained by the loop every stage shares
(``loop.run_stage``) on ``rl_jax.reward_losses.process_reward_loss``. RL reads it through
``LearnedReward.raw`` (the logits at every token) and ``step_scores`` (the sigmoid at each step's
last token): ``rl.step_rewards = "model"``.

Iterative RL (``rl.reward_refresh_every``): round ``k >= 1`` (stage ``prm_<k>``) starts from round
``k - 1``'s parameters with a fresh optimizer, and trains ``steps`` more on new items sampled from
the current policy plus a share ``replay`` of items drawn (seeded) from the earlier rounds'
training sets.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rl_jax import data, models, parallel
from rl_jax.learned_reward import LearnedReward
from rl_jax.optim import make_optimizer
from rl_jax.reward_losses import process_reward_loss
from rl_jax.rollout import right_pad
from rl_jax.settings import PRMSettings, SamplingSettings
from rl_jax.train_state import TrainState, init_state, make_train_step
from rl_jax.trainers.loop import Stage, run_stage
from rl_jax.trainers.reward_rounds import round_name, round_training_set
from rl_jax.trainers.setup import Context, stage_key


@dataclasses.dataclass(frozen=True)
class StepItem:
    """One labelled response: ``tokens`` (``[bos] + prompt + response``, EOS included), the index
    in ``tokens`` where each step ends, and each step's 0/1 label."""

    tokens: tuple[int, ...]
    step_ends: tuple[int, ...]
    labels: tuple[float, ...]


def token_text_ends(tokenizer, response_tokens: np.ndarray, response_mask: np.ndarray,
                    eos_ids) -> list[np.ndarray]:
    """Per response, ``[n]``: the length of the text its first ``t + 1`` non-EOS tokens decode
    to (``decode_responses``' text), for mapping characters to tokens."""
    eos = set(eos_ids)
    ends = []
    for row, row_mask in zip(np.asarray(response_tokens), np.asarray(response_mask), strict=True):
        ids = [int(t) for t, m in zip(row, row_mask, strict=True) if m and int(t) not in eos]
        prefixes = tokenizer.batch_decode([ids[: t + 1] for t in range(len(ids))],
                                          skip_special_tokens=False)
        ends.append(np.array([len(p) for p in prefixes], np.int64))
    return ends


def response_steps(ctx: Context, steps: Sequence[Sequence[tuple[int, float]]], response_tokens,
                   response_mask, num_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """``(step_rewards, step_ends)`` ``[rows, num_steps]`` of sampled responses from their steps
    in characters (``steps[b]``: ``[(end, reward), ...]``), ends as response token indices."""
    response_mask = np.asarray(response_mask)
    text_ends = token_text_ends(ctx.tokenizer, response_tokens, response_mask, ctx.eos_ids)
    lengths = response_mask.sum(1).astype(np.int64)
    return data.step_arrays(steps, text_ends, lengths, num_steps)


def step_scores(token_logits: np.ndarray, step_ends: np.ndarray) -> np.ndarray:
    """``[batch, S]`` float32: ``sigmoid(token_logits[b, step_ends[b, s]])``, the process reward
    model's probability that step ``s`` is right; 0 where ``step_ends < 0`` (no step).

    token_logits: ``[batch, T]``; step_ends: ``[batch, S]`` int indices into ``T``.
    """
    logits = np.take_along_axis(np.asarray(token_logits, np.float32),
                                np.maximum(step_ends, 0), axis=1)
    return np.where(step_ends >= 0, 1.0 / (1.0 + np.exp(-logits)), 0.0).astype(np.float32)


def label_steps(
    ctx: Context,
    policy_params: Any,
    examples: Sequence[data.Example],
    key: jax.Array,
    *,
    num_responses: int,
    checker: data.StepChecker,
    num_steps: int,
    sampling: SamplingSettings,
    chunk: int = 64,
) -> list[StepItem]:
    """``num_responses`` samples of the policy for each example, their steps labelled by the gold
    step ``checker`` (at most ``num_steps`` a response); responses without a step are dropped."""
    items = []
    for start in range(0, len(examples), chunk):
        part = list(examples[start : start + chunk])
        prompts = ctx.encode_prompts(part)
        out = ctx.sampler.generate(
            policy_params, prompts, jax.random.fold_in(key, start), n=num_responses,
            max_new_tokens=sampling.max_new_tokens, temperature=sampling.temperature,
        )
        response_tokens, response_mask = map(np.asarray, (out.response_tokens, out.response_mask))
        texts = ctx.decode_responses(response_tokens, response_mask)
        repeated = [ex for ex in part for _ in range(num_responses)]
        steps = [checker(text, ex) for text, ex in zip(texts, repeated, strict=True)]
        labels, ends = response_steps(ctx, steps, response_tokens, response_mask, num_steps)
        for row in range(len(texts)):
            valid = ends[row] >= 0
            if not valid.any():
                continue
            prompt = prompts[row // num_responses]
            length = int(response_mask[row].sum())
            tokens = [*prompt, *(int(t) for t in response_tokens[row, :length])]
            items.append(StepItem(tuple(tokens),
                                  tuple(int(e) + len(prompt) for e in ends[row][valid]),
                                  tuple(float(y) for y in labels[row][valid])))
    return items


def step_batch(items: Sequence[StepItem], pad_id: int, max_len: int,
               num_steps: int) -> dict[str, np.ndarray]:
    """The arrays of one step: ``tokens``, ``mask`` ``[B, L]`` right-padded (``right_pad``),
    ``step_ends`` ``[B, num_steps]`` int32 (indices into ``L``; ``-1``: no step) and
    ``step_labels`` ``[B, num_steps]`` float32."""
    tokens, mask = right_pad([item.tokens for item in items], pad_id, max_len)
    ends = np.full((len(items), num_steps), -1, np.int32)
    labels = np.zeros((len(items), num_steps), np.float32)
    for row, item in enumerate(items):
        ends[row, : len(item.step_ends)] = item.step_ends
        labels[row, : len(item.labels)] = item.labels
    return {"tokens": tokens, "mask": mask, "step_ends": ends, "step_labels": labels}


def make_prm_loss(graphdef: nnx.GraphDef):
    """``loss_fn(params, batch) -> (loss, metrics)`` over one ``step_batch``."""

    def loss_fn(params, batch):
        logits = models.apply_model(graphdef, params["reward"], batch["tokens"],
                                    models.positions_from_mask(batch["mask"]), batch["mask"])
        loss, metrics = process_reward_loss(logits, batch["step_ends"], batch["step_labels"])
        return loss, {"loss": loss, **metrics}

    return loss_fn


def evaluate_prm(reward: LearnedReward, items: Sequence[StepItem], pad_id: int, max_len: int,
                 num_steps: int) -> dict[str, float]:
    """Held-out ``loss`` (the mean per-step cross-entropy), ``step_accuracy`` (the share of steps
    whose logit has its label's sign) and ``last_step_accuracy`` (of the answers' steps), in
    batches of 64 responses."""
    logits, labels, is_last = [], [], []
    for start in range(0, len(items), 64):
        batch = step_batch(items[start : start + 64], pad_id, max_len, num_steps)
        token_logits = reward.raw(batch["tokens"], batch["mask"])
        ends = batch["step_ends"]
        valid = ends >= 0
        last = np.arange(num_steps)[None, :] == valid.sum(1, keepdims=True) - 1
        logits.append(np.take_along_axis(token_logits, np.maximum(ends, 0), axis=1)[valid])
        labels.append(batch["step_labels"][valid])
        is_last.append(last[valid])
    z, y, is_last = map(np.concatenate, (logits, labels, is_last))
    right = (z > 0) == (y > 0.5)
    bce = np.logaddexp(0.0, -z) * y + np.logaddexp(0.0, z) * (1 - y)
    return {"loss": float(bce.mean()), "step_accuracy": float(right.mean()),
            "last_step_accuracy": float(right[is_last].mean())}


def _encode(item: StepItem) -> list:
    return [item.tokens, item.step_ends, item.labels]


def _decode(row: list) -> StepItem:
    return StepItem(*(tuple(x) for x in row))


def run_prm(
    ctx: Context,
    mesh: jax.sharding.Mesh,
    policy_params: Any,
    settings: PRMSettings,
    *,
    round_: int = 0,
    start: LearnedReward | None = None,
    replay: float = 0.0,
) -> tuple[LearnedReward, dict[str, float]]:
    """Trains a process reward model on ``policy_params``' labelled samples in
    ``workdir/<round_name("prm", round_)>`` (resumed, or only restored when finished; nothing is
    sampled then). Round 0 starts from the policy's backbone with a fresh head; round ``k >= 1``
    from ``start`` (round ``k - 1``'s model), on new items plus a share ``replay`` of rounds
    ``0 .. k-1``'s. Returns the model (``LearnedReward``; RL reads ``raw``) and its last
    evaluation."""
    name = round_name("prm", round_)
    if start is None:
        policy = nnx.merge(ctx.graphdef, policy_params)
        model = models.ProcessRewardModel.from_policy(policy, rngs=nnx.Rngs(settings.seed + 3))
        graphdef, params = nnx.split(model)
    else:
        # A copy: the step donates the state it trains, and ``start`` keeps its own.
        graphdef, params = start.graphdef, jax.tree.map(jnp.copy, start.params)
    max_len = nnx.merge(graphdef, params).config.max_position_embeddings
    pad_id = ctx.tokenizer.pad_token_id
    tx = make_optimizer(settings.optim, settings.steps)
    state, sharding = init_state({"reward": params}, tx, mesh)
    step = parallel.data_parallel_step(make_train_step(make_prm_loss(graphdef), tx), mesh,
                                       sharding)
    ctx.check_mesh(mesh)
    common = dict(num_responses=settings.num_responses, checker=settings.checker,
                  num_steps=settings.max_steps, sampling=settings.sampling)

    def sample(examples, index):
        key = stage_key(settings.seed, "prm", 2 * round_ + index)  # round k: draws 2k, 2k + 1
        return label_steps(ctx, policy_params, examples, key, **common)

    @functools.cache
    def prepared() -> tuple[data.FileDataset, list[StepItem]]:
        """The training stream and held-out items, built on first use only."""
        prompts = [ex for i in range(0, settings.num_prompts, 64) for ex in ctx.task.batch(i, 64)]
        train, num_new = round_training_set(
            ctx.workdir, "prm", round_, lambda: sample(prompts[: settings.num_prompts], 0),
            _encode, _decode, replay, settings.seed)
        held_out = sample(ctx.task.eval_set(settings.eval_size), 1)
        if not train or not held_out:
            raise ValueError(f"{name}: no response with a step to train or evaluate on")
        steps = np.mean([len(item.labels) for item in train])
        right = np.mean([y for item in train for y in item.labels])
        print(f"{name}: {num_new} new and {len(train) - num_new} replayed training responses "
              f"({steps:.1f} steps each, {right:.0%} right), {len(held_out)} held out")
        return data.FileDataset(train, seed=settings.seed + round_), held_out

    def batch(number: int, state: TrainState, host: dict):
        stream, _ = prepared()
        arrays = step_batch(stream.batch(number, settings.batch_size), pad_id, max_len,
                            settings.max_steps)
        return parallel.shard_batch(arrays, mesh), {}, host

    def evaluate(number: int, state: TrainState) -> dict[str, float]:
        reward = LearnedReward(graphdef, state.params["reward"], 0.0, 1.0, mesh=mesh)
        return evaluate_prm(reward, prepared()[1], pad_id, max_len, settings.max_steps)

    stage = Stage(name, settings.steps, state, sharding, step, batch, evaluate=evaluate,
                  log_names=("loss", "step_accuracy", "eval/step_accuracy"))
    result = run_stage(stage, settings.loop, ctx.workdir)
    reward = LearnedReward(graphdef, result.state.params["reward"], 0.0, 1.0, mesh=mesh)
    return reward, result.last_eval
