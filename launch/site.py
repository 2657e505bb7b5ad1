"""A site's own job settings, on both launch paths: slurm.setup (lines before srun), slurm.sbatch (any other
sbatch option), slurm.srun (extra srun arguments), and the container.* keys (launch/container.py).

launch/jobs.py hands them to Submitit; slurm/chain.sh asks this module for them as shell assignments:

    eval "$(python -m launch.site <overrides>)"   # SITE_SBATCH=(...) SITE_SRUN=(...) ... or exit 2, one line

An option the suite sets itself is refused before anything is queued, naming the key that sets it.
Torch-free.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from omegaconf import DictConfig

from burn.runtime.errors import UsageError
from launch.container import ContainerCommand, container_command, pythonpath_line, quote_image_override

#: sbatch options the suite owns -> the key (or rule) that sets them. Short forms map to their long name.
OWNED_OPTIONS = {
    "signal": "signal_delay_s (the warning comes that many seconds before the time limit)",
    "requeue": "max_requeues (stage jobs always requeue themselves)",
    "no-requeue": "max_requeues (max_requeues=0: never requeue)",
    "dependency": "stage=all (the stages chain themselves with afterok)",
    "output": "run_dir (logs go to <run_dir>/slurm/)",
    "error": "run_dir (logs go to <run_dir>/slurm/)",
    "open-mode": "run_dir (logs are appended across requeues)",
    "job-name": "name",
    "nodes": "nodes (slurm/chain.sh: --nodes before the --)",
    "ntasks": "nodes and gpus_per_node (tasks = nodes x gpus_per_node)",
    "ntasks-per-node": "gpus_per_node (slurm/chain.sh: --ntasks-per-node before the --)",
    "gpus-per-node": "gpus_per_node",
    "cpus-per-task": "cpus_per_task (slurm/chain.sh: --cpus-per-task before the --)",
    "time": "time (slurm/chain.sh: --time before the --)",
    "partition": "partition (slurm/chain.sh: --partition before the --)",
    "account": "account",
    "qos": "qos",
    "constraint": "constraint",
    "mem": "mem",
    "array": "a sweep (python launch/submit.py -m ...)",
    "wrap": "the suite's job script",
}
SHORT_OPTIONS = {
    "N": "nodes",
    "n": "ntasks",
    "c": "cpus-per-task",
    "t": "time",
    "p": "partition",
    "A": "account",
    "q": "qos",
    "C": "constraint",
    "o": "output",
    "e": "error",
    "d": "dependency",
    "J": "job-name",
    "a": "array",
}


def sbatch_options(cfg: DictConfig) -> dict[str, object]:
    """slurm.sbatch as sbatch long options (``_`` as ``-``; true: a bare flag; false/null: left out).
    Raises UsageError naming the key for an option the suite sets itself."""
    options: dict[str, object] = {}
    for key, value in (cfg.slurm.sbatch or {}).items():
        name = str(key).lstrip("-")
        name = SHORT_OPTIONS.get(name, name).replace("_", "-")
        if name in OWNED_OPTIONS:
            raise UsageError(f"slurm.sbatch.{key}: the suite sets --{name} itself; set it with {OWNED_OPTIONS[name]}")
        if value is False or value is None:
            continue
        options[name] = True if value is True else str(value)
    return options


def sbatch_words(options: dict[str, object]) -> list[str]:
    """The options as sbatch command-line words (slurm/chain.sh)."""
    return [f"--{name}" if value is True else f"--{name}={value}" for name, value in options.items()]


@dataclass(frozen=True)
class SiteSettings:
    """Everything a job script needs from slurm.* and container.*, checked."""

    sbatch: dict[str, object]
    setup: tuple[str, ...]
    srun: tuple[str, ...]
    container: ContainerCommand

    @property
    def setup_lines(self) -> list[str]:
        """slurm.setup, then (inside a container) the line that puts the mounted checkout on PYTHONPATH."""
        return [*self.setup, *([pythonpath_line()] if self.container.prefix else [])]


def site_settings(cfg: DictConfig, run_dir: str | None = None) -> SiteSettings:
    """slurm.* and container.* of `cfg`, checked (UsageError naming the key)."""
    return SiteSettings(
        sbatch=sbatch_options(cfg),
        setup=tuple(str(line) for line in cfg.slurm.setup),
        srun=tuple(str(arg) for arg in cfg.slurm.srun),
        container=container_command(cfg, run_dir),
    )


def shell_assignments(settings: SiteSettings) -> str:
    """The settings as bash assignments for slurm/chain.sh (arrays of shell words, setup lines as text)."""

    def array(name: str, words: Sequence[str]) -> str:
        return f"{name}=({' '.join(shlex.quote(w) for w in words)})"

    return "\n".join(
        [
            array("SITE_SBATCH", sbatch_words(settings.sbatch)),
            array("SITE_SRUN", [*settings.srun, *settings.container.srun_args]),
            f"SITE_SETUP={shlex.quote(chr(10).join(settings.setup_lines))}",
            f"SITE_CONTAINER={shlex.quote(settings.container.prefix_text())}",
        ]
    )


def main(argv: Sequence[str]) -> int:
    """``python -m launch.site RUN_DIR [overrides...]``: slurm/chain.sh's shell assignments; exit 2 with one
    line naming the key when they cannot be made."""
    from burn.config import compose_config

    if not argv:
        print("usage: python -m launch.site RUN_DIR [key=value ...]", file=sys.stderr)
        return 2
    try:
        cfg = compose_config(quote_image_override(argv[1:]))
        print(shell_assignments(site_settings(cfg, run_dir=argv[0])))
    except Exception as err:  # Hydra's composition errors and ours: the user's overrides
        print(f"slurm/chain.sh: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
