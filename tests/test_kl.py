"""KL estimators against the exact KL of small categorical distributions, and the KL controller."""

import chex
import numpy as np
import pytest
from absl.testing import parameterized

import rl_jax


class KlEstimatorTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_formulas(self):
        logp = np.array([-1.0, -2.0, -0.5], np.float32)
        ref = np.array([-1.5, -1.0, -0.5], np.float32)
        d = logp - ref  # [0.5, -1.0, 0.0]
        for name, expected in [
            ("k1", d),
            ("k2", 0.5 * d**2),
            ("k3", np.exp(-d) + d - 1),
        ]:
            got = self.variant(lambda a, b, e=name: rl_jax.kl(a, b, estimator=e))(logp, ref)
            np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)

    @parameterized.parameters("k1", "k3")
    def test_unbiased_estimators_match_exact_kl(self, estimator):
        p, q, samples, logp, logq = self._sample()
        exact = np.sum(p * (np.log(p) - np.log(q)))
        est = np.asarray(rl_jax.kl(logp[samples], logq[samples], estimator=estimator))
        stderr = est.std() / np.sqrt(len(est))
        # Unbiased: within 4 standard errors of the exact KL (false alarm rate ~6e-5).
        assert abs(est.mean() - exact) < 4 * stderr, (est.mean(), exact, stderr)

    def test_k2_is_biased_as_expected(self):
        p, q, samples, logp, logq = self._sample()
        exact = np.sum(p * (np.log(p) - np.log(q)))
        est = np.asarray(rl_jax.kl(logp[samples], logq[samples], estimator="k2"))
        stderr = est.std() / np.sqrt(len(est))
        # k2 estimates E_p[0.5 (log p - log q)^2], which differs from KL(p || q) here.
        expectation = np.sum(p * 0.5 * (np.log(p) - np.log(q)) ** 2)
        assert abs(est.mean() - expectation) < 4 * stderr
        assert abs(est.mean() - exact) > 10 * stderr

    def test_k3_never_negative_and_k3_has_lower_variance(self):
        _, _, samples, logp, logq = self._sample()
        k1 = np.asarray(rl_jax.kl(logp[samples], logq[samples], estimator="k1"))
        k3 = np.asarray(rl_jax.kl(logp[samples], logq[samples], estimator="k3"))
        assert k3.min() >= 0 and k1.min() < 0
        assert k3.std() < k1.std()

    def test_unknown_estimator(self):
        with pytest.raises(ValueError, match="estimator"):
            rl_jax.kl(np.zeros(2), np.zeros(2), estimator="k4")

    @staticmethod
    def _sample(n=200_000):
        p = np.array([0.5, 0.2, 0.15, 0.1, 0.05])
        q = np.array([0.3, 0.3, 0.2, 0.1, 0.1])
        samples = np.random.default_rng(0).choice(len(p), size=n, p=p)
        return p, q, samples, np.log(p).astype(np.float32), np.log(q).astype(np.float32)


class AdaptiveKlTest(chex.TestCase):
    def test_hand_derived(self):
        # KL at 2x target: error clipped to +0.2; 256 samples over horizon 10000 -> x(1 + 0.00512).
        np.testing.assert_allclose(
            rl_jax.adaptive_kl_update(0.1, 12.0, target=6.0, horizon=10000, n_steps=256),
            0.1 * (1 + 0.2 * 256 / 10000), rtol=1e-6,
        )
        # KL at 0.9x target: error -0.1 -> shrinks by 0.1 * n / horizon.
        np.testing.assert_allclose(
            rl_jax.adaptive_kl_update(0.1, 5.4, target=6.0, horizon=1000, n_steps=100),
            0.1 * (1 - 0.1 * 0.1), rtol=1e-6,
        )
        # On target: unchanged.
        np.testing.assert_allclose(
            rl_jax.adaptive_kl_update(0.3, 6.0, target=6.0, horizon=10, n_steps=10), 0.3
        )

    def test_converges_toward_target(self):
        # A toy world where the observed KL is inversely proportional to the coefficient.
        coef = 0.01
        for _ in range(400):
            coef = rl_jax.adaptive_kl_update(coef, 0.6 / coef, target=6.0, horizon=100, n_steps=50)
        np.testing.assert_allclose(0.6 / coef, 6.0, rtol=0.05)
