"""Process supervision with a learned process reward model (DeepSeekMath §4.1.3) and iterative RL
(§4.2): the ``prm`` stage, ``rl.step_rewards="model"``, ``rl.reward_refresh_every`` and the config
rules that guard them. (The loss itself is tested against NumPy in ``test_paradigm.py``.)"""

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import rl_jax
from rl_jax import data, models, parallel
from rl_jax.algorithm import build_rl_step
from rl_jax.config import ConfigError, check_config
from rl_jax.data.example import Example
from rl_jax.settings import RunSettings
from rl_jax.trainers import process_reward as prm
from rl_jax.trainers import reward_rounds
from rl_jax.trainers import rl as rl_trainer
from rl_jax.trainers.metrics import read_metrics
from rl_jax.trainers.setup import build_context
from tests.test_trainers import flat
from tests.testing_utils import tiny_config

ROOT = Path(__file__).resolve().parents[1]
SCRATCHPAD = {"task.name": "addition_scratchpad", "rewards.weights": {"final_answer": 1.0},
              "rewards.correctness": "final_answer", "rl.estimator": "grpo_process"}
PRM = SCRATCHPAD | {"rl.step_rewards": "model", "stages": ("sft", "prm", "rl")}


# --- Pieces ---------------------------------------------------------------------------------------


def test_segmenter_gives_the_gold_checkers_steps():
    example = Example(prompt="58+67=", target="", answer="521", info={"notes": ("15", "12")})
    for text in ("15,13>531", "521", "15,12>521", ">5", ",>", "1,2,3,4>9", ""):
        assert data.step_ends(text) == [end for end, _ in data.gold_steps(text, example)], text
    assert data.step_ends("15,13>531") == [2, 5, 8]
    assert set(data.STEP_SEGMENTERS) == set(data.STEP_CHECKERS)


def test_step_scores_by_hand():
    logits = np.array([[0.0, 2.0, -1.0], [3.0, 0.5, 0.0]], np.float32)
    ends = np.array([[1, 2], [0, -1]], np.int32)
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    np.testing.assert_allclose(prm.step_scores(logits, ends), [[sig(2.0), sig(-1.0)],
                                                                [sig(3.0), 0.0]], rtol=1e-6)


def test_step_batch_pads_tokens_and_steps():
    items = [prm.StepItem((1, 5, 6, 7), (2, 3), (1.0, 0.0)), prm.StepItem((1, 5), (1,), (1.0,))]
    batch = prm.step_batch(items, pad_id=0, max_len=32, num_steps=3)
    assert batch["tokens"].shape == (2, 16)
    np.testing.assert_array_equal(batch["tokens"][1, :3], [1, 5, 0])
    np.testing.assert_array_equal(batch["mask"].sum(1), [4, 2])
    np.testing.assert_array_equal(batch["step_ends"], [[2, 3, -1], [1, -1, -1]])
    np.testing.assert_array_equal(batch["step_labels"], [[1, 0, 0], [1, 0, 0]])


def test_prm_loss_of_a_model_is_the_cross_entropy_at_the_step_ends():
    config = models.tiny_config(vocab_size=32, hidden_size=16, intermediate_size=32, num_layers=1)
    graphdef, params = nnx.split(models.ProcessRewardModel(config, rngs=nnx.Rngs(0)))
    items = [prm.StepItem((1, 5, 6, 7, 9), (2, 4), (1.0, 0.0)),
             prm.StepItem((1, 8, 3), (2,), (0.0,))]
    batch = prm.step_batch(items, pad_id=0, max_len=32, num_steps=3)
    loss, metrics = prm.make_prm_loss(graphdef)({"reward": params}, batch)
    logits = np.asarray(models.apply_model(graphdef, params, batch["tokens"],
                                           models.positions_from_mask(batch["mask"]),
                                           batch["mask"]))
    z = np.array([logits[0, 2], logits[0, 4], logits[1, 2]])
    y = np.array([1.0, 0.0, 0.0])
    expected = np.mean(np.logaddexp(0, -z) * y + np.logaddexp(0, z) * (1 - y))
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    np.testing.assert_allclose(metrics["step_accuracy"], np.mean((z > 0) == (y > 0.5)))


def test_replay_items_are_a_seeded_share_of_the_history():
    history = [prm.StepItem((i,), (0,), (1.0,)) for i in range(50)]
    replay_items = reward_rounds.replay_items
    chosen = replay_items(history, num_new=90, replay=0.1, seed=0, round_=1)
    assert len(chosen) == 10  # 10 / (90 + 10) = the share 0.1
    assert chosen == replay_items(history, 90, 0.1, seed=0, round_=1)
    assert chosen != replay_items(history, 90, 0.1, seed=0, round_=2)
    assert [item.tokens for item in chosen] == sorted(item.tokens for item in chosen)
    assert len(replay_items(history, 900, 0.1, 0, 1)) == 50  # at most the whole history
    assert replay_items(history, 90, 0.0, 0, 1) == []


def test_a_rounds_training_set_is_its_saved_new_items_and_the_replayed_ones(tmp_path):
    def make(values):
        return lambda: [[v] for v in values]

    same = dict(encode=list, decode=list, replay=0.5, seed=0)
    train, new = reward_rounds.round_training_set(str(tmp_path), "prm", 0, make([1, 2, 3]), **same)
    assert (train, new) == ([[1], [2], [3]], 3)
    assert os.path.exists(tmp_path / "prm_data" / "prm.json")
    # Saved: a second call reads the file and makes nothing.
    assert reward_rounds.round_training_set(str(tmp_path), "prm", 0, make([]), **same)[0] == train
    train, new = reward_rounds.round_training_set(str(tmp_path), "prm", 1, make([7, 8]), **same)
    assert new == 2 and train[:2] == [[7], [8]] and len(train) == 4  # 2 / 4 = the share 0.5
    assert all(item in [[1], [2], [3]] for item in train[2:])
    assert os.path.exists(tmp_path / "prm_data" / "prm_1.json")


def test_settings_carry_the_prm_and_refresh_fields():
    config = tiny_config(**PRM | {"prm.num_prompts": 12, "prm.batch_size": 6,
                                  "rl.reward_refresh_every": 2, "rl.reward_replay": 0.3})
    s = RunSettings.from_config(config)
    assert (s.prm.num_prompts, s.prm.batch_size, s.prm.steps) == (12, 6, config.prm.steps)
    assert s.prm.checker is data.gold_steps and s.prm.max_steps == config.rollout.max_new_tokens
    assert s.prm.sampling is s.sampling and s.prm.loop is s.loop
    assert (s.rl.reward_refresh_every, s.rl.reward_replay) == (2, 0.3)
    rollout = s.rl.rollout
    assert rollout.step_rewards == "model" and rollout.step_segmenter is data.step_ends
    assert rollout.step_checker is None  # the gold labels are not read with a learned model
    gold = RunSettings.from_config(tiny_config(**SCRATCHPAD | {"rl.step_rewards": "gold"}))
    assert gold.rl.rollout.step_checker is data.gold_steps
    assert gold.rl.rollout.step_segmenter is None


# --- Config rules ---------------------------------------------------------------------------------


def _errors(**overrides):
    with pytest.raises(ConfigError) as error:
        check_config(tiny_config(**overrides))
    return str(error.value)


OUTCOME = {"stages": ("sft", "rm", "rl"), "rewards.model_weight": 1.0}


def test_the_prm_configs_pass():
    check_config(tiny_config(**PRM))
    check_config(tiny_config(**PRM | {"rl.reward_refresh_every": 2, "rl.reward_replay": 0.2}))
    check_config(tiny_config(**{"task.name": "addition_scratchpad", "stages": ("prm",)}))
    check_config(tiny_config(**OUTCOME | {"rl.reward_refresh_every": 2}))


@pytest.mark.parametrize(("overrides", "message"), [
    (PRM | {"task.name": "addition"}, "config.rl.step_rewards = 'model': expected 'none' with "
     "task.name='addition': the task declares no steps"),
    ({"task.name": "addition", "stages": ("prm",)}, "expected no 'prm' with task.name="
     "'addition': the task declares no steps to label"),
    (PRM | {"stages": ("sft", "rl")}, "config.stages = ('sft', 'rl'): expected to include 'prm' "
     "for rl.step_rewards='model'"),
    (PRM | {"rl.step_rewards": "gold"}, "config.stages = ('sft', 'prm', 'rl'): expected no 'prm' "
     "with rl.step_rewards='gold'"),
    (PRM | {"rl.estimator": "grpo"}, "config.rl.step_rewards = 'model': expected 'none' (the "
     "default) with rl.estimator='grpo'"),
    (SCRATCHPAD | {"rl.step_rewards": "gold", "rl.reward_refresh_every": 2},
     "config.rl.reward_refresh_every = 2: expected 0 without a learned reward to retrain"),
    ({"rl.reward_refresh_every": 2}, "config.rl.reward_refresh_every = 2: expected 0 without"),
    (OUTCOME | {"rl.reward_refresh_every": 2, "rm.data": "pairs"},
     "config.rl.reward_refresh_every = 2: expected 0 with rm.data='pairs' (a refresh labels"),
    (PRM | {"rl.reward_refresh_every": 4}, "config.rl.reward_refresh_every = 4: expected < "
     "rl.steps = 4"),
    (PRM | {"rl.reward_refresh_every": 2, "rl.max_staleness": 1, "rl.stale_policy": "wait"},
     "config.rl.reward_refresh_every = 2: expected 0 with rl.max_staleness = 1"),
    (PRM | {"rl.reward_refresh_every": 2, "rl.reward_replay": 1.0},
     "config.rl.reward_replay = 1.0: expected a number in [0, 1)"),
    (PRM | {"rl.reward_replay": 0.2}, "config.rl.reward_replay = 0.2: expected 0.1 (the default) "
     "with rl.reward_refresh_every = 0"),
    ({"prm.steps": 5}, "config.prm.steps = 5: expected 200 (the default) without the 'prm' stage"),
    (PRM | {"prm.num_responses": 0}, "config.prm.num_responses = 0: expected a number >= 1"),
])
def test_step_reward_and_refresh_errors(overrides, message):
    assert message in _errors(**overrides)


# --- The stage ------------------------------------------------------------------------------------


def _digit_steps(completion, example):
    """A stand-in step checker with varied labels on any text (the untrained tiny policy writes
    no scratchpad): a step every two characters, right when it ends on a digit."""
    ends = list(range(1, len(completion), 2)) or ([0] if completion else [])
    return [(end, float(completion[end].isdigit())) for end in ends]


def _digit_segments(completion):
    return [end for end, _ in _digit_steps(completion, None)]


@pytest.fixture
def stand_in_steps(monkeypatch):
    monkeypatch.setitem(data.STEP_CHECKERS, "addition_scratchpad", _digit_steps)
    monkeypatch.setitem(data.STEP_SEGMENTERS, "addition_scratchpad", _digit_segments)


def _mesh():
    return parallel.make_mesh(devices=jax.devices()[:1])


@pytest.mark.slow
def test_prm_stage_lowers_its_loss_and_a_restart_only_restores(tmp_path, stand_in_steps,
                                                                  monkeypatch):
    config = tiny_config(**{"task.name": "addition_scratchpad", "stages": ("prm",),
                            "prm.num_prompts": 32, "prm.eval_size": 8, "prm.steps": 24,
                            "prm.batch_size": 16, "prm.optim.lr": 1e-2, "eval.every": 12,
                            "checkpoint.every": 12, "model.logits_chunk": 0})
    check_config(config)
    settings, mesh = RunSettings.from_config(config), _mesh()
    ctx = build_context(settings, str(tmp_path), mesh)
    reward, last_eval = prm.run_prm(ctx, mesh, nnx.state(ctx.policy), settings.prm)
    losses = [r["loss"] for r in read_metrics(tmp_path) if r["stage"] == "prm"]
    assert len(losses) == 24
    assert np.mean(losses[-4:]) < 0.8 * np.mean(losses[:4]), losses
    assert last_eval["step_accuracy"] > 0.7, last_eval
    assert os.path.exists(tmp_path / "prm_data" / "prm.json")

    def no_sampling(*args, **kwargs):
        raise AssertionError("a finished prm stage sampled")

    monkeypatch.setattr(prm, "label_steps", no_sampling)
    again, again_eval = prm.run_prm(ctx, mesh, nnx.state(ctx.policy), settings.prm)
    np.testing.assert_array_equal(flat(again.params), flat(reward.params))
    assert again_eval == last_eval


class _FixedLogits:
    """A stand-in process reward model: logit ``t % 3 - 1`` at token ``t`` of each row."""

    def __init__(self):
        self.rows = []

    def raw(self, tokens, mask):
        self.rows.append(np.asarray(tokens))
        return (np.arange(tokens.shape[1])[None, :] % 3 - 1.0).repeat(len(tokens), 0)


def test_model_step_rewards_reach_the_process_advantages(tmp_path, stand_in_steps):
    """With ``rl.step_rewards="model"`` the steps are the task's and their rewards the process
    reward model's sigmoid at each step's last token of ``prompt + response``, and ``prepare``
    turns them into the process advantages; the gold checker's rewards (the stand-in's, varied)
    give other advantages."""
    config = tiny_config(**PRM | {"rollout.max_new_tokens": 8})
    check_config(config)
    settings, mesh = RunSettings.from_config(config), _mesh()
    ctx = build_context(settings, str(tmp_path), mesh)
    params, key = nnx.state(ctx.policy), jax.random.key(3)
    model = _FixedLogits()
    learned, _ = rl_trainer.sample_round(ctx, settings.rl.rollout, params, 0, key,
                                         process_reward=model)
    gold_settings = RunSettings.from_config(tiny_config(**PRM | {
        "rollout.max_new_tokens": 8, "rl.step_rewards": "gold", "stages": ("sft", "rl")}))
    gold, _ = rl_trainer.sample_round(ctx, gold_settings.rl.rollout, params, 0, key)
    np.testing.assert_array_equal(learned.response_tokens, gold.response_tokens)  # same samples
    np.testing.assert_array_equal(learned.step_ends, gold.step_ends)  # the same steps
    assert (learned.step_ends >= 0).sum() > len(learned.texts)  # several steps a response
    # The model saw prompt + response; each reward is its sigmoid at the step's end token.
    assert model.rows[0].shape[1] == learned.prompt_tokens.shape[1] + learned.step_ends.shape[1]
    at = learned.prompt_tokens.shape[1] + learned.step_ends
    z = at % 3 - 1.0
    expected = np.where(learned.step_ends >= 0, 1 / (1 + np.exp(-z)), 0.0)
    np.testing.assert_allclose(learned.step_rewards, expected, rtol=1e-6)
    assert not np.array_equal(learned.step_rewards, gold.step_rewards)

    algorithm = settings.rl.algorithm
    prepare = build_rl_step(algorithm, None, ctx.graphdef).prepare
    out, _ = prepare({"policy": params}, None, rl_trainer.device_batch(learned), jnp.float32(0))
    mask = learned.response_mask.astype(np.float32)
    want = rl_jax.process_advantages(learned.step_rewards, learned.step_ends, mask,
                                     algorithm.group_size)
    np.testing.assert_allclose(out.advantages, want, rtol=1e-5, atol=1e-6)
    from_gold = rl_jax.process_advantages(gold.step_rewards, gold.step_ends, mask,
                                          algorithm.group_size)
    assert not np.allclose(out.advantages, from_gold, atol=1e-3)


# --- Iterative RL ---------------------------------------------------------------------------------


class _Crash(Exception):
    pass


def _iterative_config(steps=5):
    return tiny_config(**PRM | {
        "stages": ("prm", "rl"), "rl.steps": steps, "rl.reward_refresh_every": 2,
        "rl.reward_replay": 0.25, "rl.num_prompts": 2, "rl.num_minibatches": 2,
        "rl.optim.lr": 1e-2, "prm.num_prompts": 8, "prm.num_responses": 2, "prm.eval_size": 4,
        "prm.steps": 2, "prm.batch_size": 4, "eval.every": 0, "eval.k": 0,
        "eval.num_examples": 4, "model.logits_chunk": 0, "checkpoint.every": 1})


def _crash_at(monkeypatch, module, name, step):
    """``module.run_stage`` raises ``_Crash`` before 0-based ``step`` of stage ``name`` (the
    steps before it are saved: ``checkpoint.every = 1``)."""
    run_stage = module.run_stage

    def crashing(stage, loop, workdir):
        if stage.name == name:
            batch = stage.batch

            def crashing_batch(number, state, host):
                if number == step:
                    raise _Crash(f"{name} {number}")
                return batch(number, state, host)

            stage.batch = crashing_batch
        return run_stage(stage, loop, workdir)

    monkeypatch.setattr(module, "run_stage", crashing)


@pytest.mark.slow
def test_iterative_rl_refreshes_at_its_steps_and_resumes_exactly(tmp_path, stand_in_steps,
                                                                   monkeypatch):
    """rl.steps = 5, a refresh every 2: the PRM is retrained after RL steps 2 and 4 (rounds
    prm_1, prm_2, each read by the RL steps after it). A run crashed inside a refresh, then inside
    an RL segment, and restarted each time ends with the straight run's policy, bit for bit."""
    from rl_jax.trainers import run as run_module

    used = []  # the process reward model each RL step scored with
    step_rewards_of = rl_trainer.step_rewards_of

    def recording(ctx, settings, out, texts, examples, process_reward):
        used.append(process_reward)
        return step_rewards_of(ctx, settings, out, texts, examples, process_reward)

    monkeypatch.setattr(rl_trainer, "step_rewards_of", recording)
    straight = run_module.run(_iterative_config(), str(tmp_path / "straight"), _mesh())
    order = [(r["stage"], r["step"]) for r in read_metrics(tmp_path / "straight")]
    assert order == [("prm", 1), ("prm", 2), ("rl", 1), ("rl", 2), ("prm_1", 1), ("prm_1", 2),
                     ("rl", 3), ("rl", 4), ("prm_2", 1), ("prm_2", 2), ("rl", 5)]
    assert len(used) == 5 and used[0] is used[1] and used[2] is used[3]
    assert len({id(model) for model in used}) == 3
    assert {"prm_eval", "prm_1_eval", "prm_2_eval"} <= set(straight)

    workdir = str(tmp_path / "resumed")
    with monkeypatch.context() as patch:  # killed inside the first refresh, after its step 1
        _crash_at(patch, prm, "prm_1", 1)
        with pytest.raises(_Crash):
            run_module.run(_iterative_config(), workdir, _mesh())
    with monkeypatch.context() as patch:  # then inside the RL segment after it, after step 3
        _crash_at(patch, rl_trainer, "rl", 3)
        with pytest.raises(_Crash):
            run_module.run(_iterative_config(), workdir, _mesh())
    resumed = run_module.run(_iterative_config(), workdir, _mesh())
    np.testing.assert_array_equal(flat(resumed["params"]), flat(straight["params"]))
    lines = {}
    for r in read_metrics(workdir):
        lines.setdefault(r["stage"], []).append(r["step"])
    assert lines == {"prm": [1, 2], "rl": [1, 2, 3, 4, 5], "prm_1": [1, 2], "prm_2": [1, 2]}
    assert resumed["prm_2_eval"] == straight["prm_2_eval"]


@pytest.mark.slow
def test_grpo_iterative_config_runs_from_train_py(tmp_path):
    overrides = {"sft.steps": 4, "prm.steps": 2, "prm.num_prompts": 8, "prm.eval_size": 4,
                 "prm.batch_size": 8, "rl.steps": 3, "rl.reward_refresh_every": 2,
                 "rl.num_prompts": 2, "rl.group_size": 4, "rl.num_minibatches": 2,
                 "eval.num_examples": 4, "eval.k": 0, "model.num_layers": 1,
                 "model.hidden_size": 32, "model.intermediate_size": 64, "log.progress_bar": False}
    result = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "train.py"),
         f"--config={ROOT / 'configs' / 'arithmetic_rft.py'}:grpo_iterative",
         f"--workdir={tmp_path}", *(f"--config.{k}={v}" for k, v in overrides.items())],
        capture_output=True, text=True, timeout=600, check=False,
        # One device (the tests' XLA_FLAGS ask for eight); this tree's rl_jax.
        env={k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | {"PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    steps = [(r["stage"], r["step"]) for r in read_metrics(tmp_path) if r["stage"] != "sft"]
    assert steps == [("prm", 1), ("prm", 2), ("rl", 1), ("rl", 2), ("prm_1", 1), ("prm_1", 2),
                     ("rl", 3)]


@pytest.mark.slow
def test_iterative_rl_with_an_outcome_reward_model_resumes_exactly(tmp_path, monkeypatch):
    """The reward model of ``rewards.model_weight`` is retrained after RL step 2 (stage rm_1,
    synthetic labels of the current policy's samples) and scores RL's steps 3-4; a run crashed
    inside the refresh and restarted ends with the straight run's policy, bit for bit."""
    import ml_collections

    from rl_jax.trainers import reward_model as rm_trainer
    from rl_jax.trainers import run as run_module

    def config():
        return tiny_config(**{
            "stages": ("rm", "rl"), "task.name": "digits",
            "task.kwargs": ml_collections.ConfigDict(dict(min_digits=2, max_digits=3)),
            "rewards.weights": {"digits_gold": 0.0}, "rewards.correctness": "format",
            "rewards.model_weight": 1.0, "rm.num_prompts": 8, "rm.num_responses": 3,
            "rm.eval_size": 8, "rm.steps": 2, "rm.batch_size": 4, "rl.steps": 4,
            "rl.reward_refresh_every": 2, "rl.num_prompts": 2, "rl.num_minibatches": 2,
            "eval.every": 0, "eval.k": 0, "eval.num_examples": 4, "model.logits_chunk": 0,
            "checkpoint.every": 1})

    used = []
    score_responses = rl_trainer.score_responses

    def recording(settings, out, texts, examples, reward_model):
        used.append(reward_model)
        return score_responses(settings, out, texts, examples, reward_model)

    monkeypatch.setattr(rl_trainer, "score_responses", recording)
    straight = run_module.run(config(), str(tmp_path / "straight"), _mesh())
    order = [(r["stage"], r["step"]) for r in read_metrics(tmp_path / "straight")]
    assert order == [("rm", 1), ("rm", 2), ("rl", 1), ("rl", 2), ("rm_1", 1), ("rm_1", 2),
                     ("rl", 3), ("rl", 4)]
    assert len(used) == 4 and used[0] is used[1] and used[2] is used[3] and used[1] is not used[2]
    assert os.path.exists(tmp_path / "straight" / "rm_data" / "rm_1.json")

    workdir = str(tmp_path / "resumed")
    with monkeypatch.context() as patch:
        _crash_at(patch, rm_trainer, "rm_1", 1)
        with pytest.raises(_Crash):
            run_module.run(config(), workdir, _mesh())
    resumed = run_module.run(config(), workdir, _mesh())
    np.testing.assert_array_equal(flat(resumed["params"]), flat(straight["params"]))
    assert resumed["rm_1_eval"] == straight["rm_1_eval"]
