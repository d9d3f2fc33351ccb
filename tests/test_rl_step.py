"""The RL step with each policy loss, estimator and mismatch correction a config can choose."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from rl_jax import models
from rl_jax.algorithm import RolloutBatch, build_rl_step
from rl_jax.train_state import TrainState
from tests.testing_utils import rl_settings

BATCH, PROMPT, RESPONSE, GROUP = 8, 4, 5, 4


def _setup(**options):
    config = models.tiny_config("qwen2", vocab_size=32, hidden_size=16, intermediate_size=32,
                                num_layers=1, num_heads=2, num_kv_heads=1)
    graphdef, params = nnx.split(models.CausalLM(config, rngs=nnx.Rngs(0)))
    options = {"estimator": "grpo", "num_minibatches": 1, **options}
    settings = rl_settings(group_size=GROUP, temperature=1.0, max_len=RESPONSE, **options)
    tx = optax.adam(1e-2)
    state = TrainState(jnp.zeros((), jnp.int32), {"policy": params}, tx.init({"policy": params}))
    rng = np.random.default_rng(0)
    response_mask = np.ones((BATCH, RESPONSE), np.float32)
    response_mask[1, 3:] = 0  # a short response
    batch = RolloutBatch(
        tokens=rng.integers(3, 32, (BATCH, PROMPT + RESPONSE)).astype(np.int32),
        mask=np.concatenate([np.ones((BATCH, PROMPT), np.float32), response_mask], 1),
        response_mask=response_mask,
        # The sampler's log-probs: the trainer's are recomputed; these differ by up to +-0.3.
        sampler_logprobs=np.log(np.full((BATCH, RESPONSE), 1 / 32, np.float32))
        + rng.uniform(-0.3, 0.3, (BATCH, RESPONSE)).astype(np.float32),
        scores=np.asarray([1, 0, 0, 1, 1, 1, 0, 1], np.float32),
        truncated=np.zeros(BATCH, np.float32),
    )
    rl_step = build_rl_step(settings, tx, graphdef)
    return state, batch, rl_step.prepare, rl_step.update


def _step(state, batch, prepare, update):
    train, prep_metrics = prepare(state.params, None, batch, jnp.float32(0.0))
    new_state, metrics = update(state, train)
    return new_state, prep_metrics | metrics, train


def _change(a, b):
    return max(float(jnp.abs(x - y).max()) for x, y in
               zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True))


@pytest.mark.slow
@pytest.mark.parametrize(
    "options",
    [
        {"policy_loss": "cispo", "clip_low": 1.0, "clip_high": 0.28},
        {"policy_loss": "gmpo"},
        {"policy_loss": "clip_cov", "cov_ratio": 0.2, "cov_lower": -10.0, "cov_upper": 10.0},
        {"policy_loss": "kl_cov", "cov_ratio": 0.2},
        {"ratio_level": "sequence-token", "clip_low": 3e-4, "clip_high": 4e-4},
        {"estimator": "reinforce_pp_baseline"},
        {"count_empty_rows": True, "agg": "seq-mean-token-mean"},
        {"is_correction": "token_tis", "is_cap": 1.1},
        {"is_correction": "seq_tis", "is_cap": 2.0},
        {"is_correction": "seq_mis_geo", "is_low": 0.9, "is_high": 1.1},
        {"is_correction": "seq_mis", "is_low": 0.5, "is_high": 2.0, "num_minibatches": 2},
    ],
    ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()),
)
def test_each_option_trains_with_finite_metrics(options):
    state, batch, prepare, update = _setup(**dict(options))
    before = jax.tree.map(jnp.copy, state)
    new_state, metrics, _ = _step(state, batch, prepare, update)
    assert all(np.isfinite(float(v)) for v in metrics.values()), metrics
    assert _change(before, new_state) > 1e-4
    if options.get("is_correction", "none") != "none":
        assert any(name.startswith("is_") for name in metrics)


@pytest.mark.slow
def test_a_correction_that_masks_every_token_leaves_the_policy_unchanged():
    """token_mis with the band [1, 1]: every token's ratio leaves it, so the policy loss has no
    token and the gradient is 0 (the masked tokens really leave the loss)."""
    state, batch, prepare, update = _setup(is_correction="token_mis", is_low=1.0, is_high=1.0)
    before = jax.tree.map(jnp.copy, state)
    new_state, metrics, train = _step(state, batch, prepare, update)
    assert float(train.policy_mask.sum()) == 0
    assert _change(before, new_state) == 0.0
    assert float(metrics["is_masked_token_frac"]) == 1.0


@pytest.mark.slow
def test_clip_cov_draws_the_same_tokens_on_a_rerun():
    options = {"policy_loss": "clip_cov", "cov_ratio": 0.2, "cov_lower": -10.0, "cov_upper": 10.0}
    results = []
    for _ in range(2):
        state, batch, prepare, update = _setup(**options)
        results.append(_step(state, batch, prepare, update)[0])
    assert _change(*results) == 0.0
