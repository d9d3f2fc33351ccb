"""Runs the stages of a config (SFT, reward model, RL) in a workdir; a restarted run resumes."""

from __future__ import annotations

import json
import os
import time

import jax
import ml_collections
from flax import nnx

from rl_jax import parallel
from rl_jax.config import check_config
from rl_jax.trainers import plots
from rl_jax.trainers.reward_model import run_rm
from rl_jax.trainers.rl import run_rl
from rl_jax.trainers.setup import build_context
from rl_jax.trainers.sft import run_sft


def run(
    config: ml_collections.ConfigDict, workdir: str, mesh: jax.sharding.Mesh | None = None
) -> dict:
    """Runs ``config.stages`` in ``workdir`` over ``mesh`` (default: all devices, data-parallel).

    The whole config is checked first (``check_config``): a bad value fails before any file is
    written or model built. Writes ``summary.json`` and ``curves.png``, prints the final table,
    returns the summary (with the final policy ``params``).
    """
    mesh = parallel.make_mesh() if mesh is None else mesh
    check_config(config, num_devices=mesh.devices.size)
    start = time.perf_counter()
    ctx = build_context(config, workdir)
    num_params = sum(x.size for x in jax.tree.leaves(nnx.state(ctx.policy)))
    print(f"devices: {mesh.devices.size} ({jax.devices()[0].platform}), mesh {dict(mesh.shape)}; "
          f"policy: {num_params:,} parameters")
    params = nnx.state(ctx.policy)
    summary: dict = {}
    if "sft" in config.stages:
        result = run_sft(ctx, mesh, params)
        params, summary["sft_eval"] = result.state.params["policy"], result.last_eval
    reward_model = None
    if "rm" in config.stages:
        reward_model, summary["rm_eval"] = run_rm(ctx, mesh, params)
    if "rl" in config.stages:
        result = run_rl(ctx, mesh, params, reward_model)
        params, summary["rl_eval"] = result.state.params["policy"], result.last_eval
    summary["wall_time_s"] = time.perf_counter() - start
    summary.update(plots.final_metrics(workdir))
    with open(os.path.join(workdir, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    plots.plot_curves(workdir)
    print(plots.final_table(summary))
    summary["params"] = params
    return summary
