"""Runs the stages of a config (SFT, reward model, RL) in a workdir; a restarted run resumes."""

from __future__ import annotations

import json
import os
import time

import jax
import ml_collections
from flax import nnx

from rl_jax import parallel
from rl_jax.trainers import plots
from rl_jax.trainers.reward_model import run_rm
from rl_jax.trainers.rl import run_rl
from rl_jax.trainers.setup import build_context
from rl_jax.trainers.sft import run_sft

STAGES = ("sft", "rm", "rl")


def run(
    config: ml_collections.ConfigDict, workdir: str, mesh: jax.sharding.Mesh | None = None
) -> dict:
    """Runs ``config.stages`` in ``workdir`` over ``mesh`` (default: all devices, data-parallel).

    Writes ``summary.json`` and ``curves.png``, prints the final table, returns the summary.
    """
    unknown = [s for s in config.stages if s not in STAGES]
    if unknown:
        raise ValueError(f"config.stages has unknown stages {unknown}; known: {STAGES}")
    if "rl" in config.stages and "rm" not in config.stages and (
        config.rewards.model_weight or config.rl.critic_init == "reward_model"
    ):
        raise ValueError(
            "rewards.model_weight > 0 or rl.critic_init='reward_model' needs the 'rm' stage in "
            f"config.stages (got {tuple(config.stages)})"
        )
    start = time.perf_counter()
    ctx = build_context(config, workdir)
    mesh = parallel.make_mesh() if mesh is None else mesh
    num_params = sum(x.size for x in jax.tree.leaves(nnx.state(ctx.policy)))
    print(f"devices: {mesh.devices.size} ({jax.devices()[0].platform}), mesh {dict(mesh.shape)}; "
          f"policy: {num_params:,} parameters")
    params = nnx.state(ctx.policy)
    summary: dict = {}
    if "sft" in config.stages:
        params, summary["sft_eval"] = run_sft(ctx, mesh, params)
    reward_model = None
    if "rm" in config.stages:
        reward_model, summary["rm_eval"] = run_rm(ctx, mesh, params)
    if "rl" in config.stages:
        params, summary["rl_eval"] = run_rl(ctx, mesh, params, reward_model)
    summary["wall_time_s"] = time.perf_counter() - start
    summary.update(plots.final_metrics(workdir))
    with open(os.path.join(workdir, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    plots.plot_curves(workdir)
    print(plots.final_table(summary))
    summary["params"] = params
    return summary
