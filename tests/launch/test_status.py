"""launch/status.py on run directories laid out as the stage runner and launch/jobs.py write them."""

import json
from pathlib import Path

import pytest

from launch import status


def write_stage(path: Path, progress: dict, done: bool = False, results: dict | None = None) -> Path:
    path.mkdir(parents=True)
    (path / "progress.json").write_text(json.dumps(progress))
    if done:
        (path / "DONE").touch()
    if results:
        (path / "linear_eval.json").write_text(json.dumps(results))
    return path


def progress(stage: str, state: str, step: int, **extra) -> dict:
    return {
        "stage": stage,
        "state": state,
        "step": step,
        "total_steps": 40,
        "epoch": 0,
        "restarts": 2,
        "loss": 1.23456,
        "lambda": 0.25,
        "lr": 1e-3,
        "images_per_s": 321.0,
        "updated": 0,
        **extra,
    }


def test_reports_every_stage_of_an_all_run(tmp_path, capsys):
    write_stage(tmp_path / "stage1", progress("1", "done", 40), done=True)
    write_stage(tmp_path / "stage2", progress("2", "running", 12))
    write_stage(tmp_path / "linear", progress("linear", "done", 40), done=True, results={"top1": 41.5, "top5": 88.25})

    assert status.main([str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"run dir {tmp_path}"
    stage1, stage2, linear = lines[1:4]
    assert stage1.startswith("stage1   DONE") and "step 40/40" in stage1 and "restarts 2" in stage1
    assert "running" in stage2 and "step 12/40" in stage2
    assert "loss 1.2346" in stage2 and "lambda 0.250" in stage2 and "img/s 321.0" in stage2
    assert "top-1 41.50% top-5 88.25%" in linear


@pytest.mark.process
def test_names_the_failed_job_and_its_log(tmp_path, capsys):
    stage = write_stage(tmp_path / "stage1", progress("1", "failed", 3))
    log_dir = stage / "slurm" / "999999999"
    log_dir.mkdir(parents=True)
    (log_dir / "999999999_0_log.out").write_text("starting\n")
    (log_dir / "999999999_1_log.err").write_text("Traceback (most recent call last):\nValueError: boom\n")
    (stage / "slurm" / "jobs.jsonl").write_text(
        json.dumps({"job_id": "999999999", "stage": "1", "log_dir": str(log_dir)}) + "\n"
    )

    assert status.main([str(stage)]) == 1
    out = capsys.readouterr().out
    assert "job 999999999" in out
    assert "FAILED stage1: job 999999999" in out
    assert f"log: {log_dir / '999999999_1_log.err'}" in out
    assert "| ValueError: boom" in out


def test_a_directory_without_stages_is_an_error(tmp_path, capsys):
    assert status.main([str(tmp_path)]) == 2
    assert "holds no stage run" in capsys.readouterr().err


def test_shows_the_ranks_and_their_changes_as_one_run(tmp_path, capsys):
    changes = [{"step": 8, "from": 2, "to": 1}, {"step": 30, "from": 1, "to": 2}]
    write_stage(tmp_path / "stage1", progress("1", "running", 33, world_size=2, world_size_changes=changes))
    write_stage(tmp_path / "stage2", progress("2", "running", 3, world_size=4, world_size_changes=[]))
    assert status.main([str(tmp_path)]) == 0
    stage1, stage2 = capsys.readouterr().out.splitlines()[1:3]
    assert "ranks 2->1->2 (resized at steps 8, 30)" in stage1 and "step 33/40" in stage1
    assert "ranks 4 " in stage2 and "resized" not in stage2


def test_a_stage_that_failed_under_run_py_shows_its_error_line(tmp_path, capsys):
    stage = write_stage(
        tmp_path / "stage1",
        progress("1", "failed", 7, error="cannot decode image /d/x.JPEG (line 3 of /d/meta/train.txt): truncated"),
    )
    assert status.main([str(stage)]) == 1
    out = capsys.readouterr().out
    assert "FAILED stage1: the stage at step 7" in out
    assert "  error: cannot decode image /d/x.JPEG (line 3 of /d/meta/train.txt): truncated" in out
    assert "  log: none kept (started with launch/run.py" in out


def test_a_folder_of_runs_lists_every_run_under_it(tmp_path, capsys):
    runs = tmp_path / "runs"
    write_stage(runs / "burn" / "stage1", progress("1", "done", 40), done=True)
    write_stage(runs / "burn" / "stage2", progress("2", "running", 5))
    write_stage(runs / "sweep" / "optim.lr=0.001" / "stage1", progress("1", "failed", 3, error="boom"))
    write_stage(runs / "tiny-linear", progress("linear", "done", 40), done=True, results={"top1": 30.0, "top5": 80.0})

    assert status.main([str(runs)]) == 1  # one of them failed
    out = capsys.readouterr().out
    headers = [line for line in out.splitlines() if line.startswith("run dir ")]
    assert headers == [
        f"run dir {runs / 'burn'}",
        f"run dir {runs / 'sweep' / 'optim.lr=0.001'}",
        f"run dir {runs / 'tiny-linear'}",
    ]
    assert "FAILED stage1: the stage at step 3" in out and "  error: boom" in out and "top-1 30.00%" in out


def test_requeues_are_shown_with_their_causes_oldest_first_a_refused_one_left_out(tmp_path):
    (tmp_path / "progress.json").write_text(json.dumps({"state": "running", "step": 12, "world_size": 2}))
    ledger = tmp_path / "slurm" / "requeues.jsonl"
    ledger.parent.mkdir()
    records = [
        {"job_id": "7", "restarts": 0, "step": 8},  # written before causes were recorded: a preemption
        {"job_id": "7", "restarts": 1, "step": 8, "cause": "peer rank died at step 9"},
        {"job_id": "7", "restarts": 2, "step": 12, "cause": "preempted"},
        {"job_id": "7", "restarts": 3, "step": 12, "cause": "preempted"},
        {"job_id": "7", "restarts": 4, "step": 12, "cause": "preempted", "refused": "crash loop"},
    ]
    ledger.write_text("".join(json.dumps(r) + "\n" for r in records))
    stage = status.read_stage(tmp_path)
    assert status.requeues_note(stage.requeues) == "requeued 4x: preempted; peer rank died at step 9; preempted (x2)"
    assert "requeued 4x: preempted; peer rank died" in status.stage_line(stage)


def test_a_folder_of_finetune_runs_ends_with_the_grid_table_and_marks_the_best_point(tmp_path, capsys):
    """The points of an lr grid (a sweep names each folder by its overrides): one table, the best by
    validation top-1 marked, a point still running listed with its state."""
    scores = {"finetune.lr=0.001": 31.0, "finetune.lr=0.01": 47.5, "finetune.lr=0.1": None}
    for point, top1 in scores.items():
        stage = write_stage(
            tmp_path / f"data.root=_d,{point},pretrained=random" / "finetune",
            progress("finetune", "done" if top1 is not None else "running", 40),
            done=top1 is not None,
        )
        if top1 is not None:
            lr = float(point.split("=")[1])
            results = {
                "top1": top1,
                "top5": 90.0,
                "labeled_images": 40,
                "pretrained": "random",
                "recipe": {"lr": lr, "head_lr_scale": 1.0, "weight_decay": 1e-4},
            }
            (stage / "finetune_eval.json").write_text(json.dumps(results))

    assert status.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "finetune grid: 3 points" in out and "2 complete" in out and "optimistic" in out
    rows = {line.split(" | ")[0].lstrip("| "): line for line in out.splitlines() if line.startswith("| finetune.lr")}
    assert set(rows) == set(scores)  # the overrides the points share are left out of their names
    assert rows["finetune.lr=0.01"].endswith("| 47.50 | 90.00 | <- best |")
    assert (
        rows["finetune.lr=0.001"].endswith("| 31.00 | 90.00 |  |")
        and "| 0.001 | 1.0 | 0.0001 | random | 40 |" in rows["finetune.lr=0.001"]
    )
    assert rows["finetune.lr=0.1"].endswith("| - | - | running |")
    assert f"best point: {tmp_path / 'data.root=_d,finetune.lr=0.01,pretrained=random' / 'finetune'}" in out
