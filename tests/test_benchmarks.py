"""The GPU check's scripts, checked where there is no GPU: shell syntax, and gpu_step.py's CPU mode
(the same Python code paths as on the GPU: trainer with a 1-rank DDP group, naive step, both loaders)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.process
def test_gpu_check_script_is_valid_shell():
    subprocess.run(["bash", "-n", str(REPO / "benchmarks" / "gpu_check.sh")], check=True)
    if shutil.which("shellcheck"):
        out = subprocess.run(["shellcheck", str(REPO / "benchmarks" / "gpu_check.sh")], capture_output=True, text=True)
        assert out.returncode == 0, out.stdout


@pytest.mark.slow
def test_gpu_step_cpu_mode_prints_every_row():
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "gpu_step.py"),
            "--cpu",
            "--images",
            "200",
            "--steps",
            "1",
            "--warmup",
            "0",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    for row in ("naive    synthetic", "naive    torchvision DataLoader", "trainer  synthetic", "trainer  "):
        assert row in out.stdout, out.stdout
    assert "trainer/naive: synthetic" in out.stdout and "images/s per GPU" in out.stdout
