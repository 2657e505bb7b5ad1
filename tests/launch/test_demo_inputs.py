"""The demo's inputs are made once, at the entry (launch/run.py, launch/submit.py): a stage config is
complete before it is checked, saved or queued, and ``model.teacher_weights=auto`` works on a small
folder of one's own images (of mixed sizes) and refuses a large one before reading any image."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from omegaconf import OmegaConf

import burn.demo.auto_teacher
from burn.demo.auto_teacher import teacher_path
from launch import submit, task
from tests.configs import compose_tiny
from tests.conftest import free_port
from tests.demo.conftest import write_garbage_folder, write_mixed_folder

REPO = Path(__file__).resolve().parents[2]

#: A 2-step stage 1 on a handful of images, with a 1-epoch auto teacher: seconds, not minutes.
SMALL = [
    "steps=2",
    "train.global_batch=8",
    "train.per_gpu_batch=8",
    "auto_teacher.epochs=1",
    "auto_teacher.batch=8",
    "monitor.knn_k=5",
    "log.progress_bar=off",
]


def _env() -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_JOB_ID"):
        env.pop(key, None)
    return env


def _fake_teacher(trained: list):
    def fake_train(data_cfg, arch, out, **_):  # a real torchvision state dict, without the training
        trained.append(out)
        torch.save(torchvision.models.resnet18(num_classes=2).state_dict(), out)
        return {"val_top1": 0.0, "epochs": 0, "seconds": 0.0}

    return fake_train


@pytest.mark.slow
def test_stage1_with_the_auto_teacher_on_a_folder_of_mixed_image_sizes(tmp_path):
    """`preset=tiny data.root=<your class folders>`: JPEGs and PNGs of five sizes (one grey), no lists."""
    mine = write_mixed_folder(tmp_path / "mine")
    run_dir = tmp_path / "run"
    out = subprocess.run(
        [sys.executable, str(REPO / "launch" / "run.py"), "stage=1", "preset=tiny", f"data.root={mine}",
         f"run_dir={run_dir}", *SMALL],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    teacher = tmp_path / "mine-teacher-resnet18-32px-ssl.pth"  # beside the folder, not in it
    assert f"training a label-free (self-supervised) resnet18 teacher on {mine}" in out.stdout + out.stderr
    report = json.loads(teacher.with_suffix(".json").read_text())
    assert (report["train_images"], report["num_classes"], report["load_side"], report["epochs"]) == (20, 2, 48, 1)
    saved = OmegaConf.load(run_dir / "config.yaml")
    assert saved.model.teacher_weights == str(teacher)  # resolved at the entry, saved as it is
    assert json.loads((run_dir / "progress.json").read_text())["total_steps"] == 2
    assert (run_dir / "DONE").exists() and (run_dir / "stage1_extraction.pth").is_file()
    assert sorted(p.name for p in mine.iterdir()) == ["train", "val"]  # the user's folder is left as it was


@pytest.mark.slow
def test_two_ranks_of_run_py_generate_the_data_and_train_the_teacher_once(tmp_path):
    """`python launch/run.py stage=1 preset=tiny` in a fresh directory, as every task of
    slurm/stage.sbatch (or torchrun) runs it: each rank prepares the demo's inputs at the entry, the
    dataset is generated once, one rank trains the teacher while the other waits, then they train."""
    port = free_port()
    overrides = [
        "stage=1",
        "preset=tiny",
        "data.synthetic.per_class=6",
        "data.synthetic.val_per_class=2",
        "monitor.knn=false",
        *SMALL,
    ]
    procs = []
    for rank in range(2):
        env = {**_env(), "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank)}
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), CUDA_VISIBLE_DEVICES="")
        log = open(tmp_path / f"rank{rank}.log", "w")
        procs.append(
            subprocess.Popen(
                [sys.executable, str(REPO / "launch" / "run.py"), *overrides],
                cwd=tmp_path,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
    codes = [p.wait(timeout=900) for p in procs]
    logs = [(tmp_path / f"rank{rank}.log").read_text() for rank in range(2)]
    assert codes == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert sum(log.count("training a label-free (self-supervised) resnet18 teacher") for log in logs) == 1, logs
    data = tmp_path / "data" / "synthetic-tiny"
    assert len((data / "meta" / "train.txt").read_text().splitlines()) == 60  # 10 classes x 6
    assert [p.name for p in data.parent.iterdir() if p.name.startswith(".")] == []  # no leftover scratch copy
    run_dir = tmp_path / "runs" / "tiny" / "stage1"
    teacher = data.parent / "synthetic-tiny-teacher-resnet18-32px-ssl.pth"
    assert OmegaConf.load(run_dir / "config.yaml").model.teacher_weights == str(teacher)
    assert (run_dir / "DONE").exists()


@pytest.mark.process
@pytest.mark.parametrize("script", ["run.py", "submit.py"])
def test_an_over_size_folder_is_refused_with_one_line_before_any_image_is_read(tmp_path, script):
    """The files are garbage: had any been read, the error would be a decoding error (exit 1), not this."""
    garbage = write_garbage_folder(tmp_path / "garbage")
    out = subprocess.run(
        [sys.executable, str(REPO / "launch" / script), "stage=1", "preset=tiny", f"data.root={garbage}",
         f"run_dir={tmp_path}/run", "cluster=local", "auto_teacher.max_images=10"],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.strip().splitlines()[-1] == (
        f"{script}: model.teacher_weights=auto: data.root={garbage} holds 16 labelled images (train_labeled 12 "
        "+ val 4), more than auto_teacher.max_images=10: the auto teacher is for small image folders and holds "
        "every image in memory; pass a teacher file (model.teacher_weights=FILE), or raise auto_teacher.max_images"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["garbage"]  # no run dir, no teacher, no lock


def test_a_dry_run_makes_no_input_and_checks_the_rest(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(burn.demo.auto_teacher, "train_teacher", lambda *a, **k: pytest.fail("trained a teacher"))
    mine = write_mixed_folder(tmp_path / "mine")
    cfg = compose_tiny("stage=all", f"data.root={mine}", f"run_dir={tmp_path}/run", "cluster=local", "dry_run=true")
    submit.launch(cfg)
    assert "nothing queued, run or written" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]
    odd_batch = ["train.global_batch=9", "train.per_gpu_batch=4", "gpus_per_node=2"]
    with pytest.raises(submit.UsageError, match=r"train.global_batch=9"):  # the other checks still run
        submit.launch(
            compose_tiny("stage=all", f"data.root={mine}", f"run_dir={tmp_path}/run", "dry_run=true", *odd_batch)
        )


def test_a_queued_job_carries_the_resolved_teacher_path(tmp_path, monkeypatch):
    """On SLURM the demo's inputs are made at submit time: every queued stage config names the teacher
    file (and the data) it reads; the job's start-up only checks them."""
    trained, queued = [], []
    monkeypatch.setattr(burn.demo.auto_teacher, "train_teacher", _fake_teacher(trained))
    monkeypatch.setattr(submit, "pick_cluster", lambda choice, world_size: "slurm")
    monkeypatch.setattr(submit.jobs, "submit_stages", lambda planned, max_requeues: queued.extend(planned) or [])
    mine = write_mixed_folder(tmp_path / "mine")
    submit.launch(compose_tiny("stage=all", f"data.root={mine}", f"run_dir={tmp_path}/run"))
    expected = str(teacher_path(compose_tiny(f"data.root={mine}").data, "resnet18"))
    assert trained == [Path(expected)]  # once, for the three stages
    assert [c.stage for c in queued] == ["1", "2", "linear"]
    for stage_cfg in queued:  # what the job unpickles: launch/job_entry.py -> task.stage_config
        carried = task.stage_config(OmegaConf.to_yaml(stage_cfg, resolve=True))
        assert carried.model.teacher_weights == expected and carried.data.root == str(mine)
