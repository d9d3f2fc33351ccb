r"""Held-out accuracy of a config's starting policy (before any training), with the run's own
evaluation (``rl_jax.trainers.evaluation.evaluate``: greedy pass@1 on ``eval.num_examples``).

    python experiments/eval_start.py --config=configs/smollm2_arithmetic_grpo.py

The RL stage evaluates only at its ``eval.every`` steps and its last: this is its step 0. Prints
pass@1 with its binomial standard error sqrt(p (1 - p) / n) and a few greedy replies.
"""

from __future__ import annotations

import json
import tempfile

import numpy as np
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from rl_jax.config import check_config
from rl_jax.settings import RunSettings
from rl_jax.trainers.evaluation import evaluate
from rl_jax.trainers.setup import build_context, stage_key

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.")
_SHOW = flags.DEFINE_integer("show", 4, "greedy replies to print")
flags.mark_flags_as_required(["config"])


def main(argv):
    del argv
    config = _CONFIG.value
    check_config(config)
    settings = RunSettings.from_config(config)
    with tempfile.TemporaryDirectory() as workdir:
        ctx = build_context(settings, workdir)
    params = nnx.state(ctx.policy)
    result = evaluate(ctx, params, stage_key(config.seed, "eval/rl", 0), settings.evaluation,
                      k=settings.evaluation.k)
    n = len(ctx.eval_examples)
    p = result["pass@1"]
    result["pass@1_se"] = float(np.sqrt(p * (1 - p) / n))
    result["n"] = n
    print(json.dumps(result))
    out = ctx.sampler.generate(
        params,
        ctx.encode_prompts(ctx.eval_examples[: _SHOW.value]),
        stage_key(config.seed, "eval/rl", 0),
        max_new_tokens=config.rollout.max_new_tokens,
        greedy=True,
    )
    for ex, text in zip(ctx.eval_examples, ctx.decode_responses(out.response_tokens,
                                                               out.response_mask), strict=False):
        print(f"{ex.prompt!r} [{ex.answer}] -> {text!r}")


if __name__ == "__main__":
    app.run(main)
