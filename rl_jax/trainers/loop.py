"""The one training loop of every stage (SFT, reward model, RL).

A stage is a ``Stage``: its initial state, a jitted step, the batch of step ``s``, its evaluation,
its stop rule and the host state it checkpoints. ``run_stage`` owns everything else: resume (a
finished stage only restores), the Orbax checkpoints, the metrics files, the progress bar, one
"is it time" rule for eval / log / samples / checkpoint, the NaN/inf and divergence stops, the
host syncs, and SIGTERM/SIGINT (finish the step, save it, raise ``StageInterrupted``).

Host syncs: a step's metrics stay on the device until they are needed: at a logging, evaluation or
checkpoint step (or the last step) every pending step's metrics come to the host in one transfer,
are checked for NaN/inf, and written (one line per step). The device can therefore run ahead of
the Python loop between those steps.

Many processes: every process runs the same steps; the step's device metrics are means over the
global batch (replicated), the stage's host metrics are reduced over processes where they are
computed; only process 0 prints, writes metric files and moves a damaged checkpoint aside.

Resume: the newest readable checkpoint is restored (an unreadable one is reported and set aside:
``Checkpointer.restore``), and the metric files continue from the restored step: lines of this
stage past it are dropped, so a resumed run has exactly one line per step.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import tqdm

from rl_jax.settings import LoopSettings
from rl_jax.train_state import Metrics, TrainState
from rl_jax.trainers.checkpoint import Checkpointer
from rl_jax.trainers.metrics import MetricWriter, summary_line


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
      evaluate: ``evaluate(number, state) -> metrics``, every ``LoopSettings.eval_every`` steps
        and at the last.
      stop: ``stop(number, last_eval)``, asked after each evaluation: True ends the stage early,
        and a restart then only restores it.
      finish_metrics: derives written metrics from a step's host metrics (e.g. rates from
        ``step_time``).
      loss_names: the metrics checked for NaN/inf; log_names: the one-line summary's metrics.
      samples: ``samples() -> str``, written every ``LoopSettings.samples_every`` steps.
      limits: ``{metric: (largest allowed value, config field)}``, checked with the NaN/inf check
        at every sync point, before anything is saved (e.g. RL's ``approx_kl``).
      encode_host / decode_host: the host state to JSON for a checkpoint, and back after a
        restore (default: the host state is JSON already), e.g. RL's queue of pending rollouts.
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
    limits: dict[str, tuple[float, str]] = dataclasses.field(default_factory=dict)
    encode_host: Callable[[dict], dict] = lambda host: host
    decode_host: Callable[[dict], dict] = lambda host: host


@dataclasses.dataclass
class StageResult:
    """What ``run_stage`` returns."""

    state: TrainState
    host: dict  # the host state after the last step
    last_eval: Metrics  # the last evaluation (restored with the checkpoint)
    trained: bool  # False when a finished stage was only restored


class DivergenceError(RuntimeError):
    """A step whose metrics exceed a stage's limit (e.g. a policy update far too large)."""


class StageInterrupted(Exception):  # noqa: N818 - not an error: a requested stop
    """SIGTERM or SIGINT during a stage: the running step was finished and checkpointed.

    ``exit_code`` is the shell convention 128 + signal number (143 for SIGTERM, 130 for SIGINT).
    """

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


def check_record(
    metrics: Metrics,
    number: int,
    names: Sequence[str],
    limits: dict[str, tuple[float, str]] | None = None,
) -> None:
    """Stops the run (before anything is checkpointed) if a loss is NaN or inf
    (FloatingPointError) or a metric exceeds its limit (DivergenceError)."""
    bad = {n: metrics[n] for n in names if n in metrics and not math.isfinite(metrics[n])}
    if bad:
        raise FloatingPointError(f"non-finite loss at step {number}: {bad}; nothing was saved")
    for name, (limit, field) in (limits or {}).items():
        if limit > 0 and name in metrics and not metrics[name] <= limit:
            raise DivergenceError(
                f"step {number}: {name} = {metrics[name]:.4g} > {field} = {limit:g}: the update "
                f"moved the policy too far (learning rate too high?); stopped before step "
                f"{number} was checkpointed (set {field}=0 to turn this check off)"
            )


class _StopSignals:
    """While active, SIGTERM and SIGINT only set ``signum`` (a second one interrupts at once);
    the previous handlers come back on exit. A no-op outside the main thread."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame):
        if self.signum is not None:  # asked twice: stop now, without saving
            raise KeyboardInterrupt(f"signal {signum} received twice")
        self.signum = signum
        print(f"\nreceived {signal.Signals(signum).name}: finishing this step, then saving "
              "(send it again to stop at once, without saving)", flush=True)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        return False


def run_stage(stage: Stage, loop: LoopSettings, workdir: str) -> StageResult:
    """Runs ``stage`` in ``workdir`` from its last checkpoint to ``stage.steps`` or its stop rule,
    at the cadence of ``loop`` (evaluation, log lines, samples, checkpoints).

    A stage that finished (stopped by its rule, or at ``steps``) is only restored.

    Raises:
      StageInterrupted: after SIGTERM/SIGINT, once the running step is finished and saved.
      FloatingPointError / DivergenceError: a step's metrics failed ``check_record`` (nothing of
        that step is saved).
    """
    checkpointer = Checkpointer(os.path.join(workdir, stage.name), every=loop.checkpoint_every,
                                keep=loop.checkpoint_keep)
    state, host, last_eval = stage.state, dict(stage.host), {}
    restored = checkpointer.restore(state, shardings=stage.sharding)
    if restored is not None:
        state, meta = restored
        host, last_eval = stage.decode_host(meta["host"]), meta["eval"]
        print(f"{stage.name}: resumed from step {int(state.step)} of {checkpointer.directory}")
        if meta["stopped"] or int(state.step) >= stage.steps:
            checkpointer.close()
            return StageResult(state, host, last_eval, trained=False)
    state = jax.device_put(state, stage.sharding)
    writer = MetricWriter(workdir, stage.name, resume_step=int(state.step),
                          enabled=jax.process_index() == 0)  # one process writes the files
    try:
        with _StopSignals() as signals:
            return _train(stage, loop, state, host, last_eval, checkpointer, writer, signals)
    finally:
        writer.close()
        checkpointer.close()


def _train(stage, loop, state, host, last_eval, checkpointer, writer, signals) -> StageResult:
    """The steps of ``run_stage`` after the restore."""
    steps = range(int(state.step), stage.steps)
    first = jax.process_index() == 0  # only process 0 prints and writes
    bar = tqdm.tqdm(steps, desc=stage.name, disable=not (loop.progress_bar and first))
    pending: list[tuple[int, Metrics, Metrics]] = []  # (number, device metrics, host metrics)
    since = time.perf_counter()
    for step in bar:
        number = step + 1
        batch, host_metrics, host = stage.batch(step, state, host)
        state, metrics = stage.step(state, batch)
        pending.append((number, metrics, host_metrics))
        evaluate = stage.evaluate is not None and itstime(number, loop.eval_every, stage.steps)
        save = itstime(number, checkpointer.every, stage.steps)
        show_samples = stage.samples is not None and itstime(number, loop.samples_every, 0)
        interrupted = signals.signum is not None or (
            jax.process_count() > 1 and checkpointer.reached_preemption(number)
        )
        save = save or interrupted
        if not (evaluate or save or show_samples or itstime(number, loop.log_every, stage.steps)):
            continue
        # A sync point: every pending step's metrics come to the host in one transfer.
        fetched = jax.device_get([m for _, m, _ in pending])
        step_time = (time.perf_counter() - since) / len(pending)
        records = []
        for (n, _, on_host), values in zip(pending, fetched, strict=True):
            record = {k: float(v) for k, v in values.items()} | on_host | {"step_time": step_time}
            check_record(record, n, stage.loss_names, stage.limits)
            records.append((n, stage.finish_metrics(record)))
        pending.clear()
        stopped = False
        if evaluate:
            last_eval = stage.evaluate(number, state)
            records[-1][1].update({f"eval/{k}": v for k, v in last_eval.items()})
            stopped = stage.stop(number, last_eval)
        for n, record in records:
            writer.write(n, record)
        if first and (itstime(number, loop.log_every, stage.steps) or stopped):
            bar.write(summary_line(stage.name, number, records[-1][1], stage.log_names))
        if show_samples and first:
            text = stage.samples()
            bar.write(f"{stage.name} {number} samples:\n{text}")
            writer.write_text(number, "samples", text)
        if save or stopped:
            meta = {"host": stage.encode_host(host), "eval": last_eval, "stopped": stopped}
            checkpointer.save(number, state, meta)
        since = time.perf_counter()
        if stopped:
            break
        if interrupted:
            name = signal.Signals(signals.signum).name if signals.signum else "preemption"
            raise StageInterrupted(
                f"{stage.name}: stopped by {name} after step {number}; saved "
                f"{checkpointer.directory}/{number}; run the same command again to resume",
                signals.signum or signal.SIGTERM,
            )
    return StageResult(state, host, last_eval, trained=True)
