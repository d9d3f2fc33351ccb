"""Runs that survive preemption, damaged checkpoints and mistakes: kill -9 at random moments,
SIGTERM/SIGINT, damaged checkpoints and metric files, a divergence guard, a second process or
another config on a workdir, and bad inputs that name what is wrong."""

import dataclasses
import glob
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl_jax import parallel
from rl_jax.config import ConfigError, check_config, default_config
from rl_jax.settings import LoopSettings, ModelSettings, TaskSettings
from rl_jax.train_state import TrainState
from rl_jax.trainers import loop
from rl_jax.trainers.checkpoint import Checkpointer, CheckpointMismatchError
from rl_jax.trainers.metrics import MetricWriter, read_metrics
from rl_jax.trainers.run import run
from rl_jax.trainers.workdir import (
    ConfigChangedError,
    WorkdirLockedError,
    check_workdir_config,
    locked,
)
from tests.testing_utils import tiny_config
from tools import crash_test

ROOT = Path(__file__).resolve().parents[1]

# --- a toy stage: the shared loop without a model (seconds) ---------------------------------------


def _toy_config(every=1, keep=3):
    """The loop's settings: checkpoints every ``every`` steps (the last ``keep``), a log line
    every step, no progress bar, no evaluation."""
    config = default_config()
    config.checkpoint.every, config.checkpoint.keep = every, keep
    config.log.every, config.log.progress_bar, config.eval.every = 1, False, 0
    return LoopSettings.from_config(config)


def _toy_stage(steps, on_step=None, kl=lambda step: 0.0):
    """``w <- w + (step + 1)``; ``on_step(step)`` runs in the batch function (e.g. a signal)."""
    state = TrainState(jnp.zeros((), jnp.int32), {"w": jnp.zeros(3)}, ())

    def batch(step, state, host):
        if on_step is not None:
            on_step(step)
        return jnp.float32(step + 1), {"kl": kl(step)}, {"seen": host["seen"] + 1}

    def step(state, x):
        params = {"w": state.params["w"] + x}
        return state._replace(step=state.step + 1, params=params), {"loss": x}

    return loop.Stage("toy", steps, state, None, step, batch, host={"seen": 0},
                      limits={"kl": (1.0, "toy.max_kl")})


def _lines(workdir, stage="toy"):
    with open(Path(workdir) / "metrics.jsonl", encoding="utf-8") as f:
        return [json.loads(line)["step"] for line in f if json.loads(line)["stage"] == stage]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_finishes_the_step_saves_it_and_restores_the_handler(tmp_path, signum):
    before = signal.getsignal(signum)
    stage = _toy_stage(10, on_step=lambda s: s == 3 and os.kill(os.getpid(), signum))
    with pytest.raises(loop.StageInterrupted) as stop:
        loop.run_stage(stage, _toy_config(every=100), str(tmp_path))
    assert stop.value.exit_code == 128 + signum
    assert f"after step 4; saved {tmp_path / 'toy'}/4" in str(stop.value)
    assert Checkpointer(tmp_path / "toy", every=1, keep=1).all_steps() == [4]  # the running step
    assert signal.getsignal(signum) is before  # the handler is only there while a stage runs
    result = loop.run_stage(_toy_stage(10), _toy_config(every=100), str(tmp_path))
    assert float(result.state.params["w"][0]) == sum(range(1, 11)) and result.host["seen"] == 10
    assert _lines(tmp_path) == list(range(1, 11))


DAMAGE = {
    "truncated data file": lambda d: [open(f, "r+b").truncate(7)
                                      for f in glob.glob(f"{d}/state/**/d/*", recursive=True)],
    "deleted manifest": lambda d: [os.remove(f) for f in
                                   glob.glob(f"{d}/state/**/manifest.ocdbt", recursive=True)],
    "deleted meta item": lambda d: shutil.rmtree(f"{d}/meta"),
    "empty step directory": lambda d: (shutil.rmtree(d), os.makedirs(d)),
}
WHY = {"truncated data file": "state", "deleted manifest": "state",
       "deleted meta item": "meta item", "empty step directory": "the step directory is empty"}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_newest_checkpoint_falls_back_to_the_newest_good_one(tmp_path, capsys, damage):
    loop.run_stage(_toy_stage(4), _toy_config(), str(tmp_path))
    DAMAGE[damage](str(tmp_path / "toy" / "4"))
    capsys.readouterr()
    result = loop.run_stage(_toy_stage(6), _toy_config(), str(tmp_path))
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if "cannot be read" in x)
    assert f"toy/4: cannot be read ({WHY[damage]}" in line and "trying step 3" in line
    assert len(line) < 400 and "resumed from step 3" in out
    assert (tmp_path / "toy.damaged" / "4").is_dir()  # set aside, not deleted
    assert float(result.state.params["w"][0]) == sum(range(1, 7))  # step 4 trained again
    assert _lines(tmp_path) == list(range(1, 7))


def test_another_shape_is_a_mismatch_not_damage(tmp_path):
    loop.run_stage(_toy_stage(2), _toy_config(), str(tmp_path))
    stage = _toy_stage(4)
    stage.state = stage.state._replace(params={"w": jnp.zeros(5)})
    with pytest.raises(CheckpointMismatchError, match="does not match the model"):
        loop.run_stage(stage, _toy_config(), str(tmp_path))
    assert not (tmp_path / "toy.damaged").exists()


def test_limit_stops_before_the_step_is_checkpointed(tmp_path):
    stage = _toy_stage(6, kl=lambda step: 5.0 if step == 3 else 0.01)
    with pytest.raises(loop.DivergenceError, match=r"step 4: kl = 5 > toy.max_kl = 1"):
        loop.run_stage(stage, _toy_config(), str(tmp_path))
    assert Checkpointer(tmp_path / "toy", every=1, keep=3).all_steps() == [1, 2, 3]


def test_metrics_continue_from_the_restored_step_and_a_cut_line_is_dropped(tmp_path):
    workdir = str(tmp_path)
    writer = MetricWriter(workdir, "sft")
    for step in (1, 2, 3):
        writer.write(step, {"loss": step})
    writer.close()
    writer = MetricWriter(workdir, "rl")
    for step in (1, 2, 3, 4):
        writer.write(step, {"loss": step})
    writer.close()
    with open(tmp_path / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"stage": "rl", "step": 5, "lo')  # a full disk
    with pytest.warns(UserWarning, match="damaged metrics line"):
        assert [r["step"] for r in read_metrics(workdir)] == [1, 2, 3, 1, 2, 3, 4]
    with pytest.warns(UserWarning, match="damaged metrics line"):
        writer = MetricWriter(workdir, "rl", resume_step=2)  # the checkpoint was at rl step 2
    writer.write(3, {"loss": 30.0})
    writer.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        records = read_metrics(workdir)
    assert [(r["stage"], r["step"]) for r in records] == [
        ("sft", 1), ("sft", 2), ("sft", 3), ("rl", 1), ("rl", 2), ("rl", 3)]
    assert records[-1]["loss"] == 30.0
    assert os.listdir(tmp_path / "tensorboard") == ["sft", "rl"] or sorted(
        os.listdir(tmp_path / "tensorboard")) == ["rl", "sft"]


# --- the workdir: one process, one config ---------------------------------------------------------


def test_second_process_is_refused_and_a_stale_lock_taken_over(tmp_path, capsys):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "lock").write_text(json.dumps({"pid": other.pid, "host": socket.gethostname()}))
        with pytest.raises(WorkdirLockedError) as error, locked(str(tmp_path)):
            pass
        assert f"in use by PID {other.pid} on host {socket.gethostname()}" in str(error.value)
    finally:
        other.kill()
        other.wait()
    with locked(str(tmp_path)):  # the holder is gone
        assert json.loads((tmp_path / "lock").read_text())["pid"] == os.getpid()
    assert f"taking over the lock of PID {other.pid}" in capsys.readouterr().out
    assert not (tmp_path / "lock").exists()  # released
    (tmp_path / "lock").write_text(json.dumps({"pid": 1, "host": "elsewhere"}))
    with pytest.raises(WorkdirLockedError, match="PID 1 on host elsewhere"), locked(str(tmp_path)):
        pass


def test_run_refuses_a_locked_workdir_before_any_work(tmp_path, monkeypatch):
    from rl_jax.trainers import run as run_module

    monkeypatch.setattr(run_module, "build_context", lambda *a: pytest.fail("work was done"))
    (tmp_path / "lock").write_text(json.dumps({"pid": 1, "host": "elsewhere"}))
    with pytest.raises(WorkdirLockedError):
        run(tiny_config(), str(tmp_path), parallel.make_mesh(devices=jax.devices()[:1]))


def test_config_change_is_refused_unless_harmless_or_allowed(tmp_path, capsys):
    workdir = str(tmp_path)
    check_workdir_config(workdir, tiny_config())
    harmless = tiny_config(**{"rl.steps": 50, "log.every": 7, "checkpoint.every": 9})
    harmless.eval.num_examples = 16
    check_workdir_config(workdir, harmless)  # step counts, logging, eval, checkpoints: fine
    other = tiny_config(**{"model.hidden_size": 48, "rl.estimator": "rloo"})
    with pytest.raises(ConfigChangedError) as error:
        check_workdir_config(workdir, other)
    message = str(error.value)
    assert "model.hidden_size: 32 -> 48" in message and "rl.estimator: 'grpo' -> 'rloo'" in message
    assert "--allow_config_change" in message and "rl.steps" not in message
    check_workdir_config(workdir, other, allow_config_change=True)
    assert "continuing with a changed config" in capsys.readouterr().out
    assert json.loads((tmp_path / "config.json").read_text())["model"]["hidden_size"] == 48


def test_a_field_added_since_the_workdir_started_is_no_change_at_its_default(tmp_path):
    """A workdir started before ``rl.max_staleness`` existed resumes with it at its default (0),
    and is refused with another value."""
    check_workdir_config(str(tmp_path), tiny_config())
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["rl"]["max_staleness"], saved["mesh"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    check_workdir_config(str(tmp_path), tiny_config())
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ConfigChangedError, match="rl.max_staleness: '<absent>' -> 1"):
        check_workdir_config(str(tmp_path), tiny_config(**{"rl.max_staleness": 1,
                                                           "rl.stale_policy": "wait"}))


# --- the full run ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_damaged_sft_checkpoint_does_not_block_rl_with_its_own(tmp_path, capsys):
    mesh = parallel.make_mesh(devices=jax.devices()[:1])
    config = tiny_config(**{"sft.steps": 2, "sft.stop_accuracy": 1.01, "rl.steps": 2})
    run(config, str(tmp_path), mesh)
    for step_dir in glob.glob(str(tmp_path / "sft" / "[0-9]*")):
        DAMAGE["truncated data file"](step_dir)
    config.rl.steps = 3
    summary = run(config, str(tmp_path), mesh)
    out = capsys.readouterr().out
    assert "sft: finished (rl has a checkpoint" in out and "rl: resumed from step 2" in out
    assert [r["step"] for r in read_metrics(tmp_path) if r["stage"] == "rl"] == [1, 2, 3]
    assert "pass@1" in summary["rl_eval"]


@pytest.mark.slow
def test_rl_step_that_destroys_the_policy_is_stopped(tmp_path, monkeypatch):
    """A peaked policy (init_std 1: entropy ~1.2 nats, like a policy after SFT) and random rewards
    (every group has an advantage): lr 1e6 is stopped at its first step, before any checkpoint;
    lr 3e-4 stays two orders of magnitude below the default limit."""
    from rl_jax.trainers import rl as rl_module
    from tests.test_trainers import _digit_task_config

    rng = np.random.default_rng(0)
    monkeypatch.setattr(rl_module.rewards, "combine_rewards", lambda weights, completions,
                        examples: (rng.random(len(completions)).astype(np.float32), {}))
    mesh = parallel.make_mesh(devices=jax.devices()[:1])
    config = _digit_task_config()
    config.rl.steps, config.checkpoint.every, config.model.init_std = 2, 1, 1.0
    config.rl.optim.lr = 3e-4
    run(config, str(tmp_path / "healthy"), mesh)
    kls = [r["approx_kl"] for r in read_metrics(tmp_path / "healthy") if r["stage"] == "rl"]
    assert max(kls) < 0.01 * config.rl.max_approx_kl, kls
    config.rl.optim.lr = 1e6
    with pytest.raises(loop.DivergenceError, match=r"step 1: approx_kl = .* > rl.max_approx_kl"):
        run(config, str(tmp_path / "lr1e6"), mesh)
    assert not list((tmp_path / "lr1e6" / "rl").glob("[0-9]*"))


def test_divergence_limit_is_validated():
    config = tiny_config(**{"rl.max_approx_kl": -1.0})
    with pytest.raises(ConfigError, match=r"config.rl.max_approx_kl = -1.0: expected a number"):
        check_config(config)


# --- bad inputs name the input and what was expected ----------------------------------------------


def test_missing_model_path_names_the_field(tmp_path):
    config = tiny_config(**{"model.path": str(tmp_path / "nowhere")})
    with pytest.raises(ConfigError, match=r"config.model.path = '.*nowhere': expected an existing"):
        check_config(config)


def test_garbage_safetensors_names_the_path(tmp_path):
    from rl_jax.trainers.setup import build_policy, build_tokenizer
    from tests.hf_fixtures import make_hf_model, tiny_tokenizer

    make_hf_model("qwen2").save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    config = tiny_config(**{"model.path": str(tmp_path)})
    model = ModelSettings.from_config(config)
    tokenizer = build_tokenizer(model, None, str(tmp_path))
    with pytest.raises(ValueError, match=r"config.model.path = '.*': cannot load the model \("):
        build_policy(model, tokenizer)


def test_empty_data_file_names_the_file(tmp_path):
    from configs import gsm8k_grpo
    from rl_jax.trainers.setup import build_task

    empty = tmp_path / "train.jsonl"
    empty.write_text("")
    config = gsm8k_grpo.get_config()
    config.task.kwargs.path = str(empty)
    with pytest.raises(ValueError, match=r"task.kwargs.path = '.*train.jsonl': the file is empty"):
        build_task(TaskSettings.from_config(config))


def test_missing_config_file_is_named_before_ml_collections():
    result = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "train.py"), "--config=configs/nope.py",
         "--workdir=/tmp/unused"], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 1
    assert "--config=configs/nope.py: no such file" in result.stderr
    assert "config_config" not in result.stderr


# --- kill -9 at random moments --------------------------------------------------------------------


# Four steps off-policy: every RL checkpoint holds rollouts sampled ahead, with their versions.
STALE4 = ("--config.rl.max_staleness=4", "--config.rl.stale_policy=wait")


def _reference(tmp_path_factory, name, *overrides):
    reference = tmp_path_factory.mktemp(name) / "reference"
    result = crash_test.train(reference, *overrides)
    assert result.returncode == 0, result.stderr[-2000:]
    return reference


@pytest.fixture(scope="module")
def crash_reference(tmp_path_factory):
    """The uninterrupted tiny run the kill -9 trials are compared with."""
    return _reference(tmp_path_factory, "crash")


@pytest.fixture(scope="module")
def stale_crash_reference(tmp_path_factory):
    """The same run four steps off-policy (``rl.max_staleness = 4``)."""
    return _reference(tmp_path_factory, "crash_stale", *STALE4)


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [(), STALE4], ids=["on_policy", "stale4"])
def test_kill9_at_random_moments_resumes_bit_identical(tmp_path, request, overrides):
    """The short version of tools/crash_test.py: one trial of 2 kills, one after an SFT
    checkpoint and one after an RL one (for ``stale4``, a checkpoint whose pending rollouts must
    come back); every kill lands on a live process after a checkpoint of its own, the next start
    restores it, and the finished run is bit-identical to the uninterrupted one."""
    reference = request.getfixturevalue("stale_crash_reference" if overrides else "crash_reference")
    result = crash_test.trial(reference, tmp_path / "trial", 2, random.Random(6),
                              overrides=overrides)
    assert crash_test.check_trial(result, 2) == [], result
    assert [k.returncode for k in result.kills] == [-signal.SIGKILL] * 2
    stages = [max(kill.newest, key=crash_test.STAGES.index) for kill in result.kills]
    assert stages == ["sft", "rl"], result
    for kill, stage in zip(result.kills, stages, strict=True):
        assert kill.resumed[stage] == kill.newest[stage] >= 1


@pytest.mark.slow
def test_kill9_trial_without_kills_fails_the_check(tmp_path, crash_reference):
    """The negative control: with kills disabled the run finishes by itself, and the trial is
    rejected (no SIGKILL landed) though the result equals the uninterrupted run."""
    result = crash_test.trial(crash_reference, tmp_path, 1, random.Random(1), kill=False)
    problems = crash_test.check_trial(result, 1)
    assert result.identical and result.kills[0].returncode == 0
    assert any("no SIGKILL reached a live process" in p for p in problems), problems
    assert any("return code 0, expected -9" in p for p in problems), problems


def _landed(**changes) -> crash_test.Kill:
    kill = crash_test.Kill(pid=7, target="sft/2", reached=True, sent=True, alive=True,
                           seconds=20.0, returncode=-9, newest={"sft": 2}, resumed={"sft": 2})
    return dataclasses.replace(kill, **changes)


@pytest.mark.parametrize("changes, why", [
    ({"sent": False, "returncode": 0}, "kill 1: no SIGKILL reached a live process"),
    ({"alive": False}, "kill 1: no SIGKILL reached a live process"),
    ({"returncode": 0}, "kill 1: return code 0, expected -9"),
    ({"reached": False}, "kill 1: the process wrote no checkpoint (sft/2) before it"),
    ({"resumed": {}}, "kill 1: the next start restored nothing, expected sft step 2"),
    ({"resumed": {"sft": 1}}, "expected sft step 2"),
    ({"newest": {"sft": 6, "rl": 1}, "resumed": {"sft": 6}}, "expected rl step 1"),
])
def test_kill9_checker_rejects_a_kill_that_proves_nothing(changes, why):
    assert crash_test.check_trial(crash_test.Trial([_landed()], 0, identical=True), 1) == []
    problems = crash_test.check_trial(crash_test.Trial([_landed(**changes)], 0, identical=True), 1)
    assert any(why in p for p in problems), problems


def test_kill9_compare_reads_every_metric_but_the_timings(tmp_path):
    """A resumed run must repeat every logged number (staleness, importance weights, rewards), not
    only the loss; wall-clock timings may differ."""
    line = {"stage": "rl", "step": 1, "loss": 0.5, "staleness_mean": 4.0, "step_time": 1.0,
            "time_sampling": 0.2, "tokens_per_second": 100.0}
    for name, lines in (("reference", [line]), ("timings", [line | {"step_time": 9.0,
                        "time_sampling": 3.0, "tokens_per_second": 7.0}]),
                        ("stale", [line | {"staleness_mean": 2.0}])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert crash_test.compare(tmp_path / "reference", tmp_path / "timings") == (True, 0, [])
    assert crash_test.compare(tmp_path / "reference", tmp_path / "stale")[2] == [
        "metrics differ at [(('rl', 1), 'staleness_mean')]"]


def test_kill9_checker_rejects_missing_kills_and_a_different_result():
    assert "0 starts to kill, expected 1" in crash_test.check_trial(
        crash_test.Trial([], 0, identical=True), 1)
    assert any("not equal to the uninterrupted run" in p for p in crash_test.check_trial(
        crash_test.Trial([_landed()], 0, identical=False), 1))
    assert "the last start exited with 1" in crash_test.check_trial(
        crash_test.Trial([_landed()], 1), 1)


@pytest.mark.slow
def test_sigterm_to_train_py_exits_143_naming_the_checkpoint(tmp_path):
    process = crash_test.start(tmp_path, "--config.checkpoint.every=100")
    for line in process.stdout:  # wait for the second SFT step
        if line.startswith("sft     2"):
            process.send_signal(signal.SIGTERM)
            break
    output = process.communicate(timeout=300)[0]
    assert process.returncode == 143, output[-2000:]
    assert f"saved {tmp_path / 'sft'}/" in output and "run the same command again" in output
    saved = Checkpointer(tmp_path / "sft", every=1, keep=1).all_steps()
    last_line = _lines(tmp_path, "sft")[-1]
    assert saved == [last_line] and last_line >= 2  # the step that was running
