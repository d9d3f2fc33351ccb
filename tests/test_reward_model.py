"""Reward-model training: batching, the pair/ranking/listwise losses on a real model, the synthetic
RLHF pipeline (SFT -> reward model -> PPO on the learned reward), the HH data path."""

import dataclasses
import json
import re
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import hh_rm, preference_rm_ppo
from rl_jax import data, models, reward_losses
from rl_jax.learned_reward import LearnedReward
from rl_jax.trainers import reward_model as rm
from rl_jax.trainers.metrics import read_metrics
from rl_jax.trainers.run import run

ROOT = Path(__file__).resolve().parents[1]

PAIRS = [
    {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5", "margin": 1.0},
    {"prompt": "Say hi", "chosen": "hi there", "rejected": "go away"},
    {"prompt": "Colour of the sky?", "chosen": "blue", "rejected": "green, mostly at noon"},
    {"prompt": "x", "chosen": "a longer answer here", "rejected": "b"},
]


def tokenizer_ctx():
    texts = [p["prompt"] + p["chosen"] + p["rejected"] for p in PAIRS] * 20
    return types.SimpleNamespace(tokenizer=models.train_bpe_tokenizer(texts, 300))


def tiny_reward_model(tokenizer, seed=0):
    config = models.tiny_config(
        "qwen2",
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_layers=1,
        max_position_embeddings=64,
        initializer_range=0.1,
    )
    return models.RewardModel(config, rngs=nnx.Rngs(seed))


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def loss_and_grads(graphdef, params, batch, loss):
    fn = rm.make_rm_loss(graphdef, loss)
    (value, metrics), grads = jax.value_and_grad(fn, has_aux=True)(
        {"reward": params}, jax.tree.map(jnp.asarray, batch)
    )
    return value, grads, metrics


@pytest.mark.slow
def test_k2_rankings_train_exactly_like_pairs(tmp_path):
    """The same pairs as a pairs file and as K = 2 rankings (in either order): same loss and
    gradients under the pairwise, ranking and listwise losses."""
    ctx = tokenizer_ctx()
    pairs_path = write_jsonl(tmp_path / "pairs.jsonl", [{**p, "margin": 0.0} for p in PAIRS])
    # Rankings list the rejected response first half the time: ranks decide, not positions.
    rank_rows = [
        {"prompt": p["prompt"], "responses": [p["rejected"], p["chosen"]], "ranks": [1, 0]}
        if i % 2
        else {"prompt": p["prompt"], "responses": [p["chosen"], p["rejected"]], "ranks": [0, 1]}
        for i, p in enumerate(PAIRS)
    ]
    ranks_path = write_jsonl(tmp_path / "ranks.jsonl", rank_rows)
    model = tiny_reward_model(ctx.tokenizer)
    graphdef, params = nnx.split(model)

    def batch(path, fmt):
        prefs, _ = data.load_preferences(path, fmt)
        items, _ = rm.encode_preferences(ctx, prefs, 64, truncate_prompts=False)
        return rm.rm_batch(items, 2, ctx.tokenizer.pad_token_id, 64)

    pairs_batch = batch(pairs_path, "pairs")
    reference, ref_grads, _ = loss_and_grads(graphdef, params, pairs_batch, "pairwise")
    for loss in ("pairwise", "ranking", "listwise"):
        value, grads, _ = loss_and_grads(graphdef, params, batch(ranks_path, "rankings"), loss)
        np.testing.assert_allclose(value, reference, rtol=1e-6, err_msg=loss)
        for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True):
            np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-7, err_msg=loss)


@pytest.mark.slow
def test_pairwise_margin_and_scores_match_a_direct_forward(tmp_path):
    """The batched loss equals -log sigmoid(r+ - r- - m) from per-sequence forwards, and the
    reward is read at the EOS after the response."""
    ctx = tokenizer_ctx()
    prefs, _ = data.load_preferences(write_jsonl(tmp_path / "p.jsonl", PAIRS), "pairs")
    items, _ = rm.encode_preferences(ctx, prefs, 64, truncate_prompts=False)
    batch = rm.rm_batch(items, 2, ctx.tokenizer.pad_token_id, 64)
    model = tiny_reward_model(ctx.tokenizer, seed=1)
    graphdef, params = nnx.split(model)
    value, _, metrics = loss_and_grads(graphdef, params, batch, "pairwise")
    tok = ctx.tokenizer
    losses, diffs = [], []
    for pair in PAIRS:
        rewards = []
        for response in (pair["chosen"], pair["rejected"]):
            ids = [tok.bos_token_id] + tok.encode(pair["prompt"], add_special_tokens=False)
            ids += tok.encode(response, add_special_tokens=False) + [tok.eos_token_id]
            x = jnp.asarray([ids])
            rewards.append(float(model(x, jnp.arange(len(ids))[None], jnp.ones_like(x))[0]))
        diffs.append(rewards[0] - rewards[1])
        losses.append(np.log1p(np.exp(-(diffs[-1] - pair.get("margin", 0.0)))))
    np.testing.assert_allclose(value, np.mean(losses), rtol=1e-5)
    np.testing.assert_allclose(metrics["accuracy"], np.mean(np.asarray(diffs) > 0))


def test_rm_batch_pads_missing_responses():
    items = [
        rm.EncodedPreference([1, 5], [[7, 2], [8, 9, 2], [6, 2]], (0, 2, 1), 0.0),
        rm.EncodedPreference([1, 6, 6], [[7, 2], [9, 2]], (1, 0), 0.0),
    ]
    batch = rm.rm_batch(items, 3, 0, 64)
    assert batch["tokens"].shape == (6, 16)
    np.testing.assert_array_equal(batch["present"], [[1, 1, 1], [1, 1, 0]])
    np.testing.assert_array_equal(batch["tokens"][4, :5], [1, 6, 6, 9, 2])
    np.testing.assert_array_equal(batch["mask"].sum(1), [4, 5, 4, 5, 5, 5])
    with pytest.raises(ValueError, match="3 responses > K = 2"):
        rm.rm_batch(items, 2, 0, 64)


def test_too_long_preference_is_an_error_unless_truncated():
    ctx = tokenizer_ctx()
    pref = data.Preference("a very long prompt " * 10, ("yes", "no"), (0, 1))
    with pytest.raises(ValueError, match=r"preference 0 .* > the model's context 16"):
        rm.encode_preferences(ctx, [pref], 16, truncate_prompts=False)
    (item,), skipped = rm.encode_preferences(ctx, [pref], 16, truncate_prompts=True)
    assert skipped == 0
    assert item.prompt[0] == ctx.tokenizer.bos_token_id
    assert len(item.prompt) + max(len(r) for r in item.responses) == 16
    tail = ctx.tokenizer.encode(pref.prompt, add_special_tokens=False)[-(len(item.prompt) - 1) :]
    assert item.prompt[1:] == tail
    # A response that alone overflows the context: an error, or skipped and counted.
    long_response = data.Preference("q", ("yes " * 20, "no"), (0, 1))
    with pytest.raises(ValueError, match="response alone is too long"):
        rm.encode_preferences(ctx, [long_response], 16, truncate_prompts=True)
    items, skipped = rm.encode_preferences(
        ctx, [long_response, pref], 16, truncate_prompts=True, skip_too_long=True
    )
    assert (len(items), skipped) == (1, 1)


RANKINGS = [
    data.Preference("Name a colour", ("red", "blue", "green", "a shade"), (1, 0, 3, 2)),
    data.Preference("Say hi", ("hi", "hello there", "go away", "bye"), (0, 1, 3, 2)),
    data.Preference("What is 2+2?", ("4", "5", "four", "22"), (0, 3, 0, 2)),  # a tie: 5 pairs
]


@pytest.mark.slow
def test_all_pairs_shuffled_equal_the_ranking_loss_over_the_full_batch():
    """The same comparisons batched two ways: the grouped ranking loss over every prompt equals
    the pairwise loss over every expanded pair (value and gradients), and a pair in the wrong
    orientation would change it."""
    ctx = tokenizer_ctx()
    pad = ctx.tokenizer.pad_token_id
    model = tiny_reward_model(ctx.tokenizer, seed=3)
    graphdef, params = nnx.split(model)
    grouped, _ = rm.encode_preferences(ctx, RANKINGS, 64, truncate_prompts=False)
    pairs = data.expand_pairs(RANKINGS)
    assert len(pairs) == 6 + 6 + 5
    paired, _ = rm.encode_preferences(ctx, pairs, 64, truncate_prompts=False)

    def value_and_grad(loss):  # jitted: one compile, not one per primitive (seconds on CPU)
        return jax.jit(jax.value_and_grad(rm.make_rm_loss(graphdef, loss), has_aux=True))

    (reference, _), ref_grads = value_and_grad("ranking")({"reward": params},
                                                          rm.rm_batch(grouped, 4, pad, 64))
    pairwise = value_and_grad("pairwise")
    (value, _), grads = pairwise({"reward": params}, rm.rm_batch(paired, 2, pad, 64))
    np.testing.assert_allclose(value, reference, rtol=1e-6)
    for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True):
        # float32 sums in another order: differences of ~1e-7 on gradients of ~0.05
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-6)
    # A negative control: one pair turned around changes the loss.
    flipped = [dataclasses.replace(p, ranks=(1, 0)) if i == 0 else p for i, p in enumerate(paired)]
    (value, _), _ = pairwise({"reward": params}, rm.rm_batch(flipped, 2, pad, 64))
    assert abs(float(value) - float(reference)) > 1e-4


def test_pairs_per_step_matches_the_grouped_comparisons():
    # 16 prompts a step of 128 with 760 pairs: 16 * 760 / 128 = 95 pairs; on 8 devices 96.
    assert rm.pairs_per_step(16, 128, 760) == 95
    assert rm.pairs_per_step(16, 128, 760, multiple=8) == 96
    assert rm.pairs_per_step(2, 10, 3, multiple=8) == 8  # at least one a device
    assert rm.pairs_per_step(32, 64, 64 * 6) == 32 * 6  # K = 4, no ties: K(K-1)/2 a prompt


def test_evaluate_rm_loss_matches_a_loop_over_pairs():
    """Held-out loss: the mean over every ordered pair of -log sigmoid(r_better - r_worse)."""
    ctx = tokenizer_ctx()
    items, _ = rm.encode_preferences(ctx, RANKINGS, 64, truncate_prompts=False)
    rng = np.random.default_rng(0)
    table = rng.normal(size=(len(RANKINGS), 4))

    class Fixed:  # scores by row position, like LearnedReward.raw
        def raw(self, tokens, mask):
            return table.reshape(-1)[: len(tokens)]

    result = rm.evaluate_rm(Fixed(), items, 4, ctx.tokenizer.pad_token_id, 64)
    losses = [np.log1p(np.exp(-(table[p, i] - table[p, j])))
              for p, pref in enumerate(RANKINGS) for i in range(4) for j in range(4)
              if pref.ranks[i] < pref.ranks[j]]
    assert len(losses) == 17
    assert result["loss"] == pytest.approx(np.mean(losses), rel=1e-5)


@pytest.mark.slow
def test_shuffled_pairs_stage_runs_with_the_grouped_steps(tmp_path, capsys):
    """rm.comparisons='shuffled_pairs' end to end on a rankings file: a step takes the pairs of
    batch_size prompts, and held-out evaluation (pair accuracy and loss) is the grouped one."""
    rows = [{"prompt": f"{p.prompt} {i}", "responses": list(p.responses), "ranks": list(p.ranks)}
            for i in range(4) for p in RANKINGS]
    config = hh_rm.get_config()
    config.rm.data = "rankings"
    config.rm.path = str(write_jsonl(tmp_path / "ranks.jsonl", rows))
    config.rm.comparisons = "shuffled_pairs"
    config.rm.loss = "ranking"
    config.rm.eval_size = 4
    config.rm.batch_size = 8
    config.rm.steps = 2
    config.eval.every = 2
    config.model.vocab_size = 512
    config.log.progress_bar = False
    summary = run(config, str(tmp_path / "run"))
    out = capsys.readouterr().out
    found = re.search(r"rm: (\d+) rankings -> (\d+) shuffled pairs, (\d+) a step", out)
    assert found, out
    prompts, pairs, per_step = map(int, found.groups())
    # 8 training rankings, 6 pairs each or 5 (the tie); all 8 prompts' pairs a step, rounded up
    # to the 8 devices.
    assert prompts == 8 and 40 <= pairs <= 48
    assert per_step == rm.pairs_per_step(8, 8, pairs, 8) and per_step % 8 == 0
    ev = summary["rm_eval"]
    assert 0.0 <= ev["pair_accuracy"] <= 1.0 and np.isfinite(ev["loss"])


def test_pair_accuracy_matches_loop():
    rng = np.random.default_rng(2)
    scores = rng.normal(size=(6, 4)).round(1)
    ranks = rng.integers(0, 3, size=(6, 4))
    present = rng.random((6, 4)) > 0.2
    right = total = 0.0
    for p in range(6):
        for i in range(4):
            for j in range(4):
                if present[p, i] and present[p, j] and ranks[p, i] < ranks[p, j]:
                    total += 1
                    diff = scores[p, i] - scores[p, j]
                    right += 1.0 if diff > 0 else 0.5 if diff == 0 else 0.0
    accuracy = reward_losses.pair_accuracy(scores, ranks, present)
    assert float(accuracy) == pytest.approx(right / total)


def small_rlhf_config():
    c = preference_rm_ppo.get_config()
    c.sft.steps = 200
    c.eval.num_examples = 64
    c.rm.num_prompts = 1024
    c.rm.eval_size = 128
    c.rm.steps = 120
    c.rl.steps = 8
    c.rl.num_prompts = 32
    c.eval.every = 25  # every stage; each stage is also evaluated at its last step
    c.checkpoint.every = 50
    c.log.every = 50
    c.log.samples_every = 0
    c.log.progress_bar = False
    return c


@pytest.mark.slow
def test_synthetic_rlhf_pipeline(tmp_path):
    """SFT -> reward model from noiseless gold rankings (>= 80% held-out pair accuracy against the
    gold function) -> PPO on the learned reward with a critic started from the reward model raises
    the gold reward it never saw; both rewards and the KL are logged; a rerun restores the finished
    reward model and its normalisation instead of retraining."""
    config = small_rlhf_config()
    workdir = str(tmp_path / "run")
    summary = run(config, workdir)
    assert summary["rm_eval"]["pair_accuracy"] >= 0.8
    records = read_metrics(workdir)
    rl = [r for r in records if r["stage"] == "rl"]
    assert len(rl) == 8
    # The full config goes 0.495 -> 0.67 in 5 steps; here: the last 3 steps beat the first by 0.05.
    gold = [r["reward/digits_gold"] for r in rl]
    assert np.mean(gold[-3:]) > gold[0] + 0.05, gold
    for name in ("reward/model", "reward/digits_gold", "kl_ref", "value_loss", "eval/pass@1"):
        assert np.isfinite(rl[-1][name]), name
    # The learned reward is normalised on the SFT policy's samples: about zero mean at the start.
    assert abs(rl[0]["reward/model"]) < 1.0
    rm_records = [r for r in records if r["stage"] == "rm"]
    assert len(rm_records) == 120
    again = run(config, workdir)
    assert again["rm_eval"] == summary["rm_eval"]
    assert len([r for r in read_metrics(workdir) if r["stage"] == "rm"]) == 120


@pytest.mark.slow
def test_critic_starts_from_the_reward_model():
    from rl_jax.settings import RunSettings
    from rl_jax.trainers import rl as rl_trainer

    config = preference_rm_ppo.get_config()
    model_config = models.tiny_config("qwen2", hidden_size=32, num_layers=1, intermediate_size=64)
    policy = models.CausalLM(model_config, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(policy)
    reward = models.RewardModel.from_policy(policy, rngs=nnx.Rngs(5))
    rgraph, rparams = nnx.split(reward)
    learned = LearnedReward(rgraph, rparams, 0.5, 2.0)
    assert config.rl.estimator == "gae" and config.rl.critic_init == "reward_model"
    ctx = types.SimpleNamespace(graphdef=graphdef)
    settings = RunSettings.from_config(config).rl
    trained, value_graphdef = rl_trainer.init_params(ctx, params, settings, learned)
    value = trained["value"]
    backbone = zip(jax.tree.leaves(value["model"]), jax.tree.leaves(rparams["model"]), strict=True)
    for a, b in backbone:
        np.testing.assert_array_equal(a, b)
    # The critic's head predicts the normalised reward: V(last token) == (r - 0.5) / 2.
    tokens = jnp.asarray([[3, 4, 5, 6], [0, 7, 8, 9]])
    mask = jnp.asarray([[1, 1, 1, 1], [0, 1, 1, 1]])
    positions = models.positions_from_mask(mask)
    values = models.apply_model(value_graphdef, value, tokens, positions, mask)
    np.testing.assert_allclose(
        values[:, -1], (reward(tokens, positions, mask) - 0.5) / 2.0, rtol=1e-5, atol=1e-6
    )
    config.rl.critic_init = "policy"
    settings = RunSettings.from_config(config).rl
    trained, _ = rl_trainer.init_params(ctx, params, settings, learned)
    head = trained["value"]["score"]["kernel"]
    assert not np.allclose(head, rparams["score"]["kernel"])


def test_learned_reward_needs_the_rm_stage(tmp_path):
    config = small_rlhf_config()
    config.stages = ("sft", "rl")
    with pytest.raises(ValueError, match="to include 'rm' for rewards.model_weight"):
        run(config, str(tmp_path / "run"))


def test_kl_in_reward_is_rejected_for_group_estimators():
    from rl_jax.config import check_config

    config = preference_rm_ppo.get_config("grpo")
    config.kl.in_reward = True
    with pytest.raises(ValueError, match="config.kl.in_reward = True: expected False"):
        check_config(config)
    for arg in ("grpo", "rloo"):
        c = preference_rm_ppo.get_config(arg)
        assert c.rl.estimator == arg and not c.kl.in_reward and c.rl.group_size > 1
    with pytest.raises(ValueError, match="expected ppo, grpo or rloo"):
        preference_rm_ppo.get_config("dpo")


@pytest.mark.slow
def test_malformed_preference_file_stops_the_rm_stage(tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", PAIRS + [{"prompt": "p", "chosen": "z"}])
    config = hh_rm.get_config()
    config.rm.data = "pairs"
    config.rm.path = str(bad)
    config.rm.skip_invalid = False
    with pytest.raises(ValueError, match=r"bad\.jsonl:5: missing field 'rejected'"):
        run(config, str(tmp_path / "run"))
    assert not (tmp_path / "run" / "rm").exists() or not any((tmp_path / "run" / "rm").iterdir())


@pytest.mark.slow
def test_hh_reward_model_smoke(tmp_path):
    """The real HH data path end to end: a few steps on the fixture, finite, evaluated."""
    config = hh_rm.get_config()
    config.rm.steps = 2
    config.eval.every = 2
    config.rm.batch_size = 8
    config.rm.eval_size = 16
    config.model.vocab_size = 512
    config.log.progress_bar = False
    summary = run(config, str(tmp_path / "hh"))
    ev = summary["rm_eval"]
    assert 0.0 <= ev["pair_accuracy"] <= 1.0 and np.isfinite(ev["reward_std"])
