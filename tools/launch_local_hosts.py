r"""Starts N processes of ``experiments/train.py`` on this machine as the hosts of one run.

    python tools/launch_local_hosts.py --num_processes=2 --devices_per_process=2 -- \
        --config=tests/fixtures/tiny_config.py --workdir=/tmp/tiny_hosts

Each process gets ``--distributed --coordinator_address=127.0.0.1:<free port>
--num_processes=N --process_id=i`` and, on CPU (``--platform=cpu``, the default),
``XLA_FLAGS=--xla_force_host_platform_device_count=<devices_per_process>``; the arguments after
``--`` go to every process. Their output is printed with a ``[i]`` prefix per line. When one
process fails, the others are stopped (SIGTERM, then SIGKILL); after ``--timeout`` seconds all
are. The exit status is the first failing process's (0 when all succeed; 124 on timeout).

For real hosts (one process per GPU node or TPU VM) see docs/devices.md, "Many hosts".
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "experiments", "train.py")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_env(devices_per_process: int, platform: str) -> dict[str, str]:
    """The environment of each process: this one's, with the device count of a fake CPU host."""
    env = dict(os.environ)
    if platform == "cpu":
        flags = [f for f in env.get("XLA_FLAGS", "").split()
                 if not f.startswith("--xla_force_host_platform_device_count")]
        env["XLA_FLAGS"] = " ".join(
            [*flags, f"--xla_force_host_platform_device_count={devices_per_process}"]
        )
        env["JAX_PLATFORMS"] = "cpu"
    env.setdefault("PYTHONUNBUFFERED", "1")
    # This checkout's rl_jax first (train.py's own folder is what Python puts on the path).
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH", "")]))
    return env


def _relay(index: int, stream, out) -> None:
    for line in iter(stream.readline, ""):
        out.write(f"[{index}] {line}")
        out.flush()


def stop(processes: list[subprocess.Popen], grace: float = 5.0) -> None:
    """SIGTERM to every running process, SIGKILL to those still running ``grace`` s later."""
    for p in processes:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in processes:
        try:
            p.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def launch(
    train_args: list[str],
    *,
    num_processes: int,
    devices_per_process: int = 1,
    platform: str = "cpu",
    timeout: float = 600.0,
    out=sys.stdout,
    script: str = TRAIN,
) -> int:
    """Runs ``script train_args`` (default: ``train.py``) as ``num_processes`` processes of one
    distributed run (each also gets the ``--distributed ...`` flags).

    Returns 0 when all succeed, else the exit status of the first process that failed (124: the
    timeout passed, all were stopped).
    """
    address = f"127.0.0.1:{free_port()}"
    env = process_env(devices_per_process, platform)
    processes, relays = [], []
    for index in range(num_processes):
        command = [sys.executable, script, *train_args, "--distributed",
                   f"--coordinator_address={address}", f"--num_processes={num_processes}",
                   f"--process_id={index}"]
        p = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
        processes.append(p)
        relay = threading.Thread(target=_relay, args=(index, p.stdout, out), daemon=True)
        relay.start()
        relays.append(relay)
    deadline = time.monotonic() + timeout
    status = 0
    try:
        while any(p.poll() is None for p in processes):
            failed = [p for p in processes if p.poll() not in (None, 0)]
            if failed:
                status = failed[0].returncode
                out.write(f"process {processes.index(failed[0])} exited with {status}: "
                          "stopping the others\n")
                break
            if time.monotonic() > deadline:
                status = 124
                out.write(f"timeout: {timeout:.0f} s passed; stopping every process\n")
                break
            time.sleep(0.1)
        else:
            status = next((p.returncode for p in processes if p.returncode), 0)
    finally:
        stop(processes)
        for relay in relays:
            relay.join(timeout=5)
    return status


_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 2, "Processes (hosts) to start.",
                                      lower_bound=1)
_DEVICES = flags.DEFINE_integer("devices_per_process", 1,
                                "Fake CPU devices per process (--platform=cpu).", lower_bound=1)
_PLATFORM = flags.DEFINE_enum("platform", "cpu", ["cpu", "native"],
                              "cpu: fake CPU devices; native: whatever JAX finds (e.g. GPUs).")
_TIMEOUT = flags.DEFINE_float("timeout", 3600.0, "Seconds before all are stopped.")


def main(argv):
    train_args = argv[1:]  # what follows --
    sys.exit(launch(train_args, num_processes=_NUM_PROCESSES.value,
                    devices_per_process=_DEVICES.value, platform=_PLATFORM.value,
                    timeout=_TIMEOUT.value))


if __name__ == "__main__":
    app.run(main)
