r"""Runs the stages a config names (SFT, then RL) in a workdir; restarted, it resumes.

    python experiments/train.py --config=configs/arithmetic_grpo.py --workdir=/tmp/arith \
        --config.rl.steps=100

Writes ``metrics.jsonl``, TensorBoard events, Orbax checkpoints (``sft/``, ``rl/``), the tokenizer
of a from-scratch model, ``summary.json`` and ``curves.png`` into the workdir, and prints a final
table (held-out accuracy after SFT and after RL, reward, KL, wall time).

SIGTERM or Ctrl-C finishes the running step, saves it and exits with 128 + the signal number
(143, 130), naming the checkpoint; the same command resumes. A workdir started with another config
is refused (``--allow_config_change`` continues anyway); a workdir in use by another process too.

Many hosts: start one process per host with ``--distributed`` (``jax.distributed.initialize()``
before anything else; on a GPU cluster under SLURM/Open MPI and on a TPU pod slice it finds the
coordinator and this process's id itself, elsewhere give ``--coordinator_address``,
``--num_processes`` and ``--process_id``); the same ``--workdir`` on a filesystem every host sees.
``tools/launch_local_hosts.py`` starts N such processes on this machine.
"""

from __future__ import annotations

import os
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from rl_jax import parallel
from rl_jax.config import ConfigError
from rl_jax.trainers.checkpoint import CheckpointMismatchError
from rl_jax.trainers.loop import DivergenceError, StageInterrupted
from rl_jax.trainers.run import run
from rl_jax.trainers.workdir import ConfigChangedError, WorkdirLockedError

# Errors whose message says all there is to say: printed without a traceback, exit status 1.
USER_ERRORS = (ConfigError, ConfigChangedError, WorkdirLockedError, CheckpointMismatchError,
               DivergenceError, FloatingPointError, FileNotFoundError)

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of the run (created, or resumed).")
_FSDP = flags.DEFINE_integer("fsdp", 1, "Devices that shard one copy of the parameters.")
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False,
    "Continue in a workdir started with a config that trains something else.",
)
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False,
    "Call jax.distributed.initialize() first: one process per host of a multi-host run.",
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None,
    "host:port of process 0 (with --distributed; default: detected from the cluster).",
)
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Processes in the run (with --distributed; default: detected)."
)
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "This process's index (with --distributed; default: detected)."
)
flags.mark_flags_as_required(["config", "workdir"])


def initialize_distributed() -> None:
    """``jax.distributed.initialize`` with the flags given (the others detected); on CPU, the
    gloo collectives between processes."""
    given = {"coordinator_address": _COORDINATOR.value, "num_processes": _NUM_PROCESSES.value,
             "process_id": _PROCESS_ID.value}
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**{k: v for k, v in given.items() if v is not None})


def main(argv):
    del argv
    if not flags.FLAGS["verbosity"].present:  # keep library INFO logs (Orbax) off stdout
        logging.set_verbosity(logging.WARNING)
    if _DISTRIBUTED.value:
        initialize_distributed()
    elif any(f.value is not None for f in (_COORDINATOR, _NUM_PROCESSES, _PROCESS_ID)):
        sys.exit("error: --coordinator_address, --num_processes and --process_id need "
                 "--distributed")
    try:
        run(_CONFIG.value, _WORKDIR.value, parallel.make_mesh(fsdp=_FSDP.value),
            allow_config_change=_ALLOW_CONFIG_CHANGE.value)
    except StageInterrupted as stop:
        print(stop, file=sys.stderr, flush=True)
        sys.exit(stop.exit_code)
    except USER_ERRORS as error:
        sys.exit(f"error: {error}")


def config_path_error(argv: list[str]) -> str | None:
    """A message when ``--config`` names a file that does not exist (ml_collections would say
    only "Failed loading config file config_config")."""
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            value = arg.split("=", 1)[1]
        elif arg == "--config" and i + 1 < len(argv):
            value = argv[i + 1]
        else:
            continue
        path = value.split(":", 1)[0]  # a config may take an argument: file.py:arg
        if not os.path.isfile(path):
            return (f"--config={value}: no such file {os.path.abspath(path)!r} (expected a "
                    "config file such as configs/arithmetic_grpo.py)")
    return None


if __name__ == "__main__":
    if (message := config_path_error(sys.argv[1:])) is not None:
        sys.exit(f"error: {message}")
    app.run(main)
