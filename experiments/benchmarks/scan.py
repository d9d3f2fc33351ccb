r"""Scanned vs listed decoder layers, and the remat policies: compile time, HLO size, temp memory.

    python experiments/benchmarks/scan.py > experiments/benchmarks/results/scan.txt

For a tiny 8-layer model (qwen2, hidden 64, intermediate 256, vocab 512) it compiles the gradient
of the GRPO loss (``build_rl_step(...).loss``, full logits) on 16 rows x 128 tokens from abstract
parameters, with ``model.scan_layers`` off and on and each ``model.remat`` policy, and prints the
seconds of ``lower`` + ``compile`` (best of ``--repeats``; every repeat traces a new function),
the instructions and while loops of the optimised HLO, and XLA's temp memory.
"""

from __future__ import annotations

import dataclasses
import re
import time

import jax
import jax.numpy as jnp
from absl import app, flags
from flax import nnx

from rl_jax import models
from rl_jax.algorithm import RLSettings, TrainBatch, build_rl_step
from rl_jax.config import default_config
from rl_jax.models.config import REMAT_POLICIES

_LAYERS = flags.DEFINE_integer("layers", 8, "Decoder layers.")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Compilations per setting (the best is shown).")


def compile_once(config: models.ModelConfig, rows: int = 16, width: int = 128):
    graphdef, params = nnx.eval_shape(
        lambda: nnx.split(models.CausalLM(config, rngs=nnx.Rngs(0))))
    settings = dataclasses.replace(
        RLSettings.from_config(default_config()), estimator="grpo", group_size=2,
        temperature=1.0, max_len=width // 2, logits_chunk=0, num_minibatches=1)
    grad = jax.value_and_grad(build_rl_step(settings, None, graphdef).loss, has_aux=True)
    spec = jax.ShapeDtypeStruct
    batch = {"tokens": spec((rows, width), jnp.int32), "mask": spec((rows, width), jnp.float32)}
    for name in ("response_mask", "sampler_logprobs", "advantages"):
        batch[name] = spec((rows, width // 2), jnp.float32)
    start = time.perf_counter()
    compiled = jax.jit(grad).lower({"policy": params}, TrainBatch(**batch)).compile()
    return time.perf_counter() - start, compiled


def main(argv):
    del argv
    print(f"{jax.devices()[0].platform}, jax {jax.__version__}; {_LAYERS.value} layers")
    print(f"{'scan_layers':<12} {'remat':<34} {'compile s':>9} {'HLO instr':>9} {'whiles':>6} "
          f"{'temp MiB':>9}")
    for scan in (False, True):
        for remat in REMAT_POLICIES:
            config = models.tiny_config("qwen2", vocab_size=512, hidden_size=64,
                                        intermediate_size=256, num_layers=_LAYERS.value,
                                        max_position_embeddings=128, remat=remat,
                                        scan_layers=scan)
            runs = [compile_once(config) for _ in range(_REPEATS.value)]
            seconds = min(r[0] for r in runs)
            text = runs[0][1].as_text()
            instructions = len(re.findall(r"^\s+\S+ = ", text, re.M))
            temp = runs[0][1].memory_analysis().temp_size_in_bytes / 2**20
            print(f"{scan!s:<12} {remat:<34} {seconds:>9.2f} {instructions:>9} "
                  f"{text.count(' while('):>6} {temp:>9.2f}", flush=True)


if __name__ == "__main__":
    app.run(main)
