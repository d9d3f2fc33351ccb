"""Test set-up: 8 fake CPU devices, so data parallelism is exercised without accelerators.

XLA reads the flag when the backend starts, so it is set here, before any test imports jax.
"""

import os

_FLAG = "--xla_force_host_platform_device_count=8"
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
