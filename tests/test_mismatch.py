"""Sampler/trainer mismatch corrections (TIS, sequence TIS, IcePop token masking, sequence masking)
against float64 NumPy loops over responses, and hand-derived numbers."""

import chex
import jax
import numpy as np
import pytest
from absl.testing import parameterized
from hypothesis import given, settings
from hypothesis import strategies as st
from testing_utils import random_mask

import rl_jax

RTOL, ATOL = 1e-5, 1e-6


def make_inputs(seed, shape=(7, 9), spread=0.3):
    rng = np.random.default_rng(seed)
    old = rng.normal(-2.0, 0.5, size=shape).astype(np.float32)
    sampler = (old + rng.normal(0, spread, size=shape)).astype(np.float32)
    mask = random_mask(rng, *shape, padding="random")
    mask[1] = 0.0  # an empty response
    return old, sampler, mask


def numpy_rows(old, sampler, mask):
    """Per response: the float64 token log-ratios at its real tokens."""
    return [
        (old[b, mask[b] > 0].astype(np.float64) - sampler[b, mask[b] > 0])
        for b in range(old.shape[0])
    ]


class MismatchTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(1.1, 2.0)
    def test_token_tis(self, cap):
        old, sampler, mask = make_inputs(0)
        weights, new_mask, metrics = self.variant(
            lambda o, s, m: rl_jax.token_tis(o, s, m, cap=cap)
        )(old, sampler, mask)
        ratio = np.exp(old.astype(np.float64) - sampler)
        np.testing.assert_allclose(weights, np.where(mask > 0, np.minimum(ratio, cap), 0), RTOL)
        np.testing.assert_array_equal(new_mask, mask)
        real = mask > 0
        np.testing.assert_allclose(metrics["is_truncated_frac"], (ratio[real] > cap).mean(), 1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(0.5, 3.0)
    def test_sequence_tis(self, cap):
        old, sampler, mask = make_inputs(1)
        weights, new_mask, metrics = self.variant(
            lambda o, s, m: rl_jax.sequence_tis(o, s, m, cap=cap)
        )(old, sampler, mask)
        expected = np.zeros(mask.shape)
        row_w = []
        for b, lr in enumerate(numpy_rows(old, sampler, mask)):
            w = min(np.prod(np.exp(lr)), cap)  # product of the token ratios, then truncation
            expected[b, mask[b] > 0] = w
            if len(lr):
                row_w.append(w)
        np.testing.assert_allclose(weights, expected, rtol=RTOL, atol=ATOL)
        np.testing.assert_array_equal(new_mask, mask)
        np.testing.assert_allclose(metrics["is_weight_mean"], np.mean(row_w), rtol=RTOL)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.product(band=[(0.8, 1.25), (0.5, 5.0)], reweight=[True, False])
    def test_token_masked_is(self, band, reweight):
        old, sampler, mask = make_inputs(2)
        weights, new_mask, metrics = self.variant(
            lambda o, s, m: rl_jax.token_masked_is(
                o, s, m, low=band[0], high=band[1], reweight=reweight
            )
        )(old, sampler, mask)
        ratio = np.exp(old.astype(np.float64) - sampler)
        keep = (mask > 0) & (ratio >= band[0]) & (ratio <= band[1])
        np.testing.assert_array_equal(new_mask, keep.astype(np.float32))
        np.testing.assert_allclose(
            weights, np.where(keep, ratio if reweight else 1.0, 0.0), rtol=RTOL
        )
        np.testing.assert_allclose(
            metrics["is_masked_token_frac"], 1 - keep.sum() / mask.sum(), rtol=1e-5, atol=1e-7
        )

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.product(
        level_band=[("geometric", (0.97, 1.03)), ("product", (0.7, 1.4))], reweight=[False, True]
    )
    def test_sequence_masked_is(self, level_band, reweight):
        level, band = level_band
        old, sampler, mask = make_inputs(3, spread=0.15)
        weights, new_mask, metrics = self.variant(
            lambda o, s, m: rl_jax.sequence_masked_is(
                o, s, m, low=band[0], high=band[1], level=level, reweight=reweight
            )
        )(old, sampler, mask)
        exp_mask, exp_w, kept = np.zeros(mask.shape), np.zeros(mask.shape), []
        for b, lr in enumerate(numpy_rows(old, sampler, mask)):
            if not len(lr):
                continue
            ratios = np.exp(lr)
            rho = np.prod(ratios) if level == "product" else np.prod(ratios) ** (1 / len(lr))
            keep = band[0] <= rho <= band[1]
            kept.append(keep)
            exp_mask[b, mask[b] > 0] = keep
            exp_w[b, mask[b] > 0] = keep * (rho if reweight else 1.0)
        assert 0 < sum(kept) < len(kept), "the test band should keep some responses, not all"
        np.testing.assert_array_equal(new_mask, exp_mask)
        np.testing.assert_allclose(weights, exp_w, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(metrics["is_masked_seq_frac"], 1 - np.mean(kept), rtol=1e-6)
        np.testing.assert_allclose(
            metrics["is_masked_token_frac"], 1 - exp_mask.sum() / mask.sum(), rtol=1e-5
        )

    def test_hand_derived(self):
        # Token ratios pi_old/pi_sampler: row 0 [2, 0.5, 1] (product 1, geometric mean 1),
        # row 1 [4, 4] (product 16, geometric mean 4), last column of row 1 is padding.
        ratios = np.array([[2.0, 0.5, 1.0], [4.0, 4.0, 123.0]])
        sampler = np.full((2, 3), -1.0, np.float32)
        old = (sampler + np.log(ratios)).astype(np.float32)
        mask = np.array([[1, 1, 1], [1, 1, 0]], np.float32)
        w, _, _ = rl_jax.token_tis(old, sampler, mask, cap=3.0)
        np.testing.assert_allclose(w, [[2.0, 0.5, 1.0], [3.0, 3.0, 0.0]], rtol=1e-6)
        w, _, _ = rl_jax.sequence_tis(old, sampler, mask, cap=10.0)
        np.testing.assert_allclose(w, [[1.0, 1.0, 1.0], [10.0, 10.0, 0.0]], rtol=1e-5)
        # IcePop band [0.6, 3]: 0.5 and both 4s are dropped.
        w, m, metrics = rl_jax.token_masked_is(old, sampler, mask, low=0.6, high=3.0)
        np.testing.assert_array_equal(m, [[1, 0, 1], [0, 0, 0]])
        np.testing.assert_allclose(w, [[2.0, 0.0, 1.0], [0.0, 0.0, 0.0]], rtol=1e-6)
        np.testing.assert_allclose(metrics["is_masked_token_frac"], 3 / 5, rtol=1e-6)
        # Geometric mean band [0.5, 2]: row 1 (4) is dropped; product band [0.5, 20] keeps both.
        _, m, metrics = rl_jax.sequence_masked_is(old, sampler, mask, low=0.5, high=2.0)
        np.testing.assert_array_equal(m, [[1, 1, 1], [0, 0, 0]])
        np.testing.assert_allclose(metrics["is_masked_seq_frac"], 0.5)
        _, m, _ = rl_jax.sequence_masked_is(
            old, sampler, mask, low=0.5, high=20.0, level="product"
        )
        np.testing.assert_array_equal(m, mask)
        with pytest.raises(ValueError, match="level"):
            rl_jax.sequence_masked_is(old, sampler, mask, low=0.5, high=2.0, level="mean")

    def test_the_band_is_closed(self):
        # On-policy tokens (ratio exactly 1) sit on both edges of the band [1, 1]: kept, at
        # either level, token or sequence; a strict comparison at either edge would drop them.
        old = np.full((2, 3), -0.7, np.float32)
        mask = np.array([[1, 1, 1], [1, 1, 0]], np.float32)
        _, m, _ = rl_jax.token_masked_is(old, old, mask, low=1.0, high=1.0)
        np.testing.assert_array_equal(m, mask)
        for level in ("geometric", "product"):
            _, m, metrics = rl_jax.sequence_masked_is(old, old, mask, low=1.0, high=1.0,
                                                      level=level)
            np.testing.assert_array_equal(m, mask)
            assert float(metrics["is_masked_seq_frac"]) == 0.0

    def test_long_sequence_does_not_overflow(self):
        # 2000 tokens at log-ratio 0.5: the product is e^1000 (inf in float32); the weight is cap.
        sampler = np.zeros((1, 2000), np.float32)
        old = np.full((1, 2000), 0.5, np.float32)
        w, _, _ = rl_jax.sequence_tis(old, sampler, np.ones_like(old), cap=5.0)
        np.testing.assert_allclose(w, 5.0, rtol=1e-6)

    def test_no_gradient_through_weights(self):
        old, sampler, mask = make_inputs(4)
        for fn in (
            lambda o: rl_jax.token_tis(o, sampler, mask, cap=2.0)[0].sum(),
            lambda o: rl_jax.sequence_masked_is(
                o, sampler, mask, low=0.5, high=2.0, reweight=True
            )[0].sum(),
        ):
            np.testing.assert_array_equal(jax.grad(fn)(old), 0.0)


@pytest.mark.slow
@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    batch=st.integers(1, 5),
    time=st.integers(1, 12),
    low=st.floats(0.1, 1.0),
    high=st.floats(1.0, 10.0),
)
def test_masks_only_drop_real_tokens_and_weights_vanish_outside(seed, batch, time, low, high):
    rng = np.random.default_rng(seed)
    old = rng.normal(-2.0, 1.0, size=(batch, time)).astype(np.float32)
    sampler = (old + rng.normal(0, 0.5, size=(batch, time))).astype(np.float32)
    mask = random_mask(rng, batch, time, padding="random")
    for w, m, _ in (
        rl_jax.token_masked_is(old, sampler, mask, low=low, high=high),
        rl_jax.sequence_masked_is(old, sampler, mask, low=low, high=high),
        rl_jax.sequence_masked_is(old, sampler, mask, low=low, high=high, level="product"),
    ):
        w, m = np.asarray(w), np.asarray(m)
        assert np.all(m <= mask) and np.all(w[m == 0] == 0) and np.all(w >= 0)
        assert np.all(np.isfinite(w))
