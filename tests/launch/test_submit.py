"""launch/submit.py before anything is queued: stage plans, validation errors, the sbatch script."""

import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from launch import jobs, submit
from tests.configs import compose_tiny

REPO = Path(__file__).resolve().parents[2]


def test_stage_all_plans_three_chained_stages_under_one_parent(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    planned = submit.plan_stages(compose_tiny("stage=all", "data.root=data/x"))
    root = tmp_path / "runs" / "tiny"
    assert [c.stage for c in planned] == ["1", "2", "linear"]
    assert [c.run_dir for c in planned] == [str(root / d) for d in ("stage1", "stage2", "linear")]
    assert [c.pretrained for c in planned] == [
        None,
        str(root / "stage1" / "stage1_extraction.pth"),
        str(root / "stage2" / "backbone.pth"),
    ]
    assert planned[0].data.root == str(tmp_path / "data" / "x")  # jobs may start elsewhere
    assert OmegaConf.is_config(planned[0]) and planned[0].train.per_gpu_batch == 16


def test_stage_all_length_applies_to_pretraining_only():
    planned = submit.plan_stages(compose_tiny("stage=all", "steps=5", "epochs=3"))
    assert [(c.steps, c.epochs) for c in planned] == [(5, 3.0), (5, 3.0), (None, None)]  # linear: linear.epochs
    assert submit.plan_stages(compose_tiny("stage=linear", "steps=5"))[0].steps == 5  # one stage: as given


def test_chain_finetune_adds_fine_tuning_of_stage_2s_backbone_after_linear(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    planned = submit.plan_stages(
        compose_tiny("stage=all", "chain_finetune=true", "steps=5", "model.teacher_weights=null")
    )
    root = tmp_path / "runs" / "tiny"
    assert [c.stage for c in planned] == ["1", "2", "linear", "finetune"]
    finetune = planned[-1]
    assert finetune.run_dir == str(root / "finetune")
    assert finetune.pretrained == str(root / "stage2" / "backbone.pth")  # stage 2's, not linear's product
    assert (finetune.steps, finetune.epochs) == (None, None)  # finetune.epochs, as linear keeps linear.epochs
    # Fine-tuning may start from the backbone stage 2 of the same submission will write.
    submit.validate(compose_tiny("stage=all", "chain_finetune=true"), planned, 1, with_data=False)
    alone = submit.plan_stages(compose_tiny("stage=finetune", "pretrained=random"))
    assert [(c.stage, c.run_dir) for c in alone] == [("finetune", str(root / "finetune"))]


def test_single_stage_run_dir_is_the_stage_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert submit.plan_stages(compose_tiny("stage=2"))[0].run_dir == str(tmp_path / "runs/tiny/stage2")
    given = submit.plan_stages(compose_tiny("stage=1", f"run_dir={tmp_path}/mine"))[0]
    assert given.run_dir == str(tmp_path / "mine")


def test_stage_all_refuses_pretrained():
    with pytest.raises(submit.LaunchConfigError, match="pretrained= cannot be combined with stage=all"):
        submit.plan_stages(compose_tiny("stage=all", "pretrained=/x.pth"))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["stage=1", "nodes=3", "train.global_batch=40"],
            r"train.global_batch=40 cannot be split over 3 ranks \(nodes x gpus_per_node\): no per-GPU batch up to "
            r"train.per_gpu_batch=16",
        ),
        (
            ["stage=linear", "gpus_per_node=3", "linear.global_batch=64"],
            r"linear.global_batch=64 cannot be split over 3 ranks",
        ),
    ],
)
def test_batch_must_split_over_all_ranks(overrides, message):
    cfg = compose_tiny(*overrides)
    with pytest.raises(submit.UsageError, match=message):
        submit.check_batch(submit.plan_stages(cfg)[0], cfg.nodes * cfg.gpus_per_node)


def test_a_smaller_per_gpu_batch_keeps_the_global_batch():
    cfg = compose_tiny("stage=1", "nodes=2", "train.global_batch=48")  # 12 per GPU x 2 ranks x 2 accumulation
    submit.check_batch(submit.plan_stages(cfg)[0], cfg.nodes * cfg.gpus_per_node)


def test_signal_lead_must_fit_in_the_time_limit():
    with pytest.raises(submit.LaunchConfigError, match="signal_delay_s=120 must lie between 0 and the time"):
        submit.check_launch_keys(compose_tiny("time=2", "signal_delay_s=120"))


@pytest.mark.parametrize(
    "key, typo",
    [
        ("stage", "3"),
        ("train.precision", "fp61"),
        ("data.backend", "dlai"),
        ("data.device", "gpu0"),
        ("cluster", "slrum"),
    ],
)
def test_a_closed_choice_typo_fails_when_the_config_is_composed(tmp_path, monkeypatch, key, typo):
    monkeypatch.setattr(submit, "plan_stages", lambda cfg: pytest.fail("planned despite the typo"))
    cfg = compose_tiny(f"{key}={typo}", f"run_dir={tmp_path}/run")
    with pytest.raises(submit.UsageError, match=rf"^{key}='{typo}': choose one of "):
        submit.launch(cfg)
    assert not (tmp_path / "run").exists()


@pytest.mark.process
def test_a_closed_choice_typo_on_the_command_line_is_one_line_exit_2(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "launch" / "submit.py"),
            "preset=tiny",
            "stage=all",
            "cluster=slrum",
            f"run_dir={tmp_path}/run",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines()[-1] == "submit.py: cluster='slrum': choose one of auto, slurm, local"
    assert not (tmp_path / "run").exists()


def test_a_complete_stage_with_another_identity_is_refused_before_queueing(tmp_path):
    """submit.py skips a complete stage: its saved config must still be this command's (data.aug here)."""
    planned = submit.plan_stages(compose_tiny("stage=1", f"run_dir={tmp_path}"))
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(planned[0]))
    (tmp_path / "DONE").touch()
    submit.check_identity(planned[0])
    changed = submit.plan_stages(compose_tiny("stage=1", f"run_dir={tmp_path}", "data.aug.blur_prob=0.5"))[0]
    with pytest.raises(submit.UsageError, match=r"data.aug.blur_prob: 0.0 -> 0.5"):
        submit.check_identity(changed)
    changed.checkpoint.force = True
    submit.check_identity(changed)


@pytest.mark.process
def test_weight_files_are_checked_before_queueing(tmp_path, tiny_data):
    data = [f"data.root={tiny_data}", "data.synthetic.generate=false", f"run_dir={tmp_path}/run"]
    cfg = compose_tiny("stage=2", f"pretrained={tmp_path}/missing.pth", *data)
    with pytest.raises(submit.UsageError, match=r"pretrained=.*missing.pth: no such file"):
        submit.validate(cfg, submit.plan_and_prepare(cfg)[0], 1)
    odd = tmp_path / "odd.pth"
    torch.save({"foo": torch.zeros(2)}, odd)
    cfg = compose_tiny("stage=1", f"model.teacher_weights={odd}", *data)
    with pytest.raises(submit.UsageError, match=r"model.teacher_weights=.*odd.pth: .*unknown weights layout"):
        submit.validate(cfg, submit.plan_and_prepare(cfg)[0], 1)


@pytest.mark.process
def test_a_missing_dataset_list_is_reported_with_its_key(tmp_path, tiny_data):
    cfg = compose_tiny(
        "stage=all",
        f"data.root={tiny_data}",
        "data.synthetic.generate=false",
        "data.val_list=meta/nope.txt",
        f"run_dir={tmp_path}/run",
    )
    with pytest.raises(submit.LaunchConfigError, match=r"nope.txt does not exist \(data.val_list"):
        submit.validate(cfg, submit.plan_and_prepare(cfg)[0], 1)


@pytest.mark.process
def test_pretraining_with_the_knn_monitor_checks_the_labelled_lists(tmp_path, tiny_data):
    data = [
        f"data.root={tiny_data}",
        "data.synthetic.generate=false",
        "data.val_list=meta/nope.txt",
        f"run_dir={tmp_path}/run",
    ]
    cfg = compose_tiny("stage=1", *data)  # the k-NN monitor's queries come from data.val_list
    with pytest.raises(submit.LaunchConfigError, match=r"nope.txt does not exist \(data.val_list"):
        submit.validate(cfg, submit.plan_and_prepare(cfg)[0], 1)
    cfg = compose_tiny("stage=1", "monitor.knn=false", *data)
    submit.validate(cfg, submit.plan_and_prepare(cfg)[0], 1)  # without it, stage 1 reads the train list only


@pytest.mark.process
def test_cli_rejects_a_bad_config_with_exit_2_and_queues_nothing(tmp_path, tiny_data):
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "launch" / "submit.py"),
            "preset=tiny",
            "stage=all",
            "nodes=3",
            "train.global_batch=40",
            f"data.root={tiny_data}",
            "data.synthetic.generate=false",
            f"run_dir={tmp_path}/run",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out.stderr
    assert "train.global_batch=40" in out.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.usefixtures("srun_on_path")
def test_sbatch_script_requeues_signals_and_chains(tmp_path):
    cfg = submit.plan_stages(
        compose_tiny(
            "stage=2",
            "nodes=2",
            "gpus_per_node=2",
            "time=2",
            "signal_delay_s=60",
            "partition=debug",
            f"run_dir={tmp_path}",
        )
    )[0]
    executor = jobs.build_executor(cfg, tmp_path, "afterok:123", use_gpus=False)
    script = jobs.sbatch_script(executor)  # what sbatch receives
    for line in (
        "--requeue",
        "--signal=USR2@60",
        "--dependency=afterok:123",
        "--nodes=2",
        "--ntasks-per-node=2",
        "--time=2",
        "--partition=debug",
        "--cpus-per-task=1",
    ):
        assert f"#SBATCH {line}\n" in script
    assert "gpus" not in script  # a CPU cluster: tasks, not GPUs
    assert "PYTHONPATH" not in script  # the installed package is importable wherever the job starts
    assert f"{tmp_path}/slurm/%j/%j_%t_log.out" in script
    with_gpus = jobs.build_executor(cfg, tmp_path, None, use_gpus=True)
    assert "#SBATCH --gpus-per-node=2\n" in jobs.sbatch_script(with_gpus)
    # The job runs Submitit's entry on the pickled StageJob in the job's folder, with this interpreter.
    command = f"{sys.executable} -u -m submitit.core._submit {tmp_path}/slurm/%j"
    assert re.search(rf"^srun --unbuffered --output .* {re.escape(command)}$", script, re.M), script


def test_the_dry_run_uses_submitits_private_calls_as_they_are():
    """jobs.sbatch_script is the suite's one use of Submitit's private API: the names and signature it
    calls. A Submitit that renames or changes them fails here (and in the test below)."""
    from submitit.slurm.slurm import SlurmExecutor

    make = inspect.getattr_static(SlurmExecutor, "_make_submission_file_text")
    assert list(inspect.signature(make).parameters) == ["self", "command", "uid"]
    assert isinstance(inspect.getattr_static(SlurmExecutor, "_submitit_command_str"), property)


@pytest.mark.process
def test_the_dry_run_script_is_what_a_submit_hands_sbatch(tmp_path):
    """The dry run's script against a real `executor.submit` whose `sbatch` (a fake on PATH) keeps the
    script it was given: byte for byte the same, so the dry run shows what would be queued."""
    cfg = submit.plan_stages(compose_tiny("stage=1", "nodes=2", "partition=debug", f"run_dir={tmp_path / 'run'}"))[0]
    bin_dir, received = tmp_path / "bin", tmp_path / "received.sh"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f'#!/bin/bash\ncp "$1" {received}\necho "Submitted batch job 4242"\n')
    (bin_dir / "sbatch").chmod(0o755)
    executor = jobs.build_executor(cfg, Path(cfg.run_dir), "afterok:123", use_gpus=True)
    dry_run = jobs.sbatch_script(executor)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
        job = executor.submit(print, "hello")
    assert job.job_id == "4242"
    assert received.read_text() == dry_run
    assert "#SBATCH --dependency=afterok:123\n" in dry_run and "#SBATCH --gpus-per-node=1\n" in dry_run
