"""Tasks and datasets for RL of language models: generated arithmetic, sorting, countdown and
digits problems, GSM8K, countdown and HH-RLHF files, all with the same seeded
``batch(step, batch_size)`` and ``eval_set(n)`` interface (pure NumPy, no JAX); and preference data
for reward models (``preferences``). Rewards for the tasks live in ``rl_jax.rewards``.
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
from rl_jax.data.dataset import EvalSizeError, FileDataset
from rl_jax.data.digits import DigitsTask, digits_gold_score
from rl_jax.data.example import EVAL_STREAM, Example, GeneratedTask, Task, eval_rng, train_rng
from rl_jax.data.gsm8k import GSM8K_FORMAT, GSM8K_TEMPLATE, load_gsm8k, strip_annotations
from rl_jax.data.jsonl import read_jsonl
from rl_jax.data.preferences import (
    HH_RLHF_PATH,
    PREFERENCE_FORMATS,
    Preference,
    check_preference,
    expand_pairs,
    gold_ranks,
    load_preferences,
    preferences_from_responses,
    split_hh_dialogue,
)
from rl_jax.data.registry import TASKS, make_task
from rl_jax.data.scratchpad import (
    FILLER_FORMAT,
    SCRATCHPAD_FORMAT,
    FillerAdditionTask,
    ScratchpadAdditionTask,
    column_notes,
    final_answer,
    gold_steps,
    step_ends,
)
from rl_jax.data.sorting import SORTING_FORMAT, SortingTask
from rl_jax.data.steps import (
    STEP_CHECKERS,
    STEP_SEGMENTERS,
    StepChecker,
    StepSegmenter,
    step_arrays,
    step_token_ends,
)
from rl_jax.data.word_arithmetic import WORD_ARITHMETIC_FORMAT, WordArithmeticTask

__all__ = [
    "ARITHMETIC_FORMAT",
    "CD3_TEST_PATH",
    "COUNTDOWN_FORMAT",
    "EVAL_STREAM",
    "GSM8K_FORMAT",
    "GSM8K_TEMPLATE",
    "HH_RLHF_PATH",
    "PREFERENCE_FORMATS",
    "FILLER_FORMAT",
    "SCRATCHPAD_FORMAT",
    "SORTING_FORMAT",
    "STEP_CHECKERS",
    "STEP_SEGMENTERS",
    "TASKS",
    "WORD_ARITHMETIC_FORMAT",
    "ArithmeticTask",
    "CountdownTask",
    "DigitsTask",
    "Example",
    "EvalSizeError",
    "FileDataset",
    "GeneratedTask",
    "Preference",
    "FillerAdditionTask",
    "ScratchpadAdditionTask",
    "SortingTask",
    "StepChecker",
    "StepSegmenter",
    "Task",
    "WordArithmeticTask",
    "check_preference",
    "column_notes",
    "countdown_prompt",
    "digits_gold_score",
    "eval_rng",
    "expand_pairs",
    "gold_ranks",
    "evaluate_expression",
    "final_answer",
    "gold_steps",
    "is_countdown_solution",
    "load_countdown",
    "load_gsm8k",
    "load_preferences",
    "preferences_from_responses",
    "make_task",
    "read_jsonl",
    "solve_countdown",
    "step_arrays",
    "step_ends",
    "step_token_ends",
    "split_hh_dialogue",
    "strip_annotations",
    "train_rng",
]
