r"""Speed of one GRPO step: completion tokens/s and the time split (sampling / scoring / update).

    python experiments/benchmarks/rl_step.py
    python experiments/benchmarks/rl_step.py --shared_prefix=both --prompt_len=64   # shared vs not

A random Qwen2-shaped model (hidden 256, 4 layers, 4 heads, 2 KV heads, vocab 1024, tied
embeddings, ~3.4M parameters), 8 prompts x 8 samples x 64 new tokens (EOS never ends a response
early), float32. A step is exactly the RL loop's: sample with the jitted KV-cache sampler, score on
the host, ``prepare`` (old and reference log-probs, advantages) and ``update`` (one clipped GRPO
update with the k3 KL term), all jitted.

``--shared_prefix=both`` times the plain and the shared-prefix step (``rl.shared_prefix``: each
prompt's forward once per group) in the same run on the same sampled batches, in alternating
order, each with its own train state; it prints the prompts' share of the tokens and each compiled
update's FLOPs (``cost_analysis``).

rl_jax's figures only: no ratio to another library. A comparison with TRL's ``GRPOTrainer``,
measured in the same process on the same model and prompts, is ``experiments/benchmarks/real.py``.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from flax import nnx

from rl_jax import models, parallel
from rl_jax.algorithm import RLSettings, RolloutBatch, build_rl_step
from rl_jax.config import default_config
from rl_jax.rollout import Sampler
from rl_jax.train_state import TrainState

_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps (after 2 warm-up steps).")
_PROMPTS = flags.DEFINE_integer("num_prompts", 8, "Prompts per step.")
_GROUP = flags.DEFINE_integer("group_size", 8, "Samples per prompt.")
_NEW = flags.DEFINE_integer("max_new_tokens", 64, "Tokens per response.")
_PROMPT_LEN = flags.DEFINE_integer("prompt_len", 16, "Prompt tokens.")
_SHARED = flags.DEFINE_enum("shared_prefix", "off", ["off", "on", "both"],
                            "The shared-prefix forward: off, on, or both (alternating).")


def main(argv):
    del argv
    config = models.ModelConfig(
        model_type="qwen2",
        vocab_size=1024,
        hidden_size=256,
        intermediate_size=768,
        num_layers=4,
        num_heads=4,
        num_kv_heads=2,
        attention_bias=True,
        tie_word_embeddings=True,
        max_position_embeddings=256,
    )
    policy = models.CausalLM(config, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(policy)
    num_params = sum(x.size for x in jax.tree.leaves(params))
    # eos_ids=(): every response is max_new_tokens long (a fixed token count a step).
    sampler = Sampler.from_model(policy, eos_ids=(), pad_id=0)
    variants = {"off": (False,), "on": (True,), "both": (False, True)}[_SHARED.value]
    tx = optax.adamw(1e-5)
    mesh = parallel.make_mesh()
    ref_params = jax.tree.map(jnp.copy, params)
    steps, states = {}, {}
    for shared in variants:
        settings = dataclasses.replace(  # the default config's options, one update a rollout
            RLSettings.from_config(default_config()),
            estimator="grpo",
            group_size=_GROUP.value,
            temperature=1.0,
            kl_loss_coef=0.04,
            max_len=_NEW.value,
            num_minibatches=1,
            shared_prefix=shared,
        )
        state = TrainState(
            jnp.zeros((), jnp.int32), {"policy": params}, tx.init({"policy": params})
        )
        sharding = parallel.param_sharding(state, mesh)
        states[shared] = jax.device_put(jax.tree.map(jnp.copy, state), sharding)
        steps[shared] = build_rl_step(settings, tx, graphdef, mesh=mesh, state_sharding=sharding)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, 1024, size=_PROMPT_LEN.value) for _ in range(_PROMPTS.value)]

    times = {shared: [] for shared in variants}
    flops = {}
    for step in range(2 + _STEPS.value):
        t0 = time.perf_counter()
        out = sampler.generate(
            states[variants[0]].params["policy"], prompts, jax.random.key(step),
            n=_GROUP.value, max_new_tokens=_NEW.value,
        )
        jax.block_until_ready(out.response_tokens)
        t1 = time.perf_counter()
        response_tokens = np.asarray(out.response_tokens)
        scores = (response_tokens % 7 == 0).mean(1).astype(np.float32)  # a host-side reward
        batch = RolloutBatch(
            tokens=np.concatenate([np.asarray(out.prompt_tokens), response_tokens], 1),
            mask=np.concatenate(
                [np.asarray(out.prompt_mask), np.asarray(out.response_mask)], 1
            ).astype(np.float32),
            response_mask=np.asarray(out.response_mask, np.float32),
            sampler_logprobs=np.asarray(out.response_logprobs),
            scores=scores,
            truncated=np.ones(len(scores), np.float32),  # eos_ids=(): no response ends
        )
        t2 = time.perf_counter()
        order = variants if step % 2 == 0 else variants[::-1]  # alternate who goes first
        for shared in order:
            arrays = parallel.shard_batch(batch, mesh)
            t3 = time.perf_counter()
            rl_step = steps[shared]
            train_batch, _ = rl_step.prepare(
                states[shared].params, ref_params, arrays, jnp.float32(0.0)
            )
            jax.block_until_ready(train_batch)
            t4 = time.perf_counter()
            if shared not in flops:
                compiled = rl_step.update.lower(states[shared], train_batch).compile()
                flops[shared] = compiled.cost_analysis()["flops"]
            t5 = time.perf_counter()
            states[shared], metrics = rl_step.update(states[shared], train_batch)
            jax.block_until_ready(metrics)
            t6 = time.perf_counter()
            if step >= 2:
                times[shared].append((t1 - t0, t2 - t1, t4 - t3, t6 - t5))
    tokens = _PROMPTS.value * _GROUP.value * _NEW.value
    prompt_len = batch.tokens.shape[1] - _NEW.value  # the sampler's prompt bucket
    print(
        f"model: {num_params:,} parameters; batch {_PROMPTS.value} prompts x {_GROUP.value} "
        f"samples x {_NEW.value} new tokens; {jax.device_count()} {jax.devices()[0].platform} "
        "device(s)"
    )
    print(
        f"prompt: {prompt_len} tokens (bucket); prompt share of the plain layout's tokens "
        f"{prompt_len / (prompt_len + _NEW.value):.1%}; the shared layout runs "
        f"{_PROMPTS.value * (prompt_len + _GROUP.value * _NEW.value):,} tokens instead of "
        f"{_PROMPTS.value * _GROUP.value * (prompt_len + _NEW.value):,}"
    )
    for shared in variants:
        sample, score, logprob, upd = np.median(np.asarray(times[shared]), axis=0)
        total = sample + score + logprob + upd
        name = "shared prefix" if shared else "plain"
        print(
            f"[{name}] step: {total:.3f} s (median of {_STEPS.value}) -> "
            f"{tokens / total:,.0f} completion tokens/s; update {flops[shared] / 1e9:.2f} GFLOP "
            "(compiled, per device)"
        )
        for label, t in [
            ("sampling", sample),
            ("scoring (host)", score),
            ("old+ref logprobs", logprob),
            ("update (fwd+bwd+adamw)", upd),
        ]:
            print(f"  {label:<24} {t:.3f} s  {100 * t / total:5.1f}%")


if __name__ == "__main__":
    app.run(main)
