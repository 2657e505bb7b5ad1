"""The tiny preset's config as the tests compose it: one home for the overrides that every in-process
stage of the suite repeats (later overrides win, so a test can change any of them)."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from burn.config import CONF_DIR, register_configs


def compose_paper(*overrides: str) -> DictConfig:
    """`launch/run.py OVERRIDES`'s config (the paper preset), composed in this process."""
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return compose("config", overrides=list(overrides))


def compose_tiny(*overrides: str) -> DictConfig:
    """`launch/run.py preset=tiny OVERRIDES`'s config, composed in this process."""
    return compose_paper("preset=tiny", *overrides)


def tiny_stage(data_root: Path, run_dir: Path, *overrides: str) -> DictConfig:
    """An in-process stage on an already generated dataset: no generation, no progress bar, and no
    periodic checkpoint unless a test asks for one."""
    return compose_tiny(
        f"data.root={data_root}",
        "data.synthetic.generate=false",
        f"run_dir={run_dir}",
        "log.progress_bar=off",
        "checkpoint.every_steps=100",
        *overrides,
    )
