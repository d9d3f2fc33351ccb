"""The end of a run: a PNG of reward and accuracy over steps, and the final table."""

from __future__ import annotations

import os
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from rl_jax.trainers.metrics import read_metrics  # noqa: E402


def final_metrics(workdir: str) -> dict[str, float]:
    """The last RL step's training reward, accuracy and KL (empty if RL never ran)."""
    records = [r for r in read_metrics(workdir) if r["stage"] == "rl"]
    if not records:
        return {}
    last = records[-1]
    return {f"rl_final_{k}": last[k] for k in ("score", "accuracy", "kl_ref") if k in last}


def plot_curves(workdir: str) -> str:
    """Writes ``curves.png``: SFT loss and eval accuracy, RL reward, accuracy and eval accuracy."""
    records = read_metrics(workdir)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    sft = [r for r in records if r["stage"] == "sft"]
    rl = [r for r in records if r["stage"] == "rl"]
    if sft:
        ev = [r for r in sft if "eval/pass@1" in r]
        axes[0].plot(
            [r["step"] for r in ev],
            [r["eval/pass@1"] for r in ev],
            "o-",
            label="held-out accuracy (greedy)",
        )
        axes[0].set_title("SFT")
        axes[0].set_xlabel("step")
        axes[0].legend()
    if rl:
        steps = [r["step"] for r in rl]
        axes[1].plot(steps, [r["score"] for r in rl], alpha=0.6, label="train reward")
        axes[1].plot(steps, [r["accuracy"] for r in rl], alpha=0.6, label="train accuracy")
        ev = [r for r in rl if "eval/pass@1" in r]
        axes[1].plot(
            [r["step"] for r in ev],
            [r["eval/pass@1"] for r in ev],
            "o-",
            label="held-out accuracy (greedy)",
        )
        axes[1].set_title("RL")
        axes[1].set_xlabel("step")
        axes[1].legend()
    fig.tight_layout()
    path = os.path.join(workdir, "curves.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def final_table(summary: dict[str, Any]) -> str:
    rows = [
        ("held-out accuracy after SFT", summary.get("sft_eval", {}).get("pass@1")),
        ("held-out accuracy after RL", summary.get("rl_eval", {}).get("pass@1")),
    ]
    for key, value in summary.get("rl_eval", {}).items():
        if key != "pass@1":
            rows.append((f"after RL: {key}", value))
    rows += [
        ("final train reward", summary.get("rl_final_score")),
        ("final KL to reference", summary.get("rl_final_kl_ref", "n/a (kl.coef=0: no reference)")),
        ("wall time (s)", summary.get("wall_time_s")),
    ]
    lines = ["", f"{'metric':<32} value", "-" * 44]
    lines += [f"{name:<32} {_fmt(v)}" for name, v in rows]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return value if isinstance(value, str) else f"{value:.4g}"
