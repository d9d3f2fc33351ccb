"""Optimizer: schedules by hand, gradient accumulation equals one step on the mean gradient."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rl_jax.optim import OptimSettings, learning_rate_schedule, make_optimizer, optim_config


def _settings(**overrides) -> OptimSettings:
    """The default ``optim`` section with ``overrides``, as a run reads it."""
    return OptimSettings.from_config(optim_config(**overrides))


def test_warmup_then_constant_or_cosine():
    constant = learning_rate_schedule(1.0, warmup_steps=4, total_steps=14, decay="constant")
    np.testing.assert_allclose([constant(s) for s in (0, 2, 4, 10)], [0.0, 0.5, 1.0, 1.0])
    cosine = learning_rate_schedule(1.0, warmup_steps=4, total_steps=14, decay="cosine")
    # After warmup: 0.5 * (1 + cos(pi * t / 10)); t = 5 -> 0.5, t = 10 -> 0.
    np.testing.assert_allclose([cosine(4), cosine(9), cosine(14)], [1.0, 0.5, 0.0], atol=1e-6)
    with pytest.raises(ValueError, match="decay"):
        learning_rate_schedule(1.0, warmup_steps=0, total_steps=10, decay="linear")


def test_accumulation_is_one_update_with_the_mean_gradient():
    params = {"w": jnp.array([1.0, -2.0, 3.0])}
    g1, g2 = {"w": jnp.array([0.5, 0.1, -1.0])}, {"w": jnp.array([1.5, -0.3, 0.2])}
    accum = make_optimizer(_settings(lr=0.1, grad_accum_steps=2, max_grad_norm=0.0), 10)
    state = accum.init(params)
    updates, state = accum.update(g1, state, params)
    np.testing.assert_allclose(updates["w"], 0.0)  # nothing applied after the first micro-batch
    p1 = optax.apply_updates(params, updates)
    updates, state = accum.update(g2, state, p1)
    accumulated = optax.apply_updates(p1, updates)

    single = make_optimizer(_settings(lr=0.1, max_grad_norm=0.0), 10)
    mean = {"w": (g1["w"] + g2["w"]) / 2}
    updates, _ = single.update(mean, single.init(params), params)
    np.testing.assert_allclose(accumulated["w"], optax.apply_updates(params, updates)["w"],
                               rtol=1e-6)

