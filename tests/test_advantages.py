"""Advantage estimators against NumPy loops and hand-derived numbers."""

import chex
import jax
import numpy as np
import pytest
from absl.testing import parameterized
from hypothesis import given, settings
from hypothesis import strategies as st
from testing_utils import random_mask

import rl_jax


def numpy_gae(rewards, values, mask, gamma, lam):
    """GAE by a plain loop over each row's real tokens, in order (independent of the scan)."""
    adv = np.zeros_like(rewards, dtype=np.float64)
    for b in range(rewards.shape[0]):
        idx = np.flatnonzero(mask[b])
        next_value, next_adv = 0.0, 0.0
        for t in idx[::-1]:
            delta = rewards[b, t] + gamma * next_value - values[b, t]
            next_adv = delta + gamma * lam * next_adv
            next_value = values[b, t]
            adv[b, t] = next_adv
    returns = np.where(mask > 0, adv + values, 0.0)
    return adv, returns


class GaeTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.product(padding=["right", "left", "random"], gamma=[1.0, 0.9], lam=[1.0, 0.95])
    def test_matches_numpy_loop(self, padding, gamma, lam):
        rng = np.random.default_rng(0)
        shape = (6, 11)
        rewards = rng.normal(size=shape).astype(np.float32)
        values = rng.normal(size=shape).astype(np.float32)
        mask = random_mask(rng, *shape, padding=padding)
        fn = self.variant(lambda r, v, m: rl_jax.gae(r, v, m, gamma=gamma, lam=lam))
        adv, ret = fn(rewards, values, mask)
        ref_adv, ref_ret = numpy_gae(rewards, values, mask, gamma, lam)
        np.testing.assert_allclose(adv, ref_adv, atol=1e-5)
        np.testing.assert_allclose(ret, ref_ret, atol=1e-5)

    def test_hand_derived(self):
        # One response of 3 tokens then padding; reward 1 on the last token.
        # gamma = 0.5, lam = 0.5. V = [0.2, 0.4, 0.6], after the last token V = 0.
        # delta_2 = 1 - 0.6 = 0.4;            A_2 = 0.4
        # delta_1 = 0 + 0.5*0.6 - 0.4 = -0.1;  A_1 = -0.1 + 0.25*0.4 = 0.0
        # delta_0 = 0 + 0.5*0.4 - 0.2 = 0.0;   A_0 = 0.0 + 0.25*0.0 = 0.0
        rewards = np.array([[0.0, 0.0, 1.0, 5.0]], np.float32)  # 5.0 sits on padding: ignored
        values = np.array([[0.2, 0.4, 0.6, 9.0]], np.float32)
        mask = np.array([[1, 1, 1, 0]], np.float32)
        adv, ret = rl_jax.gae(rewards, values, mask, gamma=0.5, lam=0.5)
        np.testing.assert_allclose(adv, [[0.0, 0.0, 0.4, 0.0]], atol=1e-6)
        np.testing.assert_allclose(ret, [[0.2, 0.4, 1.0, 0.0]], atol=1e-6)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), batch=st.integers(1, 4), time=st.integers(1, 9))
def test_gae_gamma_lam_one_is_reward_to_go_minus_value(seed, batch, time):
    rng = np.random.default_rng(seed)
    rewards = rng.normal(size=(batch, time)).astype(np.float32)
    values = rng.normal(size=(batch, time)).astype(np.float32)
    mask = random_mask(rng, batch, time)
    adv, ret = rl_jax.gae(rewards, values, mask, gamma=1.0, lam=1.0)
    masked_rewards = rewards * mask
    reward_to_go = np.cumsum(masked_rewards[:, ::-1], axis=1)[:, ::-1]
    np.testing.assert_allclose(adv, (reward_to_go - values) * mask, atol=1e-4)
    np.testing.assert_allclose(ret, reward_to_go * mask, atol=1e-4)


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    time=st.integers(1, 8),
    num_pad=st.integers(1, 6),
    gamma=st.floats(0.5, 1.0),
    lam=st.floats(0.0, 1.0),
)
def test_gae_extra_padding_changes_nothing_at_real_tokens(seed, time, num_pad, gamma, lam):
    rng = np.random.default_rng(seed)
    rewards = rng.normal(size=(3, time)).astype(np.float32)
    values = rng.normal(size=(3, time)).astype(np.float32)
    mask = random_mask(rng, 3, time)
    adv, ret = rl_jax.gae(rewards, values, mask, gamma=gamma, lam=lam)
    # Insert padding columns (with garbage rewards and values) at random places.
    where = np.sort(rng.integers(0, time + 1, size=num_pad))
    pad_rewards = np.insert(rewards, where, 100.0, axis=1)
    pad_values = np.insert(values, where, -100.0, axis=1)
    pad_mask = np.insert(mask, where, 0.0, axis=1)
    pad_adv, pad_ret = rl_jax.gae(pad_rewards, pad_values, pad_mask, gamma=gamma, lam=lam)
    real_cols = np.ones(time + num_pad, bool)
    real_cols[where + np.arange(num_pad)] = False
    np.testing.assert_allclose(pad_adv[:, real_cols], adv, atol=1e-5)
    np.testing.assert_allclose(pad_ret[:, real_cols], ret, atol=1e-5)
    assert np.all(np.asarray(pad_adv)[:, ~real_cols] == 0)


def numpy_group_advantages(rewards, n, scale, eps):
    out = np.zeros_like(rewards, dtype=np.float64)
    for g in range(len(rewards) // n):
        r = rewards[g * n:(g + 1) * n].astype(np.float64)
        centered = r - r.mean()
        if scale == "group":
            centered = centered / (r.std(ddof=1) + eps)
        elif scale == "batch":
            centered = centered / (rewards.std(ddof=1) + eps)
        out[g * n:(g + 1) * n] = centered
    return out


class GroupAdvantagesTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.product(scale=["group", "batch", "none"], group_size=[2, 4])
    def test_matches_numpy(self, scale, group_size):
        rewards = np.random.default_rng(1).normal(size=3 * group_size).astype(np.float32)
        fn = self.variant(lambda r: rl_jax.group_advantages(r, group_size, scale=scale))
        np.testing.assert_allclose(
            fn(rewards), numpy_group_advantages(rewards, group_size, scale, 1e-6), atol=1e-5
        )

    def test_hand_derived(self):
        # Group [1, 0, 0, 1]: mean 0.5, sample std sqrt(1/3) = 0.57735.
        # Group [2, 2, 2, 2]: all equal -> 0.
        rewards = np.array([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0], np.float32)
        adv = rl_jax.group_advantages(rewards, 4, eps=0.0 + 1e-6)
        a = 0.5 / np.sqrt(1 / 3)
        np.testing.assert_allclose(adv, [a, -a, -a, a, 0, 0, 0, 0], rtol=1e-5)
        assert not np.any(np.isnan(adv))
        np.testing.assert_allclose(
            rl_jax.group_advantages(rewards, 4, scale="none"), [0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0]
        )

    def test_bad_group_size(self):
        with pytest.raises(ValueError, match="group_size"):
            rl_jax.group_advantages(np.zeros(6, np.float32), 4)
        with pytest.raises(ValueError, match="group_size >= 2"):
            rl_jax.group_advantages(np.zeros(6, np.float32), 1)
        with pytest.raises(ValueError, match="group_size=0"):  # not a ZeroDivisionError
            rl_jax.group_advantages(np.zeros(6, np.float32), 0, scale="none")
        with pytest.raises(ValueError, match="scale"):
            rl_jax.group_advantages(np.zeros(4, np.float32), 2, scale="global")


@settings(max_examples=40, deadline=None)
@given(
    rewards=st.lists(st.sampled_from([0.0, 0.5, 1.0, -2.0, 3.25]), min_size=2, max_size=8),
    num_groups=st.integers(1, 4),
    scale=st.sampled_from(["group", "batch", "none"]),
)
def test_group_advantages_sum_to_zero_per_group(rewards, num_groups, scale):
    n = len(rewards)
    rng = np.random.default_rng(n)
    batch = np.concatenate([rng.permutation(rewards) for _ in range(num_groups)]).astype(np.float32)
    adv = np.asarray(rl_jax.group_advantages(batch, n, scale=scale))
    assert np.all(np.isfinite(adv))
    np.testing.assert_allclose(adv.reshape(num_groups, n).sum(axis=1), 0.0, atol=1e-4)


class RlooTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_leave_one_out_loop(self):
        n = 4
        rewards = np.random.default_rng(2).normal(size=3 * n).astype(np.float32)
        expected = np.zeros_like(rewards)
        for i in range(len(rewards)):
            g = i // n
            others = [rewards[j] for j in range(g * n, (g + 1) * n) if j != i]
            expected[i] = rewards[i] - np.mean(others)
        got = self.variant(lambda r: rl_jax.rloo_advantages(r, n))(rewards)
        np.testing.assert_allclose(got, expected, atol=1e-5)

    def test_hand_derived(self):
        # [1, 0, 0]: 1 - 0 = 1; 0 - 0.5 = -0.5 (twice).
        np.testing.assert_allclose(
            rl_jax.rloo_advantages(np.array([1.0, 0.0, 0.0], np.float32), 3), [1.0, -0.5, -0.5]
        )
        with pytest.raises(ValueError, match="group_size >= 2"):
            rl_jax.rloo_advantages(np.zeros(3, np.float32), 1)


class WhitenTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(True, False)
    def test_matches_numpy(self, shift_mean):
        rng = np.random.default_rng(3)
        x = rng.normal(loc=2.0, scale=3.0, size=(5, 7)).astype(np.float32)
        mask = random_mask(rng, 5, 7)
        got = self.variant(lambda a, m: rl_jax.whiten(a, m, shift_mean=shift_mean))(x, mask)
        real = x[mask > 0].astype(np.float64)
        expected = (x - real.mean()) / np.sqrt(real.var(ddof=1) + 1e-8)
        if not shift_mean:
            expected = expected + real.mean()
        np.testing.assert_allclose(got, np.where(mask > 0, expected, 0.0), atol=1e-5)
        out = np.asarray(got)[mask > 0]
        if shift_mean:
            assert abs(out.mean()) < 1e-5 and abs(out.std(ddof=1) - 1) < 1e-4


def test_rank_checks():
    with pytest.raises(AssertionError):
        rl_jax.gae(np.zeros(3), np.zeros(3), np.ones(3), gamma=1.0, lam=1.0)
    with jax.numpy_rank_promotion("raise"):
        rl_jax.gae(np.zeros((2, 3)), np.zeros((2, 3)), np.ones((2, 3)), gamma=1.0, lam=1.0)


# An all-equal group must give exactly 0 for *any* float32 value, not only for representable ones
# such as 0.5: before the fix, seven copies of 0.7 gave 0.06 and values near 100 gave 7.6.
# Subnormals are excluded: XLA on CPU flushes them to zero, so whiten(shift_mean=False) of 1e-39
# returns 0, not 1e-39 (a property of the backend, not of the centring).
_any_float32 = st.floats(-1e4, 1e4, allow_nan=False, allow_subnormal=False, width=32)


@settings(max_examples=100, deadline=None)
@given(
    value=_any_float32,
    group_size=st.integers(2, 16),
    num_groups=st.integers(1, 3),
    scale=st.sampled_from(["group", "batch", "none"]),
)
def test_group_advantages_all_equal_group_is_exactly_zero(value, group_size, num_groups, scale):
    rewards = np.full(group_size * num_groups, value, np.float32)
    adv = np.asarray(rl_jax.group_advantages(rewards, group_size, scale=scale))
    assert np.all(adv == 0.0), adv


@settings(max_examples=60, deadline=None)
@given(value=_any_float32, other=_any_float32, group_size=st.integers(2, 16))
def test_group_advantages_equal_group_next_to_unequal_group_is_exactly_zero(
    value, other, group_size
):
    # The batch scale mixes groups; the equal group must still be exactly 0.
    rewards = np.concatenate(
        [np.full(group_size, value), np.linspace(other, other + 1.0, group_size)]
    ).astype(np.float32)
    for scale in ("group", "batch", "none"):
        adv = np.asarray(rl_jax.group_advantages(rewards, group_size, scale=scale))
        assert np.all(adv[:group_size] == 0.0), (scale, adv)


@settings(max_examples=100, deadline=None)
@given(value=_any_float32, group_size=st.integers(2, 16), num_groups=st.integers(1, 3))
def test_rloo_all_equal_group_is_exactly_zero(value, group_size, num_groups):
    rewards = np.full(group_size * num_groups, value, np.float32)
    assert np.all(np.asarray(rl_jax.rloo_advantages(rewards, group_size)) == 0.0)


@settings(max_examples=100, deadline=None)
@given(
    value=_any_float32,
    seed=st.integers(0, 2**31 - 1),
    batch=st.integers(1, 5),
    time=st.integers(1, 9),
)
def test_whiten_all_equal_is_exact(value, seed, batch, time):
    rng = np.random.default_rng(seed)
    mask = random_mask(rng, batch, time, padding="random")
    # Garbage at padding must not matter.
    x = np.where(mask > 0, value, rng.normal(size=(batch, time)) * 50).astype(np.float32)
    assert np.all(np.asarray(rl_jax.whiten(x, mask)) == 0.0)
    kept = np.asarray(rl_jax.whiten(x, mask, shift_mean=False))
    assert np.all(kept == np.where(mask > 0, np.float32(value), 0.0))
    assert np.asarray(rl_jax.masked_var(x, mask)) == 0.0


@pytest.mark.parametrize("value", [0.7, 0.1, 0.3, 1 / 3])
@pytest.mark.parametrize("group_size", [4, 5, 6, 7, 8])
def test_hand_examples_all_equal_give_zero(value, group_size):
    rewards = np.full(2 * group_size, value, np.float32)
    assert np.all(np.asarray(rl_jax.group_advantages(rewards, group_size)) == 0.0)


def numpy_reinforce_pp_baseline(scores, mask, n, eps=1e-8):
    """Group-centre in float64, broadcast over tokens, whiten over the real tokens of the batch."""
    scores = scores.astype(np.float64)
    if n > 1:
        scores = scores - np.repeat(scores.reshape(-1, n).mean(1), n)
    tokens = np.broadcast_to(scores[:, None], mask.shape)
    real = tokens[mask > 0]
    out = (tokens - real.mean()) / np.sqrt(real.var(ddof=1) + eps)
    return np.where(mask > 0, out, 0.0)


class ReinforcePPBaselineTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.product(group_size=[1, 2, 4], padding=["right", "left", "random"])
    def test_matches_numpy(self, group_size, padding):
        rng = np.random.default_rng(11)
        scores = rng.normal(size=3 * group_size).astype(np.float32)
        mask = random_mask(rng, 3 * group_size, 7, padding=padding)
        mask[0] = 1.0  # at least two real tokens in every batch
        fn = self.variant(
            lambda s, m: rl_jax.reinforce_pp_baseline_advantages(s, m, group_size)
        )
        expected = numpy_reinforce_pp_baseline(scores, mask, group_size)
        np.testing.assert_allclose(fn(scores, mask), expected, atol=1e-5)

    def test_hand_derived(self):
        # Scores [1, 0 | 3, 3], group_size 2: centred [0.5, -0.5, 0, 0]. Lengths 1, 3, 2, 2 tokens:
        # token values [0.5 | -0.5 x3 | 0 x2 | 0 x2], mean -1/8, sample var (sum sq dev)/7 where
        # sum sq dev = (0.625^2) + 3 * 0.375^2 + 4 * 0.125^2 = 0.8750, var = 0.125, std = 0.35355.
        scores = np.array([1.0, 0.0, 3.0, 3.0], np.float32)
        mask = np.array([[1, 0, 0], [1, 1, 1], [1, 1, 0], [1, 1, 0]], np.float32)
        adv = rl_jax.reinforce_pp_baseline_advantages(scores, mask, 2)
        std = np.sqrt(0.125)
        np.testing.assert_allclose(
            adv,
            [
                [0.625 / std, 0, 0],
                [-0.375 / std] * 3,
                [0.125 / std, 0.125 / std, 0],
                [0.125 / std, 0.125 / std, 0],
            ],
            rtol=1e-5,
        )
        # Unlike TRL's scale="batch": that one is per response and keeps the group-centred mean 0.
        trl = rl_jax.group_advantages(scores, 2, scale="batch")
        assert not np.allclose(np.asarray(adv)[:, 0], np.asarray(trl))

    def test_all_equal_groups_give_exactly_zero(self):
        scores = np.array([0.7] * 4 + [0.1] * 4, np.float32)
        mask = random_mask(np.random.default_rng(0), 8, 5)
        adv = rl_jax.reinforce_pp_baseline_advantages(scores, mask, 4)
        assert np.all(np.asarray(adv) == 0.0)
