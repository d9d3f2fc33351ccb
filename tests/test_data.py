"""Tests for rl_jax.data: seeded tasks, targets checked independently, loaders, errors."""

from __future__ import annotations

import json
import re
from collections import Counter
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from rl_jax.data import (
    CD3_TEST_PATH,
    ArithmeticTask,
    CountdownTask,
    Example,
    FileDataset,
    SortingTask,
    evaluate_expression,
    load_countdown,
    load_gsm8k,
    make_task,
    solve_countdown,
    strip_annotations,
)

FIXTURES = Path(__file__).parent / "fixtures"
GSM8K_200 = FIXTURES / "gsm8k_200.jsonl"


def _eval_trusted(expression: str) -> Fraction:
    """Independent check of a generated equation: Python's own parser on Fractions.

    Only used on our own targets, after checking they hold nothing but digits and operators.
    """
    assert re.fullmatch(r"[0-9+\-*/()]+", expression), expression
    return eval(re.sub(r"([0-9]+)", r"Fraction(\1)", expression), {"Fraction": Fraction})


GENERATED = [
    ArithmeticTask(op="+", seed=3),
    ArithmeticTask(op="*", seed=3),
    SortingTask(seed=3),
    CountdownTask(num_numbers=3, seed=3),
    CountdownTask(num_numbers=4, seed=3),
]


@pytest.mark.parametrize("task", GENERATED, ids=lambda t: type(t).__name__)
def test_batches_are_a_function_of_seed_and_step(task):
    assert task.batch(5, 16) == task.batch(5, 16)
    assert task.batch(5, 16) != task.batch(6, 16)
    assert task.batch(5, 8) == task.batch(5, 16)[:8]  # one stream per step, drawn in order
    other_seed = type(task)(**{**task.__dict__, "seed": task.seed + 1})
    assert other_seed.batch(5, 16) != task.batch(5, 16)


@pytest.mark.parametrize("task", GENERATED, ids=lambda t: type(t).__name__)
def test_eval_set_is_fixed_prefix_stable_and_its_own_stream(task):
    eval_10 = task.eval_set(10)
    assert eval_10 == task.eval_set(10)
    assert task.eval_set(4) == eval_10[:4]
    assert all(eval_10 != task.batch(step, 10) for step in range(3))
    assert task.eval_set(0) == []


def test_batch_rejects_negative_step_and_size():
    with pytest.raises(ValueError, match="step"):
        ArithmeticTask().batch(-1, 4)
    with pytest.raises(ValueError, match="batch_size"):
        SortingTask().batch(0, -4)


@pytest.mark.parametrize("op", ["+", "*"])
@pytest.mark.parametrize("reverse", [True, False])
def test_arithmetic_targets(op, reverse):
    task = ArithmeticTask(op=op, min_value=10, max_value=999, reverse_answer=reverse, seed=1)
    for example in task.batch(0, 64):
        a, b = re.fullmatch(rf"([0-9]+){re.escape(op)}([0-9]+)=", example.prompt).groups()
        a, b = int(a), int(b)
        assert 10 <= a <= 999 and 10 <= b <= 999
        expected = str(a + b) if op == "+" else str(a * b)
        assert example.target == (expected[::-1] if reverse else expected)
        assert example.answer == example.target
        assert example.info["operands"] == (a, b)


def test_arithmetic_hand_example_and_bad_args():
    # 579 written least significant digit first.
    rng_example = ArithmeticTask(min_value=123, max_value=123).sample(np.random.default_rng(0))
    assert (rng_example.prompt, rng_example.target) == ("123+123=", "642")
    with pytest.raises(ValueError, match="op"):
        ArithmeticTask(op="-")
    with pytest.raises(ValueError, match="min_value"):
        ArithmeticTask(min_value=5, max_value=4)


def test_sorting_targets():
    task = SortingTask(min_length=2, max_length=6, max_value=20, seed=2)
    lengths = set()
    for example in task.batch(0, 64):
        assert example.prompt.endswith(":")
        values = [int(v) for v in example.prompt[:-1].split(",")]
        lengths.add(len(values))
        assert all(0 <= v <= 20 for v in values)
        assert example.target == ",".join(map(str, sorted(values))) == example.answer
    assert lengths == {2, 3, 4, 5, 6}
    assert SortingTask(min_length=3, max_length=3, max_value=0).batch(0, 1)[0].prompt == "0,0,0:"


@pytest.mark.parametrize("num_numbers", [3, 4])
def test_countdown_targets_reach_the_target_with_each_number_once(num_numbers):
    task = CountdownTask(num_numbers=num_numbers, seed=4)
    for example in task.batch(0, 64):
        numbers_text, target_text = re.fullmatch(r"([0-9,]+)>([0-9]+):", example.prompt).groups()
        numbers = [int(n) for n in numbers_text.split(",")]
        target = int(target_text)
        assert len(numbers) == num_numbers and all(1 <= n <= 100 for n in numbers)
        assert 1 <= target <= 100
        assert example.answer == str(target)
        assert example.info["numbers"] == tuple(numbers) and example.info["target"] == target
        assert Counter(int(n) for n in re.findall(r"[0-9]+", example.target)) == Counter(numbers)
        assert _eval_trusted(example.target) == target


def test_countdown_task_bad_args():
    with pytest.raises(ValueError, match="num_numbers"):
        CountdownTask(num_numbers=1)
    with pytest.raises(ValueError, match="min_target"):
        CountdownTask(min_target=5, max_target=4)


def test_evaluate_expression():
    assert evaluate_expression(" (1+2)/3*3 ") == (Fraction(3), (1, 2, 3, 3))
    assert evaluate_expression("100-93+30") == (Fraction(37), (100, 93, 30))
    assert evaluate_expression("4/3") == (Fraction(4, 3), (4, 3))
    for bad in ["", "1/(2-2)", "-1+2", "2**3", "7//2", "1.5+1", "abs(1)", "1 2", "030+1", "(1"]:
        with pytest.raises(ValueError):
            evaluate_expression(bad)


def test_solve_countdown():
    assert _eval_trusted(solve_countdown([30, 100, 93], 23)) == 23
    assert solve_countdown([5], 5) == "5"
    solution = solve_countdown([3, 4, 6], 8)  # needs a non-integer step: 4/3*6 or 6/3*4
    assert _eval_trusted(solution) == 8
    assert solve_countdown([1, 1, 1], 100) is None


def test_load_countdown_shipped_file():
    examples = load_countdown()
    assert len(examples) == 256
    first = examples[0]
    assert (first.prompt, first.answer) == ("30,100,93>23:", "23")
    assert first.info["numbers"] == (30, 100, 93) and first.info["target"] == 23
    for example in examples:
        assert example.target, example.prompt  # every shipped row has a brute-forced equation
        assert _eval_trusted(example.target) == example.info["target"]
        used = Counter(int(n) for n in re.findall(r"[0-9]+", example.target))
        assert used == Counter(example.info["numbers"])
    assert all(ex.target == "" for ex in load_countdown(solve=False))
    assert (CD3_TEST_PATH.parent / "LICENSE").exists()


def test_load_gsm8k_fixture():
    examples = load_gsm8k(GSM8K_200)
    assert len(examples) == 200
    first = examples[0]
    assert first.prompt.startswith("Question: Natalia sold clips to 48 of her friends in April")
    assert first.prompt.endswith("April and May?\nAnswer:\n")
    assert first.target == (
        "Natalia sold 48/2 = 24 clips in May.\n"
        "Natalia sold 48+24 = 72 clips altogether in April and May.\n"
        "#### 72"
    )
    assert first.answer == "72"
    assert examples[1].answer == "10"  # Weng: 0.2 * 50
    assert examples[15].answer == "448000"  # James's media empire
    assert examples[-1].answer == "1080"  # "#### 1,080": comma removed
    assert all("<<" not in ex.target and ">>" not in ex.target for ex in examples)
    assert all(ex.target.endswith("#### " + ex.answer) or "," in ex.target for ex in examples)


def test_strip_annotations():
    assert strip_annotations("48/2 = <<48/2=24>>24 and <<1+1=2>>2") == "48/2 = 24 and 2"


def _write(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


GOOD_GSM8K = json.dumps({"question": "1+1?", "answer": "1+1=<<1+1=2>>2\n#### 2"})


@pytest.mark.parametrize(
    "bad_row, expected",
    [
        ('{"question": "q", "answer": ', "invalid JSON"),
        ('["question", "answer"]', "got a JSON list"),
        (json.dumps({"question": "q"}), "missing field 'answer'"),
        (json.dumps({"question": "q", "answer": 2}), "field 'answer' is a int, expected str"),
        (json.dumps({"question": "q", "answer": "it is 2"}), "'#### <number>'"),
        (json.dumps({"question": "q", "answer": "#### two"}), "'#### <number>'"),
    ],
)
def test_gsm8k_malformed_rows_name_path_and_line(tmp_path, bad_row, expected):
    # Line 3 (a blank line 2 still counts).
    path = _write(tmp_path, [GOOD_GSM8K, "", bad_row, GOOD_GSM8K])
    with pytest.raises(ValueError, match=re.escape(f"{path}:3: ")) as err:
        load_gsm8k(path)
    assert expected in str(err.value)


def test_non_utf8_row_names_path_and_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(GOOD_GSM8K.encode() + b"\n" + b'{"question": "\xff"}\n')
    with pytest.raises(ValueError, match=re.escape(f"{path}:2: not UTF-8")):
        load_gsm8k(path)


@pytest.mark.parametrize(
    "bad_row, expected",
    [
        (json.dumps({"input": "1,x,3", "output": "2"}), "expected an integer"),
        (json.dumps({"input": "1,2,3", "output": 6}), "field 'output' is a int"),
        (json.dumps({"output": "6"}), "missing field 'input'"),
    ],
)
def test_countdown_malformed_rows_name_path_and_line(tmp_path, bad_row, expected):
    path = _write(tmp_path, [json.dumps({"input": "1,2,3", "output": "6"}), bad_row])
    with pytest.raises(ValueError, match=re.escape(f"{path}:2: ")) as err:
        load_countdown(path)
    assert expected in str(err.value)


def _numbered(n: int) -> list[Example]:
    return [Example(prompt=f"p{i}", target=f"t{i}", answer=str(i)) for i in range(n)]


@pytest.mark.parametrize("batch_size", [5, 7])
def test_file_dataset_epochs_cover_every_row_once(batch_size):
    dataset = FileDataset(_numbered(35), seed=1)
    steps = 70 // batch_size + 1
    stream = [ex.answer for step in range(steps) for ex in dataset.batch(step, batch_size)]
    epoch_0, epoch_1 = stream[:35], stream[35:70]
    assert sorted(epoch_0, key=int) == [str(i) for i in range(35)]
    assert sorted(epoch_1, key=int) == [str(i) for i in range(35)]
    assert epoch_0 != epoch_1  # reshuffled every epoch
    assert dataset.batch(3, batch_size) == FileDataset(_numbered(35), seed=1).batch(3, batch_size)
    assert FileDataset(_numbered(35), seed=2).batch(0, 35) != dataset.batch(0, 35)


def test_file_dataset_eval_holdout_and_errors():
    examples = _numbered(30)
    dataset = FileDataset(examples, seed=0, eval_size=6)
    held_out = dataset.eval_set(6)
    assert len(dataset) == 24 and len(held_out) == 6
    assert not {ex.prompt for ex in held_out} & {ex.prompt for ex in dataset.batch(0, 24)}
    assert FileDataset(examples, seed=0, eval_size=6).eval_set(6) == held_out
    assert dataset.eval_set(2) == held_out[:2]
    with pytest.raises(ValueError, match="held-out"):
        dataset.eval_set(7)
    with pytest.raises(ValueError, match="held-out"):
        FileDataset(examples).eval_set(1)
    with pytest.raises(ValueError, match="not both"):
        FileDataset(examples, eval_examples=examples[:2], eval_size=2)
    with pytest.raises(ValueError, match="eval_size"):
        FileDataset(examples, eval_size=30)
    separate = FileDataset(examples, eval_examples=_numbered(3))
    assert len(separate) == 30 and separate.eval_set(3) == _numbered(3)


def test_make_task():
    assert make_task("addition", seed=1).batch(0, 2) == ArithmeticTask(op="+", seed=1).batch(0, 2)
    assert make_task("multiplication").batch(0, 1)[0].prompt.count("*") == 1
    assert isinstance(make_task("countdown", num_numbers=4), CountdownTask)
    assert isinstance(make_task("sorting", max_value=9), SortingTask)
    gsm8k = make_task("gsm8k", path=GSM8K_200, eval_size=20, seed=0)
    assert len(gsm8k) == 180 and len(gsm8k.eval_set(20)) == 20
    with_eval_file = make_task("gsm8k", path=GSM8K_200, eval_path=GSM8K_200)
    assert len(with_eval_file.eval_set(200)) == 200
    known = (
        "addition, addition_filler, addition_scratchpad, countdown, digits, gsm8k, hh_rlhf, "
        "multiplication, sorting"
    )
    with pytest.raises(ValueError, match=known):
        make_task("subtraction")
    with pytest.raises(TypeError):
        make_task("addition", op="*")
    with pytest.raises(TypeError):
        make_task("gsm8k")
