"""CISPO, SAPO, GMPO, Clip-Cov, KL-Cov, GSPO-token and TRL's empty-row convention: values and
gradients against NumPy loops written from the papers' equations (float64), or hand-derived
numbers."""

import chex
import jax
import numpy as np
import pytest
from absl.testing import parameterized
from testing_utils import random_mask

import rl_jax

RTOL, ATOL = 1e-5, 1e-6  # float32 computation against a float64 reference


def agg_weights(mask, mode, max_len=None, count_empty_rows=False):
    """d(aggregate)/d(per_token value): the weight of each token in the reduction."""
    lens = mask.sum(1)
    rows = mask.shape[0] if count_empty_rows else max((lens > 0).sum(), 1)
    if mode == "token-mean":
        return mask / max(mask.sum(), 1)
    if mode == "seq-mean-token-mean":
        return mask / np.maximum(lens, 1)[:, None] / rows
    if mode == "seq-mean-token-sum":
        return mask / rows
    return mask / (max_len or mask.shape[1]) / rows


def make_inputs(seed, shape=(6, 8), adv_rank=1, spread=0.4):
    rng = np.random.default_rng(seed)
    old = rng.normal(-2.0, 0.5, size=shape).astype(np.float32)
    logp = (old + rng.normal(0, spread, size=shape)).astype(np.float32)
    adv = (rng.normal(size=shape if adv_rank == 2 else shape[:1]) * 2).astype(np.float32)
    mask = random_mask(rng, *shape, padding="random")
    mask[0, 0] = 1.0
    return logp, old, adv, mask


def per_token_adv(adv, shape):
    return np.broadcast_to(adv[:, None], shape) if adv.ndim == 1 else adv


class CispoTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.product(
        clip=[(1.0, 0.2), (0.2, 0.28)], agg=list(rl_jax.AGG_MODES), adv_rank=[1, 2]
    )
    def test_value_and_grad_match_numpy(self, clip, agg, adv_rank):
        logp, old, adv, mask = make_inputs(0, adv_rank=adv_rank)
        fn = self.variant(
            jax.value_and_grad(
                lambda lp: rl_jax.cispo_loss(
                    lp, old, adv, mask, clip_low=clip[0], clip_high=clip[1], agg=agg, max_len=10
                ),
                has_aux=True,
            )
        )
        (loss, metrics), grad = fn(logp)
        a = per_token_adv(adv, logp.shape).astype(np.float64)
        ratio = np.exp(logp.astype(np.float64) - old)
        w = np.clip(ratio, 1 - clip[0], 1 + clip[1])
        weights = agg_weights(mask, agg, max_len=10)
        np.testing.assert_allclose(loss, (-w * a * logp * weights).sum(), rtol=RTOL, atol=ATOL)
        # Every token keeps its gradient, weighted by the clipped ratio.
        np.testing.assert_allclose(grad, -w * a * weights, rtol=RTOL, atol=ATOL)
        real = mask > 0
        np.testing.assert_allclose(
            metrics["clip_frac_high"], (ratio[real] > 1 + clip[1]).mean(), rtol=1e-6
        )
        np.testing.assert_allclose(
            metrics["clip_frac_low"], (ratio[real] < 1 - clip[0]).mean(), rtol=1e-6
        )

    def test_hand_derived(self):
        # ratio 2 with A=+1 and clip_high 0.2: weight 1.2; PPO would give gradient 0 here, CISPO
        # gives -1.2 (one token, token-mean). logp = -1, so the loss is -1.2 * 1 * -1 = 1.2.
        old = np.array([[-1.0 - np.log(2.0)]], np.float32)
        logp = np.array([[-1.0]], np.float32)
        mask = np.ones((1, 1), np.float32)
        fn = lambda lp: rl_jax.cispo_loss(lp, old, np.ones(1, np.float32), mask)  # noqa: E731
        (loss, metrics), grad = jax.value_and_grad(fn, has_aux=True)(logp)
        np.testing.assert_allclose(loss, 1.2, rtol=1e-6)
        np.testing.assert_allclose(grad, [[-1.2]], rtol=1e-6)
        np.testing.assert_allclose(metrics["clip_frac_high"], 1.0)
        ppo_grad = jax.grad(lambda lp: rl_jax.policy_loss(lp, old, np.ones(1), mask)[0])(logp)
        np.testing.assert_allclose(ppo_grad, 0.0)


class SapoTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.product(
        taus=[(1.0, 1.05), (0.5, 4.0)], agg=list(rl_jax.AGG_MODES), adv_rank=[1, 2]
    )
    def test_value_and_grad_match_numpy(self, taus, agg, adv_rank):
        logp, old, adv, mask = make_inputs(1, adv_rank=adv_rank, spread=0.6)
        fn = self.variant(jax.value_and_grad(
            lambda lp: rl_jax.losses.sapo_loss(lp, old, adv, mask, tau_pos=taus[0],
                                               tau_neg=taus[1], agg=agg, max_len=10),
            has_aux=True,
        ))
        (loss, metrics), grad = fn(logp)
        # NumPy, float64, from the paper: f(r) = 4/tau sigmoid(tau (r - 1)), loss_t = -f(r_t) A_t.
        a = per_token_adv(adv, logp.shape).astype(np.float64)
        ratio = np.exp(logp.astype(np.float64) - old)
        tau = np.where(a > 0, taus[0], taus[1])
        gate = 1.0 / (1.0 + np.exp(-tau * (ratio - 1.0)))
        weights = agg_weights(mask, agg, max_len=10)
        np.testing.assert_allclose(loss, (-(4.0 / tau) * gate * a * weights).sum(), rtol=RTOL,
                                   atol=ATOL)
        # d/dlogp: -4 gate (1 - gate) * ratio * A (the chain rule through r = exp(logp - old)).
        np.testing.assert_allclose(grad, -4.0 * gate * (1 - gate) * ratio * a * weights,
                                   rtol=RTOL, atol=ATOL)
        slope = 4.0 * gate * (1.0 - gate)
        np.testing.assert_allclose(metrics["gate_mean"], slope[mask > 0].mean(), rtol=1e-5)

    def test_on_policy_gradient_is_the_plain_policy_gradient(self):
        """At ratio 1 the gate's slope is 1: the same gradient as the unclipped PPO loss, for
        either sign of the advantage; off-policy it is smaller but never 0 (a hard clip's is)."""
        logp = np.array([[-1.0, -2.0]], np.float32)
        adv = np.array([[1.5, -0.5]], np.float32)
        mask = np.ones((1, 2), np.float32)
        sapo = jax.grad(lambda lp: rl_jax.losses.sapo_loss(lp, logp, adv, mask)[0])(logp)
        ppo = jax.grad(lambda lp: rl_jax.policy_loss(lp, logp, adv, mask)[0])(logp)
        np.testing.assert_allclose(sapo, ppo, rtol=1e-6)
        np.testing.assert_allclose(sapo, [[-0.75, 0.25]], rtol=1e-6)
        old = logp - np.log(2.0)  # ratio 2 on both tokens: PPO (clip 0.2) cuts the A > 0 token
        far = jax.grad(lambda lp: rl_jax.losses.sapo_loss(lp, old, adv, mask)[0])(logp)
        ppo_far = jax.grad(lambda lp: rl_jax.policy_loss(lp, old, adv, mask)[0])(logp)
        assert float(ppo_far[0, 0]) == 0.0
        # -4 s (1 - s) * r * A / 2 (token-mean over 2) with s = sigmoid(1), r = 2, A = 1.5.
        s = 1.0 / (1.0 + np.exp(-1.0))
        np.testing.assert_allclose(far[0, 0], -4 * s * (1 - s) * 2 * 1.5 / 2, rtol=1e-6)


def numpy_gmpo(logp, old, adv, mask, clip_low, clip_high, count_empty_rows=False):
    """Loss and gradient of GMPO by a loop over responses, from the paper's equation."""
    logp, old = logp.astype(np.float64), old.astype(np.float64)
    losses, grad = [], np.zeros_like(logp)
    rows = []
    for b in range(logp.shape[0]):
        real = np.flatnonzero(mask[b])
        if not len(real):
            continue
        a = adv[b] if adv.ndim == 1 else adv[b, real].mean()
        kept, active = [], []
        for t in real:
            lr = logp[b, t] - old[b, t]
            clipped = min(max(lr, -clip_low), clip_high)
            if a > 0:
                kept.append(min(lr, clipped))
                active.append(lr <= clip_high)
            elif a < 0:
                kept.append(max(lr, clipped))
                active.append(lr >= -clip_low)
            else:
                kept.append(0.0)
                active.append(False)
        seq_ratio = np.exp(np.mean(kept))
        losses.append(-a * seq_ratio)
        rows.append(b)
        grad[b, real] = -a * seq_ratio / len(real) * np.array(active, float)
    count = logp.shape[0] if count_empty_rows else max(len(rows), 1)
    return np.sum(losses) / count, grad / count


class GmpoTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.product(
        clip=[(0.4, 0.4), (0.1, 0.2)], adv_rank=[1, 2], count_empty_rows=[False, True]
    )
    def test_value_and_grad_match_numpy(self, clip, adv_rank, count_empty_rows):
        logp, old, adv, mask = make_inputs(1, adv_rank=adv_rank, spread=0.5)
        mask[3] = 0.0  # an empty response
        fn = self.variant(
            jax.value_and_grad(
                lambda lp: rl_jax.gmpo_loss(
                    lp, old, adv, mask, clip_low=clip[0], clip_high=clip[1],
                    count_empty_rows=count_empty_rows,
                ),
                has_aux=True,
            )
        )
        (loss, _), grad = fn(logp)
        ref_loss, ref_grad = numpy_gmpo(logp, old, adv, mask, *clip, count_empty_rows)
        np.testing.assert_allclose(loss, ref_loss, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(grad, ref_grad, rtol=RTOL, atol=ATOL)

    @parameterized.parameters(
        (1.0, [0.1, 0.4, -0.6], [1, 0, 1]), (-1.0, [0.1, 0.6, -0.4], [1, 1, 0])
    )
    def test_hand_derived(self, adv, kept, active):
        # Log ratios [0.1, 0.6, -0.6], eps 0.4. A = +1: min(l, clip(l)) = [0.1, 0.4, -0.6]; the
        # clipped token (0.6) has no gradient. A = -1: max(l, clip(l)) = [0.1, 0.6, -0.4].
        # loss = -A * exp(mean(kept)); d loss / d logp_t = -A * exp(mean(kept)) / 3 where active.
        old = np.zeros((1, 3), np.float32)
        logp = np.array([[0.1, 0.6, -0.6]], np.float32)
        mask = np.ones((1, 3), np.float32)
        fn = lambda lp: rl_jax.gmpo_loss(lp, old, np.array([adv], np.float32), mask)  # noqa: E731
        (loss, metrics), grad = jax.value_and_grad(fn, has_aux=True)(logp)
        s = np.exp(np.mean(kept))
        np.testing.assert_allclose(loss, -adv * s, rtol=1e-6)
        np.testing.assert_allclose(grad, [-adv * s / 3 * np.array(active)], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(metrics["clip_frac_high" if adv > 0 else "clip_frac_low"], 1 / 3)


def numpy_cov(logp, adv, mask):
    real = mask > 0
    lp, a = logp.astype(np.float64), adv.astype(np.float64)
    return np.where(real, (lp - lp[real].mean()) * (a - a[real].mean()), 0.0)


class KlCovTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.product(kl_ratio=[1e-3, 0.1, 0.5], agg=["token-mean", "seq-mean-token-mean"])
    def test_value_and_grad_match_numpy(self, kl_ratio, agg):
        logp, old, adv, mask = make_inputs(2, adv_rank=2)
        fn = self.variant(
            jax.value_and_grad(
                lambda lp: rl_jax.kl_cov_loss(
                    lp, old, adv, mask, kl_ratio=kl_ratio, kl_coef=0.7, agg=agg
                ),
                has_aux=True,
            )
        )
        (loss, metrics), grad = fn(logp)
        cov = numpy_cov(logp, adv, mask)
        real = mask > 0
        k = max(int(np.floor(kl_ratio * real.sum())), 1)
        order = np.argsort(-np.where(real, cov, -np.inf), axis=None, kind="stable")[:k]
        selected = np.zeros(mask.size, bool)
        selected[order] = True
        selected = selected.reshape(mask.shape)
        lr = logp.astype(np.float64) - old
        per_token = -adv * np.exp(lr) + 0.7 * np.abs(lr) * selected
        dper_token = -adv * np.exp(lr) + 0.7 * np.sign(lr) * selected
        w = agg_weights(mask, agg)
        np.testing.assert_allclose(loss, (per_token * w).sum(), rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(grad, dper_token * w, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(metrics["kl_cov_frac"], k / real.sum(), rtol=1e-6)
        assert metrics["kl_cov_tokens"] == k

    def test_penalty_has_no_gradient_at_ratio_one(self):
        # A single on-policy pass: old = sg(logp), every |log rho| = 0. Its subgradient must be 0
        # (torch's abs, as in verl), so the loss's gradient is the plain policy gradient.
        logp, _, adv, mask = make_inputs(9, adv_rank=2)
        grad = jax.grad(
            lambda lp: rl_jax.kl_cov_loss(lp, jax.lax.stop_gradient(lp), adv, mask, kl_ratio=0.5)[0]
        )(logp)
        np.testing.assert_allclose(grad, -adv * agg_weights(mask, "token-mean"), rtol=RTOL)

    def test_token_covariance_matches_numpy(self):
        logp, _, adv, mask = make_inputs(3, adv_rank=1)
        np.testing.assert_allclose(
            rl_jax.token_covariance(logp, adv, mask),
            numpy_cov(logp, np.broadcast_to(adv[:, None], logp.shape), mask),
            rtol=1e-5, atol=1e-6,
        )


def numpy_ppo_per_token(logp, old, adv, clip):
    ratio = np.exp(logp.astype(np.float64) - old)
    unclipped, clipped = -adv * ratio, -adv * np.clip(ratio, 1 - clip, 1 + clip)
    # d/dlogp of max(unclipped, clipped): -A * ratio where the unclipped term is the max.
    return np.maximum(unclipped, clipped), np.where(unclipped >= clipped, -adv * ratio, 0.0), (
        clipped > unclipped
    )


class ClipCovTest(chex.TestCase):
    def setUp(self):
        super().setUp()
        # Wide spread so that some tokens are clipped by PPO and excluded.
        self.logp, self.old, adv, self.mask = make_inputs(4, shape=(8, 10), adv_rank=2, spread=0.5)
        self.adv = adv * 3.0
        self.cov = numpy_cov(self.logp, self.adv, self.mask)
        _, _, self.ppo_clipped = numpy_ppo_per_token(self.logp, self.old, self.adv, 0.2)
        self.eligible = (self.mask > 0) & ~self.ppo_clipped & (self.cov > 0.1) & (self.cov < 5.0)
        assert 5 < self.eligible.sum() < (self.mask > 0).sum()

    def loss_and_grad(self, key, cov_ratio):
        fn = jax.jit(
            jax.value_and_grad(
                lambda lp, k: rl_jax.clip_cov_loss(
                    lp, self.old, self.adv, self.mask, k, cov_ratio=cov_ratio, cov_lower=0.1
                ),
                has_aux=True,
            )
        )
        return fn(self.logp, key)

    def test_all_eligible_detached_matches_numpy(self):
        # cov_ratio 1: k = N >= number eligible, so exactly the eligible tokens are detached.
        (loss, metrics), grad = self.loss_and_grad(jax.random.key(0), 1.0)
        per_token, dper_token, _ = numpy_ppo_per_token(self.logp, self.old, self.adv, 0.2)
        w = agg_weights(self.mask, "token-mean")
        np.testing.assert_allclose(
            loss, (np.where(self.eligible, 0.0, per_token) * w).sum(), rtol=RTOL, atol=ATOL
        )
        np.testing.assert_allclose(
            grad, np.where(self.eligible, 0.0, dper_token) * w, rtol=RTOL, atol=ATOL
        )
        np.testing.assert_allclose(
            metrics["cov_clip_frac"], self.eligible.sum() / self.mask.sum(), rtol=1e-6
        )

    def test_random_subset_is_deterministic_per_key_and_sized(self):
        n_real = self.mask.sum()
        k = 3
        ratio = (k + 0.5) / n_real  # floor(ratio * N) = 3
        _, dper_token, _ = numpy_ppo_per_token(self.logp, self.old, self.adv, 0.2)
        w = agg_weights(self.mask, "token-mean")
        chosen = []
        for seed in (0, 0, 1, 2):
            (_, metrics), grad = self.loss_and_grad(jax.random.key(seed), ratio)
            grad = np.asarray(grad)
            # The detached tokens are where the gradient differs from PPO's.
            ppo = dper_token * w
            detached = ~np.isclose(grad, ppo, rtol=RTOL, atol=ATOL)
            assert detached.sum() == k and np.all(self.eligible[detached])
            np.testing.assert_allclose(grad[detached], 0.0)
            np.testing.assert_allclose(metrics["cov_clip_frac"], k / n_real, rtol=1e-6)
            assert metrics["cov_clip_tokens"] == k
            chosen.append(detached)
        np.testing.assert_array_equal(chosen[0], chosen[1])
        assert any(not np.array_equal(chosen[0], c) for c in chosen[2:])

    def test_no_eligible_token_is_plain_ppo(self):
        fn = lambda lp: rl_jax.clip_cov_loss(  # noqa: E731
            lp, self.old, self.adv, self.mask, jax.random.key(0), cov_lower=1e6, cov_upper=2e6
        )
        (loss, metrics), grad = jax.value_and_grad(fn, has_aux=True)(self.logp)
        ppo = lambda lp: rl_jax.policy_loss(lp, self.old, self.adv, self.mask)  # noqa: E731
        (ppo_loss, _), ppo_grad = jax.value_and_grad(ppo, has_aux=True)(self.logp)
        np.testing.assert_allclose(loss, ppo_loss, rtol=1e-6)
        np.testing.assert_allclose(grad, ppo_grad, rtol=1e-6)
        assert metrics["cov_clip_frac"] == 0.0


class GspoTokenTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.product(adv_rank=[1, 2], agg=["seq-mean-token-mean", "token-mean"])
    def test_value_and_grad_match_numpy(self, adv_rank, agg):
        logp, old, adv, mask = make_inputs(5, adv_rank=adv_rank, spread=0.2)
        fn = self.variant(
            jax.value_and_grad(
                lambda lp: rl_jax.policy_loss(
                    lp, old, adv, mask, ratio_level="sequence-token", agg=agg
                )[0]
            )
        )
        loss, grad = fn(logp)
        a = per_token_adv(adv, logp.shape).astype(np.float64)
        lr = np.where(mask > 0, logp.astype(np.float64) - old, 0.0)
        s = np.exp(lr.sum(1) / np.maximum(mask.sum(1), 1))[:, None] * np.ones_like(lr)
        unclipped, clipped = -a * s, -a * np.clip(s, 0.8, 1.2)
        w = agg_weights(mask, agg)
        # Value: GSPO's. Gradient of token t: -A_t * s_i * d log pi_t, only where unclipped wins.
        np.testing.assert_allclose(
            loss, (np.maximum(unclipped, clipped) * w).sum(), rtol=RTOL, atol=ATOL
        )
        np.testing.assert_allclose(
            grad, np.where(unclipped >= clipped, -a * s, 0.0) * w, rtol=RTOL, atol=ATOL
        )

    def test_equals_gspo_gradient_with_sequence_advantages(self):
        logp, old, adv, mask = make_inputs(6, adv_rank=1, spread=0.2)

        def grad(level):
            return jax.grad(
                lambda lp: rl_jax.policy_loss(
                    lp, old, adv, mask, ratio_level=level, agg="seq-mean-token-mean"
                )[0]
            )(logp)

        np.testing.assert_allclose(grad("sequence-token"), grad("sequence"), rtol=1e-5, atol=1e-7)

    def test_bad_ratio_level(self):
        logp, old, adv, mask = make_inputs(7)
        with pytest.raises(ValueError, match="ratio_level"):
            rl_jax.policy_loss(logp, old, adv, mask, ratio_level="seq")


class CountEmptyRowsTest(chex.TestCase):
    @parameterized.parameters(*rl_jax.AGG_MODES)
    def test_trl_convention(self, mode):
        x = np.array([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0], [9.0, 9.0, 9.0]], np.float32)
        mask = np.array([[1, 1, 1], [1, 0, 0], [0, 0, 0]], np.float32)  # third response empty
        default = rl_jax.aggregate(x, mask, mode, max_len=4)
        trl = rl_jax.aggregate(x, mask, mode, max_len=4, count_empty_rows=True)
        # Hand-derived: token-mean 10/4 both ways; seq-mean-* divide by 3 rows instead of 2.
        expected_default = {"token-mean": 2.5, "seq-mean-token-mean": 3.0,
                            "seq-mean-token-sum": 5.0, "seq-mean-token-sum-norm": 1.25}[mode]
        expected_trl = 2.5 if mode == "token-mean" else expected_default * 2 / 3
        np.testing.assert_allclose(default, expected_default, rtol=1e-6)
        np.testing.assert_allclose(trl, expected_trl, rtol=1e-6)
        w = agg_weights(mask, mode, max_len=4, count_empty_rows=True)
        np.testing.assert_allclose(trl, (x * w).sum(), rtol=1e-6)

    def test_policy_loss_passes_it_through(self):
        logp, old, adv, mask = make_inputs(8)
        mask[2] = 0.0
        a = rl_jax.policy_loss(logp, old, adv, mask, agg="seq-mean-token-mean")[0]
        b = rl_jax.policy_loss(
            logp, old, adv, mask, agg="seq-mean-token-mean", count_empty_rows=True
        )[0]
        np.testing.assert_allclose(b, a * 5 / 6, rtol=1e-6)
