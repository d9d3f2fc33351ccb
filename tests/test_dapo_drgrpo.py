"""DAPO's overlong filtering, the rollout length metrics, and the scratchpad task of the Dr. GRPO
ablation, against NumPy references and hand-derived values."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rl_jax import data, models, rewards
from rl_jax.algorithm import RolloutBatch, build_rl_step
from rl_jax.algorithm.step import overlong_filter_mask
from rl_jax.trainers.rl import Round, device_batch, rollout_metrics
from tests.testing_utils import rl_settings

BATCH, PROMPT, RESPONSE, GROUP = 8, 3, 5, 4
TRUNCATED = np.asarray([0, 1, 0, 0, 0, 0, 1, 0], np.float32)  # rows 1 and 6: no EOS


def test_overlong_filter_mask_matches_numpy():
    rng = np.random.default_rng(0)
    response_mask = (rng.random((6, 7)) < 0.7).astype(np.float32)
    truncated = np.asarray([1, 0, 0, 1, 0, 1], np.float32)
    expected = np.array([[0.0 if truncated[b] else response_mask[b, t] for t in range(7)]
                         for b in range(6)])
    got = overlong_filter_mask(jnp.asarray(response_mask), jnp.asarray(truncated))
    np.testing.assert_array_equal(np.asarray(got), expected)


def _model_and_batch():
    config = models.tiny_config("qwen2", vocab_size=32, hidden_size=16, intermediate_size=32,
                                num_layers=1, num_heads=2, num_kv_heads=1)
    graphdef, params = nnx.split(models.CausalLM(config, rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(1)
    response_mask = np.ones((BATCH, RESPONSE), np.float32)
    response_mask[2, 2:] = 0  # short responses of different lengths
    response_mask[5, 4:] = 0
    batch = RolloutBatch(
        tokens=rng.integers(3, 32, (BATCH, PROMPT + RESPONSE)).astype(np.int32),
        mask=np.concatenate([np.ones((BATCH, PROMPT), np.float32), response_mask], 1),
        response_mask=response_mask,
        sampler_logprobs=np.full((BATCH, RESPONSE), np.log(1 / 32), np.float32),
        scores=np.asarray([1, 0, 0, 1, 1, 0, 0, 1], np.float32),
        truncated=TRUNCATED,
    )
    return graphdef, {"policy": params}, batch


def _loss_and_grad(settings, graphdef, params, minibatch):
    loss_fn = build_rl_step(settings, None, graphdef).loss
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, minibatch)
    return float(loss), metrics, grads


@pytest.mark.slow
@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
def test_truncated_rows_add_nothing_to_loss_gradient_or_normaliser(agg):
    """The filtered loss equals (a) a NumPy reference over the kept rows (one update at the
    sampling weights: ratio 1, so the loss is minus the aggregated advantage), and (b), with its
    gradient, the unfiltered loss of the batch without the truncated rows; the truncated rows'
    advantages, tokens and reference log-probs change nothing."""
    graphdef, params, batch = _model_and_batch()
    options = dict(estimator="grpo", group_size=GROUP, temperature=1.0, max_len=RESPONSE, agg=agg,
                   kl_loss_coef=0.1, num_minibatches=1)
    filtered = rl_settings(**options, overlong_filter=True)
    prepared, metrics = build_rl_step(filtered, None, graphdef).prepare(params, None, batch, 0.0)
    assert float(metrics["overlong_filtered"]) == pytest.approx(TRUNCATED.mean())
    ref_logprobs = np.random.default_rng(2).normal(-3.0, 0.5, (BATCH, RESPONSE)).astype(np.float32)
    minibatch = jax.tree.map(np.asarray, prepared.replace(ref_logprobs=ref_logprobs))
    loss, metrics, grads = _loss_and_grad(filtered, graphdef, params, minibatch)

    # (a) NumPy: the kept rows' advantages, aggregated with the kept rows' normaliser.
    adv, m = np.asarray(prepared.advantages), batch.response_mask
    keep = TRUNCATED == 0
    lengths = m.sum(1)
    if agg == "token-mean":
        expected = -(adv * m)[keep].sum() / lengths[keep].sum()
    else:
        expected = -np.mean([(adv[b] * m[b]).sum() / lengths[b] for b in np.flatnonzero(keep)])
    assert float(metrics["policy_loss"]) == pytest.approx(expected, abs=1e-6)
    assert abs(expected) > 1e-3  # the reference is not trivially 0

    # (b) the batch without the truncated rows, no filter: same loss and gradient.
    kept = jax.tree.map(lambda x: x[keep], minibatch)
    kept = kept.replace(loss_mask=kept.response_mask, policy_mask=kept.response_mask)
    unfiltered = rl_settings(**options)
    sub_loss, _, sub_grads = _loss_and_grad(unfiltered, graphdef, params, kept)
    assert loss == pytest.approx(sub_loss, abs=1e-6)
    for g, h in zip(jax.tree.leaves(grads), jax.tree.leaves(sub_grads), strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(h), atol=1e-6)

    # Changing the truncated rows changes nothing.
    rows = np.flatnonzero(~keep)
    changed = jax.tree.map(np.copy, minibatch)
    changed.advantages[rows] = 50.0
    changed.ref_logprobs[rows] = -20.0
    changed.tokens[rows, PROMPT:] = 7
    loss2, _, grads2 = _loss_and_grad(filtered, graphdef, params, changed)
    assert loss2 == pytest.approx(loss, abs=1e-6)
    for g, h in zip(jax.tree.leaves(grads), jax.tree.leaves(grads2), strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(h), atol=1e-6)
    # Without the filter the truncated rows do count (a negative control).
    changed = changed.replace(loss_mask=changed.response_mask, policy_mask=changed.response_mask)
    loss3, _, _ = _loss_and_grad(unfiltered, graphdef, params, changed)
    assert abs(loss3 - loss) > 1e-2


def _round(lengths, correct, truncated):
    rows, width = len(lengths), max(lengths) + 1
    response_mask = (np.arange(width)[None] < np.asarray(lengths)[:, None]).astype(np.int32)
    return Round(
        prompt_tokens=np.ones((rows, 2), np.int32),
        prompt_mask=np.ones((rows, 2), np.int32),
        response_tokens=np.full((rows, width), 5, np.int32),
        response_mask=response_mask,
        sampler_logprobs=np.zeros((rows, width), np.float32),
        scores=np.asarray(correct, np.float32),
        rewards={"exact_match": np.asarray(correct, np.float32)},
        correct=np.asarray(correct, np.float32),
        truncated=np.asarray(truncated, bool),
        texts=[""] * rows,
    )


def test_rollout_length_metrics_by_correctness():
    batch = _round([3, 7, 5, 2, 9], [1, 0, 1, 0, 0], [False, True, False, False, True])
    metrics = rollout_metrics(batch)
    assert metrics["length"] == pytest.approx(26 / 5)
    assert metrics["length_correct"] == pytest.approx((3 + 5) / 2)
    assert metrics["length_incorrect"] == pytest.approx((7 + 2 + 9) / 3)
    assert metrics["truncated"] == pytest.approx(2 / 5)
    assert metrics["truncated_correct"] == 0.0 and "length_ratio_in_group" not in metrics
    cut = rollout_metrics(_round([3, 7, 5, 2], [1, 1, 0, 1], [False, True, True, False]), 2)
    assert cut["truncated_correct"] == pytest.approx(1 / 3)  # 7 of the correct 3, 7, 2
    assert cut["truncated_incorrect"] == pytest.approx(1 / 4)  # 5 of the four rows
    assert cut["length_ratio_in_group"] == pytest.approx((7 / 3 + 5 / 2) / 2)
    assert device_batch(batch).truncated.tolist() == [0, 1, 0, 0, 1]
    assert rollout_metrics(_round([4, 6], [1, 1], [False, False]))["length_incorrect"] == 0.0


def test_column_notes_hand_derived_and_against_the_sum():
    assert data.column_notes(58, 67) == ["15", "12"]
    assert data.column_notes(123, 456) == ["9", "7", "5"]
    assert data.column_notes(999, 1) == ["10", "10", "10"]
    rng = np.random.default_rng(0)
    for a, b in rng.integers(0, 10_000, (200, 2)):
        notes = data.column_notes(int(a), int(b))
        # each note's last digit is a digit of the reversed sum; the last note's carry ends it
        written = "".join(n[-1] for n in notes) + ("1" if int(notes[-1]) >= 10 else "")
        assert written == str(int(a) + int(b))[::-1]


def test_scratchpad_targets_are_correct_at_every_length():
    task = data.make_task("addition_scratchpad", seed=3)
    examples = task.batch(0, 400)
    targets = [ex.target for ex in examples]
    assert rewards.final_answer_reward(targets, examples).tolist() == [1.0] * 400
    assert rewards.format_reward(targets, examples).tolist() == [1.0] * 400
    counts = set()
    for ex in examples:
        a, b = ex.info["operands"]
        assert ex.answer == str(a + b)[::-1] and ex.prompt == f"{a}+{b}="
        notes = ex.target.split(">")[0].split(",") if ">" in ex.target else []
        assert notes == list(ex.info["notes"][: len(notes)])
        counts.add(len(notes))
    assert counts == {0, 1, 2, 3}  # every scratchpad length occurs in the SFT data
    assert task.batch(0, 5) == examples[:5]  # a pure function of (seed, step)
    with pytest.raises(ValueError, match="min_value"):
        data.ScratchpadAdditionTask(min_value=5, max_value=1)


def test_filler_targets_are_correct_at_every_length_and_the_filler_is_not_scored():
    task = data.make_task("addition_filler", max_filler=6, seed=3)
    examples = task.batch(0, 400)
    targets = [ex.target for ex in examples]
    assert rewards.exact_match_reward(targets, examples).tolist() == [1.0] * 400
    assert rewards.format_reward(targets, examples).tolist() == [1.0] * 400
    fillers = set()
    for ex in examples:
        a, b = ex.info["operands"]
        assert ex.answer == str(a + b)[::-1] and ex.prompt == f"{a}+{b}="
        assert ex.target.startswith(ex.answer) and set(ex.target[len(ex.answer):]) <= {" "}
        fillers.add(len(ex.target) - len(ex.answer))
    assert fillers == set(range(7))  # every filler length 0..max_filler occurs
    assert task.batch(0, 5) == examples[:5]  # a pure function of (seed, step)
    # Filler of any length, or none, scores as the answer alone; a wrong answer scores 0.
    ex = examples[0]
    wrong = str(int(ex.answer[::-1]) + 1)[::-1]
    got = rewards.exact_match_reward([ex.answer, ex.answer + " " * 20, wrong + "   "], [ex] * 3)
    assert got.tolist() == [1.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="max_filler"):
        data.make_task("addition_filler", max_filler=-1)


def test_final_answer_reward_hand_cases():
    ex = data.Example("58+67=", "15,12>521", "521")
    texts = ["15,12>521", "521", " 15>521 ", "1>2>521", "15>52", "521>15", "", "15,12>"]
    assert rewards.final_answer_reward(texts, [ex] * len(texts)).tolist() == [
        1, 1, 1, 1, 0, 0, 0, 0]
    assert re.fullmatch(data.SCRATCHPAD_FORMAT, "15,12>521")
    assert not re.fullmatch(data.SCRATCHPAD_FORMAT, ">521")
