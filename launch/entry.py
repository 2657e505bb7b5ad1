"""What launch/run.py and launch/submit.py do alike: their short --help, and the composed config made
ready to use (absolute paths, the synthetic-data rule) before any check or work.

Kept light (no torch): `--help` answers at once.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterable, Set

from omegaconf import DictConfig, OmegaConf

from burn.config import PATH_KEYS, absolute_path
from burn.errors import UsageError

CONF = Path(__file__).resolve().parents[1] / "conf"


def print_help_if_asked(text: str, argv: Iterable[str] = ()) -> None:
    """`-h` / `--help`: print the script's own short help and exit 0 (Hydra's config dump stays behind
    `--cfg job`, its own help behind `--hydra-help`)."""
    if any(arg in ("-h", "--help") for arg in (list(argv) or sys.argv[1:])):
        print(text.strip())
        sys.exit(0)


def command_line_keys() -> Set[str]:
    """The keys the user set on the command line (``+``/``++``/``~`` prefixes dropped)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return set()
    return {o.split("=", 1)[0].lstrip("+~") for o in HydraConfig.get().overrides.task}


def preset_data_root(preset: str):
    """data.root as the preset file sets it (None when the preset sets none)."""
    path = CONF / "preset" / f"{preset}.yaml"
    return OmegaConf.select(OmegaConf.load(path), "data.root") if path.is_file() else None


def apply_synthetic_rule(cfg: DictConfig, given: Set[str]) -> None:
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
            f"own data.root ({default}); add data.synthetic.generate=true to generate one here")


def prepare_config(cfg: DictConfig) -> None:
    """The entry points' first step on a composed config (in place)."""
    apply_synthetic_rule(cfg, command_line_keys())
    for key in PATH_KEYS:  # a job (or a later run) started in another directory reads the same files
        value = OmegaConf.select(cfg, key)  # None when unset or missing (???)
        if value is not None:
            OmegaConf.update(cfg, key, absolute_path(value))
