"""An opt-in record of what the training loaders read (``log.sample_ids=true``), for debugging and for
the tests that prove the data contract: every rank appends one JSON line per micro-batch,

    {"step": 7, "rank": 1, "world_size": 2, "first": 224, "indices": [...]}

(the optimizer step the micro-batch went into, the global stream position of its first sample and the
sample indices, one per position from ``first`` on) to ``<run_dir>/samples/<attempt>-rank<r>.jsonl``,
one file per rank and start of the stage.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from burn.runtime.rundir import SAMPLES_DIR


class SampleRecord:
    """This rank's record file for one start of the stage (``attempt``: the same id on every rank)."""

    def __init__(self, run_dir: Path, *, rank: int, world_size: int, attempt: str):
        directory = Path(run_dir) / SAMPLES_DIR
        directory.mkdir(parents=True, exist_ok=True)
        self.rank, self.world_size = rank, world_size
        self._file = open(directory / f"{attempt}-rank{rank:04d}.jsonl", "a", buffering=1)  # line-buffered

    def write(self, step: int, positions: np.ndarray, indices: np.ndarray) -> None:
        self._file.write(
            json.dumps(
                {
                    "step": step,
                    "rank": self.rank,
                    "world_size": self.world_size,
                    "first": int(positions[0]),
                    "indices": [int(i) for i in indices],
                }
            )
            + "\n"
        )

    def close(self) -> None:
        self._file.close()


def read_records(run_dir: Path) -> list[dict]:
    """Every line of every record file of a run directory, oldest start first."""
    lines = []
    for path in sorted((Path(run_dir) / SAMPLES_DIR).glob("*.jsonl")):
        lines += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return lines


def samples_by_position(run_dir: Path) -> dict[int, int]:
    """{global stream position: sample index} of everything the run read. A position read twice (by
    two ranks, or again after a resume) raises ValueError naming it."""
    read: dict[int, int] = {}
    for record in read_records(run_dir):
        for offset, index in enumerate(record["indices"]):
            position = record["first"] + offset
            if position in read:
                raise ValueError(
                    f"stream position {position} was read twice (again at step {record['step']} "
                    f"by rank {record['rank']} of {record['world_size']})"
                )
            read[position] = index
    return read
