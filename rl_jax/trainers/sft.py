"""Supervised fine-tuning: cross-entropy on the response tokens only, stopped by an accuracy target.

The step is one jitted, data-parallel function; the loop around it evaluates greedy pass@1 every
``sft.eval_every`` steps and stops when it reaches ``sft.stop_accuracy`` (a start with signal for
RL) or after ``sft.steps``.
"""

from __future__ import annotations

import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

import rl_jax
from rl_jax import models, parallel
from rl_jax.optim import make_optimizer
from rl_jax.rollout import bucket_length
from rl_jax.trainers.checkpoint import Checkpointer
from rl_jax.trainers.evaluation import evaluate
from rl_jax.trainers.metrics import MetricWriter, check_finite, summary_line, to_floats
from rl_jax.trainers.rl_step import TrainState
from rl_jax.trainers.setup import Context, stage_key


def sft_batch(ctx: Context, examples) -> dict[str, np.ndarray]:
    """Right-padded ``prompt + target + EOS`` sequences, ``[batch, L]`` with ``L`` bucketed.

    ``loss_mask`` is 1 on the target and EOS tokens (the tokens the loss predicts).
    """
    prompts = ctx.encode_prompts(examples)
    eos = ctx.tokenizer.eos_token_id
    rows, loss_rows = [], []
    for prompt, ex in zip(prompts, examples, strict=True):
        target = ctx.tokenizer.encode(ex.target, add_special_tokens=False) + [eos]
        rows.append(prompt + target)
        loss_rows.append([0] * len(prompt) + [1] * len(target))
    longest = max(len(r) for r in rows)
    max_len = ctx.policy.config.max_position_embeddings
    if longest > max_len:
        raise ValueError(f"an SFT sequence has {longest} tokens > the model's context {max_len}")
    width = min(bucket_length(longest, 16), max_len)
    tokens = np.full((len(rows), width), ctx.tokenizer.pad_token_id, np.int32)
    mask = np.zeros((len(rows), width), np.float32)
    loss_mask = np.zeros((len(rows), width), np.float32)
    for i, (row, loss_row) in enumerate(zip(rows, loss_rows, strict=True)):
        tokens[i, : len(row)] = row
        mask[i, : len(row)] = 1
        loss_mask[i, : len(row)] = loss_row
    return {"tokens": tokens, "mask": mask, "loss_mask": loss_mask}


def make_sft_loss(graphdef):
    """``loss(params, batch)``: mean negative log-likelihood of the response tokens."""

    def loss_fn(params, batch):
        tokens, mask = batch["tokens"], batch["mask"]
        logits, _ = models.apply_lm(
            graphdef, params["policy"], tokens, models.positions_from_mask(mask), mask
        )
        logprobs = rl_jax.token_logprobs(logits[:, :-1], tokens[:, 1:])
        return -rl_jax.aggregate(logprobs, batch["loss_mask"][:, 1:], "token-mean")

    return loss_fn


def make_sft_step(loss_fn, tx: optax.GradientTransformation):
    def step(state: TrainState, batch):
        loss, grads = jax.value_and_grad(loss_fn)(state.params, batch)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads)}
        return TrainState(state.step + 1, params, opt_state), metrics

    return step


def run_sft(ctx: Context, mesh: jax.sharding.Mesh, params: Any) -> tuple[Any, dict[str, float]]:
    """Trains ``params`` (the policy state) with SFT; resumes from ``workdir/sft``.

    Returns the final policy params and the last evaluation.
    """
    cfg = ctx.config.sft
    tx = make_optimizer(cfg.optim, cfg.steps)
    state = TrainState(jnp.zeros((), jnp.int32), {"policy": params}, None)
    state = state._replace(opt_state=tx.init(state.params))
    sharding = parallel.param_sharding(state, mesh)
    checkpointer = Checkpointer(
        os.path.join(ctx.workdir, "sft"),
        every=ctx.config.checkpoint.every,
        keep=ctx.config.checkpoint.keep,
    )
    last_eval: dict[str, float] = {}
    if checkpointer.latest_step() is not None:
        state, meta = checkpointer.restore(state)
        last_eval = meta.get("eval", {})
        print(f"sft: resumed from step {int(state.step)} of {checkpointer.directory}")
        if meta["done"]:
            return state.params["policy"], last_eval
    state = jax.device_put(state, sharding)
    step_fn = parallel.data_parallel_step(
        make_sft_step(make_sft_loss(ctx.graphdef), tx), mesh, sharding
    )
    writer = MetricWriter(ctx.workdir, "sft")
    start = int(state.step)
    done = False
    bar = tqdm.tqdm(range(start, cfg.steps), desc="sft", disable=not cfg.progress_bar)
    for step in bar:
        t0 = time.perf_counter()
        batch = sft_batch(ctx, ctx.task.batch(step, cfg.batch_size))
        state, metrics = step_fn(state, parallel.shard_batch(batch, mesh))
        metrics = to_floats(metrics)
        check_finite(metrics, step, ["loss", "grad_norm"])
        metrics["step_time"] = time.perf_counter() - t0
        number = step + 1
        if number % cfg.eval_every == 0 or number == cfg.steps:
            last_eval = evaluate(
                ctx, state.params["policy"], stage_key(ctx.config.seed, "eval", number)
            )
            metrics.update({f"eval/{k}": v for k, v in last_eval.items()})
            done = last_eval["pass@1"] >= cfg.stop_accuracy or number == cfg.steps
        writer.write(number, metrics)
        if number % ctx.config.log.every == 0 or done:
            bar.write(summary_line("sft", number, metrics, ["loss", "eval/pass@1"]))
        if done or checkpointer.should_save(number):
            checkpointer.save(number, state, {"done": done, "eval": last_eval})
        if done:
            break
    writer.close()
    checkpointer.close()
    return state.params["policy"], last_eval
