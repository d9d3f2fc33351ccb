"""Iterative RL's rounds of a learned reward (DeepSeekMath §4.2, Figure 6): what the reward-model
stage (``rm``) and the process reward model stage (``prm``) share when RL retrains them every
``rl.reward_refresh_every`` steps.

Round 0 is the stage itself (checkpoints in ``workdir/<stage>``); round ``k >= 1`` is a stage of its
own, ``<stage>_<k>``, that continues round ``k - 1``'s model on new samples of the policy plus a
share ``rl.reward_replay`` of the earlier rounds' training items (``replay_items``). Each round's
new training items are written to ``workdir/<stage>_data/<round name>.json`` before it trains
(``saved_items``): a restart reads them back, and later rounds replay from them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import jax
import numpy as np

T = TypeVar("T")

# Third word of the replay draw's seed ("rply" in ASCII): apart from the data streams.
REPLAY_STREAM = 0x72706C79


def round_name(stage: str, round_: int) -> str:
    """``stage`` for round 0, ``<stage>_<k>`` for its ``k``-th refresh."""
    return stage if round_ == 0 else f"{stage}_{round_}"


def items_file(workdir: str, stage: str, round_: int) -> str:
    """Where round ``round_`` of ``stage`` keeps its new training items."""
    return os.path.join(workdir, f"{stage}_data", f"{round_name(stage, round_)}.json")


def read_items(path: str, decode: Callable[[Any], T]) -> list[T]:
    """The items ``saved_items`` wrote to ``path``."""
    with open(path, encoding="utf-8") as f:
        return [decode(row) for row in json.load(f)]


def saved_items(path: str, make: Callable[[], list[T]], encode: Callable[[T], Any],
                decode: Callable[[Any], T]) -> list[T]:
    """The items of ``path`` when it exists; else ``make()``'s, written there first (atomically,
    as JSON rows ``encode(item)``: a restart reads them back rather than sampling again)."""
    if os.path.exists(path):
        return read_items(path, decode)
    items = make()
    if jax.process_index() == 0:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            json.dump([encode(item) for item in items], f)
        os.replace(path + ".tmp", path)
    return items


def replay_items(history: Sequence[T], num_new: int, replay: float, seed: int,
                 round_: int) -> list[T]:
    """The earlier items a refresh trains on again: ``ceil(replay / (1 - replay) * num_new)``
    (so that they are a share ``replay`` of the refresh's training set; at most all of
    ``history``), drawn without replacement from ``default_rng([seed, round_, REPLAY_STREAM])``,
    in ``history`` order."""
    count = min(len(history), int(np.ceil(replay / (1.0 - replay) * num_new - 1e-9)))
    rng = np.random.default_rng([seed, round_, REPLAY_STREAM])
    chosen = np.sort(rng.choice(len(history), size=count, replace=False))
    return [history[i] for i in chosen]


def round_training_set(workdir: str, stage: str, round_: int, make: Callable[[], list[T]],
                       encode: Callable[[T], Any], decode: Callable[[Any], T], replay: float,
                       seed: int) -> tuple[list[T], int]:
    """Round ``round_``'s training items: its new ones (``make()``, saved), then for ``round_ >=
    1`` the replayed share of rounds ``0 .. round_ - 1``'s. Also the number of new items."""
    new = saved_items(items_file(workdir, stage, round_), make, encode, decode)
    if round_ == 0:
        return list(new), len(new)
    history = [item for k in range(round_)
               for item in read_items(items_file(workdir, stage, k), decode)]
    return [*new, *replay_items(history, len(new), replay, seed, round_)], len(new)
