"""DeepSeekMath's unified paradigm (§5.2) and process supervision (§4.1.3): the gradient
coefficients of RFT, Online RFT and GRPO, the likelihood loss, GRPO's process advantages, the
scratchpad task's gold step checker, and the config rules of the estimators that use them."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import rl_jax
from rl_jax import data
from rl_jax.config import ConfigError, check_config
from rl_jax.data.example import Example
from tests.testing_utils import tiny_config


@pytest.fixture(autouse=True)
def _strict_ranks(request):
    """The pure functions broadcast nothing implicitly (the loop's test runs the whole model)."""
    if "initial_policy" in request.node.name:
        yield
        return
    with jax.numpy_rank_promotion("raise"):
        yield


# --- Gradient coefficients -----------------------------------------------------------------------


class CoefficientTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_rft_coefficient_is_the_correctness_indicator(self):
        correct = jnp.array([1.0, 0.0, 1.0])
        mask = jnp.array([[1, 1, 0], [1, 1, 1], [1, 0, 0]], jnp.float32)
        gc = self.variant(rl_jax.rft_gradient_coefficient)(correct, mask)
        np.testing.assert_array_equal(gc, [[1, 1, 0], [0, 0, 0], [1, 0, 0]])

    @chex.variants(with_jit=True, without_jit=True)
    def test_grpo_coefficient_by_hand(self):
        # pi = (0.5, 0.25), pi_ref = (0.25, 0.5): pi_ref / pi = (0.5, 2); beta = 0.1, A = 0.5.
        lp = jnp.log(jnp.array([[0.5, 0.25, 0.9]]))
        ref = jnp.log(jnp.array([[0.25, 0.5, 0.1]]))
        adv = jnp.array([[0.5, 0.5, 0.5]])
        mask = jnp.array([[1.0, 1.0, 0.0]])
        fn = self.variant(lambda a, x, r: rl_jax.grpo_gradient_coefficient(a, x, r, 0.1, mask))
        np.testing.assert_allclose(fn(adv, lp, ref), [[0.5 - 0.05, 0.5 + 0.1, 0.0]], rtol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_process_advantages_by_hand(self):
        # One group of 2: response 0 has steps ending at tokens 1 and 3 (rewards 1, 0); response
        # 1 one step at token 2 (reward 1). R = {1, 0, 1}: mean 2/3, std (ddof 1) sqrt(1/3).
        rewards = jnp.array([[1.0, 0.0], [1.0, 0.0]])
        ends = jnp.array([[1, 3], [2, -1]])
        mask = jnp.array([[1, 1, 1, 1], [1, 1, 1, 0]], jnp.float32)
        adv = self.variant(lambda r, e, m: rl_jax.process_advantages(r, e, m, 2))(
            rewards, ends, mask)
        hi, lo = (1 - 2 / 3) / np.sqrt(1 / 3), (0 - 2 / 3) / np.sqrt(1 / 3)
        np.testing.assert_allclose(adv, [[hi + lo, hi + lo, lo, lo], [hi, hi, hi, 0.0]],
                                   rtol=1e-5)


def test_grpo_coefficient_is_minus_the_gradient_of_grpos_loss_at_ratio_one():
    """d/d log pi_t of sum_t (-A_t * ratio_t + beta * k3_t) at pi_old = pi is -GC_GRPO(t)."""
    rng = np.random.default_rng(0)
    lp = jnp.asarray(np.log(rng.uniform(0.05, 1, (3, 4))), jnp.float32)
    ref = jnp.asarray(np.log(rng.uniform(0.05, 1, (3, 4))), jnp.float32)
    adv = jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)
    mask = jnp.ones((3, 4))
    beta = 0.3

    def loss(logprobs):
        ratio = jnp.exp(logprobs - jax.lax.stop_gradient(logprobs))
        return jnp.sum(-adv * ratio + beta * rl_jax.kl(logprobs, ref, estimator="k3"))

    np.testing.assert_allclose(jax.grad(loss)(lp),
                               -rl_jax.grpo_gradient_coefficient(adv, lp, ref, beta, mask),
                               rtol=1e-5, atol=1e-6)


def test_likelihood_loss_value_and_gradient():
    lp = jnp.log(jnp.array([[0.5, 0.25], [0.8, 0.1]]))
    mask = jnp.array([[1.0, 1.0], [1.0, 0.0]])
    gc = rl_jax.rft_gradient_coefficient(jnp.array([1.0, 0.0]), mask)
    loss, metrics = rl_jax.likelihood_loss(lp, lp, gc, mask)  # token-mean over 3 tokens
    np.testing.assert_allclose(loss, -(np.log(0.5) + np.log(0.25)) / 3, rtol=1e-6)
    grad = jax.grad(lambda x: rl_jax.likelihood_loss(x, lp, gc, mask)[0])(lp)
    np.testing.assert_allclose(grad, [[-1 / 3, -1 / 3], [0.0, 0.0]], rtol=1e-6)
    assert float(metrics["approx_kl"]) == 0.0
    # The RFT gradient is SFT's on the correct responses: -grad of the mean log-likelihood.
    sft = jax.grad(lambda x: -(x[0, 0] + x[0, 1]) / 3)(lp)
    np.testing.assert_allclose(grad, sft, rtol=1e-6)


# --- Process advantages ---------------------------------------------------------------------------


def _process_reference(step_rewards, step_ends, mask, group_size, eps=1e-6):
    """A plain loop: normalise each group's steps, then sum those ending at or after t."""
    batch, time = mask.shape
    out = np.zeros((batch, time))
    for g in range(batch // group_size):
        rows = range(g * group_size, (g + 1) * group_size)
        rs = [step_rewards[b, s] for b in rows for s in range(step_ends.shape[1])
              if step_ends[b, s] >= 0]
        mean = np.mean(rs)
        std = np.std(rs, ddof=1) if len(rs) > 1 else 0.0
        for b in rows:
            for t in range(time):
                out[b, t] = sum((step_rewards[b, s] - mean) / (std + eps)
                                for s in range(step_ends.shape[1])
                                if step_ends[b, s] >= t and step_ends[b, s] >= 0) * mask[b, t]
    return out


def test_process_advantages_match_a_numpy_loop():
    rng = np.random.default_rng(1)
    batch, time, steps, group = 6, 7, 4, 3
    lengths = rng.integers(1, time + 1, batch)
    mask = (np.arange(time)[None] < lengths[:, None]).astype(np.float32)
    ends = np.where(rng.uniform(size=(batch, steps)) < 0.7,
                    rng.integers(0, time, (batch, steps)) % lengths[:, None], -1).astype(np.int32)
    ends[:, 0] = lengths - 1  # every response has a step
    rewards = rng.integers(0, 2, (batch, steps)).astype(np.float32)
    rewards[np.arange(batch) % group == 0, 0] = 1 - rewards[np.arange(batch) % group == 0, 0]
    got = rl_jax.process_advantages(jnp.asarray(rewards), jnp.asarray(ends), jnp.asarray(mask),
                                    group)
    np.testing.assert_allclose(got, _process_reference(rewards, ends, mask, group),
                               rtol=1e-5, atol=1e-5)


def test_process_advantages_of_equal_step_rewards_are_zero():
    ends = jnp.array([[0, 2], [1, -1]])
    adv = rl_jax.process_advantages(jnp.ones((2, 2)), ends, jnp.ones((2, 3)), 2)
    np.testing.assert_array_equal(adv, np.zeros((2, 3)))


# --- The scratchpad task's gold steps ------------------------------------------------------------


EXAMPLE = Example("58+67=", "15,12>521", "521", {"notes": ("15", "12")})


def test_gold_steps_of_the_scratchpad_task():
    assert data.gold_steps("15,13>531", EXAMPLE) == [(2, 1.0), (5, 0.0), (8, 0.0)]
    assert data.gold_steps("15,12>521", EXAMPLE) == [(2, 1.0), (5, 1.0), (8, 1.0)]
    assert data.gold_steps("521", EXAMPLE) == [(2, 1.0)]
    assert data.gold_steps("15,12,1>521", EXAMPLE) == [(2, 1.0), (5, 1.0), (7, 0.0), (10, 1.0)]
    assert data.gold_steps("", EXAMPLE) == []
    assert data.STEP_CHECKERS["addition_scratchpad"] is data.gold_steps


def test_gold_steps_of_sft_targets_are_all_right():
    task = data.make_task("addition_scratchpad", seed=2)
    for ex in task.batch(0, 32):
        assert all(reward == 1.0 for _, reward in data.gold_steps(ex.target, ex))


def test_steps_map_to_the_token_of_their_last_character():
    # Tokens "1", "5,", "12", ">", "531", EOS: text ends 1, 3, 5, 6, 9 (EOS decodes to nothing).
    text_ends = np.array([1, 3, 5, 6, 9])
    np.testing.assert_array_equal(data.step_token_ends([2, 5, 8], text_ends, 6), [1, 3, 5])
    rewards, ends = data.step_arrays([[(2, 1.0), (5, 0.0), (8, 1.0)], []],
                                     [text_ends, np.zeros(0)], np.array([6, 0]), 4)
    np.testing.assert_array_equal(ends, [[1, 3, 5, -1], [-1, -1, -1, -1]])
    np.testing.assert_array_equal(rewards, [[1, 0, 1, 0], [0, 0, 0, 0]])
    # More steps than slots: the first ones and the last (the answer) are kept.
    _, ends = data.step_arrays([[(0, 1.0), (2, 1.0), (4, 1.0), (8, 1.0)]], [text_ends],
                               np.array([5]), 3)
    np.testing.assert_array_equal(ends, [[0, 1, 4]])


# --- Config rules ---------------------------------------------------------------------------------


def _errors(**overrides):
    with pytest.raises(ConfigError) as error:
        check_config(tiny_config(**overrides))
    return str(error.value)


RFT = {"rl.estimator": "rft", "loss.policy_loss": "likelihood"}
PROCESS = {"task.name": "addition_scratchpad", "rewards.weights": {"final_answer": 1.0},
           "rewards.correctness": "final_answer", "rl.estimator": "grpo_process",
           "rl.step_rewards": "gold"}


def test_the_paradigm_configs_pass():
    for overrides in (RFT, RFT | {"rl.estimator": "online_rft"}, PROCESS,
                      RFT | {"rl.group_size": 1, "rl.num_minibatches": 1}):
        check_config(tiny_config(**overrides))


@pytest.mark.parametrize(("overrides", "message"), [
    (RFT | {"loss.vf_coef": 0.5}, "config.loss.vf_coef = 0.5: expected 0.1 (the default) with "
     "rl.estimator='rft' (no critic"),
    (RFT | {"loss.policy_loss": "ppo"}, "config.loss.policy_loss = 'ppo': expected 'likelihood' "
     "with rl.estimator='rft'"),
    (RFT | {"rl.shuffle_rewards": True}, "config.rl.shuffle_rewards = True: expected False"),
    (RFT | {"rl.whiten_advantages": True}, "config.rl.whiten_advantages = True"),
    (RFT | {"loss.is_correction": "token_tis"}, "config.loss.is_correction = 'token_tis'"),
    (RFT | {"loss.clip_high": 0.28}, "config.loss.clip_high = 0.28"),
    (PROCESS | {"task.name": "countdown"}, "config.rl.step_rewards = 'gold': expected 'none' "
     "with task.name='countdown': the task declares no steps"),
    (PROCESS | {"rl.step_rewards": "none"}, "config.rl.step_rewards = 'none': expected 'gold' "
     "or 'model' with rl.estimator='grpo_process'"),
    (PROCESS | {"rl.estimator": "grpo"}, "config.rl.step_rewards = 'gold': expected 'none' (the "
     "default) with rl.estimator='grpo'"),
    (PROCESS | {"rl.dynamic_sampling": True}, "config.rl.dynamic_sampling = True"),
])
def test_options_the_paradigm_ignores_are_refused(overrides, message):
    assert message in _errors(**overrides)


def test_rft_samples_from_the_initial_policy(tmp_path, monkeypatch):
    """Every rollout of rft is drawn with the parameters RL started from; online_rft's with the
    current ones (the state's)."""
    from rl_jax import parallel
    from rl_jax.settings import RunSettings
    from rl_jax.trainers import rl as rl_trainer
    from rl_jax.trainers.setup import build_context

    seen = []
    collect = rl_trainer.collect

    def recording(ctx, settings, policy_params, *args, **kwargs):
        seen.append(jax.tree.map(np.asarray, policy_params))
        return collect(ctx, settings, policy_params, *args, **kwargs)

    monkeypatch.setattr(rl_trainer, "collect", recording)
    # Every response counts as correct, so the likelihood loss moves the policy at each step.
    monkeypatch.setattr(rl_trainer.rewards, "combine_rewards",
                        lambda weights, texts, examples: (np.ones(len(texts), np.float32), {}))
    for name in ("rft", "online_rft"):
        seen.clear()
        config = tiny_config(**RFT | {"rl.estimator": name, "rl.steps": 2,
                                      "rl.optim.lr": 1e-2, "model.logits_chunk": 0})
        check_config(config)
        mesh = parallel.make_mesh(devices=jax.devices()[:1])
        settings = RunSettings.from_config(config)
        ctx = build_context(settings, str(tmp_path / name), mesh)
        start = jax.tree.map(np.asarray, nnx.state(ctx.policy))
        result = rl_trainer.run_rl(ctx, mesh, nnx.state(ctx.policy), settings.rl)
        trained = jax.tree.map(np.asarray, result.state.params["policy"])
        moved = jax.tree.leaves(jax.tree.map(lambda a, b: np.abs(a - b).max(), trained, start))
        assert max(moved) > 0  # the policy trained
        second = jax.tree.leaves(jax.tree.map(lambda a, b: np.abs(a - b).max(), seen[1], start))
        if name == "rft":
            assert max(second) == 0
        else:
            assert max(second) > 0


# --- A process reward model's loss ----------------------------------------------------------------


def test_process_reward_loss_against_numpy():
    from rl_jax.reward_losses import process_reward_loss

    rng = np.random.default_rng(4)
    logits = rng.normal(size=(3, 5)).astype(np.float32)
    ends = np.array([[1, 4, -1], [0, -1, -1], [2, 3, 4]], np.int32)
    labels = np.array([[1, 0, 1], [0, 1, 1], [1, 1, 0]], np.float32)
    terms, right = [], []
    for b in range(3):
        for s in range(3):
            if ends[b, s] >= 0:
                z, y = float(logits[b, ends[b, s]]), labels[b, s]
                p = 1 / (1 + np.exp(-z))
                terms.append(-(y * np.log(p) + (1 - y) * np.log(1 - p)))
                right.append((z > 0) == (y > 0.5))
    loss, metrics = jax.jit(process_reward_loss)(logits, ends, labels)
    np.testing.assert_allclose(loss, np.mean(terms), rtol=1e-5)
    np.testing.assert_allclose(metrics["step_accuracy"], np.mean(right), rtol=1e-6)
    # By hand: one step, logit 0, label 1: log 2.
    loss, _ = process_reward_loss(jnp.zeros((1, 2)), jnp.array([[1, -1]]), jnp.array([[1.0, 0.0]]))
    np.testing.assert_allclose(loss, np.log(2.0), rtol=1e-6)


def test_step_rewards_reach_the_rollout_batch_and_its_metrics():
    import dataclasses

    from rl_jax.trainers.rl import _concat, device_batch, rollout_metrics
    from tests.test_dapo_drgrpo import _round

    batch = dataclasses.replace(
        _round([3, 2], [1, 0], [False, False]),
        step_rewards=np.array([[1, 0, 1], [0, 0, 0]], np.float32),
        step_ends=np.array([[0, 1, 2], [1, -1, -1]], np.int32))
    metrics = rollout_metrics(batch)
    assert metrics["step_reward"] == pytest.approx(2 / 4) and metrics["steps"] == 2.0
    rollout = device_batch(batch)
    np.testing.assert_array_equal(rollout.step_ends, batch.step_ends)
    np.testing.assert_array_equal(rollout.correct, [1.0, 0.0])
    assert device_batch(_round([3], [1], [False])).step_ends is None
    joined = _concat([batch, batch.rows(np.array([1]))], pad_id=0)
    np.testing.assert_array_equal(joined.step_ends[2], [1, -1, -1])
