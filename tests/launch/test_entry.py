"""What launch/run.py and launch/submit.py do alike before any work: a short --help of their own, the
synthetic-data rule (a preset generates only at its own data.root), and paths compared resolved."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from burn.runtime.errors import UsageError
from launch.entry import apply_synthetic_rule
from tests.configs import compose_tiny

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.process
@pytest.mark.parametrize("script", ["run.py", "submit.py"])
def test_help_is_short_and_says_what_the_command_does(script):
    out = subprocess.run(
        [sys.executable, str(REPO / "launch" / script), "--help"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and out.stdout.startswith(f"usage: python launch/{script}"), out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) < 45, len(lines)
    for part in ("Stages:", "Keys people change:", "Exit status:", "Examples:", "--cfg job"):
        assert part in out.stdout
    assert ("stage=all" in out.stdout) == ("dry_run=true" in out.stdout) == (script == "submit.py")


@pytest.mark.process
def test_the_config_dump_stays_behind_cfg_job():
    out = subprocess.run(
        [sys.executable, str(REPO / "launch" / "submit.py"), "--cfg", "job", "preset=tiny"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and "global_batch: 32" in out.stdout, out.stderr


def test_a_preset_generates_its_data_at_its_own_root_only(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    default = compose_tiny()
    apply_synthetic_rule(default, set())  # data/synthetic-tiny, the preset's own: generated when absent
    assert default.data.synthetic.generate
    same = compose_tiny(f"data.root={tmp_path}/data/synthetic-tiny")  # the same folder, written otherwise
    apply_synthetic_rule(same, {"data.root"})
    assert same.data.synthetic.generate
    typo = compose_tiny(f"data.root={tmp_path}/data/synthetic-tinny")
    with pytest.raises(
        UsageError,
        match=r"synthetic-tinny does not exist. preset=tiny generates its dataset only "
        r"at its own data.root \(data/synthetic-tiny\); add data.synthetic.generate=true",
    ):
        apply_synthetic_rule(typo, {"data.root"})
    asked = compose_tiny(f"data.root={tmp_path}/mine", "data.synthetic.generate=true")
    apply_synthetic_rule(asked, {"data.root", "data.synthetic.generate"})
    assert asked.data.synthetic.generate  # asked for explicitly
    (tmp_path / "theirs").mkdir()
    existing = compose_tiny(f"data.root={tmp_path}/theirs")
    apply_synthetic_rule(existing, {"data.root"})  # an existing folder is used as it is, never written into
    assert not existing.data.synthetic.generate


@pytest.mark.process
@pytest.mark.parametrize("script", ["run.py", "submit.py"])
def test_a_mistyped_data_root_is_refused_not_generated(tmp_path, script):
    typo = tmp_path / "data" / "synthetic-tinny"
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "launch" / script),
            "preset=tiny",
            "stage=1",
            f"data.root={typo}",
            f"run_dir={tmp_path}/run",
            "cluster=local",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith(f"{script}: data.root={typo} does not exist.")
    assert not typo.exists() and not (tmp_path / "run").exists()


@pytest.mark.slow
def test_readme_sequence_make_demo_then_run_stage1(tiny_data, tmp_path):
    """`make demo` (submit.py preset=tiny stage=all cluster=local, shortened) then README's
    `python launch/run.py stage=1 preset=tiny` in the same directory: the same run, not a refusal."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "synthetic-tiny").symlink_to(tiny_data)  # the preset's relative data.root
    teacher = "synthetic-tiny-teacher-resnet18-32px-ssl.pth"
    (tmp_path / "data" / teacher).symlink_to(tiny_data.parent / teacher)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    demo = subprocess.run(
        [
            sys.executable,
            str(REPO / "launch" / "submit.py"),
            "preset=tiny",
            "stage=all",
            "cluster=local",
            "steps=2",
            "linear.epochs=1",
            "compare_baseline=false",
            "monitor.knn=false",
            "log.progress_bar=off",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert demo.returncode == 0, demo.stdout + demo.stderr[-3000:]
    again = subprocess.run(
        [sys.executable, str(REPO / "launch" / "run.py"), "stage=1", "preset=tiny"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert "is already complete; nothing to do" in again.stdout


def test_the_identity_check_compares_resolved_paths(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from burn.engine.stage import check_resume_config
    from burn.resume.run_lock import ConfigMismatchError

    (tmp_path / "data" / "synthetic-tiny").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    saved = OmegaConf.to_yaml(compose_tiny(f"data.root={tmp_path}/data/synthetic-tiny"))  # as submit.py wrote it
    for same in ("data/synthetic-tiny", f"{tmp_path}/link/synthetic-tiny", "./data/../data/synthetic-tiny"):
        check_resume_config(saved, compose_tiny(f"data.root={same}"), tmp_path / "run", force=False)
    with pytest.raises(ConfigMismatchError, match="data.root"):
        check_resume_config(saved, compose_tiny("data.root=data/other"), tmp_path / "run", force=False)
