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
from rl_jax import models
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
    tis_cap: float | None = None  # truncated importance sampling between sampler and trainer
    epochs: int = 1
    num_minibatches: int = 1
    seed: int = 0

    @property
    def single_pass(self) -> bool:
        """One on-policy update per rollout: the old log-probs are the update's own (as in TRL).

        The first update of a rollout runs at the sampling weights, so its forward pass gives the
        old log-probs with no extra forward; with more updates (or TIS) ``prepare`` computes them.
        """
        return self.epochs == 1 and self.num_minibatches == 1 and self.tis_cap is None

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
    if est in ("grpo", "dr_grpo", "rloo"):
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
    if settings.whiten_advantages and est != "reinforce_pp":
        adv = rl_jax.whiten(adv, mask)
    return adv, returns


def rollout_policy_metrics(
    logits: jax.Array,
    logprobs: jax.Array,
    sampler_logprobs: jax.Array,
    response_mask: jax.Array,
    temperature: float,
) -> dict[str, jax.Array]:
    """Entropy of the tempered policy and its mismatch with the sampler, at the sampling weights.

    logits: ``[batch, R, vocab]``; logprobs, sampler_logprobs, response_mask: ``[batch, R]``.
    """
    logits, logprobs = jax.lax.stop_gradient((logits, logprobs))
    return {
        "entropy": rl_jax.masked_mean(rl_jax.entropy(logits / temperature), response_mask),
        "sampler_logprob_diff": rl_jax.masked_mean(
            jnp.abs(logprobs - sampler_logprobs), response_mask
        ),
        "sampler_kl": rl_jax.masked_mean(
            rl_jax.kl(sampler_logprobs, logprobs, estimator="k3"), response_mask
        ),
    }


def make_prepare(settings: RLSettings, policy_graphdef, value_graphdef=None):
    """``prepare(params, ref_params, batch, kl_coef) -> (batch additions, metrics)``, to jit.

    Recomputes the old log-probs with the trainer's own forward pass (unless
    ``settings.single_pass``; the sampler's are kept for the mismatch metric and truncated
    importance sampling), the reference log-probs, the values and the advantages.
    """

    def prepare(params, ref_params, batch, kl_coef):
        tokens, mask, response_mask = batch["tokens"], batch["mask"], batch["response_mask"]
        response_len = response_mask.shape[1]
        response_tokens = tokens[:, -response_len:]
        out, metrics = {}, {}
        # The policy's log-probs at the sampling weights (the sampler's, in a single pass).
        old_logprobs = batch["sampler_logprobs"]
        if not settings.single_pass:
            logits = policy_logits(policy_graphdef, params["policy"], tokens, mask, response_len)
            old_logprobs = rl_jax.token_logprobs(
                logits, response_tokens, temperature=settings.temperature
            )
            out["old_logprobs"] = old_logprobs
            metrics = rollout_policy_metrics(
                logits,
                old_logprobs,
                batch["sampler_logprobs"],
                response_mask,
                settings.temperature,
            )
        token_kl = None
        if ref_params is not None:
            ref_logits = policy_logits(policy_graphdef, ref_params, tokens, mask, response_len)
            ref_logprobs = rl_jax.token_logprobs(
                ref_logits, response_tokens, temperature=settings.temperature
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
        if settings.tis_cap is not None:
            weights = jnp.minimum(
                jnp.exp(old_logprobs - batch["sampler_logprobs"]), settings.tis_cap
            )
            adv = adv * jax.lax.stop_gradient(weights)
        out["advantages"] = adv
        if returns is not None:
            out["returns"] = returns
        metrics["advantage_mean"] = rl_jax.masked_mean(adv, response_mask)
        metrics["advantage_abs"] = rl_jax.masked_mean(jnp.abs(adv), response_mask)
        return out, metrics

    return prepare


def make_loss(settings: RLSettings, policy_graphdef, value_graphdef=None):
    """``loss(params, minibatch) -> (loss, metrics)``: clipped policy loss (+ KL, + value loss)."""

    def loss_fn(params, mb):
        tokens, mask, response_mask = mb["tokens"], mb["mask"], mb["response_mask"]
        response_len = response_mask.shape[1]
        logits = policy_logits(policy_graphdef, params["policy"], tokens, mask, response_len)
        logprobs = rl_jax.token_logprobs(
            logits, tokens[:, -response_len:], temperature=settings.temperature
        )
        metrics = {}
        if settings.single_pass:
            old_logprobs = jax.lax.stop_gradient(logprobs)
            metrics = rollout_policy_metrics(
                logits, logprobs, mb["sampler_logprobs"], response_mask, settings.temperature
            )
        else:
            old_logprobs = mb["old_logprobs"]
        pg_loss, pg_metrics = rl_jax.policy_loss(
            logprobs,
            old_logprobs,
            mb["advantages"],
            response_mask,
            clip_low=settings.clip_low,
            clip_high=settings.clip_high,
            dual_clip=settings.dual_clip,
            ratio_level=settings.ratio_level,
            agg=settings.agg,
            max_len=settings.max_len,
        )
        metrics.update(pg_metrics, policy_loss=pg_loss)
        loss = pg_loss
        if settings.kl_loss_coef > 0:
            kl_term = rl_jax.aggregate(
                rl_jax.kl(logprobs, mb["ref_logprobs"], estimator=settings.kl_estimator),
                response_mask,
                settings.agg,
                max_len=settings.max_len,
            )
            metrics["kl_loss"] = kl_term
            loss = loss + settings.kl_loss_coef * kl_term
        if settings.has_critic:
            values = critic_values(value_graphdef, params["value"], tokens, mask, response_len)
            v_loss, v_metrics = rl_jax.value_loss(
                values,
                mb["old_values"],
                mb["returns"],
                response_mask,
                clip=settings.value_clip,
                agg=settings.agg,
                max_len=settings.max_len,
            )
            metrics.update(v_metrics, value_loss=v_loss)
            loss = loss + settings.vf_coef * v_loss
        metrics["loss"] = loss
        return loss, metrics

    return loss_fn


def make_update(settings: RLSettings, tx: optax.GradientTransformation, loss_fn):
    """``update(state, batch) -> (state, metrics)``: epochs x shuffled minibatches in one scan."""

    def update(state: TrainState, batch):
        size = batch["tokens"].shape[0]
        key = jax.random.fold_in(jax.random.key(settings.seed), state.step)

        def minibatch_step(state: TrainState, mb):
            return optimizer_step(loss_fn, tx, state, mb)

        def epoch_step(state: TrainState, epoch_key):
            perm = jax.random.permutation(epoch_key, size)
            minibatches = jax.tree.map(
                lambda x: x[perm].reshape(settings.num_minibatches, -1, *x.shape[1:]), batch
            )
            return jax.lax.scan(minibatch_step, state, minibatches)

        state, metrics = jax.lax.scan(epoch_step, state, jax.random.split(key, settings.epochs))
        reducers = {"ratio_min": jnp.min, "ratio_max": jnp.max}
        metrics = {name: reducers.get(name, jnp.mean)(value) for name, value in metrics.items()}
        return TrainState(state.step + 1, state.params, state.opt_state), metrics

    return update
