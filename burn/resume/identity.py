"""The identity check: a run directory belongs to one experiment, and a resume must not change it.

What counts is declared once, in the schema (burn/config.py, ``role=IDENTITY``): the keys that change
the model or the data, and those a restored checkpoint would silently override (the optimizer state
holds the learning rates, so a new ``optim.lr`` would otherwise be ignored without a word). The teacher
is referenced by path, and its content by the sha256 every pretraining checkpoint records. A change is
refused with one line naming the key (old -> new) unless ``checkpoint.force=true``, which logs it and
goes on. Torch-free: launch/submit.py checks existing stage directories before queueing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from burn.config import IDENTITY, PATH_KEYS, BurnConfig, absolute_path, keys_with_role, load_saved_config
from burn.resume.run_lock import ConfigMismatchError

log = logging.getLogger("burn")

FORCE_HINT = "Use a new run_dir, or checkpoint.force=true to continue anyway."


def _leaves(key: str, value: Any) -> Iterator[tuple[str, Any]]:
    """A section as its dotted leaf keys, so a refusal names the one key that changed."""
    if isinstance(value, dict):
        for name, item in value.items():
            yield from _leaves(f"{key}.{name}", item)
    else:
        yield key, value


def identity(cfg: DictConfig) -> dict[str, Any]:
    """The IDENTITY values of a config that its stage reads, as dotted leaf keys, paths resolved (the
    same folder however it was written: relative, absolute, via a symlink)."""
    cfg = cfg.copy()
    for key in PATH_KEYS:
        path = absolute_path(OmegaConf.select(cfg, key))
        OmegaConf.update(cfg, key, os.path.realpath(path) if path and os.path.isabs(path) else path)
    values: dict[str, Any] = {}
    for key in keys_with_role(IDENTITY, str(cfg.stage)):
        value = OmegaConf.select(cfg, key)
        values.update(
            _leaves(key, OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value)
        )
    return values


def check_resume_config(saved_yaml: str, cfg: DictConfig, run_dir: Path, force: bool) -> None:
    """Refuse to continue a run directory whose saved config.yaml (written by this or an earlier version:
    moved keys are read where they are now, keys it lacks as their schema defaults) differs from `cfg` in
    an IDENTITY key."""
    saved, now = identity(load_saved_config(saved_yaml)), identity(cfg)
    schema = OmegaConf.structured(BurnConfig)
    for key in now.keys() - saved.keys():
        # A key added to an IDENTITY section after the run was saved: its default is what the run did.
        saved[key] = OmegaConf.select(schema, key, default=None)
    changed = [k for k in dict.fromkeys([*saved, *now]) if saved.get(k) != now.get(k)]
    if not changed:
        return
    detail = "; ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in changed)
    if force:
        log.warning("continuing %s despite a changed config (checkpoint.force=true): %s", run_dir, detail)
        return
    raise ConfigMismatchError(f"{run_dir} belongs to a run with a different config ({detail}). {FORCE_HINT}")


def check_teacher_unchanged(
    saved: dict[str, Any] | None, now: dict[str, Any], run_dir: Path, step: int, force: bool
) -> None:
    """The teacher file a checkpoint was trained with (``{"path", "sha256"}``, None for a checkpoint that
    names none) against the one configured now: a file with other content is another teacher."""
    if not saved or saved.get("sha256") == now.get("sha256"):
        return

    def short(digest: str | None) -> str:
        return f"sha256 {digest[:16]}" if digest else "no file"

    detail = (
        f"model.teacher_weights={now.get('path')}: the teacher file differs from the one the checkpoint "
        f"of step {step} was trained with ({short(saved.get('sha256'))} -> {short(now.get('sha256'))})"
    )
    if force:
        log.warning("continuing %s with another teacher (checkpoint.force=true): %s", run_dir, detail)
        return
    raise ConfigMismatchError(f"{run_dir}: {detail}. {FORCE_HINT}")
