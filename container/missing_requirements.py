"""Print the suite's requirements (setup.cfg's install_requires, plus DALI) that this Python lacks, one per line.

    python3 missing_requirements.py setup.cfg nvidia-dali-cuda130

container/Containerfile installs exactly these: on an NGC PyTorch base that is Hydra, OmegaConf and Submitit,
and the base's own PyTorch, torchvision, DALI and TensorBoard stay; on a plain Python base it is everything.
A package the base pins in its pip constraints file (PIP_CONSTRAINT, NGC's /etc/pip/constraint.txt) is kept as it is
whatever its version (reported on stderr): reinstalling it would fight the base's constraints.
Standard library only, but for the version specifiers: `packaging`, or the copy pip vendors.
"""

from __future__ import annotations

import configparser
import importlib.util
import os
import re
import sys
from importlib import metadata

try:
    from packaging.requirements import Requirement
except ImportError:  # a fresh venv: only pip's copy
    from pip._vendor.packaging.requirements import Requirement


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


#: Where NGC's PyTorch images keep their constraints file (from release 25.03 on).
NGC_CONSTRAINTS = "/etc/pip/constraint.txt"


def constrained_names() -> set[str]:
    """The packages the base's pip constraints pin (PIP_CONSTRAINT, NGC's file)."""
    files = os.environ.get("PIP_CONSTRAINT", "").split() + [NGC_CONSTRAINTS]
    names = set()
    for file in files:
        try:
            lines = open(file.removeprefix("file://")).read().splitlines()
        except OSError:
            continue
        for line in lines:
            match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line)
            if match:
                names.add(canonical(match.group(1)))
    return names


def missing(setup_cfg: str, dali_package: str) -> list[str]:
    parser = configparser.ConfigParser()
    parser.read(setup_cfg)
    lines = [line.split("#")[0].strip() for line in parser["options"]["install_requires"].splitlines()]
    pinned = constrained_names()
    wanted = []
    for line in filter(None, lines):
        requirement = Requirement(line)
        try:
            version = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            wanted.append(line)
            continue
        if requirement.specifier.contains(version, prereleases=True):
            continue
        if canonical(requirement.name) in pinned:
            print(f"keeping the base's {requirement.name} {version} (the suite asks {line})", file=sys.stderr)
            continue
        wanted.append(line)
    if importlib.util.find_spec("nvidia") is None or importlib.util.find_spec("nvidia.dali") is None:
        wanted.append(dali_package)  # NGC's DALI is nvidia-dali-cuda120 and the like: any build will do
    return wanted


if __name__ == "__main__":
    print(" ".join(missing(sys.argv[1], sys.argv[2])))
