r"""Tests a paper's claim: every variant x seed of an ablation file, then a table and a verdict.

    python experiments/ablate.py --ablation=configs/ablations/gspo.py --workdir=/tmp/gspo
    python experiments/ablate.py --ablation=configs/ablations/rloo.py --workdir=/tmp/rloo \
        --seeds=0,1,2 --variants=ppo,rloo

Runs go in ``workdir/<variant>/seed<k>`` (SFT and the reward model once per seed in
``workdir/shared/seed<k>``); started again, finished runs are skipped and an interrupted one
resumes. Writes ``table.md``, ``curves.png`` and ``verdict.json`` in the workdir and prints a line
per claim: reproduced, not reproduced or inconclusive (see ``rl_jax/ablation.py`` for the rule).
To rerun one row alone, delete its directory and pass ``--variants=NAME --seeds=K``.
"""

from __future__ import annotations

import functools
import importlib.util
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
    seeds = None if _SEEDS.value is None else [int(s) for s in _SEEDS.value]
    print(f"claim: {ablation.claim}")
    mesh = parallel.make_mesh(fsdp=_FSDP.value)
    try:
        check_runs(ablation, seeds, _VARIANTS.value, mesh.devices.size)
    except ConfigError as error:
        sys.exit(f"error: {error}")
    train = functools.partial(run, mesh=mesh)
    counts = ablation_lib.sweep(
        ablation, _WORKDIR.value, train, seeds=seeds, variants=_VARIANTS.value,
        progress=tqdm.tqdm,
    )
    results = ablation_lib.report(ablation, _WORKDIR.value, seeds=seeds, variants=_VARIANTS.value)
    for result in results:
        print(ablation_lib.claim_line(result))
    print(f"runs: {counts['done']} run, {counts['skipped']} already finished; "
          f"table, curves and verdict in {_WORKDIR.value}; "
          f"total time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    app.run(main)
