r"""Tests a paper's claim: every variant x seed of an ablation file, then a table and a verdict.

    python experiments/ablate.py --ablation=configs/ablations/gspo.py --workdir=/tmp/gspo
    python experiments/ablate.py --ablation=configs/ablations/rloo.py --workdir=/tmp/rloo \
        --seeds=0,1,2 --variants=ppo,rloo

Runs go in ``workdir/<variant>/seed<k>`` (SFT and the reward model once per seed in
``workdir/shared/seed<k>``); started again, finished runs are skipped and an interrupted one
resumes. Writes ``table.md``, ``curves.png`` and ``verdict.json`` in the workdir and prints a line
per claim: reproduced, not reproduced, no effect of the claimed size, not engaged or inconclusive
with its reason (``rl_jax.ablation.judge`` has the rule). Each run's directory gets a
``provenance.json`` (commit, dirty tree, library versions, this command, wall time, host).
To rerun one row alone, delete its directory and pass ``--variants=NAME --seeds=K``.
``--jobs=N`` runs N rows at once, each in a spawned process (the shared SFT / RM rows of every
seed first, then the variants: ``rl_jax.ablation.plan_jobs``); each process uses every device and
core it sees, so on an accelerator keep N at 1 or limit each process's memory
(``XLA_PYTHON_CLIENT_MEM_FRACTION``).

Sizing the seeds first (docs/reproductions.md)::

    python experiments/ablate.py --ablation=configs/ablations/dapo.py --workdir=/tmp/dapo \
        --pilot [--pilot_seeds=3]

runs only the first ``--pilot_seeds`` seeds of the ablation file's list for each variant, in
``workdir/pilot`` (its own table, curves and verdict), then prints per claim the sd of the paired
differences, the engagement against its floor, and the seeds needed for 80% power at the claim's
smallest effect (one-sided t test at 2.5%: one side of the verdict's 95% interval), and writes
them to ``workdir/pilot/pilot.json``. The pilot's seeds are kept apart from the verdict's: the
sweep then runs the ablation file's seeds after the pilot's, then the following integers, as many
as the largest count needed (``rl_jax.ablation.split_seeds``); run without ``--seeds``, it takes
them from ``pilot.json``, and a ``--seeds`` that reuses a pilot seed is refused.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import tqdm
from absl import app, flags, logging

from rl_jax import ablation as ablation_lib
from rl_jax import parallel
from rl_jax.config import ConfigError, check_config
from rl_jax.trainers.run import run


def _load_ablation(path: str) -> ablation_lib.Ablation:
    """The ablation file at ``path``, with the repository's ``configs/`` package loaded from its
    path first, so that the file's ``from configs import ...`` resolves without the repository
    root on sys.path (``python experiments/ablate.py`` puts only experiments/ there)."""
    configs = Path(__file__).resolve().parents[1] / "configs"
    spec = importlib.util.spec_from_file_location(
        "configs", configs / "__init__.py", submodule_search_locations=[str(configs)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["configs"] = module
    spec.loader.exec_module(module)
    return ablation_lib.load_ablation(path)


_ABLATION = flags.DEFINE_string("ablation", None, "Ablation file (configs/ablations/*.py).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of the sweep (created, or resumed).")
_SEEDS = flags.DEFINE_list("seeds", None, "Seeds to run (default: the ablation file's).")
_VARIANTS = flags.DEFINE_list("variants", None, "Variants to run (default: all).")
_FSDP = flags.DEFINE_integer("fsdp", 1, "Devices that shard one copy of the parameters.")
_JOBS = flags.DEFINE_integer(
    "jobs", 1, "Rows run at once, each in its own process (1: in this process, one by one).")
_PILOT = flags.DEFINE_bool("pilot", False, "Run a pilot and size the seeds; no verdict sweep.")
_PILOT_SEEDS = flags.DEFINE_integer("pilot_seeds", 3, "Seeds of the pilot: the file's first.")
flags.mark_flags_as_required(["ablation", "workdir"])


def check_runs(ablation, seeds, variants, num_devices: int) -> None:
    """``check_config`` of every (variant, seed) of the sweep, before its first run: one
    ``ConfigError`` naming each bad variant and all its bad fields (a variant that is not in the
    ablation is left to ``sweep``, which names it)."""
    problems = []
    for name in ablation.variants if variants is None else variants:
        if name not in ablation.variants:
            continue
        errors: list[str] = []
        for seed in ablation.seeds if seeds is None else seeds:
            config = ablation_lib.run_config(ablation.base, ablation.variants[name], seed)
            try:
                check_config(config, num_devices=num_devices)
            except ConfigError as error:
                errors += [e for e in str(error).splitlines()[1:] if e not in errors]
        if errors:
            problems.append(f"variant {name}:\n" + "\n".join(errors))
    if problems:
        raise ConfigError("invalid variants, nothing was run:\n" + "\n".join(problems))


def main(argv):
    del argv
    if not flags.FLAGS["verbosity"].present:  # keep library INFO logs (Orbax) off stdout
        logging.set_verbosity(logging.WARNING)
    start = time.perf_counter()
    ablation = _load_ablation(_ABLATION.value)
    requested = None if _SEEDS.value is None else [int(s) for s in _SEEDS.value]
    pilot_path = os.path.join(_WORKDIR.value, ablation_lib.PILOT_DIR, "pilot.json")
    workdir = _WORKDIR.value
    if _PILOT.value:
        if requested is not None:
            sys.exit("error: --pilot takes the first --pilot_seeds of the file's seeds; "
                     "--seeds is for the verdict's sweep")
        seeds, _ = ablation_lib.split_seeds(ablation.seeds, _PILOT_SEEDS.value, 0)
        workdir = os.path.join(_WORKDIR.value, ablation_lib.PILOT_DIR)
    else:
        pilot = None
        if os.path.exists(pilot_path):
            with open(pilot_path, encoding="utf-8") as f:
                pilot = json.load(f)
        try:
            seeds = ablation_lib.sweep_seeds(ablation.seeds, requested, pilot)
        except ValueError as error:
            sys.exit(f"error: {error}")
    print(f"claim: {ablation.claim}")
    mesh = parallel.make_mesh(fsdp=_FSDP.value)
    try:
        check_runs(ablation, seeds, _VARIANTS.value, mesh.devices.size)
    except ConfigError as error:
        sys.exit(f"error: {error}")
    if _JOBS.value == 1:
        train = functools.partial(run, mesh=mesh)
    else:  # each worker process makes its own mesh
        train = functools.partial(ablation_lib.train_in_process, fsdp=_FSDP.value)
    counts = ablation_lib.sweep(
        ablation, workdir, train, seeds=seeds, variants=_VARIANTS.value, progress=tqdm.tqdm,
        jobs=_JOBS.value,
    )
    results = ablation_lib.report(ablation, workdir, seeds=seeds, variants=_VARIANTS.value)
    if _PILOT.value:
        names = list(ablation.variants if _VARIANTS.value is None else _VARIANTS.value)
        values, _ = ablation_lib.read_values(ablation, workdir, seeds, names)
        plan = ablation_lib.pilot_plan(ablation, values, seeds, names)
        with open(pilot_path, "w", encoding="utf-8") as f:
            json.dump(plan, f, indent=2)
        print("\n".join(ablation_lib.pilot_lines(plan)))
    else:
        for result in results:
            print(ablation_lib.claim_line(result))
    print(f"runs: {counts['done']} run, {counts['skipped']} already finished; "
          f"table, curves and verdict in {workdir}; "
          f"total time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    app.run(main)
