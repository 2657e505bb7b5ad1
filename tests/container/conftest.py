"""The image for the container tests, built from container/Containerfile itself with Podman.

`make test-container` runs them (BURN_CONTAINER_TESTS=1); `make test` leaves them out (the `container`
marker) and plain `pytest` skips them with the reason. Podman, runc and mmdebstrap are installed with
apt when missing (root on Debian/Ubuntu, as CI is); elsewhere the tests skip saying what is missing.

No image registry is reachable here: the base is made locally (mmdebstrap: Debian bookworm with python3,
python3-venv and CA certificates; `podman import`), so the build takes the plain-Python branch of the
Containerfile and installs PyTorch, torchvision and DALI from the package index. This machine's pip
configuration (its local indexes and wheel folder, read-only) and CA bundle (a build secret) are handed
to the build: the wheels it already has are reused. The image is tagged with a hash of what goes into
its layers that matter (Containerfile, setup.cfg, the requirement script) and reused by later runs on
the same machine; BURN_CONTAINER_REBUILD=1 builds it again.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.slurm.conftest import slurm_cluster  # noqa: F401  (the local cluster fixture, for these tests too)

REPO = Path(__file__).resolve().parents[2]
BASE_IMAGE = "localhost/burn-test-base:bookworm"
#: What Debian's podman 4.3 needs on this kind of machine (docs/containers.md): crun refuses the hybrid
#: cgroups, raising limits is refused, the network is the host's. The test's settings, not the product's.
PODMAN_GLOBAL = ["--runtime", "runc", "--cgroup-manager", "cgroupfs"]
PODMAN_LIMITS = ["--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"]
#: container.args of the jobs (podman accepts its global options after `run`).
CONTAINER_ARGS = [*PODMAN_GLOBAL, *PODMAN_LIMITS]


def _have(*tools: str) -> list[str]:
    return [t for t in tools if shutil.which(t) is None]


def _install_tools() -> str | None:
    """Install podman, runc and mmdebstrap with apt; None when done, else why not."""
    missing = _have("podman", "runc", "mmdebstrap")
    if not missing:
        return None
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return f"{', '.join(missing)} missing and no root apt-get to install them"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "podman", "runc", "mmdebstrap"]):
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if out.returncode:
            return f"{' '.join(cmd)} failed: {out.stderr.strip()[-300:]}"
    still = _have("podman", "runc", "mmdebstrap")
    return f"still missing after apt-get: {', '.join(still)}" if still else None


def podman(*args: str, timeout: float = 1800, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["podman", *PODMAN_GLOBAL, *args], capture_output=True, text=True, timeout=timeout, check=check
    )


def _image_exists(name: str) -> bool:
    return podman("image", "exists", name, check=False).returncode == 0


def _pip_settings() -> dict[str, str]:
    """This machine's pip configuration (`pip config list`): key -> value."""
    out = subprocess.run(["python3", "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    settings = {}
    for line in out.splitlines():
        key, _, value = line.partition("=")
        settings[key.split(".", 1)[-1]] = value.strip().strip("'\"")
    return settings


def build_command(tag: str, label: str) -> list[str]:
    """`podman build` of container/Containerfile on the local base, with this machine's indexes mounted."""
    pip = _pip_settings()
    cmd = ["build", "-f", str(REPO / "container" / "Containerfile"), "--network", "host", *PODMAN_LIMITS]
    local = [u for u in pip.get("extra-index-url", "").split() if u.startswith("file://")]
    folders = [u.removeprefix("file://") for u in local] + pip.get("find-links", "").split()
    for folder in dict.fromkeys(str(Path(f).parent if f.endswith("/simple") else f) for f in folders):
        if Path(folder).is_dir():
            cmd += ["-v", f"{folder}:{folder}:ro"]
    if local:  # the machine's own wheels first (equal versions: the first index wins), PyPI for the rest
        cmd += ["--build-arg", f"PIP_INDEX_URL={local[0]}"]
        cmd += ["--build-arg", "PIP_EXTRA_INDEX_URL=" + " ".join([*local[1:], "https://pypi.org/simple"])]
    if pip.get("find-links"):
        cmd += ["--build-arg", f"PIP_FIND_LINKS={pip['find-links']}"]
    cert = pip.get("cert") or "/etc/ssl/certs/ca-certificates.crt"
    if Path(cert).is_file():
        cmd += ["--secret", f"id=ca,src={cert}"]
    cmd += ["--build-arg", f"BASE={BASE_IMAGE}", "--build-arg", f"IMAGE_LABEL={label}", "-t", tag, str(REPO)]
    return cmd


def image_tag() -> str:
    digest = hashlib.sha256()
    for name in ("container/Containerfile", "container/missing_requirements.py", "setup.cfg"):
        digest.update((REPO / name).read_bytes())
    return f"localhost/burn-suite:test-{digest.hexdigest()[:12]}"


@pytest.fixture(scope="session")
def podman_image() -> str:
    """The image's tag, built (or reused: same hash) from container/Containerfile; skips with the reason."""
    if os.environ.get("BURN_CONTAINER_TESTS") != "1":
        pytest.skip("container tests build a ~7 GB image: run them with `make test-container`")
    problem = _install_tools()
    if problem:
        pytest.skip(f"container tests need podman, runc and mmdebstrap: {problem}")
    if not _image_exists(BASE_IMAGE):
        base = Path(os.environ.get("TMPDIR", "/var/tmp")) / "burn-test-base.tar"
        started = time.monotonic()
        subprocess.run(
            [
                "mmdebstrap",
                "--variant=minbase",
                "--include=python3,python3-venv,ca-certificates",
                "bookworm",
                str(base),
            ],
            check=True,
            capture_output=True,
            timeout=1200,
        )
        podman("import", str(base), BASE_IMAGE)
        base.unlink()
        print(f"base image {BASE_IMAGE}: {time.monotonic() - started:.0f} s")
    tag = image_tag()
    if os.environ.get("BURN_CONTAINER_REBUILD") == "1" or not _image_exists(tag):
        started = time.monotonic()
        out = podman(*build_command(tag, f"burn-suite-test-{tag.rsplit('-', 1)[-1]}"), check=False, timeout=3600)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        print(f"image {tag}: built in {time.monotonic() - started:.0f} s")
    return tag


def image_stamp(tag: str) -> str:
    """The image's /etc/burn-image line, read from the image itself."""
    return podman("run", "--rm", *PODMAN_LIMITS, "--network", "host", tag, "cat", "/etc/burn-image").stdout.strip()
