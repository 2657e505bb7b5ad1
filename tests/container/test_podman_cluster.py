"""Jobs inside the image (container.runtime=podman) on the local 2-node SLURM cluster, both launch paths.

The image is built from container/Containerfile itself (conftest.py). Every task proves it ran inside: it
logs the image's /etc/burn-image line, a file this machine does not have. A slurm.setup line exports the
rendezvous port, which rank 0 logs from inside the container. Stage 1 is preempted once (USR2) on
each path, requeues and resumes; its extraction must equal, bit for bit, an uninterrupted stage 1 in the
same image. Run by `make test-container` (tests/container/conftest.py says why not by `make test`).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from burn.runtime.environment import IMAGE_STAMP
from tests.container.conftest import CONTAINER_ARGS, image_stamp
from tests.slurm.conftest import progress
from tests.slurm.test_launch_cluster import assert_bit_identical, job_records, wait_progress

# The first test's set-up builds the image (5-10 min on 2 busy cores) and runs the stages.
pytestmark = [pytest.mark.container, pytest.mark.slurm, pytest.mark.slow, pytest.mark.timeout(3600)]

REPO = Path(__file__).resolve().parents[2]
STEPS = 20


def stage_overrides(image: str, data: Path, port: int) -> list[str]:
    return [
        "preset=tiny",
        f"data.root={data}",
        "data.synthetic.generate=false",
        "log.progress_bar=off",
        f"steps={STEPS}",
        "linear.epochs=1",
        "container.runtime=podman",
        f"container.image={image}",
        f"container.args={json.dumps(CONTAINER_ARGS)}",
        f'slurm.setup=["export MASTER_PORT={port}"]',
    ]


def submit(*overrides: str) -> str:
    out = subprocess.run(
        [sys.executable, str(REPO / "launch" / "submit.py"), "nodes=2", *overrides],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


@pytest.fixture(scope="module")
def runs(podman_image, slurm_cluster, tiny_data, tmp_path_factory, request):
    """Queue the three runs at once: the reference stage 1, stage=all through Submitit and through chain.sh."""
    assert not Path(IMAGE_STAMP).exists(), f"this machine has {IMAGE_STAMP}: it could not tell inside from outside"
    root = tmp_path_factory.mktemp("container-runs")
    ports = random.sample(range(21000, 29000), 3)
    started = time.monotonic()

    def cancel_leftovers():
        print(f"container runs: {time.monotonic() - started:.0f} s")
        records = root.glob("**/slurm/jobs.jsonl")
        ids = [r["job_id"] for f in records for r in map(json.loads, f.read_text().splitlines())]
        subprocess.run(["scancel", *ids], capture_output=True)

    request.addfinalizer(cancel_leftovers)
    submit(*stage_overrides(podman_image, tiny_data, ports[0]), "stage=1", f"run_dir={root / 'reference'}")
    submit(*stage_overrides(podman_image, tiny_data, ports[1]), "stage=all", f"run_dir={root / 'submitit'}")
    subprocess.run(
        [
            str(REPO / "slurm" / "chain.sh"),
            str(root / "chain"),
            "--nodes=2",
            "--ntasks-per-node=1",
            "--cpus-per-task=1",
            "--time=20",
            "--",
            *stage_overrides(podman_image, tiny_data, ports[2]),
        ],
        env={**os.environ, "BURN_PYTHON": sys.executable},
        check=True,
        capture_output=True,
        cwd=REPO,
    )
    # Both stage 1s run side by side: each is preempted as soon as it trains (a Submitit one straight to the
    # tasks; chain.sh's to the batch shell only, whose trap forwards USR2 to srun, srun to podman, podman
    # into the container), so that both requeue and resume while the reference runs uninterrupted.
    submitit_job = job_records(root / "submitit" / "stage1")[0]["job_id"]
    chain_job = job_records(root / "chain" / "stage1")[0]["job_id"]
    preempt_when_training(
        {
            root / "submitit" / "stage1": ["scancel", "--signal=USR2", submitit_job],
            root / "chain" / "stage1": ["scancel", "--batch", "--signal=USR2", chain_job],
        }
    )
    return {"root": root, "ports": ports, "image": podman_image, "stamp": image_stamp(podman_image)}


@pytest.fixture(scope="module")
def reference(runs, slurm_cluster) -> Path:
    stage1 = runs["root"] / "reference"
    assert slurm_cluster.wait(job_records(stage1)[0]["job_id"], timeout=900) == "COMPLETED"
    return stage1


def preempt_when_training(signals: dict[Path, list[str]], timeout: float = 900) -> None:
    """Send each stage its signal once it trains (step >= 3), then wait until each has checkpointed."""
    pending, deadline = dict(signals), time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for stage_dir, command in list(pending.items()):
            state = progress(stage_dir)
            if state.get("state") == "running" and state.get("step", 0) >= 3:
                subprocess.run(command, check=True)
                del pending[stage_dir]
        time.sleep(0.2)
    assert not pending, f"never saw training in {list(pending)} within {timeout} s"
    for stage_dir in signals:
        wait_progress(
            stage_dir, "checkpoint after the signal", lambda p: p["restarts"] >= 1 or p["state"] == "preempted"
        )


def test_submitit_stage_all_in_podman_preempted_resumes_bit_identical(runs, reference, slurm_cluster):
    root = runs["root"] / "submitit"
    (s1,), (s2,), (lin,) = (job_records(root / d) for d in ("stage1", "stage2", "linear"))
    assert slurm_cluster.wait(lin["job_id"], timeout=900) == "COMPLETED"
    assert slurm_cluster.state(s1["job_id"]) == "COMPLETED" and slurm_cluster.restarts(s1["job_id"]) == 1
    assert progress(root / "stage1")["restarts"] == 1

    stamp, port = runs["stamp"], runs["ports"][1]
    logs = "".join(p.read_text() for p in (root / "stage1" / "slurm" / s1["job_id"]).glob("*_log.*"))
    for restart in (0, 1):
        for rank in (0, 1):  # every task, before and after the requeue, ran inside the image
            assert (
                f"global rank {rank}/2 on node{rank + 1}, restart {restart}, run dir {root / 'stage1'}, image {stamp}"
                in logs
            )
    # The slurm.setup line's port, as rank 0 logs it inside the image, in both runs (rank 1 joined it there).
    assert logs.count(f"rank 0/2 (local 0) joined gloo group at node1:{port}") == 2
    script = next((root / "stage1" / "slurm" / s1["job_id"]).glob("*_submission.sh")).read_text()
    assert f"podman run --rm --network host {' '.join(CONTAINER_ARGS)} -v " in script
    assert "-m launch.batch end --status $?" in script  # the requeue is decided outside the image
    assert json.loads((root / "linear" / "linear_eval.json").read_text())["top1"] >= 0
    assert_bit_identical(root / "stage1" / "stage1_extraction.pth", reference / "stage1_extraction.pth")


def test_chain_sh_stage_all_in_podman_preempted_resumes_bit_identical(runs, reference, slurm_cluster):
    root = runs["root"] / "chain"
    (s1,), (s2,), (lin,) = (job_records(root / d) for d in ("stage1", "stage2", "linear"))
    assert slurm_cluster.wait(lin["job_id"], timeout=900) == "COMPLETED"
    assert slurm_cluster.restarts(s1["job_id"]) == 1

    stamp, port = runs["stamp"], runs["ports"][2]
    log = Path(s1["log"]).read_text()
    assert "received USR2, forwarding" in log and f"batch: job {s1['job_id']} requeued (restart 1 " in log
    for rank in (0, 1):
        assert log.count(f"burn: rank {rank}/2 in image {stamp}") == 2  # both runs, inside the image
    assert log.count(f"rank 0/2 (local 0) joined gloo group at node1:{port}") == 2
    assert "batch: srun --kill-on-bad-exit=1 podman run --rm --network host" in log
    assert (root / "linear" / "linear_eval.json").is_file()
    assert_bit_identical(root / "stage1" / "stage1_extraction.pth", reference / "stage1_extraction.pth")
