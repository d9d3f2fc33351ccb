r"""Sampling and training on separate devices at once: start and end times of each program.

    python experiments/benchmarks/overlap.py                 # 8 fake CPU devices, 4 + 4
    python experiments/benchmarks/overlap.py --rollout_devices=2 --steps=6

The 8 devices (``--xla_force_host_platform_device_count=8`` unless XLA_FLAGS says otherwise) are
split as a run with ``mesh.rollout_devices`` splits them (``parallel.split_mesh``). Each step does
what ``run_rl`` does with ``rl.max_staleness = 1``: the weights go to the sampler
(``jax.device_put`` to its sharding), the sampler decodes the next batch in a thread, and the
trainer's ``update`` (built by ``build_rl_step``) runs on the other devices. The same steps run
once in turn (``sequential``: sample, then update) and once overlapped; for every program the
host records its start (before dispatch) and end (``block_until_ready``), and the devices it
ran on (``parallel.program_devices`` of the compiled program).

The report: each program's interval (ms from the step's start), the time both ran at once, and
the wall time per step of each mode. Fake CPU devices share this machine's cores, so overlap in
time shows that the two programs were in flight together on disjoint devices; the wall-time gain
is bounded by the cores (on 2 cores, little), unlike on accelerators with their own compute.
"""

from __future__ import annotations

import os

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_force_host_platform_device_count=8").strip()

import dataclasses  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402

from absl import app, flags  # noqa: E402

_ROLLOUT = flags.DEFINE_integer("rollout_devices", 4, "The sampler's devices (the last ones).")
_STEPS = flags.DEFINE_integer("steps", 4, "Timed steps per mode (after a warm-up step).")
_PROMPTS = flags.DEFINE_integer("num_prompts", 16, "Prompts per step.")
_GROUP = flags.DEFINE_integer("group_size", 4, "Samples per prompt.")
_NEW = flags.DEFINE_integer("max_new_tokens", 32, "Tokens per response.")
_OUT = flags.DEFINE_string("out", "", "Also write the JSON report here.")


def _interval(fn) -> tuple[float, float]:
    start = time.perf_counter()
    import jax

    jax.block_until_ready(fn())
    return start, time.perf_counter()


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> float:
    return max(0.0, min(a[1], b[1]) - max(a[0], b[0]))


def main(argv):
    del argv
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import nnx

    from rl_jax import models, parallel
    from rl_jax.algorithm import RLSettings, RolloutBatch, build_rl_step
    from rl_jax.config import default_config
    from rl_jax.rollout import Sampler
    from rl_jax.train_state import init_state

    config = models.tiny_config("qwen2", vocab_size=512, hidden_size=128, intermediate_size=256,
                                num_layers=2, num_heads=4, num_kv_heads=2,
                                max_position_embeddings=128)
    policy = models.CausalLM(config, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(policy)
    trainer, sampler_mesh = parallel.split_mesh(parallel.make_mesh(), _ROLLOUT.value)
    settings = dataclasses.replace(
        RLSettings.from_config(default_config()), estimator="grpo", group_size=_GROUP.value,
        temperature=1.0, max_len=_NEW.value, num_minibatches=2)
    tx = optax.adam(1e-4)
    state, sharding = init_state({"policy": params}, tx, trainer)
    state = jax.device_put(state, sharding)
    rl_step = build_rl_step(settings, tx, graphdef, mesh=trainer, state_sharding=sharding,
                            donate_state=False)
    sampler = Sampler.from_model(policy, eos_ids=(), pad_id=0, mesh=sampler_mesh)
    to_sampler = parallel.param_sharding(params, sampler_mesh)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, 512, 12).tolist() for _ in range(_PROMPTS.value)]
    options = dict(n=_GROUP.value, max_new_tokens=_NEW.value, temperature=1.0)

    def sample(sampler_params, step):
        return sampler.generate(sampler_params, prompts, jax.random.key(step),
                                **options).response_tokens

    sampler_params = jax.device_put(state.params["policy"], to_sampler)
    out = sampler.generate(sampler_params, prompts, jax.random.key(0), **options)
    tokens = np.concatenate([out.prompt_tokens, out.response_tokens], 1).astype(np.int32)
    mask = np.concatenate([out.prompt_mask, out.response_mask], 1).astype(np.float32)
    batch = parallel.shard_batch(RolloutBatch(
        tokens=tokens, mask=mask, response_mask=np.asarray(out.response_mask, np.float32),
        sampler_logprobs=np.asarray(out.response_logprobs, np.float32),
        scores=rng.normal(size=len(tokens)).astype(np.float32),
        truncated=np.ones(len(tokens), np.float32),
    ), trainer)
    train, _ = rl_step.prepare(state.params, None, batch, jnp.float32(0.0))
    update = rl_step.update.lower(state, train).compile()
    decode = sampler.lower(sampler_params, prompts, jax.random.key(0), **options).compile()
    devices = {
        "sample": sorted(d.id for d in parallel.program_devices(decode)),
        "update": sorted(d.id for d in parallel.program_devices(update)),
    }

    def one_step(step: int, overlapped: bool, executor) -> dict:
        nonlocal state
        begin = time.perf_counter()
        weights = jax.block_until_ready(jax.device_put(state.params["policy"], to_sampler))
        moved = time.perf_counter()
        if overlapped:
            future = executor.submit(_interval, lambda: sample(weights, step))
            update_time = _interval(lambda: update(state, train))
            sample_time = future.result()
        else:
            sample_time = _interval(lambda: sample(weights, step))
            update_time = _interval(lambda: update(state, train))
        end = time.perf_counter()
        rel = lambda t: round(1e3 * (t - begin), 1)  # noqa: E731
        return {"step": step, "transfer_ms": rel(moved), "wall_ms": rel(end),
                "sample_ms": [rel(t) for t in sample_time],
                "update_ms": [rel(t) for t in update_time],
                "both_ms": round(1e3 * _overlap(sample_time, update_time), 1)}

    report = {"devices": jax.device_count(), "sample_devices": devices["sample"],
              "update_devices": devices["update"], "rows": len(tokens),
              "max_new_tokens": _NEW.value, "modes": {}}
    with ThreadPoolExecutor(1) as executor:
        for mode in ("sequential", "overlapped"):
            one_step(0, mode == "overlapped", executor)  # warm-up
            steps = [one_step(s, mode == "overlapped", executor)
                     for s in range(1, _STEPS.value + 1)]
            report["modes"][mode] = {
                "steps": steps,
                "median_wall_ms": statistics.median(s["wall_ms"] for s in steps),
                "median_both_ms": statistics.median(s["both_ms"] for s in steps),
            }
    print(f"{report['devices']} devices: sample on {devices['sample']}, update on "
          f"{devices['update']}; {report['rows']} rows x {_NEW.value} new tokens")
    print(f"{'mode':11} {'step':>4} {'transfer':>9} {'sample [start, end]':>20} "
          f"{'update [start, end]':>20} {'both':>7} {'wall':>7}  (ms)")
    for mode, result in report["modes"].items():
        for s in result["steps"]:
            print(f"{mode:11} {s['step']:>4} {s['transfer_ms']:>9} {str(s['sample_ms']):>20} "
                  f"{str(s['update_ms']):>20} {s['both_ms']:>7} {s['wall_ms']:>7}")
        print(f"{mode:11} median wall {result['median_wall_ms']:.1f} ms, both running "
              f"{result['median_both_ms']:.1f} ms")
    if _OUT.value:
        with open(_OUT.value, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    app.run(main)
