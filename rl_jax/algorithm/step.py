"""The jitted parts of one RL iteration, shared by PPO, GRPO and their variants.

``build_rl_step`` is the one way to get them: the RL stage, the benchmarks and the tests call it.

An iteration is: sample -> score (host) -> ``prepare`` (old/ref log-probs, values, advantages) ->
``update`` (``epochs x minibatches`` of clipped policy and value updates in one ``lax.scan``).
The algorithm is entirely in ``RLSettings``: which advantage estimator, where the KL goes, which
loss options, and whether a critic exists.

Batch layout: see ``rl_jax.algorithm.batch``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import rl_jax
from rl_jax import models, parallel
from rl_jax.algorithm.batch import RolloutBatch, TrainBatch
from rl_jax.algorithm.registry import ESTIMATORS, IS_CORRECTIONS, NO_CORRECTION, POLICY_LOSSES
from rl_jax.algorithm.settings import RLSettings
from rl_jax.chunked import chunked_token_stats, head_logits
from rl_jax.train_state import Metrics, TrainState, optimizer_step


def _response_part(x: jax.Array, response_len: int) -> jax.Array:
    """The ``[batch, R, ...]`` positions whose outputs predict the response tokens."""
    return x[:, -response_len - 1 : -1]


def policy_logits(graphdef: nnx.GraphDef, params, tokens, mask, response_len: int) -> jax.Array:
    """``[batch, R, vocab]`` logits predicting each response token."""
    logits, _ = models.apply_lm(graphdef, params, tokens, models.positions_from_mask(mask), mask)
    return _response_part(logits, response_len)


def split_prompts(
    tokens: jax.Array, mask: jax.Array, response_len: int, group_size: int
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """The shared-prefix layout of rows ``[n * G, P + R]`` whose groups of ``G`` contiguous rows
    share a prompt: ``(prompt_tokens [n, P], prompt_mask [n, P], response_tokens [n * G, R],
    response_mask [n * G, R])``, each prompt read from its group's first row."""
    rows, width = tokens.shape
    prompt_len = width - response_len

    def prompts(x):
        return x.reshape(rows // group_size, group_size, width)[:, 0, :prompt_len]

    return prompts(tokens), prompts(mask), tokens[:, prompt_len:], mask[:, prompt_len:]


def policy_token_stats(
    graphdef: nnx.GraphDef,
    params,
    tokens: jax.Array,
    mask: jax.Array,
    response_len: int,
    *,
    temperature: float,
    logits_chunk: int,
    with_entropy: bool = False,
    shared_group: int = 0,
) -> tuple[jax.Array, jax.Array | None]:
    """``(logprobs, entropy)`` ``[batch, R]`` of the response tokens under ``softmax(logits / T)``.

    With ``logits_chunk > 0`` only the ``R`` positions that predict the response go through the
    LM head, ``logits_chunk`` of them at a time (``rl_jax.chunked``): no ``[batch, P + R, vocab]``
    array exists, forward or backward. ``logits_chunk = 0`` takes the full logits
    (``policy_logits``), equal numbers. The entropy (None unless ``with_entropy``) is a metric:
    no gradient.

    With ``shared_group = G > 0`` the rows are groups of ``G`` sharing a prompt and the forward
    runs each prompt once (``models.apply_lm_shared_prefix``); the head then sees only the ``R``
    predicting positions whatever ``logits_chunk``.
    """
    response_tokens = tokens[:, -response_len:]
    if shared_group:
        hidden, head, vocab_major = models.apply_lm_shared_prefix(
            graphdef, params, *split_prompts(tokens, mask, response_len, shared_group)
        )
        if logits_chunk <= 0:
            logits = head_logits(hidden, head, vocab_major=vocab_major)
            return _stats_from_logits(logits, response_tokens, temperature, with_entropy)
    elif logits_chunk <= 0:
        logits = policy_logits(graphdef, params, tokens, mask, response_len)
        return _stats_from_logits(logits, response_tokens, temperature, with_entropy)
    else:
        hidden, head, vocab_major = models.apply_lm_hidden(
            graphdef, params, tokens, models.positions_from_mask(mask), mask
        )
        hidden = _response_part(hidden, response_len)
    return chunked_token_stats(
        hidden,
        head,
        response_tokens,
        vocab_major=vocab_major,
        temperature=temperature,
        chunk_size=logits_chunk,
        with_entropy=with_entropy,
    )


def _stats_from_logits(logits, response_tokens, temperature, with_entropy):
    logprobs = rl_jax.token_logprobs(logits, response_tokens, temperature=temperature)
    if not with_entropy:
        return logprobs, None
    return logprobs, rl_jax.entropy(jax.lax.stop_gradient(logits) / temperature)


def critic_values(
    graphdef: nnx.GraphDef, params, tokens, mask, response_len: int, shared_group: int = 0
) -> jax.Array:
    """``[batch, R]`` values V(s_t) of the states before each response token (with
    ``shared_group = G > 0``, each group's prompt computed once, as in ``policy_token_stats``)."""
    if shared_group:
        return models.apply_values_shared_prefix(
            graphdef, params, *split_prompts(tokens, mask, response_len, shared_group)
        )
    critic = nnx.merge(graphdef, params)
    return _response_part(critic(tokens, models.positions_from_mask(mask), mask), response_len)


def group_rows(batch: TrainBatch, group_size: int) -> TrainBatch:
    """Every per-row leaf ``[n * G, ...]`` of ``batch`` as ``[n, G, ...]``: the shared-prefix
    layout, whose leading axis (what ``update`` shuffles and splits over devices) is the prompt."""
    return jax.tree.map(lambda x: x.reshape(-1, group_size, *x.shape[1:]), batch)


def ungroup_rows(batch: TrainBatch) -> TrainBatch:
    """The inverse of ``group_rows`` (a minibatch's PRNG key, not a row leaf, is kept as is)."""
    rows = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), batch.replace(loss_key=None))
    return rows.replace(loss_key=batch.loss_key)


def advantages_and_returns(
    settings: RLSettings,
    scores: jax.Array,
    response_mask: jax.Array,
    values: jax.Array | None,
    token_kl: jax.Array | None,
    kl_coef: jax.Array,
    rollout: RolloutBatch | None = None,
) -> tuple[jax.Array, jax.Array | None]:
    """Advantages ``[batch, R]`` (and returns for a critic) by the configured estimator.

    ``scores`` ``[batch]`` is the sequence reward, placed on the last real token; ``token_kl``
    ``[batch, R]`` (k1 to the reference) is subtracted from the token rewards when
    ``kl_in_reward``. ``rollout`` gives an estimator that reads the correctness indicator or the
    step rewards (``Estimator.reads``) its arrays.
    """
    estimator = ESTIMATORS[settings.estimator]
    if settings.whiten_rewards:
        scores = rl_jax.whiten(scores, jnp.ones_like(scores), shift_mean=False)
    adv, returns = estimator.fn(settings, scores, response_mask, values, token_kl, kl_coef,
                                rollout)
    if settings.whiten_advantages and not estimator.whitens:
        adv = rl_jax.whiten(adv, response_mask)
    return adv, returns


def rollout_policy_metrics(
    entropy: jax.Array,
    logprobs: jax.Array,
    sampler_logprobs: jax.Array,
    response_mask: jax.Array,
) -> dict[str, jax.Array]:
    """Entropy of the tempered policy and its mismatch with the sampler, at the sampling weights.

    entropy (of ``softmax(logits / T)``, per token), logprobs, sampler_logprobs, response_mask:
    ``[batch, R]``.
    """
    entropy, logprobs = jax.lax.stop_gradient((entropy, logprobs))
    return {
        "entropy": rl_jax.masked_mean(entropy, response_mask),
        "sampler_logprob_diff": rl_jax.masked_mean(
            jnp.abs(logprobs - sampler_logprobs), response_mask
        ),
        "sampler_kl": rl_jax.masked_mean(
            rl_jax.kl(sampler_logprobs, logprobs, estimator="k3"), response_mask
        ),
    }


def behaviour_weight_metrics(
    settings: RLSettings, logprobs: jax.Array, sampler_logprobs: jax.Array,
    response_mask: jax.Array,
) -> dict[str, jax.Array]:
    """With ``settings.max_staleness >= 1``, the importance weights ``pi / mu`` between the
    policy at the update (``logprobs`` ``[batch, R]``) and the one that sampled the rollout
    (``sampler_logprobs``): ``rl_jax.mismatch.behaviour_weight_stats`` over PPO's band
    ``[1 - clip_low, 1 + clip_high]``. Empty (no metric) on-policy, so that run is unchanged."""
    if settings.max_staleness < 1:
        return {}
    return rl_jax.behaviour_weight_stats(
        jax.lax.stop_gradient(logprobs), sampler_logprobs, response_mask,
        low=1.0 - settings.clip_low, high=1.0 + settings.clip_high,
    )


def overlong_filter_mask(response_mask: jax.Array, truncated: jax.Array) -> jax.Array:
    """DAPO's overlong filtering: the loss mask ``[batch, R]`` without the truncated responses.

    ``loss_mask[b, t] = response_mask[b, t] * (1 - truncated[b])``, with ``truncated`` ``[batch]``
    1.0 for a response that has no EOS within ``max_new_tokens``. Every loss term (policy, KL,
    value) aggregates over ``loss_mask``, so a truncated row adds nothing to the loss or its
    gradient and, by ``aggregate_terms``' rule for rows without real tokens, nothing to any
    normaliser: ``token-mean`` divides by the tokens of the kept rows, the ``seq-mean-*`` modes by
    the number of kept non-empty rows (with ``count_empty_rows=True`` a filtered row counts in
    that number, as an empty response does). The advantages are computed before the filter:
    truncated responses still count in their group's mean and std, as in DAPO (verl).
    """
    return response_mask * (1.0 - truncated.astype(response_mask.dtype))[:, None]


def make_prepare(settings: RLSettings, policy_graphdef, value_graphdef=None):
    """``prepare(params, ref_params, batch: RolloutBatch, kl_coef) -> (TrainBatch, metrics)``.

    Recomputes the old log-probs with the trainer's own forward pass (unless
    ``settings.single_pass``; the sampler's are kept for the mismatch metric and truncated
    importance sampling), the reference log-probs, the values and the advantages.

    With ``settings.shared_prefix`` every forward runs each group's prompt once and the
    ``TrainBatch`` comes out grouped (``group_rows``: leaves ``[num_prompts, G, ...]``), so that
    ``update`` shuffles, splits and trains on whole groups.
    """

    def prepare(params, ref_params, batch: RolloutBatch, kl_coef):
        tokens, mask, response_mask = batch.tokens, batch.mask, batch.response_mask
        response_len = response_mask.shape[1]
        stats = dict(temperature=settings.temperature, logits_chunk=settings.logits_chunk,
                     shared_group=settings.shared_group)
        metrics = {}
        # The policy's log-probs at the sampling weights (the sampler's, in a single pass).
        stored_old_logprobs = None
        old_logprobs = batch.sampler_logprobs
        if not settings.single_pass:
            old_logprobs, entropy = policy_token_stats(
                policy_graphdef, params["policy"], tokens, mask, response_len,
                with_entropy=True, **stats,
            )
            stored_old_logprobs = old_logprobs
            metrics = rollout_policy_metrics(
                entropy, old_logprobs, batch.sampler_logprobs, response_mask
            )
            metrics.update(behaviour_weight_metrics(settings, old_logprobs, batch.sampler_logprobs,
                                             response_mask))
        token_kl = ref_logprobs = None
        if ref_params is not None:
            ref_logprobs, _ = policy_token_stats(
                policy_graphdef, ref_params, tokens, mask, response_len, **stats
            )
            token_kl = rl_jax.kl(old_logprobs, ref_logprobs, estimator="k1")
            metrics["kl_ref"] = (token_kl * response_mask).sum(1).mean()  # per sequence
        values = None
        if settings.has_critic:
            values = critic_values(value_graphdef, params["value"], tokens, mask, response_len,
                                   settings.shared_group)
        adv, returns = advantages_and_returns(
            settings, batch.scores, response_mask, values, token_kl, kl_coef, batch
        )
        loss_mask = policy_mask = None  # the response mask
        if settings.is_correction != NO_CORRECTION:
            weights, policy_mask, is_metrics = mismatch_correction(
                settings, old_logprobs, batch.sampler_logprobs, response_mask
            )
            adv = adv * weights
            metrics.update(is_metrics)
        if settings.overlong_filter:
            loss_mask = overlong_filter_mask(response_mask, batch.truncated)
            if policy_mask is not None:
                policy_mask = policy_mask * loss_mask
            metrics["overlong_filtered"] = jnp.mean(batch.truncated)
        metrics["advantage_mean"] = rl_jax.masked_mean(adv, response_mask)
        metrics["advantage_abs"] = rl_jax.masked_mean(jnp.abs(adv), response_mask)
        train_batch = TrainBatch(
            tokens=tokens,
            mask=mask,
            response_mask=response_mask,
            sampler_logprobs=batch.sampler_logprobs,
            advantages=adv,
            loss_mask=loss_mask,
            policy_mask=policy_mask,
            old_logprobs=stored_old_logprobs,
            ref_logprobs=ref_logprobs,
            old_values=values,
            returns=returns,
        )
        if settings.shared_prefix:
            train_batch = group_rows(train_batch, settings.group_size)
        return train_batch, metrics

    return prepare


def mismatch_correction(settings: RLSettings, old_logprobs, sampler_logprobs, response_mask):
    """``(weights, policy mask, metrics)`` of ``settings.is_correction`` (``rl_jax.mismatch``)."""
    return IS_CORRECTIONS[settings.is_correction](
        settings, old_logprobs, sampler_logprobs, response_mask
    )


def policy_objective(settings: RLSettings, logprobs, old_logprobs, advantages, mask, key):
    """``(loss, metrics)`` of the configured policy loss (``settings.policy_loss``)."""
    return POLICY_LOSSES[settings.policy_loss].fn(
        settings, logprobs, old_logprobs, advantages, mask, key
    )


def make_loss(settings: RLSettings, policy_graphdef, value_graphdef=None):
    """``loss(params, minibatch: TrainBatch) -> (loss, metrics)``: the policy loss (+ KL, +
    value loss). With ``settings.shared_prefix`` the minibatch is grouped (``group_rows``) and
    each group's prompt runs once in the forward, its gradient summed over the group."""

    def loss_fn(params, mb: TrainBatch):
        if settings.shared_prefix:
            mb = ungroup_rows(mb)
        tokens, mask, response_mask = mb.tokens, mb.mask, mb.response_mask
        response_len = response_mask.shape[1]
        logprobs, entropy = policy_token_stats(
            policy_graphdef, params["policy"], tokens, mask, response_len,
            temperature=settings.temperature, logits_chunk=settings.logits_chunk,
            with_entropy=settings.single_pass, shared_group=settings.shared_group,
        )
        metrics = {}
        if settings.single_pass:
            old_logprobs = jax.lax.stop_gradient(logprobs)
            metrics = rollout_policy_metrics(entropy, logprobs, mb.sampler_logprobs, response_mask)
            metrics.update(behaviour_weight_metrics(settings, logprobs, mb.sampler_logprobs,
                                             response_mask))
        else:
            old_logprobs = mb.old_logprobs
        loss_mask = response_mask if mb.loss_mask is None else mb.loss_mask
        policy_mask = loss_mask if mb.policy_mask is None else mb.policy_mask
        pg_loss, pg_metrics = policy_objective(
            settings, logprobs, old_logprobs, mb.advantages, policy_mask, mb.loss_key
        )
        metrics.update(pg_metrics, policy_loss=pg_loss)
        loss = pg_loss
        if settings.kl_loss_coef > 0:
            kl_term = rl_jax.aggregate(
                rl_jax.kl(logprobs, mb.ref_logprobs, estimator=settings.kl_estimator),
                loss_mask,
                settings.agg,
                max_len=settings.max_len,
                count_empty_rows=settings.count_empty_rows,
            )
            metrics["kl_loss"] = kl_term
            loss = loss + settings.kl_loss_coef * kl_term
        if settings.has_critic:
            values = critic_values(value_graphdef, params["value"], tokens, mask, response_len,
                                   settings.shared_group)
            v_loss, v_metrics = rl_jax.value_loss(
                values,
                mb.old_values,
                mb.returns,
                loss_mask,
                clip=settings.value_clip,
                agg=settings.agg,
                max_len=settings.max_len,
            )
            metrics.update(v_metrics, value_loss=v_loss)
            loss = loss + settings.vf_coef * v_loss
        metrics["loss"] = loss
        return loss, metrics

    return loss_fn


def make_update(
    settings: RLSettings,
    tx: optax.GradientTransformation,
    loss_fn,
    mesh: jax.sharding.Mesh | None = None,
):
    """``update(state, batch: TrainBatch) -> (state, metrics)``: epochs x shuffled minibatches in
    one scan.

    Each epoch draws a random permutation of the whole batch (``fold_in(key(seed), step)``, split
    per epoch) and cuts it into ``num_minibatches`` equal minibatches: a random partition that
    does not depend on the devices, so any mesh gives the one-device result. With
    ``settings.shared_prefix`` the batch's rows are groups (``group_rows``): the permutation and
    the minibatches are of whole groups.

    With ``mesh``, the minibatches are constrained to stay split over all its devices (their rows
    must divide by the device count; ``check_config`` asks for it). Without the constraint the
    global shuffle ``x[perm]`` gathers the whole batch onto every device and each device runs the
    forward and backward of every minibatch in full (equal results, ``devices`` times the work).
    With it, only the (small) input arrays move between devices for the shuffle; the model runs
    on each device's share of a minibatch and XLA all-reduces the gradient.
    """
    draws = POLICY_LOSSES[settings.policy_loss].needs_key

    def constrain(tree, axis):
        return tree if mesh is None else parallel.constrain_rows(tree, mesh, axis)

    def update(state: TrainState, batch: TrainBatch):
        size = batch.tokens.shape[0]
        key = jax.random.fold_in(jax.random.key(settings.seed), state.step)

        def minibatch_step(state: TrainState, mb: TrainBatch):
            rows = constrain(mb.replace(loss_key=None), 0)
            return optimizer_step(loss_fn, tx, state, rows.replace(loss_key=mb.loss_key))

        def epoch_step(state: TrainState, epoch_key):
            perm = jax.random.permutation(epoch_key, size)
            minibatches = jax.tree.map(
                lambda x: x[perm].reshape(settings.num_minibatches, -1, *x.shape[1:]), batch
            )
            minibatches = constrain(minibatches, 1)  # [minibatch, rows, ...]: rows split
            if draws:  # the loss's random choices, per minibatch
                keys = jax.random.fold_in(epoch_key, 1)
                minibatches = minibatches.replace(
                    loss_key=jax.random.split(keys, settings.num_minibatches)
                )
            return jax.lax.scan(minibatch_step, state, minibatches)

        state, metrics = jax.lax.scan(epoch_step, state, jax.random.split(key, settings.epochs))
        reducers = {"ratio_min": jnp.min, "ratio_max": jnp.max, "behaviour_iw_max": jnp.max}
        metrics = {name: reducers.get(name, jnp.mean)(value) for name, value in metrics.items()}
        return TrainState(state.step + 1, state.params, state.opt_state), metrics

    return update


class RLStep(NamedTuple):
    """The compiled parts of an RL iteration, as ``build_rl_step`` returns them.

    prepare(params, ref_params, RolloutBatch, kl_coef) -> (TrainBatch, metrics), jitted.
    update(state, TrainBatch) -> (state, metrics), jitted (donating the state with a mesh).
    loss(params, TrainBatch) -> (loss, metrics): what ``update`` differentiates, not jitted.
    """

    prepare: Callable[..., tuple[TrainBatch, Metrics]]
    update: Callable[[TrainState, TrainBatch], tuple[TrainState, Metrics]] | None
    loss: Callable[[Any, TrainBatch], tuple[jax.Array, Metrics]]


def build_rl_step(
    settings: RLSettings,
    tx: optax.GradientTransformation | None,
    policy_graphdef: nnx.GraphDef,
    value_graphdef: nnx.GraphDef | None = None,
    *,
    mesh: jax.sharding.Mesh | None = None,
    state_sharding: Any = None,
    donate_state: bool = True,
) -> RLStep:
    """The RL step of ``settings``: what the RL stage runs, and what benchmarks and tests time
    and check.

    With ``mesh`` (and the state's ``state_sharding`` from ``init_state``) every part runs on each
    device's share of the rows: ``prepare`` returns its batch split over the mesh, ``update``
    keeps its minibatches split and donates the old state (unless ``donate_state=False``).
    Without, both are plain ``jax.jit``.
    With ``tx=None`` (checks of the loss or ``prepare`` alone) there is no ``update``.
    """
    loss = make_loss(settings, policy_graphdef, value_graphdef)
    prepare = make_prepare(settings, policy_graphdef, value_graphdef)
    if mesh is None:
        update = None if tx is None else jax.jit(make_update(settings, tx, loss))
        return RLStep(jax.jit(prepare), update, loss)
    if state_sharding is None and tx is not None:
        raise ValueError("build_rl_step: a mesh needs the state's state_sharding (init_state)")
    prepare = jax.jit(
        prepare, out_shardings=(parallel.batch_sharding(mesh), parallel.replicated(mesh))
    )
    update = None
    if tx is not None:
        update = parallel.data_parallel_step(
            make_update(settings, tx, loss, mesh), mesh, state_sharding, donate_state=donate_state
        )
    return RLStep(prepare, update, loss)
