"""How every task of a stage job enters the image: the container.* launch keys as srun arguments and a
command prefix, the same for launch/jobs.py (Submitit) and slurm/chain.sh (through launch/site.py).

    pyxis      srun --container-image=IMAGE --container-mounts=... --container-workdir=CHECKOUT  python3 ...
    apptainer  srun  apptainer exec --nv --bind ... --pwd CHECKOUT IMAGE.sif  python3 ...
    podman     srun  podman run --rm --network host -v ... -w CHECKOUT --env ... IMAGE  python3 ...

Inside, the job runs the checkout's code (PYTHONPATH=<checkout>, mounted at its own path), not the copy
installed in the image: what submit.py validated is what runs, and a code change needs no new image.
Podman starts the container from a daemon-less client that proxies signals (``--sig-proxy``, on by
default): USR2/TERM reach the stage process inside. It passes no environment of its own accord, so the
launcher's variables are named (SLURM*, SUBMITIT_*, BURN_*, ...); pyxis and apptainer pass it all.
Torch-free and Hydra-free.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from burn.config import AUTO_TEACHER, RANDOM_BACKBONE, quote_image_override  # noqa: F401  (re-exported)
from burn.runtime.errors import UsageError

REPO = Path(__file__).resolve().parents[1]
#: The interpreter inside the image (a venv's or the base's python3: first on the image's PATH).
PYTHON = "python3"
#: The launcher's variables a podman container must see (a trailing * passes every host variable with that prefix).
PODMAN_ENV = (
    "SLURM*",
    "SUBMITIT_*",
    "BURN_*",
    "MASTER_*",
    "CUDA_VISIBLE_DEVICES",
    "OMP_NUM_THREADS",
    "TORCHINDUCTOR_CACHE_DIR",
    "PYTHONUNBUFFERED",
    "PYTHONPATH",
)
#: podman: the node's allocated GPUs through CDI (`nvidia-ctk cdi generate`), expanded by the batch shell:
#: empty when the job has none. SLURM's CUDA_VISIBLE_DEVICES then picks each task's GPU.
PODMAN_GPUS = "${SLURM_JOB_GPUS:+--device=nvidia.com/gpu=all}"
#: A registry host: the first part of an image name with a dot or a port, or localhost.
_REGISTRY = re.compile(r"^(localhost|[^/#]*[.:][^/#]*)$")
_IMAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-/:@#+]*$")


class ContainerConfigError(UsageError):
    """container.* cannot make a command line; raised before anything is queued."""


@dataclass(frozen=True)
class ContainerCommand:
    """What a job script puts around `python -u <entry>` on every task."""

    srun_args: tuple[str, ...] = ()
    """Arguments of srun itself (pyxis: --container-*)."""
    prefix: tuple[str, ...] = ()
    """The command that runs python inside the image, python included (empty: no container)."""

    def prefix_text(self) -> str:
        """``prefix`` as shell words; the podman GPU expansion stays unquoted for the batch shell."""
        return " ".join(word if word == PODMAN_GPUS else shlex.quote(word) for word in self.prefix)


def image_for(runtime: str, image: str) -> str:
    """The image name as `runtime` spells it: pyxis ``registry#repo:tag``, podman ``registry/repo:tag``,
    apptainer a file or ``docker://registry/repo:tag``. Raises ContainerConfigError on a malformed name."""
    scheme, _, name = image.rpartition("://")  # docker://, oras://: apptainer's sources
    if image.startswith(("/", "./", "../")):  # a file: apptainer's .sif, enroot's .sqsh
        name = image.lstrip("./") or "?"
    if (
        (scheme and not scheme.isalpha())
        or not _IMAGE.match(name)
        or name.count("#") > 1
        or name.endswith(("#", "/", ":"))
        or "//" in name
    ):
        raise ContainerConfigError(
            f"container.image={image}: not an image name (e.g. nvcr.io/nvidia/pytorch:25.01-py3, "
            "'nvcr.io#nvidia/pytorch:25.01-py3' for pyxis, /images/burn.sif for apptainer)"
        )
    if runtime == "pyxis":
        host, _, rest = image.partition("/")
        if "#" not in image and rest and _REGISTRY.match(host):
            return f"{host}#{rest}"  # enroot separates the registry with '#'
        return image
    plain = image.replace("#", "/", 1)
    if runtime == "apptainer" and not (image.startswith(("/", ".")) or image.endswith(".sif") or "://" in image):
        return f"docker://{plain}"  # a registry name, not a file: apptainer pulls and converts it
    return plain


def default_mounts(cfg: DictConfig, run_dir: str | None) -> list[str]:
    """data.root, the run directory, the checkout, and the weight files the stage reads from elsewhere
    (model.teacher_weights, whose ``auto`` file lies beside data.root: its folder; pretrained, or its folder
    while an earlier stage has yet to write it: stage=all's stage 2 and linear read stage1/ and stage2/
    beside their own), each at its own path; a path inside another is covered by it."""
    data_root = OmegaConf.select(cfg, "data.root")
    paths = [data_root, run_dir, str(REPO)]
    for key in ("model.teacher_weights", "pretrained"):
        value = OmegaConf.select(cfg, key)
        if value == AUTO_TEACHER and data_root:  # still to be resolved (chain.sh): it lives beside the data
            paths.append(str(Path(data_root).absolute().parent))
        elif value and value != RANDOM_BACKBONE:
            paths.append(value if Path(value).exists() else str(Path(value).parent))
    chosen: list[Path] = []
    for path in (Path(p).absolute() for p in paths if p):
        if any(path == c or c in path.parents for c in chosen):
            continue
        chosen = [c for c in chosen if path not in c.parents] + [path]
    return [str(p) for p in chosen]


def _mount_parts(mount: str) -> tuple[str, str, str]:
    source, _, rest = mount.partition(":")
    target, _, options = rest.partition(":")
    if not source.startswith("/") or (target and not target.startswith("/")):
        raise ContainerConfigError(f"container.mounts: {mount!r} is not SRC[:DST[:OPTIONS]] with absolute paths")
    return source, target or source, options


def container_command(cfg: DictConfig, run_dir: str | None = None) -> ContainerCommand:
    """The srun arguments and command prefix of `cfg`'s container.* keys (run_dir: the directory to mount
    as the run directory, default cfg.run_dir). Raises ContainerConfigError naming the key."""
    section = cfg.container
    runtime = str(section.runtime)
    if runtime == "none":
        if section.image:
            raise ContainerConfigError(
                f"container.image={section.image} is set but container.runtime=none: choose "
                "container.runtime=pyxis|apptainer|podman"
            )
        return ContainerCommand()
    if not section.image:
        raise ContainerConfigError(f"container.runtime={runtime} needs container.image")
    image = image_for(runtime, str(section.image))
    given = section.mounts
    mounts = default_mounts(cfg, run_dir or cfg.run_dir) if given is None else [str(m) for m in given]
    parts = [_mount_parts(m) for m in mounts]
    args = [str(a) for a in section.args]
    workdir = str(REPO)
    if runtime == "pyxis":
        spec = ",".join(f"{s}:{t}" + (f":{o}" if o else "") for s, t, o in parts)
        srun = [f"--container-image={image}", f"--container-workdir={workdir}"]
        if spec:
            srun.insert(1, f"--container-mounts={spec}")
        return ContainerCommand(tuple(srun + args), (PYTHON,))
    binds = [f"{s}:{t}" + (f":{o}" if o else "") for s, t, o in parts]
    if runtime == "apptainer":
        prefix = ["apptainer", "exec", "--nv"]
        if binds:
            prefix += ["--bind", ",".join(binds)]
        prefix += ["--pwd", workdir, *args, image, PYTHON]
        return ContainerCommand((), tuple(prefix))
    prefix = ["podman", "run", "--rm", "--network", "host", *args]
    for bind in binds:
        prefix += ["-v", bind]
    prefix += ["-w", workdir]
    for name in PODMAN_ENV:
        prefix += ["--env", name]
    prefix += [PODMAN_GPUS, image, PYTHON]
    return ContainerCommand((), tuple(prefix))


def pythonpath_line() -> str:
    """The job script's line that makes the mounted checkout's code the code that runs inside."""
    return f"export PYTHONPATH={shlex.quote(str(REPO))}${{PYTHONPATH:+:$PYTHONPATH}}"
