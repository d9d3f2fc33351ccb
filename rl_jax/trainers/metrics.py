"""Metrics out of a run: one compact stdout line a step, a JSONL file and TensorBoard events.

A resumed stage continues its metrics from the restored step: ``MetricWriter(resume_step=s)``
drops the stage's JSONL lines past ``s`` (written after the last checkpoint, before a crash) and
starts its TensorBoard run with ``purge_step=s + 1``, so readers see one value per step. A last
line cut short (a full disk, a kill during the write) is dropped with a warning.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from rl_jax.data.jsonl import read_jsonl

# Logged names (prefixes) of wall-clock measurements: the only numbers of a metrics line that are
# not a function of the seed. A repeated or resumed run repeats every other one.
WALL_CLOCK = ("time_", "step_time", "tokens_per_second")


def is_wall_clock(name: str) -> bool:
    """Whether the logged ``name`` is a wall-clock measurement (``WALL_CLOCK``)."""
    return name.startswith(WALL_CLOCK)


def _read_records(path: str) -> list[dict[str, Any]]:
    """The JSON objects of ``path``; a line that is not one is dropped with a warning."""

    def drop(error: ValueError) -> None:
        warnings.warn(f"damaged metrics line dropped: {error}", stacklevel=2)

    return [row for _, row in read_jsonl(path, {}, on_error=drop)]


class MetricWriter:
    """Writes ``{stage}/{name}`` scalars to ``workdir/metrics.jsonl`` and TensorBoard files
    (``workdir/tensorboard/<stage>``, one TensorBoard run per stage)."""

    def __init__(
        self, workdir: str | os.PathLike, stage: str, resume_step: int = 0, enabled: bool = True
    ):
        """``resume_step``: the step the stage continues from (0: the start); this stage's
        records past it are removed. ``enabled=False`` (every process but the first of a
        multi-process run) touches no file: ``write`` and ``close`` do nothing."""
        self.stage = stage
        self.enabled = enabled
        if not enabled:
            return
        path = os.path.join(workdir, "metrics.jsonl")
        if os.path.exists(path):
            records = _read_records(path)
            kept = [
                r for r in records if r.get("stage") != stage or r.get("step", 0) <= resume_step
            ]
            with open(path, "rb") as f:
                partial = f.seek(0, os.SEEK_END) > 0 and f.seek(-1, os.SEEK_END) >= 0 and (
                    f.read(1) != b"\n"
                )
            if len(kept) != len(records) or partial:
                temporary = path + ".tmp"
                with open(temporary, "w", encoding="utf-8") as f:
                    f.writelines(json.dumps(r) + "\n" for r in kept)
                os.replace(temporary, path)  # atomic: a crash leaves the old or the new file
        from tensorboardX import SummaryWriter  # imports torch: only writers pay for it

        self._jsonl = open(path, "a", encoding="utf-8")  # noqa: SIM115
        purge = {"purge_step": resume_step + 1} if resume_step else {}
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard", stage), **purge)

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        record = {"stage": self.stage, "step": step, **metrics}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        for name, value in metrics.items():
            self._tb.add_scalar(f"{self.stage}/{name}", value, step)

    def write_text(self, step: int, name: str, text: str) -> None:
        if not self.enabled:
            return
        self._tb.add_text(f"{self.stage}/{name}", text, step)

    def close(self) -> None:
        if not self.enabled:
            return
        self._jsonl.close()
        self._tb.close()


def summary_line(stage: str, step: int, metrics: Mapping[str, float], names: Sequence[str]) -> str:
    """``"rl 120 | reward 0.61 | acc 0.58 | ..."`` with the metrics present among ``names``."""
    parts = [f"{stage} {step:5d}"]
    for name in names:
        if name in metrics:
            parts.append(f"{name} {metrics[name]:.4g}")
    return " | ".join(parts)


def read_metrics(workdir: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of ``workdir/metrics.jsonl``, one per (stage, step): a damaged line is skipped
    with a warning, and of repeated (stage, step) lines (files of older versions) the last wins."""
    records = _read_records(os.path.join(workdir, "metrics.jsonl"))
    last = {(r.get("stage"), r.get("step")): i for i, r in enumerate(records)}
    return [r for i, r in enumerate(records) if last[(r.get("stage"), r.get("step"))] == i]
