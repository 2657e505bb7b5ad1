"""burn/config.py: a docstring for every field, the closed choices and field roles declared in the schema,
and the keys that moved (old names refused naming the new ones; old saved configs read)."""

from __future__ import annotations

import ast
from dataclasses import is_dataclass
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import burn.config as config
from burn.config import IDENTITY, LAUNCH, closed_choices, compose_config, keys_with_role, load_saved_config
from burn.data import loaders
from burn.engine.precision import build_amp
from burn.models.reactnet import PRECISIONS, ReActNetA
from burn.runtime.errors import UsageError
from burn.validation import check_closed_choices
from launch.entry import refuse_renamed_keys

REPO = Path(__file__).resolve().parents[1]


def test_every_schema_field_has_a_docstring():
    tree = ast.parse((REPO / "burn" / "config.py").read_text())
    missing = []
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef) and is_dataclass(getattr(config, n.name))):
        for i, node in enumerate(cls.body):
            if isinstance(node, ast.AnnAssign):
                after = cls.body[i + 1] if i + 1 < len(cls.body) else None
                if not (
                    isinstance(after, ast.Expr)
                    and isinstance(after.value, ast.Constant)
                    and isinstance(after.value.value, str)
                ):
                    missing.append(f"{cls.name}.{node.target.id}")
    assert not missing, f"fields without a docstring: {missing}"


def test_closed_choices_and_roles_come_from_the_schema():
    choices = closed_choices()
    for key in ("stage", "train.precision", "data.backend", "data.device", "cluster"):
        assert key in choices, key
    assert choices["cluster"] == ("auto", "slurm", "local")
    assert {"cluster", "nodes", "time", "signal_delay_s", "run_dir", "dry_run"} <= set(keys_with_role(LAUNCH))
    identity = set(keys_with_role(IDENTITY))
    assert {"model", "data.aug", "optim", "stage", "train.global_batch", "linear.lr"} <= identity
    assert "loss" not in identity and "checkpoint" not in identity and not identity & set(keys_with_role(LAUNCH))


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
def test_a_closed_choice_typo_names_the_key_and_the_choices(key, typo):
    cfg = compose_config(["preset=tiny", f"{key}={typo}"])
    with pytest.raises(UsageError, match=rf"^{key}='{typo}': choose one of {', '.join(closed_choices()[key][:2])}"):
        check_closed_choices(cfg, config.STAGES)


def test_stage_arrives_as_an_int_from_the_command_line_and_is_accepted():
    cfg = compose_config(["preset=tiny", "stage=1"])
    check_closed_choices(cfg)
    assert cfg.stage == "1"
    refused = r"stage='all': choose one of 1, 2, linear, finetune \(stage=all is for launch/submit"
    with pytest.raises(UsageError, match=refused):
        check_closed_choices(compose_config(["stage=all"]))


def test_renamed_keys_are_refused_naming_the_new_key(capsys):
    for old, new in (("optim.temperature", "loss.temperature"), ("checkpoint.signal_lead_s", "signal_delay_s")):
        with pytest.raises(SystemExit) as stop:
            refuse_renamed_keys("run.py", ["preset=tiny", f"{old}=30"])
        assert stop.value.code == 2
        assert capsys.readouterr().err.strip() == f"run.py: {old} is now {new}: write {new}=30"
    refuse_renamed_keys("run.py", ["loss.temperature=0.1"])  # the new names pass


def test_an_old_saved_config_reads_with_the_moved_keys():
    new = compose_config(["preset=tiny", "loss.temperature=0.5"])
    old = OmegaConf.to_container(new)
    old["optim"].update(old.pop("loss"))
    old["checkpoint"]["signal_lead_s"] = 30.0
    upgraded = load_saved_config(OmegaConf.to_yaml(OmegaConf.create(old)))
    assert upgraded.loss.temperature == 0.5 and "temperature" not in upgraded.optim
    assert "signal_lead_s" not in upgraded.checkpoint and upgraded.signal_delay_s == new.signal_delay_s
    assert OmegaConf.to_container(upgraded) == OmegaConf.to_container(new)


def test_every_closed_choice_is_read_from_the_schema_and_implemented():
    """The closed sets are declared once (burn/config.py); the code acting on each value reads them there
    and has an implementation for every one."""
    choices = config.closed_choices()
    assert choices["train.precision"] is config.TRAIN_PRECISIONS
    assert choices["data.backend"] is config.DATA_BACKENDS and choices["data.device"] is config.DATA_DEVICES
    assert choices["linear.precision"] is config.STUDENT_PRECISIONS
    for precision in config.TRAIN_PRECISIONS:
        build_amp(precision, torch.device("cpu"))
    assert tuple(PRECISIONS) == config.STUDENT_PRECISIONS
    with pytest.raises(ValueError, match="binary, binact, fp"):
        ReActNetA("float")
    assert loaders.pipeline_on_gpu("cpu") is False  # auto and gpu: tests/data/test_loaders.py (they load CUDA)
    with pytest.raises(ValueError, match="auto, gpu or cpu"):
        loaders.pipeline_on_gpu("tpu")
    assert loaders._backend(OmegaConf.create({"backend": "torchvision"}))
    with pytest.raises(ValueError, match="dali, torchvision"):
        loaders._backend(OmegaConf.create({"backend": "pil"}))
