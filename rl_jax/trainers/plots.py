"""The end of a run: a PNG of each stage's curves over steps, and the final table."""

from __future__ import annotations

import os
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from rl_jax.trainers.metrics import read_metrics  # noqa: E402


def final_metrics(workdir: str) -> dict[str, float]:
    """The last RL step's reward, accuracy, KL and each reward's mean (empty without RL)."""
    records = [r for r in read_metrics(workdir) if r["stage"] == "rl"]
    if not records:
        return {}
    last = records[-1]
    names = ["score", "accuracy", "kl_ref"] + [k for k in last if k.startswith("reward/")]
    return {f"rl_final_{k}": last[k] for k in names if k in last}


def _evals(records: list[dict], name: str) -> tuple[list, list]:
    rows = [r for r in records if name in r]
    return [r["step"] for r in rows], [r[name] for r in rows]


def plot_curves(workdir: str) -> str:
    """Writes ``curves.png``, a panel per stage that ran: SFT held-out accuracy; reward-model
    accuracy (train batches, held-out pairs); RL reward, accuracy and held-out accuracy; and, when
    RL used a learned reward, each reward's mean with the KL to the reference (over-optimisation
    shows as the gold reward falling while the learned reward rises with the KL)."""
    records = read_metrics(workdir)
    stages = {s: [r for r in records if r["stage"] == s] for s in ("sft", "rm", "rl")}
    learned = any("reward/model" in r for r in stages["rl"])
    panels = [s for s in ("sft", "rm", "rl") if stages[s]] + (["rewards"] if learned else [])
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(5.5 * max(len(panels), 1), 4))
    axes = [axes] if len(panels) <= 1 else list(axes)
    for ax, panel in zip(axes, panels, strict=False):
        ax.set_xlabel("step")
        if panel == "sft":
            ax.plot(*_evals(stages["sft"], "eval/pass@1"), "o-", label="held-out accuracy (greedy)")
            ax.set_title("SFT")
        elif panel == "rm":
            rm = stages["rm"]
            ax.plot(
                [r["step"] for r in rm],
                [r["accuracy"] for r in rm],
                alpha=0.6,
                label="train pair accuracy",
            )
            ax.plot(*_evals(rm, "eval/pair_accuracy"), "o-", label="held-out pair accuracy")
            ax.set_title("Reward model")
        elif panel == "rl":
            rl = stages["rl"]
            steps = [r["step"] for r in rl]
            ax.plot(steps, [r["score"] for r in rl], alpha=0.6, label="train reward")
            ax.plot(steps, [r["accuracy"] for r in rl], alpha=0.6, label="train accuracy")
            ax.plot(*_evals(rl, "eval/pass@1"), "o-", label="held-out accuracy (greedy)")
            ax.set_title("RL")
        else:
            rl = stages["rl"]
            steps = [r["step"] for r in rl]
            for name in sorted(k for k in rl[-1] if k.startswith("reward/")):
                label = "learned reward (normalised)" if name == "reward/model" else name[7:]
                ax.plot(steps, [r.get(name, float("nan")) for r in rl], label=label)
            ax.set_title("RL on a learned reward: samples' rewards and KL")
            if "kl_ref" in rl[-1]:
                kl_ax = ax.twinx()
                kl_ax.plot(
                    steps,
                    [r.get("kl_ref", float("nan")) for r in rl],
                    "k--",
                    alpha=0.6,
                    label="KL to reference",
                )
                kl_ax.set_ylabel("KL to reference (per sequence)")
                kl_ax.legend(loc="lower right")
        ax.legend(loc="upper left")
    fig.tight_layout()
    path = os.path.join(workdir, "curves.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def final_table(summary: dict[str, Any]) -> str:
    """The final results of the stages that ran, one row each."""
    rows: list[tuple[str, Any]] = []
    if "sft_eval" in summary:
        rows.append(("held-out accuracy after SFT", summary["sft_eval"].get("pass@1")))
        rows += [(f"after SFT: {k}", v) for k, v in summary["sft_eval"].items() if k != "pass@1"]
    for key, value in summary.get("rm_eval", {}).items():
        rows.append((f"reward model: {key}", value))
    if "rl_eval" in summary:
        rows.append(("held-out accuracy after RL", summary["rl_eval"].get("pass@1")))
        for key, value in summary["rl_eval"].items():
            if key != "pass@1":
                rows.append((f"after RL: {key}", value))
        rows.append(("final train reward", summary.get("rl_final_score")))
        for key in sorted(k for k in summary if k.startswith("rl_final_reward/")):
            rows.append((f"final train {key[9:]}", summary[key]))
        kl = summary.get("rl_final_kl_ref", "n/a (kl.coef=0: no reference)")
        rows.append(("final KL to reference", kl))
    rows.append(("wall time (s)", summary.get("wall_time_s")))
    lines = ["", f"{'metric':<40} value", "-" * 52]
    lines += [f"{name:<40} {_fmt(v)}" for name, v in rows]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return value if isinstance(value, str) else f"{value:.4g}"
