"""Pre-flight scan: every kind of bad file is found and reported with its path; clean lists."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from burn.data.check import inspect_image
from burn.data.check import main as check_main
from burn.demo.synthetic import render_image

REPO = Path(__file__).resolve().parents[2]


def make_bad_files(folder: Path, good: Path, garble) -> dict:
    """One bad file of each kind beside copies of a good JPEG; returns {relative path: kind}."""
    data = good.read_bytes()
    bad = {
        "c000/truncated.JPEG": ("truncated", data[: len(data) // 2]),
        "c000/empty.JPEG": ("empty", b""),
        "c001/text.JPEG": ("not-an-image", b"<html>404 not found</html>\n"),
        "c001/garbled.JPEG": ("corrupt", garble(data)),
    }
    for relative, (_, content) in bad.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_bytes(content)
    return {relative: kind for relative, (kind, _) in bad.items()}


@pytest.fixture
def tree(tmp_path, garble) -> tuple:
    """A split folder with 6 good JPEGs and 4 bad files, its list, and the bad files' kinds."""
    root = tmp_path / "train"
    good_paths = []
    for index in range(6):
        relative = f"c00{index % 2}/good{index}.JPEG"
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(render_image(0, index % 2, 0, index, 96)).save(root / relative, quality=90)
        good_paths.append(relative)
    kinds = make_bad_files(root, root / good_paths[0], garble)
    listing = tmp_path / "train.txt"
    order = good_paths[:3] + list(kinds) + good_paths[3:]
    listing.write_text("".join(f"{p} {i % 2}\n" for i, p in enumerate(order)))
    return root, listing, kinds, good_paths


def test_each_kind_is_recognised(tree):
    root, _, kinds, good_paths = tree
    for relative, kind in kinds.items():
        assert inspect_image(str(root / relative)).kind == kind, relative
    assert inspect_image(str(root / good_paths[0])) is None
    assert inspect_image(str(root / "c000" / "absent.JPEG")).kind == "missing"


def test_garbled_jpeg_passes_pil_but_not_the_strict_scan(tree):
    root, _, _, _ = tree
    garbled = str(root / "c001" / "garbled.JPEG")
    assert inspect_image(garbled, strict=False) is None  # what PIL (and DALI) see: nothing wrong
    problem = inspect_image(garbled, strict=True)
    assert problem.kind == "corrupt" and "Corrupt JPEG data" in problem.detail


@pytest.mark.process
def test_cli_reports_every_bad_file_and_writes_a_clean_list(tree, tmp_path):
    root, listing, kinds, good_paths = tree
    clean = tmp_path / "clean.txt"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "burn.data.check",
            "--root",
            str(root),
            "--list",
            str(listing),
            "--write-clean",
            str(clean),
            "--workers",
            "2",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1, result.stderr
    assert "10 files" in result.stdout and "4 bad" in result.stdout
    reported = [line for line in result.stdout.splitlines() if line.startswith("  ")]  # one per bad file
    assert len(reported) == 4
    for relative, kind in kinds.items():
        assert any(str(root / relative) in line and kind in line for line in reported), (relative, result.stdout)
    assert "line 4" in result.stdout  # the list's first bad line
    assert [line.split()[0] for line in clean.read_text().splitlines()] == good_paths
    assert check_main(["--root", str(root), "--list", str(clean), "--workers", "1", "--no-progress"]) == 0


def test_scan_of_class_folders_without_a_list(tree, capsys):
    root, _, kinds, _ = tree
    shutil.rmtree(root / "c001")
    assert check_main(["--root", str(root), "--workers", "1", "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "2 bad" in out and str(root / "c000" / "empty.JPEG") in out and str(root / "c000" / "truncated.JPEG") in out


def test_unusable_list_is_a_usage_error(tmp_path, capsys):
    assert check_main(["--root", str(tmp_path), "--list", str(tmp_path / "none.txt")]) == 2
    assert "none.txt" in capsys.readouterr().err
