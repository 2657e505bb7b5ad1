"""`launch/submit.py ... dry_run=true` on the local cluster: the plan, the run directories and the
sbatch scripts Submitit would submit; nothing queued, nothing written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from burn.config import compose_config

pytestmark = [pytest.mark.slurm]

REPO = Path(__file__).resolve().parents[2]


def queued() -> str:
    return subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, check=True).stdout


def test_dry_run_prints_plan_and_sbatch_scripts_and_queues_nothing(slurm_cluster, tiny_data, tmp_path):
    before = queued()
    run_dir = tmp_path / "run"
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "launch" / "submit.py"),
            "preset=tiny",
            "stage=all",
            "nodes=2",
            "steps=4",
            f"data.root={tiny_data}",
            "data.synthetic.generate=false",
            f"run_dir={run_dir}",
            "dry_run=true",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert "dry run: stage=all on SLURM, 2 node(s) x 1 task(s); nothing queued, run or written" in text
    assert f"stage1  {run_dir / 'stage1'}  (steps=4)" in text
    assert f"stage2  {run_dir / 'stage2'}  (steps=4, pretrained={run_dir / 'stage1' / 'stage1_extraction.pth'})" in text
    assert f"linear  {run_dir / 'linear'}  (epochs=20.0, pretrained={run_dir / 'stage2' / 'backbone.pth'})" in text
    assert text.count("#!/bin/bash") == 3 and text.count("#SBATCH --nodes=2") == 3
    # The warning signal comes signal_delay_s before the limit: the tiny preset's, in every generated script.
    lead = compose_config(["preset=tiny"]).signal_delay_s
    assert re.findall(r"^#SBATCH --signal=(.*)$", text, re.M) == [f"USR2@{lead}"] * 3
    assert "#SBATCH --dependency='afterok:<job id of stage1>'" in text
    assert "#SBATCH --dependency='afterok:<job id of stage2>'" in text
    # The submitting interpreter (python or python3, as the suite was started) runs the job.
    assert re.search(r"python[0-9.]* -u -m submitit\.core\._submit ", text), text
    # A failed task ends the others at once; the batch shell decides about a requeue (launch/batch.py).
    assert text.count("--kill-on-bad-exit=1") == 3 and text.count("export BURN_BATCH_DECIDES=1") == 3
    assert f"-m launch.batch end --status $? --stage-dir {run_dir / 'linear'} --max-requeues 20" in text
    assert not run_dir.exists() and queued() == before
