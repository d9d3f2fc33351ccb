r"""Mixed precision and LoRA on the real model (SmolLM2-135M-Instruct, GGUF): two measurements.

    nice -n 10 python experiments/lora_precision/lora_precision.py --what=ratio --out=DIR
    nice -n 10 python experiments/lora_precision/lora_precision.py --what=update --out=DIR

``ratio``: sample chat-formatted prompts with the sampler in each precision (compute dtype /
storage dtype), recompute the sampled tokens' log-probs with the trainer's forward
(``policy_token_stats``) on the same weights, and report the band of ``exp(trainer - sampler)``
(the PPO ratio at the sampling weights, which should be 1) and the mean ``|diff|``.

``update``: one GRPO update (``build_rl_step``: clipped loss, k3 KL term, one minibatch) on a
fixed batch of sampled-shape token rows, full fine-tuning against LoRA (rank 8, alpha 16, every
projection): the median seconds of the timed steps after a compile, alternating the two, and the
parameters each trains (its optimizer state's size). float32 (CPU). Writes ``DIR/<what>.json``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from flax import nnx

from rl_jax import models, parallel
from rl_jax.algorithm import RLSettings, TrainBatch, build_rl_step, policy_token_stats
from rl_jax.config import default_config
from rl_jax.rollout import Sampler
from rl_jax.train_state import init_state, split_trainable

_WHAT = flags.DEFINE_enum("what", "ratio", ["ratio", "update"], "Which measurement.")
_PATH = flags.DEFINE_string(
    "path", os.path.expanduser("~/.cache/rl_jax/SmolLM2-135M-Instruct.Q4_1.gguf"), "The model."
)
_OUT = flags.DEFINE_string("out", "experiments/lora_precision/results", "Output directory.")
_NEW = flags.DEFINE_integer("max_new_tokens", 32, "ratio: tokens per response.")
_ROWS = flags.DEFINE_integer("rows", 4, "update: rows of the batch.")
_LEN = flags.DEFINE_integer("length", 128, "update: tokens per row (prompt + response).")
_STEPS = flags.DEFINE_integer("steps", 3, "update: timed steps of each mode.")
_RANK = flags.DEFINE_integer("rank", 8, "update: LoRA rank.")

QUESTIONS = [
    "What is 17 + 25?",
    "Name three primary colours.",
    "Write one sentence about the sea.",
    "If I have 3 apples and eat one, how many are left?",
]


def ratio_band(dtype: str, param_dtype: str, tokenizer, prompts) -> dict:
    model, _ = models.load_pretrained(_PATH.value, dtype=dtype, param_dtype=param_dtype)
    sampler = Sampler.from_model(model, eos_ids=(), pad_id=tokenizer.pad_token_id, max_len=256)
    start = time.perf_counter()
    out = sampler.generate(nnx.state(model), prompts, jax.random.key(0), max_new_tokens=_NEW.value,
                           n=2)
    tokens = jnp.concatenate([out.prompt_tokens, out.response_tokens], 1)
    mask = jnp.concatenate([out.prompt_mask, out.response_mask], 1).astype(jnp.float32)
    graphdef, params = nnx.split(model)
    logprobs, _ = jax.jit(
        lambda p, t, m: policy_token_stats(
            graphdef, p, t, m, out.response_tokens.shape[1], temperature=1.0, logits_chunk=128
        )
    )(params, tokens, mask)
    diff = np.asarray(logprobs - out.response_logprobs)[np.asarray(out.response_mask) > 0]
    return {
        "dtype": dtype, "param_dtype": param_dtype, "tokens": int(diff.size),
        "ratio_min": float(np.exp(diff.min())), "ratio_max": float(np.exp(diff.max())),
        "mean_abs_logprob_diff": float(np.abs(diff).mean()),
        "ratio_p01": float(np.exp(np.quantile(diff, 0.01))),
        "ratio_p99": float(np.exp(np.quantile(diff, 0.99))),
        "seconds": time.perf_counter() - start,
    }


def measure_ratio() -> list[dict]:
    _, tokenizer = models.load_pretrained(_PATH.value)
    prompts = [
        tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True)
        for q in QUESTIONS
    ]
    prompts = [list(p["input_ids"]) if not isinstance(p, list) else p for p in prompts]
    results = []
    for dtype, param_dtype in [("float32", "float32"), ("bfloat16", "float32"),
                               ("bfloat16", "bfloat16")]:
        results.append(ratio_band(dtype, param_dtype, tokenizer, prompts))
        print(json.dumps(results[-1]), flush=True)
    return results


def measure_update() -> list[dict]:
    base, _ = models.load_pretrained(_PATH.value)
    lora = models.add_adapters(
        base, rank=_RANK.value, alpha=16.0, targets=models.LORA_TARGETS, rngs=nnx.Rngs(1)
    )
    rows, length, response = _ROWS.value, _LEN.value, _LEN.value // 2
    rng = np.random.default_rng(0)
    batch = TrainBatch(
        tokens=rng.integers(3, 49152, (rows, length)).astype(np.int32),
        mask=np.ones((rows, length), np.float32),
        response_mask=np.ones((rows, response), np.float32),
        sampler_logprobs=np.full((rows, response), -3.0, np.float32),
        old_logprobs=np.full((rows, response), -3.0, np.float32),
        ref_logprobs=np.full((rows, response), -3.0, np.float32),
        advantages=rng.normal(size=(rows, response)).astype(np.float32),
    )
    settings = dataclasses.replace(
        RLSettings.from_config(default_config()), estimator="grpo", group_size=2,
        temperature=1.0, kl_loss_coef=0.04, max_len=response, num_minibatches=1, logits_chunk=128)
    mesh = parallel.make_mesh(devices=jax.devices()[:1])
    tx = optax.adamw(1e-6)
    runs = {}
    for name, model in (("full", base), ("lora", lora)):
        graphdef, params = nnx.split(model)
        params = jax.tree.map(jnp.copy, params)  # the two share the base; updates donate it
        state, sharding = init_state({"policy": params}, tx, mesh)
        update = build_rl_step(settings, tx, graphdef, mesh=mesh, state_sharding=sharding).update
        start = time.perf_counter()
        state, metrics = update(state, batch)
        jax.block_until_ready(metrics)
        trainable = split_trainable(state.params)[0]
        runs[name] = {
            "update": update, "state": state, "times": [],
            "compile_and_first_s": time.perf_counter() - start,
            "trained_parameters": int(sum(x.size for x in jax.tree.leaves(trainable))),
            "optimizer_state_floats": int(sum(x.size for x in jax.tree.leaves(state.opt_state))),
        }
        print(name, "first step", runs[name]["compile_and_first_s"], flush=True)
    for _ in range(_STEPS.value):  # alternating, so both see the same neighbours on the CPU
        for run in runs.values():
            start = time.perf_counter()
            run["state"], metrics = run["update"](run["state"], batch)
            jax.block_until_ready(metrics)
            run["times"].append(time.perf_counter() - start)
    results = []
    for name, run in runs.items():
        results.append({
            "mode": name, "rows": rows, "length": length, "rank": _RANK.value,
            "median_step_s": float(np.median(run["times"])), "step_s": run["times"],
            **{k: run[k] for k in ("compile_and_first_s", "trained_parameters",
                                    "optimizer_state_floats")},
        })
        print(json.dumps(results[-1]), flush=True)
    return results


def main(argv):
    del argv
    results = measure_ratio() if _WHAT.value == "ratio" else measure_update()
    os.makedirs(_OUT.value, exist_ok=True)
    with open(os.path.join(_OUT.value, f"{_WHAT.value}.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    app.run(main)
