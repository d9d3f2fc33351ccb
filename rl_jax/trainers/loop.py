"""The one training loop of every stage (SFT, reward model, RL), and the one optimizer step.

A stage is a ``Stage``: its initial state, a jitted step, the batch of step ``s``, its evaluation,
its stop rule and the host state it checkpoints. ``run_stage`` owns everything else: resume (a
finished stage only restores), the Orbax checkpoints, the metrics files, the progress bar, one
"is it time" rule for eval / log / samples / checkpoint, the NaN/inf stop and the host syncs.

Host syncs: a step's metrics stay on the device until they are needed: at a logging, evaluation or
checkpoint step (or the last step) every pending step's metrics come to the host in one transfer,
are checked for NaN/inf, and written (one line per step). The device can therefore run ahead of
the Python loop between those steps.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax
import tqdm

from rl_jax import parallel
from rl_jax.trainers.checkpoint import Checkpointer
from rl_jax.trainers.metrics import MetricWriter, summary_line

Metrics = dict[str, Any]


class TrainState(NamedTuple):
    """What a stage trains: ``params`` (a dict of named models), their optimizer state, a step."""

    step: jax.Array  # int32 scalar: steps done (an RL step is epochs x minibatches updates)
    params: dict[str, Any]  # {"policy": ...}, {"reward": ...} or {"policy": ..., "value": ...}
    opt_state: Any


def optimizer_step(
    loss_fn: Callable[[Any, Any], tuple[jax.Array, Metrics]],
    tx: optax.GradientTransformation,
    state: TrainState,
    batch: Any,
) -> tuple[TrainState, Metrics]:
    """One gradient update of ``state.params`` on ``batch`` (``state.step`` is left as it is).

    ``loss_fn(params, batch) -> (loss, metrics)``; ``grad_norm`` (before clipping) is added to
    the metrics.
    """
    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {**metrics, "grad_norm": optax.tree.norm(grads)}
    return TrainState(state.step, params, opt_state), metrics


def init_state(params: dict[str, Any], tx: optax.GradientTransformation, mesh):
    """``(state, shardings)``: step 0 of ``params`` with a fresh optimizer state, and the state's
    shardings over ``mesh``."""
    state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))
    return state, parallel.param_sharding(state, mesh)


def make_train_step(loss_fn, tx: optax.GradientTransformation):
    """``step(state, batch) -> (state, metrics)``: one ``optimizer_step``, then ``step + 1``."""

    def step(state: TrainState, batch):
        state, metrics = optimizer_step(loss_fn, tx, state, batch)
        return state._replace(step=state.step + 1), metrics

    return step


def itstime(number: int, every: int, last: int) -> bool:
    """Whether step ``number`` (1-based) is on the ``every`` cadence (0 = never) or is ``last``."""
    return number == last or (every > 0 and number % every == 0)


@dataclasses.dataclass
class Stage:
    """What a stage supplies to ``run_stage`` (``step`` numbers are 0-based, ``number = step + 1``).

    Attributes:
      name: "sft", "rm" or "rl": checkpoint directory ``workdir/<name>``, metric prefix, bar label.
      steps: the most steps it runs.
      state: the initial ``TrainState``, also the template a checkpoint is restored into.
      sharding: the ``TrainState``'s shardings over the mesh.
      step: the jitted ``step(state, batch) -> (state, device metrics)``.
      batch: ``batch(step, state, host) -> (batch, host metrics, new host state)``, a pure function
        of its arguments (so a resumed run makes the same batches); ``host`` is a JSON-able dict
        saved with every checkpoint (data position, KL coefficient).
      evaluate: ``evaluate(number, state) -> metrics``, every ``eval.every`` steps and at the last.
      stop: ``stop(number, last_eval)``, asked after each evaluation: True ends the stage early,
        and a restart then only restores it.
      finish_metrics: derives written metrics from a step's host metrics (e.g. rates from
        ``step_time``).
      loss_names: the metrics checked for NaN/inf; log_names: the one-line summary's metrics.
      samples: ``samples() -> str``, written every ``log.samples_every`` steps.
    """

    name: str
    steps: int
    state: TrainState
    sharding: Any
    step: Callable[[TrainState, Any], tuple[TrainState, Metrics]]
    batch: Callable[[int, TrainState, dict], tuple[Any, Metrics, dict]]
    host: dict = dataclasses.field(default_factory=dict)
    evaluate: Callable[[int, TrainState], Metrics] | None = None
    stop: Callable[[int, Metrics], bool] = lambda number, last_eval: False
    finish_metrics: Callable[[Metrics], Metrics] = lambda metrics: metrics
    loss_names: Sequence[str] = ("loss", "grad_norm")
    log_names: Sequence[str] = ("loss",)
    samples: Callable[[], str] | None = None


@dataclasses.dataclass
class StageResult:
    """What ``run_stage`` returns."""

    state: TrainState
    host: dict  # the host state after the last step
    last_eval: Metrics  # the last evaluation (restored with the checkpoint)
    trained: bool  # False when a finished stage was only restored


def check_finite(metrics: Metrics, number: int, names: Sequence[str]) -> None:
    """Stops the run (before anything is checkpointed) if a loss is NaN or inf."""
    bad = {n: metrics[n] for n in names if n in metrics and not math.isfinite(metrics[n])}
    if bad:
        raise FloatingPointError(f"non-finite loss at step {number}: {bad}; nothing was saved")


def run_stage(stage: Stage, config: ml_collections.ConfigDict, workdir: str) -> StageResult:
    """Runs ``stage`` in ``workdir`` from its last checkpoint to ``stage.steps`` or its stop rule.

    A stage that finished (stopped by its rule, or at ``steps``) is only restored.
    """
    every, keep = config.checkpoint.every, config.checkpoint.keep
    checkpointer = Checkpointer(os.path.join(workdir, stage.name), every=every, keep=keep)
    state, host, last_eval = stage.state, dict(stage.host), {}
    if checkpointer.latest_step() is not None:
        state, meta = checkpointer.restore(state)
        host, last_eval = meta["host"], meta["eval"]
        print(f"{stage.name}: resumed from step {int(state.step)} of {checkpointer.directory}")
        if meta["stopped"] or int(state.step) >= stage.steps:
            checkpointer.close()
            return StageResult(state, host, last_eval, trained=False)
    state = jax.device_put(state, stage.sharding)
    writer = MetricWriter(workdir, stage.name)
    log, steps = config.log, range(int(state.step), stage.steps)
    bar = tqdm.tqdm(steps, desc=stage.name, disable=not log.progress_bar)
    pending: list[tuple[int, Metrics, Metrics]] = []  # (number, device metrics, host metrics)
    since = time.perf_counter()
    for step in bar:
        number = step + 1
        batch, host_metrics, host = stage.batch(step, state, host)
        state, metrics = stage.step(state, batch)
        pending.append((number, metrics, host_metrics))
        evaluate = stage.evaluate is not None and itstime(number, config.eval.every, stage.steps)
        save = itstime(number, checkpointer.every, stage.steps)
        show_samples = stage.samples is not None and itstime(number, log.samples_every, 0)
        if not (evaluate or save or show_samples or itstime(number, log.every, stage.steps)):
            continue
        # A sync point: every pending step's metrics come to the host in one transfer.
        fetched = jax.device_get([m for _, m, _ in pending])
        step_time = (time.perf_counter() - since) / len(pending)
        records = []
        for (n, _, on_host), values in zip(pending, fetched, strict=True):
            record = {k: float(v) for k, v in values.items()} | on_host | {"step_time": step_time}
            check_finite(record, n, stage.loss_names)
            records.append((n, stage.finish_metrics(record)))
        pending.clear()
        stopped = False
        if evaluate:
            last_eval = stage.evaluate(number, state)
            records[-1][1].update({f"eval/{k}": v for k, v in last_eval.items()})
            stopped = stage.stop(number, last_eval)
        for n, record in records:
            writer.write(n, record)
        if itstime(number, log.every, stage.steps) or stopped:
            bar.write(summary_line(stage.name, number, records[-1][1], stage.log_names))
        if show_samples:
            text = stage.samples()
            bar.write(f"{stage.name} {number} samples:\n{text}")
            writer.write_text(number, "samples", text)
        if save or stopped:
            meta = {"host": host, "eval": last_eval, "stopped": stopped}
            checkpointer.save(number, state, meta)
        since = time.perf_counter()
        if stopped:
            break
    writer.close()
    checkpointer.close()
    return StageResult(state, host, last_eval, trained=True)
