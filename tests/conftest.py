"""Fixtures shared across the suite: the generated tiny dataset and a stage-runner launcher."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RUN_PY = REPO / "launch" / "run.py"


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """The tiny preset's generated dataset (10 classes, 48-px JPEGs), made once per session."""
    root = tmp_path_factory.mktemp("data") / "synthetic-tiny"
    subprocess.run([sys.executable, "-m", "burn.data.synthetic", "--out", str(root), "--classes", "10",
                    "--per-class", "40", "--val-per-class", "10", "--size", "48", "--seed", "0"],
                   check=True, cwd=REPO)
    # The tiny preset's model.teacher_weights=auto: train it once here rather than in the first stage
    # that needs it (which may be one rank of several, or a SLURM job with a time limit).
    from hydra import compose, initialize_config_dir

    from burn.config import register_configs
    from burn.tiny_teacher import ensure_teacher

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = compose("config", overrides=["preset=tiny", f"data.root={root}"])
    ensure_teacher(cfg.data, cfg.model.teacher_arch)
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StageCLI:
    """Starts `launch/run.py` the way a launcher does: `world_size` ranks of one gloo group (torchrun's
    variables), logs into `log_dir/<tag>-rank<r>.log`."""

    def __init__(self, data_root: Path, log_dir: Path):
        self.data_root, self.log_dir = data_root, log_dir
        log_dir.mkdir(parents=True, exist_ok=True)

    def overrides(self, run_dir: Path, *extra: str) -> list[str]:
        return ["preset=tiny", f"data.root={self.data_root}", "data.synthetic.generate=false",
                f"run_dir={run_dir}", "log.progress_bar=off", *extra]

    def start(self, overrides: list[str], tag: str, world_size: int = 1) -> list[subprocess.Popen]:
        port = free_port()
        procs = []
        for rank in range(world_size):
            env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
            for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID",
                        "SLURM_NTASKS", "SLURM_JOB_ID"):
                env.pop(key, None)
            if world_size > 1:
                # A gloo group on CPU: with CUDA visible, ranks would need one GPU each (NCCL).
                env.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                           MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), CUDA_VISIBLE_DEVICES="")
            log = open(self.log_dir / f"{tag}-rank{rank}.log", "w")
            procs.append(subprocess.Popen([sys.executable, str(RUN_PY), *overrides], env=env, cwd=REPO,
                                          stdout=log, stderr=subprocess.STDOUT))
        return procs

    @staticmethod
    def wait(procs: list[subprocess.Popen], timeout: float = 600) -> list[int]:
        return [p.wait(timeout=timeout) for p in procs]

    def run(self, overrides: list[str], tag: str, world_size: int = 1) -> list[int]:
        return self.wait(self.start(overrides, tag, world_size))

    def log(self, tag: str, rank: int = 0) -> str:
        return (self.log_dir / f"{tag}-rank{rank}.log").read_text()


@pytest.fixture
def cli(tiny_data: Path, tmp_path: Path) -> StageCLI:
    return StageCLI(tiny_data, tmp_path / "logs")
