"""launch/submit.py and slurm/stage.sbatch on the real local cluster, with the real trainer (tiny
preset, CPU, gloo).

Runs are shared between tests to keep the suite short: the uninterrupted stage=all run is the
reference the preempted runs must match bit for bit, and the slow runs (time limit, failing chain)
are queued at the start so they overlap with the interactive preemption tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.slurm.conftest import progress

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
STEPS = 20
#: Stage-1 steps of the time-limit run: more than one rank does in the 30-60 s before SLURM's USR2.
TIME_LIMIT_STEPS = 200


def submit(data: Path, run_dir: Path, *overrides: str) -> str:
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "launch" / "submit.py"),
            "preset=tiny",
            f"data.root={data}",
            "data.synthetic.generate=false",
            "log.progress_bar=off",
            f"steps={STEPS}",
            "linear.epochs=1",
            "nodes=2",
            f"run_dir={run_dir}",
            *overrides,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def job_records(stage_dir: Path) -> list[dict]:
    lines = (stage_dir / "slurm" / "jobs.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def wait_progress(stage_dir: Path, what: str, check, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = progress(stage_dir)
        if state and check(state):
            return state
        time.sleep(0.2)
    pytest.fail(f"{stage_dir}: {what} not reached in {timeout} s; progress.json: {progress(stage_dir)}")


def preempt_twice(stage_dir: Path, first: list[str], second: list[str]) -> None:
    """Signal while training, let the requeued run resume and advance, signal again."""
    wait_progress(stage_dir, "step 3 of the first run", lambda p: p["state"] == "running" and p["step"] >= 3)
    subprocess.run(first, check=True)
    stopped = wait_progress(stage_dir, "checkpoint after the 1st signal", lambda p: p["state"] == "preempted")
    wait_progress(
        stage_dir,
        "training again after the 1st requeue",
        lambda p: p["restarts"] == 1 and p["state"] == "running" and p["step"] > stopped["step"],
    )
    subprocess.run(second, check=True)


def weights(path: Path) -> dict:
    flat = {}

    def walk(obj, prefix):
        for key, value in obj.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            elif isinstance(value, torch.Tensor):
                flat[prefix + key] = value

    walk(torch.load(path, weights_only=True), "")
    return flat


def assert_bit_identical(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and len(wa) > 100
    differing = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not differing, f"{len(differing)} tensors differ between {a} and {b}, e.g. {differing[:3]}"


@pytest.fixture(scope="module")
def runs(slurm_cluster, tiny_data, tmp_path_factory):
    """Queue the non-interactive runs at once; cancel whatever is left at the end."""
    root = tmp_path_factory.mktemp("launch-runs")
    broken = root / "failing"
    (broken / "stage1" / "config.yaml").mkdir(parents=True)  # rank 0 cannot write its config: a crash
    submit(tiny_data, root / "all", "stage=all")
    submit(tiny_data, broken, "stage=all")
    submit(
        tiny_data, root / "timeout", "stage=1", "nodes=1", "time=2", "signal_delay_s=60", f"steps={TIME_LIMIT_STEPS}"
    )
    subprocess.run(
        [
            str(REPO / "slurm" / "chain.sh"),
            str(root / "chain"),
            "--nodes=2",
            "--ntasks-per-node=1",
            "--cpus-per-task=1",
            "--time=10",
            "--",
            "preset=tiny",
            "steps=2",
            "linear.epochs=1",
            f"data.root={tiny_data}",
            "data.synthetic.generate=false",
            "log.progress_bar=off",
        ],
        env={**os.environ, "BURN_PYTHON": sys.executable},
        check=True,
        capture_output=True,
    )
    yield root
    ids = [r["job_id"] for f in root.glob("**/slurm/jobs.jsonl") for r in map(json.loads, f.read_text().splitlines())]
    subprocess.run(["scancel", *ids], capture_output=True)


@pytest.fixture(scope="module")
def reference(runs, slurm_cluster) -> Path:
    """Stage 1 of the uninterrupted stage=all run, once it is complete."""
    stage1 = runs / "all" / "stage1"
    assert slurm_cluster.wait(job_records(stage1)[0]["job_id"], timeout=400) == "COMPLETED"
    return stage1


def test_submitit_job_preempted_twice_requeues_itself_and_matches_uninterrupted_run(
    runs, reference, slurm_cluster, tiny_data
):
    stage_dir = runs / "preempted"
    # Queued on hold: the second command then finds it queued however slowly it starts (a 20-step job
    # outran it on a loaded 2-core machine), and the test releases it.
    held = "slurm.sbatch={hold:true}"
    submit(tiny_data, stage_dir, "stage=1", held)
    (record,) = job_records(stage_dir)
    job = record["job_id"]
    again = submit(tiny_data, stage_dir, "stage=1", held)  # the same command while queued: no second writer
    assert f"job {job} already queued" in again and len(job_records(stage_dir)) == 1
    subprocess.run(["scontrol", "release", job], check=True)

    preempt_twice(stage_dir, ["scancel", "--signal=USR2", job], ["scancel", "--signal=USR2", job])

    assert slurm_cluster.wait(job, timeout=300) == "COMPLETED"
    assert slurm_cluster.restarts(job) == 2
    logs = "".join(p.read_text() for p in (stage_dir / "slurm" / job).glob("*_log.out"))
    for restart in (0, 1, 2):
        for rank in (0, 1):
            assert f"job {job} global rank {rank}/2 on node{rank + 1}, restart {restart}," in logs
    requeues = [json.loads(line) for line in (stage_dir / "slurm" / "requeues.jsonl").read_text().splitlines()]
    assert [r["restarts"] for r in requeues] == [0, 1]
    assert progress(stage_dir)["restarts"] == 2
    assert_bit_identical(stage_dir / "stage1_extraction.pth", reference / "stage1_extraction.pth")


def test_sbatch_template_preempted_twice_matches_uninterrupted_run(runs, reference, slurm_cluster, tiny_data):
    stage_dir = runs / "sbatch" / "stage1"
    stage_dir.mkdir(parents=True)
    env = {**os.environ, "BURN_REPO": str(REPO), "BURN_PYTHON": sys.executable}
    job = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "--nodes=2",
            "--ntasks-per-node=1",
            "--cpus-per-task=1",
            "--time=10",
            f"--output={stage_dir}/slurm-%j.out",
            str(REPO / "slurm" / "stage.sbatch"),
            "stage=1",
            "preset=tiny",
            f"steps={STEPS}",
            f"data.root={tiny_data}",
            "data.synthetic.generate=false",
            "log.progress_bar=off",
            f"run_dir={stage_dir}",
        ],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()

    # First only to the batch shell (its trap forwards to the tasks), then to the tasks directly.
    preempt_twice(stage_dir, ["scancel", "--batch", "--signal=USR2", job], ["scancel", "--signal=USR2", job])

    assert slurm_cluster.wait(job, timeout=300) == "COMPLETED"
    assert slurm_cluster.restarts(job) == 2
    batch_log = (stage_dir / f"slurm-{job}.out").read_text()
    assert "received USR2, forwarding" in batch_log
    assert f"batch: job {job} restart 2 on node[1-2] (2 tasks)" in batch_log
    assert_bit_identical(stage_dir / "stage1_extraction.pth", reference / "stage1_extraction.pth")


def test_stage_all_chains_three_two_node_jobs_with_afterok(runs, reference, slurm_cluster, tiny_data):
    root = runs / "all"
    (s1,), (s2,), (lin,) = (job_records(root / d) for d in ("stage1", "stage2", "linear"))
    assert s2["dependency"] == f"afterok:{s1['job_id']}" and lin["dependency"] == f"afterok:{s2['job_id']}"
    assert slurm_cluster.wait(lin["job_id"], timeout=400) == "COMPLETED"
    assert slurm_cluster.state(s2["job_id"]) == "COMPLETED"

    logs = "".join(p.read_text() for p in (root / "stage1" / "slurm" / s1["job_id"]).glob("*_log.*"))
    assert "global_rank=0(2)" in logs and "global_rank=1(2)" in logs  # Submitit's view
    assert "2 ranks x 16 images" in logs  # the trainer's view
    assert list((root / "stage1" / "tb").glob("events.out.tfevents.*"))
    assert (root / "stage2" / "backbone.pth").is_file()
    result = json.loads((root / "linear" / "linear_eval.json").read_text())
    assert 0 <= result["top1"] <= 100

    status = subprocess.run(
        [sys.executable, str(REPO / "launch" / "status.py"), str(root)], capture_output=True, text=True
    )
    assert status.returncode == 0, status.stdout
    assert f"job {lin['job_id']} COMPLETED" in status.stdout and f"top-1 {result['top1']:.2f}%" in status.stdout

    again = submit(tiny_data, root, "stage=all")  # everything complete: nothing is queued
    assert again.count("complete (DONE) - skipped") == 3
    assert len(job_records(root / "stage1")) == 1


def test_chain_sh_runs_the_three_sbatch_stages_with_afterok(runs, slurm_cluster):
    root = runs / "chain"
    (s1,), (s2,), (lin,) = (job_records(root / d) for d in ("stage1", "stage2", "linear"))
    assert s2["dependency"] == f"afterok:{s1['job_id']}" and lin["dependency"] == f"afterok:{s2['job_id']}"
    assert slurm_cluster.wait(lin["job_id"], timeout=400) == "COMPLETED"
    assert "pretrained=" + str(root / "stage2" / "backbone.pth") in Path(lin["log"]).read_text()
    status = subprocess.run(
        [sys.executable, str(REPO / "launch" / "status.py"), str(root)], capture_output=True, text=True
    )
    assert status.returncode == 0 and status.stdout.count("DONE") == 3 and "top-1" in status.stdout


def test_failing_stage1_cancels_its_dependants_and_status_names_it(runs, slurm_cluster):
    root = runs / "failing"
    (s1,), (s2,), (lin,) = (job_records(root / d) for d in ("stage1", "stage2", "linear"))
    assert slurm_cluster.wait(s1["job_id"], timeout=300) == "FAILED"
    assert slurm_cluster.wait(s2["job_id"], timeout=60) == "CANCELLED"
    assert slurm_cluster.wait(lin["job_id"], timeout=60) == "CANCELLED"

    status = subprocess.run(
        [sys.executable, str(REPO / "launch" / "status.py"), str(root)], capture_output=True, text=True
    )
    assert status.returncode == 1
    assert f"FAILED stage1: job {s1['job_id']} FAILED (exit code 1:0)" in status.stdout
    assert f"log: {root}/stage1/slurm/{s1['job_id']}/{s1['job_id']}_0_log.err" in status.stdout
    assert "IsADirectoryError" in status.stdout
    assert f"job {s2['job_id']} never ran: it waited for afterok:{s1['job_id']}" in status.stdout


def test_time_limit_signal_requeues_until_the_stage_finishes(runs, slurm_cluster):
    stage_dir = runs / "timeout"
    (record,) = job_records(stage_dir)
    assert slurm_cluster.wait(record["job_id"], timeout=600) == "COMPLETED"
    assert slurm_cluster.restarts(record["job_id"]) >= 1
    assert (stage_dir / "DONE").exists() and progress(stage_dir)["step"] == TIME_LIMIT_STEPS
    log = "".join(p.read_text() for p in (stage_dir / "slurm" / record["job_id"]).glob("*_log.*"))
    assert "preemption signal (SIGUSR2" in log and "requeued (restart 1 of at most 20)" in log
