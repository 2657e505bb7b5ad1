"""The local test cluster is a real two-node SLURM with accounting (what Submitit relies on)."""

import subprocess

import pytest

pytestmark = pytest.mark.slurm


def test_two_node_srun_reaches_both_nodes_and_is_accounted(slurm_cluster, tmp_path):
    out_file = tmp_path / "hostnames.out"
    job_id = (
        subprocess.run(
            [
                "sbatch",
                "--parsable",
                "--nodes=2",
                "--ntasks-per-node=1",
                "--time=2",
                f"--output={out_file}",
                "--wrap",
                "srun bash -c 'echo $SLURMD_NODENAME $SLURM_PROCID'",
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        .stdout.strip()
        .split(";")[0]
    )

    assert slurm_cluster.wait(job_id, timeout=60) == "COMPLETED"
    lines = sorted(out_file.read_text().split("\n"))
    assert [line for line in lines if line] == ["node1 0", "node2 1"]
    steps = subprocess.run(
        ["sacct", "-n", "-P", "-j", job_id, "-o", "JobID,State,NodeList"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert f"{job_id}|COMPLETED|" in steps
    assert f"{job_id}.0|COMPLETED|node[1-2]" in steps
