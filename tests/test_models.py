"""The rl_jax decoder on its own: cache, padding, heads, remat, dtypes, helpers."""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import rl_jax.models as models


@functools.cache
def tiny_lm(model_type: str = "qwen3", **overrides) -> models.CausalLM:
    return models.CausalLM(models.tiny_config(model_type, **overrides), rngs=nnx.Rngs(0))


def left_padded(lengths: list[int], width: int, seed: int = 0) -> tuple[jax.Array, jax.Array]:
    """tokens [B, width] (pad 0) and mask [B, width] with `lengths` real tokens on the right."""
    rng = np.random.default_rng(seed)
    tokens = np.zeros((len(lengths), width), np.int32)
    mask = np.zeros((len(lengths), width), np.int32)
    for row, length in enumerate(lengths):
        tokens[row, width - length:] = rng.integers(3, 256, size=length)
        mask[row, width - length:] = 1
    return jnp.asarray(tokens), jnp.asarray(mask)


@functools.partial(jax.jit, static_argnums=0)
def _logits(graphdef, state, tokens, mask):
    return models.apply_lm(graphdef, state, tokens, models.positions_from_mask(mask), mask)[0]


def forward(model: models.CausalLM, tokens: jax.Array, mask: jax.Array) -> jax.Array:
    """Logits [B, T, V] of a full forward with positions from the mask (jitted: eager is slow)."""
    return _logits(*nnx.split(model), tokens, mask)


def test_positions_and_masks():
    mask = jnp.array([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0], [0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(
        models.positions_from_mask(mask), [[0, 0, 0, 1, 2], [0, 1, 2, 2, 2], [0, 0, 0, 0, 0]]
    )
    np.testing.assert_array_equal(models.last_token_index(mask), [4, 2, 0])
    allowed = models.attention_mask(jnp.array([[0, 1, 1, 1]]), num_queries=2, cache_index=1)
    np.testing.assert_array_equal(allowed[0], [[0, 1, 0, 0], [0, 1, 1, 0]])


def test_init_decode_cache():
    config = models.tiny_config("llama", num_layers=3, num_kv_heads=1, head_dim=8)
    cache = models.init_decode_cache(config, batch=2, max_len=7)
    assert isinstance(cache, models.DecodeCache)
    assert len(cache.k) == len(cache.v) == 3
    assert all(k.shape == (2, 1, 8, 7) for k in cache.k)  # keys transposed: [B, K, D, S]
    assert all(v.shape == (2, 1, 7, 8) for v in cache.v)
    assert all(x.dtype == jnp.float32 and not x.any() for x in cache.k + cache.v)
    assert models.init_decode_cache(config, 1, 4, dtype=jnp.bfloat16).v[0].dtype == jnp.bfloat16


def cached_keys(cache: models.DecodeCache) -> jax.Array:
    """The cached keys as [layers, B, S, kv_heads, D]."""
    return jnp.stack(cache.k).transpose(0, 1, 4, 2, 3)


@pytest.mark.parametrize("model_type", ["llama", "qwen3"])  # qwen2: right padding test
def test_left_padding_invariance(model_type):
    model = tiny_lm(model_type)
    tokens, mask = left_padded([3, 9, 6], 9, seed=1)
    padded = forward(model, tokens, mask)
    assert np.isfinite(np.asarray(padded)).all()  # padding rows too: no -inf in the mask
    for row, length in enumerate([3, 9, 6]):
        alone = forward(model, tokens[row:row + 1, 9 - length:], mask[row:row + 1, 9 - length:])
        np.testing.assert_allclose(padded[row, 9 - length:], alone[0], atol=1e-5)


def test_right_padding_invariance():
    model = tiny_lm("qwen2")
    tokens, _ = left_padded([5], 5, seed=2)
    right_tokens = jnp.pad(tokens, ((0, 0), (0, 3)))
    right_mask = jnp.pad(jnp.ones_like(tokens), ((0, 0), (0, 3)))
    np.testing.assert_allclose(
        forward(model, right_tokens, right_mask)[:, :5], forward(model, tokens, tokens > -1),
        atol=1e-5,
    )


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "qwen3"])
def test_cache_decode_equals_full_forward(model_type):
    """Prefill a left-padded prompt, a chunk of 2, then one token at a time, under jit."""
    model = tiny_lm(model_type)
    prompt_len, new, max_len = 6, 5, 16
    chunks = [prompt_len, 2, 1, 1, 1]
    tokens, mask = left_padded([4, 6], prompt_len + new, seed=3)
    tokens = jnp.concatenate([tokens[:, new:], tokens[:, -new:]], axis=1)  # prompt, then new
    mask = jnp.concatenate([mask[:, new:], jnp.ones((2, new), jnp.int32)], axis=1)
    full = forward(model, tokens, mask)

    graphdef, state = nnx.split(model)
    step = jax.jit(models.apply_lm)
    key_mask = jnp.zeros((2, max_len), jnp.int32).at[:, :prompt_len + new].set(mask)
    positions = models.positions_from_mask(mask)
    cache = models.init_decode_cache(model.config, 2, max_len)
    outputs, start = [], 0
    for size in chunks:
        span = slice(start, start + size)
        logits, cache = step(graphdef, state, tokens[:, span], positions[:, span], key_mask,
                             cache, jnp.int32(start))
        outputs.append(logits)
        start += size
    cached = jnp.concatenate(outputs, axis=1)
    real = np.asarray(mask, bool)
    np.testing.assert_allclose(np.asarray(cached)[real], np.asarray(full)[real], atol=1e-5)
    stacked = cached_keys(cache)
    assert stacked.shape == (2, 2, max_len, 2, 16)
    # The cache holds the keys of every token written so far, zeros after.
    assert not stacked[:, :, prompt_len + new:].any() and stacked[:, :, prompt_len + new - 1].any()


@pytest.mark.parametrize(("dtype", "cache_dtype"), [("float32", "bfloat16"), ("bfloat16", None)])
def test_cache_in_lower_precision(dtype, cache_dtype):
    """A bf16 cache (or bf16 compute) decodes close to the full forward."""
    model = models.CausalLM(models.tiny_config("qwen2", dtype=dtype), rngs=nnx.Rngs(0))
    tokens, mask = left_padded([3, 5], 5, seed=6)
    full = forward(model, tokens, mask)
    graphdef, state = nnx.split(model)
    positions = models.positions_from_mask(mask)
    cache = models.init_decode_cache(model.config, 2, 8, dtype=cache_dtype)
    assert cached_keys(cache).dtype == jnp.bfloat16
    key_mask = jnp.pad(mask, ((0, 0), (0, 3)))
    step = jax.jit(models.apply_lm)
    first, cache = step(graphdef, state, tokens[:, :4], positions[:, :4], key_mask, cache, 0)
    last, cache = step(graphdef, state, tokens[:, 4:], positions[:, 4:], key_mask, cache, 4)
    assert last.dtype == jnp.float32 and cached_keys(cache).dtype == jnp.bfloat16
    np.testing.assert_allclose(last[:, 0], full[:, 4], atol=5e-2)
    np.testing.assert_allclose(first[1], full[1, :4], atol=5e-2)


def test_cache_requires_full_width_key_mask():
    model = tiny_lm("qwen3")
    cache = models.init_decode_cache(model.config, 1, 8)
    tokens = jnp.ones((1, 2), jnp.int32)
    with pytest.raises(ValueError, match="max_len"):
        model(tokens, tokens, tokens, cache=cache)
    with pytest.raises(ValueError, match="without a cache"):
        model(tokens, tokens, jnp.ones((1, 3)))


def test_tied_embeddings_have_no_lm_head():
    tied = tiny_lm("qwen2")
    assert tied.config.tie_word_embeddings and not hasattr(tied, "lm_head")
    tokens, mask = left_padded([4], 4)
    h, _ = tied.model(tokens, models.positions_from_mask(mask), mask)
    expected = h @ tied.model.embed_tokens.embedding[...].T
    np.testing.assert_allclose(forward(tied, tokens, mask), expected, atol=1e-6)
    assert tiny_lm("llama").lm_head.kernel.shape == (64, 256)


def test_value_and_reward_models():
    policy = tiny_lm("qwen2")
    value = models.ValueModel.from_policy(policy, rngs=nnx.Rngs(1))
    reward = models.RewardModel.from_policy(policy, rngs=nnx.Rngs(1))
    tokens, mask = left_padded([3, 7, 5], 7, seed=4)
    right_mask = mask[:, ::-1]  # right padding: real tokens first
    positions = models.positions_from_mask(mask)
    values = value(tokens, positions, mask)
    assert values.shape == (3, 7) and values.dtype == jnp.float32
    # Same backbone and head init -> the reward is the value at the last real token.
    for key_mask in (mask, right_mask):
        positions = models.positions_from_mask(key_mask)
        rewards = reward(tokens, positions, key_mask)
        per_token = value(tokens, positions, key_mask)
        last = [int(np.nonzero(np.asarray(row))[0].max()) for row in key_mask]
        assert rewards.shape == (3,)
        np.testing.assert_allclose(rewards, per_token[np.arange(3), last], atol=1e-6)
    # The backbone starts from the policy's and is a copy, not shared.
    h_policy, _ = policy.model(tokens, models.positions_from_mask(mask), mask)
    h_value, _ = value.model(tokens, models.positions_from_mask(mask), mask)
    np.testing.assert_array_equal(h_policy, h_value)
    graphdef, state = nnx.split(reward)
    out = jax.jit(models.apply_model, static_argnums=0)(graphdef, state, tokens, positions, mask)
    assert out.shape == (3,)


def test_remat_gives_same_gradients():
    config = models.tiny_config("qwen3")
    tokens, mask = left_padded([5, 8], 8, seed=5)
    positions = models.positions_from_mask(mask)

    def grads(remat: bool):
        model = models.CausalLM(
            models.tiny_config("qwen3", remat=remat), rngs=nnx.Rngs(0)
        )
        graphdef, state = nnx.split(model)

        def loss(state):
            logits, _ = models.apply_lm(graphdef, state, tokens, positions, mask)
            logp = jax.nn.log_softmax(logits[:, :-1])
            picked = jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
            return -(picked * mask[:, 1:]).sum()

        return jax.jit(jax.grad(loss))(state)

    assert config.remat == "none"
    plain, remat = grads(False), grads(True)
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(remat), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_bfloat16_compute_is_close_to_float32():
    config = models.tiny_config("llama")
    model32 = models.CausalLM(config, rngs=nnx.Rngs(0))
    model16 = models.CausalLM(models.tiny_config("llama", dtype="bfloat16"), rngs=nnx.Rngs(0))
    assert model16.model.embed_tokens.embedding[...].dtype == jnp.float32
    tokens, mask = left_padded([6], 6)
    logits16 = forward(model16, tokens, mask)
    assert logits16.dtype == jnp.float32
    np.testing.assert_allclose(logits16, forward(model32, tokens, mask), atol=5e-2)


@pytest.mark.parametrize("bias", [False, True])
def test_fused_projections_equal_separate_layers(bias):
    """apply_fused_2d (one matmul over concatenated kernels) == each nnx.Linear on its own."""
    from rl_jax.models.layers import apply_fused_2d

    rngs = nnx.Rngs(0)
    layers = tuple(
        nnx.Linear(16, width, use_bias=bias, bias_init=nnx.initializers.normal(1.0), rngs=rngs)
        for width in (8, 4, 12)
    )
    x = jax.random.normal(jax.random.key(1), (2, 3, 16))
    fused = apply_fused_2d(layers, x)
    for layer, out in zip(layers, fused, strict=True):
        assert out.shape == (2, 3, layer.out_features)
        np.testing.assert_allclose(out, layer(x), rtol=1e-6, atol=1e-6)
    mixed = (layers[0], nnx.Linear(16, 4, use_bias=not bias, rngs=rngs))
    with pytest.raises(ValueError, match="all layers with a bias or all without"):
        apply_fused_2d(mixed, x)


def test_config_validation():
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        models.tiny_config("llama", num_heads=4, num_kv_heads=3)
    with pytest.raises(ValueError, match="dtype"):
        models.tiny_config("llama", dtype="float16")
    config = models.tiny_config("qwen3", head_dim=24)
    assert config.head_dim == 24 and config.num_groups == 2
    assert models.tiny_config("llama").head_dim == 16


def test_decode_loop_updates_the_cache_in_place():
    """In a `lax.while_loop` of decode steps, XLA copies no `DecodeCache` buffer.

    A copy of each layer's keys and values per step is what an out-of-place update costs; the
    check reads the compiled HLO, as the sampler's loop compiles it.
    """
    model = tiny_lm("qwen2")
    config = model.config
    graphdef, state = nnx.split(model)
    batch, max_len = 3, 24
    key_mask = jnp.ones((batch, max_len), jnp.int32)

    def loop(state):
        def step(i, carry):
            cache, tokens = carry
            logits, cache = models.apply_lm(graphdef, state, tokens, jnp.full_like(tokens, i),
                                            key_mask, cache, i)
            return cache, jnp.argmax(logits, axis=-1).astype(jnp.int32)

        carry = (models.init_decode_cache(config, batch, max_len), jnp.ones((batch, 1), jnp.int32))
        return jax.lax.fori_loop(0, max_len, step, carry)[1]

    hlo = jax.jit(loop).lower(state).compile().as_text()
    body_name = re.search(r" while\(.*?body=%([\w.-]+)", hlo).group(1)
    body = re.search(r"\n%" + re.escape(body_name) + r" .*?\n}", hlo, re.S).group(0)
    kv, d = config.num_kv_heads, config.head_dim
    buffer_shapes = [f"f32[{batch},{kv},{d},{max_len}]", f"f32[{batch},{kv},{max_len},{d}]"]
    assert all(shape in body for shape in buffer_shapes)
    copies = [line for line in body.splitlines()
              if " copy(" in line and any(f"= {shape}" in line for shape in buffer_shapes)]
    assert not copies, copies
