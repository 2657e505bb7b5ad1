"""Bad input to launch/run.py: exit 2, one line naming the culprit, no traceback, nothing written.

The checks are burn/validation.py's, the same launch/submit.py runs before queueing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def _cases(tmp: Path, data: Path) -> dict:
    empty = tmp / "empty.pth"
    empty.write_bytes(b"")
    zero_data = tmp / "zero-data"
    (zero_data / "a").mkdir(parents=True)
    (zero_data / "a" / "x.jpg").write_bytes(b"")
    readonly = tmp / "readonly"
    readonly.mkdir(mode=0o555)
    return {
        "stage": (["stage=3"], "stage='3'"),
        "precision": (["train.precision=fp8"], "train.precision='fp8'"),
        "batch": (["train.global_batch=0"], "train.global_batch=0"),
        "teacher missing": ([f"model.teacher_weights={tmp}/nope.pth"], "model.teacher_weights="),
        "pretrained empty": (["stage=2", f"pretrained={empty}"], "the file is empty"),
        "zero-byte image": ([f"data.root={zero_data}", "data.train_list=null"], "empty (0-byte) file"),
        "missing root": ([f"data.root={tmp}/no-such-root"], "data.root="),
        "unwritable run dir": ([f"run_dir={readonly}/run"], "not a writable directory"),
    }


@pytest.mark.slow
@pytest.mark.parametrize("case", ["stage", "precision", "batch", "teacher missing", "pretrained empty",
                                  "zero-byte image", "missing root", "unwritable run dir"])
def test_bad_input_is_one_line_and_exit_2(cli, tmp_path, case):
    if case == "unwritable run dir" and os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    overrides, culprit = _cases(tmp_path, cli.data_root)[case]
    run_dir = tmp_path / "run"
    args = cli.overrides(run_dir, *overrides)
    if any(o.startswith("run_dir=") for o in overrides):
        args = [a for a in args if a != f"run_dir={run_dir}"]
    assert cli.run(args, "bad") == [2], cli.log("bad")
    text = cli.log("bad")
    errors = [line for line in text.splitlines() if line.startswith("run.py: ")]
    assert len(errors) == 1 and culprit in errors[0], text
    assert "Traceback" not in text
    assert not run_dir.exists(), "a refused run must write nothing"
