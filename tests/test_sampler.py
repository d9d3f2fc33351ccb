"""Tests for rl_jax.rollout: the jitted KV-cache sampler.

Most tests use a toy one-layer attention model written here against the same interface as
rl_jax.models (apply_fn(params, tokens, positions, key_mask, cache, cache_index)), with a cache of
[layers, batch, len, kv_heads, head_dim]; the Hugging Face comparisons use rl_jax.models.
"""

from __future__ import annotations

import ast
import functools
import math
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rl_jax import parallel
from rl_jax.models import positions_from_mask
from rl_jax.rollout import (
    Sampler,
    cache_batch_axes,
    cache_length_axes,
    filter_logits,
    sample_from_probs,
    stage_ends,
    top_k_threshold,
    top_p_threshold,
    top_p_threshold_unsorted,
)

VOCAB = 16
DIM = 16
MAX_LEN = 128


class ToyCache(NamedTuple):
    k: jax.Array  # [1, batch, max_len, 1, dim]
    v: jax.Array


def toy_params(seed: int = 0) -> dict[str, jax.Array]:
    keys = jax.random.split(jax.random.key(seed), 6)
    scale = 1.0 / math.sqrt(DIM)
    return {
        "embed": jax.random.normal(keys[0], (VOCAB, DIM)),
        "pos": jax.random.normal(keys[1], (MAX_LEN, DIM)) * 0.5,
        "wq": jax.random.normal(keys[2], (DIM, DIM)) * scale,
        "wk": jax.random.normal(keys[3], (DIM, DIM)) * scale,
        "wv": jax.random.normal(keys[4], (DIM, DIM)) * scale,
        "out": jax.random.normal(keys[5], (DIM, VOCAB)) * 1.5,
    }


PARAMS = toy_params()  # the weights the toy samplers sample from


def toy_init_cache(batch: int, max_len: int) -> ToyCache:
    zeros = jnp.zeros((1, batch, max_len, 1, DIM), jnp.float32)
    return ToyCache(zeros, zeros)


def toy_apply(params, tokens, positions, key_mask, cache=None, cache_index=0):
    """One causal attention layer; tokens, positions: [B, T]; key_mask: [B, S]."""
    x = params["embed"][tokens] + params["pos"][positions]  # [B, T, D]
    q, k, v = x @ params["wq"], x @ params["wk"], x @ params["wv"]
    if cache is None:
        keys, values = k, v
    else:
        start = (0, 0, cache_index, 0, 0)
        cache = ToyCache(
            jax.lax.dynamic_update_slice(cache.k, k[None, :, :, None, :], start),
            jax.lax.dynamic_update_slice(cache.v, v[None, :, :, None, :], start),
        )
        keys, values = cache.k[0, :, :, 0], cache.v[0, :, :, 0]
    query_slots = cache_index + jnp.arange(tokens.shape[1])
    key_slots = jnp.arange(keys.shape[1])
    allowed = (key_slots[None, :] <= query_slots[:, None])[None] & (key_mask[:, None, :] > 0)
    scores = jnp.einsum("btd,bsd->bts", q, keys) / math.sqrt(DIM)
    weights = jax.nn.softmax(jnp.where(allowed, scores, -1e30), axis=-1)
    hidden = jnp.tanh(x + jnp.einsum("bts,bsd->btd", weights, values))
    return hidden @ params["out"], cache


def toy_sampler(**kwargs) -> Sampler:
    kwargs.setdefault("max_len", MAX_LEN)
    return Sampler(toy_apply, toy_init_cache, **kwargs)


def random_prompts(rng: np.random.Generator, count: int, low: int, high: int) -> list[list[int]]:
    return [list(rng.integers(0, VOCAB, rng.integers(low, high + 1))) for _ in range(count)]


def full_forward_logits(params, out) -> tuple[np.ndarray, int]:
    """Logits of the whole prompt + response without a cache: [B, P + N, V], and P."""
    tokens = jnp.concatenate([out.prompt_tokens, out.response_tokens], axis=1)
    mask = jnp.concatenate([out.prompt_mask, out.response_mask], axis=1)
    logits, _ = toy_apply(params, tokens, positions_from_mask(mask), mask)
    return np.asarray(logits), out.prompt_tokens.shape[1]


def response_step_logits(params, out) -> np.ndarray:
    """[B, N, V]: the logits each response token was drawn from, by a full forward."""
    logits, prompt_len = full_forward_logits(params, out)
    num_new = out.response_tokens.shape[1]
    return logits[:, prompt_len - 1 : prompt_len - 1 + num_new]


# ---------------------------------------------------------------- filters


def test_top_p_threshold_hand_computed():
    # probs 0.5, 0.3, 0.15, 0.05: p=0.7 keeps 2 tokens, p=0.8 keeps 2 (mass before 3rd is 0.8),
    # p=0.81 keeps 3, p=0.1 keeps 1.
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
    for p, kept in [(0.7, 2), (0.8, 2), (0.81, 3), (0.1, 1), (1.0, 4)]:
        threshold = top_p_threshold(logits, jnp.float32(p))
        np.testing.assert_allclose(threshold, logits[:, kept - 1], rtol=1e-6)


def test_filter_logits_top_k_then_top_p():
    logits = jnp.log(jnp.array([[0.05, 0.5, 0.15, 0.3]]))
    kept = lambda f: np.isfinite(np.asarray(f))[0].tolist()  # noqa: E731
    assert kept(filter_logits(logits, 1.0, top_k=2, use_top_p=False)) == [0, 1, 0, 1]
    top_p_only = filter_logits(logits, jnp.float32(0.6), top_k=None, use_top_p=True)
    assert kept(top_p_only) == [0, 1, 0, 1]
    # top-k 2 renormalises to 0.625 / 0.375, so p=0.6 keeps only the first.
    assert kept(filter_logits(logits, jnp.float32(0.6), top_k=2, use_top_p=True)) == [0, 1, 0, 0]


def test_cache_batch_axes_found_per_leaf():
    def init(batch, length):
        return {"stacked": jnp.zeros((3, batch, length)), "per_row": [jnp.zeros((batch, 4))]}

    assert cache_batch_axes(init, 8) == {"stacked": 1, "per_row": [0]}
    assert cache_batch_axes(toy_init_cache, 8) == ToyCache(1, 1)
    with pytest.raises(ValueError, match="batch axis"):
        cache_batch_axes(lambda batch, length: jnp.zeros((4, length)), 8)


def test_cache_length_axes_and_stage_ends():
    def init(batch, length):
        return {"stacked": jnp.zeros((3, batch, length)), "other": [jnp.zeros((batch, length, 2))]}

    assert cache_length_axes(init, 5) == {"stacked": 2, "other": [1]}
    assert cache_length_axes(toy_init_cache, 5) == ToyCache(2, 2)
    with pytest.raises(ValueError, match="slot axis"):
        cache_length_axes(lambda batch, length: jnp.zeros((batch, 4)), 5)
    assert stage_ends(64, 4) == [16, 32, 48, 64]
    assert stage_ends(5, 2) == [3, 5]
    assert stage_ends(2, 4) == [1, 2]  # at most one stage per token
    assert stage_ends(16, 1) == [16]
    with pytest.raises(ValueError, match="cache_stages"):
        stage_ends(16, 0)


def test_unsorted_top_p_threshold_equals_sorted():
    logits = jax.random.normal(jax.random.key(0), (32, 300)) * 3.0
    probs = jax.nn.softmax(logits, axis=-1)
    sorted_logits = -jnp.sort(-logits, axis=-1)
    # Where the mass before a token is within float rounding of p (e.g. p = 0.999 here) the two
    # may keep one token more or less; these p are clear of that.
    for p in (0.05, 0.3, 0.6, 0.9):
        exact = top_p_threshold(sorted_logits, jnp.float32(p))
        bisected = top_p_threshold_unsorted(logits, probs, jnp.float32(p))
        np.testing.assert_array_equal(logits >= exact[:, None], logits >= bisected[:, None])


def test_top_k_threshold_equals_kth_largest():
    logits = jax.random.normal(jax.random.key(3), (32, 300)) * 3.0
    sorted_logits = -jnp.sort(-logits, axis=-1)
    for k in (1, 2, 50, 299, 300):
        np.testing.assert_array_equal(top_k_threshold(logits, k), sorted_logits[:, k - 1])
    np.testing.assert_array_equal(top_k_threshold(logits, 1000), sorted_logits[:, -1])


def test_sample_from_probs_frequencies_and_zero_mass():
    """Inverse-CDF draws over 100 rows x 2000 keys vs the (unnormalised) probs; zeros never drawn.

    TV bound as in test_sampled_frequencies_match_tempered_softmax, m = 200k samples.
    """
    vocab = 150  # not a multiple of the block size, several blocks
    weights = np.asarray(jax.random.uniform(jax.random.key(1), (vocab,))) ** 4
    weights[[0, 1, 63, 64, 100, vocab - 1]] = 0.0
    probs = jnp.tile(jnp.asarray(weights * 3.0, jnp.float32), (100, 1))
    draws = jax.jit(jax.vmap(lambda k: sample_from_probs(k, probs, block_size=64)))(
        jax.random.split(jax.random.key(2), 2000)
    )
    draws = np.asarray(draws).reshape(-1)
    counts = np.bincount(draws, minlength=vocab)
    assert counts.size == vocab and counts[weights == 0].sum() == 0
    target = weights / weights.sum()
    m = draws.size
    bound = 0.5 * np.sum(np.sqrt(target * (1 - target) / m)) + math.sqrt(math.log(1e4) / (2 * m))
    assert 0.5 * np.abs(counts / m - target).sum() < bound


# ---------------------------------------------------------------- sampler on the toy model


# Most tests share one sampler and one call shape (4 prompts of <= 16 tokens, n=4, <= 16 new
# tokens), so they share its compilations; a compile costs seconds, a call milliseconds.
NUM_PROMPTS, N = 4, 4


@functools.cache
def shared_sampler() -> Sampler:
    return toy_sampler()


def test_logprobs_equal_full_forward():
    sampler = shared_sampler()
    prompts = random_prompts(np.random.default_rng(0), NUM_PROMPTS, 1, 16)
    temperature = 0.7
    out = sampler.generate(
        PARAMS, prompts, jax.random.key(1), n=N, max_new_tokens=16, temperature=temperature
    )
    assert out.response_tokens.shape == (NUM_PROMPTS * N, 16)
    step_logits = response_step_logits(PARAMS, out)
    log_probs = jax.nn.log_softmax(step_logits / temperature, axis=-1)
    expected = np.take_along_axis(
        np.asarray(log_probs), np.asarray(out.response_tokens)[..., None], -1
    )
    mask = np.asarray(out.response_mask).astype(bool)
    np.testing.assert_allclose(
        np.asarray(out.response_logprobs)[mask], expected[..., 0][mask], atol=1e-4
    )
    assert int(out.num_generated_tokens) == NUM_PROMPTS * N * 16


def test_sampled_frequencies_match_tempered_softmax():
    """First-token frequencies over 50k samples vs softmax(logits / T) in total variation.

    E[TV] <= 0.5 * sum_v sqrt(p_v (1 - p_v) / m) for m samples, and TV moves by at most 1/m per
    sample, so by McDiarmid P(TV > E[TV] + t) <= exp(-2 m t^2); t = sqrt(ln(1e4) / (2 m)) gives a
    1e-4 failure bound. With m = 50k and V = 16 this is at most 0.5 * sqrt(16 / m) + 0.0096, about
    0.019.
    """
    sampler = toy_sampler(min_prompt_bucket=8, min_new_tokens_bucket=1)
    num_samples, temperature = 50_000, 1.3
    out = sampler.generate(
        PARAMS,
        [[3, 1, 4, 1, 5]],
        jax.random.key(7),
        n=num_samples,
        max_new_tokens=1,
        temperature=temperature,
    )
    probs = np.asarray(
        jax.nn.softmax(response_step_logits(PARAMS, out)[0, 0] / temperature)
    )
    counts = np.bincount(np.asarray(out.response_tokens[:, 0]), minlength=VOCAB)
    tv = 0.5 * np.abs(counts / num_samples - probs).sum()
    bound = 0.5 * np.sum(np.sqrt(probs * (1 - probs) / num_samples)) + math.sqrt(
        math.log(1e4) / (2 * num_samples)
    )
    assert bound < 0.02
    assert tv < bound, (tv, bound)


@pytest.mark.parametrize(("top_k", "top_p"), [(3, None), (None, 0.6), (4, 0.7), (1, None)])
def test_top_k_top_p_stay_in_allowed_set(top_k, top_p):
    sampler = shared_sampler()
    prompts = random_prompts(np.random.default_rng(2), NUM_PROMPTS, 2, 12)
    temperature = 0.9
    out = sampler.generate(
        PARAMS,
        prompts,
        jax.random.key(3),
        n=N,
        max_new_tokens=16,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
    )
    scaled = response_step_logits(PARAMS, out) / temperature  # [B, N, V]
    order = np.sort(scaled, axis=-1)[..., ::-1]
    if top_k is not None:
        order = order[..., :top_k]
    if top_p is not None:
        probs = np.exp(order - order.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        num_kept = np.maximum(((np.cumsum(probs, -1) - probs) < top_p).sum(-1), 1)
        threshold = np.take_along_axis(order, (num_kept - 1)[..., None], -1)[..., 0]
    else:
        threshold = order[..., -1]
    chosen = np.take_along_axis(scaled, np.asarray(out.response_tokens)[..., None], -1)[..., 0]
    # 1e-5 slack: the sampler's cached logits differ from the full forward in the last bits.
    assert np.all(chosen >= threshold - 1e-5)
    if top_p is not None:  # the filter is active: some draws would otherwise fall outside
        assert (order[..., -1] < threshold).any()
    if top_k == 1:  # top-1 sampling is greedy decoding
        greedy = sampler.generate(PARAMS, prompts, jax.random.key(4), n=N, max_new_tokens=16,
                                  greedy=True)
        np.testing.assert_array_equal(out.response_tokens, greedy.response_tokens)


def test_eos_masks_pads_and_stops_early():
    pad_id = 0
    prompts = random_prompts(np.random.default_rng(4), NUM_PROMPTS, 3, 9)
    free = shared_sampler().generate(PARAMS, prompts, jax.random.key(5), n=N, max_new_tokens=16)
    # Pick as EOS the token row 0 emits at step 3, so that row stops there (or earlier).
    eos = int(free.response_tokens[0, 3])
    sampler = toy_sampler(eos_ids=(eos, VOCAB + 5), pad_id=pad_id)
    out = sampler.generate(PARAMS, prompts, jax.random.key(5), n=N, max_new_tokens=16)
    tokens, mask = np.asarray(out.response_tokens), np.asarray(out.response_mask)
    lengths = np.asarray(out.response_lengths)
    assert lengths[0] <= 4
    for row in range(tokens.shape[0]):
        length = lengths[row]
        assert mask[row, :length].all() and not mask[row, length:].any()
        assert (tokens[row, length:] == pad_id).all()
        assert (np.asarray(out.response_logprobs)[row, length:] == 0).all()
        hits = np.flatnonzero(tokens[row, :length] == eos)
        if length < 16:  # stopped by EOS: exactly one, at the end
            assert hits.tolist() == [length - 1]
        else:
            assert hits.size == 0 or hits.tolist() == [15]
        # Before the stop the tokens equal the EOS-free run (same key, same draws).
        np.testing.assert_array_equal(
            tokens[row, :length], np.asarray(free.response_tokens)[row, :length]
        )
    assert int(out.num_steps) == lengths.max()

    # Every token is an EOS: the loop ends after one step although 16 were allowed.
    everything = toy_sampler(eos_ids=tuple(range(VOCAB)), pad_id=pad_id)
    out = everything.generate(PARAMS, prompts, jax.random.key(5), n=N, max_new_tokens=16)
    assert int(out.num_steps) == 1
    assert np.asarray(out.response_mask).sum(1).tolist() == [1] * (NUM_PROMPTS * N)
    assert (np.asarray(out.response_tokens)[:, 1:] == pad_id).all()


def test_max_new_tokens_respected():
    sampler = shared_sampler()
    prompts = random_prompts(np.random.default_rng(5), NUM_PROMPTS, 1, 5)
    out = sampler.generate(PARAMS, prompts, jax.random.key(0), n=N, max_new_tokens=5)
    compiles = sampler.num_compiles
    assert out.response_tokens.shape == (NUM_PROMPTS * N, 5)
    assert int(out.num_steps) == 5
    assert np.asarray(out.response_mask).all()
    # max_new_tokens is traced: 5 and 9 share the 16 bucket and one compilation.
    out = sampler.generate(PARAMS, prompts, jax.random.key(0), n=N, max_new_tokens=9)
    assert out.response_tokens.shape == (NUM_PROMPTS * N, 9) and int(out.num_steps) == 9
    assert sampler.num_compiles == compiles


def test_reproducible_with_key():
    sampler = shared_sampler()
    prompts = random_prompts(np.random.default_rng(6), NUM_PROMPTS, 2, 10)
    kwargs = dict(n=N, max_new_tokens=16)
    a = sampler.generate(PARAMS, prompts, jax.random.key(11), **kwargs)
    b = sampler.generate(PARAMS, prompts, jax.random.key(11), **kwargs)
    c = sampler.generate(PARAMS, prompts, jax.random.key(12), **kwargs)
    np.testing.assert_array_equal(a.response_tokens, b.response_tokens)
    np.testing.assert_array_equal(a.response_logprobs, b.response_logprobs)
    assert (np.asarray(a.response_tokens) != np.asarray(c.response_tokens)).any()
    # The n samples of one prompt differ from each other.
    assert (np.asarray(a.response_tokens[0]) != np.asarray(a.response_tokens[1])).any()


def test_cache_stages_do_not_change_samples():
    """Decoding over growing caches (3 stages of a 16-token bucket) draws the same tokens, with
    the same logprobs and early stop, as one loop over the full cache."""
    prompts = random_prompts(np.random.default_rng(8), NUM_PROMPTS, 1, 12)
    kwargs = dict(n=N, max_new_tokens=14, temperature=0.8)
    one = toy_sampler(cache_stages=1, eos_ids=(3,))
    one = one.generate(PARAMS, prompts, jax.random.key(5), **kwargs)
    staged = toy_sampler(cache_stages=3, eos_ids=(3,))
    out = staged.generate(PARAMS, prompts, jax.random.key(5), **kwargs)
    assert (np.asarray(one.response_lengths) < 14).any()  # some rows stop at EOS
    np.testing.assert_array_equal(out.response_tokens, one.response_tokens)
    np.testing.assert_array_equal(out.response_mask, one.response_mask)
    np.testing.assert_allclose(out.response_logprobs, one.response_logprobs, atol=1e-6)
    assert int(out.num_steps) == int(one.num_steps) and staged.num_compiles == 1
    with pytest.raises(ValueError, match="cache_stages"):
        toy_sampler(cache_stages=0)


def test_groups_are_contiguous_and_prompts_row_aligned():
    sampler = shared_sampler()
    prompts = [[1, 2, 3], [4, 5], [6], [7, 8, 9, 10]]
    for greedy in (True, False):
        out = sampler.generate(PARAMS, prompts, jax.random.key(0), n=N, max_new_tokens=16,
                               greedy=greedy)
        tokens, mask = np.asarray(out.prompt_tokens), np.asarray(out.prompt_mask)
        for row in range(NUM_PROMPTS * N):
            assert tokens[row][mask[row] > 0].tolist() == prompts[row // N]
    # Greedy: the n samples of a prompt are identical.
    out = sampler.generate(PARAMS, prompts, jax.random.key(0), n=N, max_new_tokens=16, greedy=True)
    groups = np.asarray(out.response_tokens).reshape(NUM_PROMPTS, N, 16)
    assert (groups == groups[:, :1]).all()


def test_padded_array_prompts_equal_token_lists():
    sampler = shared_sampler()
    prompts = [[5, 6, 7, 8], [9, 10], [11], [12, 13, 14]]
    right_padded = np.array([[5, 6, 7, 8], [9, 10, 0, 0], [11, 0, 0, 0], [12, 13, 14, 0]])
    mask = (np.arange(4)[None, :] < np.array([4, 2, 1, 3])[:, None]).astype(np.int32)
    a = sampler.generate(PARAMS, prompts, jax.random.key(2), n=N, max_new_tokens=16)
    b = sampler.generate(PARAMS, right_padded, jax.random.key(2), n=N, max_new_tokens=16,
                         prompt_mask=mask)
    np.testing.assert_array_equal(a.response_tokens, b.response_tokens)
    with pytest.raises(ValueError, match="prompt_mask"):
        sampler.generate(PARAMS, right_padded, jax.random.key(2), max_new_tokens=16)


def test_prompt_too_long_names_the_prompt():
    sampler = toy_sampler(max_len=64)
    prompts = [[1] * 10, [2] * 60]
    with pytest.raises(ValueError, match=r"prompt 1 has 60 tokens.*max_new_tokens=8.*max_len=64"):
        sampler.generate(PARAMS, prompts, jax.random.key(0), max_new_tokens=8)
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        sampler.generate(PARAMS, [[]], jax.random.key(0), max_new_tokens=8)
    # Near the limit the buckets shrink to fit instead of failing: 50 + 14 = 64.
    out = sampler.generate(PARAMS, [[1] * 50], jax.random.key(0), max_new_tokens=14)
    assert out.prompt_tokens.shape == (1, 50) and out.response_tokens.shape == (1, 14)


def test_no_recompilation_within_a_bucket():
    sampler = shared_sampler()
    rng = np.random.default_rng(8)
    prompts = random_prompts(rng, NUM_PROMPTS, 1, 16)
    sampler.generate(PARAMS, prompts, jax.random.key(0), n=N, max_new_tokens=16)
    compiles = sampler.num_compiles
    for step in range(4):  # lengths 1..16 all land in the 16 bucket; temperature is traced
        prompts = random_prompts(rng, NUM_PROMPTS, 1, 16)
        sampler.generate(
            PARAMS, prompts, jax.random.key(step), n=N, max_new_tokens=16, temperature=0.5 + step
        )
    assert sampler.num_compiles == compiles
    # New weights, same structure: sampled from without recompiling, and they are what is used.
    old = sampler.generate(PARAMS, prompts, jax.random.key(9), n=N, max_new_tokens=16)
    new = sampler.generate(toy_params(seed=1), prompts, jax.random.key(9), n=N, max_new_tokens=16)
    again = sampler.generate(PARAMS, prompts, jax.random.key(9), n=N, max_new_tokens=16)
    assert sampler.num_compiles == compiles
    assert (np.asarray(new.response_tokens) != np.asarray(old.response_tokens)).any()
    np.testing.assert_array_equal(again.response_tokens, old.response_tokens)
    np.testing.assert_array_equal(again.response_logprobs, old.response_logprobs)


def test_hundred_batches_compile_once_per_bucket():
    """100 batches of 8 prompts whose longest has 4-60 tokens, 16 new tokens: 3 compilations.

    The prompt buckets are 16, 32 and 64; every batch lands in one of them.
    """
    sampler = toy_sampler()
    rng = np.random.default_rng(9)
    for step in range(100):
        prompts = random_prompts(rng, 8, 1, int(rng.integers(4, 61)))
        sampler.generate(PARAMS, prompts, jax.random.key(step), n=2, max_new_tokens=16)
    assert sampler.num_compiles == 3


# ---------------------------------------------------------------- rl_jax.models vs transformers

HF_VOCAB = 320
HF_EOS, HF_PAD = 2, 0


def tiny_hf_model(model_type: str):
    """A random float32 transformers Qwen2 (tied, qkv bias) or Llama with O(1) logits."""
    import torch
    import transformers

    config_class = {"qwen2": transformers.Qwen2Config, "llama": transformers.LlamaConfig}
    config = config_class[model_type](
        vocab_size=HF_VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        initializer_range=0.1,
        tie_word_embeddings=model_type == "qwen2",
        bos_token_id=1,
        eos_token_id=HF_EOS,
        pad_token_id=HF_PAD,
    )
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


@pytest.mark.slow
@pytest.mark.parametrize("model_type", ["qwen2", "llama"])
def test_greedy_matches_transformers(model_type, tmp_path):
    """Greedy tokens equal transformers generate(do_sample=False) for left-padded prompts.

    The EOS id is a token that row 1 emits greedily at step 10, so one row stops early on both
    sides and the padding after EOS is compared too.
    """
    import torch

    from rl_jax.models import apply_lm, load_causal_lm

    hf_model = tiny_hf_model(model_type)
    hf_model.save_pretrained(tmp_path)
    model = load_causal_lm(tmp_path)
    rng = np.random.default_rng(0)
    prompts = [list(rng.integers(3, HF_VOCAB, length)) for length in (5, 12, 1, 9)]
    num_new = 32

    def hf_generate(tokens: np.ndarray, mask: np.ndarray, eos: int) -> np.ndarray:
        with torch.no_grad():
            out = hf_model.generate(
                input_ids=torch.from_numpy(tokens.astype(np.int64)),
                attention_mask=torch.from_numpy(mask.astype(np.int64)),
                do_sample=False,
                max_new_tokens=num_new,
                eos_token_id=eos,
                pad_token_id=HF_PAD,
            )
        new = out[:, tokens.shape[1] :].numpy()
        # transformers stops once every row has ended; finished rows get pad_token_id.
        return np.pad(new, ((0, 0), (0, num_new - new.shape[1])), constant_values=HF_PAD)

    tokens, mask = Sampler.from_model(model, pad_id=HF_PAD).prepare_prompts(prompts, num_new)[:2]
    eos = int(hf_generate(tokens, mask, HF_EOS)[1, 10])
    hf_tokens = hf_generate(tokens, mask, eos)
    assert (hf_tokens == eos).sum(1)[1] == 1

    sampler = Sampler.from_model(model, eos_ids=(eos,), pad_id=HF_PAD)
    out = sampler.generate(nnx.state(model), prompts, jax.random.key(0), max_new_tokens=num_new,
                           greedy=True)
    np.testing.assert_array_equal(out.prompt_tokens, tokens)
    np.testing.assert_array_equal(np.asarray(out.response_tokens), hf_tokens)
    assert int(out.response_lengths[1]) <= 11

    # The cached decode's logprobs equal a full forward without a cache.
    graphdef, state = nnx.split(model)
    all_tokens = jnp.concatenate([out.prompt_tokens, out.response_tokens], axis=1)
    all_mask = jnp.concatenate([out.prompt_mask, out.response_mask], axis=1)
    logits, _ = apply_lm(graphdef, state, all_tokens, positions_from_mask(all_mask), all_mask)
    prompt_len = tokens.shape[1]
    log_probs = jax.nn.log_softmax(logits[:, prompt_len - 1 : -1], axis=-1)
    expected = np.take_along_axis(np.asarray(log_probs), hf_tokens[..., None], -1)[..., 0]
    response_mask = np.asarray(out.response_mask).astype(bool)
    np.testing.assert_allclose(
        np.asarray(out.response_logprobs)[response_mask], expected[response_mask], atol=1e-4
    )


# ---------------------------------------------------------------- the sampler is not re-pointed


def sampler_attribute_assignments(source: str) -> list[str]:
    """The targets ``<...>sampler.<attr> = ...`` (also augmented, annotated, in tuples) and the
    ``setattr(<...>sampler, ...)`` calls of a module's source."""
    def is_sampler(node: ast.AST) -> bool:
        name = node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", "")
        return name.lower().endswith("sampler")

    found = []
    for node in ast.walk(ast.parse(source)):
        targets = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        elif (isinstance(node, ast.Call) and getattr(node.func, "id", "") == "setattr"
              and node.args and is_sampler(node.args[0])):
            found.append(ast.unparse(node))
        while targets:
            target = targets.pop()
            if isinstance(target, ast.Tuple | ast.List):
                targets += target.elts
            elif isinstance(target, ast.Attribute) and is_sampler(target.value):
                found.append(ast.unparse(target))
    return found


def test_no_module_assigns_a_sampler_attribute():
    """Nothing under rl_jax/ re-points a sampler after construction: the weights go into each
    call and the mesh into the constructor."""
    # The check finds the old ways (negative controls).
    old = ("ctx.sampler.params = params\nsampler.params, sampler.mesh = p, m\n"
           "self.sampler.eos_ids += (2,)\nsetattr(ctx.sampler, 'mesh', m)\n")
    assert sampler_attribute_assignments(old) == [
        "ctx.sampler.params", "sampler.mesh", "sampler.params", "self.sampler.eos_ids",
        "setattr(ctx.sampler, 'mesh', m)"]
    root = Path(__file__).resolve().parents[1] / "rl_jax"
    files = sorted(root.rglob("*.py"))
    assert len(files) > 20
    found = {str(f.relative_to(root)): sampler_attribute_assignments(f.read_text())
             for f in files}
    assert {f: targets for f, targets in found.items() if targets} == {}


def test_mesh_is_fixed_at_construction():
    mesh = parallel.make_mesh(devices=jax.devices()[:2])
    sampler = toy_sampler(mesh=mesh)
    assert sampler.mesh is mesh and toy_sampler().mesh is None
    with pytest.raises(AttributeError):
        sampler.mesh = None
    assert not hasattr(sampler, "params")
    # Rows split over the 2 devices: the same samples as on one device.
    prompts = random_prompts(np.random.default_rng(10), 3, 2, 10)
    one = shared_sampler().generate(PARAMS, prompts, jax.random.key(1), n=N, max_new_tokens=16)
    two = sampler.generate(PARAMS, prompts, jax.random.key(1), n=N, max_new_tokens=16)
    np.testing.assert_array_equal(two.response_tokens, one.response_tokens)
