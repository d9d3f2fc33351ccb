r"""The SmolLM2 GRPO run against its shuffled-reward control: one PNG and a table.

    python experiments/smollm2/plot_runs.py \
        --runs=grpo:/tmp/smollm2,shuffled:/tmp/smollm2_shuffled --start=0.461 \
        --n=128 --out=experiments/smollm2/results/grpo_vs_shuffled.png

Left: held-out greedy accuracy (``eval/pass@1``) with its binomial standard error
sqrt(p (1 - p) / n), step 0 being ``--start`` (``experiments/eval_start.py``). Right: the accuracy
of the training samples (temperature 1) at each step. Prints each run's held-out accuracies.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from rl_jax.trainers.metrics import read_metrics  # noqa: E402

_RUNS = flags.DEFINE_list("runs", None, "label:workdir pairs, e.g. grpo:/tmp/a,shuffled:/tmp/b.")
_START = flags.DEFINE_float("start", None, "Held-out accuracy at step 0 (eval_start's pass@1).")
_N = flags.DEFINE_integer("n", 128, "Held-out prompts (for the standard error).")
_OUT = flags.DEFINE_string("out", None, "The PNG to write.")
flags.mark_flags_as_required(["runs", "start", "out"])


def main(argv):
    del argv
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for item in _RUNS.value:
        label, workdir = item.split(":", 1)
        rl = [r for r in read_metrics(workdir) if r["stage"] == "rl"]
        evals = [(0, _START.value)]
        evals += [(r["step"], r["eval/pass@1"]) for r in rl if "eval/pass@1" in r]
        steps, acc = (np.asarray(x) for x in zip(*evals, strict=True))
        se = np.sqrt(acc * (1 - acc) / _N.value)
        left.errorbar(steps, acc, yerr=se, fmt="o-", capsize=3, label=label)
        right.plot([r["step"] for r in rl], [r["accuracy"] for r in rl], alpha=0.8, label=label)
        print(f"{label}: held-out pass@1 " + ", ".join(
            f"step {s}: {a:.3f} +- {e:.3f}" for s, a, e in zip(steps, acc, se, strict=True)))
        times = [r["step_time"] for r in rl if "step_time" in r]
        print(f"  {len(rl)} steps, median step time {np.median(times):.0f} s")
    left.set(title=f"held-out accuracy (greedy, n={_N.value}, +- 1 s.e.)", xlabel="step")
    right.set(title="training samples' accuracy (temperature 1)", xlabel="step")
    for ax in (left, right):
        ax.legend()
    fig.tight_layout()
    fig.savefig(_OUT.value, dpi=100)
    print(_OUT.value)


if __name__ == "__main__":
    app.run(main)
