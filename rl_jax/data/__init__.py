"""Tasks and datasets for RL of language models: generated arithmetic, sorting and countdown
problems, GSM8K and countdown files, all with the same seeded ``batch(step, batch_size)`` and
``eval_set(n)`` interface (pure NumPy, no JAX). Rewards for them live in ``rl_jax.rewards``.
"""

from rl_jax.data.arithmetic import ARITHMETIC_FORMAT, ArithmeticTask
from rl_jax.data.countdown import (
    CD3_TEST_PATH,
    COUNTDOWN_FORMAT,
    CountdownTask,
    countdown_prompt,
    evaluate_expression,
    is_countdown_solution,
    load_countdown,
    solve_countdown,
)
from rl_jax.data.dataset import FileDataset
from rl_jax.data.example import EVAL_STREAM, Example, GeneratedTask, Task, eval_rng, train_rng
from rl_jax.data.gsm8k import GSM8K_FORMAT, GSM8K_TEMPLATE, load_gsm8k, strip_annotations
from rl_jax.data.jsonl import read_jsonl
from rl_jax.data.registry import TASKS, make_task
from rl_jax.data.sorting import SORTING_FORMAT, SortingTask

__all__ = [
    "ARITHMETIC_FORMAT",
    "CD3_TEST_PATH",
    "COUNTDOWN_FORMAT",
    "EVAL_STREAM",
    "GSM8K_FORMAT",
    "GSM8K_TEMPLATE",
    "SORTING_FORMAT",
    "TASKS",
    "ArithmeticTask",
    "CountdownTask",
    "Example",
    "FileDataset",
    "GeneratedTask",
    "SortingTask",
    "Task",
    "countdown_prompt",
    "eval_rng",
    "evaluate_expression",
    "is_countdown_solution",
    "load_countdown",
    "load_gsm8k",
    "make_task",
    "read_jsonl",
    "solve_countdown",
    "strip_annotations",
    "train_rng",
]
