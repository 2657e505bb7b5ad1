"""The run directory's layout has one home (burn/runtime/rundir.py): the shell chain agrees with it, the light
modules stay torch-free, the ledgers and the atomic writer behave."""

from __future__ import annotations

import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

from burn.runtime import rundir
from burn.runtime.environment import Environment

REPO = Path(__file__).resolve().parents[1]


def test_chain_sh_uses_the_layout_of_burn_rundir():
    """slurm/chain.sh is shell and spells the names itself: they must be burn/runtime/rundir.py's."""
    text = (REPO / "slurm" / "chain.sh").read_text()
    stage1, stage2, linear = (rundir.stage_dir_name(s) for s in ("1", "2", "linear"))
    expected = [
        f'mkdir -p "$dir/{rundir.SLURM_DIR}"',
        f'--output="$dir/{rundir.SLURM_DIR}/%j.out"',
        f'>>"$dir/{rundir.SLURM_DIR}/{rundir.JOBS_FILE}"',
        f"1) dir=$RUN_DIR/{stage1} ",
        f"2) dir=$RUN_DIR/{stage2} pretrained=$RUN_DIR/{stage1}/{rundir.STAGE_PRODUCTS['1']} ",
        f"linear) dir=$RUN_DIR/{linear} pretrained=$RUN_DIR/{stage2}/{rundir.STAGE_PRODUCTS['2']} ",
        f"[[ -e $dir/{rundir.DONE} ]]",
    ]
    missing = [line for line in expected if line not in text]
    assert not missing, f"slurm/chain.sh no longer matches burn/runtime/rundir.py: {missing}"


def torch_free_modules() -> list[str]:
    """burn.runtime is torch-free by definition (every module in it), plus the launch modules that
    must answer before torch loads (launch.batch: the batch shell's hook, seconds after a fault)."""
    import burn.runtime

    runtime = [f"burn.runtime.{m.name}" for m in pkgutil.iter_modules(burn.runtime.__path__)]
    assert len(runtime) >= 6, runtime
    return ["launch.status", "launch.job_entry", "launch.batch", *runtime]


@pytest.mark.process
@pytest.mark.parametrize("module", torch_free_modules())
def test_light_modules_do_not_import_torch(module):
    """launch/status.py answers fast and a Submitit job records signals before the heavy imports."""
    code = f"import sys, {module}; assert 'torch' not in sys.modules, 'torch imported'"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert out.returncode == 0, out.stderr


@pytest.mark.process
def test_the_stage_runner_imports_no_demo_code():
    """The demo's inputs are made at the entry points (burn/demo/inputs.py): nothing in burn.engine or
    burn.resume loads burn.demo, however deep the import."""
    import burn.engine
    import burn.resume

    modules = [
        f"{package.__name__}.{m.name}"
        for package in (burn.engine, burn.resume)
        for m in pkgutil.iter_modules(package.__path__)
    ]
    code = (
        f"import sys, importlib; [importlib.import_module(m) for m in {modules!r}]; "
        "demo = sorted(m for m in sys.modules if m.startswith('burn.demo')); assert not demo, demo"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert out.returncode == 0, out.stderr
    assert "burn.engine.trainer" in modules and "burn.resume.identity" in modules


def test_ledgers_append_and_read_back(tmp_path):
    ledger = rundir.jobs_file(tmp_path)
    assert rundir.read_jsonl(ledger) == []
    rundir.append_jsonl(ledger, {"job_id": "1"})
    rundir.append_jsonl(ledger, {"job_id": "2", "dependency": "afterok:1"})
    assert ledger == tmp_path / "slurm" / "jobs.jsonl"
    assert [r["job_id"] for r in rundir.read_jsonl(ledger)] == ["1", "2"]


def test_atomic_write_takes_text_bytes_or_a_writer(tmp_path):
    rundir.atomic_write(tmp_path / "a", "text")
    rundir.atomic_write(tmp_path / "b", b"\x00\x01")
    rundir.atomic_write(tmp_path / "c", lambda stream: stream.write(b"streamed"), sync_dir=True)
    rundir.write_json(tmp_path / rundir.PROGRESS, {"step": 3})
    assert (tmp_path / "a").read_text() == "text" and (tmp_path / "b").read_bytes() == b"\x00\x01"
    assert (tmp_path / "c").read_bytes() == b"streamed"
    assert rundir.read_json(tmp_path / rundir.PROGRESS) == {"step": 3}
    assert rundir.read_json(tmp_path / "missing.json") == {}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c", "progress.json"]  # no temp files


def test_a_failed_writer_leaves_the_old_file_and_no_temp(tmp_path):
    (tmp_path / "x").write_text("old")

    def broken(stream):
        stream.write(b"half")
        raise RuntimeError("writer failed")

    with pytest.raises(RuntimeError, match="writer failed"):
        rundir.atomic_write(tmp_path / "x", broken)
    assert [p.name for p in tmp_path.iterdir()] == ["x"] and (tmp_path / "x").read_text() == "old"


def test_files_written_together_are_all_replaced_or_none(tmp_path):
    """atomic_write_all (burn/data/prepare.py's lists): a failure writing the last file replaces none."""
    for name in "abc":
        (tmp_path / name).write_text("old")

    def broken(stream):
        raise OSError("disk failed")

    with pytest.raises(OSError, match="disk failed"):
        rundir.atomic_write_all({tmp_path / "a": "new", tmp_path / "b": b"new", tmp_path / "c": broken})
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {"a": "old", "b": "old", "c": "old"}  # no temps
    rundir.atomic_write_all({tmp_path / "a": "new", tmp_path / "b": b"new"}, sync_dir=True)
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {"a": "new", "b": "new", "c": "old"}


SPELLED_NAMES = ('"compile-cache"', '"samples"')


def test_the_run_directory_names_have_one_home():
    """compile-cache/ and samples/ are spelled in burn/runtime/rundir.py only; their users import them."""
    from burn.data import record
    from burn.engine import gpu

    assert gpu.COMPILE_CACHE is rundir.COMPILE_CACHE and record.SAMPLES_DIR is rundir.SAMPLES_DIR
    sources = sorted((REPO / "burn").rglob("*.py")) + sorted((REPO / "launch").rglob("*.py"))
    spelled = [str(p.relative_to(REPO)) for p in sources if any(n in p.read_text() for n in SPELLED_NAMES)]
    assert spelled == ["burn/runtime/rundir.py"], spelled


def test_environment_precedence_torchrun_then_slurm_then_alone():
    slurm = {
        "SLURM_PROCID": "3",
        "SLURM_NTASKS": "4",
        "SLURM_LOCALID": "1",
        "SLURM_JOB_ID": "77",
        "SLURM_RESTART_COUNT": "2",
        "SLURMD_NODENAME": "n1",
        "SLURM_CPUS_PER_TASK": "6",
    }
    env = Environment.read(slurm)
    assert (env.launcher, env.rank, env.world_size, env.local_rank) == ("slurm", 3, 4, 1)
    assert (env.job_id, env.restarts, env.node, env.cpus, env.ntasks) == ("77", 2, "n1", 6, 4)
    torchrun = Environment.read({**slurm, "RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    assert (torchrun.launcher, torchrun.rank, torchrun.world_size) == ("torchrun", 0, 2)
    assert torchrun.job_id == "77"  # a torchrun inside a SLURM job still requeues that job
    alone = Environment.read({"OMP_NUM_THREADS": "2"})
    assert (alone.launcher, alone.rank, alone.world_size, alone.job_id, alone.restarts, alone.cpus) == (
        "none",
        0,
        1,
        None,
        0,
        2,
    )
    array = Environment.read({**slurm, "SLURM_ARRAY_JOB_ID": "70", "SLURM_ARRAY_TASK_ID": "5"})
    assert array.job_id == "70_5"
