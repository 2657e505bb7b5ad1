"""Fixtures shared across the suite: the generated tiny dataset and a stage-runner launcher."""

from __future__ import annotations

import os
import signal
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
    subprocess.run(
        [
            sys.executable,
            "-m",
            "burn.demo.synthetic",
            "--out",
            str(root),
            "--classes",
            "10",
            "--per-class",
            "40",
            "--val-per-class",
            "10",
            "--size",
            "48",
            "--seed",
            "0",
        ],
        check=True,
        cwd=REPO,
    )
    # The tiny preset's model.teacher_weights=auto: train it once here rather than in the first stage
    # that needs it (which may be one rank of several, or a SLURM job with a time limit).
    from burn.demo.auto_teacher import ensure_teacher
    from tests.configs import compose_tiny

    cfg = compose_tiny(f"data.root={root}")
    ensure_teacher(cfg.data, cfg.model.teacher_arch, cfg.auto_teacher)
    return root


@pytest.fixture(autouse=True)
def _restore_stop_signal_handlers():
    """An in-process stage that completes sets USR2/TERM to SIG_IGN (burn.runtime.signal_flags.
    ignore_once_complete, for the real process's shutdown): put the handlers back for the next test."""
    stop_signals = (signal.SIGUSR2, signal.SIGTERM, signal.SIGINT)
    before = {signum: signal.getsignal(signum) for signum in stop_signals}
    yield
    for signum, handler in before.items():
        if signal.getsignal(signum) != handler:
            signal.signal(signum, handler)


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
        return [
            "preset=tiny",
            f"data.root={self.data_root}",
            "data.synthetic.generate=false",
            f"run_dir={run_dir}",
            "log.progress_bar=off",
            *extra,
        ]

    def start(self, overrides: list[str], tag: str, world_size: int = 1) -> list[subprocess.Popen]:
        port = free_port()
        procs = []
        for rank in range(world_size):
            env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
            for key in (
                "RANK",
                "WORLD_SIZE",
                "LOCAL_RANK",
                "MASTER_ADDR",
                "MASTER_PORT",
                "SLURM_PROCID",
                "SLURM_NTASKS",
                "SLURM_JOB_ID",
            ):
                env.pop(key, None)
            if world_size > 1:
                # A gloo group on CPU: with CUDA visible, ranks would need one GPU each (NCCL).
                env.update(
                    RANK=str(rank),
                    WORLD_SIZE=str(world_size),
                    LOCAL_RANK=str(rank),
                    MASTER_ADDR="127.0.0.1",
                    MASTER_PORT=str(port),
                    CUDA_VISIBLE_DEVICES="",
                )
            log = open(self.log_dir / f"{tag}-rank{rank}.log", "w")
            procs.append(
                subprocess.Popen(
                    [sys.executable, str(RUN_PY), *overrides], env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT
                )
            )
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


# --- Every test that starts a process says so --------------------------------------------------------
# `make test-fast` deselects the markers below to stay a quick in-process edit loop. Every process start
# (subprocess, a stage via launch/*.py, spawned ranks, DataLoader or Pool workers) is noted; a test
# without one of the markers fails when it, or a fixture it uses (even one set up earlier for another
# test, such as the session's tiny_data), started one.
PROCESS_MARKERS = ("process", "slow", "slurm")
# subprocess keeps its own reference to fork_exec; multiprocessing calls the module's, or os.fork.
_PROCESS_STARTERS = (
    ("subprocess", "_fork_exec"),
    ("_posixsubprocess", "fork_exec"),
    ("os", "fork"),
    ("os", "posix_spawn"),
    ("os", "posix_spawnp"),
    ("os", "system"),
)
_started: list[str] = []  # process starts since the current test (or fixture) began
_process_fixtures: dict[str, str] = {}  # fixture name -> the first start it made
_patched: list = []
_SKIPPED = pytest.StashKey[bool]()


def _note_process_start(name: str) -> None:
    import traceback

    _started.append(f"{name} called from\n{''.join(traceback.format_stack(limit=14)[:-2])}")


def pytest_configure(config):
    import importlib

    for module_name, attr in _PROCESS_STARTERS:
        module = importlib.import_module(module_name)
        original = getattr(module, attr, None)
        if original is None:
            continue

        def noting(*args, _original=original, _name=f"{module_name}.{attr}", **kwargs):
            _note_process_start(_name)
            return _original(*args, **kwargs)

        _patched.append((module, attr, original))
        setattr(module, attr, noting)


def pytest_unconfigure(config):
    while _patched:
        module, attr, original = _patched.pop()
        setattr(module, attr, original)


@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(fixturedef, request):
    before = len(_started)
    yield
    if len(_started) > before:
        _process_fixtures.setdefault(fixturedef.argname, _started[before])


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _started.clear()
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped:  # a skipped test set up no fixture of its own, or stopped before the point
        item.stash[_SKIPPED] = True
    if call.when != "teardown" or not report.passed or item.stash.get(_SKIPPED, False):
        return
    if any(item.get_closest_marker(name) for name in PROCESS_MARKERS):
        return
    by_fixture = [name for name in item.fixturenames if name in _process_fixtures]
    if by_fixture:
        how = f"its fixture {by_fixture[0]!r} started one: {_process_fixtures[by_fixture[0]]}"
    elif _started:
        how = f"it started {len(_started)}; the first: {_started[0]}"
    else:
        return
    report.outcome = "failed"
    report.longrepr = (
        f"{item.nodeid} starts processes but has none of the markers {', '.join(PROCESS_MARKERS)}: "
        f"add @pytest.mark.process (make test-fast deselects it); {how}"
    )
