"""`attention_impl="xla"` (jax.nn.dot_product_attention) equals rl_jax's matmul attention."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rl_jax import models


@pytest.mark.slow
@pytest.mark.parametrize("model_type", ["qwen2", "llama"])
def test_dot_product_attention_equals_matmul(model_type):
    config = models.tiny_config(model_type, vocab_size=50, hidden_size=32, intermediate_size=64,
                                num_layers=2, num_heads=4, num_kv_heads=2)  # 2 query groups
    graphdef, params = nnx.split(models.CausalLM(config, rngs=nnx.Rngs(0)))
    xla_graphdef, _ = nnx.split(models.CausalLM(
        dataclasses.replace(config, attention_impl="xla"), rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(0)
    mask = np.ones((3, 10), np.float32)
    mask[0, :3] = 0  # left padding (a fully masked query row at each padded slot)
    mask[1, 7:] = 0  # right padding
    tokens = (rng.integers(1, 50, mask.shape) * mask).astype(np.int32)
    positions = models.positions_from_mask(mask)

    def loss(graphdef, params):
        logits, _ = models.apply_lm(graphdef, params, tokens, positions, mask)
        return (jnp.sin(logits) * mask[..., None]).sum(), logits

    want = jax.value_and_grad(lambda p: loss(graphdef, p), has_aux=True)(params)
    got = jax.jit(jax.value_and_grad(lambda p: loss(xla_graphdef, p), has_aux=True))(params)
    (got_loss, got_logits), got_grads = got
    (want_loss, want_logits), want_grads = want
    np.testing.assert_allclose(got_logits, want_logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_loss, want_loss, rtol=1e-5)
    # Gradients: the same sums in another order (max 1.5e-5 relative seen on CPU).
    for g, w in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads), strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-5)


def test_rejects_unknown_attention_impl():
    with pytest.raises(ValueError, match="attention_impl"):
        models.tiny_config("qwen2", attention_impl="flash")
    with pytest.raises(ValueError, match="bfloat16"):
        models.tiny_config("qwen2", attention_impl="cudnn")
