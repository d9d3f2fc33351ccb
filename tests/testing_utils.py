"""Shared helpers for the tests (random masks)."""

import numpy as np


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
