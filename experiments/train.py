r"""Runs the stages a config names (SFT, then RL) in a workdir; restarted, it resumes.

    python experiments/train.py --config=configs/arithmetic_grpo.py --workdir=/tmp/arith \
        --config.rl.steps=100

Writes ``metrics.jsonl``, TensorBoard events, Orbax checkpoints (``sft/``, ``rl/``), the tokenizer
of a from-scratch model, ``summary.json`` and ``curves.png`` into the workdir, and prints a final
table (held-out accuracy after SFT and after RL, reward, KL, wall time).
"""

from __future__ import annotations

from absl import app, flags, logging
from ml_collections import config_flags

from rl_jax import parallel
from rl_jax.trainers.run import run

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of the run (created, or resumed).")
_FSDP = flags.DEFINE_integer("fsdp", 1, "Devices that shard one copy of the parameters.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    if not flags.FLAGS["verbosity"].present:  # keep library INFO logs (Orbax) off stdout
        logging.set_verbosity(logging.WARNING)
    run(_CONFIG.value, _WORKDIR.value, parallel.make_mesh(fsdp=_FSDP.value))


if __name__ == "__main__":
    app.run(main)
