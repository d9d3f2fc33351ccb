r"""Throughput of rl_jax's Sampler against transformers `generate` on the same model and batch.

    python experiments/benchmarks/sampler.py          # Qwen2-shaped 3.4M model, 8 x 8 x 64 tokens
    python experiments/benchmarks/sampler.py --reps=5 --new_tokens=128

A random Qwen2ForCausalLM (float32, tied embeddings) is built with transformers, saved, and loaded
into rl_jax, so both samplers run identical weights. Both sample at temperature 1 with no
top-k/top-p and EOS disabled, so every row generates exactly --new_tokens tokens. JAX is compiled
(warm-up call) before timing; torch runs float32 on --threads threads. The script also measures
this CPU's float32 matmul rate with a large jnp.dot and reports the fraction of it the sampler
reaches, using the model FLOPs per generated token.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

_PROMPTS = flags.DEFINE_integer("num_prompts", 8, "Prompts per call.")
_SAMPLES = flags.DEFINE_integer("samples", 8, "Samples per prompt.")
_PROMPT_LEN = flags.DEFINE_integer("prompt_len", 16, "Prompt tokens.")
_NEW = flags.DEFINE_integer("new_tokens", 64, "Tokens generated per row.")
_REPS = flags.DEFINE_integer("reps", 5, "Timed rounds (the best is shown).")
_THREADS = flags.DEFINE_integer("threads", 2, "torch threads.")
_HIDDEN = flags.DEFINE_integer("hidden", 256, "Hidden size.")
_INTERMEDIATE = flags.DEFINE_integer("intermediate", 768, "MLP intermediate size.")
_LAYERS = flags.DEFINE_integer("layers", 4, "Decoder layers.")
_HEADS = flags.DEFINE_integer("heads", 4, "Attention heads.")
_KV_HEADS = flags.DEFINE_integer("kv_heads", 2, "Key/value heads.")
_VOCAB = flags.DEFINE_integer("vocab", 1024, "Vocabulary size.")
_MATMUL = flags.DEFINE_integer("matmul_size", 2048, "Side of the matmul that sets the peak rate.")
_SKIP_HF = flags.DEFINE_bool("skip_transformers", False, "Time rl_jax only.")


def best_time(fn: Callable[[], object], reps: int) -> float:
    """Smallest wall time of `reps` calls of fn (fn must block until its result is ready)."""
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_gflops(size: int, reps: int = 5) -> float:
    """Measured float32 GFLOP/s of a jitted [size, size] @ [size, size] on the default device."""
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (size, size), jnp.float32)
    dot = jax.jit(jnp.dot)
    dot(a, b).block_until_ready()
    seconds = best_time(lambda: dot(a, b).block_until_ready(), reps)
    return 2 * size**3 / seconds / 1e9


def flops_per_token(config, context: float) -> float:
    """Forward FLOPs for one generated token at an average attended context of `context` slots.

    2 * (non-embedding parameters) + 2 * vocab * hidden (LM head) + per layer 4 * heads *
    head_dim * context (scores q.k and the weighted sum of values).
    """
    h, d = config.hidden_size, config.head_dim
    attn = h * config.num_heads * d * 2 + h * config.num_kv_heads * d * 2
    mlp = 3 * h * config.intermediate_size
    non_embedding = config.num_layers * (attn + mlp)
    attention = config.num_layers * 4 * config.num_heads * d * context
    return 2 * non_embedding + 2 * config.vocab_size * h + attention


def build_models(directory: str):
    """(transformers model, rl_jax CausalLM) with the same random weights."""
    import torch
    import transformers

    from rl_jax.models import load_causal_lm

    hf_config = transformers.Qwen2Config(
        vocab_size=_VOCAB.value,
        hidden_size=_HIDDEN.value,
        intermediate_size=_INTERMEDIATE.value,
        num_hidden_layers=_LAYERS.value,
        num_attention_heads=_HEADS.value,
        num_key_value_heads=_KV_HEADS.value,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    hf_model = transformers.Qwen2ForCausalLM(hf_config).eval()
    hf_model.save_pretrained(directory)
    hf_model.generation_config.eos_token_id = None  # always generate --new_tokens tokens
    return hf_model, load_causal_lm(directory)


def rl_jax_runner(model, prompts: list[list[int]]):
    """A function running one blocking Sampler.generate call; compiled (warmed up) here."""
    from rl_jax.rollout import Sampler

    sampler = Sampler.from_model(model, eos_ids=(), pad_id=0)
    params = nnx.state(model)

    def run(seed: int = 0):
        out = sampler.generate(
            params, prompts, jax.random.key(seed), n=_SAMPLES.value, max_new_tokens=_NEW.value
        )
        return jax.block_until_ready(out)

    start = time.perf_counter()
    out = run()
    print(f"rl_jax warm-up (compile + run): {time.perf_counter() - start:.2f} s")
    assert int(out.num_generated_tokens) == len(prompts) * _SAMPLES.value * _NEW.value

    def checked_run():
        run()
        assert sampler.num_compiles == 1

    return checked_run


def forward_only_runner(model):
    """The model's cached decode steps alone (no sampling, no prefill): a lower bound for ours.

    Same batch, cache length and number of steps as the sampler's loop; each step feeds a token
    derived from the previous logits so no step can be skipped.
    """
    from rl_jax.models import apply_lm, init_decode_cache
    from rl_jax.rollout import bucket_length

    graphdef, state = nnx.split(model)
    batch = _PROMPTS.value * _SAMPLES.value
    cache_len = bucket_length(_PROMPT_LEN.value, 16) + bucket_length(_NEW.value, 16)
    key_mask = jnp.ones((batch, cache_len), jnp.int32)

    @jax.jit
    def loop(state):
        cache = init_decode_cache(model.config, batch, cache_len)  # as Sampler.from_model

        def step(i, carry):
            cache, tokens = carry
            positions = jnp.full((batch, 1), _PROMPT_LEN.value, jnp.int32) + i
            logits, cache = apply_lm(
                graphdef, state, tokens, positions, key_mask, cache, _PROMPT_LEN.value + i
            )
            return cache, jnp.argmax(logits, axis=-1).astype(jnp.int32)

        tokens = jnp.zeros((batch, 1), jnp.int32)
        return jax.lax.fori_loop(0, _NEW.value, step, (cache, tokens))[1]

    jax.block_until_ready(loop(state))
    return lambda: jax.block_until_ready(loop(state))


def transformers_runner(hf_model, prompts: list[list[int]]):
    """A function running one `generate` call (temperature 1, no top-k/top-p), warmed up here."""
    import torch

    torch.set_num_threads(_THREADS.value)
    input_ids = torch.tensor(prompts, dtype=torch.long)

    def run():
        with torch.no_grad():
            out = hf_model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                max_new_tokens=_NEW.value,
                num_return_sequences=_SAMPLES.value,
                pad_token_id=0,
            )
        assert out.shape == (len(prompts) * _SAMPLES.value, _PROMPT_LEN.value + _NEW.value)

    run()
    return run


def interleaved_best_times(runners: dict[str, Callable[[], object]], reps: int) -> dict[str, float]:
    """Best wall time of each runner over `reps` rounds that alternate between the runners.

    Alternating keeps a burst of load from other processes on this shared CPU from favouring
    one side; the minimum is the least-disturbed run.
    """
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(reps):
        for name, run in runners.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: min(values) for name, values in times.items()}


def main(argv):
    del argv
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {len(jax.devices())} device(s)")
    peak = matmul_gflops(_MATMUL.value)
    print(f"float32 matmul {_MATMUL.value}^3: {peak:.1f} GFLOP/s")

    rng = np.random.default_rng(0)
    prompts = [
        [int(t) for t in rng.integers(3, _VOCAB.value, _PROMPT_LEN.value)]
        for _ in range(_PROMPTS.value)
    ]
    num_tokens = _PROMPTS.value * _SAMPLES.value * _NEW.value
    with tempfile.TemporaryDirectory() as directory:
        hf_model, model = build_models(directory)
    num_params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    context = _PROMPT_LEN.value + (_NEW.value + 1) / 2
    flops = flops_per_token(model.config, context)
    print(
        f"model: {num_params / 1e6:.2f}M params; {flops / 1e6:.2f} MFLOP per generated token "
        f"(average context {context:.0f})"
    )
    print(
        f"batch: {_PROMPTS.value} prompts x {_SAMPLES.value} samples, prompt {_PROMPT_LEN.value}, "
        f"{_NEW.value} new tokens = {num_tokens} tokens"
    )

    runners = {
        "rl_jax": rl_jax_runner(model, prompts),
        "rl_jax model forward only": forward_only_runner(model),
    }
    if not _SKIP_HF.value:
        runners["transformers"] = transformers_runner(hf_model, prompts)
    best = interleaved_best_times(runners, _REPS.value)
    for name, seconds in best.items():
        rate = num_tokens / seconds
        gflops = rate * flops / 1e9
        print(
            f"{name}: {seconds * 1e3:.1f} ms/call, {seconds * 1e3 / _NEW.value:.2f} ms/step, "
            f"{rate:,.0f} tokens/s, {gflops:.1f} GFLOP/s = {gflops / peak:.1%} of matmul"
        )
    if "transformers" in best:
        print(f"speed-up rl_jax / transformers: {best['transformers'] / best['rl_jax']:.2f}x")


if __name__ == "__main__":
    app.run(main)
