r"""Per-device work and time of each part of an RL step on 1, 2, 4 and 8 (fake CPU) devices.

    python experiments/benchmarks/devices.py            # all device counts, one subprocess each
    python experiments/benchmarks/devices.py --devices=8 --child   # one count, JSON lines

For each device count a subprocess starts with
``XLA_FLAGS=--xla_force_host_platform_device_count=<d>``, builds a data-parallel mesh over its
devices and runs the parts of ``run_rl``'s step as ``run_rl`` sets them up: ``sample`` (the
KV-cache sampler on the mesh), ``score`` (a learned reward model), ``prepare`` and
``update`` (2 minibatches, 1 epoch, GRPO with a KL term). For every part it reports, from the
compiled per-device program (``rl_jax.parallel.compiled_work``), the output shape of the largest
dot and XLA's temporary bytes, and the median wall time of a few runs.

Fake devices share this machine's cores, so the times say little about speed-ups; the point is
the work: each device's largest dot and temporaries should shrink as 1/d.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time

from absl import app, flags

_DEVICES = flags.DEFINE_list("devices", ["1", "2", "4", "8"], "Device counts to compare.")
_CHILD = flags.DEFINE_bool("child", False, "Run one device count here (internal).")
_REPS = flags.DEFINE_integer("reps", 5, "Timed runs per part (after one warm-up).")
_PROMPTS = flags.DEFINE_integer("num_prompts", 16, "Prompts per step.")
_GROUP = flags.DEFINE_integer("group_size", 4, "Samples per prompt.")
_NEW = flags.DEFINE_integer("max_new_tokens", 16, "Tokens per response.")


def _timed(fn, reps: int) -> float:
    """Median seconds of ``fn()`` (results blocked on) over ``reps`` runs after a warm-up."""
    import jax

    jax.block_until_ready(fn())
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def child(reps: int) -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import nnx

    from rl_jax import models, parallel
    from rl_jax.algorithm import RLSettings, RolloutBatch, build_rl_step
    from rl_jax.config import default_config
    from rl_jax.learned_reward import LearnedReward
    from rl_jax.rollout import Sampler
    from rl_jax.train_state import init_state

    config = models.tiny_config("qwen2", vocab_size=512, hidden_size=64, intermediate_size=128,
                                num_layers=2, num_heads=4, num_kv_heads=2,
                                max_position_embeddings=128)
    policy = models.CausalLM(config, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(policy)
    mesh = parallel.make_mesh()
    settings = dataclasses.replace(
        RLSettings.from_config(default_config()), estimator="grpo", group_size=_GROUP.value,
        temperature=1.0, max_len=_NEW.value, kl_loss_coef=0.04, num_minibatches=2)
    tx = optax.adam(1e-4)
    state, sharding = init_state({"policy": params}, tx, mesh)
    state = jax.device_put(state, sharding)
    ref_params = jax.device_put(params, parallel.param_sharding(params, mesh))
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, 512, 12).tolist() for _ in range(_PROMPTS.value)]
    key = jax.random.key(0)
    sampler = Sampler.from_model(policy, eos_ids=(), pad_id=0, mesh=mesh)
    sample_params = state.params["policy"]
    options = dict(n=_GROUP.value, max_new_tokens=_NEW.value, temperature=1.0)
    rows = {}

    def report(part, compiled, seconds):
        work = parallel.compiled_work(compiled)
        rows[part] = work | {"ms": 1e3 * seconds}

    out = sampler.generate(sample_params, prompts, key, **options)
    report("sample", sampler.lower(sample_params, prompts, key, **options),
           _timed(lambda: sampler.generate(sample_params, prompts, key, **options)
                  .response_tokens, reps))
    tokens = np.concatenate([out.prompt_tokens, out.response_tokens], 1).astype(np.int32)
    mask = np.concatenate([out.prompt_mask, out.response_mask], 1).astype(np.int32)
    reward_model = models.RewardModel.from_policy(policy, rngs=nnx.Rngs(1))
    reward_graphdef, reward_params = nnx.split(reward_model)
    reward = LearnedReward(reward_graphdef, jax.device_put(
        reward_params, parallel.param_sharding(reward_params, mesh)), 0.0, 1.0, mesh=mesh)
    report("score", reward.lower(tokens, mask), _timed(lambda: reward(tokens, mask), reps))
    batch = parallel.shard_batch(RolloutBatch(
        tokens=tokens, mask=mask.astype(np.float32),
        response_mask=np.asarray(out.response_mask, np.float32),
        sampler_logprobs=np.asarray(out.response_logprobs, np.float32),
        scores=rng.normal(size=len(tokens)).astype(np.float32),
        truncated=np.ones(len(tokens), np.float32),  # eos_ids=(): no response ends
    ), mesh)
    rl_step = build_rl_step(settings, tx, graphdef, mesh=mesh, state_sharding=sharding,
                            donate_state=False)
    args = (state.params, ref_params, batch, jnp.float32(0.04))
    prepare = rl_step.prepare.lower(*args).compile()
    report("prepare", prepare, _timed(lambda: prepare(*args), reps))
    train, _ = prepare(*args)
    update = rl_step.update.lower(state, train).compile()
    report("update", update, _timed(lambda: update(state, train), reps))
    for part, row in rows.items():
        print(json.dumps({"devices": jax.device_count(), "part": part} | row))


def main(argv):
    del argv
    if _CHILD.value:
        child(_REPS.value)
        return
    results = []
    for devices in _DEVICES.value:
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
        flags_ = [f"--reps={_REPS.value}", f"--num_prompts={_PROMPTS.value}",
                  f"--group_size={_GROUP.value}", f"--max_new_tokens={_NEW.value}"]
        done = subprocess.run([sys.executable, __file__, "--child", *flags_], env=env, text=True,
                              capture_output=True, check=True)
        results += [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    rows = _PROMPTS.value * _GROUP.value
    print(f"RL step parts, {rows} rows ({_PROMPTS.value} prompts x {_GROUP.value}), "
          f"{_NEW.value} new tokens; per device: largest dot, temporaries, median time")
    print(f"{'part':8} {'devices':>7} {'largest dot':>16} {'dot elems':>10} {'temp MB':>8} "
          f"{'GFLOP':>7} {'ms':>8}")
    for r in sorted(results, key=lambda r: (["sample", "score", "prepare", "update"].index(
            r["part"]), r["devices"])):
        shape = "x".join(map(str, r["largest_dot"]))
        print(f"{r['part']:8} {r['devices']:>7} {shape:>16} {r['dot_elements']:>10} "
              f"{r['temp_bytes'] / 2**20:>8.2f} {r['flops'] / 1e9:>7.3f} {r['ms']:>8.1f}")


if __name__ == "__main__":
    app.run(main)
