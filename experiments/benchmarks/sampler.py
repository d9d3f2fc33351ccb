"""Throughput of rl_jax.rollout.Sampler against transformers `generate` on the same model and batch.

Run:
  python experiments/benchmark_sampler.py            # Qwen2-shaped 3.4M model, 8 x 8 x 64 tokens
  python experiments/benchmark_sampler.py --reps 5 --new_tokens 128

A random Qwen2ForCausalLM (float32, tied embeddings) is built with transformers, saved, and loaded
into rl_jax, so both samplers run identical weights. Both sample at temperature 1 with no
top-k/top-p and EOS disabled, so every row generates exactly --new_tokens tokens. JAX is compiled
(warm-up call) before timing; torch runs float32 on --threads threads. The script also measures
this CPU's float32 matmul rate with a large jnp.dot and reports the fraction of it the sampler
reaches, using the model FLOPs per generated token.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num_prompts", type=int, default=8)
    parser.add_argument("--samples", type=int, default=8, help="samples per prompt")
    parser.add_argument("--prompt_len", type=int, default=16)
    parser.add_argument("--new_tokens", type=int, default=64)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--intermediate", type=int, default=768)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv_heads", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--matmul_size", type=int, default=2048)
    parser.add_argument("--skip_transformers", action="store_true")
    return parser.parse_args()


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


def build_models(args: argparse.Namespace, directory: str):
    """(transformers model, rl_jax CausalLM) with the same random weights."""
    import torch
    import transformers

    from rl_jax.models import load_causal_lm

    hf_config = transformers.Qwen2Config(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
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


def rl_jax_runner(model, prompts: list[list[int]], args: argparse.Namespace):
    """A function running one blocking Sampler.generate call; compiled (warmed up) here."""
    from rl_jax.rollout import Sampler

    sampler = Sampler.from_model(model, eos_ids=(), pad_id=0)
    params = nnx.state(model)

    def run(seed: int = 0):
        out = sampler.generate(
            params, prompts, jax.random.key(seed), n=args.samples, max_new_tokens=args.new_tokens
        )
        return jax.block_until_ready(out)

    start = time.perf_counter()
    out = run()
    print(f"rl_jax warm-up (compile + run): {time.perf_counter() - start:.2f} s")
    assert int(out.num_generated_tokens) == len(prompts) * args.samples * args.new_tokens

    def checked_run():
        run()
        assert sampler.num_compiles == 1

    return checked_run


def forward_only_runner(model, args: argparse.Namespace):
    """The model's cached decode steps alone (no sampling, no prefill): a lower bound for ours.

    Same batch, cache length and number of steps as the sampler's loop; each step feeds a token
    derived from the previous logits so no step can be skipped.
    """
    from rl_jax.models import apply_lm, init_decode_cache
    from rl_jax.rollout import bucket_length

    graphdef, state = nnx.split(model)
    batch = args.num_prompts * args.samples
    cache_len = bucket_length(args.prompt_len, 16) + bucket_length(args.new_tokens, 16)
    key_mask = jnp.ones((batch, cache_len), jnp.int32)

    @jax.jit
    def loop(state):
        cache = init_decode_cache(model.config, batch, cache_len)  # as Sampler.from_model

        def step(i, carry):
            cache, tokens = carry
            positions = jnp.full((batch, 1), args.prompt_len, jnp.int32) + i
            logits, cache = apply_lm(
                graphdef, state, tokens, positions, key_mask, cache, args.prompt_len + i
            )
            return cache, jnp.argmax(logits, axis=-1).astype(jnp.int32)

        tokens = jnp.zeros((batch, 1), jnp.int32)
        return jax.lax.fori_loop(0, args.new_tokens, step, (cache, tokens))[1]

    jax.block_until_ready(loop(state))
    return lambda: jax.block_until_ready(loop(state))


def transformers_runner(hf_model, prompts: list[list[int]], args: argparse.Namespace):
    """A function running one `generate` call (temperature 1, no top-k/top-p), warmed up here."""
    import torch

    torch.set_num_threads(args.threads)
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
                max_new_tokens=args.new_tokens,
                num_return_sequences=args.samples,
                pad_token_id=0,
            )
        assert out.shape == (len(prompts) * args.samples, args.prompt_len + args.new_tokens)

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


def main() -> None:
    args = parse_args()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {len(jax.devices())} device(s)")
    peak = matmul_gflops(args.matmul_size)
    print(f"float32 matmul {args.matmul_size}^3: {peak:.1f} GFLOP/s")

    rng = np.random.default_rng(0)
    prompts = [
        [int(t) for t in rng.integers(3, args.vocab, args.prompt_len)]
        for _ in range(args.num_prompts)
    ]
    num_tokens = args.num_prompts * args.samples * args.new_tokens
    with tempfile.TemporaryDirectory() as directory:
        hf_model, model = build_models(args, directory)
    num_params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    context = args.prompt_len + (args.new_tokens + 1) / 2
    flops = flops_per_token(model.config, context)
    print(
        f"model: {num_params / 1e6:.2f}M params; {flops / 1e6:.2f} MFLOP per generated token "
        f"(average context {context:.0f})"
    )
    print(
        f"batch: {args.num_prompts} prompts x {args.samples} samples, prompt {args.prompt_len}, "
        f"{args.new_tokens} new tokens = {num_tokens} tokens"
    )

    runners = {
        "rl_jax": rl_jax_runner(model, prompts, args),
        "rl_jax model forward only": forward_only_runner(model, args),
    }
    if not args.skip_transformers:
        runners["transformers"] = transformers_runner(hf_model, prompts, args)
    best = interleaved_best_times(runners, args.reps)
    for name, seconds in best.items():
        rate = num_tokens / seconds
        gflops = rate * flops / 1e9
        print(
            f"{name}: {seconds * 1e3:.1f} ms/call, {seconds * 1e3 / args.new_tokens:.2f} ms/step, "
            f"{rate:,.0f} tokens/s, {gflops:.1f} GFLOP/s = {gflops / peak:.1%} of matmul"
        )
    if "transformers" in best:
        print(f"speed-up rl_jax / transformers: {best['transformers'] / best['rl_jax']:.2f}x")


if __name__ == "__main__":
    main()
