"""launch/batch.py's decision for a job from how its ranks ended, without a cluster (the paths that ask
SLURM nothing). On the cluster: tests/slurm/test_faults_cluster.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from burn.runtime import faults
from burn.runtime.environment import Environment
from launch import batch

JOB = {"SLURM_JOB_ID": "77", "SLURM_NTASKS": "2", "SLURM_RESTART_COUNT": "1"}


def ending(stage_dir, rank, outcome, cause, step=9, code=1, error=""):
    faults.record_ending(stage_dir, "77", 1, rank, outcome, cause, step, code, error)


def test_a_users_fault_on_any_rank_fails_the_job_as_that_rank_said(tmp_path, capsys):
    # Rank 1 read a bad image; rank 0 then lost its peer. The data's fault wins: no requeue, no output.
    ending(tmp_path, 0, faults.INFRA, faults.PEER_DIED)
    ending(tmp_path, 1, faults.USER, "data.root=/d: x.JPEG cannot be decoded")
    assert batch.conclude_job(tmp_path, 20, 143, Environment.read(JOB)) == 1
    assert capsys.readouterr() == ("", "")
    assert not (tmp_path / "slurm" / "requeues.jsonl").exists()


def test_a_cancel_or_ctrl_c_stays_stopped_and_a_crash_before_the_stage_fails_as_before(tmp_path):
    ending(tmp_path, 0, faults.CANCELLED, faults.CANCELLED, code=143)
    assert batch.conclude_job(tmp_path, 20, 143, Environment.read(JOB)) == 143
    other = tmp_path / "other"
    assert batch.conclude_job(other, 20, 2, Environment.read(JOB)) == 2  # no ending: e.g. bad overrides
    assert batch.conclude_job(other, 20, 0, Environment.read(JOB)) == 0
    assert not (tmp_path / "slurm" / "requeues.jsonl").exists()


def test_the_cause_names_the_survivors_view_and_the_silent_ranks(tmp_path):
    ending(tmp_path, 0, faults.INFRA, faults.PEER_DIED, step=9, error="Connection closed by peer [127.0.0.1]:4264")
    cause, detail = batch.infrastructure_cause(faults.read_endings(tmp_path, "77", 1), 137, 2, tmp_path)
    assert cause == "peer rank died at step 9"
    assert detail == "rank 0: Connection closed by peer [127.0.0.1]:4264; rank 1 ended without a word"
    # Nobody said anything (a one-rank job OOM-killed): srun's status names the signal, progress the step.
    (tmp_path / "progress.json").write_text(json.dumps({"step": 41}))
    cause, _ = batch.infrastructure_cause([], 137, 1, tmp_path)
    assert cause == "killed by SIGKILL at step 41"
    assert batch.infrastructure_cause([], 1, 1, tmp_path) is None  # a plain failure is no fault of the cluster


def test_a_fault_before_the_first_checkpoint_requeues_from_the_start_and_crash_loops_count_per_job(tmp_path):
    assert batch.decide_requeue(tmp_path, 20, "77", 0, "peer rank died at step 3") is None
    batch.decide_requeue(tmp_path, 20, "77", 1, "peer rank died at step 3")
    # A new submission of the same stage is a new decision: its count starts again.
    batch.decide_requeue(tmp_path, 20, "88", 0, "peer rank died at step 3")
    try:
        batch.decide_requeue(tmp_path, 20, "77", 2, "killed by SIGKILL at step 3")
    except batch.RequeueRefused as err:
        message = str(err)
    assert message.startswith("crash loop: job 77 stopped 3 times in a row at the start (no checkpoint yet)")
    assert "(peer rank died at step 3; killed by SIGKILL at step 3)" in message
    records = [json.loads(line) for line in (tmp_path / "slurm" / "requeues.jsonl").read_text().splitlines()]
    assert [(r["job_id"], r.get("refused")) for r in records] == [
        ("77", None),
        ("77", None),
        ("88", None),
        ("77", "crash loop"),
    ]


def conclude_with_scontrol(tmp_path, requeue_line: str):
    """`python -m launch.batch end` after rank 1 died, beside a stand-in scontrol whose `requeue` does
    `requeue_line` (the real cluster's run: tests/slurm/test_faults_cluster.py)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(
        '#!/bin/sh\ncase "$*" in\n  *show\\ job*) echo "JobId=77 JobState=RUNNING Restarts=1" ;;\n'
        f"  requeue*) {requeue_line} ;;\nesac\n"
    )
    scontrol.chmod(0o755)
    stage = tmp_path / "stage"
    ending(stage, 0, faults.INFRA, faults.PEER_DIED, step=9, error="Connection reset by peer")
    env = {**os.environ, **JOB, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    cmd = [sys.executable, "-m", "launch.batch", "end", "--status", "137", "--stage-dir", str(stage)]
    return subprocess.run([*cmd, "--max-requeues", "20"], capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.process
def test_the_requeue_is_said_before_slurm_cancels_the_batch_shell_that_asked_for_it(tmp_path):
    # SLURM cancels the job's batch shell as it requeues the job: the line must already be out.
    ended = conclude_with_scontrol(tmp_path, "kill -9 $PPID")
    assert ended.returncode == -9
    assert "batch: job 77 requeued (restart 2 of at most 20) after peer rank died at step 9" in ended.stdout


@pytest.mark.process
def test_a_refused_scontrol_requeue_fails_the_job_with_srun_status_and_says_why(tmp_path):
    ended = conclude_with_scontrol(tmp_path, "echo 'Requested operation is presently disabled' >&2; exit 1")
    assert ended.returncode == 137
    assert "batch: scontrol requeue 77 failed (Requested operation is presently disabled); the job ends" in ended.stdout
