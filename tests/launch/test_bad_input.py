"""Bad input to launch/run.py, launch/submit.py and the SLURM job: exit 2, one line naming the culprit
as the last line of the output, no traceback, nothing written in the run directory.

The checks are burn/validation.py's: the same code before queueing, in run.py and in the job. As root,
the commands run without CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH (setpriv), so file permissions bind
root as they bind a user and the unreadable / unwritable cases are real.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from burn.models.reactnet import ReActNetA
from burn.weights import write_backbone_extraction

REPO = Path(__file__).resolve().parents[2]
AS_A_USER = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []

CASES = [
    "data.root unset",
    "data.root missing",
    "list names a missing file",
    "list names a zero-byte file",
    "global_batch",
    "run dir unwritable",
    "teacher missing",
    "teacher unreadable",
    "teacher empty",
    "teacher is a directory",
    "teacher wrong kind",
    "pretrained missing",
    "pretrained empty",
    "pretrained unreadable",
    "pretrained wrong kind",
    "stage 2 without pretrained",
    "stage unknown",
    "precision fp8",
]


def _root_with_bad_list_entry(tmp: Path, data: Path, name: str, content: bytes | None) -> Path:
    """The tiny dataset (linked) whose train list names one more file: absent, or with `content`."""
    root = tmp / f"data-{name}"
    (root / "train" / "bad").mkdir(parents=True)
    for entry in (data / "train").iterdir():
        (root / "train" / entry.name).symlink_to(entry)
    (root / "val").symlink_to(data / "val")
    shutil.copytree(data / "meta", root / "meta")
    if content is not None:
        (root / "train" / "bad" / "x.JPEG").write_bytes(content)
    with open(root / "meta" / "train.txt", "a") as listing:
        listing.write("bad/x.JPEG\n")
    return root


def bad_inputs(tmp: Path, data: Path) -> dict:
    """case -> (overrides, text the one line must contain)."""
    empty = tmp / "empty.pth"
    empty.write_bytes(b"")
    secret = tmp / "secret.pth"
    torch.save({"x": torch.zeros(1)}, secret)
    secret.chmod(0)
    backbone = tmp / "backbone.pth"  # a real backbone extraction: the wrong kind for a teacher or stage 2
    write_backbone_extraction(backbone, ReActNetA(precision="binary", width=0.25).state_dict())
    readonly = tmp / "readonly"
    readonly.mkdir(mode=0o555)
    missing_file = _root_with_bad_list_entry(tmp, data, "missing", None)
    zero_byte = _root_with_bad_list_entry(tmp, data, "zero", b"")
    return {
        "data.root unset": (["preset=paper", "model.teacher_weights=null"], "data.root is not set"),
        "data.root missing": ([f"data.root={tmp}/no-such-root"], f"data.root={tmp}/no-such-root"),
        "list names a missing file": ([f"data.root={missing_file}"], "line 401: missing file"),
        "list names a zero-byte file": ([f"data.root={zero_byte}"], "line 401: empty (0-byte) file"),
        "global_batch": (["train.global_batch=0"], "train.global_batch=0"),  # any positive one splits on 1 rank
        "run dir unwritable": ([f"run_dir={readonly}/run"], "not a writable directory"),
        "teacher missing": ([f"model.teacher_weights={tmp}/nope.pth"], "nope.pth: no such file"),
        "teacher unreadable": ([f"model.teacher_weights={secret}"], "cannot be opened for reading (Permission denied)"),
        "teacher empty": ([f"model.teacher_weights={empty}"], "the file is empty (0 bytes)"),
        "teacher is a directory": ([f"model.teacher_weights={tmp}"], "is a directory, not a weights file"),
        "teacher wrong kind": ([f"model.teacher_weights={backbone}"], f"model.teacher_weights={backbone}: "),
        "pretrained missing": (["stage=2", f"pretrained={tmp}/nope.pth"], "pretrained="),
        "pretrained empty": (["stage=2", f"pretrained={empty}"], "the file is empty (0 bytes)"),
        "pretrained unreadable": (["stage=linear", f"pretrained={secret}"], "cannot be opened for reading"),
        "pretrained wrong kind": (["stage=2", f"pretrained={backbone}"], f"pretrained={backbone}: "),
        "stage 2 without pretrained": (["stage=2"], "stage=2 needs pretrained="),
        "stage unknown": (["stage=3"], "stage='3'"),
        "precision fp8": (["train.precision=fp8"], "train.precision='fp8'"),
    }


def run(script: str, overrides: list[str], run_dir: Path, tmp: Path) -> subprocess.CompletedProcess:
    """The command as a user types it (data from the tiny dataset unless the case names its own)."""
    args = [] if "preset=paper" in overrides else ["preset=tiny"]
    args += ["data.synthetic.generate=false", "log.progress_bar=off", "steps=2"]
    if not any(o.startswith("run_dir=") for o in overrides):
        args.append(f"run_dir={run_dir}")
    if script == "submit.py":
        args.append("cluster=local")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [*AS_A_USER, sys.executable, str(REPO / "launch" / script), *args, *overrides],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def assert_one_line(out: subprocess.CompletedProcess, prog: str, culprit: str, run_dir: Path) -> None:
    text = out.stdout + out.stderr
    assert out.returncode == 2, text
    errors = [line for line in text.splitlines() if line.startswith(f"{prog}: ")]
    assert len(errors) == 1 and culprit in errors[0], text
    assert out.stderr.strip().splitlines()[-1] == errors[0], "the error is the last line"
    assert "Traceback" not in text
    assert not run_dir.exists(), "a refused run must write nothing"


@pytest.mark.slow
@pytest.mark.parametrize("script", ["run.py", "submit.py"])
@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tiny_data, tmp_path, script, case):
    overrides, culprit = bad_inputs(tmp_path, tiny_data)[case]
    if not any(o.startswith("data.root=") for o in overrides) and "preset=paper" not in overrides:
        overrides = [f"data.root={tiny_data}", *overrides]
    run_dir = tmp_path / "run"
    out = run(script, overrides, run_dir, tmp_path)
    assert_one_line(out, script, culprit, run_dir)
