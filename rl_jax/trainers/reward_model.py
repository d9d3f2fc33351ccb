"""Reward-model training from human preferences (pairs or K-wise rankings).

A reward model is the policy backbone with a scalar head read at the last real token
(``models.RewardModel``), started from the SFT policy (InstructGPT) or a Hugging Face checkpoint.
One step scores all ``K`` responses of ``batch_size`` prompts in one forward pass (``[P * K, L]``
right-padded ``prompt + response + EOS`` rows) and applies one of the losses of
``rl_jax.reward_losses`` to the ``[P, K]`` scores:

  * ``"pairwise"``: Bradley-Terry on ``K = 2`` pairs, with the rows' margins;
  * ``"ranking"``: InstructGPT's mean over all ``K(K-1)/2`` ordered pairs of a prompt;
  * ``"listwise"``: the Plackett-Luce likelihood of each ranking.

With ``rm.comparisons="shuffled_pairs"`` the training rankings are first expanded into their
``K(K-1)/2`` pairs (``data.expand_pairs``), which the seeded training stream shuffles across the
dataset, and a step takes as many pairs as ``batch_size`` prompts hold (``pairs_per_step``); on
``K = 2`` rows all three losses are the Bradley-Terry pairwise loss. Held-out evaluation is the
same either way: every prompt with all its responses.

The data is a preference file (``rl_jax.data.preferences``) or synthetic: ``num_responses``
samples of the policy per prompt, ranked by a hidden gold reward function with optional label
noise. Held-out pair accuracy (against the gold function without noise, for synthetic data) and the
reward mean/std are evaluated every ``eval.every`` steps. At the end the reward's mean and std over
the held-out responses (for synthetic data: the SFT policy's own samples) are saved with the
checkpoint, and RL uses the normalised reward ``(r - mean) / std``.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import rl_jax
from rl_jax import data, models, parallel, rewards
from rl_jax.learned_reward import LearnedReward
from rl_jax.optim import make_optimizer
from rl_jax.reward_losses import pair_accuracy, preference_loss
from rl_jax.rollout import right_pad
from rl_jax.settings import RMSettings, SamplingSettings
from rl_jax.train_state import TrainState, init_state, make_train_step
from rl_jax.trainers.loop import Stage, run_stage
from rl_jax.trainers.reward_rounds import round_name, round_training_set
from rl_jax.trainers.setup import Context, stage_key


@dataclasses.dataclass(frozen=True)
class EncodedPreference:
    """Token ids of a ``Preference``: ``[bos] + prompt`` and each ``response + [eos]``."""

    prompt: list[int]
    responses: list[list[int]]
    ranks: tuple[int, ...]
    margin: float


def encode_preferences(
    ctx: Context,
    prefs: Sequence[data.Preference],
    max_len: int,
    *,
    truncate_prompts: bool,
    skip_too_long: bool = False,
) -> tuple[list[EncodedPreference], int]:
    """Token ids of preferences, and how many were skipped for length.

    A row longer than ``max_len`` is an error, unless ``truncate_prompts`` drops prompt tokens from
    the left (after BOS) to fit; a row whose longest response alone does not fit is skipped (and
    counted) with ``skip_too_long``, else an error.
    """
    tok = ctx.tokenizer
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    out, skipped = [], 0
    for index, pref in enumerate(prefs):
        prompt = tok.encode(pref.prompt, add_special_tokens=False)
        responses = [
            tok.encode(r, add_special_tokens=False) + [tok.eos_token_id] for r in pref.responses
        ]
        room = max_len - len(bos) - max(len(r) for r in responses)
        if len(prompt) > room:
            if room < 1 and skip_too_long:
                skipped += 1
                continue
            if not truncate_prompts or room < 1:
                raise ValueError(
                    f"preference {index} (prompt {pref.prompt[:40]!r}...) needs "
                    f"{len(bos) + len(prompt) + max(len(r) for r in responses)} tokens > the "
                    f"model's context {max_len}; rm.truncate_prompts=True cuts prompts from the "
                    f"left, rm.skip_invalid=True skips rows whose response alone is too long"
                )
            prompt = prompt[len(prompt) - room :]
        out.append(EncodedPreference(bos + prompt, responses, tuple(pref.ranks), pref.margin))
    return out, skipped


def rm_batch(
    items: Sequence[EncodedPreference], num_responses: int, pad_id: int, max_len: int
) -> dict[str, np.ndarray]:
    """The arrays of one step.

    Returns ``tokens``, ``mask`` ``[P * K, L]`` (right-padded rows, prompt ``p``'s responses at rows
    ``p*K .. p*K + K - 1``; ``L`` a power of two >= 16, at most ``max_len``), ``ranks``,
    ``present`` ``[P, K]`` and ``margin`` ``[P]``. A prompt with fewer than ``K`` responses repeats
    its first one in the empty slots with ``present = 0``.
    """
    k = num_responses
    rows, ranks, present = [], [], []
    for item in items:
        if len(item.responses) > k:
            raise ValueError(f"a preference has {len(item.responses)} responses > K = {k}")
        extra = k - len(item.responses)
        rows += [item.prompt + r for r in item.responses] + [
            item.prompt + item.responses[0]
        ] * extra
        ranks.append(list(item.ranks) + [0] * extra)
        present.append([1] * len(item.responses) + [0] * extra)
    tokens, mask = right_pad(rows, pad_id, max_len)
    return {
        "tokens": tokens,
        "mask": mask,
        "ranks": np.asarray(ranks, np.int32),
        "present": np.asarray(present, np.float32),
        "margin": np.asarray([item.margin for item in items], np.float32),
    }


def make_rm_loss(graphdef: nnx.GraphDef, loss: str):
    """``loss_fn(params, batch) -> (loss, metrics)`` over one ``rm_batch``."""

    def loss_fn(params, batch):
        ranks, present = batch["ranks"], batch["present"]
        flat = models.apply_model(
            graphdef,
            params["reward"],
            batch["tokens"],
            models.positions_from_mask(batch["mask"]),
            batch["mask"],
        )
        scores = flat.reshape(ranks.shape)
        value = preference_loss(scores, ranks, present, batch["margin"], loss)
        metrics = {
            "loss": value,
            "accuracy": pair_accuracy(scores, ranks, present),
            "reward_mean": rl_jax.masked_mean(scores, present),
            "reward_std": jnp.sqrt(rl_jax.masked_var(scores, present)),
        }
        return value, metrics

    return loss_fn


def synthetic_preferences(
    ctx: Context,
    policy_params: Any,
    examples: Sequence[data.Example],
    key: jax.Array,
    *,
    num_responses: int,
    gold: str,
    noise: float,
    rng: np.random.Generator,
    sampling: SamplingSettings,
    chunk: int = 64,
) -> list[data.Preference]:
    """``num_responses`` samples of the policy per example (``sampling``'s budget and
    temperature), ranked by the reward ``gold`` (prompts whose samples all tie are dropped)."""
    prefs = []
    for start in range(0, len(examples), chunk):
        part = list(examples[start : start + chunk])
        out = ctx.sampler.generate(
            policy_params,
            ctx.encode_prompts(part),
            jax.random.fold_in(key, start),
            n=num_responses,
            max_new_tokens=sampling.max_new_tokens,
            temperature=sampling.temperature,
        )
        texts = ctx.decode_responses(out.response_tokens, out.response_mask)
        repeated = [ex for ex in part for _ in range(num_responses)]
        scores = rewards.combine_rewards({gold: 1.0}, texts, repeated)[0]
        scores = scores.reshape(len(part), num_responses)
        grouped = [texts[i * num_responses : (i + 1) * num_responses] for i in range(len(part))]
        ranks = data.gold_ranks(scores, rng, noise)
        prefs += data.preferences_from_responses([ex.prompt for ex in part], grouped, ranks)
    return prefs


def _encode(pref: data.Preference) -> list:
    return [pref.prompt, list(pref.responses), list(pref.ranks), pref.margin]


def _decode(row: list) -> data.Preference:
    prompt, responses, ranks, margin = row
    return data.Preference(prompt, tuple(responses), tuple(ranks), margin)


def preference_data(
    ctx: Context, policy_params: Any, settings: RMSettings, round_: int = 0, replay: float = 0.0
) -> tuple[list[data.Preference], list[data.Preference]]:
    """The training and held-out preferences of ``settings`` (sampled from the policy when
    ``rm.data == "synthetic"``). Synthetic training preferences are saved in
    ``workdir/rm_data/`` (``trainers.reward_rounds``); round ``round_ >= 1`` of iterative RL
    samples its own (PRNG draws ``2 round_`` and ``2 round_ + 1`` of the ``"rm"`` stream) and adds
    the share ``replay`` of the earlier rounds'."""
    if settings.data == "synthetic":
        seed = settings.seed
        prompts = [ex for i in range(0, settings.num_prompts, 64) for ex in ctx.task.batch(i, 64)]
        common = dict(num_responses=settings.num_responses, gold=settings.gold,
                      sampling=settings.sampling)
        extra = [round_] if round_ else []  # round 0 keeps the stage's own streams
        train, _ = round_training_set(
            ctx.workdir, "rm", round_,
            lambda: synthetic_preferences(
                ctx,
                policy_params,
                prompts[: settings.num_prompts],
                stage_key(seed, "rm", 2 * round_),
                noise=settings.label_noise,
                rng=np.random.default_rng([seed, 1, *extra]),
                **common,
            ),
            _encode, _decode, replay, seed,
        )
        # Held-out labels are the gold function itself (no noise): accuracy against the truth.
        held_out = synthetic_preferences(
            ctx,
            policy_params,
            ctx.task.eval_set(settings.eval_size),
            stage_key(seed, "rm", 2 * round_ + 1),
            noise=0.0,
            rng=np.random.default_rng([seed, 2, *extra]),
            **common,
        )
        return train, held_out
    if round_:
        raise ValueError("a reward-model refresh needs rm.data='synthetic' (new labels for the "
                         "policy's samples)")
    prefs, skipped = data.load_preferences(settings.path, settings.data,
                                           skip_invalid=settings.skip_invalid)
    print(f"rm: {len(prefs)} preferences from {settings.path} ({skipped} malformed rows skipped)")
    if not 0 < settings.eval_size < len(prefs):
        raise ValueError(f"need 0 < rm.eval_size < {len(prefs)} preferences, "
                         f"got {settings.eval_size}")
    order = data.eval_rng(settings.seed).permutation(len(prefs))
    held = set(order[: settings.eval_size].tolist())
    return [p for i, p in enumerate(prefs) if i not in held], [prefs[i] for i in sorted(held)]


def evaluate_rm(
    reward: LearnedReward, items: Sequence[EncodedPreference], k: int, pad_id: int, max_len: int
) -> dict[str, float]:
    """Held-out pair accuracy, loss (the mean over every held-out ordered pair of
    ``-log sigmoid(r_better - r_worse)``: ``ranking_loss`` over the whole set, whatever loss
    trained the model) and the mean/std of the rewards of the held-out responses (scored in
    batches of 64 prompts)."""
    scores, ranks, present = [], [], []
    for start in range(0, len(items), 64):
        batch = rm_batch(items[start : start + 64], k, pad_id, max_len)
        scores.append(reward.raw(batch["tokens"], batch["mask"]).reshape(batch["ranks"].shape))
        ranks.append(batch["ranks"])
        present.append(batch["present"])
    scores, ranks, present = map(np.concatenate, (scores, ranks, present))
    live = scores[present > 0]
    return {
        "pair_accuracy": float(pair_accuracy(scores, ranks, present)),
        "loss": float(rl_jax.ranking_loss(scores, ranks, present)),
        "reward_mean": float(live.mean()),
        "reward_std": float(live.std()),
    }


def pairs_per_step(batch_size: int, num_prompts: int, num_pairs: int, multiple: int = 1) -> int:
    """The batch of ``rm.comparisons="shuffled_pairs"``: as many comparisons a step as
    ``batch_size`` prompts of the grouped data hold on average, ``round(batch_size * num_pairs /
    num_prompts)`` (so an epoch has the same steps and comparisons), rounded up to a multiple of
    ``multiple`` (the devices that split a batch), at least ``multiple``."""
    pairs = round(batch_size * num_pairs / num_prompts)
    return max(multiple, -(-pairs // multiple) * multiple)


def init_reward_model(
    ctx: Context, policy_params: Any, settings: RMSettings
) -> models.RewardModel:
    """A reward model from ``rm.init_path`` (a Hugging Face directory) or the policy."""
    rngs = nnx.Rngs(settings.seed + 2)
    if settings.init_path:
        policy, _ = models.load_pretrained(
            settings.init_path, dtype=settings.dtype, param_dtype=settings.param_dtype
        )
    else:
        policy = nnx.merge(ctx.graphdef, policy_params)
    return models.RewardModel.from_policy(policy, rngs=rngs)


def run_rm(
    ctx: Context, mesh: jax.sharding.Mesh, policy_params: Any, settings: RMSettings, *,
    round_: int = 0, start: LearnedReward | None = None, replay: float = 0.0,
) -> tuple[LearnedReward, dict[str, float]]:
    """Trains a reward model (``settings``, the config's ``rm``) in ``workdir/rm`` (resumed, or
    only restored when finished). Returns the learned reward, normalised by the mean and std of
    its rewards on the held-out responses at the last evaluation, and that evaluation.

    Iterative RL: round ``round_ >= 1`` (stage ``rm_<k>``, ``trainers.reward_rounds``) continues
    ``start`` (round ``k - 1``'s model) with a fresh optimizer on synthetic preferences of
    ``policy_params`` (the current policy) plus a share ``replay`` of the earlier rounds'."""
    if start is None:
        model = init_reward_model(ctx, policy_params, settings)
        graphdef, params = nnx.split(model)
    else:  # a copy: the step donates the state it trains, and ``start`` keeps its own
        graphdef, params = start.graphdef, jax.tree.map(jnp.copy, start.params)
        model = nnx.merge(graphdef, params)
    name = round_name("rm", round_)
    max_len = model.config.max_position_embeddings
    pad_id = ctx.tokenizer.pad_token_id
    tx = make_optimizer(settings.optim, settings.steps)
    state, sharding = init_state({"reward": params}, tx, mesh)
    loss_fn = make_rm_loss(graphdef, settings.loss)
    step = parallel.data_parallel_step(make_train_step(loss_fn, tx), mesh, sharding)
    ctx.check_mesh(mesh)  # synthetic preferences: each device samples its share

    @functools.cache
    def prepared() -> tuple[data.FileDataset, list[EncodedPreference], int, int, int]:
        """The encoded training stream, held-out items, their K, the training items' K and the
        items a step: built on first use only, so a finished stage that is only restored samples
        and encodes nothing."""
        start_time = time.perf_counter()
        train, held_out = preference_data(ctx, policy_params, settings, round_, replay)
        k = max(len(p.responses) for p in train + held_out)  # the held-out batches' K
        train_k, per_step = k, settings.batch_size
        if settings.comparisons == "shuffled_pairs":  # each comparison its own batch element
            pairs = data.expand_pairs(train)
            per_step = pairs_per_step(settings.batch_size, len(train), len(pairs),
                                      len(mesh.local_devices))
            print(f"{name}: {len(train)} rankings -> {len(pairs)} shuffled pairs, {per_step} a "
                  "step")
            train, train_k = pairs, 2
        if settings.loss == "pairwise" and train_k != 2:
            raise ValueError(
                f"rm.loss='pairwise' needs pairs (K = 2); the data has K = {train_k}")
        options = dict(truncate_prompts=settings.truncate_prompts,
                       skip_too_long=settings.skip_invalid)
        train_items, train_skipped = encode_preferences(ctx, train, max_len, **options)
        eval_items, eval_skipped = encode_preferences(ctx, held_out, max_len, **options)
        print(f"{name}: {len(train_items)} training and {len(eval_items)} held-out items, K = {k} "
              f"({train_skipped + eval_skipped} skipped: a response longer than the context; "
              f"{time.perf_counter() - start_time:.1f}s to build)")
        # The training stream: seeded epoch permutations, a pure function of the step (for
        # shuffled pairs, this is what spreads a ranking's pairs across the dataset).
        stream = data.FileDataset(train_items, seed=settings.seed + round_)
        return stream, eval_items, k, train_k, per_step

    def batch(step: int, state: TrainState, host: dict):
        stream, _, _, train_k, per_step = prepared()
        arrays = rm_batch(stream.batch(step, per_step), train_k, pad_id, max_len)
        return parallel.shard_batch(arrays, mesh), {}, host

    def evaluate(number: int, state: TrainState) -> dict[str, float]:
        _, eval_items, k, _, _ = prepared()
        reward = LearnedReward(graphdef, state.params["reward"], 0.0, 1.0, mesh=mesh)
        return evaluate_rm(reward, eval_items, k, pad_id, max_len)

    stage = Stage(
        name, settings.steps, state, sharding, step, batch,
        evaluate=evaluate,
        log_names=("loss", "accuracy", "eval/pair_accuracy"),
    )
    result = run_stage(stage, settings.loop, ctx.workdir)
    last_eval = result.last_eval
    # The normalisation RL uses: held-out responses (for synthetic data, the policy's samples).
    std = max(last_eval["reward_std"], 1e-6)
    reward = LearnedReward(
        graphdef, result.state.params["reward"], last_eval["reward_mean"], std, mesh=mesh
    )
    return reward, last_eval
