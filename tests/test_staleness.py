"""Off-policy rollouts with a staleness bound (rl.max_staleness): the schedule, the version
stamps, the behaviour importance-weight statistics, the exact checkpointed queue, and runs that
equal the on-policy loop (k = 0), are deterministic and resume bit for bit (k = 1, 4), and the
late-sample policies' carry buffer."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from testing_utils import random_mask, tiny_config

import rl_jax
from rl_jax import parallel
from rl_jax.config import ConfigError, check_config
from rl_jax.trainers.metrics import WALL_CLOCK
from rl_jax.trainers.rl import Round
from rl_jax.trainers.run import run
from rl_jax.trainers.staleness import (
    Pending,
    decode_pending,
    encode_pending,
    sampling_version,
    staleness_metrics,
)

# Wall-clock metrics differ between any two runs, and a run stopped early evaluates at its last
# step; every other metric must not differ.
TIMING = (*WALL_CLOCK, "eval/")


def test_schedule_bounds_the_staleness():
    """version(s) = max(0, s - k): staleness min(s, k), never above k; k = 0 is on-policy."""
    for k in range(4):
        versions = [sampling_version(s, k) for s in range(10)]
        assert versions == [max(0, s - k) for s in range(10)]
        assert all(0 <= s - v <= k for s, v in enumerate(versions))
    assert [sampling_version(s, 0) for s in range(5)] == list(range(5))
    m = staleness_metrics(np.array([3, 3, 2, 1]), step=4)
    assert m == {"staleness_mean": 1.75, "staleness_max": 3.0}


@pytest.mark.parametrize("jit", [False, True])
def test_behaviour_weight_stats_match_numpy(jit):
    rng = np.random.default_rng(0)
    logprobs = rng.normal(-2, 0.5, (6, 7)).astype(np.float32)
    behaviour = (logprobs + rng.normal(0, 0.3, (6, 7))).astype(np.float32)
    mask = random_mask(rng, 6, 7, padding="random")
    mask[2] = 0.0
    fn = lambda a, b, m: rl_jax.behaviour_weight_stats(a, b, m, low=0.8, high=1.2)  # noqa: E731
    got = (jax.jit(fn) if jit else fn)(logprobs, behaviour, mask)
    w = np.exp(logprobs.astype(np.float64) - behaviour)[mask > 0]
    np.testing.assert_allclose(got["behaviour_iw_mean"], w.mean(), rtol=1e-5)
    np.testing.assert_allclose(got["behaviour_iw_max"], w.max(), rtol=1e-5)
    np.testing.assert_allclose(got["behaviour_iw_clipped"], ((w < 0.8) | (w > 1.2)).mean(),
                               rtol=1e-6)


def test_behaviour_weight_stats_by_hand():
    """Two real tokens with ratios e^0 = 1 and e^1; the padded token's huge ratio is ignored."""
    logprobs = np.array([[0.0, 1.0, 9.0]], np.float32)
    mask = np.array([[1.0, 1.0, 0.0]], np.float32)
    got = rl_jax.behaviour_weight_stats(logprobs, np.zeros_like(logprobs), mask, low=0.8,
                                        high=1.2)
    np.testing.assert_allclose(got["behaviour_iw_mean"], (1 + np.e) / 2, rtol=1e-6)
    np.testing.assert_allclose(got["behaviour_iw_max"], np.e, rtol=1e-6)
    np.testing.assert_allclose(got["behaviour_iw_clipped"], 0.5)


def _round(rng, rows=4, with_steps=False):
    return Round(
        prompt_tokens=rng.integers(0, 50, (rows, 5)).astype(np.int32),
        prompt_mask=np.ones((rows, 5), np.int32),
        response_tokens=rng.integers(0, 50, (rows, 3)).astype(np.int32),
        response_mask=np.ones((rows, 3), np.int32),
        sampler_logprobs=rng.normal(size=(rows, 3)).astype(np.float32),
        scores=rng.normal(size=rows).astype(np.float32),
        rewards={"exact_match": rng.random(rows).astype(np.float32), "b": np.zeros(rows)},
        correct=np.ones(rows, np.float32),
        truncated=np.zeros(rows, bool),
        texts=["a", "", "ünï\x00code", "4 + 5"][:rows],
        step_rewards=rng.normal(size=(rows, 3)).astype(np.float32) if with_steps else None,
        step_ends=np.full((rows, 3), -1, np.int32) if with_steps else None,
        version=np.full(rows, 7, np.int32),
    )


@pytest.mark.parametrize("with_steps", [False, True])
def test_pending_queue_survives_json_exactly(with_steps):
    """The queue a checkpoint saves comes back with the same dtypes, bits, texts and metrics."""
    rng = np.random.default_rng(1)
    queue = [Pending(step=s, version=s - 1, rollout=_round(rng, with_steps=with_steps),
                     metrics={"score": 0.1 + s, "accuracy": 1 / 3}) for s in (3, 4)]
    back = decode_pending(Round, json.loads(json.dumps(encode_pending(queue))))
    for a, b in zip(queue, back, strict=True):
        assert (a.step, a.version, a.metrics) == (b.step, b.version, b.metrics)
        assert a.rollout.texts == b.rollout.texts
        assert list(a.rollout.rewards) == list(b.rollout.rewards)
        for name in ("prompt_tokens", "response_mask", "sampler_logprobs", "scores", "truncated",
                     "version", "step_rewards", "step_ends"):
            x, y = getattr(a.rollout, name), getattr(b.rollout, name)
            assert (x is None) == (y is None)
            if x is not None:
                assert x.dtype == y.dtype and np.array_equal(x, y)
        for key, value in a.rollout.rewards.items():
            assert np.array_equal(value, b.rollout.rewards[key])


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"rl.stale_policy": "keep"}, "config.rl.stale_policy = 'keep': expected '' (the "
         "default) with rl.max_staleness = 0"),
        ({"rl.max_staleness": 1}, "config.rl.stale_policy = '': expected one of 'wait', 'drop', "
         "'keep' with rl.max_staleness = 1"),
        ({"rl.max_staleness": 2, "rl.stale_policy": "drop"}, "config.rl.stale_policy = 'drop': "
         "expected 'wait' without rl.dynamic_sampling=True"),
        ({"rl.max_staleness": -1}, "config.rl.max_staleness = -1: expected a number >= 0"),
        ({"rl.max_staleness": 1, "rl.stale_policy": "wait", "rl.estimator": "rft",
          "loss.policy_loss": "likelihood"}, "config.rl.max_staleness = 1: expected 0 with "
         "rl.estimator='rft'"),
    ],
)
def test_check_config_refuses_staleness_options_that_would_be_ignored(overrides, message):
    with pytest.raises(ConfigError) as caught:
        check_config(tiny_config(**overrides))
    assert message in str(caught.value)


@pytest.mark.parametrize("policy", ["wait", "drop", "keep"])
def test_check_config_accepts_the_stale_policies(policy):
    check_config(tiny_config(**{"rl.max_staleness": 1, "rl.stale_policy": policy,
                                "rl.dynamic_sampling": True}))


def _rl_run(workdir, steps, **overrides):
    config = tiny_config(**{"rl.steps": steps, "kl.coef": 0.04, "model.logits_chunk": 0,
                            "rl.epochs": 2, "loss.is_correction": "token_tis",
                            "checkpoint.every": 1, **overrides})
    config.stages = ("rl",)
    params = run(config, str(workdir), parallel.make_mesh(devices=jax.devices()[:1]))["params"]
    lines = [json.loads(line) for line in open(workdir / "metrics.jsonl", encoding="utf-8")]
    return params, [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in lines]


def _assert_same_params(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert np.array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.slow
@pytest.mark.parametrize("k, steps", [(1, 4), (4, 6)])
def test_k_is_deterministic_resumes_bit_for_bit_and_reports_staleness(tmp_path, k, steps):
    """k = 1 and k = 4: a run twice, and one stopped after 2 steps (its queue of k rollouts
    saved) and resumed: the same params bit for bit and the same metrics, line for line."""
    options = {"rl.max_staleness": k, "rl.stale_policy": "wait"}
    straight, lines = _rl_run(tmp_path / "a", steps, **options)
    again, lines_again = _rl_run(tmp_path / "b", steps, **options)
    _rl_run(tmp_path / "c", 2, **options)
    resumed, lines_resumed = _rl_run(tmp_path / "c", steps, **options)
    _assert_same_params(straight, again)
    _assert_same_params(straight, resumed)
    assert lines == lines_again == lines_resumed
    assert [r["staleness_max"] for r in lines] == [float(min(s, k)) for s in range(steps)]
    assert [r["staleness_mean"] for r in lines] == [float(min(s, k)) for s in range(steps)]
    for r in lines:
        assert r["behaviour_iw_max"] >= r["behaviour_iw_mean"] > 0
        assert 0 <= r["behaviour_iw_clipped"] <= 1
        assert r["late_dropped"] == r["late_kept"] == 0
    # Step 0 trains on version 0's own samples: the weights are the sampler/trainer mismatch
    # only; later steps train on an older policy's samples.
    assert abs(lines[0]["behaviour_iw_mean"] - 1) < 1e-4
    assert max(abs(r["behaviour_iw_mean"] - 1) for r in lines[1:]) > 1e-4


@pytest.mark.slow
def test_k0_equals_the_run_without_the_option_and_k1_differs(tmp_path):
    """max_staleness = 0 is the on-policy loop: the same metrics, metric for metric, and params
    as a config that never mentions the option; k = 1 trains on other samples."""
    default, lines = _rl_run(tmp_path / "default", 3)
    zero, lines_zero = _rl_run(tmp_path / "zero", 3, **{"rl.max_staleness": 0})
    _assert_same_params(default, zero)
    assert lines == lines_zero
    assert not any(k.startswith(("staleness", "behaviour_iw")) for r in lines for k in r)
    one, lines_one = _rl_run(tmp_path / "one", 3, **{"rl.max_staleness": 1,
                                                      "rl.stale_policy": "wait"})
    assert lines_one[0]["score"] == lines[0]["score"]  # step 0: the same samples, version 0
    assert any(not np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(jax.tree.leaves(default), jax.tree.leaves(one), strict=True))


def _groups_round(versions, group_size=2, width=3):
    """A Round of one group per entry of ``versions``; group g's scores are all g (to follow it)."""
    rows = len(versions) * group_size
    rng = np.random.default_rng(len(versions))
    r = _round(rng, rows=rows)
    r.texts = [f"g{g}" for g in range(len(versions)) for _ in range(group_size)]
    r.prompt_tokens = r.prompt_tokens[:, :width]
    r.prompt_mask = r.prompt_mask[:, :width]
    r.scores = np.repeat(np.arange(len(versions), dtype=np.float32), group_size)
    r.version = np.repeat(np.asarray(versions, np.int32), group_size)
    return r


def _concat(parts):
    from rl_jax.trainers.rl import _concat as concat

    return concat(parts, pad_id=0)


@pytest.mark.parametrize("policy", ["drop", "keep"])
def test_use_carry_fills_fillers_oldest_first_and_counts_late_groups(policy):
    """Batch of 3 groups, its last 2 fillers; the carry holds groups of versions 1, 4, 5 (oldest
    first). At step 6 with k = 2 the version-1 group is late (6 - 1 > 2): "drop" discards it and
    fills from versions 4 and 5; "keep" trains on it (and version 4) and counts it."""
    from rl_jax.trainers.staleness import use_carry

    batch = _groups_round([6, 6, 6])
    carry = _groups_round([1, 4, 5], width=5)  # a wider prompt bucket: left-padded to 5
    carry.scores = carry.scores + 10
    out, rest, metrics = use_carry(batch, 2, carry, step=6, max_staleness=2, policy=policy,
                                   group_size=2, concat=_concat)
    assert out.prompt_tokens.shape == (6, 5) and len(out.texts) == 6
    if policy == "drop":
        assert list(out.version) == [6, 6, 4, 4, 5, 5] and rest is None
        assert metrics == {"late_dropped": 1.0, "late_kept": 0.0, "carried_used": 2.0}
    else:
        assert list(out.version) == [6, 6, 1, 1, 4, 4] and list(rest.version) == [5, 5]
        assert metrics == {"late_dropped": 0.0, "late_kept": 1.0, "carried_used": 2.0}
    assert list(out.scores[:2]) == [0.0, 0.0]  # the batch's real group stays first


def test_use_carry_without_fillers_or_carry_changes_nothing():
    from rl_jax.trainers.staleness import use_carry

    batch = _groups_round([3, 3])
    out, rest, metrics = use_carry(batch, 0, _groups_round([2]), step=3, max_staleness=1,
                                   policy="keep", group_size=2, concat=_concat)
    assert out is batch and list(rest.version) == [2, 2] and metrics["carried_used"] == 0
    out, rest, metrics = use_carry(batch, 1, None, step=3, max_staleness=1, policy="drop",
                                   group_size=2, concat=_concat)
    assert out is batch and rest is None and metrics["late_dropped"] == 0


def test_add_to_carry_keeps_the_newest_groups():
    from rl_jax.trainers.staleness import add_to_carry

    carry, evicted = add_to_carry(_groups_round([1, 2]), _groups_round([3, 3]), group_size=2,
                                  max_groups=3, concat=_concat)
    assert list(carry.version) == [2, 2, 3, 3, 3, 3] and evicted == 1
    assert add_to_carry(None, None, group_size=2, max_groups=3, concat=_concat) == (None, 0)


def _scripted_leftovers(real):
    """``collect_with_surplus`` whose leftovers follow a script: every rollout has a surplus
    group (a copy of its first), and one from an odd data position ends with a filler group."""

    def collect_with_surplus(ctx, settings, params, position, key, reward_model=None,
                             process_reward=None):
        out, after, metrics, _, _ = real(ctx, settings, params, position, key, reward_model,
                                         process_reward)
        n = settings.group_size
        fillers = position % 2
        if fillers:
            out.response_mask[-n:] = 0
        return out, after, metrics, out.rows(np.arange(n)), fillers

    return collect_with_surplus


@pytest.mark.slow
def test_carried_surplus_is_used_counted_and_resumes_bit_for_bit(tmp_path, monkeypatch):
    """k = 1, stale_policy="keep", a scripted surplus every step and a filler every other step:
    carried groups fill the short batches, late ones too (trained on, counted); a run stopped
    after 3 steps and resumed (queue and carry from the checkpoint) equals the straight run bit
    for bit; "drop" discards the late groups and trains on none."""
    from rl_jax.trainers import rl as rl_trainer

    monkeypatch.setattr(rl_trainer, "collect_with_surplus",
                        _scripted_leftovers(rl_trainer.collect_with_surplus))
    options = {"rl.max_staleness": 1, "rl.dynamic_sampling": True, "rl.max_extra_rounds": 0,
               "rl.stale_policy": "keep"}
    straight, lines = _rl_run(tmp_path / "a", 6, **options)
    _rl_run(tmp_path / "b", 3, **options)
    resumed, lines_resumed = _rl_run(tmp_path / "b", 6, **options)
    _assert_same_params(straight, resumed)
    assert lines == lines_resumed
    assert [r["carried_used"] for r in lines] == [0.0, 1.0, 0.0, 1.0, 0.0, 1.0]
    assert sum(r["late_kept"] for r in lines) > 0
    assert max(r["staleness_max"] for r in lines) > 1  # a late group was trained on
    assert max(r["carry_groups"] for r in lines) == 4  # at most num_prompts groups
    _, dropped = _rl_run(tmp_path / "drop", 6, **options | {"rl.stale_policy": "drop"})
    assert all(r["late_kept"] == 0 and r["staleness_max"] <= 1 for r in dropped)
    assert sum(r["late_dropped"] for r in dropped) > 0


@pytest.mark.slow
def test_k0_stage_is_the_on_policy_loop_written_by_hand(tmp_path):
    """The RL stage with max_staleness = 0 (through the queue) trains exactly what a hand-written
    on-policy loop does: sample from the current params with the step's key and data position,
    prepare, update; same params bit for bit after 3 steps."""
    from flax import nnx

    from rl_jax.algorithm import build_rl_step
    from rl_jax.optim import make_optimizer
    from rl_jax.settings import RunSettings
    from rl_jax.train_state import init_state
    from rl_jax.trainers import rl as rl_trainer
    from rl_jax.trainers.setup import build_context, stage_key

    config = tiny_config(**{"rl.steps": 3, "model.logits_chunk": 0, "rl.epochs": 2,
                            "checkpoint.every": 3})
    config.stages = ("rl",)
    check_config(config)
    settings = RunSettings.from_config(config)
    mesh = parallel.make_mesh(devices=jax.devices()[:1])
    ctx = build_context(settings, str(tmp_path), mesh)
    params = nnx.state(ctx.policy)
    copy = lambda tree: jax.tree.map(jnp.copy, tree)  # noqa: E731 - the updates donate theirs
    stage = rl_trainer.run_rl(ctx, mesh, copy(params), settings.rl).state.params["policy"]

    rl = settings.rl
    tx = make_optimizer(rl.optim, rl.steps * rl.algorithm.epochs * rl.algorithm.num_minibatches)
    state, sharding = init_state({"policy": copy(params)}, tx, mesh)
    step_fns = build_rl_step(rl.algorithm, tx, ctx.graphdef, mesh=mesh, state_sharding=sharding)
    position = 0
    for step in range(rl.steps):
        rollout, position, _ = rl_trainer.collect(
            ctx, rl.rollout, state.params["policy"], position, stage_key(rl.seed, "rl", step))
        arrays = parallel.shard_batch(rl_trainer.device_batch(rollout), mesh)
        train, _ = step_fns.prepare(state.params, None, arrays, jnp.float32(rl.kl_coef))
        state, _ = step_fns.update(state, train)
    _assert_same_params(stage, state.params["policy"])
