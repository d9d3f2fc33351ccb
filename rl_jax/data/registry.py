"""Tasks by name, so a config can pick one: ``make_task("addition", max_value=99, seed=1)``."""

from __future__ import annotations

import os
from collections.abc import Callable

from rl_jax.data.arithmetic import ArithmeticTask
from rl_jax.data.countdown import CountdownTask
from rl_jax.data.dataset import FileDataset
from rl_jax.data.digits import DigitsTask
from rl_jax.data.example import Example, Task
from rl_jax.data.gsm8k import GSM8K_TEMPLATE, load_gsm8k
from rl_jax.data.preferences import HH_RLHF_PATH, load_preferences
from rl_jax.data.scratchpad import FillerAdditionTask, ScratchpadAdditionTask
from rl_jax.data.sorting import SortingTask
from rl_jax.data.word_arithmetic import WordArithmeticTask


def _addition(**kwargs) -> ArithmeticTask:
    return ArithmeticTask(op="+", **kwargs)


def _multiplication(**kwargs) -> ArithmeticTask:
    return ArithmeticTask(op="*", **kwargs)


def _gsm8k(
    *,
    path: str | os.PathLike,
    eval_path: str | os.PathLike | None = None,
    eval_size: int = 0,
    seed: int = 0,
    template: str = GSM8K_TEMPLATE,
) -> FileDataset:
    """GSM8K from ``path``; held out: the rows of ``eval_path``, or ``eval_size`` rows of path."""
    eval_examples = load_gsm8k(eval_path, template) if eval_path is not None else None
    return FileDataset(
        load_gsm8k(path, template), seed=seed, eval_examples=eval_examples, eval_size=eval_size
    )


def _hh_rlhf(
    *, path: str | os.PathLike = HH_RLHF_PATH, eval_size: int = 0, seed: int = 0
) -> FileDataset:
    """HH-RLHF dialogues as prompts, each with its chosen response as the SFT target.

    Malformed pairs are skipped here (the reward-model stage reports them)."""
    prefs, _ = load_preferences(path, "hh_rlhf", skip_invalid=True)
    examples = [Example(p.prompt, p.responses[p.ranks.index(0)], "") for p in prefs]
    return FileDataset(examples, seed=seed, eval_size=eval_size)


TASKS: dict[str, Callable[..., Task]] = {
    "addition": _addition,
    "multiplication": _multiplication,
    "addition_scratchpad": ScratchpadAdditionTask,
    "addition_filler": FillerAdditionTask,
    "countdown": CountdownTask,
    "sorting": SortingTask,
    "gsm8k": _gsm8k,
    "digits": DigitsTask,
    "hh_rlhf": _hh_rlhf,
    "word_arithmetic": WordArithmeticTask,
}


def make_task(name: str, **kwargs) -> Task:
    """The task ``name`` built with ``kwargs``.

    ``"addition"`` and ``"multiplication"`` take ``ArithmeticTask``'s fields except ``op``,
    ``"countdown"`` ``CountdownTask``'s, ``"addition_scratchpad"``
    ``ScratchpadAdditionTask``'s, ``"addition_filler"`` ``FillerAdditionTask``'s, ``"sorting"``
    ``SortingTask``'s; ``"gsm8k"`` needs
    ``path`` and takes ``eval_path``, ``eval_size``, ``seed`` and ``template``; ``"digits"`` takes
    ``DigitsTask``'s fields; ``"hh_rlhf"`` takes ``path`` (default: the shipped fixture),
    ``eval_size`` and ``seed``; ``"word_arithmetic"`` ``WordArithmeticTask``'s.

    Raises:
      ValueError: for an unknown name, listing the known ones.
    """
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name](**kwargs)
