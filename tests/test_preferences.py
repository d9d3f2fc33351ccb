"""Preference data: file formats and errors, HH-RLHF splitting, gold rankings, the digits task."""

import gzip
import json
import math

import numpy as np
import pytest

from rl_jax import data, rewards


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return path


def test_pairs_load_with_margins(tmp_path):
    path = write_jsonl(
        tmp_path / "pairs.jsonl",
        [
            {"prompt": "p1", "chosen": "good", "rejected": "bad", "margin": 2},
            {"prompt": "p2", "chosen": "yes", "rejected": "no"},
        ],
    )
    prefs, skipped = data.load_preferences(path, "pairs")
    assert skipped == 0
    assert prefs == [
        data.Preference("p1", ("good", "bad"), (0, 1), 2.0),
        data.Preference("p2", ("yes", "no"), (0, 1), 0.0),
    ]


def test_rankings_load(tmp_path):
    row = {"prompt": "q", "responses": ["a", "b", "c"], "ranks": [2, 0, 1]}
    path = write_jsonl(tmp_path / "r.jsonl", [row])
    prefs, _ = data.load_preferences(path, "rankings")
    assert prefs == [data.Preference("q", ("a", "b", "c"), (2, 0, 1))]


BAD_PAIRS = [
    ({"prompt": "p", "chosen": "x"}, "missing field 'rejected'"),
    ({"prompt": "p", "chosen": "same", "rejected": "same"}, "two responses are equal"),
    ({"prompt": "p", "chosen": "a", "rejected": "b", "margin": "big"}, "'margin' is a str"),
    ("not json", "invalid JSON"),
]


@pytest.mark.parametrize("row,message", BAD_PAIRS)
def test_malformed_pair_names_file_and_line(tmp_path, row, message):
    good = {"prompt": "p", "chosen": "a", "rejected": "b"}
    path = write_jsonl(tmp_path / "pairs.jsonl", [good, row, good])
    with pytest.raises(ValueError, match=rf"pairs\.jsonl:2: .*{message}"):
        data.load_preferences(path, "pairs")
    prefs, skipped = data.load_preferences(path, "pairs", skip_invalid=True)
    assert (len(prefs), skipped) == (2, 1)


BAD_RANKINGS = [
    ({"prompt": "q", "responses": ["a", "b"], "ranks": [0]}, "1 ranks for 2 responses"),
    ({"prompt": "q", "responses": ["a", "b"], "ranks": [0, 0]}, "all ranks are equal"),
    ({"prompt": "q", "responses": ["a", "b"], "ranks": [0, 1.5]}, "expected integers"),
    ({"prompt": "q", "responses": ["a"], "ranks": [0]}, "expected at least 2"),
    ({"prompt": "q", "responses": "ab", "ranks": [0, 1]}, "'responses' is a str"),
    ({"prompt": "q", "responses": [["a"], "b"], "ranks": [0, 1]}, "not a string"),
]


@pytest.mark.parametrize("row,message", BAD_RANKINGS)
def test_malformed_ranking_names_file_and_line(tmp_path, row, message):
    path = write_jsonl(tmp_path / "ranks.jsonl", [row])
    with pytest.raises(ValueError, match=rf"ranks\.jsonl:1: .*{message}"):
        data.load_preferences(path, "rankings")
    # Every row skipped: an empty data set is an error of its own.
    with pytest.raises(ValueError, match=r"no valid rankings rows \(1 skipped\)"):
        data.load_preferences(path, "rankings", skip_invalid=True)


def test_unknown_format():
    with pytest.raises(ValueError, match="unknown preference format 'csv'"):
        data.load_preferences("x", "csv")


def test_hh_rlhf_fixture_splits_into_prompt_and_two_responses():
    prefs, skipped = data.load_preferences(data.HH_RLHF_PATH, "hh_rlhf")
    assert (len(prefs), skipped) == (400, 0)
    with open(data.HH_RLHF_PATH, encoding="utf-8") as f:
        first = json.loads(f.readline())
    p = prefs[0]
    assert p.prompt.endswith("\n\nAssistant:") and p.prompt.startswith("\n\nHuman:")
    assert first["chosen"] == p.prompt + " " + p.responses[0]
    assert first["rejected"] == p.prompt + " " + p.responses[1]
    assert all(q.responses[0] != q.responses[1] and q.ranks == (0, 1) for q in prefs)


def test_hh_rlhf_errors_and_gzip(tmp_path):
    shared = "\n\nHuman: hi\n\nAssistant:"
    rows = [
        {"chosen": shared + " hello", "rejected": shared + " go away"},
        {"chosen": shared + " hello", "rejected": "\n\nHuman: bye\n\nAssistant: ok"},
        {"chosen": "\n\nHuman: no assistant", "rejected": "\n\nHuman: none"},
    ]
    path = tmp_path / "hh.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(ValueError, match=r"hh\.jsonl\.gz:2: .*expected a shared prompt"):
        data.load_preferences(path, "hh_rlhf")
    prefs, skipped = data.load_preferences(path, "hh_rlhf", skip_invalid=True)
    assert skipped == 2
    assert prefs == [data.Preference(shared, ("hello", "go away"), (0, 1))]


def test_gold_ranks_noiseless_and_ties():
    scores = np.array([[0.1, 0.9, 0.5, 0.9], [3.0, 2.0, 1.0, 0.0]])
    ranks = data.gold_ranks(scores, np.random.default_rng(0))
    # Competition ranking by hand: the two 0.9s share rank 0, then 0.5 is 2, 0.1 is 3.
    np.testing.assert_array_equal(ranks, [[3, 0, 2, 0], [0, 1, 2, 3]])


def test_gold_ranks_noise_is_plackett_luce():
    """With Gumbel noise of scale b, P(i beats j) = sigmoid((s_i - s_j) / b) (logistic diff)."""
    n, d, b = 20000, 0.5, 0.7
    scores = np.tile([[d, 0.0]], (n, 1))
    ranks = data.gold_ranks(scores, np.random.default_rng(1), noise=b)
    wins = np.mean(ranks[:, 0] < ranks[:, 1])
    expected = 1 / (1 + math.exp(-d / b))
    # 4 standard errors of a binomial proportion over 20,000 draws.
    assert abs(wins - expected) < 4 * math.sqrt(expected * (1 - expected) / n)


def test_preferences_from_responses_drops_all_tied():
    ranks = np.array([[0, 1], [0, 0]])
    prefs = data.preferences_from_responses(["a", "b"], [["x", "y"], ["z", "z"]], ranks)
    assert prefs == [data.Preference("a", ("x", "y"), (0, 1))]


def test_digits_task_and_gold_reward():
    task = data.make_task("digits", min_digits=2, max_digits=4, seed=3)
    examples = task.batch(0, 50)
    for ex in examples:
        n = ex.info["num_digits"]
        assert ex.prompt == f"{n} digits:" and len(ex.target) == n and ex.target.isdigit()
    ex = data.Example("3 digits:", "", "", {"num_digits": 3, "format": "[0-9]{3}"})
    texts = ["999", "000", "90", "9999", "a99"]
    # Hand values: (digit sum / 27) - 0.5 * |len - 3| / 3.
    expected = [1.0, 0.0, 9 / 27 - 0.5 / 3, 1.0 - 0.5 / 3, 18 / 27]
    got = rewards.combine_rewards({"digits_gold": 1.0}, texts, [ex] * 5)[0]
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    # The length-paying labeller: digit sum of the whole completion / 27, so "9999" beats "999".
    verbose = rewards.combine_rewards({"digits_verbose": 1.0}, texts, [ex] * 5)[0]
    np.testing.assert_allclose(verbose, [1.0, 0.0, 9 / 27, 36 / 27, 18 / 27], rtol=1e-6)
    fmt = rewards.combine_rewards({"format": 1.0}, texts, [ex] * 5)[0]
    np.testing.assert_array_equal(fmt, [1, 1, 0, 0, 0])
    with pytest.raises(ValueError, match="min_digits"):
        data.make_task("digits", min_digits=0)


def test_hh_rlhf_task_uses_chosen_as_target():
    task = data.make_task("hh_rlhf", eval_size=40)
    assert len(task.train) == 360 and len(task.eval_set(40)) == 40
    prefs, _ = data.load_preferences(data.HH_RLHF_PATH, "hh_rlhf")
    targets = {(p.prompt, p.responses[0]) for p in prefs}
    assert all((ex.prompt, ex.target) in targets for ex in task.batch(0, 20))


def test_expand_pairs_hand_made():
    """Every pair of a ranking once, better response first, ties giving no pair, in order."""
    ranking = data.Preference("p", ("a", "b", "c", "d"), (2, 0, 3, 1))  # best to worst: b d a c
    tied = data.Preference("q", ("x", "y", "z"), (0, 0, 1), margin=0.5)
    pairs = data.expand_pairs([ranking, tied])
    P = data.Preference  # noqa: N806
    assert pairs == [
        P("p", ("b", "a"), (0, 1)),  # (0, 1): rank 2 vs 0
        P("p", ("a", "c"), (0, 1)),  # (0, 2): 2 vs 3
        P("p", ("d", "a"), (0, 1)),  # (0, 3): 2 vs 1
        P("p", ("b", "c"), (0, 1)),
        P("p", ("b", "d"), (0, 1)),
        P("p", ("d", "c"), (0, 1)),  # (2, 3): 3 vs 1
        P("q", ("x", "z"), (0, 1), 0.5),  # x ~ y tie: no pair
        P("q", ("y", "z"), (0, 1), 0.5),
    ]
    assert data.expand_pairs([P("r", ("u", "v"), (1, 0))]) == [P("r", ("v", "u"), (0, 1))]


def test_shuffled_pairs_stream_is_seeded_and_mixes_prompts():
    """The training stream over expanded pairs: an epoch holds every pair once, the order is a
    function of the seed, and a ranking's pairs are spread over the epoch (not one block)."""
    prefs = [data.Preference(f"p{i}", ("a", "b", "c", "d"), (0, 1, 2, 3)) for i in range(16)]
    pairs = data.expand_pairs(prefs)
    assert len(pairs) == 16 * 6
    epoch = data.FileDataset(pairs, seed=3).batch(0, len(pairs))
    assert sorted(epoch, key=repr) == sorted(pairs, key=repr)
    assert epoch == data.FileDataset(pairs, seed=3).batch(0, len(pairs))
    assert epoch != data.FileDataset(pairs, seed=4).batch(0, len(pairs))
    positions = [i for i, p in enumerate(epoch) if p.prompt == "p0"]
    assert max(positions) - min(positions) > 6  # grouped, they would be 6 in a row
