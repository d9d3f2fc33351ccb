r"""Kill -9 a tiny training run at random moments, restart it until it finishes, and compare with
an uninterrupted run: the final checkpoints must be bit-identical and metrics.jsonl must hold
exactly one line per stage and step, with the same metrics (all but the wall-clock timings).

    python tools/crash_test.py --trials=10 --kills=2 --root=/tmp/crash
    python tools/crash_test.py --trials=3 --override=--config.rl.max_staleness=1 \
        --override=--config.rl.stale_policy=wait   # the off-policy queue in the checkpoint

Each kill waits until the running process has written a checkpoint of its own (distinct steps
drawn at random for the kills of a trial, the last save excepted), then a random 0..--jitter
seconds more (so it lands in a step, a save, an evaluation or a compilation), and sends SIGKILL.
A trial passes only if every kill landed (the process was alive and died of SIGKILL: return
code -9) after that checkpoint, the next start restored the newest complete checkpoint (its
``<stage>: resumed from step <n>`` line), and the finished run matches the uninterrupted one.
``--kill=false`` sends no signal: the same trials then fail, which shows the check can fail.

Prints one line per trial and ``kill -9: K of N landed over T trials (S during a save), R restored
(from <stage>/<step> ...), B bit-identical, D duplicate lines``.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from absl import app, flags

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "tests" / "fixtures" / "tiny_config.py"
STAGES = ("sft", "rm", "rl")
# What run_stage prints when it restores a checkpoint (rl_jax/trainers/loop.py).
RESUMED = re.compile(r"^(\w+): resumed from step (\d+) of ", re.MULTILINE)


def train_command(workdir: str | os.PathLike, *overrides: str) -> list[str]:
    return [sys.executable, str(ROOT / "experiments" / "train.py"), f"--config={CONFIG}",
            f"--workdir={workdir}", *overrides]


def environment() -> dict[str, str]:
    """One CPU device (the tiny config's batches need no more), the repository importable,
    unbuffered output."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONUNBUFFERED"] = "1"  # a killed process loses no printed line
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


def deterministic(record: dict) -> dict:
    """A metric line without its wall-clock timings (``metrics.is_wall_clock``): everything else
    is a function of the seed and must survive a kill."""
    from rl_jax.trainers.metrics import is_wall_clock

    return {k: v for k, v in record.items() if not is_wall_clock(k)}


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
    want = {(r["stage"], r["step"]): deterministic(r) for r in ref_lines}
    changed = sorted({(k, name) for r in lines if (k := (r["stage"], r["step"])) in want
                      for name in deterministic(r).keys() | want[k].keys()
                      if deterministic(r).get(name) != want[k].get(name)})
    if changed:
        problems.append(f"metrics differ at {changed[:4]}")
    return identical, duplicates, problems


def newest_checkpoints(workdir) -> dict[str, int]:
    """The newest complete checkpoint step of each stage. Orbax writes a step into
    ``<step>.orbax-checkpoint-tmp-*`` and renames it to ``<step>`` once every file is written."""
    newest = {}
    for stage in STAGES:
        steps = [int(p.name) for p in (Path(workdir) / stage).glob("[0-9]*") if p.name.isdigit()]
        if steps:
            newest[stage] = max(steps)
    return newest


def save_order(reference) -> list[tuple[str, int]]:
    """``(stage, step)`` of every save of the uninterrupted run, in order (the tiny config saves
    every step, so these are its metric lines)."""
    return [(r["stage"], r["step"]) for r in metric_lines(reference)]


def progress(newest: dict[str, int], order: list[tuple[str, int]]) -> int:
    """The position in ``order`` of the newest checkpoint (-1: none yet)."""
    return max((order.index(k) for k in newest.items() if k in order), default=-1)


@dataclasses.dataclass
class Kill:
    """One start of the run that was to be killed, and what the next start restored."""

    pid: int
    target: str  # "<stage>/<step>": the checkpoint of its own the process had to write first
    reached: bool = False  # that checkpoint existed before the signal
    sent: bool = False  # SIGKILL was sent (False with kills disabled)
    alive: bool = False  # the process was running when it was sent
    seconds: float = 0.0  # after the start
    returncode: int | None = None
    newest: dict[str, int] = dataclasses.field(default_factory=dict)  # after it died
    during_save: bool = False  # a temporary step directory was left behind
    resumed: dict[str, int] = dataclasses.field(default_factory=dict)  # by the next start


@dataclasses.dataclass
class Trial:
    kills: list[Kill]
    returncode: int  # of the last start, which ran to the end
    identical: bool = False
    duplicates: int = 0
    problems: list[str] = dataclasses.field(default_factory=list)  # of ``compare``


def resumed_steps(output: str) -> dict[str, int]:
    """``{stage: step}`` of the ``<stage>: resumed from step <n> of <dir>`` lines of a start."""
    return {stage: int(step) for stage, step in RESUMED.findall(output)}


def check_trial(trial: Trial, kills: int) -> list[str]:
    """What a trial fails to show: ``kills`` kills that landed on a live process after it wrote a
    checkpoint, a restore of the newest complete checkpoint after each, and a finished run equal
    to the uninterrupted one. Empty when it shows all of it."""
    problems = []
    if len(trial.kills) != kills:
        problems.append(f"{len(trial.kills)} starts to kill, expected {kills}")
    for i, kill in enumerate(trial.kills, 1):
        if not kill.reached:
            problems.append(f"kill {i}: the process wrote no checkpoint ({kill.target}) before it")
        if not (kill.sent and kill.alive):
            problems.append(f"kill {i}: no SIGKILL reached a live process (sent {kill.sent}, "
                            f"alive {kill.alive})")
        if kill.returncode != -signal.SIGKILL:
            problems.append(f"kill {i}: return code {kill.returncode}, expected -9 (SIGKILL)")
        stage = max(kill.newest, key=STAGES.index, default=None)  # the stage it was in
        if stage is None or kill.resumed.get(stage) != kill.newest[stage]:
            problems.append(f"kill {i}: the next start restored {kill.resumed or 'nothing'}, "
                            f"expected {stage} step {kill.newest.get(stage)}")
    if trial.returncode != 0:
        problems.append(f"the last start exited with {trial.returncode}")
    elif not trial.identical or trial.duplicates or trial.problems:
        problems.append(f"not equal to the uninterrupted run: {trial.duplicates} duplicate "
                        f"lines {trial.problems}")
    return problems


def kill_once(workdir, order, target: int, rng: random.Random, jitter: float,
              kill: bool, overrides: tuple[str, ...] = ()) -> tuple[Kill, str]:
    """Starts the run, waits until it has written checkpoint ``order[target]`` (or, if that one
    exists already, the next one: one of its own) and ``uniform(0, jitter)`` seconds more, and
    kills it (or, with ``kill`` False, lets it finish). Returns the record and its output."""
    target = min(max(target, progress(newest_checkpoints(workdir), order) + 1), len(order) - 1)
    process = start(workdir, *overrides)
    record = Kill(pid=process.pid, target="/".join(map(str, order[target])))
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
    reader.start()
    started = time.monotonic()
    while process.poll() is None and progress(newest_checkpoints(workdir), order) < target:
        time.sleep(0.05)
    record.reached = progress(newest_checkpoints(workdir), order) >= target
    time.sleep(rng.uniform(0, jitter))
    record.alive = process.poll() is None
    record.seconds = time.monotonic() - started
    if kill:
        process.send_signal(signal.SIGKILL)
        record.sent = True
    record.returncode = process.wait()
    reader.join()
    record.newest = newest_checkpoints(workdir)
    record.during_save = bool(glob.glob(f"{workdir}/*/*.orbax-checkpoint-tmp*"))
    return record, "".join(lines)


def trial(reference, workdir, kills: int, rng: random.Random, jitter: float = 1.0,
          kill: bool = True, overrides: tuple[str, ...] = ()) -> Trial:
    """Kills a run ``kills`` times (see ``kill_once``), lets the last start finish and compares
    it with ``reference``; ``check_trial`` says whether it proves anything."""
    order, records = save_order(reference), []
    # Distinct checkpoints to wait for, in order, the last save excepted (the run must go on).
    targets = sorted(rng.sample(range(len(order) - 1), kills))
    for target in targets:
        record, output = kill_once(workdir, order, target, rng, jitter, kill, overrides)
        if records:
            records[-1].resumed = resumed_steps(output)
        records.append(record)
    final = train(workdir, *overrides)
    if records:
        records[-1].resumed = resumed_steps(final.stdout)
    result = Trial(records, final.returncode)
    if final.returncode != 0:
        result.problems.append(f"the restart failed:\n{final.stderr[-2000:]}")
        return result
    result.identical, result.duplicates, result.problems = compare(reference, workdir)
    return result


_TRIALS = flags.DEFINE_integer("trials", 10, "Trials, each against the uninterrupted run.")
_KILLS = flags.DEFINE_integer("kills", 2, "kill -9 per trial.")
_ROOT = flags.DEFINE_string("root", "/tmp/crash_test", "Directory of the runs (emptied first).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the kill moments.")
_JITTER = flags.DEFINE_float(
    "jitter", 1.0, "Seconds, at most, between the awaited checkpoint and the kill.")
_OVERRIDES = flags.DEFINE_multi_string(
    "override", [], "A config override of every run, e.g. --override=--config.rl.max_staleness=1 "
    "--override=--config.rl.stale_policy=wait (the off-policy queue in the checkpoint).")
_KILL = flags.DEFINE_bool(
    "kill", True, "false: send no signal (a control: every trial must then fail).")


def main(argv) -> int:
    del argv
    root = Path(_ROOT.value)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    rng = random.Random(_SEED.value)
    began = time.monotonic()
    overrides = tuple(_OVERRIDES.value)
    straight = train(root / "reference", *overrides)
    if straight.returncode != 0:
        print(straight.stderr[-3000:])
        return 1
    totals, restored, failed = collections.Counter(), [], 0
    for i in range(_TRIALS.value):
        result = trial(root / "reference", root / f"trial{i}", _KILLS.value, rng, _JITTER.value,
                       _KILL.value, overrides)
        problems = check_trial(result, _KILLS.value)
        failed += bool(problems)
        landed = [k for k in result.kills if k.sent and k.alive and k.returncode == -9]
        totals.update(kills=len(result.kills), landed=len(landed), identical=result.identical,
                      during_save=sum(k.during_save for k in result.kills),
                      duplicates=result.duplicates)
        for k in result.kills:
            stage = max(k.newest, key=STAGES.index, default=None)
            if stage is not None and k.resumed.get(stage) == k.newest[stage]:
                restored.append(f"{stage}/{k.newest[stage]}")
        kills = ", ".join(f"pid {k.pid} at {k.seconds:.1f} s after {k.target} (exit "
                          f"{k.returncode}{', in a save' if k.during_save else ''}) -> resumed "
                          f"{k.resumed}" for k in result.kills)
        print(f"trial {i}: {kills}; bit-identical {result.identical}, {result.duplicates} "
              f"duplicate lines; {'FAIL ' + '; '.join(problems) if problems else 'ok'}",
              flush=True)
    print(f"kill -9: {totals['landed']} of {totals['kills']} landed over {_TRIALS.value} trials "
          f"({totals['during_save']} during a save), {len(restored)} restored (from "
          f"{' '.join(restored)}), {totals['identical']} bit-identical, {totals['duplicates']} "
          f"duplicate lines; {failed} trials failed; {time.monotonic() - began:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    app.run(main)
