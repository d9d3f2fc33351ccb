"""The shared stage loop: every stage resumes exactly and a finished stage only restores; the
whole config is checked before any work starts."""

import time
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from configs import hh_rm
from rl_jax import parallel
from rl_jax.config import ConfigError, check_config, default_config, flat_fields
from rl_jax.settings import RunSettings
from rl_jax.trainers.loop import itstime
from rl_jax.trainers.metrics import read_metrics
from rl_jax.trainers.reward_model import run_rm
from rl_jax.trainers.rl import run_rl
from rl_jax.trainers.run import run
from rl_jax.trainers.setup import build_context
from rl_jax.trainers.sft import run_sft
from tests.test_trainers import flat
from tests.testing_utils import tiny_config

ROOT = Path(__file__).resolve().parents[1]


def test_itstime():
    assert [n for n in range(1, 11) if itstime(n, 4, 10)] == [4, 8, 10]
    assert [n for n in range(1, 6) if itstime(n, 0, 5)] == [5]


def _mesh():
    return parallel.make_mesh(devices=jax.devices()[:1])


def _sft(config, workdir):
    mesh, settings = _mesh(), RunSettings.from_config(config)
    ctx = build_context(settings, str(workdir), mesh)
    return run_sft(ctx, mesh, nnx.state(ctx.policy), settings.sft)


def _rl(config, workdir):
    mesh, settings = _mesh(), RunSettings.from_config(config)
    ctx = build_context(settings, str(workdir), mesh)
    return run_rl(ctx, mesh, nnx.state(ctx.policy), settings.rl)


def _rm(config, workdir):
    mesh, settings = _mesh(), RunSettings.from_config(config)
    ctx = build_context(settings, str(workdir), mesh)
    reward, _ = run_rm(ctx, mesh, nnx.state(ctx.policy), settings.rm)
    return reward


def _stage_lines(workdir, stage):
    return [r["step"] for r in read_metrics(workdir) if r["stage"] == stage]


def _rm_config(steps):
    config = hh_rm.get_config()
    config.model.vocab_size = 512
    config.model.num_layers = 1
    config.model.hidden_size = 32
    config.model.intermediate_size = 64
    config.rm.batch_size = 8
    config.rm.eval_size = 16
    config.rm.steps = steps
    config.rm.optim.lr = 1e-2
    config.rm.optim.warmup_steps = 0
    config.eval.every = 2
    config.checkpoint.every = 2
    config.log.progress_bar = False
    return config


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["sft", "rm", "rl"])
def test_stage_restarted_at_k_equals_a_straight_2k_run(tmp_path, stage):
    """k steps, a new process-like restart (everything rebuilt from the config), k more: the same
    parameters as 2k steps straight; then a restart of the finished stage only restores it."""
    k = 2
    if stage == "sft":
        make = lambda steps: tiny_config(**{  # noqa: E731
            "sft.steps": steps, "sft.stop_accuracy": 1.01, "model.logits_chunk": 0,
            "checkpoint.every": 2})
        train = lambda c, w: _sft(c, w).state.params  # noqa: E731
    elif stage == "rl":
        make = lambda steps: tiny_config(**{  # noqa: E731
            "rl.steps": steps, "kl.coef": 0.04, "model.logits_chunk": 0, "checkpoint.every": 2})
        train = lambda c, w: _rl(c, w).state.params  # noqa: E731
    else:
        make, train = _rm_config, lambda c, w: _rm(c, w).params
    _check_resume(tmp_path, make, train, stage, k)


def _check_resume(tmp_path, make, train, stage, k):
    """``train(make(2k))`` straight equals ``train(make(k))`` then ``train(make(2k))`` in one
    workdir, and a third call of the finished stage only restores it."""
    straight = train(make(2 * k), tmp_path / "straight")
    first = train(make(k), tmp_path / "resumed")
    resumed = train(make(2 * k), tmp_path / "resumed")
    assert np.abs(flat(first) - flat(resumed)).max() > 1e-4  # the last k steps changed it
    np.testing.assert_allclose(flat(resumed), flat(straight), atol=1e-6)
    assert _stage_lines(tmp_path / "resumed", stage) == list(range(1, 2 * k + 1))
    again = train(make(2 * k), tmp_path / "resumed")  # finished: only restored
    np.testing.assert_array_equal(flat(again), flat(resumed))
    assert _stage_lines(tmp_path / "resumed", stage) == list(range(1, 2 * k + 1))


def _length_steps(completion, example):
    """A stand-in step checker with varied rewards on any text: a step every two characters,
    rewarded when it ends on a digit."""
    ends = list(range(1, len(completion), 2)) or ([0] if completion else [])
    return [(end, float(completion[end].isdigit())) for end in ends]


PARADIGM = {
    "rft": {"rl.estimator": "rft", "loss.policy_loss": "likelihood"},
    "online_rft": {"rl.estimator": "online_rft", "loss.policy_loss": "likelihood"},
    "grpo_process": {"rl.estimator": "grpo_process", "rl.step_rewards": "gold",
                     "task.name": "addition_scratchpad", "rewards.correctness": "final_answer",
                     "rewards.weights": {"final_answer": 1.0}},
}


@pytest.mark.slow
@pytest.mark.parametrize("estimator", sorted(PARADIGM))
def test_paradigm_run_restarted_at_k_equals_a_straight_2k_run(tmp_path, monkeypatch, estimator):
    """RFT, Online RFT and GRPO with process rewards resume like any RL run. The untrained tiny
    policy is never right, so the rewards are stand-ins with signal: a response is correct when
    its text has even length, and steps come from ``_length_steps``."""
    from rl_jax import data, rewards

    def even_length(weights, texts, examples):
        return np.array([len(t) % 2 == 0 for t in texts], np.float32), {}

    monkeypatch.setattr(rewards, "combine_rewards", even_length)
    monkeypatch.setitem(data.STEP_CHECKERS, "addition_scratchpad", _length_steps)
    make = lambda steps: tiny_config(**{  # noqa: E731
        "rl.steps": steps, "model.logits_chunk": 0, "checkpoint.every": 2,
        "rl.optim.lr": 1e-2} | PARADIGM[estimator])
    _check_resume(tmp_path, make, lambda c, w: _rl(c, w).state.params, "rl", 2)


@pytest.mark.slow
@pytest.mark.parametrize("lora_rank", [0, 4], ids=["full", "lora"])
def test_shared_prefix_run_restarted_at_k_equals_a_straight_2k_run(tmp_path, monkeypatch,
                                                                   lora_rank):
    """GRPO with each prompt run once per group (``rl.shared_prefix``), one group a device on the
    8 test devices, with full weights and with LoRA adapters, resumes like any RL run (a response
    of even length is correct, so the untrained policy's groups have signal)."""
    from rl_jax import rewards

    def even_length(weights, texts, examples):
        return np.array([len(t) % 2 == 0 for t in texts], np.float32), {}

    monkeypatch.setattr(rewards, "combine_rewards", even_length)
    make = lambda steps: tiny_config(**{  # noqa: E731
        "rl.steps": steps, "model.logits_chunk": 0, "checkpoint.every": 2,
        "rl.shared_prefix": True, "rl.num_prompts": 8, "rl.num_minibatches": 1,
        "model.lora.rank": lora_rank})
    _check_resume(tmp_path, make, lambda c, w: _rl(c, w).state.params, "rl", 2)


@pytest.mark.slow
def test_sft_stopped_by_its_rule_only_restores_even_with_more_steps(tmp_path):
    config = tiny_config(**{"sft.steps": 6, "sft.stop_accuracy": 0.0, "model.logits_chunk": 0,
                            "checkpoint.every": 2})
    config.eval.every = 2
    result = _sft(config, tmp_path)
    assert int(result.state.step) == 2 and result.trained  # stopped at the first evaluation
    config.sft.steps = 10
    again = _sft(config, tmp_path)
    assert not again.trained and int(again.state.step) == 2
    assert again.last_eval == result.last_eval
    assert _stage_lines(tmp_path, "sft") == [1, 2]


def _set(config, field, value):
    *path, name = field.split(".")
    node = config
    for part in path:
        node = node[part]
    node[name] = value


# (field, value, a piece of the message): misspelt enumerations, out-of-range numbers,
# inconsistent combinations. Each fails in check_config, before any model is built.
BAD_CONFIGS = [
    ("loss.agg", "token_mean", "config.loss.agg = 'token_mean': expected one of 'token-mean'"),
    ("rl.estimator", "ppo", "config.rl.estimator = 'ppo': expected one of 'gae'"),
    ("kl.estimator", "k4", "config.kl.estimator = 'k4': expected one of 'k1', 'k2', 'k3'"),
    ("loss.ratio_level", "seq", "config.loss.ratio_level = 'seq'"),
    ("stages", ("rl", "sft"), "config.stages = ('rl', 'sft'): expected a non-empty subset"),
    ("stages", ("sft", "ppo"), "config.stages = ('sft', 'ppo')"),
    ("task.name", "additon", "config.task.name = 'additon': expected one of"),
    ("model.dtype", "float23", "config.model.dtype = 'float23'"),
    ("model.model_type", "gpt2", "config.model.model_type = 'gpt2'"),
    ("rl.optim.decay", "linear", "config.rl.optim.decay = 'linear': expected one of 'constant'"),
    ("rewards.correctness", "exact", "config.rewards.correctness = 'exact'"),
    ("rl.group_size", 1, "config.rl.group_size = 1: expected >= 2 for the group estimator 'grpo'"),
    ("rl.num_prompts", 3, "rl.num_prompts * rl.group_size = 12 to be a multiple of the 8 devices"),
    ("rl.num_minibatches", 5, "config.rl.num_minibatches = 5: expected a divisor of the rollout"),
    ("rl.num_minibatches", 4, "rl.num_minibatches = 4: expected the rows of a minibatch, "
     "rl.num_prompts * rl.group_size / rl.num_minibatches, = 4 to be a multiple of the 8 devices"),
    ("rollout.top_p", 0.0, "config.rollout.top_p = 0.0: expected a number in (0, 1]"),
    ("rollout.top_p", 1.5, "config.rollout.top_p = 1.5"),
    ("rollout.temperature", 0.0, "config.rollout.temperature = 0.0: expected a number > 0"),
    ("loss.clip_low", -0.1, "config.loss.clip_low = -0.1"),
    ("loss.clip_high", -0.2, "config.loss.clip_high = -0.2: expected a number >= 0"),
    ("loss.dual_clip", 0.5, "config.loss.dual_clip = 0.5: expected 0 (off) or a number > 1"),
    ("rl.steps", -5, "config.rl.steps = -5: expected a number >= 1"),
    ("rl.num_prompts", 0, "config.rl.num_prompts = 0: expected a number >= 1"),
    ("eval.num_examples", 0, "config.eval.num_examples = 0: expected a number >= 1"),
    ("sft.batch_size", 12, "sft.batch_size = 12: expected the batch (rows) = 12 to be a multiple"),
    ("checkpoint.every", 0, "config.checkpoint.every = 0: expected a number >= 1"),
    ("rl.optim.grad_accum_steps", 0, "config.rl.optim.grad_accum_steps = 0"),
    ("kl.in_reward", True, "config.kl.in_reward = True: expected False with rl.estimator='grpo'"),
    ("rewards.model_weight", 1.0, "expected to include 'rm' for rewards.model_weight"),
    ("rl.overlong_buffer", 8, "config.rl.overlong_buffer = 8: expected < rollout.max_new_tokens"),
    ("rl.critic_init", "value", "config.rl.critic_init = 'value'"),
    ("model.attention_impl", "flash", "config.model.attention_impl = 'flash': expected one of"),
    ("model.logits_chunk", -1, "config.model.logits_chunk = -1: expected a number >= 0"),
    ("model.remat", "some", "config.model.remat = 'some': expected one of 'none', 'full'"),
    ("memory.device_gb", -1.0, "config.memory.device_gb = -1.0: expected a number >= 0"),
    ("loss.policy_loss", "ppo2", "config.loss.policy_loss = 'ppo2': expected one of 'ppo'"),
    ("loss.is_correction", "tis", "config.loss.is_correction = 'tis': expected one of 'none'"),
    ("rl.step_rewards", "gold", "config.rl.step_rewards = 'gold': expected 'none' with "
     "task.name='addition': the task declares no steps"),
    ("rl.estimator", "rft", "config.loss.policy_loss = 'ppo': expected 'likelihood' with "
     "rl.estimator='rft'"),
]


@pytest.mark.parametrize(("field", "value", "message"), BAD_CONFIGS)
def test_bad_config_fails_before_any_work(tmp_path, monkeypatch, field, value, message):
    from rl_jax.trainers import run as run_module

    config = tiny_config()
    if field == "kl.in_reward":
        config.kl.coef = 0.05
    _set(config, field, value)

    def no_work(*args, **kwargs):
        raise AssertionError("a model or tokenizer was built for a bad config")

    monkeypatch.setattr(run_module, "build_context", no_work)
    start = time.perf_counter()
    with pytest.raises(ConfigError) as error:
        run(config, str(tmp_path / "run"), parallel.make_mesh())
    assert time.perf_counter() - start < 5
    assert message in str(error.value), str(error.value)
    assert not (tmp_path / "run").exists()  # nothing written


def test_rm_fields_are_checked_when_the_rm_stage_runs():
    config = _rm_config(2)
    config.rm.loss = "bt"
    config.rm.data = "csv"
    config.rm.comparisons = "pairs"
    with pytest.raises(ConfigError) as error:
        check_config(config)
    assert "config.rm.loss = 'bt'" in str(error.value)
    assert "config.rm.data = 'csv'" in str(error.value)
    assert "config.rm.comparisons = 'pairs': expected one of 'grouped'" in str(error.value)
    config = _rm_config(2)
    config.loss.agg = "token_mean"  # an RL field: not read by an rm-only run
    check_config(config)


def test_every_config_file_passes_the_check(tmp_path):
    import importlib

    for name in ("arithmetic_grpo", "arithmetic_ppo", "countdown_grpo", "gsm8k_grpo",
                 "preference_rm_ppo", "hh_rm"):
        config = importlib.import_module(f"configs.{name}").get_config()
        if name == "gsm8k_grpo":  # needs a model (its chat template): any existing directory
            with pytest.raises(ConfigError, match=r"task.chat_template = True: expected False "
                               "without model.path"):
                check_config(config, num_devices=8)
            config.model.path = str(tmp_path)
        check_config(config, num_devices=8)


def test_flat_fields_names_every_leaf_of_a_config_and_of_its_json():
    import json

    import ml_collections

    config = ml_collections.ConfigDict(
        {"seed": 1, "rl": {"optim": {"lr": 3e-4}, "stages": ("sft", "rl")}, "empty": {}})
    fields = flat_fields(config)
    assert len(fields.pop("empty")) == 0  # an empty section is a leaf
    assert fields == {"seed": 1, "rl.optim.lr": 3e-4, "rl.stages": ("sft", "rl")}
    tree = json.loads(config.to_json_best_effort())
    assert flat_fields(tree) == {"seed": 1, "rl.optim.lr": 3e-4, "rl.stages": ["sft", "rl"],
                                 "empty": {}}
    fields = flat_fields(default_config())
    assert fields["rl.optim.lr"] == default_config().rl.optim.lr
    assert not any(isinstance(v, ml_collections.ConfigDict) and len(v) for v in fields.values())


# Every config file with each of its arguments, and every variant of every ablation file.
CONFIG_ARGS = {"gsm8k_grpo": (None, "chat", "plain"), "preference_rm_ppo": (None, "grpo", "rloo"),
               "arithmetic_rft": (None, "rft", "online_rft", "grpo", "grpo_process",
                                  "grpo_prm", "grpo_iterative"),
               "smollm2_arithmetic_grpo": (None, "shuffled", "ppo")}


def test_every_config_and_ablation_variant_passes_the_check(tmp_path):
    import importlib

    from rl_jax import ablation as ab

    names = sorted(p.stem for p in (ROOT / "configs").glob("*.py") if p.stem != "__init__")
    assert len(names) >= 7 and set(CONFIG_ARGS) <= set(names)
    for name in names:
        for arg in CONFIG_ARGS.get(name, (None,)):
            config = importlib.import_module(f"configs.{name}").get_config(arg)
            needs_model = config.task.chat_template and not config.model.path
            if needs_model or (config.model.path and not Path(config.model.path).exists()):
                config.model.path = str(tmp_path)  # a model directory (or one not fetched here)
            check_config(config, num_devices=8)
    files = sorted(p for p in (ROOT / "configs" / "ablations").glob("*.py") if p.stem != "__init__")
    assert len(files) >= 7
    for path in files:
        ablation = ab.load_ablation(str(path))
        for name, overrides in ablation.variants.items():
            try:
                check_config(ab.apply_overrides(ablation.base, overrides), num_devices=8)
            except ConfigError as error:
                raise AssertionError(f"{path.name} variant {name}: {error}") from error


# Values moved from their default where the rest of the config leaves them unread: (overrides on
# tiny_config, GRPO without a KL term, 4 minibatches; a piece of the message).
IGNORED = [
    ({"kl.target": 0.5}, "config.kl.target = 0.5: expected 0.0 (the default) without "
     "kl.in_reward=True and kl.coef > 0"),
    ({"rl.estimator": "gae", "kl.coef": 0.05, "kl.target": 0.5}, "config.kl.target = 0.5"),
    ({"kl.in_reward": True}, "config.kl.in_reward = True: expected False (the default) with "
     "kl.coef = 0"),
    ({"kl.horizon": 500}, "config.kl.horizon = 500: expected 10000 (the default) without an "
     "adaptive"),
    ({"kl.estimator": "k1"}, "config.kl.estimator = 'k1': expected 'k3' (the default) without a "
     "KL loss term"),
    ({"rl.estimator": "gae", "kl.coef": 0.05, "kl.in_reward": True, "kl.estimator": "k2"},
     "config.kl.estimator = 'k2'"),
    ({"loss.policy_loss": "gmpo", "loss.agg": "seq-mean-token-mean"},
     "config.loss.agg = 'seq-mean-token-mean': expected 'token-mean' (the default) with "
     "loss.policy_loss='gmpo'"),
    ({"loss.count_empty_rows": True}, "config.loss.count_empty_rows = True: expected False (the "
     "default) with loss.agg='token-mean'"),
    ({"loss.policy_loss": "gmpo", "loss.clip_high": 0.28}, "config.loss.clip_high = 0.28: "
     "expected 0.2 (the default) with loss.policy_loss='gmpo'"),
    ({"loss.policy_loss": "kl_cov", "loss.clip_low": 0.1}, "config.loss.clip_low = 0.1"),
    ({"loss.gmpo_clip": 0.3}, "config.loss.gmpo_clip = 0.3: expected 0.4 (the default) without "
     "loss.policy_loss='gmpo'"),
    ({"loss.policy_loss": "cispo", "loss.cov_ratio": 1e-3}, "config.loss.cov_ratio = 0.001"),
    ({"loss.policy_loss": "kl_cov", "loss.cov_upper": 6.0}, "config.loss.cov_upper = 6.0"),
    ({"loss.cov_lower": 0.5}, "config.loss.cov_lower = 0.5"),
    ({"loss.policy_loss": "clip_cov", "loss.kl_cov_coef": 2.0}, "config.loss.kl_cov_coef = 2.0"),
    ({"loss.is_cap": 3.0}, "config.loss.is_cap = 3.0: expected 2.0 (the default) without "
     "loss.is_correction='token_tis' or 'seq_tis'"),
    ({"loss.is_correction": "token_tis", "loss.is_low": 0.3}, "config.loss.is_low = 0.3"),
    ({"loss.is_correction": "seq_tis", "loss.is_high": 3.0}, "config.loss.is_high = 3.0"),
    ({"loss.vf_coef": 0.5}, "config.loss.vf_coef = 0.5: expected 0.1 (the default) with "
     "rl.estimator='grpo' (no critic"),
    ({"rl.estimator": "rloo", "loss.value_clip": 0.0}, "config.loss.value_clip = 0.0"),
    ({"rl.lam": 0.9}, "config.rl.lam = 0.9"),
    ({"rl.critic_init": "reward_model"}, "config.rl.critic_init = 'reward_model': expected "
     "'policy' (the default)"),
    ({"rl.estimator": "reinforce_pp_baseline", "rl.gamma": 0.9}, "config.rl.gamma = 0.9"),
    ({"rl.estimator": "reinforce_pp", "rl.whiten_advantages": True},
     "config.rl.whiten_advantages = True: expected False (the default) with "
     "rl.estimator='reinforce_pp' (its advantages are always whitened)"),
    ({"rl.estimator": "reinforce_pp_baseline", "rl.whiten_advantages": True},
     "config.rl.whiten_advantages = True: expected False (the default) with "
     "rl.estimator='reinforce_pp_baseline' (its advantages are always whitened)"),
    ({"rl.max_extra_rounds": 4}, "config.rl.max_extra_rounds = 4: expected 2 (the default) "
     "without rl.dynamic_sampling=True"),
    ({"rl.overlong_penalty": 0.5}, "config.rl.overlong_penalty = 0.5"),
    ({"rl.missing_eos_score": -2.0}, "config.rl.missing_eos_score = -2.0"),
    ({"rl.num_minibatches": 1, "rl.max_approx_kl": 0.5}, "config.rl.max_approx_kl = 0.5: "
     "expected 1.0 (the default) or 0 with one update a rollout"),
    ({"model.lora.alpha": 32.0}, "config.model.lora.alpha = 32.0: expected 16.0 (the default) "
     "with model.lora.rank = 0"),
    ({"model.lora.targets": ("q_proj",)}, "config.model.lora.targets = ('q_proj',)"),
    ({"model.path": "TMP"}, "config.model.hidden_size = 32: expected 64 (the default) with "
     "model.path set"),
]
# The same fields where they are read: accepted.
READ = [
    {"rl.estimator": "gae", "kl.coef": 0.05, "kl.in_reward": True, "kl.target": 0.5,
     "kl.horizon": 500, "loss.vf_coef": 0.5, "loss.value_clip": 0.0, "rl.lam": 0.9,
     "rl.gamma": 0.99},
    {"kl.coef": 0.05, "kl.estimator": "k1"},
    {"loss.policy_loss": "gmpo", "loss.gmpo_clip": 0.3, "loss.count_empty_rows": True},
    {"loss.policy_loss": "gmpo", "kl.coef": 0.05, "loss.agg": "seq-mean-token-mean"},
    {"loss.agg": "seq-mean-token-mean", "loss.count_empty_rows": True},
    {"loss.policy_loss": "clip_cov", "loss.cov_ratio": 1e-3, "loss.cov_lower": 0.5,
     "loss.cov_upper": 6.0, "loss.clip_high": 0.28},
    {"loss.policy_loss": "kl_cov", "loss.cov_ratio": 1e-3, "loss.kl_cov_coef": 2.0},
    {"loss.is_correction": "token_tis", "loss.is_cap": 3.0},
    {"loss.is_correction": "seq_mis_geo", "loss.is_low": 0.3, "loss.is_high": 3.0},
    {"rl.estimator": "reinforce_pp", "rl.gamma": 0.9},
    {"rl.dynamic_sampling": True, "rl.max_extra_rounds": 4},
    {"rl.overlong_buffer": 2, "rl.overlong_penalty": 0.5},
    {"rl.eos_trick": True, "rl.missing_eos_score": -2.0},
    {"rl.num_minibatches": 1, "rl.max_approx_kl": 0.0},
    {"model.lora.rank": 4, "model.lora.alpha": 32.0, "model.lora.targets": ("q_proj",)},
]


def _overridden(overrides, tmp_path):
    config = tiny_config()
    for field, value in overrides.items():
        _set(config, field, str(tmp_path) if value == "TMP" else value)
    return config


@pytest.mark.parametrize(("overrides", "message"), IGNORED)
def test_a_value_that_would_be_ignored_is_refused(tmp_path, overrides, message):
    with pytest.raises(ConfigError) as error:
        check_config(_overridden(overrides, tmp_path))
    assert message in str(error.value), str(error.value)


@pytest.mark.parametrize("overrides", READ)
def test_the_same_values_where_they_are_read_pass(tmp_path, overrides):
    check_config(_overridden(overrides, tmp_path))


def test_rm_fields_of_the_other_data_source_are_refused(tmp_path):
    config = _rm_config(2)  # hh_rlhf preferences from a file
    config.rm.num_responses, config.rm.label_noise = 2, 0.5
    with pytest.raises(ConfigError) as error:
        check_config(config)
    assert "config.rm.num_responses = 2: expected 4 (the default) with rm.data='hh_rlhf'" in str(
        error.value) and "config.rm.label_noise = 0.5" in str(error.value)
    config = _rm_config(2)
    config.rm.data, config.rm.path = "synthetic", str(tmp_path / "prefs.jsonl")
    with pytest.raises(ConfigError, match=r"config.rm.path = '.*prefs.jsonl': expected '' \(the "
                       r"default\) with rm.data='synthetic'"):
        check_config(config)
