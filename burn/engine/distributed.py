"""The process group, from whichever launcher started us: SLURM (srun / Submitit), torchrun, or nothing.

The launcher's job is to start N copies of the same command; this module turns its environment into
one small `DistInfo` object and an initialised process group. Everything that needs a rank asks
`DistInfo`, never the environment (read once, by burn/runtime/environment.py).
"""

from __future__ import annotations

import logging
import os
import random
import re
import socket
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from burn.runtime.environment import Environment
from burn.runtime.slurm_cli import first_host

log = logging.getLogger(__name__)

#: Collective (and rendezvous) timeout while a stage starts: the rendezvous, rank 0's checks of the data,
#: building, and the first optimizer step, which may compile the student for minutes.
STARTUP_TIMEOUT_S = 1800.0
#: Collective timeout once the first step is done: longer than any wait between two collectives in the
#: loop (a periodic checkpoint is snapshotted, not written, before the others go on; the k-NN monitor
#: splits its work evenly), short enough that a hung or silently lost peer frees the job's GPUs in
#: minutes. A peer that dies is noticed sooner: gloo's sockets close, srun --kill-on-bad-exit ends the rest.
STEADY_TIMEOUT_S = 300.0

#: Base of the rendezvous port derived from the SLURM job id (several jobs may share a host).
_PORT_BASE = 20000
_PORT_SPAN = 20000


@dataclass(frozen=True)
class DistInfo:
    """All distributed facts of this process."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None
    """"nccl" or "gloo" when a process group is up; None for a lone process."""
    environment: Environment = field(default_factory=Environment)
    """What the launcher said (restart count, SLURM job, CPUs); a lone process's by default."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None


def _first_slurm_host(nodelist: str) -> str:
    """First hostname of a SLURM node list such as ``node[1-2],gpu7``."""
    host = first_host(nodelist)
    if host:
        return host
    # scontrol unavailable: expand the simplest form ourselves.
    first = re.split(r",(?![^\[]*\])", nodelist)[0]
    match = re.match(r"^(.*)\[(\d+)", first)
    return match.group(1) + match.group(2) if match else first


def _set_slurm_rendezvous(environment: Environment) -> None:
    """MASTER_ADDR/PORT for torch's env:// rendezvous of a multi-task SLURM job (unless already set)."""
    if environment.launcher == "slurm" and environment.world_size > 1:
        os.environ.setdefault("MASTER_ADDR", _first_slurm_host(environment.nodelist or "localhost"))
        os.environ.setdefault("MASTER_PORT", str(_PORT_BASE + int(environment.slurm_job_id) % _PORT_SPAN))


class DeviceAssignmentError(RuntimeError):
    """Ranks cannot get one GPU each (NCCL needs exactly one rank per GPU)."""


def cuda_device_index(local_rank: int, device_count: int) -> int:
    """The visible GPU for this local rank: ``cuda:<local_rank>`` when the node shows every rank its
    GPUs; ``cuda:0`` when a task sees exactly one GPU (SLURM's per-task binding gives each task its
    own; :func:`check_one_rank_per_gpu` verifies that after the rendezvous). Refuses the rest."""
    if local_rank < device_count:
        return local_rank
    if device_count == 1:
        return 0
    raise DeviceAssignmentError(
        f"local rank {local_rank} has no GPU of its own: this process sees {device_count} GPUs "
        f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}). Start at most "
        f"{device_count} ranks per node (torchrun --nproc_per_node {device_count}, sbatch "
        f"--ntasks-per-node {device_count}), or hide CUDA (CUDA_VISIBLE_DEVICES=) for a CPU/gloo run."
    )


def check_one_rank_per_gpu(store: dist.Store, rank: int, world: int, gpu_id: str, timeout_s: float = 600.0) -> None:
    """Collective over ``store``: raise DeviceAssignmentError when two ranks got the same GPU.

    ``gpu_id`` names the physical GPU (host + UUID). Run before NCCL starts: two ranks on one GPU
    otherwise fail inside NCCL with an obscure "duplicate GPU" error, or hang."""
    store.set(f"burn/gpu/{rank}", gpu_id)
    store.wait([f"burn/gpu/{r}" for r in range(world)], timedelta(seconds=timeout_s))
    owners: dict = {}
    for r in range(world):
        owners.setdefault(store.get(f"burn/gpu/{r}").decode(), []).append(r)
    shared = {gpu: ranks for gpu, ranks in owners.items() if len(ranks) > 1}
    if shared:
        detail = "; ".join(f"ranks {ranks} on {gpu}" for gpu, ranks in sorted(shared.items()))
        raise DeviceAssignmentError(
            f"several ranks share one GPU ({detail}); NCCL needs one GPU per rank. Start one task per "
            f"GPU (torchrun --nproc_per_node <GPUs>, srun --gpus-per-task=1 or --ntasks-per-node <GPUs>), "
            f"or hide CUDA (CUDA_VISIBLE_DEVICES=) for a CPU/gloo run."
        )


def _gpu_identity(device: torch.device) -> str:
    props = torch.cuda.get_device_properties(device)
    return f"{socket.gethostname()} GPU {getattr(props, 'uuid', device.index)}"


def init_distributed(timeout_s: float = STARTUP_TIMEOUT_S, environment: Environment | None = None) -> DistInfo:
    """Join the process group (nccl with CUDA, gloo without) and pick this rank's device; `environment`
    (default: read now) says which rank of how many this process is."""
    environment = Environment.read() if environment is None else environment
    _set_slurm_rendezvous(environment)
    rank, world, local_rank = environment.rank, environment.world_size, environment.local_rank
    cuda = torch.cuda.is_available()
    device = (
        torch.device("cuda", cuda_device_index(local_rank, torch.cuda.device_count())) if cuda else torch.device("cpu")
    )
    if cuda:
        torch.cuda.set_device(device)
    backend = None
    if world > 1:
        backend = "nccl" if cuda else "gloo"
        # NCCL's watchdog ends this process when a collective fails or times out (3: without a cleanup
        # that can itself hang), instead of leaving it blocked while its peer is gone.
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "3")
        if not dist.is_initialized():
            timeout = timedelta(seconds=timeout_s)
            # The rendezvous init_process_group would do, done first so that the GPU check can use its store.
            store, rank, world = next(dist.rendezvous("env://", rank=rank, world_size=world, timeout=timeout))
            store.set_timeout(timeout)
            if cuda:
                check_one_rank_per_gpu(store, rank, world, _gpu_identity(device), timeout_s)
            # device_id binds the NCCL communicator to this rank's GPU (and creates it eagerly).
            dist.init_process_group(
                backend,
                store=dist.PrefixStore("default_pg", store),
                rank=rank,
                world_size=world,
                timeout=timeout,
                device_id=device if cuda else None,
            )
        log.info(
            "rank %d/%d (local %d) joined %s group at %s:%s",
            rank,
            world,
            local_rank,
            backend,
            os.environ.get("MASTER_ADDR"),
            os.environ.get("MASTER_PORT"),
        )
    return DistInfo(
        rank=rank, world_size=world, local_rank=local_rank, device=device, backend=backend, environment=environment
    )


def set_collective_timeout(info: DistInfo, seconds: float) -> None:
    """The timeout of every later collective of the default group (the phase's: STARTUP_/STEADY_TIMEOUT_S)."""
    if info.distributed:
        from torch.distributed import distributed_c10d

        # torch.distributed.set_timeout since torch 2.7; its private predecessor before.
        set_timeout = getattr(dist, "set_timeout", None) or distributed_c10d._set_pg_timeout
        set_timeout(timedelta(seconds=seconds))


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def wrap_ddp(model: torch.nn.Module, info: DistInfo) -> torch.nn.Module:
    """DistributedDataParallel when there is a process group; the bare module otherwise."""
    if not info.distributed:
        return model
    device_ids = [info.device] if info.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def all_gather_objects(info: DistInfo, obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order (a lone process gets ``[obj]``)."""
    if not info.distributed:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


# ---------------------------------------------------------------------------------------------------
# RNG: seeds derive from the *global* rank (a local rank repeats across nodes).


def seed_everything(seed: int, rank: int) -> None:
    s = seed * 1000 + rank
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)


def rng_state() -> dict:
    """This process's RNG states in a form `torch.load(weights_only=True)` accepts."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
