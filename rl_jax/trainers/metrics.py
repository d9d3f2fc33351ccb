"""Metrics out of a run: one compact stdout line a step, a JSONL file and TensorBoard events."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from tensorboardX import SummaryWriter


class MetricWriter:
    """Writes ``{stage}/{name}`` scalars to ``workdir/metrics.jsonl`` and TensorBoard files."""

    def __init__(self, workdir: str | os.PathLike, stage: str):
        self.stage = stage
        self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")  # noqa: SIM115
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        record = {"stage": self.stage, "step": step, **metrics}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        for name, value in metrics.items():
            self._tb.add_scalar(f"{self.stage}/{name}", value, step)

    def write_text(self, step: int, name: str, text: str) -> None:
        self._tb.add_text(f"{self.stage}/{name}", text, step)

    def close(self) -> None:
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
    """All records of ``workdir/metrics.jsonl``, in order."""
    path = os.path.join(workdir, "metrics.jsonl")
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
