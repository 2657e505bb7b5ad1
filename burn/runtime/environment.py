"""What the launcher told this process: the one reader of the torchrun / SLURM / Submitit variables.

An entry point (the stage runner, a Submitit task, launch/submit.py) reads the environment once with
:meth:`Environment.read` and hands the result on; nothing else looks at ``RANK``, ``SLURM_PROCID``,
``SLURM_RESTART_COUNT`` and the like. Torch-free, so the light entry modules can use it.

Rank precedence (as the process group needs it): torchrun's ``RANK``/``WORLD_SIZE`` (also what a
caller that sets them explicitly uses), else SLURM's ``SLURM_PROCID``/``SLURM_NTASKS`` inside a job,
else a lone process (rank 0 of 1).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

#: Set (to 1) by the batch shell of a stage job that decides requeues after srun (launch/batch.py):
#: slurm/stage.sbatch and Submitit's script from launch/jobs.py. Without it (a hydra-submitit-launcher
#: sweep job) global rank 0 requeues a preempted job itself.
BATCH_DECIDES = "BURN_BATCH_DECIDES"


def _int(value: str | None) -> int | None:
    return int(value) if value not in (None, "") else None


def _tasks_per_job(env: Mapping[str, str]) -> int | None:
    nodes, per_node = _int(env.get("SLURM_NNODES")), env.get("SLURM_NTASKS_PER_NODE", "")
    return nodes * int(per_node) if nodes and per_node.isdigit() else None


@dataclass(frozen=True)
class Environment:
    """The launcher's facts about this process, read once."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launcher: str = "none"
    """"torchrun" (RANK/WORLD_SIZE set), "slurm" (a SLURM task) or "none" (a lone process)."""
    slurm_job_id: str | None = None
    """SLURM_JOB_ID: set inside any SLURM job (also a torchrun inside one)."""
    array_job_id: str | None = None
    array_task_id: str | None = None
    restarts: int = 0
    """SLURM_RESTART_COUNT: how often SLURM requeued this job (time-outs and preemptions)."""
    node: str | None = None
    """SLURMD_NODENAME: the SLURM node this task runs on."""
    nodelist: str | None = None
    """SLURM_JOB_NODELIST, e.g. ``node[1-2]``: where the rendezvous host is found."""
    ntasks: int | None = None
    """SLURM_NTASKS: the tasks of the job (the world size of a SLURM-started stage); in the batch shell,
    the job's tasks (SLURM_NNODES x SLURM_NTASKS_PER_NODE when SLURM_NTASKS is not set)."""
    cpus: int | None = None
    """CPU threads this rank may use: SLURM_CPUS_PER_TASK, else OMP_NUM_THREADS; None: not limited."""
    submitit_executor: bool = False
    """SUBMITIT_EXECUTOR is set: a Submitit job (or a hydra-submitit-launcher sweep job)."""
    submitit_folder: bool = False
    """SUBMITIT_FOLDER is set: this process is a Submitit job unpickling its callable."""
    batch_decides: bool = False
    """:data:`BATCH_DECIDES` is set: the batch shell, not this task, requeues the job."""

    @classmethod
    def read(cls, env: Mapping[str, str] | None = None) -> Environment:
        """The facts from ``env`` (default: this process's environment)."""
        env = os.environ if env is None else env
        if "RANK" in env and "WORLD_SIZE" in env:
            launcher, rank, world, local = (
                "torchrun",
                int(env["RANK"]),
                int(env["WORLD_SIZE"]),
                int(env.get("LOCAL_RANK", 0)),
            )
        elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env and "SLURM_JOB_ID" in env:
            launcher, rank, world, local = (
                "slurm",
                int(env["SLURM_PROCID"]),
                int(env["SLURM_NTASKS"]),
                int(env.get("SLURM_LOCALID", 0)),
            )
        else:
            launcher, rank, world, local = "none", 0, 1, 0
        return cls(
            rank=rank,
            world_size=world,
            local_rank=local,
            launcher=launcher,
            slurm_job_id=env.get("SLURM_JOB_ID"),
            array_job_id=env.get("SLURM_ARRAY_JOB_ID"),
            array_task_id=env.get("SLURM_ARRAY_TASK_ID"),
            restarts=int(env.get("SLURM_RESTART_COUNT", 0)),
            node=env.get("SLURMD_NODENAME"),
            nodelist=env.get("SLURM_JOB_NODELIST"),
            ntasks=_int(env.get("SLURM_NTASKS")) or _tasks_per_job(env),
            cpus=_int(env.get("SLURM_CPUS_PER_TASK") or env.get("OMP_NUM_THREADS")),
            submitit_executor="SUBMITIT_EXECUTOR" in env,
            submitit_folder="SUBMITIT_FOLDER" in env,
            batch_decides=env.get(BATCH_DECIDES) == "1",
        )

    @property
    def job_id(self) -> str | None:
        """The id ``scontrol requeue`` takes: ``<array>_<task>`` inside an array job, else SLURM_JOB_ID."""
        if self.array_job_id and self.array_task_id:
            return f"{self.array_job_id}_{self.array_task_id}"
        return self.slurm_job_id

    @property
    def in_submitit_job(self) -> bool:
        """Inside a Submitit job on SLURM (e.g. a hydra-submitit-launcher sweep task)."""
        return self.submitit_executor and self.slurm_job_id is not None


#: Written by container/Containerfile: the image's label, build time and torch version.
IMAGE_STAMP = "/etc/burn-image"


def image_stamp(path: str = IMAGE_STAMP) -> str | None:
    """The burn-suite image this process runs in (its /etc/burn-image line), None outside one."""
    try:
        with open(path) as stamp:
            return stamp.readline().strip() or None
    except OSError:
        return None
