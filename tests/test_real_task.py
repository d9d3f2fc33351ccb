"""The real-model RL task: word arithmetic, its lenient reward, the shuffled-reward control and the
SmolLM2 configs (those that need the GGUF skip when it is absent)."""

from __future__ import annotations

import importlib.util
import os
from collections import Counter
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

from rl_jax import data, rewards
from rl_jax.config import ConfigError, check_config, default_config
from rl_jax.trainers.rl import shuffle_scores

SMOLLM2_PATH = Path(
    os.environ.get(
        "RL_JAX_SMOLLM2_GGUF",
        Path.home() / ".cache" / "rl_jax" / "SmolLM2-135M-Instruct.Q4_1.gguf",
    )
)
CONFIGS = Path(__file__).parent.parent / "configs"


def test_word_arithmetic_answers_are_the_operations_results():
    task = data.make_task("word_arithmetic", ops=["+", "-", "*"], min_value=3, max_value=12, seed=5)
    examples = task.batch(0, 200)
    assert examples == task.batch(0, 200)  # a pure function of (seed, step)
    assert examples != task.batch(1, 200)
    ops = Counter()
    for ex in examples:
        a, b = ex.info["operands"]
        op = ex.info["op"]
        ops[op] += 1
        assert 3 <= a <= 12 and 3 <= b <= 12
        expected = {"+": a + b, "-": a - b, "*": a * b}[op]
        assert ex.answer == ex.target == str(expected)
        assert ex.prompt == f"What is {a} {op} {b}? Answer with the number only."
    assert set(ops) == {"+", "-", "*"}
    held_out = {ex.prompt for ex in task.eval_set(50)}
    assert task.eval_set(20) == task.eval_set(50)[:20]
    assert len(held_out) > 40  # a different stream from training batches, mostly distinct


def test_word_arithmetic_eval_fraction_keeps_held_out_questions_out_of_training():
    from rl_jax.data.word_arithmetic import held_out_unit

    task = data.make_task("word_arithmetic", min_value=0, max_value=9, eval_fraction=0.3, seed=1)
    held_out = {(a, b) for a in range(10) for b in range(10) if held_out_unit(a, "+", b) < 0.3}
    assert 15 < len(held_out) < 45  # about 30% of the 100 questions
    trained = {ex.info["operands"] for step in range(40) for ex in task.batch(step, 16)}
    evaluated = {ex.info["operands"] for ex in task.eval_set(200)}
    assert evaluated == held_out  # 200 draws reach every one of them
    assert trained == {(a, b) for a in range(10) for b in range(10)} - held_out
    assert task.eval_set(50) == task.eval_set(200)[:50]
    assert held_out_unit(3, "+", 4) == held_out_unit(4, "+", 3)  # commuted: one question
    assert held_out_unit(3, "-", 4) != held_out_unit(4, "-", 3)


@pytest.mark.parametrize("ops", [("+",), ("+", "-", "*")])
def test_word_arithmetic_no_held_out_question_is_trained_in_its_commuted_form(ops):
    from rl_jax.data.word_arithmetic import COMMUTATIVE_OPS

    task = data.make_task("word_arithmetic", ops=ops, min_value=0, max_value=20,
                          eval_fraction=0.25, seed=0)
    def key(ex):
        a, b = ex.info["operands"]
        op = ex.info["op"]
        return (op, frozenset((a, b))) if op in COMMUTATIVE_OPS else (op, a, b)

    trained = {key(ex) for step in range(100) for ex in task.batch(step, 32)}
    evaluated = {key(ex) for ex in task.eval_set(256)}
    assert evaluated and trained
    assert not trained & evaluated


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(ops=("/",)), "ops must be"),
        (dict(ops=()), "ops must be"),
        (dict(min_value=5, max_value=2), "min_value <= max_value"),
        (dict(template="What is {a} plus {b}?"), "must contain {op}"),
        (dict(eval_fraction=1.0), "eval_fraction must be in"),
    ],
)
def test_word_arithmetic_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        data.make_task("word_arithmetic", **kwargs)


@pytest.mark.parametrize(
    "text, number",
    [
        ("12", Decimal(12)),
        ("7 + 5 = 12.", Decimal(12)),
        ("The answer is 1,234!", Decimal(1234)),
        ("9 - 14 = -5", Decimal(-5)),
        ("9-4", Decimal(4)),  # the minus between two numbers is an operator
        ("about 3.50 apples", Decimal("3.5")),
        ("no number here", None),
        ("", None),
    ],
)
def test_extract_last_number(text, number):
    assert rewards.extract_last_number(text) == number


def test_last_number_reward_on_hand_made_replies():
    task = data.make_task("word_arithmetic", ops=("+",), seed=0)
    ex = data.Example("What is 7 + 5? Answer with the number only.", "12", "12", {})
    neg = data.Example("What is 3 - 8? Answer with the number only.", "-5", "-5", {})
    replies = ["12", " 12\n", "7 + 5 = 12", "12.0", "The answer is 12. Wait, 13", "twelve",
               "-5", "3 - 8 = 5"]
    examples = [ex] * 6 + [neg] * 2
    np.testing.assert_array_equal(
        rewards.last_number_reward(replies, examples), [1, 1, 1, 1, 0, 0, 1, 0]
    )
    assert rewards.get_reward_fn("last_number") is rewards.last_number_reward
    # the format reward of the task wants the bare number
    fmt = [ex.info["format"] for ex in task.batch(0, 1)][0]
    examples = [data.Example("", "", "12", {"format": fmt})] * 3
    np.testing.assert_array_equal(rewards.format_reward(["12", "-12", "= 12"], examples), [1, 1, 0])


def test_shuffle_scores_permutes_the_batch_seeded():
    scores = np.arange(64, dtype=np.float32) / 7
    a = shuffle_scores(scores, seed=3, position=10)
    assert sorted(a.tolist()) == sorted(scores.tolist())  # the same multiset
    assert not np.array_equal(a, scores)
    np.testing.assert_array_equal(a, shuffle_scores(scores, seed=3, position=10))
    assert not np.array_equal(a, shuffle_scores(scores, seed=3, position=11))
    assert not np.array_equal(a, shuffle_scores(scores, seed=4, position=10))
    # across groups: with groups of 8, some score leaves its group
    source = np.array([np.flatnonzero(scores == v)[0] for v in a])  # scores are distinct
    assert np.any(source // 8 != np.arange(64) // 8)


def test_shuffle_rewards_is_validated():
    config = default_config()
    config.rl.shuffle_rewards = None
    with pytest.raises(ConfigError, match=r"config.rl.shuffle_rewards = None: expected True or"):
        check_config(config)


def _load_config(name: str, arg: str | None = None):
    spec = importlib.util.spec_from_file_location(name, CONFIGS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


@pytest.mark.skipif(
    not SMOLLM2_PATH.is_file(),
    reason=f"{SMOLLM2_PATH} absent: run `python tools/fetch_model.py`",
)
@pytest.mark.parametrize("arg", [None, "shuffled"])
def test_smollm2_config_is_valid(arg):
    config = _load_config("smollm2_arithmetic_grpo", arg)
    config.model.path = str(SMOLLM2_PATH)
    check_config(config)
    assert config.rl.shuffle_rewards == (arg == "shuffled")
    assert config.model.dtype == "float32" and config.stages == ("rl",)
