"""A plain (non-editable) install works on its own: the console scripts find the Hydra config tree
(conf/, package data) from any directory, without a checkout on sys.path."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: What setup.cfg builds from (README.md is the long description).
SOURCES = ("setup.cfg", "pyproject.toml", "README.md", "burn", "launch")


@pytest.mark.slow
@pytest.mark.process
def test_a_non_editable_install_submits_from_another_directory(tmp_path):
    # A copy of the sources: a build/ folder left in the checkout would be installed as it is.
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, src / name)
    # The system site-packages hold torch & co. (and an editable burn-suite): only the package is installed.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=300)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    bin_dir = venv / "bin"
    pip = [str(bin_dir / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run([*pip, "--root-user-action=ignore", str(src)], check=True, env=env, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def run(*cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)

    where = run(
        str(bin_dir / "python"),
        "-c",
        "import burn, burn.config, launch; print(burn.__file__, burn.config.CONF_DIR, launch.__file__)",
    )
    assert where.returncode == 0, where.stderr
    site = Path(
        run(str(bin_dir / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))").stdout.strip()
    )
    assert site.is_relative_to(venv)
    for path in where.stdout.split():  # the venv's installed copy runs: not the checkout, not /work/main
        assert Path(path).is_relative_to(site), where.stdout
    assert (site / "burn" / "conf" / "preset" / "tiny.yaml").is_file()

    helped = run(str(bin_dir / "burn-submit"), "--help")
    assert helped.returncode == 0 and "dry_run=true" in helped.stdout, helped.stderr
    planned = run(str(bin_dir / "burn-submit"), "preset=tiny", "stage=all", "cluster=local", "dry_run=true")
    assert planned.returncode == 0, planned.stderr
    assert "burn-suite dry run: stage=all here; nothing queued" in planned.stdout
    for stage in ("stage1", "stage2", "linear"):
        assert str(elsewhere / "runs" / "tiny" / stage) in planned.stdout
    assert list(elsewhere.iterdir()) == []  # a dry run writes nothing
