"""Supervised fine-tuning: cross-entropy on the response tokens only, stopped by an accuracy target.

A stage of the shared loop (``loop.run_stage``): one jitted, data-parallel optimizer step on the
task's batch of step ``s``; greedy pass@1 every ``eval.every`` steps ends the stage when it reaches
``sft.stop_accuracy`` (a start with signal for RL), else it runs ``sft.steps``.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

import rl_jax
from rl_jax import models, parallel
from rl_jax.chunked import DEFAULT_CHUNK, chunked_token_stats
from rl_jax.optim import make_optimizer
from rl_jax.rollout import right_pad
from rl_jax.settings import SFTSettings
from rl_jax.train_state import TrainState, init_state, make_train_step
from rl_jax.trainers.evaluation import evaluate
from rl_jax.trainers.loop import Stage, StageResult, run_stage
from rl_jax.trainers.setup import Context, stage_key


def sft_batch(ctx: Context, examples, *, mesh: jax.sharding.Mesh | None = None
              ) -> dict[str, np.ndarray]:
    """Right-padded ``prompt + target + EOS`` sequences, ``[batch, L]`` with ``L`` bucketed.

    ``loss_mask`` is 1 on the target and EOS tokens (the tokens the loss predicts). With a
    ``mesh`` spanning several processes, ``examples`` is this process's share and ``L`` is the
    bucket of the longest row over all processes (every block of the global batch has one shape).
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
    if mesh is not None and jax.process_count() > 1:
        longest = parallel.process_max(longest)
        rows.append([ctx.tokenizer.pad_token_id] * longest)  # sets the width; dropped below
        loss_rows.append([0] * longest)
    tokens, mask = right_pad(rows, ctx.tokenizer.pad_token_id, max_len)
    loss_mask = right_pad(loss_rows, 0, max_len)[0]
    tokens, mask, loss_mask = (x[: len(examples)] for x in (tokens, mask, loss_mask))
    mask, loss_mask = mask.astype(np.float32), loss_mask.astype(np.float32)
    return {"tokens": tokens, "mask": mask, "loss_mask": loss_mask}


def make_sft_loss(graphdef, logits_chunk: int = DEFAULT_CHUNK):
    """``loss(params, batch) -> (loss, metrics)``: mean negative log-likelihood of the response
    tokens.

    ``logits_chunk`` positions go through the LM head at a time (``rl_jax.chunked``; every
    position, since the target starts at a different place in each row); 0 takes the full
    ``[batch, L, vocab]`` logits at once. Same numbers either way.
    """

    def loss_fn(params, batch):
        tokens, mask = batch["tokens"], batch["mask"]
        positions = models.positions_from_mask(mask)
        if logits_chunk > 0:
            hidden, head, vocab_major = models.apply_lm_hidden(
                graphdef, params["policy"], tokens, positions, mask
            )
            logprobs, _ = chunked_token_stats(
                hidden[:, :-1], head, tokens[:, 1:], vocab_major=vocab_major,
                chunk_size=logits_chunk,
            )
        else:
            logits, _ = models.apply_lm(graphdef, params["policy"], tokens, positions, mask)
            logprobs = rl_jax.token_logprobs(logits[:, :-1], tokens[:, 1:])
        loss = -rl_jax.aggregate(logprobs, batch["loss_mask"][:, 1:], "token-mean")
        return loss, {"loss": loss}

    return loss_fn


def run_sft(
    ctx: Context, mesh: jax.sharding.Mesh, params: Any, settings: SFTSettings
) -> StageResult:
    """Trains ``params`` (the policy state) with SFT in ``workdir/sft`` (resumed, or only restored
    when finished); the result's ``state.params["policy"]`` is the fine-tuned policy."""
    tx = make_optimizer(settings.optim, settings.steps)
    state, sharding = init_state({"policy": params}, tx, mesh)
    train_step = make_train_step(make_sft_loss(ctx.graphdef, settings.logits_chunk), tx)
    step = parallel.data_parallel_step(train_step, mesh, sharding)
    ctx.check_mesh(mesh)  # evaluation decodes each device's share of the prompts

    def batch(step: int, state: TrainState, host: dict):
        examples = parallel.process_share(ctx.task.batch(step, settings.batch_size), mesh)
        arrays = sft_batch(ctx, examples, mesh=mesh)
        return parallel.shard_batch(arrays, mesh), {}, host

    def evaluate_policy(number: int, state: TrainState) -> dict[str, float]:
        key = stage_key(settings.seed, "eval/sft", number)
        return evaluate(ctx, state.params["policy"], key, settings.evaluation)

    stage = Stage(
        "sft", settings.steps, state, sharding, step, batch,
        evaluate=evaluate_policy,
        stop=lambda number, last_eval: last_eval["pass@1"] >= settings.stop_accuracy,
        log_names=("loss", "eval/pass@1"),
    )
    return run_stage(stage, settings.loop, ctx.workdir)
