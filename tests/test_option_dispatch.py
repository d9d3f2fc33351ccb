"""Every RL option a config can choose reaches the trainer as *that* option.

For each value of ``loss.policy_loss``, ``loss.ratio_level``, ``loss.agg``, ``loss.is_correction``,
``rl.estimator``, ``kl.estimator`` (KL as a loss term), ``kl.in_reward`` and the score-shaping
options, the trainer's own path (``RLSettings.from_config`` -> ``build_rl_step``'s ``prepare``,
``loss`` and ``update``; ``ScoreShaping.from_config`` -> ``shape_scores``) runs on one small
fixed batch with the tiny experiment model (``tests/fixtures/tiny_config.py``) and is compared
with the pure function of that option (``rl_jax.policy_loss``, ``rl_jax.group_advantages``,
``rl_jax.token_tis``, ...). Each family also checks that its options give different numbers on
this batch, so a mis-routed option (every loss sent to PPO, ``grpo`` computed as ``dr_grpo``,
shaping left out) fails. The parametrisations iterate over the option names of
``rl_jax.config`` (the algorithm's registries): an option added there without a reference here
fails.
"""

import dataclasses
import functools
import inspect
import os
import re
import types
import typing

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import rl_jax
from rl_jax import config as config_lib
from rl_jax.algorithm import (
    RLSettings,
    RolloutBatch,
    ScoreShaping,
    TrainBatch,
    build_rl_step,
    policy_token_stats,
    shape_scores,
)
from rl_jax.kl import KLEstimator
from rl_jax.losses import RatioLevel
from rl_jax.settings import RunSettings
from rl_jax.train_state import TrainState
from rl_jax.trainers import rl as rl_trainer
from rl_jax.trainers import setup
from tests.testing_utils import tiny_config

VOCAB, PROMPT = 32, 3
LENGTHS = np.array([4, 2, 4, 1, 3, 4, 2, 4])  # response lengths: the aggregations differ
SCORES = np.array([1.0, 0.0, 0.5, 0.0, 1.0, 1.0, 0.0, 0.25], np.float32)  # 2 groups of 4
TEMPERATURE = 0.8
RTOL, ATOL = 2e-4, 2e-6


class _Tokenizer:
    """What ``setup.build_policy`` reads of a tokenizer for a fresh model."""

    bos_token_id, eos_token_id, pad_token_id = 0, 1, 2

    def __len__(self):
        return VOCAB


def _config(**overrides):
    # Not single pass (2 minibatches): prepare computes the old log-probs.
    c = tiny_config(**{"rollout.temperature": TEMPERATURE, "rl.num_minibatches": 2, **overrides})
    config_lib.check_config(c)
    return c


@functools.cache
def _world():
    """The tiny policy of the fixture config, a reference and a moved copy, and one batch."""
    config = _config()
    model = RunSettings.from_config(config).model
    graphdef, params = nnx.split(setup.build_policy(model, _Tokenizer()))
    rng = np.random.default_rng(0)

    def moved(scale, seed):
        keys = iter(jax.random.split(jax.random.key(seed), len(jax.tree.leaves(params))))
        return jax.tree.map(lambda x: x + scale * jax.random.normal(next(keys), x.shape), params)

    R = config.rollout.max_new_tokens
    response_mask = (np.arange(R)[None] < LENGTHS[:, None]).astype(np.float32)
    tokens = rng.integers(3, VOCAB, (len(LENGTHS), PROMPT + R)).astype(np.int32)
    mask = np.concatenate([np.ones((len(LENGTHS), PROMPT), np.float32), response_mask], 1)
    lp_at = jax.jit(lambda p, t, m: _logprobs(graphdef, p, t, m, R))

    def vjp(p, ct, t, m):
        return jax.vjp(lambda q: _logprobs(graphdef, q, t, m, R), p)[1](ct)[0]

    vjp_at = jax.jit(vjp)
    old = np.asarray(lp_at(params, tokens, mask))
    batch = {
        "tokens": tokens,
        "mask": mask,
        "response_mask": response_mask,
        "sampler_logprobs": (old + rng.uniform(-0.4, 0.4, old.shape)).astype(np.float32),
        "scores": SCORES,
        "truncated": (LENGTHS == R).astype(np.float32) * np.array([1, 0, 1, 0, 0, 1, 0, 0]),
        "correct": (SCORES == 1.0).astype(np.float32),
        # Steps of each response (token index of its end, -1: none) and their 0/1 rewards.
        "step_ends": np.array([[1, 3, -1, -1], [1, -1, -1, -1], [0, 2, 3, -1], [0, -1, -1, -1],
                               [2, -1, -1, -1], [0, 1, 3, -1], [1, -1, -1, -1], [3, -1, -1, -1]],
                              np.int32)[:, :R],
        "step_rewards": np.array([[1, 0, 0, 0], [1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0],
                                  [1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]],
                                 np.float32)[:, :R],
    }
    return types.SimpleNamespace(
        graphdef=graphdef, params=params, ref_params=moved(0.1, 1), new_params=moved(0.1, 2),
        batch=batch, old_logprobs=old, R=R, lp_at=lp_at, vjp_at=vjp_at,
        # The log-probs and their VJP on the batch, shared by every reference gradient.
        lp=lambda p: lp_at(p, tokens, mask), vjp=lambda p, ct: vjp_at(p, ct, tokens, mask),
    )


def _logprobs(graphdef, params, tokens, mask, R):
    """The reference log-probs: the full logits (no chunking) at the config's temperature."""
    return policy_token_stats(graphdef, params, tokens, mask, R, temperature=TEMPERATURE,
                              logits_chunk=0)[0]


JIT = os.environ.get("DISPATCH_JIT", "0") == "1"


def _maybe_jit(fn):
    """Eager by default: one compile per option costs more than running the tiny model."""
    return jax.jit(fn) if JIT else fn


@functools.cache
def _jitted_prepare(settings):
    return build_rl_step(settings, None, _world().graphdef).prepare  # jitted by the builder


@functools.cache
def _jitted_loss_grad(settings):
    loss = build_rl_step(settings, None, _world().graphdef).loss
    return _maybe_jit(jax.value_and_grad(loss, has_aux=True))


def _rollout(w):
    return RolloutBatch(**w.batch)


def _fields(batch: TrainBatch) -> dict:
    """A typed batch as a dict of its fields (None where absent)."""
    return {f.name: getattr(batch, f.name) for f in dataclasses.fields(batch)}


def _prepare(config):
    w = _world()
    settings = RLSettings.from_config(config)
    ref = w.ref_params if settings.needs_reference else None
    out, metrics = _jitted_prepare(settings)({"policy": w.params}, ref, _rollout(w),
                                              jnp.float32(config.kl.coef))
    return settings, out, metrics


def _assert_close(actual, expected, what=""):
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=RTOL, atol=ATOL,
                               err_msg=what)


def _assert_tree_close(actual, expected):
    """Gradients: equal to float32 round-off, relative to each array's largest entry."""
    for got, want in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        scale = float(np.max(np.abs(want))) + 1e-12
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4 * scale, err_msg="gradient")


def _distinct(values: dict):
    """Every pair of options gives a different number (array) on the batch."""
    names = list(values)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            gap = float(np.max(np.abs(np.asarray(values[a]) - np.asarray(values[b]))))
            assert gap > 1e-4, f"{a} and {b} agree on the test batch ({gap}): not distinguishable"


# --------------------------------------------------------------------------------------------
# The policy loss: the step's loss at moved parameters (ratios away from 1) against the pure
# function.

def _loss_inputs():
    w = _world()
    adv = np.random.default_rng(3).normal(size=w.old_logprobs.shape).astype(np.float32)
    return TrainBatch(
        tokens=w.batch["tokens"], mask=w.batch["mask"], response_mask=w.batch["response_mask"],
        sampler_logprobs=w.batch["sampler_logprobs"],
        old_logprobs=w.old_logprobs,
        advantages=adv * w.batch["response_mask"],
        loss_key=jax.random.key(7),
        ref_logprobs=np.asarray(w.lp(w.ref_params)),
    )


def _pure_policy_loss(config, logprobs, mb):
    """The pure function of ``config.loss.policy_loss``, with the config's fields."""
    loss, m = config.loss, mb["response_mask"]
    args = (logprobs, mb["old_logprobs"], mb["advantages"], m)
    agg = dict(agg=loss.agg, max_len=config.rollout.max_new_tokens,
               count_empty_rows=loss.count_empty_rows)
    clip = dict(clip_low=loss.clip_low, clip_high=loss.clip_high)
    return {
        "ppo": lambda: rl_jax.policy_loss(*args, **clip, dual_clip=loss.dual_clip or None,
                                          ratio_level=loss.ratio_level, **agg),
        "cispo": lambda: rl_jax.cispo_loss(*args, **clip, **agg),
        "gmpo": lambda: rl_jax.gmpo_loss(*args, clip_low=loss.gmpo_clip, clip_high=loss.gmpo_clip,
                                         count_empty_rows=loss.count_empty_rows),
        "clip_cov": lambda: rl_jax.clip_cov_loss(
            *args[:4], mb["loss_key"], **clip, cov_ratio=loss.cov_ratio, cov_lower=loss.cov_lower,
            cov_upper=loss.cov_upper, **agg),
        "kl_cov": lambda: rl_jax.kl_cov_loss(*args, kl_ratio=loss.cov_ratio,
                                             kl_coef=loss.kl_cov_coef, **agg),
        "sapo": lambda: rl_jax.losses.sapo_loss(*args, tau_pos=loss.sapo_tau_pos,
                                                tau_neg=loss.sapo_tau_neg, **agg),
        "likelihood": lambda: rl_jax.likelihood_loss(*args, **agg),
    }[loss.policy_loss]()[0]


def _pure_total_loss(config, logprobs, mb):
    loss = _pure_policy_loss(config, logprobs, mb)
    if config.kl.coef > 0 and not config.kl.in_reward:
        kl = rl_jax.kl(logprobs, mb["ref_logprobs"], estimator=config.kl.estimator)
        loss = loss + config.kl.coef * rl_jax.aggregate(
            kl, mb["response_mask"], config.loss.agg, max_len=config.rollout.max_new_tokens,
            count_empty_rows=config.loss.count_empty_rows)
    return loss


def _check_loss(config):
    """Value and gradient of the step's loss equal the pure function's; returns [loss, |grad|]."""
    key = repr(config.to_dict())  # each option's check runs once: the "differ" tests reuse it
    if key not in _LOSS_RESULTS:
        _LOSS_RESULTS[key] = _check_loss_uncached(config)
    return _LOSS_RESULTS[key]


_LOSS_RESULTS: dict[str, np.ndarray] = {}


def _check_loss_uncached(config):
    w = _world()
    mb = _loss_inputs()
    settings = RLSettings.from_config(config)
    (loss, metrics), grads = _jitted_loss_grad(settings)({"policy": w.new_params}, mb)
    logprobs = w.lp(w.new_params)
    fields = _fields(mb)
    expected, d_logprobs = jax.value_and_grad(lambda lp: _pure_total_loss(config, lp, fields))(
        logprobs)
    _assert_close(loss, expected, "loss")
    _assert_close(metrics["policy_loss"], _pure_policy_loss(config, logprobs, fields),
                  "the policy_loss metric")
    expected_grads = w.vjp(w.new_params, d_logprobs)
    _assert_tree_close(grads["policy"], expected_grads)
    return np.array([float(loss), float(optax.tree.norm(grads))])


POLICY_LOSS_OPTIONS = {  # fields that let each loss show itself on the small batch
    "ppo": {},
    "cispo": {"loss.clip_low": 1.0, "loss.clip_high": 0.28},
    "gmpo": {},
    "clip_cov": {"loss.cov_ratio": 0.3, "loss.cov_lower": -10.0, "loss.cov_upper": 10.0},
    "kl_cov": {"loss.cov_ratio": 0.3},
    "sapo": {"loss.sapo_tau_pos": 2.0, "loss.sapo_tau_neg": 3.0},
    "likelihood": {},
}


@pytest.mark.parametrize("name", config_lib.POLICY_LOSSES)
def test_each_policy_loss_is_its_own_pure_function(name):
    _check_loss(_config(**{"loss.policy_loss": name} | POLICY_LOSS_OPTIONS[name]))


def test_the_policy_losses_differ_on_the_batch():
    _distinct({name: _check_loss(_config(**{"loss.policy_loss": name}
                                         | POLICY_LOSS_OPTIONS[name]))
               for name in config_lib.POLICY_LOSSES})


@pytest.mark.parametrize("level", typing.get_args(RatioLevel))
def test_each_ratio_level(level):
    _check_loss(_config(**{"loss.ratio_level": level}))


def test_the_ratio_levels_differ():
    _distinct({level: _check_loss(_config(**{"loss.ratio_level": level}))
               for level in typing.get_args(RatioLevel)})


def test_dual_clip_reaches_the_loss():
    with_dual = _check_loss(_config(**{"loss.dual_clip": 1.5}))
    _distinct({"dual": with_dual, "plain": _check_loss(_config())})


@pytest.mark.parametrize("agg", rl_jax.AGG_MODES)
def test_each_aggregation(agg):
    _check_loss(_config(**{"loss.agg": agg}))


def test_the_aggregations_differ():
    _distinct({agg: _check_loss(_config(**{"loss.agg": agg})) for agg in rl_jax.AGG_MODES})


@pytest.mark.parametrize("estimator", typing.get_args(KLEstimator))
def test_kl_loss_term_with_each_estimator(estimator):
    _check_loss(_config(**{"kl.coef": 0.5, "kl.estimator": estimator}))


@pytest.mark.parametrize("agg", rl_jax.AGG_MODES)
def test_kl_loss_term_with_each_aggregation(agg):
    # The term reads loss.agg and the length budget; a budget wider than the batch's responses
    # shows whether seq-mean-token-sum-norm divides by the budget, not by the batch's width.
    width = tiny_config().rollout.max_new_tokens
    _check_loss(_config(**{"kl.coef": 0.5, "loss.agg": agg, "rollout.max_new_tokens": width + 5}))


def test_the_kl_estimators_differ_and_the_kl_term_counts():
    values = {est: _check_loss(_config(**{"kl.coef": 0.5, "kl.estimator": est}))
              for est in typing.get_args(KLEstimator)}
    _distinct(values | {"no kl": _check_loss(_config())})


# --------------------------------------------------------------------------------------------
# prepare: the advantages of each estimator (and the KL in the reward), each mismatch correction.

def _token_rewards(scores, mask):
    rewards = np.zeros(mask.shape, np.float32)
    rewards[np.arange(len(scores)), mask.sum(1).astype(int) - 1] = scores
    return rewards


def _pure_advantages(config, out, w):
    """The advantages of ``config.rl.estimator`` from the pure functions (before any correction)."""
    rl, mask, scores = config.rl, w.batch["response_mask"], w.batch["scores"]
    G = rl.group_size
    rewards = _token_rewards(scores, mask)
    if config.kl.in_reward and config.kl.coef > 0:
        old = w.old_logprobs if out.old_logprobs is None else out.old_logprobs
        k1 = rl_jax.kl(old, out.ref_logprobs, estimator="k1")
        rewards = rewards - config.kl.coef * np.asarray(k1) * mask
    est = rl.estimator
    if est == "gae":
        return rl_jax.gae(rewards, out.old_values, mask, gamma=rl.gamma, lam=rl.lam)[0]
    if est == "reinforce_pp":
        ret = rl_jax.gae(rewards, np.zeros_like(mask), mask, gamma=rl.gamma, lam=1.0)[0]
        return rl_jax.whiten(ret, mask)
    per_row = {
        "grpo": lambda: rl_jax.group_advantages(scores, G, scale="group"),
        "dr_grpo": lambda: rl_jax.group_advantages(scores, G, scale="none"),
        "rloo": lambda: rl_jax.rloo_advantages(scores, G),
        "reinforce_pp_baseline": None,
        "rft": None,
        "online_rft": None,
        "grpo_process": None,
    }[est]
    if est in ("rft", "online_rft"):
        return rl_jax.rft_gradient_coefficient(w.batch["correct"], mask)
    if est == "grpo_process":
        return rl_jax.process_advantages(w.batch["step_rewards"], w.batch["step_ends"], mask, G)
    if per_row is None:
        return rl_jax.reinforce_pp_baseline_advantages(scores, mask, G)
    return np.asarray(per_row())[:, None] * mask


def _prepare_advantages(**overrides):
    config = _config(**overrides)
    w = _world()
    if config.rl.estimator == "gae":  # the trainer's critic, as rl.init_params builds it
        stage = RunSettings.from_config(config).rl
        settings = stage.algorithm
        ctx = types.SimpleNamespace(graphdef=w.graphdef)
        params, value_graphdef = rl_trainer.init_params(ctx, w.params, stage)
        prepare = build_rl_step(settings, None, w.graphdef, value_graphdef).prepare
        ref = w.ref_params if settings.needs_reference else None
        out, _ = prepare(params, ref, _rollout(w), jnp.float32(config.kl.coef))
    else:
        settings, out, _ = _prepare(config)
    expected = _pure_advantages(config, out, w)
    return config, settings, out, np.asarray(expected)


ESTIMATOR_OPTIONS = {  # the fields an estimator needs (check_config asks for them)
    "rft": {"loss.policy_loss": "likelihood"},
    "online_rft": {"loss.policy_loss": "likelihood"},
    "grpo_process": {"task.name": "addition_scratchpad", "rl.step_rewards": "gold",
                     "rewards.weights": {"final_answer": 1.0},
                     "rewards.correctness": "final_answer"},
}


def _estimator(name):
    return {"rl.estimator": name} | ESTIMATOR_OPTIONS.get(name, {})


@pytest.mark.parametrize("estimator", config_lib.ESTIMATORS)
def test_each_estimator_prepares_its_own_advantages(estimator):
    _, _, out, expected = _prepare_advantages(**_estimator(estimator))
    _assert_close(out.advantages, expected, estimator)
    assert (out.returns is not None) == (estimator == "gae")


def test_whiten_advantages_reaches_prepare():
    _, _, out, expected = _prepare_advantages(**{"rl.whiten_advantages": True})
    mask = _world().batch["response_mask"]
    _assert_close(out.advantages, rl_jax.whiten(expected, mask), "whitened advantages")
    assert not np.allclose(out.advantages, expected, atol=1e-3)


def test_whiten_rewards_reaches_prepare():
    # dr_grpo (no std scaling) shows the scores' scale: whitened without the mean shift.
    overrides = {"rl.estimator": "dr_grpo", "rl.whiten_rewards": True}
    _, _, out, _ = _prepare_advantages(**overrides)
    config, w = _config(**overrides), _world()
    scores = np.asarray(rl_jax.whiten(w.batch["scores"], np.ones_like(w.batch["scores"]),
                                      shift_mean=False))
    expected = rl_jax.group_advantages(scores, config.rl.group_size, scale="none")
    mask = w.batch["response_mask"]
    _assert_close(out.advantages, np.asarray(expected)[:, None] * mask, "whitened rewards")
    _, _, plain, _ = _prepare_advantages(**{"rl.estimator": "dr_grpo"})
    assert not np.allclose(out.advantages, plain.advantages, atol=1e-3)


def test_the_estimators_give_different_advantages():
    """Estimators that sample the same policy differ in their advantages; RFT and Online RFT share
    their coefficient I(o) and differ only in the policy they sample (the next test)."""
    same_sampler = [e for e in config_lib.ESTIMATORS
                    if rl_jax.algorithm.ESTIMATORS[e].sampler == "policy"]
    assert "online_rft" in same_sampler and "rft" not in same_sampler
    _distinct({est: _prepare_advantages(**_estimator(est))[2].advantages
               for est in same_sampler})


def test_rft_and_online_rft_differ_in_their_data_source_only():
    rft, online = (RLSettings.from_config(_config(**_estimator(e))) for e in ("rft", "online_rft"))
    assert rft.samples_from_reference and not online.samples_from_reference
    assert rl_jax.algorithm.ESTIMATORS["rft"].fn is rl_jax.algorithm.ESTIMATORS["online_rft"].fn
    _assert_close(_prepare_advantages(**_estimator("rft"))[2].advantages,
                  _prepare_advantages(**_estimator("online_rft"))[2].advantages)


@pytest.mark.parametrize("estimator", ["gae", "reinforce_pp"])
def test_kl_in_the_reward(estimator):
    """kl.in_reward: -coef * k1(old, ref) on the token rewards, not a loss term."""
    overrides = {"rl.estimator": estimator, "kl.coef": 0.5, "kl.in_reward": True}
    config, settings, out, expected = _prepare_advantages(**overrides)
    assert settings.kl_in_reward and settings.kl_loss_coef == 0.0
    _assert_close(out.advantages, expected)
    without = _prepare_advantages(**{"rl.estimator": estimator})[2].advantages
    _distinct({"kl in reward": out.advantages, "none": without})


def test_kl_coef_routes_to_the_loss_or_the_reward():
    loss_settings = RLSettings.from_config(_config(**{"kl.coef": 0.3}))
    assert (loss_settings.kl_loss_coef, loss_settings.kl_in_reward) == (0.3, False)
    reward_settings = RLSettings.from_config(
        _config(**{"kl.coef": 0.3, "kl.in_reward": True, "rl.estimator": "gae"}))
    assert (reward_settings.kl_loss_coef, reward_settings.kl_in_reward) == (0.0, True)


def test_adaptive_kl_controller_matches_ziegler():
    """kl.target > 0: beta <- beta * (1 + clip(KL / target - 1, -0.2, 0.2) * n / horizon)."""
    for kl_value, expected in [(0.2, 1 + 0.2 * 8 / 100), (0.09, 1 - 0.1 * 8 / 100),
                               (0.0, 1 - 0.2 * 8 / 100)]:
        got = rl_jax.adaptive_kl_update(1.0, kl_value, target=0.1, horizon=100, n_steps=8)
        np.testing.assert_allclose(float(got), expected, rtol=1e-6)


def _mismatch_band(kind):
    """The fields of correction ``kind`` set tight, so it acts on the batch (check_config refuses
    the others' fields)."""
    if kind.endswith("_tis"):
        return {"loss.is_cap": 1.1}
    if kind.endswith(("_mis", "_mis_geo")):
        return {"loss.is_low": 0.9, "loss.is_high": 1.1}
    return {}


def _pure_correction(kind, old, sampler, mask):
    band = dict(low=0.9, high=1.1)
    return {
        "none": lambda: (np.ones_like(mask), mask, {}),
        "token_tis": lambda: rl_jax.token_tis(old, sampler, mask, cap=1.1),
        "seq_tis": lambda: rl_jax.sequence_tis(old, sampler, mask, cap=1.1),
        "token_mis": lambda: rl_jax.token_masked_is(old, sampler, mask, **band),
        "seq_mis": lambda: rl_jax.sequence_masked_is(old, sampler, mask, **band, level="product"),
        "seq_mis_geo": lambda: rl_jax.sequence_masked_is(old, sampler, mask, **band,
                                                         level="geometric"),
    }[kind]()


def _prepare_correction(kind):
    config = _config(**{"loss.is_correction": kind} | _mismatch_band(kind))
    settings, out, metrics = _prepare(config)
    w = _world()
    mask = w.batch["response_mask"]
    weights, policy_mask, _ = _pure_correction(kind, out.old_logprobs,
                                               w.batch["sampler_logprobs"], mask)
    base = _pure_advantages(config, out, w)
    _assert_close(out.advantages, np.asarray(base) * np.asarray(weights), kind)
    got_mask = mask if out.policy_mask is None else out.policy_mask
    _assert_close(got_mask, policy_mask, kind)
    return np.concatenate([np.ravel(out.advantages), np.ravel(got_mask)])


@pytest.mark.parametrize("kind", config_lib.IS_CORRECTIONS)
def test_each_mismatch_correction_is_its_own_pure_function(kind):
    _prepare_correction(kind)


def test_the_mismatch_corrections_differ():
    _distinct({kind: _prepare_correction(kind) for kind in config_lib.IS_CORRECTIONS})


def test_the_policy_mask_reaches_the_loss():
    """token_mis's mask: the masked tokens leave the policy loss (the loss reads policy_mask)."""
    w = _world()
    config = _config(**{"loss.is_correction": "token_mis"} | _mismatch_band("token_mis"))
    settings, out, _ = _prepare(config)
    (loss, _), _ = _jitted_loss_grad(settings)({"policy": w.new_params}, out)
    expected, _ = rl_jax.policy_loss(w.lp(w.new_params), out.old_logprobs, out.advantages,
                                     out.policy_mask, max_len=w.R)
    _assert_close(loss, expected)
    assert 0 < float(np.asarray(out.policy_mask).sum()) < w.batch["response_mask"].sum()


def test_overlong_filter_masks_truncated_rows_out_of_the_loss():
    w = _world()
    settings, out, _ = _prepare(_config(**{"rl.overlong_filter": True}))
    expected = w.batch["response_mask"] * (1 - w.batch["truncated"])[:, None]
    _assert_close(out.loss_mask, expected)
    assert float(expected.sum()) < w.batch["response_mask"].sum()


# --------------------------------------------------------------------------------------------
# update: one step with SGD moves the parameters by -lr * the pure loss's gradient.

@pytest.mark.parametrize("name", ["ppo", "clip_cov"])  # clip_cov: the update's random key
def test_update_steps_along_the_pure_gradient(name):
    w = _world()
    config = _config(**{"loss.policy_loss": name, "rl.num_minibatches": 1}
                     | POLICY_LOSS_OPTIONS[name])
    settings, out, _ = _prepare(config)
    assert settings.single_pass
    tx = optax.sgd(1.0)
    params = {"policy": w.params}
    state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))
    update = build_rl_step(settings, tx, w.graphdef).update
    new_state, metrics = update(state, out)
    # The update's permutation and clip_cov key (algorithm.step.make_update), to rebuild its
    # minibatch.
    epoch_key = jax.random.split(jax.random.fold_in(jax.random.key(settings.seed), 0), 1)[0]
    perm = np.asarray(jax.random.permutation(epoch_key, len(LENGTHS)))
    loss_key = jax.random.split(jax.random.fold_in(epoch_key, 1), 1)[0]
    tokens, mask = w.batch["tokens"][perm], w.batch["mask"][perm]
    mb = {"response_mask": w.batch["response_mask"][perm],
          "advantages": np.asarray(out.advantages)[perm], "loss_key": loss_key}

    lp = w.lp_at(w.params, tokens, mask)
    expected, d_logprobs = jax.value_and_grad(lambda x: _pure_policy_loss(
        config, x, mb | {"old_logprobs": jax.lax.stop_gradient(x)}))(lp)
    _assert_close(metrics["policy_loss"], expected)
    grads = w.vjp_at(w.params, d_logprobs, tokens, mask)
    step = jax.tree.map(lambda new, old: new - old, new_state.params["policy"], w.params)
    _assert_tree_close(step, jax.tree.map(lambda g: -g, grads))


# --------------------------------------------------------------------------------------------
# The RL stage's score shaping (algorithm.shape_scores), against the DAPO / PPO formulas.

SHAPING_LENGTHS = np.array([1, 4, 6, 7, 8, 8])
SHAPING_TRUNCATED = np.array([False, False, False, False, True, False])
SHAPING_SCORES = np.array([1.0, 0.5, 1.0, 0.0, 1.0, 0.3], np.float32)


def _shape(**overrides):
    config = _config(**{"rollout.max_new_tokens": 8} | overrides)
    return shape_scores(ScoreShaping.from_config(config), SHAPING_SCORES, SHAPING_LENGTHS,
                        SHAPING_TRUNCATED)


def _overlong_reference(buffer, penalty, budget=8):
    """DAPO: -penalty * (L - (N - b)) / b for L > N - b, capped at -penalty."""
    out = []
    for score, length in zip(SHAPING_SCORES, SHAPING_LENGTHS, strict=True):
        excess = length - (budget - buffer)
        out.append(score - penalty * min(max(excess, 0) / buffer, 1.0))
    return np.array(out, np.float32)


SHAPING_OPTIONS = {  # every rl.* field ScoreShaping reads, and the test of it
    "overlong_buffer": lambda: [  # a buffer of one token is on too
        _assert_close(_shape(**{"rl.overlong_buffer": b}), _overlong_reference(b, 1.0))
        for b in (4, 1)],
    "overlong_penalty": lambda: _assert_close(
        _shape(**{"rl.overlong_buffer": 3, "rl.overlong_penalty": 0.5}),
        _overlong_reference(3, 0.5)),
    "eos_trick": lambda: _assert_close(
        _shape(**{"rl.eos_trick": True}), np.where(SHAPING_TRUNCATED, -1.0, SHAPING_SCORES)),
    "missing_eos_score": lambda: _assert_close(
        _shape(**{"rl.eos_trick": True, "rl.missing_eos_score": -0.5}),
        np.where(SHAPING_TRUNCATED, -0.5, SHAPING_SCORES)),
}


def test_every_shaping_field_has_a_test():
    read = set(re.findall(r"\brl\.(\w+)", inspect.getsource(ScoreShaping.from_config)))
    assert read == set(SHAPING_OPTIONS), read ^ set(SHAPING_OPTIONS)


@pytest.mark.parametrize("option", sorted(SHAPING_OPTIONS))
def test_each_score_shaping_option(option):
    SHAPING_OPTIONS[option]()


def test_shaping_options_change_the_scores_and_compose():
    plain = _shape()
    _assert_close(plain, SHAPING_SCORES)
    both = _shape(**{"rl.overlong_buffer": 4, "rl.eos_trick": True})
    expected = np.where(SHAPING_TRUNCATED, -1.0, _overlong_reference(4, 1.0))
    _assert_close(both, expected)
    _distinct({"none": plain, "overlong": _shape(**{"rl.overlong_buffer": 4}),
               "eos": _shape(**{"rl.eos_trick": True}), "both": both})


def test_count_empty_rows_reaches_the_loss():
    """loss.count_empty_rows: with an empty response in the batch, the seq-mean denominator
    counts it (TRL's convention) or not, as the pure function does for that setting."""
    w = _world()
    mb = _loss_inputs()
    empty = np.asarray(mb.response_mask).copy()
    empty[3] = 0.0  # row 3 has no response token
    mb = mb.replace(response_mask=empty, advantages=np.asarray(mb.advantages) * empty)
    logprobs = w.lp(w.new_params)
    losses = {}
    for count in (False, True):
        config = _config(**{"loss.agg": "seq-mean-token-mean", "loss.count_empty_rows": count})
        settings = RLSettings.from_config(config)
        (loss, _), _ = _jitted_loss_grad(settings)({"policy": w.new_params}, mb)
        _assert_close(loss, _pure_policy_loss(config, logprobs, _fields(mb)), f"count={count}")
        losses[count] = loss
    _distinct(losses)
