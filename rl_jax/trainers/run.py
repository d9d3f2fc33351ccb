"""Runs the stages of a config (SFT, reward model, RL) in a workdir; a restarted run resumes."""

from __future__ import annotations

import contextlib
import json
import os
import time

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from rl_jax import memory, parallel
from rl_jax.config import ConfigError, check_config
from rl_jax.settings import RunSettings
from rl_jax.trainers import plots
from rl_jax.trainers.checkpoint import CheckpointDamagedError, Checkpointer
from rl_jax.trainers.process_reward import run_prm
from rl_jax.trainers.reward_model import run_rm
from rl_jax.trainers.rl import run_rl
from rl_jax.trainers.setup import build_context
from rl_jax.trainers.sft import run_sft, sft_batch
from rl_jax.trainers.workdir import ConfigChangedError, check_workdir_config, locked


def _rl_resumes_without_sft(settings: RunSettings, workdir: str) -> bool:
    """Whether RL has a checkpoint (so SFT finished) and needs nothing of SFT's final params: no
    KL reference, no reward-model stage (whose synthetic data, like the process reward model's,
    come from the SFT policy). RL's
    restore then only needs a template of the policy's structure: the fresh params serve."""
    if "rl" not in settings.stages or "rm" in settings.stages or "prm" in settings.stages:
        return False
    if settings.rl.algorithm.needs_reference:
        return False
    directory = os.path.join(workdir, "rl")
    return os.path.isdir(directory) and any(
        name.isdigit() and os.listdir(os.path.join(directory, name))
        for name in os.listdir(directory)
    )


def _finished_eval(workdir: str, stage: str) -> dict:
    """The last evaluation saved with ``stage``'s newest readable checkpoint ({} if none)."""
    checkpointer = Checkpointer(os.path.join(workdir, stage), every=1, keep=1)
    try:
        for step in reversed(checkpointer.all_steps()):
            try:
                return checkpointer.read_meta(step)["eval"]
            except (CheckpointDamagedError, KeyError) as error:
                print(f"{checkpointer.directory}/{step}: cannot be read ({error})")
        return {}
    finally:
        checkpointer.close()


def run(
    config: ml_collections.ConfigDict,
    workdir: str,
    mesh: jax.sharding.Mesh | None = None,
    allow_config_change: bool = False,
) -> dict:
    """Runs ``config.stages`` in ``workdir`` over ``mesh`` (default: all devices, data-parallel).

    The whole config is checked first (``check_config``): a bad value fails before any file is
    written or model built. It is then turned, once, into typed settings
    (``RunSettings.from_config``): every stage and helper below receives the part it uses, and
    nothing below reads the config (only ``config.json`` of the workdir records it). The workdir
    is then locked for this process and its config compared with the one it was started with
    (``rl_jax.trainers.workdir``; ``allow_config_change`` accepts a changed one). Writes
    ``summary.json`` and ``curves.png``, prints the final table, returns the summary (with the
    final policy ``params``).

    Raises:
      ConfigError, ConfigChangedError, WorkdirLockedError: before any training;
      MemoryError: the per-device memory estimate (printed) exceeds the device's
        (``rl_jax.memory``), before anything is compiled;
      loop.StageInterrupted: SIGTERM/SIGINT, after saving the running step.
    """
    mesh = parallel.make_mesh() if mesh is None else mesh
    check_config(config, num_devices=mesh.devices.size)
    settings = RunSettings.from_config(config)
    check_processes(settings)
    os.makedirs(workdir, exist_ok=True)
    if jax.process_count() == 1:
        with locked(workdir):
            check_workdir_config(workdir, config, allow_config_change)
            return _run(settings, workdir, mesh)
    # Many processes: process 0 holds the lock and checks (and writes) config.json; the others
    # learn its verdict, so that all stop together.
    with locked(workdir) if jax.process_index() == 0 else contextlib.nullcontext():
        error = None
        if jax.process_index() == 0:
            try:
                check_workdir_config(workdir, config, allow_config_change)
            except ConfigChangedError as caught:
                error = caught
        if multihost_utils.broadcast_one_to_all(np.int32(error is not None)):
            raise error or ConfigChangedError(
                f"workdir {workdir}: process 0 refused its config.json (see process 0's output)"
            )
        return _run(settings, workdir, mesh)


def check_processes(settings: RunSettings) -> None:
    """The options that do not run across processes yet (``jax.process_count() > 1``).

    Raises:
      ConfigError: naming each such field.
    """
    if jax.process_count() == 1:
        return
    why = f"one process (this run has jax.process_count() = {jax.process_count()})"
    errors = []
    for stage in ("rm", "prm"):
        if stage in settings.stages:
            errors.append(f"config.stages = {settings.stages!r}: expected no {stage!r} stage "
                          f"with more than {why}")
    if settings.rewards.model_weight:
        errors.append(f"config.rewards.model_weight = {settings.rewards.model_weight!r}: expected "
                      f"0 with more than {why}")
    if settings.rl.rollout.dynamic_sampling:
        errors.append(f"config.rl.dynamic_sampling = True: expected False with more than {why}")
    if errors:
        raise ConfigError("\n".join(errors))


def _run(settings: RunSettings, workdir: str, mesh: jax.sharding.Mesh) -> dict:
    start = time.perf_counter()
    # With mesh.rollout_devices, every stage trains on the other devices; RL samples on these.
    mesh, rollout_mesh = parallel.split_mesh(mesh, settings.mesh.rollout_devices)
    ctx = build_context(settings, workdir, mesh)
    num_params = sum(x.size for x in jax.tree.leaves(nnx.state(ctx.policy)))
    print(f"devices: {mesh.devices.size} ({jax.devices()[0].platform}) in "
          f"{jax.process_count()} process(es), mesh {dict(mesh.shape)}"
          + ("" if rollout_mesh is None else f" + sampler mesh {dict(rollout_mesh.shape)}")
          + "; "
          f"policy: {num_params:,} parameters")
    memory_startup_check(settings, ctx, mesh)  # MemoryError here, before anything is compiled
    params = nnx.state(ctx.policy)
    summary: dict = {}
    stages = settings.stages
    if "sft" in stages and _rl_resumes_without_sft(settings, workdir):
        print("sft: finished (rl has a checkpoint and needs nothing of sft); not restored")
        summary["sft_eval"] = _finished_eval(workdir, "sft")
    elif "sft" in stages:
        result = run_sft(ctx, mesh, params, settings.sft)
        params, summary["sft_eval"] = result.state.params["policy"], result.last_eval
    reward_model = None
    if "rm" in stages:
        reward_model, summary["rm_eval"] = run_rm(ctx, mesh, params, settings.rm)
    process_reward = None
    if "prm" in stages:
        process_reward, summary["prm_eval"] = run_prm(ctx, mesh, params, settings.prm)

    def refresh(round_: int, policy_params, outcome, process):
        """Iterative RL: round ``round_`` of each learned reward RL reads, on the current
        policy."""
        replay = settings.rl.reward_replay
        if settings.rewards.model_weight:  # (an rm stage only for the critic's start is not read)
            outcome, summary[f"rm_{round_}_eval"] = run_rm(
                ctx, mesh, policy_params, settings.rm, round_=round_, start=outcome,
                replay=replay)
        if process is not None:
            process, summary[f"prm_{round_}_eval"] = run_prm(
                ctx, mesh, policy_params, settings.prm, round_=round_, start=process,
                replay=replay)
        return outcome, process

    if "rl" in stages:
        result = run_rl(ctx, mesh, params, settings.rl, reward_model, process_reward,
                        refresh if settings.rl.reward_refresh_every else None,
                        rollout_mesh=rollout_mesh)
        params, summary["rl_eval"] = result.state.params["policy"], result.last_eval
    summary["wall_time_s"] = time.perf_counter() - start
    if jax.process_index() == 0:  # the files of the run: written once
        summary.update(plots.final_metrics(workdir))
        with open(os.path.join(workdir, "summary.json"), "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2)
        plots.plot_curves(workdir)
        print(plots.final_table(summary))
    summary["params"] = params
    return summary


def memory_startup_check(settings: RunSettings, ctx, mesh: jax.sharding.Mesh) -> dict:
    """Prints the memory estimate of a run (``rl_jax.memory``; its ``settings`` and its context
    ``ctx`` from ``build_context``) and raises ``MemoryError`` if it exceeds the device
    (``memory.check``). Returns the estimate.

    Lengths come from the data: the longest prompt of RL's first batch and of the evaluation set,
    and the SFT batch of step 0 (its bucketed width).
    """
    prompts = ctx.encode_prompts(ctx.eval_examples)
    if "rl" in settings.stages:
        prompts += ctx.encode_prompts(ctx.task.batch(0, settings.rl.rollout.num_prompts))
    sft_len = None
    if "sft" in settings.stages:
        sft_len = sft_batch(ctx, ctx.task.batch(0, settings.sft.batch_size))["tokens"].shape[1]
    est = memory.estimate(
        settings, ctx.policy.config, num_devices=mesh.devices.size,
        fsdp=mesh.shape[parallel.FSDP], prompt_len=max((len(p) for p in prompts), default=0),
        sft_len=sft_len,
    )
    limit = memory.device_limit(settings.memory)
    print(memory.format_table(est, limit))
    if limit is None:
        print("  (no device memory limit known: set memory.device_gb to check against one)")
    if settings.memory.check:
        memory.check_fits(est, limit)
    return est
