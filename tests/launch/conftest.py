from __future__ import annotations

import os
import shutil

import pytest


@pytest.fixture
def srun_on_path(tmp_path, monkeypatch):
    """Submitit's SLURM executor refuses to be built unless ``srun`` is on PATH (it only looks:
    ``shutil.which``). The tests using this fixture render the sbatch script it would submit and run
    nothing, so on a machine without SLURM a placeholder that fails if it is ever run stands in;
    where SLURM is installed its srun is found as it is."""
    if shutil.which("srun") is not None:
        return
    bin_dir = tmp_path / "srun-placeholder"
    bin_dir.mkdir()
    srun = bin_dir / "srun"
    srun.write_text('#!/bin/sh\necho "srun placeholder (tests/launch/conftest.py): not run on SLURM" >&2\nexit 127\n')
    srun.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
