r"""Kill -9 a tiny training run at random moments (during steps, saves, start-up), restart it until
it finishes, and compare with an uninterrupted run: the final checkpoints must be bit-identical and
metrics.jsonl must hold exactly one line per stage and step, with the same losses.

    python experiments/crash_test.py --trials=10 --kills=2 --root=/tmp/crash

Prints ``kill -9 x N: R resumed, B bit-identical, D duplicate lines`` (N kills over the trials).
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "tests" / "fixtures" / "tiny_config.py"


def train_command(workdir: str | os.PathLike, *overrides: str) -> list[str]:
    return [sys.executable, str(ROOT / "experiments" / "train.py"), f"--config={CONFIG}",
            f"--workdir={workdir}", *overrides]


def environment() -> dict[str, str]:
    """One CPU device (the tiny config's batches need no more), the repository importable."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return env


def train(workdir, *overrides: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(train_command(workdir, *overrides), env=environment(), text=True,
                          capture_output=True, timeout=timeout, check=False)


def start(workdir, *overrides: str) -> subprocess.Popen:
    return subprocess.Popen(train_command(workdir, *overrides), env=environment(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def final_arrays(workdir) -> dict[str, np.ndarray]:
    """Every array of the newest checkpoint of each stage, by ``stage/path``."""
    import jax
    import orbax.checkpoint as ocp

    arrays = {}
    for stage in ("sft", "rm", "rl"):
        directory = Path(workdir) / stage
        steps = sorted(int(p.name) for p in directory.glob("[0-9]*")) if directory.is_dir() else []
        if not steps:
            continue
        tree = ocp.StandardCheckpointer().restore(directory / str(steps[-1]) / "state")
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
            arrays[f"{stage}/{steps[-1]}{jax.tree_util.keystr(path)}"] = np.asarray(leaf)
    return arrays


def metric_lines(workdir) -> list[dict]:
    """The raw lines of metrics.jsonl (every line, no dedupe: a reader would hide duplicates)."""
    with open(Path(workdir) / "metrics.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def compare(reference, workdir) -> tuple[bool, int, list[str]]:
    """``(bit-identical, duplicate lines, problems)`` of ``workdir`` against ``reference``."""
    problems = []
    ref, got = final_arrays(reference), final_arrays(workdir)
    if ref.keys() != got.keys():
        problems.append(f"checkpoints differ: {sorted(ref.keys() ^ got.keys())[:4]}")
    identical = ref.keys() == got.keys() and all(np.array_equal(ref[k], got[k]) for k in ref)
    if not identical and ref.keys() == got.keys():
        worst = max(float(np.abs(ref[k].astype(np.float64) - got[k]).max()) for k in ref)
        problems.append(f"arrays differ, by up to {worst:.3g}")
    ref_lines, lines = metric_lines(reference), metric_lines(workdir)
    counts = collections.Counter((r["stage"], r["step"]) for r in lines)
    duplicates = sum(n - 1 for n in counts.values())
    if set(counts) != {(r["stage"], r["step"]) for r in ref_lines}:
        problems.append(f"metric lines for other steps: {sorted(counts)}")
    losses = {(r["stage"], r["step"]): r.get("loss") for r in ref_lines}
    changed = [k for k in counts if k in losses and
               [r.get("loss") for r in lines if (r["stage"], r["step"]) == k][-1] != losses[k]]
    if changed:
        problems.append(f"losses differ at {changed[:4]}")
    return identical, duplicates, problems


def trial(reference, workdir, kills: int, rng: random.Random, window: tuple[float, float]):
    """Kills a run ``kills`` times at random moments, then lets it finish. ``(kills done,
    resumed, bit-identical, duplicate lines, problems, kills during a save)``."""
    done = during_save = 0
    for _ in range(kills):
        process = start(workdir)
        time.sleep(rng.uniform(*window))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            done += 1
        process.communicate()
        # Orbax writes a step into "<step>.orbax-checkpoint-tmp-*" and renames it when complete.
        during_save += bool(glob.glob(f"{workdir}/*/*.orbax-checkpoint-tmp*"))
    final = train(workdir)
    if final.returncode != 0:
        return done, False, False, 0, [f"the restart failed ({final.returncode}):\n"
                                       f"{final.stderr[-2000:]}"], during_save
    identical, duplicates, problems = compare(reference, workdir)
    return done, True, identical, duplicates, problems, during_save


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--kills", type=int, default=2, help="kill -9 per trial")
    parser.add_argument("--root", default="/tmp/crash_test")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--window", type=float, nargs=2, default=(3.0, 60.0),
                        help="seconds after a start within which the kill lands")
    args = parser.parse_args()
    root = Path(args.root)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    rng = random.Random(args.seed)
    straight = train(root / "reference")
    if straight.returncode != 0:
        print(straight.stderr[-3000:])
        return 1
    totals = collections.Counter()
    for i in range(args.trials):
        done, resumed, identical, duplicates, problems, during_save = trial(
            root / "reference", root / f"trial{i}", args.kills, rng, tuple(args.window))
        totals.update(kills=done, resumed=int(resumed), identical=int(identical),
                      duplicates=duplicates, during_save=during_save)
        print(f"trial {i}: {done} kills ({during_save} during a save), resumed {resumed}, "
              f"bit-identical {identical}, {duplicates} duplicate lines {problems or ''}",
              flush=True)
    print(f"kill -9 x {totals['kills']} over {args.trials} trials ({totals['during_save']} during "
          f"a save): {totals['resumed']} resumed, {totals['identical']} bit-identical, "
          f"{totals['duplicates']} duplicate lines")
    ok = totals["resumed"] == totals["identical"] == args.trials and not totals["duplicates"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
