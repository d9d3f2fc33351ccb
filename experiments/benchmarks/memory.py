r"""Compiled memory of the RL loss's gradient with the full logits and with the chunked LM head.

    python experiments/benchmarks/memory.py
    python experiments/benchmarks/memory.py --chunks=0,128 --batch=8 --response_len=1024

A Qwen2.5-like vocabulary (151,936 tokens, tied embeddings) on a narrow model (hidden 64, 1 layer
by default), so the logits dominate: for each ``logits_chunk`` (0 = the full
``[batch, P + R, vocab]`` logits) it compiles ``jax.value_and_grad`` of the GRPO loss
(``build_rl_step(...).loss``, single pass: the entropy metric included) and of ``prepare`` (old and
reference log-probs, entropy), without running them, and prints XLA's temp (scratch) memory and
the largest float32 array with a vocabulary axis in the compiled HLO. Parameters are abstract
(``nnx.eval_shape``): nothing is allocated, so any size compiles on this CPU.

Measured on this CPU (2026-12-02, jax 0.10.2), defaults (batch 4 x (256 + 1024), hidden 64):

    logits_chunk   loss grad temp MiB   prepare temp MiB   largest vocab array
    0 (full)                   8649.8            10683.1   [5120,V] / [4,1280,V]
    512                        3903.0             3563.1   [4,512,V]
    128 (default)              1231.9              892.3   [4,128,V]
    32                          564.1              309.2   [4,32,V]

The gradient holds about three ``[batch, chunk, vocab]`` buffers (one in the forward loop, two
in the backward: the recomputed logits and their cotangent); a hand-written VJP measured the
same. The rest (~340 MiB) is the backbone, attention scores included.
"""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

from rl_jax import models
from rl_jax.algorithm import RLSettings, RolloutBatch, TrainBatch, build_rl_step
from rl_jax.config import default_config

_VOCAB = flags.DEFINE_integer("vocab", 151_936, "Vocabulary size (Qwen2.5: 151,936).")
_HIDDEN = flags.DEFINE_integer("hidden", 64, "Hidden size.")
_LAYERS = flags.DEFINE_integer("layers", 1, "Decoder layers.")
_BATCH = flags.DEFINE_integer("batch", 4, "Rows of the micro-batch.")
_PROMPT = flags.DEFINE_integer("prompt_len", 256, "Prompt tokens P.")
_RESPONSE = flags.DEFINE_integer("response_len", 1024, "Response tokens R.")
_CHUNKS = flags.DEFINE_list("chunks", ["0", "512", "128", "32"], "logits_chunk values.")


def _largest_vocab_array(hlo: str, vocab: int) -> str:
    """The f32 array with a ``vocab`` axis of most elements in the HLO text, e.g. ``[4,1024,V]``."""
    best, best_size = "none", 0
    for dims in re.findall(r"f32\[([0-9,]+)\]", hlo):
        shape = [int(d) for d in dims.split(",")]
        if vocab in shape and int(np.prod(shape)) > best_size:
            best, best_size = "[" + dims.replace(str(vocab), "V") + "]", int(np.prod(shape))
    return best


def main(argv):
    del argv
    config = models.tiny_config(
        "qwen2", vocab_size=_VOCAB.value, hidden_size=_HIDDEN.value,
        intermediate_size=4 * _HIDDEN.value, num_layers=_LAYERS.value, num_heads=4,
        num_kv_heads=2, max_position_embeddings=_PROMPT.value + _RESPONSE.value,
    )
    graphdef, params = nnx.eval_shape(lambda: nnx.split(models.CausalLM(config,
                                                                        rngs=nnx.Rngs(0))))
    b, p, r, v = _BATCH.value, _PROMPT.value, _RESPONSE.value, _VOCAB.value
    spec = jax.ShapeDtypeStruct
    rows = {
        "tokens": spec((b, p + r), jnp.int32),
        "mask": spec((b, p + r), jnp.float32),
        "response_mask": spec((b, r), jnp.float32),
        "sampler_logprobs": spec((b, r), jnp.float32),
    }
    train_batch = TrainBatch(**rows, advantages=spec((b, r), jnp.float32))
    rollout = RolloutBatch(**rows, scores=spec((b,), jnp.float32),
                           truncated=spec((b,), jnp.float32))
    num_params = sum(x.size for x in jax.tree.leaves(params))
    print(f"vocab {v}, hidden {_HIDDEN.value}, {_LAYERS.value} layer(s), {num_params / 1e6:.1f}M "
          f"parameters; batch {b} x (prompt {p} + response {r}); one [B, P+R, V] f32 = "
          f"{b * (p + r) * v * 4 / 2**20:.0f} MiB, [B, R, V] = {b * r * v * 4 / 2**20:.0f} MiB")
    print(f"{'function':<16} {'logits_chunk':>12} {'temp MiB':>10} {'args MiB':>9}  largest f32 "
          "array with a vocab axis")
    for chunk in (int(c) for c in _CHUNKS.value):
        settings = dataclasses.replace(
            RLSettings.from_config(default_config()), estimator="grpo", group_size=2,
            temperature=0.7, max_len=r, kl_loss_coef=0.0, logits_chunk=chunk, num_minibatches=1)
        # prepare as run with several minibatches (old log-probs and entropy) and a reference.
        prepare_settings = dataclasses.replace(settings, num_minibatches=2, kl_loss_coef=0.04)
        functions = {
            "loss grad": (jax.jit(jax.value_and_grad(build_rl_step(settings, None, graphdef).loss,
                                                     has_aux=True)),
                          ({"policy": params}, train_batch)),
            "prepare": (build_rl_step(prepare_settings, None, graphdef).prepare,
                        ({"policy": params}, params, rollout, spec((), jnp.float32))),
        }
        for name, (fn, args) in functions.items():
            compiled = fn.lower(*args).compile()
            stats = compiled.memory_analysis()
            print(f"{name:<16} {chunk:>12} {stats.temp_size_in_bytes / 2**20:>10.1f} "
                  f"{stats.argument_size_in_bytes / 2**20:>9.1f}  "
                  f"{_largest_vocab_array(compiled.as_text(), v)}")


if __name__ == "__main__":
    app.run(main)
