"""Tests for rl_jax.rewards on hand-written completions, and on every task's own targets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rl_jax.data import (
    ArithmeticTask,
    CountdownTask,
    Example,
    SortingTask,
    load_countdown,
    load_gsm8k,
)
from rl_jax.rewards import (
    REWARD_FNS,
    combine_rewards,
    countdown_reward,
    exact_match_reward,
    extract_gsm8k_answer,
    format_reward,
    get_reward_fn,
    gsm8k_reward,
)

GSM8K_200 = Path(__file__).parent / "fixtures" / "gsm8k_200.jsonl"


def _countdown(numbers: tuple[int, ...], target: int) -> Example:
    info = {"numbers": numbers, "target": target, "format": r"[0-9+\-*/() ]+"}
    return Example(prompt="", target="", answer=str(target), info=info)


def _scores(fn, cases: list[tuple[str, Example]]) -> list[float]:
    completions, examples = zip(*cases, strict=True)
    scores = fn(list(completions), list(examples))
    assert scores.dtype == np.float32 and scores.shape == (len(cases),)
    return scores.tolist()


def test_exact_match():
    example = Example(prompt="12+34=", target="64", answer="64")
    cases = [("64", example), (" 64\n", example), ("46", example), ("", example), ("64 ", example)]
    assert _scores(exact_match_reward, cases) == [1, 1, 0, 0, 1]


def test_gsm8k_reward():
    ex = Example(prompt="", target="", answer="1000")
    three = Example(prompt="", target="", answer="3")
    cases = [
        ("so 10*100 = 1000\n#### 1000", ex),
        ("#### 1,000", ex),
        ("#### 1000.0", ex),
        ("####1000", ex),
        ("#### 999\nno wait\n#### 1000", ex),  # the last "####" counts
        ("#### 1000\nno wait\n#### 999", ex),
        ("the answer is 1000", ex),  # no "####"
        ("#### ", ex),
        ("#### one thousand", ex),
        ("#### 3.0", three),
        ("#### -3", three),
        ("", three),
    ]
    assert _scores(gsm8k_reward, cases) == [1, 1, 1, 1, 1, 0, 0, 0, 0, 1, 0, 0]
    assert extract_gsm8k_answer("x #### 2,500.50 dollars") == extract_gsm8k_answer("#### 2500.5")
    assert extract_gsm8k_answer("no marker 5") is None
    with pytest.raises(ValueError, match="not a number"):
        gsm8k_reward(["#### 3"], [Example(prompt="", target="", answer="three")])


def test_countdown_reward():
    ex = _countdown((30, 100, 93), 23)  # 93 + 30 - 100 = 23
    cases = [
        ("93+30-100", ex),
        (" (93 + 30) - 100 \n", ex),
        ("30-(100-93)", ex),  # = 23 too
        ("100-93+30", ex),  # = 37: wrong value
        ("93+30-100+0", ex),  # extra number
        ("93+93-163", ex),  # reused and foreign numbers
        ("93+30", ex),  # a number missing
        ("93+30-100=23", ex),  # not just an expression
        ("23", ex),
        ("", ex),
        ("__import__('os').system('true')", ex),
        ("93+30-100 if True else 0", ex),
        ("-(100-93-30)", ex),  # unary minus is not allowed
        ("(" * 300 + "93+30-100" + ")" * 300, ex),  # too long to parse
    ]
    assert _scores(countdown_reward, cases) == [1, 1, 1] + [0] * 11
    five = _countdown((5, 5, 3), 3)
    assert _scores(countdown_reward, [("3/(5-5)", five), ("(5-5)*5+3", five), ("5/5*3", five)]) == [
        0,
        0,  # uses 5 three times
        1,
    ]
    rational = _countdown((3, 4, 6), 8)
    assert _scores(countdown_reward, [("4/3*6", rational), ("4//3*6", rational)]) == [1, 0]
    with pytest.raises(ValueError, match="numbers"):
        countdown_reward(["1"], [Example(prompt="p", target="", answer="1")])


def test_format_reward():
    arithmetic = ArithmeticTask().batch(0, 1)[0]
    sorting = SortingTask().batch(0, 1)[0]
    countdown = CountdownTask().batch(0, 1)[0]
    gsm8k = load_gsm8k(GSM8K_200)[0]
    cases = [
        ("0123", arithmetic),
        (" 42\n", arithmetic),
        ("", arithmetic),
        ("4 2", arithmetic),
        ("1,2,30", sorting),
        ("1, 2", sorting),
        ("1,2,", sorting),
        ("(1+2)*3", countdown),
        ("x=1", countdown),
        ("some steps\n#### 72", gsm8k),
        ("#### 1,000.5", gsm8k),
        ("the answer is 72", gsm8k),
        ("#### 72 clips", gsm8k),
    ]
    assert _scores(format_reward, cases) == [1, 1, 0, 0, 1, 0, 0, 1, 0, 1, 1, 0, 0]
    with pytest.raises(ValueError, match="format"):
        format_reward(["1"], [Example(prompt="p", target="1", answer="1")])


@pytest.mark.parametrize(
    "examples, reward",
    [
        (ArithmeticTask(op="+").batch(0, 32), "exact_match"),
        (ArithmeticTask(op="*").batch(0, 32), "exact_match"),
        (SortingTask().batch(0, 32), "exact_match"),
        (CountdownTask(num_numbers=4).batch(0, 32), "countdown"),
        (load_countdown(), "countdown"),
        (load_gsm8k(GSM8K_200), "gsm8k"),
    ],
    ids=["addition", "multiplication", "sorting", "countdown", "countdown_cd3", "gsm8k"],
)
def test_targets_get_full_reward(examples, reward):
    targets = [ex.target for ex in examples]
    assert get_reward_fn(reward)(targets, examples).tolist() == [1.0] * len(examples)
    assert format_reward(targets, examples).tolist() == [1.0] * len(examples)
    assert get_reward_fn(reward)(["nonsense"] * len(examples), examples).sum() == 0


def test_combine_rewards():
    ex = _countdown((1, 2, 3), 6)
    completions = ["1+2+3", "1+2+4", "hello"]
    total, per_function = combine_rewards({"countdown": 1.0, "format": 0.25}, completions, [ex] * 3)
    assert set(per_function) == {"countdown", "format"}
    assert per_function["countdown"].tolist() == [1, 0, 0]
    assert per_function["format"].tolist() == [1, 1, 0]
    assert total.dtype == np.float32
    np.testing.assert_allclose(total, [1.25, 0.25, 0.0])
    total, _ = combine_rewards({"countdown": -2.0}, completions, [ex] * 3)
    np.testing.assert_allclose(total, [-2.0, 0.0, 0.0])


def test_reward_errors():
    ex = _countdown((1, 2, 3), 6)
    known = ", ".join(sorted(REWARD_FNS))
    assert known == ("countdown, digits_gold, digits_verbose, exact_match, final_answer, format, "
                     "gsm8k, last_number")
    with pytest.raises(ValueError, match=known):
        combine_rewards({"countdown": 1.0, "accuracy": 1.0}, ["1+2+3"], [ex])
    with pytest.raises(ValueError, match=known):
        get_reward_fn("accuracy")
    with pytest.raises(ValueError, match="empty"):
        combine_rewards({}, ["1+2+3"], [ex])
    with pytest.raises(ValueError, match="2 completions for 1 examples"):
        exact_match_reward(["1", "2"], [ex])
    with pytest.raises(ValueError, match="2 completions for 1 examples"):
        combine_rewards({"format": 1.0}, ["1", "2"], [ex])
    assert exact_match_reward([], []).shape == (0,)


def test_final_answer_and_last_number_rewards_by_hand():
    ex = Example(prompt="", target="", answer="12")
    completions = ["3 > 12", "12 > 3", "12", "9 - 4 = 12.0", "no number"]
    np.testing.assert_array_equal(REWARD_FNS["final_answer"](completions, [ex] * 5),
                                  [1.0, 0.0, 1.0, 0.0, 0.0])
    np.testing.assert_array_equal(REWARD_FNS["last_number"](completions, [ex] * 5),
                                  [1.0, 0.0, 1.0, 1.0, 0.0])
