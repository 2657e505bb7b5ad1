"""What launch/run.py and launch/submit.py do alike: their short --help, the refusal of renamed keys, and
the composed config made ready to use (closed choices checked, absolute paths, the synthetic-data rule)
before any other check or work.

Kept light (no torch): `--help` answers at once.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from burn.config import CONF_DIR as CONF
from burn.config import EVALUATIONS, PATH_KEYS, RANDOM_BACKBONE, RENAMED_KEYS, absolute_path
from burn.runtime.errors import UsageError, reported_as_one_line
from burn.validation import RUNNABLE_STAGES, check_closed_choices, pretrained_backbone


def print_help_if_asked(text: str, argv: Iterable[str] = ()) -> None:
    """`-h` / `--help`: print the script's own short help and exit 0 (Hydra's config dump stays behind
    `--cfg job`, its own help behind `--hydra-help`)."""
    if any(arg in ("-h", "--help") for arg in (list(argv) or sys.argv[1:])):
        print(text.strip())
        sys.exit(0)


def refuse_renamed_keys(prog: str, argv: Iterable[str] = ()) -> None:
    """A command line that sets a key that moved (burn.config.RENAMED_KEYS): one line naming the key that
    holds the setting now, exit 2. Before Hydra composes, whose error would only say the key is unknown."""
    with reported_as_one_line(prog):
        for arg in list(argv) or sys.argv[1:]:
            key, _, value = arg.partition("=")
            key = key.lstrip("+~")
            if key in RENAMED_KEYS:
                raise UsageError(f"{key} is now {RENAMED_KEYS[key]}: write {RENAMED_KEYS[key]}={value or '...'}")


def quote_image_argv() -> None:
    """Let ``container.image=nvcr.io#nvidia/pytorch:25.01-py3`` through unquoted: Hydra's grammar refuses
    the '#' (launch/container.py quotes the value). In place, before Hydra reads sys.argv."""
    from launch.container import quote_image_override

    sys.argv[1:] = quote_image_override(sys.argv[1:])


def command_line_keys() -> set[str]:
    """The keys the user set on the command line (``+``/``++``/``~`` prefixes dropped)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return set()
    return {o.split("=", 1)[0].lstrip("+~") for o in HydraConfig.get().overrides.task}


def preset_data_root(preset: str):
    """data.root as the preset file sets it (None when the preset sets none)."""
    path = CONF / "preset" / f"{preset}.yaml"
    return OmegaConf.select(OmegaConf.load(path), "data.root") if path.is_file() else None


def apply_synthetic_rule(cfg: DictConfig, given: set[str]) -> None:
    """A preset's ``data.synthetic.generate`` applies at the preset's own data.root only: a mistyped
    data.root must not silently become a freshly generated dataset. Elsewhere generation needs
    ``data.synthetic.generate=true`` on the command line; without it a missing root is an error."""
    spec = cfg.data.synthetic
    if not spec.generate or "data.synthetic.generate" in given or OmegaConf.is_missing(cfg.data, "root"):
        return
    default = preset_data_root(str(cfg.preset))
    if default is not None and absolute_path(default) == absolute_path(cfg.data.root):
        return
    spec.generate = False
    if not Path(absolute_path(cfg.data.root)).exists():
        raise UsageError(
            f"data.root={cfg.data.root} does not exist. preset={cfg.preset} generates its dataset only at its "
            f"own data.root ({default}); add data.synthetic.generate=true to generate one here"
        )


def prepare_config(cfg: DictConfig, stages: Iterable[str] = RUNNABLE_STAGES) -> None:
    """The entry points' first step on a composed config (in place). `stages`: the values ``stage`` may
    take here (launch/submit.py also takes ``all``). The second: the demo's inputs
    (burn.demo.inputs.prepare_demo_inputs), after which a stage config is final."""
    check_closed_choices(cfg, stages)  # a typo in a closed choice fails here, before anything is queued
    apply_synthetic_rule(cfg, command_line_keys())
    for key in PATH_KEYS:  # a job (or a later run) started in another directory reads the same files
        value = OmegaConf.select(cfg, key)  # None when unset or missing (???)
        if value is not None:
            OmegaConf.update(cfg, key, absolute_path(value))
    if str(cfg.stage) in EVALUATIONS and cfg.pretrained and cfg.pretrained != RANDOM_BACKBONE:
        # A stage-2 run directory names its backbone.pth: the config (config.yaml, the identity check,
        # a queued job) holds the file itself.
        cfg.pretrained = pretrained_backbone(cfg.pretrained)
