"""Test set-up: 8 fake CPU devices, so data parallelism is exercised without accelerators.

XLA reads the flag when the backend starts, so it is set here, before any test imports jax.
"""

import os

_FLAG = "--xla_force_host_platform_device_count=8"
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()

# One persistent XLA compilation cache per test run, shared by the xdist workers and the
# subprocesses tests start (they inherit the environment set here, in the process that starts
# them): tests build the same tiny programs many times over (each builds its own jitted step), and
# a program compiled once is read back. Removed when the run ends. RL_JAX_TEST_CACHE=0 turns it off.
_CACHE = None
_WANTED = os.environ.get("RL_JAX_TEST_CACHE", "1") == "1"
if "JAX_COMPILATION_CACHE_DIR" not in os.environ and _WANTED:
    import tempfile

    _CACHE = tempfile.mkdtemp(prefix="rl_jax_test_xla_cache_")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"


def pytest_unconfigure(config):
    if _CACHE is not None:
        import shutil

        shutil.rmtree(_CACHE, ignore_errors=True)
