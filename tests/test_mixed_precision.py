"""Mixed precision: float32 master weights with bfloat16 compute learn like float32; the ratio of
the trainer's to the sampler's probabilities at the sampling weights stays in a stated band."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import rl_jax
from rl_jax import models
from rl_jax.algorithm import policy_token_stats
from rl_jax.config import ConfigError, check_config, default_config
from rl_jax.rollout import Sampler
from rl_jax.settings import ModelSettings
from rl_jax.train_state import TrainState, optimizer_step
from rl_jax.trainers.setup import build_policy

VOCAB = 64


def _config(dtype: str, param_dtype: str) -> models.ModelConfig:
    return models.tiny_config(
        "llama", vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_layers=1,
        num_heads=4, num_kv_heads=2, initializer_range=0.1, dtype=dtype, param_dtype=param_dtype,
    )


@functools.cache
def _float32_params() -> nnx.State:
    """One initialisation for every dtype: the same weights, rounded for bf16 storage."""
    return nnx.state(models.CausalLM(_config("float32", "float32"), rngs=nnx.Rngs(0)))


def _parameter_change(dtype: str, param_dtype: str, steps: int = 3, lr: float = 1e-6):
    """(fraction of parameter entries that changed, mean |change|) after `steps` AdamW steps of
    next-token loss on fixed random tokens (the same init and data for every dtype)."""
    config = _config(dtype, param_dtype)
    graphdef = nnx.split(nnx.eval_shape(lambda: models.CausalLM(config, rngs=nnx.Rngs(0))))[0]
    params = jax.tree.map(lambda x: x.astype(param_dtype), _float32_params())
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, VOCAB, (8, 16)), jnp.int32)

    def loss_fn(params, tokens):
        inputs = tokens[:, :-1]
        mask = jnp.ones_like(inputs)
        logits, _ = models.apply_lm(
            graphdef, params["policy"], inputs, models.positions_from_mask(mask), mask
        )
        return -rl_jax.token_logprobs(logits, tokens[:, 1:]).mean(), {}

    tx = optax.adamw(lr, weight_decay=0.0)
    state = TrainState(jnp.zeros((), jnp.int32), {"policy": params}, tx.init({"policy": params}))
    step = jax.jit(lambda state, batch: optimizer_step(loss_fn, tx, state, batch))
    for _ in range(steps):
        state, _ = step(state, tokens)
    as_f32 = lambda tree: np.concatenate(  # noqa: E731
        [np.asarray(x, np.float32).ravel() for x in jax.tree.leaves(tree)]
    )
    before, after = as_f32(params), as_f32(state.params["policy"])
    return float(np.mean(after != before)), float(np.mean(np.abs(after - before)))


@pytest.mark.slow
def test_float32_masters_with_bf16_compute_learn_like_float32():
    """AdamW at lr 1e-6, 3 steps, on a 1-layer model. Measured here: float32 changes 97.6% of
    the entries (mean |change| 2.93e-6); bf16 compute with float32 masters the same 97.6%
    (2.92e-6); bf16 storage 0.34% (1.5e-8): its updates round away (SmolLM2 in bf16 storage:
    0.39%)."""
    frac_f32, mean_f32 = _parameter_change("float32", "float32")
    frac_mixed, mean_mixed = _parameter_change("bfloat16", "float32")
    frac_bf16, mean_bf16 = _parameter_change("bfloat16", "bfloat16")
    assert frac_f32 > 0.9
    assert frac_mixed > 0.95 * frac_f32
    assert 0.8 < mean_mixed / mean_f32 < 1.25  # Adam's step ~ lr whatever the gradient's noise
    assert frac_bf16 < 0.05 * frac_f32
    assert mean_bf16 < 0.05 * mean_f32


def test_loaders_and_config_keep_float32_masters(tmp_path):
    config = default_config()
    config.model.dtype = "bfloat16"
    tokenizer = models.train_bpe_tokenizer(["1 + 2 = 3", "4 + 5 = 9"], 259)
    policy = build_policy(ModelSettings.from_config(config), tokenizer)
    assert policy.config.dtype == "bfloat16"
    kernels = jax.tree.leaves(nnx.state(policy, nnx.Param))
    assert {k.dtype for k in kernels} == {jnp.dtype(jnp.float32)}
    config.model.param_dtype = "bfloat16"
    bf16 = build_policy(ModelSettings.from_config(config), tokenizer)
    kernels = jax.tree.leaves(nnx.state(bf16, nnx.Param))
    assert {k.dtype for k in kernels} == {jnp.dtype(jnp.bfloat16)}
    config.model.param_dtype = "float16"
    with pytest.raises(ConfigError, match=r"config.model.param_dtype = 'float16': expected one"):
        check_config(config)


def _sampler_ratio_band(dtype: str) -> tuple[float, float]:
    """(min, max) of exp(trainer log-prob - sampler log-prob) over the sampled tokens, at the
    sampling weights: the sampler's cached decoding vs the trainer's full forward."""
    model = models.CausalLM(_config(dtype, "float32"), rngs=nnx.Rngs(0))
    rng = np.random.default_rng(1)
    prompts = [list(rng.integers(1, VOCAB, 5)) for _ in range(4)]
    out = Sampler.from_model(model, pad_id=0, cache_stages=1).generate(
        nnx.state(model), prompts, jax.random.key(1), max_new_tokens=16, n=4
    )
    tokens = jnp.concatenate([out.prompt_tokens, out.response_tokens], 1)
    mask = jnp.concatenate([out.prompt_mask, out.response_mask], 1).astype(jnp.float32)
    graphdef, params = nnx.split(model)
    logprobs, _ = policy_token_stats(
        graphdef, params, tokens, mask, out.response_tokens.shape[1],
        temperature=1.0, logits_chunk=0,
    )
    diff = np.asarray(logprobs - out.response_logprobs)[np.asarray(out.response_mask) > 0]
    return float(np.exp(diff.min())), float(np.exp(diff.max()))


@pytest.mark.slow
def test_ratio_at_sampling_weights_stays_in_band():
    """Measured here on this model (16 prompts x 16 tokens): bf16 compute with float32 masters
    [0.987, 1.009] (float32 compute: [0.999999, 1.000001]; with 2 layers, 24 tokens: bf16
    [0.983, 1.018], mean |log diff| 3.1e-3). The band asserted: 5%."""
    low, high = _sampler_ratio_band("bfloat16")
    assert 0.95 < low <= high < 1.05
    assert high - low > 1e-3  # bf16 rounding is there: the test measures something
