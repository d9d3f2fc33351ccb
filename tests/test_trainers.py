"""End-to-end runs of SFT, GRPO and PPO on a tiny model: they learn, resume exactly, shard."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from rl_jax import parallel
from rl_jax.trainers.metrics import read_metrics
from rl_jax.trainers.run import run
from tests.testing_utils import tiny_config

ROOT = Path(__file__).resolve().parents[1]


def flat(params):
    return np.concatenate([np.ravel(x) for x in jax.tree.leaves(params)])


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides",
    [
        {"rl.estimator": "grpo", "kl.coef": 0.04},
        {"rl.estimator": "gae", "kl.coef": 0.05, "kl.in_reward": True, "kl.target": 1.0,
         "rl.num_minibatches": 2, "rl.epochs": 2, "rl.eos_trick": True,
         "rl.whiten_rewards": True, "rl.optim.grad_accum_steps": 2},
        {"rl.estimator": "rloo", "loss.clip_high": 0.28, "loss.agg": "seq-mean-token-sum-norm",
         "rl.dynamic_sampling": True, "rl.overlong_buffer": 2, "loss.is_correction": "token_tis"},
        {"rl.estimator": "reinforce_pp", "kl.coef": 0.01, "kl.in_reward": True,
         "loss.ratio_level": "sequence", "loss.dual_clip": 3.0},
    ],
    ids=["grpo", "ppo", "rloo-dapo", "reinforce_pp-gspo"],
)
def test_sft_then_rl_runs_and_trains(tmp_path, overrides):
    config = tiny_config(**{"model.logits_chunk": 0, "sft.stop_accuracy": 0.3,
                            "checkpoint.every": 2, "rl.steps": 3, **overrides})
    summary = run(config, str(tmp_path), parallel.make_mesh(devices=jax.devices()[:1]))
    records = read_metrics(tmp_path)
    sft = [r for r in records if r["stage"] == "sft"]
    rl = [r for r in records if r["stage"] == "rl"]
    assert [r["step"] for r in sft] == list(range(1, 7))
    assert [r["step"] for r in rl] == [1, 2, 3]
    for r in rl:
        assert math.isfinite(r["loss"]) and math.isfinite(r["policy_loss"])
        assert 0 <= r["accuracy"] <= 1 and r["tokens_per_second"] > 0
    if overrides["rl.estimator"] == "gae":
        assert all("value_loss" in r and "explained_variance" in r for r in rl)
        assert rl[-1]["kl_coef"] != config.kl.coef  # the adaptive controller moved it
    assert "pass@2" in summary["rl_eval"] and "maj@2" in summary["rl_eval"]
    assert (tmp_path / "curves.png").stat().st_size > 1000
    assert json.loads((tmp_path / "summary.json").read_text())["wall_time_s"] > 0
    assert os.listdir(tmp_path / "tensorboard")


@pytest.mark.slow
def test_rl_changes_the_policy_and_resume_is_exact(tmp_path):
    """2k steps straight == k steps, restart, k more (float32 CPU, within 1e-6)."""
    mesh = parallel.make_mesh(devices=jax.devices()[:1])
    config = tiny_config(**{"rl.steps": 4, "kl.coef": 0.04, "model.logits_chunk": 0,
                            "checkpoint.every": 2})
    config.stages = ("rl",)
    straight = run(config, str(tmp_path / "straight"), mesh)["params"]
    config.rl.steps = 2
    first = run(config, str(tmp_path / "resumed"), mesh)["params"]
    config.rl.steps = 4
    resumed = run(config, str(tmp_path / "resumed"), mesh)["params"]
    assert np.abs(flat(first) - flat(resumed)).max() > 1e-4  # the last 2 steps did change it
    np.testing.assert_allclose(flat(resumed), flat(straight), atol=1e-6)


@pytest.mark.slow
def test_four_devices_give_the_result_of_one(tmp_path):
    config = tiny_config(**{"rl.steps": 2, "kl.coef": 0.04, "model.logits_chunk": 0})
    config.stages = ("rl",)
    # Adam divides by sqrt(v) + eps: with eps = 1e-8, float32 noise in a near-zero gradient can
    # flip the sign of a whole lr-sized update. A larger eps keeps the comparison well-conditioned.
    config.rl.optim.eps = 1e-3
    one = run(config, str(tmp_path / "one"), parallel.make_mesh(devices=jax.devices()[:1]))
    four = run(config, str(tmp_path / "four"), parallel.make_mesh(devices=jax.devices()[:4]))
    np.testing.assert_allclose(flat(four["params"]), flat(one["params"]), atol=1e-5)


@pytest.mark.slow
def test_nan_loss_stops_before_a_checkpoint(tmp_path, monkeypatch):
    config = tiny_config(**{"rl.steps": 3})
    config.stages = ("rl",)
    config.checkpoint.every = 1
    config.log.every = 3  # the check happens at the sync before the checkpoint, not only at logs
    from rl_jax.trainers import rl as rl_module

    def nan_rewards(weights, completions, examples):
        return np.full(len(completions), np.nan, np.float32), {}

    monkeypatch.setattr(rl_module.rewards, "combine_rewards", nan_rewards)
    with pytest.raises(FloatingPointError, match="non-finite"):
        run(config, str(tmp_path), parallel.make_mesh(devices=jax.devices()[:1]))
    assert not list((tmp_path / "rl").glob("[0-9]*"))


@pytest.mark.slow
def test_checkpoint_of_another_model_shape_is_a_clear_error(tmp_path):
    mesh = parallel.make_mesh(devices=jax.devices()[:1])
    config = tiny_config(**{"rl.steps": 2, "checkpoint.every": 2})
    config.stages = ("rl",)
    run(config, str(tmp_path), mesh)
    config.model.hidden_size = 48
    config.rl.steps = 4
    with pytest.raises(ValueError, match="model.hidden_size: 32 -> 48"):  # config.json
        run(config, str(tmp_path), mesh)
    with pytest.raises(ValueError, match="does not match the model"):  # asked to go on anyway
        run(config, str(tmp_path), mesh, allow_config_change=True)


@pytest.mark.slow
def test_unknown_config_field_is_rejected(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "train.py"),
         f"--config={ROOT / 'configs' / 'arithmetic_grpo.py'}", f"--workdir={tmp_path}",
         "--config.rl.bogus_field=1"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode != 0
    assert "bogus_field" in result.stderr


@pytest.mark.parametrize(
    "name",
    [
        "arithmetic_grpo",
        "arithmetic_ppo",
        "arithmetic_rft",
        "countdown_grpo",
        "gsm8k_grpo",
        "preference_rm_ppo",
        "hh_rm",
    ],
)
def test_config_files_build(name):
    import importlib

    from rl_jax.algorithm import RLSettings

    config = importlib.import_module(f"configs.{name}").get_config()
    settings = RLSettings.from_config(config)
    assert settings.estimator == config.rl.estimator
    if config.task.name != "gsm8k":
        from rl_jax.settings import TaskSettings
        from rl_jax.trainers.setup import build_task

        assert len(build_task(TaskSettings.from_config(config)).batch(0, 2)) == 2


@pytest.mark.slow
def test_gsm8k_grpo_from_a_tiny_hugging_face_checkpoint(tmp_path):
    """configs/gsm8k_grpo.py on a tiny random Qwen2 saved by transformers, with a BPE tokenizer
    that has a chat template (the config's prompts go through it)."""
    import torch
    import transformers

    from rl_jax import data, models

    fixture = ROOT / "tests" / "fixtures" / "gsm8k_200.jsonl"
    texts = [ex.prompt + ex.target for ex in data.load_gsm8k(fixture)]
    tokenizer = models.train_bpe_tokenizer(texts, 400)
    tokenizer.chat_template = (  # ChatML with <bos> / <eos> as <|im_start|> / <|im_end|>
        "{% for m in messages %}{{ bos_token + m['role'] + '\n' + m['content'] + eos_token + "
        "'\n' }}{% endfor %}{% if add_generation_prompt %}{{ bos_token + 'assistant\n' }}"
        "{% endif %}"
    )
    torch.manual_seed(0)
    hf_config = transformers.Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024,
        tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    transformers.Qwen2ForCausalLM(hf_config).save_pretrained(tmp_path / "hf")
    tokenizer.save_pretrained(tmp_path / "hf")

    from configs import gsm8k_grpo

    config = gsm8k_grpo.get_config()
    config.model.path = str(tmp_path / "hf")
    config.model.dtype = "float32"
    config.task.kwargs.path = str(fixture)
    config.task.kwargs.eval_size = 4
    config.rollout.max_new_tokens = 8
    config.rl.steps = 2
    config.rl.num_prompts = 2
    config.rl.group_size = 2
    config.eval.num_examples = 4
    config.eval.every = 2
    config.eval.k = 0
    summary = run(config, str(tmp_path / "run"), parallel.make_mesh(devices=jax.devices()[:1]))
    rl = [r for r in read_metrics(tmp_path / "run") if r["stage"] == "rl"]
    assert len(rl) == 2 and all(math.isfinite(r["loss"]) for r in rl)
    assert "kl_ref" in rl[0] and 0 <= summary["rl_eval"]["pass@1"] <= 1


def _digit_task_config():
    """From scratch, one new token, reward 1 if it is a digit: ~4% of random tokens are."""
    config = tiny_config(**{"rl.steps": 30, "rl.num_prompts": 8, "rl.group_size": 8,
                            "model.logits_chunk": 0})
    config.stages = ("rl",)
    config.rollout.max_new_tokens = 1
    config.rewards.weights = {"format": 1.0}
    config.rl.optim.lr = 1e-2
    config.eval.every = 100
    config.checkpoint.every = 100
    return config


def _scores(workdir):
    return np.array([r["score"] for r in read_metrics(workdir) if r["stage"] == "rl"])


@pytest.mark.slow
def test_grpo_reward_rises_and_shuffled_rewards_do_not(tmp_path, monkeypatch):
    mesh = parallel.make_mesh(devices=jax.devices()[:1])
    run(_digit_task_config(), str(tmp_path / "real"), mesh)
    real = _scores(tmp_path / "real")
    assert real[:3].mean() < 0.2 and real[-5:].mean() > 0.6, real

    # Negative control: the same run with each step's rewards permuted across the batch.
    from rl_jax import rewards as rewards_module
    from rl_jax.trainers import rl as rl_module

    original = rewards_module.combine_rewards
    rng = np.random.default_rng(0)

    def shuffled(weights, completions, examples):
        total, per_fn = original(weights, completions, examples)
        if "format" in weights:
            total = rng.permutation(total)
        return total, per_fn

    monkeypatch.setattr(rl_module.rewards, "combine_rewards", shuffled)
    run(_digit_task_config(), str(tmp_path / "shuffled"), mesh)
    records = read_metrics(tmp_path / "shuffled")
    control = [r["reward/format"] for r in records if r["stage"] == "rl"]
    assert np.mean(control[-5:]) < 0.3, control


def test_missing_eos_marks_responses_that_hit_the_budget():
    """Hand-made rows (EOS = 2, 9; pad 0; mask covers the EOS): ended by either EOS, cut at the
    budget, cut with an EOS earlier in the row (not its end), and empty."""
    from rl_jax.trainers.rl import missing_eos

    tokens = np.array([[5, 2, 0, 0], [5, 6, 7, 8], [5, 9, 0, 0], [2, 5, 6, 7], [0, 0, 0, 0]])
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]])
    np.testing.assert_array_equal(missing_eos(tokens, mask, (2, 9)),
                                  [False, True, False, True, True])


@pytest.mark.slow
def test_evaluation_does_not_change_what_rl_samples_from(tmp_path):
    """The shared sampler holds no weights: evaluating other params between two rollouts of the
    training params leaves the second rollout equal to the first (on the run's 8-device mesh)."""
    from flax import nnx

    from rl_jax import models
    from rl_jax.settings import RunSettings
    from rl_jax.trainers import evaluation, rl, setup

    config = tiny_config()
    settings = RunSettings.from_config(config)
    rollout = settings.rl.rollout
    mesh = parallel.make_mesh()
    ctx = setup.build_context(settings, str(tmp_path), mesh)
    assert ctx.sampler.mesh is mesh
    ctx.check_mesh(mesh)
    with pytest.raises(ValueError, match=r"build_context\(settings, workdir, mesh\)"):
        ctx.check_mesh(None)
    params = nnx.state(ctx.policy)
    other = nnx.state(models.CausalLM(ctx.policy.config, rngs=nnx.Rngs(config.seed + 1)))
    key = jax.random.key(3)
    before, _ = rl.sample_round(ctx, rollout, params, 0, key)
    evaluation.evaluate(ctx, other, jax.random.key(4), settings.evaluation, k=config.eval.k)
    after, _ = rl.sample_round(ctx, rollout, params, 0, key)
    np.testing.assert_array_equal(after.response_tokens, before.response_tokens)
    np.testing.assert_array_equal(after.sampler_logprobs, before.sampler_logprobs)
    # Negative control: the evaluated weights sample something else from the same key.
    theirs, _ = rl.sample_round(ctx, rollout, other, 0, key)
    assert not np.allclose(theirs.sampler_logprobs, before.sampler_logprobs)
