"""Policy/value losses, aggregation, log-probs and entropy against NumPy and hand-derived values."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from testing_utils import random_mask

import rl_jax


def numpy_aggregate(x, mask, mode, max_len=None):
    """Reference reductions written row by row."""
    rows = [(x[b][mask[b] > 0]) for b in range(x.shape[0])]
    rows_nonempty = [r for r in rows if len(r)]
    if mode == "token-mean":
        return np.concatenate(rows).sum() / max(sum(len(r) for r in rows), 1)
    if mode == "seq-mean-token-mean":
        return np.mean([r.mean() for r in rows_nonempty])
    if mode == "seq-mean-token-sum":
        return np.mean([r.sum() for r in rows_nonempty])
    if mode == "seq-mean-token-sum-norm":
        return np.mean([r.sum() / (max_len or x.shape[1]) for r in rows_nonempty])
    raise ValueError(mode)


class AggregateTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(*rl_jax.AGG_MODES)
    def test_matches_numpy(self, mode):
        rng = np.random.default_rng(0)
        x = rng.normal(size=(6, 9)).astype(np.float32)
        mask = random_mask(rng, 6, 9)
        mask[2] = 0  # an empty row counts in no denominator
        got = self.variant(lambda a, m: rl_jax.aggregate(a, m, mode, max_len=16))(x, mask)
        np.testing.assert_allclose(got, numpy_aggregate(x, mask, mode, max_len=16), rtol=1e-5)

    @parameterized.parameters(*rl_jax.AGG_MODES)
    def test_micro_batches_accumulate_exactly(self, mode):
        rng = np.random.default_rng(1)
        x = rng.normal(size=(8, 10)).astype(np.float32)
        mask = random_mask(rng, 8, 10)
        full = rl_jax.aggregate(x, mask, mode, max_len=10)
        # Two micro-batches of different sizes; the second is cut to its own (shorter) width,
        # which is exact because its mask is right-padded.
        width = int(mask[3:].sum(1).max())
        parts = [(x[:3], mask[:3]), (x[3:, :width], mask[3:, :width])]
        num = den = 0.0
        for xs, ms in parts:
            n, d = rl_jax.aggregate_terms(xs, ms, mode, max_len=10)
            num, den = num + n, den + d
        np.testing.assert_allclose(num / den, full, rtol=1e-6)

    def test_hand_derived(self):
        x = np.array([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]], np.float32)
        mask = np.array([[1, 1, 1], [1, 0, 0]], np.float32)
        # token-mean: (1+2+3+4)/4 = 2.5; seq-mean-token-mean: (2 + 4)/2 = 3
        # seq-mean-token-sum: (6 + 4)/2 = 5; seq-mean-token-sum-norm (max_len 4): (1.5 + 1)/2 = 1.25
        expected = [2.5, 3.0, 5.0, 1.25]
        for mode, value in zip(rl_jax.AGG_MODES, expected, strict=True):
            np.testing.assert_allclose(rl_jax.aggregate(x, mask, mode, max_len=4), value)
        np.testing.assert_allclose(rl_jax.aggregate(x, np.zeros_like(mask), "token-mean"), 0.0)
        with pytest.raises(ValueError, match="Unknown aggregation mode"):
            rl_jax.aggregate(x, mask, "mean")


def numpy_policy_loss(logp, old, adv, mask, clip_low, clip_high, dual_clip, ratio_level, agg):
    adv = np.broadcast_to(adv[:, None], logp.shape) if adv.ndim == 1 else adv
    per_token = np.zeros_like(logp, dtype=np.float64)
    for b in range(logp.shape[0]):
        real = np.flatnonzero(mask[b])
        seq_ratio = np.exp(np.mean(logp[b, real] - old[b, real])) if len(real) else 1.0
        for t in real:
            r = seq_ratio if ratio_level == "sequence" else np.exp(logp[b, t] - old[b, t])
            a = adv[b, t]
            loss = -min(r * a, np.clip(r, 1 - clip_low, 1 + clip_high) * a)
            if dual_clip is not None and a < 0:
                loss = min(loss, -dual_clip * a)
            per_token[b, t] = loss
    return numpy_aggregate(per_token, mask, agg)


class PolicyLossTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.product(
        clip=[(0.2, 0.2), (0.2, 0.28)],
        dual_clip=[None, 3.0],
        ratio_level=["token", "sequence"],
        agg=["token-mean", "seq-mean-token-mean"],
        adv_rank=[1, 2],
    )
    def test_matches_numpy(self, clip, dual_clip, ratio_level, agg, adv_rank):
        rng = np.random.default_rng(4)
        shape = (6, 8)
        old = rng.normal(-2.0, 0.5, size=shape).astype(np.float32)
        logp = (old + rng.normal(0, 0.4, size=shape)).astype(np.float32)
        adv = rng.normal(size=shape if adv_rank == 2 else shape[:1]).astype(np.float32) * 2
        mask = random_mask(rng, *shape)
        fn = self.variant(
            lambda lp, o, a, m: rl_jax.policy_loss(
                lp, o, a, m, clip_low=clip[0], clip_high=clip[1], dual_clip=dual_clip,
                ratio_level=ratio_level, agg=agg,
            )[0]
        )
        expected = numpy_policy_loss(logp, old, adv, mask, *clip, dual_clip, ratio_level, agg)
        np.testing.assert_allclose(fn(logp, old, adv, mask), expected, rtol=1e-5, atol=1e-6)

    def test_hand_derived_and_gradient(self):
        # Four tokens of one response, token-mean over 4 tokens, clip 0.2:
        # t0: ratio 1.5, A=+1 -> clipped at 1.2, loss -1.2, gradient 0
        # t1: ratio 0.5, A=+1 -> unclipped, loss -0.5, dloss/dlogp = -A*ratio/4 = -0.125
        # t2: ratio 0.5, A=-1 -> clipped at 0.8, loss 0.8, gradient 0
        # t3: ratio 1.5, A=-1 -> unclipped, loss 1.5, dloss/dlogp = +1*1.5/4 = 0.375
        ratio = np.array([[1.5, 0.5, 0.5, 1.5]], np.float32)
        old = np.full((1, 4), -1.0, np.float32)
        logp = old + np.log(ratio)
        adv = np.array([[1.0, 1.0, -1.0, -1.0]], np.float32)
        mask = np.ones((1, 4), np.float32)
        fn = lambda lp: rl_jax.policy_loss(lp, old, adv, mask)  # noqa: E731
        (loss, metrics), grad = jax.value_and_grad(fn, has_aux=True)(logp)
        np.testing.assert_allclose(loss, (-1.2 - 0.5 + 0.8 + 1.5) / 4, rtol=1e-6)
        np.testing.assert_allclose(grad, [[0.0, -0.125, 0.0, 0.375]], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(metrics["clip_frac_high"], 0.25)
        np.testing.assert_allclose(metrics["clip_frac_low"], 0.25)
        np.testing.assert_allclose(metrics["ratio_min"], 0.5, rtol=1e-6)
        np.testing.assert_allclose(metrics["ratio_max"], 1.5, rtol=1e-6)
        np.testing.assert_allclose(metrics["ratio_mean"], 1.0, rtol=1e-6)
        approx_kl = np.mean(ratio - 1 - np.log(ratio))
        np.testing.assert_allclose(metrics["approx_kl"], approx_kl, rtol=1e-5)

    def test_dual_clip_caps_negative_advantage(self):
        # ratio 10, A=-1: plain PPO loss 10; dual clip c=3 caps it at 3, and the gradient is 0.
        old = np.zeros((1, 2), np.float32)
        logp = np.array([[np.log(10.0), 0.0]], np.float32)
        adv = np.array([-1.0], np.float32)
        mask = np.array([[1.0, 0.0]], np.float32)
        plain = rl_jax.policy_loss(logp, old, adv, mask)[0]
        fn = lambda lp: rl_jax.policy_loss(lp, old, adv, mask, dual_clip=3.0)  # noqa: E731
        (loss, metrics), grad = jax.value_and_grad(fn, has_aux=True)(logp)
        np.testing.assert_allclose(plain, 10.0, rtol=1e-5)
        np.testing.assert_allclose(loss, 3.0, rtol=1e-6)
        np.testing.assert_allclose(grad, 0.0)
        np.testing.assert_allclose(metrics["dual_clip_frac"], 1.0)
        with pytest.raises(ValueError, match="dual_clip"):
            rl_jax.policy_loss(logp, old, adv, mask, dual_clip=0.5)

    def test_sequence_ratio_is_geometric_mean(self):
        # GSPO: log ratios 0.1 and 0.3 -> sequence ratio exp(0.2) on both tokens.
        old = np.zeros((1, 3), np.float32)
        logp = np.array([[0.1, 0.3, 7.0]], np.float32)  # 7.0 is padding
        mask = np.array([[1.0, 1.0, 0.0]], np.float32)
        loss, metrics = rl_jax.policy_loss(
            logp, old, np.array([1.0], np.float32), mask, ratio_level="sequence",
            clip_low=0.5, clip_high=0.5,
        )
        np.testing.assert_allclose(loss, -np.exp(0.2), rtol=1e-6)
        np.testing.assert_allclose(metrics["ratio_max"], np.exp(0.2), rtol=1e-6)

    def test_padding_gets_no_gradient(self):
        rng = np.random.default_rng(5)
        logp = rng.normal(size=(3, 5)).astype(np.float32)
        mask = random_mask(rng, 3, 5)
        grad = jax.grad(lambda lp: rl_jax.policy_loss(lp, logp * 0.9, np.ones(3), mask)[0])(logp)
        assert np.all(np.asarray(grad)[mask == 0] == 0)


class ValueLossTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(0.2, None)
    def test_matches_numpy(self, clip):
        rng = np.random.default_rng(6)
        shape = (5, 7)
        values, old, returns = (rng.normal(size=shape).astype(np.float32) for _ in range(3))
        mask = random_mask(rng, *shape)
        loss, metrics = self.variant(
            lambda v, o, r, m: rl_jax.value_loss(v, o, r, m, clip=clip)
        )(values, old, returns, mask)
        unclipped = (values - returns) ** 2
        if clip is None:
            per_token = 0.5 * unclipped
        else:
            clipped = (np.clip(values, old - clip, old + clip) - returns) ** 2
            per_token = 0.5 * np.maximum(unclipped, clipped)
            frac = ((clipped > unclipped) * mask).sum() / mask.sum()
            np.testing.assert_allclose(metrics["value_clip_frac"], frac, rtol=1e-6)
        np.testing.assert_allclose(loss, numpy_aggregate(per_token, mask, "token-mean"), rtol=1e-5)
        r, v = returns[mask > 0], values[mask > 0]
        np.testing.assert_allclose(
            metrics["explained_variance"], 1 - np.var(r - v) / np.var(r), rtol=1e-4
        )

    def test_clipped_gradient_is_zero(self):
        # v moved from 0 to 1 with clip 0.2 and return 2: clipped term (0.2-2)^2 > (1-2)^2, so the
        # clipped term is the loss and its gradient with respect to v is 0.
        v = jnp.array([[1.0]])
        grad = jax.grad(lambda x: rl_jax.value_loss(x, jnp.zeros((1, 1)), 2.0 * jnp.ones((1, 1)),
                                                    jnp.ones((1, 1)))[0])(v)
        np.testing.assert_allclose(grad, 0.0)
        loss, _ = rl_jax.value_loss(v, jnp.zeros((1, 1)), 2.0 * jnp.ones((1, 1)), jnp.ones((1, 1)))
        np.testing.assert_allclose(loss, 0.5 * 1.8**2, rtol=1e-6)


def numpy_log_softmax(z):
    z = z.astype(np.float64)
    m = z.max(-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


class TokenLogprobsTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(1.0, 0.7)
    def test_matches_numpy(self, temperature):
        rng = np.random.default_rng(7)
        logits = rng.normal(scale=3.0, size=(3, 4, 50)).astype(np.float32)
        tokens = rng.integers(0, 50, size=(3, 4))
        got = self.variant(lambda lg, tk: rl_jax.token_logprobs(lg, tk, temperature=temperature))(
            logits, tokens
        )
        expected = np.take_along_axis(
            numpy_log_softmax(logits / temperature), tokens[..., None], -1
        )[..., 0]
        np.testing.assert_allclose(got, expected, atol=1e-5)

    def test_stable_for_huge_logits(self):
        logits = np.array([[[1e4, 0.0, -1e4]]], np.float32)
        lp = rl_jax.token_logprobs(logits, np.array([[1]]))
        np.testing.assert_allclose(lp, [[-1e4]], rtol=1e-6)
        assert np.all(np.isfinite(rl_jax.entropy(logits)))

    @chex.variants(with_jit=True, without_jit=True)
    def test_entropy_matches_numpy(self):
        logits = np.random.default_rng(8).normal(scale=2.0, size=(2, 3, 17)).astype(np.float32)
        logp = numpy_log_softmax(logits)
        expected = -(np.exp(logp) * logp).sum(-1)
        np.testing.assert_allclose(self.variant(rl_jax.entropy)(logits), expected, atol=1e-5)
        # Uniform logits: entropy log(V).
        np.testing.assert_allclose(rl_jax.entropy(np.zeros((1, 1, 17))), [[np.log(17)]], rtol=1e-6)


@pytest.mark.parametrize("loss", ["ppo", "gmpo"])
def test_a_token_with_zero_advantage_is_never_counted_as_clipped(loss):
    """The clip fractions count tokens whose gradient the clip cuts; a zero advantage (every
    response of an all-correct group) has no gradient to cut, whatever its ratio."""
    old = np.zeros((2, 3), np.float32)
    new = np.array([[2.0, -2.0, 0.0], [2.0, -2.0, 0.0]], np.float32)  # ratios e^2, e^-2, 1
    mask = np.ones((2, 3), np.float32)
    fn = {"ppo": rl_jax.policy_loss, "gmpo": rl_jax.gmpo_loss}[loss]
    _, metrics = fn(new, old, np.zeros(2, np.float32), mask)
    assert float(metrics["clip_frac_high"]) == 0.0
    assert float(metrics["clip_frac_low"]) == 0.0
    _, metrics = fn(new, old, np.array([1.0, -1.0], np.float32), mask)  # the control: counted
    assert float(metrics["clip_frac_high"]) > 0 and float(metrics["clip_frac_low"]) > 0
