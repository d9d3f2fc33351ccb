"""Chunked LM-head log-probs and entropy: equal to the full-logits path, and no [B, T, V] buffer."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import rl_jax
from rl_jax import models, parallel
from rl_jax.algorithm import RolloutBatch, TrainBatch, build_rl_step
from rl_jax.chunked import chunked_token_stats, head_logits
from rl_jax.trainers.sft import make_sft_loss
from tests.testing_utils import rl_settings

RTOL, ATOL = 1e-5, 1e-6


def _close(got, want, rtol=RTOL, atol=ATOL):
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=rtol, atol=atol)


@pytest.mark.parametrize("vocab_major", [True, False])
@pytest.mark.parametrize("chunk_size", [1, 3, 7, 64])
def test_stats_and_grads_equal_full_logits(vocab_major, chunk_size):
    rng = np.random.default_rng(0)
    batch, time, width, vocab, temperature = 3, 7, 5, 11, 0.7
    hidden = jnp.asarray(rng.normal(size=(batch, time, width)), jnp.float32)
    shape = (vocab, width) if vocab_major else (width, vocab)
    head = jnp.asarray(rng.normal(size=shape), jnp.float32)
    tokens = jnp.asarray(rng.integers(0, vocab, (batch, time)), jnp.int32)
    weights = jnp.asarray(rng.normal(size=(batch, time)), jnp.float32)

    def full(hidden, head):
        logits = head_logits(hidden, head, vocab_major=vocab_major)
        logprobs = rl_jax.token_logprobs(logits, tokens, temperature=temperature)
        return (weights * logprobs).sum(), (logprobs, rl_jax.entropy(logits / temperature))

    def chunked(hidden, head):
        logprobs, ent = chunked_token_stats(
            hidden, head, tokens, vocab_major=vocab_major, temperature=temperature,
            chunk_size=chunk_size, with_entropy=True,
        )
        return (weights * logprobs).sum(), (logprobs, ent)

    want = jax.value_and_grad(full, argnums=(0, 1), has_aux=True)(hidden, head)
    got = jax.jit(jax.value_and_grad(chunked, argnums=(0, 1), has_aux=True))(hidden, head)
    _close(got, want)


def test_entropy_has_no_gradient_and_logprobs_match_numpy():
    rng = np.random.default_rng(1)
    hidden = jnp.asarray(rng.normal(size=(2, 4, 3)), jnp.float32)
    head = jnp.asarray(rng.normal(size=(3, 6)), jnp.float32)
    tokens = jnp.asarray(rng.integers(0, 6, (2, 4)), jnp.int32)
    grad = jax.grad(lambda h: chunked_token_stats(
        h, head, tokens, vocab_major=False, chunk_size=3, with_entropy=True)[1].sum())(hidden)
    assert float(jnp.abs(grad).max()) == 0.0
    z = np.asarray(hidden, np.float64) @ np.asarray(head, np.float64) / 2.0
    log_softmax = z - np.log(np.exp(z).sum(-1, keepdims=True))
    want = np.take_along_axis(log_softmax, np.asarray(tokens)[..., None], -1)[..., 0]
    got, ent = chunked_token_stats(hidden, head, tokens, vocab_major=False, temperature=2.0,
                                   chunk_size=3)
    assert ent is None
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_rejects_chunk_size_zero():
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_token_stats(jnp.zeros((1, 2, 3)), jnp.zeros((3, 4)), jnp.zeros((1, 2), jnp.int32),
                            vocab_major=False, chunk_size=0)


# --- the RL and SFT losses on a tiny model ------------------------------------------------------

BATCH, PROMPT, RESPONSE, VOCAB = 4, 5, 7, 40


def _model(model_type):
    # qwen2 ties the embeddings (head = embedding^T), llama has an lm_head kernel.
    config = models.tiny_config(model_type, vocab_size=VOCAB, hidden_size=16,
                                intermediate_size=32, num_layers=1, num_heads=2, num_kv_heads=1)
    assert config.tie_word_embeddings == (model_type == "qwen2")
    return nnx.split(models.CausalLM(config, rngs=nnx.Rngs(0)))


def _rl_batch():
    """Left-padded prompts, right-padded responses (one empty response)."""
    rng = np.random.default_rng(2)
    prompt_mask = np.ones((BATCH, PROMPT), np.float32)
    prompt_mask[0, :2] = prompt_mask[2, :4] = 0
    response_mask = np.ones((BATCH, RESPONSE), np.float32)
    response_mask[1, 3:] = response_mask[2, 5:] = 0
    response_mask[3, :] = 0
    mask = np.concatenate([prompt_mask, response_mask], 1)
    return {
        "tokens": (rng.integers(1, VOCAB, (BATCH, PROMPT + RESPONSE)) * mask).astype(np.int32),
        "mask": mask,
        "response_mask": response_mask,
        "sampler_logprobs": rng.uniform(-4.5, -3.0, (BATCH, RESPONSE)).astype(np.float32),
        "scores": np.asarray([1, 0, 0, 1], np.float32),
        "truncated": np.zeros(BATCH, np.float32),
    }


@pytest.mark.slow
@pytest.mark.parametrize("model_type", ["qwen2", "llama"])
@pytest.mark.parametrize("options", [
    {},  # single pass: old log-probs are the loss's own, entropy in the loss's metrics
    {"num_minibatches": 2, "kl_loss_coef": 0.1},  # prepare computes old and reference log-probs
])
def test_rl_loss_and_prepare_equal_unchunked(model_type, options):
    graphdef, params = _model(model_type)
    batch = _rl_batch()
    params = {"policy": params}
    ref_params = jax.tree.map(lambda x: x * 1.01, params["policy"])
    results = []
    for chunk in (0, 3):
        settings = rl_settings(estimator="grpo", group_size=2, temperature=0.7, max_len=RESPONSE,
                               logits_chunk=chunk, **{"num_minibatches": 1, **options})
        rl_step = build_rl_step(settings, None, graphdef)
        ref = ref_params if settings.needs_reference else None
        train, prep_metrics = rl_step.prepare(params, ref, RolloutBatch(**batch),
                                              jnp.float32(0.0))
        grad_fn = jax.jit(jax.value_and_grad(rl_step.loss, has_aux=True))
        (loss, metrics), grads = grad_fn(params, train)
        results.append((train, prep_metrics, loss, metrics, grads))
    _close(results[1], results[0])
    entropy = results[0][3 if not options else 1]["entropy"]
    assert 0.0 < float(entropy) < np.log(VOCAB)


@pytest.mark.slow
@pytest.mark.parametrize("model_type", ["qwen2", "llama"])
def test_sft_loss_equals_unchunked(model_type):
    graphdef, params = _model(model_type)
    rng = np.random.default_rng(3)
    lengths, width = [9, 6, 12], 12
    mask = (np.arange(width)[None] < np.asarray(lengths)[:, None]).astype(np.float32)
    loss_mask = mask * (np.arange(width)[None] >= 3)  # a 3-token prompt
    batch = {"tokens": (rng.integers(1, VOCAB, mask.shape) * mask).astype(np.int32),
             "mask": mask, "loss_mask": loss_mask}
    want = jax.value_and_grad(make_sft_loss(graphdef, 0), has_aux=True)({"policy": params}, batch)
    got = jax.jit(jax.value_and_grad(make_sft_loss(graphdef, 5), has_aux=True))(
        {"policy": params}, batch)
    _close(got, want)


# --- memory: no [batch, time, vocab] buffer at a real vocabulary ---------------------------------

BIG_VOCAB, B, P, R, CHUNK, HIDDEN = 151_936, 2, 16, 32, 4, 16


def _compiled_rl_grad(logits_chunk):
    config = models.tiny_config("qwen2", vocab_size=BIG_VOCAB, hidden_size=HIDDEN,
                                intermediate_size=32, num_layers=1, num_heads=2, num_kv_heads=1)
    graphdef, params = nnx.eval_shape(lambda: nnx.split(models.CausalLM(config,
                                                                        rngs=nnx.Rngs(0))))
    settings = rl_settings(estimator="grpo", group_size=2, temperature=0.7,
                           logits_chunk=logits_chunk, num_minibatches=1)
    batch = {
        "tokens": jax.ShapeDtypeStruct((B, P + R), jnp.int32),
        "mask": jax.ShapeDtypeStruct((B, P + R), jnp.float32),
        "response_mask": jax.ShapeDtypeStruct((B, R), jnp.float32),
        "sampler_logprobs": jax.ShapeDtypeStruct((B, R), jnp.float32),
        "advantages": jax.ShapeDtypeStruct((B, R), jnp.float32),
    }
    grad_fn = jax.value_and_grad(build_rl_step(settings, None, graphdef).loss, has_aux=True)
    return jax.jit(grad_fn).lower({"policy": params}, TrainBatch(**batch)).compile()


def _vocab_arrays(hlo_text):
    """The non-vocab extent of every f32 array with a 151936 axis in the HLO."""
    sizes = set()
    for dims in re.findall(r"f32\[([0-9,]+)\]", hlo_text):
        shape = [int(d) for d in dims.split(",")]
        if BIG_VOCAB in shape:
            shape.remove(BIG_VOCAB)
            sizes.add(int(np.prod(shape)))
    return sizes


@pytest.mark.slow
def test_chunked_rl_gradient_holds_no_batch_time_vocab_buffer():
    full_bytes = B * (P + R) * BIG_VOCAB * 4  # the logits of the whole batch, 58 MB
    unchunked, chunked = _compiled_rl_grad(0), _compiled_rl_grad(CHUNK)
    # The negative control: the full path holds [B, P + R, V] logits (and more like them).
    unchunked_temp = unchunked.memory_analysis().temp_size_in_bytes
    assert unchunked_temp > 2 * full_bytes
    assert max(_vocab_arrays(unchunked.as_text())) >= B * (P + R)
    # Chunked: the [V, hidden] head gradient and a few [B, CHUNK, V] chunks (19.7 MB measured).
    chunked_temp = chunked.memory_analysis().temp_size_in_bytes
    head_bytes, chunk_bytes = BIG_VOCAB * HIDDEN * 4, B * CHUNK * BIG_VOCAB * 4
    assert chunked_temp < head_bytes + 3 * chunk_bytes < full_bytes / 2
    assert chunked_temp < unchunked_temp / 5
    assert max(_vocab_arrays(chunked.as_text())) <= max(B * CHUNK, HIDDEN) < B * R


@pytest.mark.slow
def test_data_parallel_chunks_stay_split():
    """Over 8 fake devices each holds [B / 8, CHUNK, V] chunks, and the gradient is the same."""
    config = models.tiny_config("qwen2", vocab_size=BIG_VOCAB, hidden_size=HIDDEN,
                                intermediate_size=32, num_layers=1, num_heads=2, num_kv_heads=1)
    graphdef, params = nnx.split(models.CausalLM(config, rngs=nnx.Rngs(0)))
    settings = rl_settings(estimator="grpo", group_size=2, temperature=0.7, logits_chunk=CHUNK,
                           num_minibatches=1)
    rows, rng = 8, np.random.default_rng(4)
    mask = np.ones((rows, 4 + 6), np.float32)
    mask[::2, :2] = 0
    batch = TrainBatch(tokens=(rng.integers(1, BIG_VOCAB, mask.shape) * mask).astype(np.int32),
                       mask=mask, response_mask=mask[:, 4:],
                       sampler_logprobs=np.full((rows, 6), -12.0, np.float32),
                       advantages=rng.normal(size=(rows, 6)).astype(np.float32))
    grad_fn = jax.jit(jax.value_and_grad(build_rl_step(settings, None, graphdef).loss,
                                         has_aux=True))
    want = grad_fn({"policy": params}, batch)
    mesh = parallel.make_mesh()
    sharded = parallel.shard_batch(batch, mesh)
    params = jax.device_put({"policy": params}, parallel.replicated(mesh))
    got = grad_fn(params, sharded)
    _close(got, want, rtol=1e-5, atol=1e-7)
    hlo = grad_fn.lower(params, sharded).compile().as_text()
    assert max(_vocab_arrays(hlo)) <= max(rows // 8 * CHUNK, HIDDEN)
