"""The jitted parts of one RL iteration, shared by PPO, GRPO and their variants.

An iteration is: sample -> score (host) -> ``prepare`` (old/ref log-probs, values, advantages) ->
``update`` (``epochs x minibatches`` of clipped policy and value updates in one ``lax.scan``).
The algorithm is entirely in ``RLSettings``: which advantage estimator, where the KL goes, which
loss options, and whether a critic exists.

Batch layout: ``tokens``/``mask`` are ``[batch, P + R]`` (the left-padded prompt, then the
response); the response part of every per-token array is ``[batch, R]``; logits at position
``P - 1 + t`` predict response token ``t``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import rl_jax
from rl_jax import models, parallel
from rl_jax.chunked import DEFAULT_CHUNK, chunked_token_stats
from rl_jax.trainers.loop import TrainState, optimizer_step


@dataclasses.dataclass(frozen=True)
class RLSettings:
    """Static options of the RL step (hashable, so jit specialises on them); built from a config
    that ``rl_jax.config.check_config`` validated."""

    estimator: str
    group_size: int
    temperature: float
    gamma: float = 1.0
    lam: float = 0.95
    whiten_advantages: bool = False
    whiten_rewards: bool = False  # scale the sequence scores to unit variance (mean kept)
    kl_loss_coef: float = 0.0  # GRPO's beta: KL to the reference as a loss term
    kl_in_reward: bool = False  # PPO/REINFORCE++: -coef * KL(token) added to the token rewards
    kl_estimator: str = "k3"
    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip: float | None = None
    ratio_level: str = "token"
    agg: str = "token-mean"
    max_len: int | None = None
    vf_coef: float = 0.1
    value_clip: float | None = 0.2
    count_empty_rows: bool = False  # TRL: empty responses count in sequence-mean denominators
    overlong_filter: bool = False  # DAPO: truncated responses count in no loss term
    policy_loss: str = "ppo"  # ppo | cispo | gmpo | clip_cov | kl_cov
    gmpo_clip: float = 0.4  # GMPO's clip of the token log-ratio (log space)
    cov_ratio: float = 2e-4  # Clip-Cov: share of tokens detached; KL-Cov: share penalised
    cov_lower: float = 1.0  # Clip-Cov: the covariance band tokens are drawn from
    cov_upper: float = 5.0
    kl_cov_coef: float = 1.0
    is_correction: str = "none"  # sampler/trainer mismatch: see rl_jax.mismatch
    is_cap: float = 2.0  # TIS truncation
    is_low: float = 0.5  # masked IS: the band the ratio must stay in
    is_high: float = 2.0
    epochs: int = 1
    num_minibatches: int = 1
    seed: int = 0
    # Response positions per LM-head chunk (rl_jax.chunked): the live logits are
    # [batch, logits_chunk, vocab] float32. 0: the full [batch, P + R, vocab] logits at once.
    logits_chunk: int = DEFAULT_CHUNK

    @property
    def single_pass(self) -> bool:
        """One on-policy update per rollout: the old log-probs are the update's own (as in TRL).

        The first update of a rollout runs at the sampling weights, so its forward pass gives the
        old log-probs with no extra forward; with more updates (or TIS) ``prepare`` computes them.
        """
        return self.epochs == 1 and self.num_minibatches == 1 and self.is_correction == "none"

    @property
    def has_critic(self) -> bool:
        return self.estimator == "gae"

    @property
    def needs_reference(self) -> bool:
        return self.kl_loss_coef > 0 or self.kl_in_reward


def _response_part(x: jax.Array, response_len: int) -> jax.Array:
    """The ``[batch, R, ...]`` positions whose outputs predict the response tokens."""
    return x[:, -response_len - 1 : -1]


def policy_logits(graphdef: nnx.GraphDef, params, tokens, mask, response_len: int) -> jax.Array:
    """``[batch, R, vocab]`` logits predicting each response token."""
    logits, _ = models.apply_lm(graphdef, params, tokens, models.positions_from_mask(mask), mask)
    return _response_part(logits, response_len)


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
) -> tuple[jax.Array, jax.Array | None]:
    """``(logprobs, entropy)`` ``[batch, R]`` of the response tokens under ``softmax(logits / T)``.

    With ``logits_chunk > 0`` only the ``R`` positions that predict the response go through the
    LM head, ``logits_chunk`` of them at a time (``rl_jax.chunked``): no ``[batch, P + R, vocab]``
    array exists, forward or backward. ``logits_chunk = 0`` takes the full logits
    (``policy_logits``), equal numbers. The entropy (None unless ``with_entropy``) is a metric:
    no gradient.
    """
    response_tokens = tokens[:, -response_len:]
    if logits_chunk <= 0:
        logits = policy_logits(graphdef, params, tokens, mask, response_len)
        logprobs = rl_jax.token_logprobs(logits, response_tokens, temperature=temperature)
        if not with_entropy:
            return logprobs, None
        return logprobs, rl_jax.entropy(jax.lax.stop_gradient(logits) / temperature)
    hidden, head, vocab_major = models.apply_lm_hidden(
        graphdef, params, tokens, models.positions_from_mask(mask), mask
    )
    return chunked_token_stats(
        _response_part(hidden, response_len),
        head,
        response_tokens,
        vocab_major=vocab_major,
        temperature=temperature,
        chunk_size=logits_chunk,
        with_entropy=with_entropy,
    )


def critic_values(graphdef: nnx.GraphDef, params, tokens, mask, response_len: int) -> jax.Array:
    """``[batch, R]`` values V(s_t) of the states before each response token."""
    critic = nnx.merge(graphdef, params)
    return _response_part(critic(tokens, models.positions_from_mask(mask), mask), response_len)


def advantages_and_returns(
    settings: RLSettings,
    scores: jax.Array,
    response_mask: jax.Array,
    values: jax.Array | None,
    token_kl: jax.Array | None,
    kl_coef: jax.Array,
) -> tuple[jax.Array, jax.Array | None]:
    """Advantages ``[batch, R]`` (and returns for a critic) by the configured estimator.

    ``scores`` ``[batch]`` is the sequence reward, placed on the last real token; ``token_kl``
    ``[batch, R]`` (k1 to the reference) is subtracted from the token rewards when
    ``kl_in_reward``.
    """
    mask = response_mask
    est = settings.estimator
    if settings.whiten_rewards:
        scores = rl_jax.whiten(scores, jnp.ones_like(scores), shift_mean=False)
    if est == "reinforce_pp_baseline":  # centred per group, whitened over the batch's tokens
        adv = rl_jax.reinforce_pp_baseline_advantages(scores, mask, settings.group_size)
        returns = None
    elif est in ("grpo", "dr_grpo", "rloo"):
        if est == "rloo":
            adv = rl_jax.rloo_advantages(scores, settings.group_size)
        else:
            scale = "group" if est == "grpo" else "none"
            adv = rl_jax.group_advantages(scores, settings.group_size, scale=scale)
        adv = adv[:, None] * mask
        returns = None
    else:
        last = jnp.cumsum(mask[:, ::-1], axis=1)[:, ::-1] == 1  # last real token (right padding)
        token_rewards = jnp.where(last & (mask > 0), scores[:, None], 0.0)
        if settings.kl_in_reward:
            token_rewards = token_rewards - kl_coef * token_kl * mask
        if est == "gae":
            adv, returns = rl_jax.gae(
                token_rewards, values, mask, gamma=settings.gamma, lam=settings.lam
            )
        else:  # reinforce_pp: discounted return-to-go of the token rewards, globally whitened
            adv, _ = rl_jax.gae(
                token_rewards, jnp.zeros_like(mask), mask, gamma=settings.gamma, lam=1.0
            )
            returns = None
            adv = rl_jax.whiten(adv, mask)
    if settings.whiten_advantages and est not in ("reinforce_pp", "reinforce_pp_baseline"):
        adv = rl_jax.whiten(adv, mask)
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
    """``prepare(params, ref_params, batch, kl_coef) -> (batch additions, metrics)``, to jit.

    Recomputes the old log-probs with the trainer's own forward pass (unless
    ``settings.single_pass``; the sampler's are kept for the mismatch metric and truncated
    importance sampling), the reference log-probs, the values and the advantages.
    """

    def prepare(params, ref_params, batch, kl_coef):
        tokens, mask, response_mask = batch["tokens"], batch["mask"], batch["response_mask"]
        response_len = response_mask.shape[1]
        stats = dict(temperature=settings.temperature, logits_chunk=settings.logits_chunk)
        out, metrics = {}, {}
        # The policy's log-probs at the sampling weights (the sampler's, in a single pass).
        old_logprobs = batch["sampler_logprobs"]
        if not settings.single_pass:
            old_logprobs, entropy = policy_token_stats(
                policy_graphdef, params["policy"], tokens, mask, response_len,
                with_entropy=True, **stats,
            )
            out["old_logprobs"] = old_logprobs
            metrics = rollout_policy_metrics(
                entropy, old_logprobs, batch["sampler_logprobs"], response_mask
            )
        token_kl = None
        if ref_params is not None:
            ref_logprobs, _ = policy_token_stats(
                policy_graphdef, ref_params, tokens, mask, response_len, **stats
            )
            out["ref_logprobs"] = ref_logprobs
            token_kl = rl_jax.kl(old_logprobs, ref_logprobs, estimator="k1")
            metrics["kl_ref"] = (token_kl * response_mask).sum(1).mean()  # per sequence
        values = None
        if settings.has_critic:
            values = critic_values(value_graphdef, params["value"], tokens, mask, response_len)
            out["old_values"] = values
        adv, returns = advantages_and_returns(
            settings, batch["scores"], response_mask, values, token_kl, kl_coef
        )
        if settings.is_correction != "none":
            weights, out["policy_mask"], is_metrics = mismatch_correction(
                settings, old_logprobs, batch["sampler_logprobs"], response_mask
            )
            adv = adv * weights
            metrics.update(is_metrics)
        if settings.overlong_filter:
            loss_mask = overlong_filter_mask(response_mask, batch["truncated"])
            out["loss_mask"] = loss_mask
            if "policy_mask" in out:
                out["policy_mask"] = out["policy_mask"] * loss_mask
            metrics["overlong_filtered"] = jnp.mean(batch["truncated"])
        out["advantages"] = adv
        if returns is not None:
            out["returns"] = returns
        metrics["advantage_mean"] = rl_jax.masked_mean(adv, response_mask)
        metrics["advantage_abs"] = rl_jax.masked_mean(jnp.abs(adv), response_mask)
        return out, metrics

    return prepare


def mismatch_correction(settings: RLSettings, old_logprobs, sampler_logprobs, response_mask):
    """``(weights, policy mask, metrics)`` of ``settings.is_correction`` (``rl_jax.mismatch``)."""
    args = (old_logprobs, sampler_logprobs, response_mask)
    kind, band = settings.is_correction, dict(low=settings.is_low, high=settings.is_high)
    if kind == "token_tis":
        return rl_jax.token_tis(*args, cap=settings.is_cap)
    if kind == "seq_tis":
        return rl_jax.sequence_tis(*args, cap=settings.is_cap)
    if kind == "token_mis":
        return rl_jax.token_masked_is(*args, **band)
    level = {"seq_mis": "product", "seq_mis_geo": "geometric"}[kind]
    return rl_jax.sequence_masked_is(*args, **band, level=level)


def policy_objective(settings: RLSettings, logprobs, old_logprobs, advantages, mask, key):
    """``(loss, metrics)`` of the configured policy loss (``settings.policy_loss``)."""
    s = settings
    args = (logprobs, old_logprobs, advantages, mask)
    agg = dict(agg=s.agg, max_len=s.max_len, count_empty_rows=s.count_empty_rows)
    clip = dict(clip_low=s.clip_low, clip_high=s.clip_high)
    if s.policy_loss == "ppo":
        return rl_jax.policy_loss(*args, **clip, dual_clip=s.dual_clip, ratio_level=s.ratio_level,
                                  **agg)
    if s.policy_loss == "cispo":
        return rl_jax.cispo_loss(*args, **clip, **agg)
    if s.policy_loss == "gmpo":
        return rl_jax.gmpo_loss(*args, clip_low=s.gmpo_clip, clip_high=s.gmpo_clip,
                                count_empty_rows=s.count_empty_rows)
    if s.policy_loss == "clip_cov":
        return rl_jax.clip_cov_loss(*args, key, **clip, cov_ratio=s.cov_ratio,
                                    cov_lower=s.cov_lower, cov_upper=s.cov_upper, **agg)
    return rl_jax.kl_cov_loss(*args, kl_ratio=s.cov_ratio, kl_coef=s.kl_cov_coef, **agg)


def make_loss(settings: RLSettings, policy_graphdef, value_graphdef=None):
    """``loss(params, minibatch) -> (loss, metrics)``: clipped policy loss (+ KL, + value loss)."""

    def loss_fn(params, mb):
        tokens, mask, response_mask = mb["tokens"], mb["mask"], mb["response_mask"]
        response_len = response_mask.shape[1]
        logprobs, entropy = policy_token_stats(
            policy_graphdef, params["policy"], tokens, mask, response_len,
            temperature=settings.temperature, logits_chunk=settings.logits_chunk,
            with_entropy=settings.single_pass,
        )
        metrics = {}
        if settings.single_pass:
            old_logprobs = jax.lax.stop_gradient(logprobs)
            metrics = rollout_policy_metrics(
                entropy, logprobs, mb["sampler_logprobs"], response_mask
            )
        else:
            old_logprobs = mb["old_logprobs"]
        loss_mask = mb.get("loss_mask", response_mask)  # overlong filtering's mask
        policy_mask = mb.get("policy_mask", loss_mask)  # a mismatch correction's mask
        pg_loss, pg_metrics = policy_objective(
            settings, logprobs, old_logprobs, mb["advantages"], policy_mask, mb.get("loss_key")
        )
        metrics.update(pg_metrics, policy_loss=pg_loss)
        loss = pg_loss
        if settings.kl_loss_coef > 0:
            kl_term = rl_jax.aggregate(
                rl_jax.kl(logprobs, mb["ref_logprobs"], estimator=settings.kl_estimator),
                loss_mask,
                settings.agg,
                max_len=settings.max_len,
                count_empty_rows=settings.count_empty_rows,
            )
            metrics["kl_loss"] = kl_term
            loss = loss + settings.kl_loss_coef * kl_term
        if settings.has_critic:
            values = critic_values(value_graphdef, params["value"], tokens, mask, response_len)
            v_loss, v_metrics = rl_jax.value_loss(
                values,
                mb["old_values"],
                mb["returns"],
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
    """``update(state, batch) -> (state, metrics)``: epochs x shuffled minibatches in one scan.

    Each epoch draws a random permutation of the whole batch (``fold_in(key(seed), step)``, split
    per epoch) and cuts it into ``num_minibatches`` equal minibatches: a random partition that
    does not depend on the devices, so any mesh gives the one-device result.

    With ``mesh``, the minibatches are constrained to stay split over all its devices (their rows
    must divide by the device count; ``check_config`` asks for it). Without the constraint the
    global shuffle ``x[perm]`` gathers the whole batch onto every device and each device runs the
    forward and backward of every minibatch in full (equal results, ``devices`` times the work).
    With it, only the (small) input arrays move between devices for the shuffle; the model runs
    on each device's share of a minibatch and XLA all-reduces the gradient.
    """

    def constrain(tree, axis):
        return tree if mesh is None else parallel.constrain_rows(tree, mesh, axis)

    def update(state: TrainState, batch):
        size = batch["tokens"].shape[0]
        key = jax.random.fold_in(jax.random.key(settings.seed), state.step)

        def minibatch_step(state: TrainState, mb):
            keys = {"loss_key": mb.pop("loss_key")} if "loss_key" in mb else {}
            return optimizer_step(loss_fn, tx, state, constrain(mb, 0) | keys)

        def epoch_step(state: TrainState, epoch_key):
            perm = jax.random.permutation(epoch_key, size)
            minibatches = jax.tree.map(
                lambda x: x[perm].reshape(settings.num_minibatches, -1, *x.shape[1:]), batch
            )
            minibatches = constrain(minibatches, 1)  # [minibatch, rows, ...]: rows split
            if settings.policy_loss == "clip_cov":  # its random token choice, per minibatch
                keys = jax.random.fold_in(epoch_key, 1)
                minibatches["loss_key"] = jax.random.split(keys, settings.num_minibatches)
            return jax.lax.scan(minibatch_step, state, minibatches)

        state, metrics = jax.lax.scan(epoch_step, state, jax.random.split(key, settings.epochs))
        reducers = {"ratio_min": jnp.min, "ratio_max": jnp.max}
        metrics = {name: reducers.get(name, jnp.mean)(value) for name, value in metrics.items()}
        return TrainState(state.step + 1, state.params, state.opt_state), metrics

    return update
