"""The identity check (burn/resume/identity.py): what a resume may not change without checkpoint.force=true,
declared by the schema's IDENTITY role; the teacher file by its sha256; old config.yaml files still resume."""

from __future__ import annotations

import logging
import shutil

import pytest
import torch
from omegaconf import OmegaConf

from burn.config import compose_config
from burn.resume.identity import check_resume_config, check_teacher_unchanged
from burn.resume.run_lock import ConfigMismatchError

SHORT = ["steps=3", "checkpoint.every_steps=2", "monitor.knn=false"]


def tiny(*overrides: str):
    return compose_config(["preset=tiny", "data.root=/data/tiny", *overrides])


def as_old_config_yaml(cfg) -> str:
    """config.yaml as the code before the loss section wrote it (loss.* under optim, checkpoint.signal_lead_s)."""
    old = OmegaConf.to_container(cfg)
    old["optim"].update(old.pop("loss"))
    old["checkpoint"]["signal_lead_s"] = 30.0
    return OmegaConf.to_yaml(OmegaConf.create(old))


def test_a_changed_optim_lr_is_refused_in_one_line_naming_the_key_unless_forced(tmp_path, caplog):
    saved = OmegaConf.to_yaml(tiny())
    with pytest.raises(ConfigMismatchError) as refused:
        check_resume_config(saved, tiny("optim.lr=0.002"), tmp_path, force=False)
    message = str(refused.value)
    assert "optim.lr: 0.001 -> 0.002" in message and "checkpoint.force=true" in message
    assert "\n" not in message
    with caplog.at_level(logging.WARNING, logger="burn"):
        check_resume_config(saved, tiny("optim.lr=0.002"), tmp_path, force=True)
    assert "optim.lr: 0.001 -> 0.002" in caplog.text


@pytest.mark.parametrize(
    "stage, override, key",
    [
        ("1", "data.aug.jitter_prob=0.5", "data.aug.jitter_prob"),
        ("2", "model.width=0.5", "model.width"),
        ("1", "optim.warmup_epochs=1", "optim.warmup_epochs"),
        ("linear", "linear.lr=0.1", "linear.lr"),
        ("linear", "data.aug.flip_prob=0", "data.aug.flip_prob"),
        ("finetune", "finetune.lr=0.1", "finetune.lr"),
        ("finetune", "finetune.head_lr_scale=100", "finetune.head_lr_scale"),
        ("finetune", "linear.num_classes=20", "linear.num_classes"),
        ("finetune", "data.train_labeled_list=meta/train_labeled_10pct.txt", "data.train_labeled_list"),
    ],
)
def test_identity_keys_name_the_leaf_that_changed(tmp_path, stage, override, key):
    with pytest.raises(ConfigMismatchError, match=rf"\({key}: "):
        check_resume_config(
            OmegaConf.to_yaml(tiny(f"stage={stage}")), tiny(f"stage={stage}", override), tmp_path, force=False
        )


def test_what_may_change_on_resume_passes(tmp_path):
    saved = OmegaConf.to_yaml(tiny())
    for override in (
        "steps=7",
        "log.every_steps=5",
        "nodes=2",
        "signal_delay_s=90",
        "loss.temperature=0.1",
        "checkpoint.every_steps=3",
        "train.epochs=3",
        "linear.lr=0.1",
        "linear.global_batch=32",
    ):
        check_resume_config(saved, tiny(override), tmp_path, force=False)  # a stage 1 reads no linear.*
    saved = OmegaConf.to_yaml(tiny("stage=linear"))
    check_resume_config(saved, tiny("stage=linear", "optim.lr=0.1", "train.global_batch=64"), tmp_path, force=False)
    check_resume_config(saved, tiny("stage=linear", "finetune.lr=0.1"), tmp_path, force=False)  # not linear's
    saved = OmegaConf.to_yaml(tiny("stage=finetune"))
    check_resume_config(saved, tiny("stage=finetune", "linear.lr=0.1", "finetune.epochs=30"), tmp_path, force=False)


def test_an_old_config_yaml_with_optim_temperature_is_the_same_run(tmp_path):
    old = as_old_config_yaml(tiny())
    assert "temperature: 0.2" in old and "signal_lead_s" in old
    check_resume_config(old, tiny(), tmp_path, force=False)
    with pytest.raises(ConfigMismatchError, match=r"optim.lr: 0.001 -> 0.003"):  # the moved keys do not hide others
        check_resume_config(old, tiny("optim.lr=0.003"), tmp_path, force=False)


def test_a_teacher_file_with_other_content_is_refused_unless_forced(tmp_path):
    saved = {"path": "/t.pth", "sha256": "a" * 64}
    check_teacher_unchanged(saved, {"path": "/t.pth", "sha256": "a" * 64}, tmp_path, 4, force=False)
    check_teacher_unchanged(None, {"path": "/t.pth", "sha256": "b" * 64}, tmp_path, 4, force=False)  # no record
    with pytest.raises(ConfigMismatchError) as refused:
        check_teacher_unchanged(saved, {"path": "/t.pth", "sha256": "b" * 64}, tmp_path, 4, force=False)
    assert (
        f"model.teacher_weights=/t.pth: the teacher file differs from the one the checkpoint of step 4 was "
        f"trained with (sha256 {'a' * 16} -> sha256 {'b' * 16})" in str(refused.value)
    )
    check_teacher_unchanged(saved, {"path": "/t.pth", "sha256": "b" * 64}, tmp_path, 4, force=True)


@pytest.mark.slow
def test_resume_refuses_a_changed_lr_or_teacher_file_unless_forced_and_reads_an_old_config(cli, tmp_path):
    """The stage runner on a real run directory: a stage resumed from its last checkpoint (DONE removed)."""
    from burn.demo.auto_teacher import teacher_path

    teacher = tmp_path / "teacher.pth"
    shutil.copy(teacher_path(tiny(f"data.root={cli.data_root}").data, "resnet18"), teacher)
    run = tmp_path / "run"
    base = cli.overrides(run, "stage=1", f"model.teacher_weights={teacher}", *SHORT)
    assert cli.run(base, "first") == [0], cli.log("first")

    def resume(tag: str, *extra: str) -> int:
        (run / "DONE").unlink(missing_ok=True)
        return cli.run([*base, *extra], tag)[0]

    assert resume("lr", "optim.lr=0.002") == 2
    errors = [line for line in cli.log("lr").splitlines() if line.startswith("run.py: ")]
    assert len(errors) == 1 and "optim.lr: 0.001 -> 0.002" in errors[0], cli.log("lr")
    assert resume("lr-forced", "optim.lr=0.002", "checkpoint.force=true") == 0, cli.log("lr-forced")

    original = teacher.read_bytes()
    state = torch.load(teacher, weights_only=True)
    first = next(k for k, v in state.items() if v.is_floating_point())
    state[first] = state[first] + 1
    torch.save(state, teacher)
    assert resume("teacher", "optim.lr=0.002", "checkpoint.force=false") == 2
    errors = [line for line in cli.log("teacher").splitlines() if line.startswith("run.py: ")]
    assert len(errors) == 1 and "model.teacher_weights=" in errors[0] and " -> sha256 " in errors[0], cli.log("teacher")
    assert resume("teacher-forced", "checkpoint.force=true") == 0, cli.log("teacher-forced")

    # A config.yaml written before loss.* left optim.* resumes as the same run (with the checkpoint's teacher:
    # the forced resume at the last step wrote no newer checkpoint).
    teacher.write_bytes(original)
    saved = OmegaConf.load(run / "config.yaml")
    (run / "config.yaml").write_text(as_old_config_yaml(saved))
    assert resume("old-config") == 0, cli.log("old-config")
    assert "resuming from" in cli.log("old-config") and "different config" not in cli.log("old-config")


def test_a_config_yaml_saved_before_a_key_was_added_resumes_as_that_keys_default(tmp_path):
    """A run saved by a version without optim.teacher_classifier_frozen_epochs (or any key added to an IDENTITY
    section since) did what the key's default does: it resumes, and a value other than the default is refused."""
    old = OmegaConf.to_container(tiny())
    del old["optim"]["teacher_classifier_frozen_epochs"], old["model"]["target_momentum"]
    saved = OmegaConf.to_yaml(OmegaConf.create(old))
    check_resume_config(saved, tiny(), tmp_path, force=False)
    with pytest.raises(ConfigMismatchError, match=r"optim.teacher_classifier_frozen_epochs: 0.0 -> 1.0"):
        check_resume_config(saved, tiny("optim.teacher_classifier_frozen_epochs=1"), tmp_path, force=False)
