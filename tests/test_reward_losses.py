"""Reward-model losses against NumPy loops, hand-derived values and each other."""

import itertools

import chex
import jax
import numpy as np
from absl.testing import parameterized

import rl_jax


def log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def numpy_ranking_loss(scores, ranks, mask):
    losses = []
    for p in range(scores.shape[0]):
        for i, j in itertools.permutations(range(scores.shape[1]), 2):
            if mask[p, i] and mask[p, j] and ranks[p, i] < ranks[p, j]:
                losses.append(-log_sigmoid(scores[p, i] - scores[p, j]))
    return np.mean(losses)


def numpy_plackett_luce_nll(scores, ranks, mask):
    """NLL of the ranking drawn best-first, by sorting (strict ranks only)."""
    nlls = []
    for p in range(scores.shape[0]):
        present = [i for i in range(scores.shape[1]) if mask[p, i]]
        order = sorted(present, key=lambda i: ranks[p, i])
        s = scores[p, order].astype(np.float64)
        nlls.append(sum(np.log(np.exp(s[k:]).sum()) - s[k] for k in range(len(s))))
    return np.mean(nlls)


class PairwiseTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_hand_derived(self):
        # diff 0 -> log 2; diff log(3) -> -log(3/4) = log(4/3).
        chosen = np.array([1.0, np.log(3.0)], np.float32)
        rejected = np.array([1.0, 0.0], np.float32)
        got = self.variant(rl_jax.pairwise_loss)(chosen, rejected)
        np.testing.assert_allclose(got, (np.log(2) + np.log(4 / 3)) / 2, rtol=1e-6)
        # A margin of log(3) on the second pair makes its diff 0 as well.
        got = rl_jax.pairwise_loss(chosen, rejected, margin=np.array([0.0, np.log(3.0)]))
        np.testing.assert_allclose(got, np.log(2), rtol=1e-6)

    def test_decreases_with_the_gap(self):
        losses = [float(rl_jax.pairwise_loss(np.array([g]), np.array([0.0]))) for g in range(-3, 4)]
        assert all(a > b for a, b in zip(losses, losses[1:], strict=False))


class RankingTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_pair_loop_with_ties_and_missing(self):
        rng = np.random.default_rng(0)
        scores = rng.normal(size=(5, 4)).astype(np.float32)
        ranks = rng.integers(0, 3, size=(5, 4))  # ties included
        mask = (rng.random((5, 4)) < 0.8).astype(np.float32)
        got = self.variant(rl_jax.ranking_loss)(scores, ranks, mask)
        np.testing.assert_allclose(got, numpy_ranking_loss(scores, ranks, mask), rtol=1e-5)

    @parameterized.parameters("ranking_loss", "listwise_loss")
    def test_k2_equals_pairwise_loss_and_gradients(self, name):
        rng = np.random.default_rng(1)
        chosen, rejected = (rng.normal(size=6).astype(np.float32) for _ in range(2))
        scores = np.stack([rejected, chosen], axis=1)  # chosen second, to exercise the ranks
        ranks = np.tile([1, 0], (6, 1))
        mask = np.ones((6, 2), np.float32)
        fn = getattr(rl_jax, name)
        np.testing.assert_allclose(
            fn(scores, ranks, mask), rl_jax.pairwise_loss(chosen, rejected), rtol=1e-6
        )
        g_rank = jax.grad(fn)(scores, ranks, mask)
        g_chosen, g_rejected = jax.grad(rl_jax.pairwise_loss, argnums=(0, 1))(chosen, rejected)
        np.testing.assert_allclose(g_rank[:, 1], g_chosen, rtol=1e-5)
        np.testing.assert_allclose(g_rank[:, 0], g_rejected, rtol=1e-5)


class ListwiseTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_sorted_plackett_luce(self):
        rng = np.random.default_rng(2)
        scores = rng.normal(size=(4, 5)).astype(np.float32)
        ranks = np.stack([rng.permutation(5) for _ in range(4)])
        mask = np.ones((4, 5), np.float32)
        mask[1, 3] = 0  # a missing response
        got = self.variant(rl_jax.listwise_loss)(scores, ranks, mask)
        np.testing.assert_allclose(got, numpy_plackett_luce_nll(scores, ranks, mask), rtol=1e-5)

    def test_probabilities_of_all_rankings_sum_to_one(self):
        scores = np.array([[0.3, -1.2, 2.0, 0.5]], np.float32)
        total = 0.0
        for perm in itertools.permutations(range(4)):
            ranks = np.array([perm])
            total += np.exp(-float(rl_jax.listwise_loss(scores, ranks, np.ones((1, 4)))))
        np.testing.assert_allclose(total, 1.0, rtol=1e-5)

    def test_empty_rows_are_finite(self):
        scores = np.ones((2, 3), np.float32)
        mask = np.array([[1, 1, 1], [0, 0, 0]], np.float32)
        ranks = np.array([[0, 1, 2], [0, 1, 2]])
        for fn in (rl_jax.listwise_loss, rl_jax.ranking_loss):
            grad = jax.grad(fn)(scores, ranks, mask)
            assert np.all(np.isfinite(grad)) and np.all(np.asarray(grad)[1] == 0)
