"""Many hosts on one machine: two processes (``jax.distributed`` on 127.0.0.1, gloo collectives,
2 fake CPU devices each) against one process with 4 devices.

One scenario covers the multi-host promises: the tiny config's SFT + RL (2 minibatches per RL
step) with FSDP over all 4 devices, so every sharded parameter spans both processes; stopped
after RL step 2 and started again to step 3 (a resume that restores FSDP-sharded state across
processes). It must give the metrics and parameters of one uninterrupted 4-device process, and
``metrics.jsonl`` one line per step.
"""

import json
import os
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from rl_jax import parallel
from rl_jax.config import ConfigError
from rl_jax.settings import RunSettings
from rl_jax.trainers import run as run_module
from rl_jax.trainers.metrics import is_wall_clock
from rl_jax.trainers.run import run
from tests.testing_utils import tiny_config
from tools import launch_local_hosts

ROOT = Path(__file__).resolve().parents[1]

CONFIG = ROOT / "tests" / "fixtures" / "tiny_config.py"
# PPO with a critic (GAE): the tiny task's reward is 0 at first, and a group baseline would leave
# nothing to learn; the critic's values give every step a non-zero update to compare.
OVERRIDES = {"sft.steps": 2, "rl.num_minibatches": 2, "rl.estimator": "gae", "eval.every": 2}
# gloo sums the gradient across processes in another order than XLA within one: float32 rounding
# (measured: at most 7.6e-6 on a metric of size 57, 1.1e-6 on a parameter; 0.5 of rtol 1e-5 +
# atol 1e-6 on the worst parameter, so atol is 1e-5).
RTOL, ATOL = 1e-5, 1e-5


def _launch(workdir, rl_steps: int, out) -> int:
    overrides = [f"--config.{k}={v}" for k, v in {**OVERRIDES, "rl.steps": rl_steps}.items()]
    return launch_local_hosts.launch(
        [f"--config={CONFIG}", f"--workdir={workdir}", "--fsdp=4", *overrides],
        num_processes=2, devices_per_process=2, timeout=600, out=out,
    )


def _lines(workdir) -> list[dict]:
    with open(Path(workdir) / "metrics.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _arrays(directory: Path) -> list[np.ndarray]:
    """The arrays of the newest checkpoint in ``directory``, read onto one device (a checkpoint
    saved over another set of devices needs such a target)."""
    path = directory / str(max(int(p.name) for p in directory.glob("[0-9]*"))) / "state"
    checkpointer = ocp.StandardCheckpointer()
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                          checkpointer.metadata(path).item_metadata.tree)
    return [np.asarray(x) for x in jax.tree.leaves(checkpointer.restore(path, target))]


@pytest.mark.slow
def test_two_processes_equal_one_with_four_devices_and_resume(tmp_path, monkeypatch):
    # The second launch compiles what the first did: read it from a compilation cache.
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax_cache"))
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    log_path = tmp_path / "processes.log"
    hosts = tmp_path / "hosts"
    with open(log_path, "w", encoding="utf-8") as log:
        first = _launch(hosts, 2, log)
        second = _launch(hosts, 3, log) if first == 0 else None
    output = log_path.read_text(encoding="utf-8")
    assert (first, second) == (0, 0), f"a launch failed ({first}, {second}):\n{output[-6000:]}"
    assert "[0] rl: resumed from step 2" in output and "[1] rl: resumed from step 2" in output

    config = tiny_config(**{**OVERRIDES, "rl.steps": 3})
    single = tmp_path / "single"
    run(config, str(single), parallel.make_mesh(fsdp=4, devices=jax.devices()[:4]))

    lines, reference = _lines(hosts), _lines(single)
    assert all(r["grad_norm"] > 0 for r in reference if r["stage"] == "rl")  # RL does learn
    steps = [(r["stage"], r["step"]) for r in lines]
    assert steps == [("sft", 1), ("sft", 2), ("rl", 1), ("rl", 2), ("rl", 3)]  # one line a step
    assert steps == [(r["stage"], r["step"]) for r in reference]
    for got, want in zip(lines, reference, strict=True):
        assert set(got) == set(want), (got["stage"], got["step"])
        for name in sorted(n for n in set(want) - {"stage", "step"} if not is_wall_clock(n)):
            np.testing.assert_allclose(
                got[name], want[name], rtol=RTOL, atol=ATOL,
                err_msg=f"{got['stage']} step {got['step']}: {name}",
            )
    for stage in ("sft", "rl"):
        for got, want in zip(_arrays(hosts / stage), _arrays(single / stage), strict=True):
            np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=stage)
    # Files are written once, by process 0; the ones it writes at the end exist.
    assert (hosts / "summary.json").is_file() and (hosts / "curves.png").is_file()
    assert not (hosts / "lock").exists()


def test_options_that_do_not_run_across_processes_are_refused(monkeypatch):
    config = tiny_config()
    config.rl.dynamic_sampling = True
    settings = RunSettings.from_config(config)
    run_module.check_processes(settings)  # one process: allowed
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    with pytest.raises(ConfigError, match=r"config.rl.dynamic_sampling = True: expected False"):
        run_module.check_processes(settings)


def test_process_rows_and_local_rows_on_one_process():
    mesh = parallel.make_mesh(fsdp=2)
    assert parallel.process_rows(mesh, 16) == slice(0, 16)
    x = jax.device_put(np.arange(32.0).reshape(16, 2), parallel.batch_sharding(mesh))
    np.testing.assert_array_equal(parallel.local_rows(x, mesh), np.arange(32.0).reshape(16, 2))
    np.testing.assert_array_equal(parallel.to_host(x), np.arange(32.0).reshape(16, 2))
    np.testing.assert_array_equal(parallel.gather_rows(np.ones(3)), np.ones(3))
    assert parallel.process_max(7) == 7
    with pytest.raises(ValueError, match="does not split over the 8 devices"):
        parallel.process_rows(mesh, 12)


def test_launcher_stops_every_process_when_one_fails(tmp_path):
    """Process 1 fails at once; process 0 would run for a minute: the launch returns process 1's
    exit status within seconds, process 0 stopped."""
    script = tmp_path / "script.py"
    script.write_text(
        "import sys, time\n"
        "if '--process_id=1' in sys.argv:\n"
        "    sys.exit('process 1 fails')\n"
        "print('process 0 waits', flush=True)\n"
        "time.sleep(60)\n"
    )
    log = tmp_path / "log"
    start = time.monotonic()
    with open(log, "w", encoding="utf-8") as out:
        status = launch_local_hosts.launch([], num_processes=2, timeout=50, out=out,
                                           script=str(script))
    assert status == 1, log.read_text()
    assert time.monotonic() - start < 30, log.read_text()
    assert "[1] process 1 fails" in log.read_text()
    assert "process 1 exited with 1: stopping the others" in log.read_text()


if os.environ.get("JAX_PLATFORMS", "cpu") != "cpu":  # the processes use fake CPU devices
    pytestmark = pytest.mark.skip("multi-process test runs on CPU only")
