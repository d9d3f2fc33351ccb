"""Shared helpers for the tests: random masks, the tiny config of the end-to-end runs, and the RL
step's settings built from it."""

import dataclasses

import ml_collections
import numpy as np

from rl_jax.algorithm import RLSettings
from tests.fixtures.tiny_config import get_config as _tiny_config_file


def random_mask(rng: np.random.Generator, batch: int, time: int, padding: str = "right"):
    """A ``[batch, time]`` float32 mask with 1..time real tokens a row.

    ``padding``: "right" (real tokens first), "left" (real tokens last) or "random" (any pattern).
    """
    lengths = rng.integers(1, time + 1, size=batch)
    mask = (np.arange(time)[None] < lengths[:, None]).astype(np.float32)
    if padding == "left":
        mask = mask[:, ::-1].copy()
    elif padding == "random":
        mask = (rng.random((batch, time)) < 0.7).astype(np.float32)
    return mask


def tiny_config(**overrides) -> ml_collections.ConfigDict:
    """tests/fixtures/tiny_config.py's config (single-digit addition, a 1-layer width-32 model, a
    few steps of everything; the file ``train.py`` and tools/crash_test.py run) with dotted
    overrides, e.g. ``tiny_config(**{"rl.steps": 2, "kl.coef": 0.04})``."""
    config = _tiny_config_file()
    for key, value in overrides.items():
        *sections, name = key.split(".")
        node = config
        for section in sections:
            node = getattr(node, section)
        setattr(node, name, value)
    return config


def rl_settings(**fields) -> RLSettings:
    """The RL step's options of ``tiny_config()`` as a run builds them (``RLSettings.from_config``),
    with ``fields`` replaced, e.g. ``rl_settings(estimator="gae", num_minibatches=1)``: for tests
    of the step alone. Every other value is the config's."""
    return dataclasses.replace(RLSettings.from_config(tiny_config()), **fields)


def tiny_policy(vocab_size: int):
    """A 1-layer width-32 Qwen2 ``CausalLM`` (2 heads, 1 KV head, 64 positions), seed 0."""
    from flax import nnx

    from rl_jax import models

    config = models.tiny_config("qwen2", vocab_size=vocab_size, hidden_size=32,
                                intermediate_size=64, num_layers=1, num_heads=2, num_kv_heads=1,
                                max_position_embeddings=64)
    return models.CausalLM(config, rngs=nnx.Rngs(0))
