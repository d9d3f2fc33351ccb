"""experiments/loss_step_demo runs end to end, data-parallel with fsdp."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "loss_step_demo" / "loss_step_demo.py"


@pytest.mark.slow
def test_loss_step_demo_runs_on_eight_devices():
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--steps=2", "--fsdp=2"],
        capture_output=True, text=True, timeout=300, env=dict(os.environ), check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "mesh {'data': 4, 'fsdp': 2}" in result.stdout
    for name in ("grpo", "ppo"):
        lines = [line for line in result.stdout.splitlines() if line.startswith(f"{name} step")]
        assert len(lines) == 2, result.stdout
