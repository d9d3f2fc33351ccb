r"""Runs the stages a config names (SFT, then RL) in a workdir; restarted, it resumes.

    python experiments/train.py --config=configs/arithmetic_grpo.py --workdir=/tmp/arith \
        --config.rl.steps=100

Writes ``metrics.jsonl``, TensorBoard events, Orbax checkpoints (``sft/``, ``rl/``), the tokenizer
of a from-scratch model, ``summary.json`` and ``curves.png`` into the workdir, and prints a final
table (held-out accuracy after SFT and after RL, reward, KL, wall time).
"""

from __future__ import annotations

import json
import os
import time

import jax
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from rl_jax import parallel
from rl_jax.trainers import plots
from rl_jax.trainers.rl import run_rl
from rl_jax.trainers.setup import build_context
from rl_jax.trainers.sft import run_sft

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of the run (created, or resumed).")
_FSDP = flags.DEFINE_integer("fsdp", 1, "Devices that shard one copy of the parameters.")
flags.mark_flags_as_required(["config", "workdir"])

STAGES = ("sft", "rl")


def run(config, workdir: str, fsdp: int = 1) -> dict:
    """Runs ``config.stages`` in ``workdir``; returns the summary also saved as summary.json."""
    unknown = [s for s in config.stages if s not in STAGES]
    if unknown:
        raise ValueError(f"config.stages has unknown stages {unknown}; known: {STAGES}")
    start = time.perf_counter()
    ctx = build_context(config, workdir)
    mesh = parallel.make_mesh(fsdp=fsdp)
    print(
        f"devices: {jax.device_count()} ({jax.devices()[0].platform}), mesh {dict(mesh.shape)}; "
        f"policy {sum(x.size for x in jax.tree.leaves(nnx.state(ctx.policy))):,} parameters"
    )
    params = nnx.state(ctx.policy)
    summary: dict = {}
    if "sft" in config.stages:
        params, summary["sft_eval"] = run_sft(ctx, mesh, params)
    if "rl" in config.stages:
        params, summary["rl_eval"] = run_rl(ctx, mesh, params)
    summary["wall_time_s"] = time.perf_counter() - start
    summary.update(plots.final_metrics(workdir))
    with open(os.path.join(workdir, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    plots.plot_curves(workdir)
    print(plots.final_table(summary))
    return summary


def main(argv):
    del argv
    run(_CONFIG.value, _WORKDIR.value, _FSDP.value)


if __name__ == "__main__":
    app.run(main)
